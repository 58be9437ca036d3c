"""The ``dualenc`` command line. Thin: parse, call into core, print.

Every ``DualencError`` (bad config, bad data, unknown plugin) is printed without a
traceback and exits with status 2.
"""

from __future__ import annotations

import json
import sys

import click

from dualenc import __version__
from dualenc.cli_options import config_option, plugin_option, set_option
from dualenc.commands.data import data
from dualenc.commands.evaluate import evaluate
from dualenc.commands.export import export
from dualenc.commands.index import index, search
from dualenc.commands.plugins_new import new as plugins_new
from dualenc.commands.train import train
from dualenc.errors import DualencError


class _Group(click.Group):
    """Turns user errors into a message and exit status 2."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except DualencError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(2)


def _load(config_path, plugins, sets):
    from dualenc.core.configio import load_config

    return load_config(config_path, plugins=list(plugins), sets=list(sets))


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="dualenc")
def cli():
    """Train dual encoders for natural-language -> code search, index code, search it."""


# --- plugins -------------------------------------------------------------------------


@cli.group()
def plugins():
    """Inspect installed plugins, or start a new one."""


plugins.add_command(plugins_new)


@plugins.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON document for machines.")
def plugins_list(as_json):
    """Every component: kind, name, providing package and version, description."""
    from dualenc.registry import load_catalog
    from dualenc.registry.kinds import KINDS

    catalog = load_catalog()
    rows = [
        {
            "kind": c.kind,
            "name": c.name,
            "package": c.distribution,
            "version": c.version,
            "description": c.description,
        }
        for kind in KINDS
        for c in catalog.of_kind(kind)
    ]
    broken = [
        {
            "entry_point": p.entry_point,
            "package": p.distribution,
            "version": p.version,
            "error": p.error,
        }
        for p in catalog.problems
    ]
    if as_json:
        click.echo(json.dumps({"components": rows, "broken": broken}, indent=2))
        return
    # a broken plugin has no component name: its entry point stands in the name column
    lines = [(r["kind"], r["name"], f"{r['package']} {r['version']}", r["description"]) for r in rows]
    lines += [("broken", p["entry_point"], f"{p['package']} {p['version']}", p["error"]) for p in broken]
    name_width = max((len(line[1]) for line in lines), default=4)
    package_width = max((len(line[2]) for line in lines), default=7)
    for kind, name, package, text in lines:
        click.echo(f"{kind:<9} {name:<{name_width}}  {package:<{package_width}}  {text}")


# --- config --------------------------------------------------------------------------


@cli.group()
def config():
    """Show or check a run config."""


@config.command("show")
@config_option
@plugin_option
@set_option
def config_show(config_path, plugins, sets):
    """Print the fully resolved config (defaults included) as YAML that loads back."""
    from dualenc.core.configio import dump_yaml

    click.echo(dump_yaml(_load(config_path, plugins, sets)), nl=False)


@config.command("validate")
@config_option
@plugin_option
@set_option
def config_validate(config_path, plugins, sets):
    """Check a config; exit 0 when valid, 2 with every problem listed otherwise."""
    _load(config_path, plugins, sets)
    click.echo(f"{config_path or 'defaults'}: ok")


cli.add_command(data)
cli.add_command(evaluate)
cli.add_command(export)
cli.add_command(index)
cli.add_command(search)
cli.add_command(train)


def main() -> None:
    from dualenc.registry.catalog import register_commands

    register_commands(cli)
    cli(prog_name="dualenc")


if __name__ == "__main__":
    sys.exit(main())

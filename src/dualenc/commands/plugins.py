"""``dualenc plugins``: list the installed components (``list``) or start a new one (``new``)."""

from __future__ import annotations

import json

import click

from dualenc.cli_options import current_catalog
from dualenc.commands.plugins_new import new
from dualenc.registry.kinds import KINDS


@click.group()
def plugins():
    """Inspect installed plugins, or start a new one."""


plugins.add_command(new)


@plugins.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON document for machines.")
def plugins_list(as_json):
    """Every component: kind, name, providing package and version, description."""
    catalog = current_catalog()
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

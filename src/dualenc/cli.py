"""The ``dualenc`` command line: the group of commands (each in ``dualenc.commands``) and ``main``.

Every ``DualencError`` (bad config, bad data, unknown plugin) is printed without a
traceback and exits with status 2.
"""

from __future__ import annotations

import sys

import click

from dualenc import __version__
from dualenc.commands.config import config
from dualenc.commands.data import data
from dualenc.commands.evaluate import evaluate
from dualenc.commands.export import export
from dualenc.commands.index import index
from dualenc.commands.merge import merge
from dualenc.commands.mine import mine
from dualenc.commands.plugins import plugins
from dualenc.commands.search import search
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


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="dualenc")
def cli():
    """Train dual encoders for natural-language -> code search, index code, search it."""


cli.add_command(config)
cli.add_command(data)
cli.add_command(evaluate)
cli.add_command(export)
cli.add_command(index)
cli.add_command(merge)
cli.add_command(mine)
cli.add_command(plugins)
cli.add_command(search)
cli.add_command(train)


def main() -> None:
    from dualenc.registry.catalog import load_catalog

    # one catalog for the whole invocation; the plugins' own commands join the group here
    catalog = load_catalog(cli=cli)
    cli(prog_name="dualenc", obj=catalog)


if __name__ == "__main__":
    sys.exit(main())

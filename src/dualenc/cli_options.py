"""Options shared by several commands."""

from pathlib import Path

import click

config_option = click.option(
    "--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), help="YAML run config."
)
plugin_option = click.option(
    "--plugin",
    "plugins",
    multiple=True,
    metavar="KIND=NAME",
    help="Select a component, overriding the config (repeatable): --plugin miner=faiss.",
)
set_option = click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a config value by dotted key (repeatable): --set train.max_steps=200.",
)

"""What several commands share: the config options, and the catalog of the invocation."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from dualenc.registry.catalog import Catalog

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

# where a command that writes a new folder writes it
new_folder_option = click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder to create; it must not exist or be empty.",
)


def current_catalog() -> Catalog:
    """The plugin catalog of this command line: built once, by ``main`` (which also lets the
    plugins add their commands) or, when the group is invoked directly, at first use."""
    root = click.get_current_context().find_root()
    if root.obj is None:
        from dualenc.registry.catalog import load_catalog

        root.obj = load_catalog()
    return root.obj

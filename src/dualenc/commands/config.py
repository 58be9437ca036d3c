"""``dualenc config``: print a run config resolved (``show``) or check it (``validate``)."""

from __future__ import annotations

import click

from dualenc.cli_options import config_option, current_catalog, plugin_option, set_option


@click.group()
def config():
    """Show or check a run config."""


def _load(config_path, plugins, sets):
    from dualenc.core.configio import load_config

    return load_config(config_path, plugins=list(plugins), sets=list(sets), catalog=current_catalog())


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

"""``dualenc train``."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from dualenc.cli_options import config_option, current_catalog, plugin_option, set_option


@click.command()
@config_option
@plugin_option
@set_option
@click.option(
    "--resume-from",
    type=click.Path(path_type=Path),
    default=None,
    help="A checkpoint dir: with the same config the run resumes exactly; with another "
    "config (stage two) only the weights are taken.",
)
@click.option(
    "--stop-after",
    type=int,
    default=None,
    metavar="STEP",
    help="Save a resumable checkpoint after this step and stop.",
)
def train(config_path, plugins, sets, resume_from, stop_after):
    """Train a query/code dual encoder."""
    from dualenc.core.configio import load_config
    from dualenc.core.loop import train as run_training

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    catalog = current_catalog()
    config = load_config(config_path, plugins=list(plugins), sets=list(sets), catalog=catalog)
    result = run_training(config, resume_from=resume_from, stop_after=stop_after, catalog=catalog)
    best = f"{result.best_metric:.4f}" if result.best_metric is not None else "n/a"
    click.echo(f"{result.status} at step {result.step}; best val metric {best}")
    click.echo(f"last checkpoint: {result.last_checkpoint}")

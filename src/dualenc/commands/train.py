"""``dualenc train``: ``dualenc.train`` with the command line's config options."""

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
    from dualenc.api import run

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    result = run(
        config_path,
        catalog=current_catalog(),
        overrides=list(sets),
        selection=list(plugins),
        resume_from=resume_from,
        stop_after=stop_after,
    )
    if result.best_metric is None:
        best = f"no {result.best_metric_name} (no evaluation ran)"
    else:
        best = f"best {result.best_metric_name} {result.best_metric:.4f} in {result.best_checkpoint}"
    click.echo(f"{result.status} at step {result.step}; {best}")
    click.echo(f"last checkpoint: {result.last_checkpoint}")

"""``dualenc merge``: a fine-tuned checkpoint interpolated with its pretrained base (WiSE-FT)."""

from __future__ import annotations

from pathlib import Path

import click

from dualenc.cli_options import current_catalog, new_folder_option
from dualenc.core.merge import merge_checkpoint


@click.command()
@click.argument("checkpoint", type=click.Path(file_okay=False, path_type=Path))
@new_folder_option
@click.option(
    "--weight",
    default=0.5,
    show_default=True,
    type=click.FloatRange(0.0, 1.0),
    help="The fine-tuned weights' share: 1 is CHECKPOINT unchanged, 0 the base model.",
)
@click.option(
    "--base",
    type=click.Path(file_okay=False, path_type=Path),
    help="A checkpoint to merge with [default: the pretrained model CHECKPOINT was built from].",
)
def merge(checkpoint: Path, out_dir: Path, weight: float, base: Path | None):
    """Write an encoder checkpoint whose weights are WEIGHT x CHECKPOINT's + (1 - WEIGHT) x the
    base model's: fine-tuning's gains on its own data, with much of the base model's
    robustness on other queries kept (WiSE-FT)."""
    merge_checkpoint(checkpoint, out_dir, weight, base, current_catalog())
    click.echo(f"wrote {out_dir} ({weight:g} x {checkpoint} + {1 - weight:g} x base)")

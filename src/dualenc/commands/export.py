"""``dualenc export``: turn an encoder checkpoint into a folder another library loads.

The work is in ``dualenc.export``: ``--format sentence-transformers`` (encoders built on a
Hugging Face model) or ``--format onnx`` (every built-in encoder), each with a model card.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from dualenc.cli_options import current_catalog, new_folder_option
from dualenc.export import FORMATS, export_checkpoint

if TYPE_CHECKING:
    from dualenc.registry.catalog import Catalog


@click.command()
@click.argument("checkpoint", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--format",
    "export_format",
    type=click.Choice(FORMATS),
    default="sentence-transformers",
    show_default=True,
    help="sentence-transformers: a folder SentenceTransformer(folder) loads; onnx: ONNX graphs "
    "and tokenizer.json for ONNX Runtime.",
)
@new_folder_option
def export(checkpoint: Path, export_format: str, out_dir: Path):
    """Write the encoder of CHECKPOINT, with a model card (README.md), as a folder that
    sentence-transformers or ONNX Runtime loads."""
    export_checkpoint(checkpoint, out_dir, export_format, current_catalog())
    click.echo(f"wrote {out_dir}")


def export_sentence_transformers(checkpoint: Path, out_dir: Path, catalog: Catalog | None = None) -> None:
    """Export an encoder checkpoint to a sentence-transformers folder."""
    export_checkpoint(checkpoint, out_dir, "sentence-transformers", catalog)


def export_onnx(checkpoint: Path, out_dir: Path, catalog: Catalog | None = None) -> None:
    """Export an encoder checkpoint to ONNX graphs with their tokenizer."""
    export_checkpoint(checkpoint, out_dir, "onnx", catalog)

"""``dualenc export``: turn an encoder checkpoint into a folder another library loads.

An encoder can be exported to sentence-transformers when it implements
``save_sentence_transformers(directory)`` (the ``hf`` encoder does). One that cannot may say
why in a ``sentence_transformers_unsupported`` attribute (the ``transformer`` encoder does),
and that is the error shown.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from dualenc.cli_options import current_catalog
from dualenc.core.io import staged_dir
from dualenc.errors import DualencError

if TYPE_CHECKING:
    from dualenc.registry.catalog import Catalog

FORMATS = ("sentence-transformers",)


@click.command()
@click.argument("checkpoint", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--format",
    "export_format",
    type=click.Choice(FORMATS),
    default="sentence-transformers",
    show_default=True,
    help="What to write.",
)
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder to create; it must not exist or be empty.",
)
def export(checkpoint: Path, export_format: str, out_dir: Path):
    """Write the encoder of CHECKPOINT as a folder that SentenceTransformer(folder) loads."""
    export_sentence_transformers(checkpoint, out_dir, current_catalog())
    click.echo(f"wrote {out_dir}")


def export_sentence_transformers(checkpoint: Path, out_dir: Path, catalog: Catalog | None = None) -> None:
    """Export an encoder checkpoint (as ``save_encoder`` writes it) to a sentence-transformers folder."""
    from dualenc.core.checkpoint import load_encoder

    encoder, plugin, _ = load_encoder(checkpoint, catalog)
    # an encoder that cannot be exported may say why; it is asked before anything is written
    reason = getattr(encoder, "sentence_transformers_unsupported", None)
    if reason:
        raise DualencError(f"{checkpoint}: {reason}")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise DualencError(f"{out_dir}: already exists and is not an empty folder")
    if not hasattr(encoder, "save_sentence_transformers"):
        raise DualencError(
            f"{checkpoint}: the {plugin!r} encoder has no sentence-transformers export "
            "(it does not implement save_sentence_transformers)"
        )
    # written beside its destination and renamed, so a failed export leaves no half folder
    with staged_dir(out_dir) as staging:
        encoder.save_sentence_transformers(staging)

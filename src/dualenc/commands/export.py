"""``dualenc export``: turn an encoder checkpoint into a folder another library loads.

Only encoders built on a Hugging Face model (``hf``) can be exported to
sentence-transformers: they implement ``save_sentence_transformers``. The ``transformer``
encoder is a pre-norm architecture (norm before each sublayer, one final norm) with no
token-type embeddings and no embedding norm; BERT and its relatives normalise after each
sublayer, so no standard Hugging Face architecture computes the same function, and an
export would only approximate it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import click

from dualenc.errors import DualencError

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
    export_sentence_transformers(checkpoint, out_dir)
    click.echo(f"wrote {out_dir}")


def export_sentence_transformers(checkpoint: Path, out_dir: Path) -> None:
    """Export an encoder checkpoint (as ``save_encoder`` writes it) to a sentence-transformers folder."""
    from dualenc.core.checkpoint import load_encoder, read_encoder_record

    plugin = read_encoder_record(checkpoint)["plugin"]
    if plugin == "transformer":
        raise DualencError(
            f"{checkpoint}: export supports encoders built on a Hugging Face model (plugin 'hf') only; "
            "the 'transformer' encoder's pre-norm architecture has no exact Hugging Face equivalent. "
            "Encode with dualenc instead, or train with encoder 'hf'."
        )
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise DualencError(f"{out_dir}: already exists and is not an empty folder")
    encoder, _, _ = load_encoder(checkpoint)
    if not hasattr(encoder, "save_sentence_transformers"):
        raise DualencError(
            f"{checkpoint}: the {plugin!r} encoder has no sentence-transformers export "
            "(it does not implement save_sentence_transformers)"
        )
    # written next to its destination and renamed, so a failed export leaves no half folder
    staging = out_dir.with_name(f".{out_dir.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        encoder.save_sentence_transformers(staging)
        if out_dir.exists():
            out_dir.rmdir()
        staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise

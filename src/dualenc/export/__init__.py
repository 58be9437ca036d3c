"""``dualenc export``: an encoder checkpoint as a folder that other libraries load, with a model card.

- ``sentence-transformers``: the encoder's ``save_sentence_transformers(directory)`` builds the
  model from sentence-transformers' own modules and writes it with that library's ``save`` (the
  ``hf`` encoder does). An encoder that cannot be exported so may say why in a
  ``sentence_transformers_unsupported`` attribute (the ``transformer`` encoder does).
- ``onnx``: one ONNX graph per tower, ``tokenizer.json`` and ``dualenc_onnx.json``
  (``onnx_graph``), for any encoder whose checkpoint has a tokenizer.json.

Either way the folder gets a README.md model card (``card``), is built beside its destination
and renamed into place (a failed export leaves nothing), and an existing non-empty destination
is refused. The optional packages a format needs are imported only when exporting to it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from dualenc.errors import DualencError

if TYPE_CHECKING:
    from dualenc.registry.catalog import Catalog

FORMATS = ("sentence-transformers", "onnx")
CARD_FILE = "README.md"


def require_sentence_transformers() -> None:
    try:
        import sentence_transformers  # noqa: F401
    except ImportError:
        raise DualencError(
            "--format sentence-transformers needs sentence-transformers: "
            "pip install sentence-transformers (or pip install 'dualenc[st]')"
        ) from None


def refuse_existing(out_dir: Path) -> None:
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise DualencError(f"{out_dir}: already exists and is not an empty folder")


def export_checkpoint(
    checkpoint: Path,
    out_dir: Path,
    export_format: str = "sentence-transformers",
    catalog: Catalog | None = None,
) -> None:
    """Export the encoder checkpoint ``checkpoint`` (as ``save_encoder`` or training writes it)
    to the new folder ``out_dir`` in ``export_format`` (one of ``FORMATS``)."""
    from dualenc.core.checkpoint import load_encoder, resolve
    from dualenc.core.io import staged_dir
    from dualenc.export.card import model_card

    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    if export_format not in FORMATS:
        raise DualencError(f"unknown export format {export_format!r}; formats: {', '.join(FORMATS)}")
    refuse_existing(out_dir)
    if export_format == "onnx":
        from dualenc.export.onnx_graph import require_onnx

        require_onnx()
    else:
        require_sentence_transformers()
    encoder, plugin, _ = load_encoder(checkpoint, catalog)
    if export_format == "sentence-transformers":
        # an encoder that cannot be exported may say why; it is asked before anything is written
        reason = getattr(encoder, "sentence_transformers_unsupported", None)
        if reason:
            raise DualencError(f"{checkpoint}: {reason}")
        if not hasattr(encoder, "save_sentence_transformers"):
            raise DualencError(
                f"{checkpoint}: the {plugin!r} encoder has no sentence-transformers export "
                "(it does not implement save_sentence_transformers); try --format onnx"
            )
    encoder.eval()
    with staged_dir(out_dir) as staging:
        if export_format == "onnx":
            from dualenc.export.onnx_graph import write_onnx

            write_onnx(encoder, resolve(checkpoint), staging)
        else:
            encoder.save_sentence_transformers(staging)
        card = model_card(resolve(checkpoint), encoder, plugin, export_format)
        (staging / CARD_FILE).write_text(card, encoding="utf-8")

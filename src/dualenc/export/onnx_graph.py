"""``--format onnx``: each tower as an ONNX graph, with the tokenizer and what a reader needs.

The folder holds ``model.onnx`` when query and code share one tower (``shared_tower`` on the
encoder: the ``hf`` encoder, the ``transformer`` one unless ``separate_towers``), else
``query.onnx`` and ``code.onnx``; ``tokenizer.json``; and ``dualenc_onnx.json``, which names
each side's graph, prompt and max length, the input and output names, the dimension and the
pad id. A graph takes ``input_ids`` and ``attention_mask`` (int64 [batch, sequence], both axes
dynamic) and returns ``sentence_embedding`` [batch, dim], pooled (and normalised when the
encoder normalises) inside the graph: the encoder's ``forward`` for that side, traced by
torch's dynamo exporter (the TorchScript one baked the traced shapes into both encoders'
attention masks).

Nothing is left to trust: before the folder is installed, the tokenizer.json path (prompt,
truncation, padding) must give the encoder's own token ids, and ONNX Runtime's embeddings must
match torch's (cosine >= 0.9999 per row) on a padded batch of texts of different lengths, for
both sides.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import warnings
from pathlib import Path

import numpy as np
import torch

from dualenc import __version__
from dualenc.core.encode import pad_batch
from dualenc.errors import DualencError
from dualenc.registry.kinds import SIDES

log = logging.getLogger(__name__)

SPEC_FILE = "dualenc_onnx.json"
TOKENIZER_FILE = "tokenizer.json"
INPUT_NAMES = ("input_ids", "attention_mask")
# sentence-transformers' name for it; "embedding" clashes with a weight's name in the graph
OUTPUT_NAME = "sentence_embedding"
OPSET = 18
MIN_COSINE = 0.9999
# models over this size keep their weights in a .onnx.data file beside the graph (protobuf's 2 GiB)
EXTERNAL_DATA_BYTES = 1 << 30
# probes of different lengths, the last longer than any max length, so that padding and
# truncation are both checked; non-ASCII on purpose
PROBES = (
    "sort a list",
    "def add(a, b):\n    return a + b\n",
    "read a json file and return the parsed object",
    "    @property\n    def área(self) -> float:  # ünïcode\n        return math.pi * self.r ** 2",
    "for (let i = 0; i < items.length; i++) {\n  total += items[i].price;\n}",
    "\n".join(f"def f{i}(x):\n    return x * {i}" for i in range(300)),
)


class SideGraph(torch.nn.Module):
    """The encoder's forward for one side, with the two inputs ONNX gets."""

    def __init__(self, encoder, side: str):
        super().__init__()
        self.encoder = encoder
        self.side = side

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.encoder(input_ids, attention_mask, self.side).float()


def require_onnx() -> None:
    """A clear error, before any work, when a package of the ``onnx`` extra is missing."""
    missing = []
    for name in ("onnx", "onnxscript", "onnxruntime"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise DualencError(
            f"--format onnx needs {', '.join(missing)} (torch's ONNX exporter uses onnx and onnxscript; "
            "the export is checked with onnxruntime): pip install 'dualenc[onnx]'"
        )


def towers(encoder) -> dict[str, tuple[str, ...]]:
    """ONNX file stem -> the sides it encodes."""
    if getattr(encoder, "shared_tower", False):
        return {"model": SIDES}
    return {side: (side,) for side in SIDES}


def reading_tokenizer(checkpoint: Path):
    """The checkpoint's tokenizer.json as an export reader uses it: no padding or truncation
    of its own (dualenc_onnx.json gives each side's max length)."""
    from tokenizers import Tokenizer

    path = Path(checkpoint) / TOKENIZER_FILE
    if not path.is_file():
        raise DualencError(
            f"{checkpoint}: no {TOKENIZER_FILE}; the ONNX export ships the encoder's tokenizers "
            "tokenizer, and this encoder saved none"
        )
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer


def side_specs(encoder, files: dict[str, tuple[str, ...]]) -> dict[str, dict]:
    prompts = getattr(encoder, "prompts", {side: "" for side in SIDES})
    lengths = getattr(encoder, "max_lengths", {side: encoder.max_seq_len for side in SIDES})
    return {
        side: {"model": f"{stem}.onnx", "prompt": prompts[side], "max_length": int(lengths[side])}
        for stem, sides in files.items()
        for side in sides
    }


def tokenize_as_reader(tokenizer, texts, spec: dict) -> list[np.ndarray]:
    """What a reader of the folder does: prompt + text, truncated at the side's max length."""
    from tokenizers import Tokenizer

    side_tokenizer = Tokenizer.from_str(tokenizer.to_str())
    side_tokenizer.enable_truncation(max_length=spec["max_length"])
    encoded = side_tokenizer.encode_batch([spec["prompt"] + text for text in texts])
    return [np.asarray(e.ids, dtype=np.int64) for e in encoded]


def write_onnx(encoder, checkpoint: Path, directory: Path) -> dict:
    """Export ``encoder`` (loaded from ``checkpoint``) into ``directory``; returns the spec
    written to dualenc_onnx.json."""
    import onnxruntime

    directory = Path(directory)
    encoder = encoder.to("cpu").eval()
    files = towers(encoder)
    sides = side_specs(encoder, files)
    tokenizer = reading_tokenizer(checkpoint)
    for side, spec in sides.items():
        expected = [ids.tolist() for ids in encoder.tokenize(list(PROBES), side)]
        if [ids.tolist() for ids in tokenize_as_reader(tokenizer, PROBES, spec)] != expected:
            raise DualencError(
                f"{checkpoint}: the encoder's {side} token ids are not those of its {TOKENIZER_FILE} "
                f"with the prompt {spec['prompt']!r} and max length {spec['max_length']}; an ONNX "
                "reader could not reproduce them"
            )
    example = pad_batch(encoder.tokenize(list(PROBES), "code"), encoder.pad_id)
    external = sum(p.numel() * p.element_size() for p in encoder.parameters()) > EXTERNAL_DATA_BYTES
    for stem, stem_sides in files.items():
        _export_graph(
            SideGraph(encoder, stem_sides[0]), example, directory / f"{stem}.onnx", encoder, external
        )
    tokenizer.save(str(directory / TOKENIZER_FILE))
    normalized = _check_with_onnxruntime(onnxruntime, encoder, tokenizer, sides, directory)
    spec = {
        "format": 1,
        "dualenc_version": __version__,
        "inputs": list(INPUT_NAMES),
        "input_dtype": "int64",
        "output": OUTPUT_NAME,
        "dim": int(encoder.dim),
        "normalized": normalized,
        "pooling": getattr(encoder, "pooling", None),  # None: the encoder does not say
        "pad_id": int(encoder.pad_id),
        "tokenizer": TOKENIZER_FILE,
        "opset": OPSET,
        "sides": sides,
    }
    (directory / SPEC_FILE).write_text(json.dumps(spec, indent=2, ensure_ascii=False) + "\n")
    return spec


def _export_graph(module: SideGraph, example, path: Path, encoder, external: bool) -> None:
    batch = torch.export.Dim("batch", min=1)
    # the longest sequence tokenize gives; beyond it positions run out
    sequence = torch.export.Dim("sequence", min=1, max=max(2, int(encoder.max_seq_len)))
    axes = {0: batch, 1: sequence}
    # the exporter reports progress on stdout and logs every op it cannot find; the CLI prints
    # one line instead
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)
    try:
        with (
            torch.no_grad(),
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
        ):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                module,
                example,
                dynamo=True,
                input_names=list(INPUT_NAMES),
                output_names=[OUTPUT_NAME],
                dynamic_shapes={"input_ids": axes, "attention_mask": axes},
                opset_version=OPSET,
                verbose=False,
            )
            program.save(str(path), external_data=external)
    except Exception as exc:  # the exporter raises many kinds, none of them a user can act on alone
        raise DualencError(
            f"torch could not export the {module.side} side to ONNX ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''})"
        ) from exc
    finally:
        exporter_log.setLevel(level)


def _check_with_onnxruntime(onnxruntime, encoder, tokenizer, sides: dict, directory: Path) -> bool:
    """Compare ONNX Runtime with torch on the probes, each side; True when every embedding is a
    unit vector."""
    norms = []
    sessions: dict[str, object] = {}
    for side, spec in sides.items():
        ids, mask = pad_batch(tokenize_as_reader(tokenizer, PROBES, spec), encoder.pad_id)
        with torch.no_grad():
            expected = encoder(ids, mask, side).float().numpy()
        if spec["model"] not in sessions:
            sessions[spec["model"]] = onnxruntime.InferenceSession(
                str(directory / spec["model"]), providers=["CPUExecutionProvider"]
            )
        feed = {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}
        got = sessions[spec["model"]].run([OUTPUT_NAME], feed)[0]
        cosine = (got * expected).sum(1) / (
            np.linalg.norm(got, axis=1) * np.linalg.norm(expected, axis=1)
        ).clip(min=1e-12)
        if got.shape != expected.shape or cosine.min() < MIN_COSINE:
            raise DualencError(
                f"the ONNX graph of the {side} side does not reproduce torch's embeddings "
                f"(lowest cosine {cosine.min():.6f} < {MIN_COSINE}); nothing was written"
            )
        norms.append(np.linalg.norm(expected, axis=1))
    return bool(np.allclose(np.concatenate(norms), 1.0, atol=1e-4))

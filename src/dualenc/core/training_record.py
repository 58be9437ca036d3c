"""``training.json``: what made a training checkpoint, for the model card ``dualenc export`` writes.

Written into every checkpoint a run saves (``checkpoint.save_checkpoint``): the command, each
training file with its pair and skip counts and content hash (and the ``stats.json`` of
``dualenc data extract`` when the file came from it), and the validation metrics logged at the
checkpoint's step, pool sizes included. Step, best metric and the resolved config are already in
``trainer_state.json`` and ``config.yaml`` beside it.

Counting reads each training file once more; the counts are kept per process, keyed by the
file's size and modification time, so later saves of the run read nothing.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from dualenc import __version__
from dualenc.errors import DualencError

log = logging.getLogger(__name__)

TRAINING_JSON = "training.json"
METRICS_FILE = "metrics.jsonl"
# the rows of one step are the last lines of metrics.jsonl when its checkpoint is saved
METRICS_TAIL_BYTES = 1 << 16

_counted: dict[tuple, dict] = {}


def write_training_record(directory: Path, config_yaml: str, step: int) -> None:
    """Write ``training.json`` into the checkpoint being built in ``directory`` (a staging folder
    inside the run folder, whose metrics.jsonl gives the metrics of ``step``)."""
    directory = Path(directory)
    config = yaml.safe_load(config_yaml) or {}
    record = {
        "dualenc_version": __version__,
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "argv": list(sys.argv),
        "step": step,
        "train_files": [_describe_file(file, config.get("data") or {}) for file in _train_files(config)],
        "metrics": _metrics_at(directory.parent / METRICS_FILE, step),
    }
    (directory / TRAINING_JSON).write_text(json.dumps(record, indent=2) + "\n")


def _train_files(config: dict) -> list[dict]:
    data = config.get("data") or {}
    if data.get("train_files"):
        return [
            {"path": f["path"], "weight": f.get("weight", 1.0)} if isinstance(f, dict) else {"path": f}
            for f in data["train_files"]
        ]
    return [{"path": data["train_file"]}] if data.get("train_file") else []


def _describe_file(file: dict, data: dict) -> dict:
    """The file's pairs and skips as training read them (the config's fields and
    on_bad_record), and the extraction stats beside it; a file that cannot be read now gets a
    note instead: the checkpoint is saved whatever happens here."""
    from dualenc.core.data.records import read_pairs

    path = Path(file["path"])
    described = dict(file)
    fields = {
        "query_field": data.get("query_field", "query"),
        "code_field": data.get("code_field", "code"),
        "on_bad_record": data.get("on_bad_record", "error"),
    }
    extra = {k: data[k] for k in ("positives_field", "negatives_field") if k in data}
    try:
        stat = path.stat()
        key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, *fields.values(), *extra.values())
        if key not in _counted:
            records = read_pairs(path, *fields.values(), log_skipped=False, **extra)
            _counted[key] = {
                "pairs": len(records.queries),
                "skipped": records.skipped,
                "content_hash": records.content_hash,
                "bytes": stat.st_size,
            }
        described.update(_counted[key])
    except (OSError, DualencError) as exc:
        described["unreadable"] = str(exc)
    stats_path = path.parent / "stats.json"
    if stats_path.is_file():
        try:
            stats = json.loads(stats_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            stats = None
        if isinstance(stats, dict) and "train_pairs" in stats:  # dualenc data extract's
            described["extraction"] = stats
    return described


def _metrics_at(path: Path, step: int) -> dict[str, Any]:
    """The ``val/...`` metrics logged at ``step``: those of the evaluation just before this save."""
    if not path.is_file():
        return {}
    with open(path, "rb") as handle:
        handle.seek(max(0, path.stat().st_size - METRICS_TAIL_BYTES))
        lines = handle.read().decode("utf-8", errors="replace").splitlines()
    metrics: dict[str, Any] = {}
    for line in lines:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # the first line of the tail, cut in the middle
        if isinstance(row, dict) and row.get("step") == step:
            metrics.update({k: v for k, v in row.items() if k.startswith("val/")})
    return metrics

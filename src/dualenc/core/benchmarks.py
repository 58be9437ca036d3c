"""Evaluation sets: from a JSONL file of (query, code) pairs, and the CoSQA benchmark."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

from dualenc.errors import DualencError
from dualenc.registry.kinds import EvalSet

COSQA_DIR_ENV = "DUALENC_COSQA_DIR"
COSQA_CODES = "code_idx_map.txt"
COSQA_SPLITS = {"dev": "cosqa-retrieval-dev-500.json", "test": "cosqa-retrieval-test-500.json"}


def read_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, JSON object) for each non-blank line; a bad line stops with file:line."""
    path = Path(path)
    if not path.is_file():
        raise DualencError(f"{path}: file not found")
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DualencError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
            if not isinstance(record, dict):
                raise DualencError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
            yield number, record


def text_field(record: dict, field: str, where: str) -> str:
    value = record.get(field)
    if not isinstance(value, str) or not value.strip():
        problem = "missing" if value is None else f"must be a non-empty string, got {value!r:.60}"
        raise DualencError(f"{where}: field {field!r} {problem}")
    return value


def read_codes(path: Path, field: str = "code") -> list[str]:
    """The ``field`` text of every line of a JSONL file, in order."""
    return [text_field(record, field, f"{path}:{number}") for number, record in read_jsonl(path)]


def default_cosqa_dir() -> Path:
    """``$DUALENC_COSQA_DIR``, else ``../shared/benchmarks/cosqa`` from the working directory."""
    return Path(os.environ.get(COSQA_DIR_ENV) or Path("..") / "shared" / "benchmarks" / "cosqa")


def load_cosqa(directory: Path, split: str = "dev") -> EvalSet:
    """CoSQA retrieval: the split's queries ranked against all candidate codes, ordered by id.

    Pool index equals CoSQA candidate id, so per-query ids can be checked against the data.
    """
    directory = Path(directory)
    if split not in COSQA_SPLITS:
        raise DualencError(f"unknown CoSQA split {split!r}; splits are: {', '.join(COSQA_SPLITS)}")
    if not directory.is_dir():
        raise DualencError(
            f"{directory}: CoSQA directory not found (pass --benchmark-dir or set {COSQA_DIR_ENV})"
        )
    codes_path = directory / COSQA_CODES
    code_ids = _read_json(codes_path)
    if not isinstance(code_ids, dict) or not all(isinstance(i, int) for i in code_ids.values()):
        raise DualencError(f"{codes_path}: expected a JSON object of code text -> integer id")
    if sorted(code_ids.values()) != list(range(len(code_ids))):
        raise DualencError(f"{codes_path}: candidate ids are not exactly 0..{len(code_ids) - 1}")
    pool = sorted(code_ids, key=code_ids.__getitem__)

    split_path = directory / COSQA_SPLITS[split]
    entries = _read_json(split_path)
    if not isinstance(entries, list) or not entries:
        raise DualencError(f"{split_path}: expected a non-empty JSON list of queries")
    queries, relevant = [], []
    for position, entry in enumerate(entries):
        where = f"{split_path}: entry {position}"
        if not isinstance(entry, dict):
            raise DualencError(f"{where}: expected a JSON object")
        gold = entry.get("retrieval_idx")
        if not isinstance(gold, int) or not 0 <= gold < len(pool):
            raise DualencError(f"{where}: 'retrieval_idx' must be a candidate id, got {gold!r}")
        queries.append(text_field(entry, "doc", where))
        relevant.append({gold: 1.0})
    return EvalSet(name=f"cosqa-{split}", queries=queries, pool=pool, relevant=relevant)


def _read_json(path: Path):
    if not path.is_file():
        raise DualencError(f"{path}: file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DualencError(f"{path}: not valid JSON ({exc})") from None

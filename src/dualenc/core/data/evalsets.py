"""Evaluation sets: from a JSONL file of (query, code) pairs, and the CoSQA benchmark.

``dualenc evaluate``, training's validation and the benchmarks all build their ``EvalSet``
here, so a pool is deduplicated the same way wherever a number comes from.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from dualenc.core.config import DataConfig, ValSet
from dualenc.core.data.keys import normalised_code_key, query_key
from dualenc.core.data.records import read_pairs
from dualenc.core.io import iter_jsonl, read_json
from dualenc.errors import DualencError
from dualenc.registry.kinds import EvalSet

logger = logging.getLogger(__name__)

# pools of fewer candidates are refused / warned about (see load_eval_set)
MIN_POOL = 2
SMALL_POOL = 50
COSQA_DIR_ENV = "DUALENC_COSQA_DIR"
COSQA_CODES = "code_idx_map.txt"
COSQA_SPLITS = {"dev": "cosqa-retrieval-dev-500.json", "test": "cosqa-retrieval-test-500.json"}
# benchmark name -> its splits (names of data.val_sets' benchmark and split)
BENCHMARKS = {"cosqa": COSQA_SPLITS}
DEFAULT_SPLIT = "dev"


def eval_set_from_pairs(
    queries: Sequence[str], codes: Sequence[str], name: str, max_pairs: int | None = None
) -> EvalSet:
    """Each distinct query ranked against the distinct codes of the first ``max_pairs`` pairs.

    Queries are distinct by ``query_key``, pool items by ``normalised_code_key``; a query's
    relevant set is every pool item that one of its pairs points to.
    """
    if len(queries) != len(codes):
        raise ValueError("queries and codes must pair up")
    limit = len(queries) if max_pairs is None else min(max_pairs, len(queries))
    pool: list[str] = []
    pool_index: dict[int, int] = {}
    unique_queries: list[str] = []
    relevant: list[dict[int, float]] = []
    query_index: dict[int, int] = {}
    for query, code in zip(queries[:limit], codes[:limit], strict=True):
        item = pool_index.setdefault(normalised_code_key(code), len(pool))
        if item == len(pool):
            pool.append(code)
        row = query_index.setdefault(query_key(query), len(unique_queries))
        if row == len(unique_queries):
            unique_queries.append(query)
            relevant.append({})
        relevant[row][item] = 1.0
    return EvalSet(name=name, queries=unique_queries, pool=pool, relevant=relevant)


def load_eval_set(
    path: str | Path,
    data_config: DataConfig,
    name: str = "val",
    max_pairs: int | None = None,
    limit_key: str = "data.max_val_pairs",
) -> EvalSet:
    """The evaluation set of a pairs file, of its first ``max_pairs`` pairs (None:
    ``data_config.max_val_pairs``, None there too: all); ``limit_key`` names the limit in errors.

    A pool of one candidate is refused: every query ranks it first, MRR 1.0 whatever the
    encoder. A small pool only warns, with the score a random ranking gets, because a few
    dozen candidates still tell encoders apart, only coarsely.
    """
    records = read_pairs(path, data_config.query_field, data_config.code_field, data_config.on_bad_record)
    max_pairs = max_pairs or data_config.max_val_pairs
    eval_set = eval_set_from_pairs(records.queries, records.codes, name, max_pairs=max_pairs)
    pool = len(eval_set.pool)
    used = min(len(records.queries), max_pairs or len(records.queries))
    counts = f"{used} pairs, {len(eval_set.queries)} distinct queries, {pool} distinct codes"
    if pool < MIN_POOL:
        raise DualencError(
            f"{path}: {counts}: ranking a pool of {pool} candidate scores MRR 1.0 whatever the encoder; "
            f"give at least {MIN_POOL} pairs with different code"
            + (f" (or raise {limit_key})" if used < len(records.queries) else "")
        )
    if pool < SMALL_POOL:
        # with one relevant item among n, a random ranking's expected reciprocal rank is H_n / n
        chance = sum(1 / rank for rank in range(1, pool + 1)) / pool
        logger.warning(
            "%s: %s: a pool this small says little (a random ranking scores MRR %.2f); "
            "use %d or more pairs with different code",
            path,
            counts,
            chance,
            SMALL_POOL,
        )
    return eval_set


def text_field(record: dict, field: str, where: str) -> str:
    """``record[field]``, a non-empty string, or a ``DualencError`` that starts with ``where``."""
    value = record.get(field)
    if not isinstance(value, str) or not value.strip():
        problem = "missing" if value is None else f"must be a non-empty string, got {value!r:.60}"
        raise DualencError(f"{where}: field {field!r} {problem}")
    return value


def read_codes(path: Path, field: str = "code") -> list[str]:
    """The ``field`` text of every line of a JSONL file, in order."""
    return [text_field(record, field, f"{path}:{number}") for number, record in iter_jsonl(path)]


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
    code_ids = read_json(codes_path)
    if not isinstance(code_ids, dict) or not all(isinstance(i, int) for i in code_ids.values()):
        raise DualencError(f"{codes_path}: expected a JSON object of code text -> integer id")
    if sorted(code_ids.values()) != list(range(len(code_ids))):
        raise DualencError(f"{codes_path}: candidate ids are not exactly 0..{len(code_ids) - 1}")
    pool = sorted(code_ids, key=code_ids.__getitem__)

    split_path = directory / COSQA_SPLITS[split]
    entries = read_json(split_path)
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


# --- a run's validation sets -----------------------------------------------------------


def val_set_specs(data: DataConfig) -> dict[str, ValSet]:
    """The validation sets of a run by the prefix of their metric names: ``val/<name>`` for
    each of ``data.val_sets``, in order; without them ``val`` for ``data.val_file`` alone, so
    that a run with one file logs ``val/mrr`` as before there were several."""
    if data.val_sets:
        return {f"val/{name}": spec for name, spec in data.val_sets.items()}
    return {"val": ValSet(file=data.val_file)}


def data_key(prefix: str) -> str:
    """The key in the data section of the set logged under ``prefix``, for messages."""
    return "val_file" if prefix == "val" else f"val_sets.{prefix.removeprefix('val/')}"


def benchmark_dir(spec: ValSet) -> Path:
    return Path(spec.dir) if spec.dir is not None else default_cosqa_dir()


def val_set_files(data: DataConfig) -> list[tuple[str, Path]]:
    """(key in the data section, path) of every file the validation sets read, to check
    before any work."""
    files = []
    for prefix, spec in val_set_specs(data).items():
        key = data_key(prefix)
        if spec.file is not None:
            files.append((key if prefix == "val" else f"{key}.file", Path(spec.file)))
        elif spec.benchmark is not None:
            directory = benchmark_dir(spec)
            split = COSQA_SPLITS[spec.split or DEFAULT_SPLIT]
            files += [(f"{key}.dir", directory / name) for name in (COSQA_CODES, split)]
    return files


def load_val_sets(data: DataConfig) -> dict[str, EvalSet]:
    """Every validation set of a run, by metric prefix (see ``val_set_specs``)."""
    sets = {}
    for prefix, spec in val_set_specs(data).items():
        key = f"data.{data_key(prefix)}"
        if spec.file is not None:
            limit = f"{key}.max_pairs" if spec.max_pairs else "data.max_val_pairs"
            sets[prefix] = load_eval_set(spec.file, data, prefix, spec.max_pairs, limit)
        elif spec.benchmark is not None:
            sets[prefix] = load_cosqa(benchmark_dir(spec), spec.split or DEFAULT_SPLIT)
        else:
            raise DualencError(f"{key}: give file: PAIRS.jsonl or benchmark: NAME")
    return sets

"""``PairSet`` (public as ``dualenc.PairSet``): pairs with their dedup keys and token ids.

Both sides are tokenized once; their token ids and the dedup keys are cached under
``data.cache_dir`` as ``.npy`` files, memory-mapped on the next load of the same data with
the same tokenizer.

Provided negatives (the ``neg`` lists of the training rows) are rows of the code side: a
negative whose text equals a pair's code is that pair's row, so it has that pair's token
ids and keys exactly as if a miner had picked it; every other text is an extra code row,
after the N pairs. The pairs' arrays (``codes``, ``code_ids``, ``code_key``, ...) hold the
N pairs only: miners and the sampler never see the extra rows.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch

from dualenc.core.config import DataConfig, TrainFile
from dualenc.core.data.keys import normalised_code_key, query_key, stable_int64
from dualenc.core.data.records import PairRecords, read_data_config_pairs
from dualenc.core.encode import pad_batch
from dualenc.core.io import staged_dir
from dualenc.errors import DualencError

logger = logging.getLogger(__name__)

# bump when the cache layout or what goes into it (keys, limits) changes
CACHE_FORMAT = 2
_TOKENIZE_CHUNK = 8192


class RaggedIds(Sequence):
    """Variable-length int32 sequences in one flat array: row i is ``flat[offsets[i]:offsets[i+1]]``."""

    def __init__(self, flat: np.ndarray, offsets: np.ndarray):
        self.flat = flat
        self.offsets = offsets

    @classmethod
    def from_arrays(cls, rows: Sequence[np.ndarray]) -> RaggedIds:
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum([len(row) for row in rows], out=offsets[1:])
        flat = np.concatenate(rows).astype(np.int32, copy=False) if rows else np.zeros(0, np.int32)
        return cls(flat, offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, index: int) -> np.ndarray:
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        index %= len(self)
        return self.flat[self.offsets[index] : self.offsets[index + 1]]

    @functools.cached_property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


@attrs.frozen
class PairFile:
    """Pairs ``start:stop`` of a ``PairSet`` came from ``path``; per epoch the sampler draws
    them ``weight`` times (see ``TrainFile``)."""

    path: str
    start: int
    stop: int
    weight: float = 1.0


@attrs.frozen(eq=False)
class PairSet:
    """Pairs with their dedup keys and token ids, as training, mining and evaluation use them.

    Code rows (``code_rows``, ``row_code_key``, ``row_query_key``) are the N pairs' codes,
    then the extra codes of provided negatives; ``negatives`` lists each pair's provided
    negatives as code rows. ``collate(ids, "code")`` takes any code row.
    """

    queries: list[str]
    codes: list[str]
    query_key: np.ndarray  # [N] int64, see ``query_key``
    code_key: np.ndarray  # [N] int64, see ``normalised_code_key``
    query_ids: RaggedIds
    code_ids: RaggedIds
    metadata: list[dict[str, Any]] | None = None
    skipped: dict[str, int] = attrs.field(factory=dict)
    pad_id: int = 0  # the encoder's, for ``collate``
    source: str | None = None  # the file(s) the pairs came from, for messages
    files: tuple[PairFile, ...] = attrs.field(
        default=attrs.Factory(
            lambda pairs: (PairFile(pairs.source or "", 0, len(pairs.queries)),), takes_self=True
        )
    )
    # [N + M] token ids of every code row: the pairs' (``code_ids`` is its first N), then M extra
    code_rows: RaggedIds = attrs.field(default=attrs.Factory(lambda pairs: pairs.code_ids, takes_self=True))
    row_code_key: np.ndarray = attrs.field(
        default=attrs.Factory(lambda pairs: pairs.code_key, takes_self=True)
    )
    # a pair's row has its query's key; an extra row one that no query of the set has
    row_query_key: np.ndarray = attrs.field(
        default=attrs.Factory(lambda pairs: pairs.query_key, takes_self=True)
    )
    extra_codes: list[str] = attrs.field(factory=list)  # the texts of rows N, N + 1, ...
    negatives: RaggedIds | None = None  # [N] rows: each pair's provided negatives, None: none
    max_provided_negatives: int | None = None  # the first this many of each pair (None: all)

    def __len__(self) -> int:
        return len(self.queries)

    def token_ids(self, side: str) -> RaggedIds:
        return {"query": self.query_ids, "code": self.code_ids}[side]

    def row_lengths(self, side: str) -> np.ndarray:
        """Token counts of what ``collate`` takes: queries by pair id, codes by code row."""
        return {"query": self.query_ids, "code": self.code_rows}[side].lengths

    def row_code(self, row: int) -> str:
        """The text of code row ``row``."""
        return self.codes[row] if row < len(self) else self.extra_codes[row - len(self)]

    def collate(
        self, ids: np.ndarray, side: str, device: torch.device | str | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, L] ids and 0/1 mask of one side (queries by pair id, codes by code row),
        padded to this batch's longest sequence."""
        token_ids = {"query": self.query_ids, "code": self.code_rows}[side]
        input_ids, mask = pad_batch([token_ids[i] for i in ids], self.pad_id)
        return input_ids.to(device), mask.to(device)

    def provided_negatives(self, pair_ids: np.ndarray) -> np.ndarray:
        """[B, P] code rows of the pairs' provided negatives in their rows' order, -1 where a
        pair has fewer than the batch's most (P; at most ``max_provided_negatives``)."""
        pair_ids = np.asarray(pair_ids, dtype=np.int64)
        if self.negatives is None:
            return np.full((len(pair_ids), 0), -1, dtype=np.int64)
        counts = self.negatives.lengths[pair_ids]
        if self.max_provided_negatives is not None:
            counts = np.minimum(counts, self.max_provided_negatives)
        rows = np.full((len(pair_ids), int(counts.max(initial=0))), -1, dtype=np.int64)
        for position, (pair, count) in enumerate(zip(pair_ids.tolist(), counts.tolist(), strict=True)):
            rows[position, :count] = self.negatives[pair][:count]
        return rows


_CACHE_ARRAYS = ("query_ids", "query_offsets", "code_ids", "code_offsets", "query_key", "code_key")


def _cache_key(records: list[PairRecords], data_config: DataConfig, encoder) -> str:
    described = {
        "format": CACHE_FORMAT,
        "data": [part.content_hash for part in records],
        "fields": [
            data_config.query_field,
            data_config.code_field,
            data_config.positives_field,
            data_config.negatives_field,
        ],
        "tokenizer": encoder.tokenizer_fingerprint(),
        "max_seq_len": encoder.max_seq_len,
    }
    return hashlib.blake2b(json.dumps(described, sort_keys=True).encode(), digest_size=12).hexdigest()


def _tokenize_all(encoder, texts: list[str], side: str) -> RaggedIds:
    rows: list[np.ndarray] = []
    for start in range(0, len(texts), _TOKENIZE_CHUNK):
        chunk = texts[start : start + _TOKENIZE_CHUNK]
        ids = encoder.tokenize(chunk, side)
        if len(ids) != len(chunk):
            raise DualencError(f"encoder.tokenize returned {len(ids)} sequences for {len(chunk)} texts")
        rows.extend(np.asarray(row, dtype=np.int32) for row in ids)
    return RaggedIds.from_arrays(rows)


_CACHE_DTYPES = {"ids": np.int32, "offsets": np.int64, "key": np.int64}


def _load_cached(directory: Path, count: int, extra: int) -> dict[str, np.ndarray] | None:
    """The cached arrays, memory-mapped, or None when absent or damaged (a warning: the
    cache is rebuilt, it holds nothing that cannot be recomputed)."""
    info_path = directory / "info.json"
    if not info_path.is_file():  # written last: its presence marks a whole cache
        return None
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
        arrays = {}
        for name in _CACHE_ARRAYS:
            arrays[name] = np.load(directory / f"{name}.npy", mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        logger.warning("%s: unreadable token cache, rebuilding (%s)", directory, exc)
        return None
    rows = {"query": count, "code": count + extra}  # the code side has the extra rows too
    consistent = (
        isinstance(info, dict)
        and info.get("pairs") == count
        and info.get("extra_codes", 0) == extra
        and all(
            array.ndim == 1 and array.dtype == _CACHE_DTYPES[name.rsplit("_", 1)[1]]
            for name, array in arrays.items()
        )
        and all(
            len(arrays[f"{side}_offsets"]) == rows[side] + 1
            and len(arrays[f"{side}_key"]) == rows[side]
            and arrays[f"{side}_offsets"][0] == 0
            and arrays[f"{side}_offsets"][-1] == len(arrays[f"{side}_ids"])
            and bool(np.all(np.diff(arrays[f"{side}_offsets"]) >= 0))
            for side in ("query", "code")
        )
    )
    if not consistent:
        logger.warning("%s: token cache does not match the data, rebuilding", directory)
        return None
    return arrays


def _write_cache(directory: Path, arrays: dict[str, np.ndarray], info: dict) -> None:
    """Fill a staged folder and install it as ``directory``: readers never see half a cache.

    A cache that cannot be written (read-only folder, full disk) costs only a warning.
    """
    try:
        with staged_dir(directory) as staged:
            for name, array in arrays.items():
                np.save(staged / f"{name}.npy", array, allow_pickle=False)
            (staged / "info.json").write_text(json.dumps(info, indent=2) + "\n")
    except OSError as exc:
        # unless another process finished the same cache first: its copy is as good as ours
        if not (directory / "info.json").is_file():
            logger.warning("%s: cannot write the token cache, going on without it (%s)", directory, exc)


@attrs.frozen
class _Combined:
    """The records of every training file, one after the other, provided negatives resolved."""

    queries: list[str]
    codes: list[str]
    metadata: list[dict[str, Any]] | None
    skipped: dict[str, int]
    files: tuple[PairFile, ...]
    extra_codes: list[str]
    negatives: RaggedIds | None


def _resolve_negatives(codes: list[str], provided: list[list[str]]) -> tuple[list[str], RaggedIds]:
    """Each pair's negatives as code rows: the first pair with exactly that code, else an
    extra row (numbered from ``len(codes)`` in order of first appearance)."""
    pair_row: dict[str, int] = {}
    for row, code in enumerate(codes):
        pair_row.setdefault(code, row)
    extra: dict[str, int] = {}
    resolved: dict[int, np.ndarray] = {}  # the pairs of one record share its list
    rows = []
    for texts in provided:
        if id(texts) not in resolved:
            resolved[id(texts)] = np.array(
                [
                    pair_row[text] if text in pair_row else len(codes) + extra.setdefault(text, len(extra))
                    for text in texts
                ],
                dtype=np.int64,
            )
        rows.append(resolved[id(texts)])
    return list(extra), RaggedIds.from_arrays(rows)


def _combine(parts: list[PairRecords], weights: list[float]) -> _Combined:
    queries: list[str] = []
    codes: list[str] = []
    metadata: list[dict[str, Any]] = []
    provided: list[list[str]] = []
    skipped: dict[str, int] = {}
    files = []
    for part, weight in zip(parts, weights, strict=True):
        start = len(queries)
        queries += part.queries
        codes += part.codes
        metadata += part.metadata or [{}] * len(part.queries)
        provided += part.negatives or [[]] * len(part.queries)
        for reason, count in part.skipped.items():
            skipped[reason] = skipped.get(reason, 0) + count
        files.append(PairFile(part.path, start, len(queries), weight))
    extra_codes, negatives = [], None
    if any(part.negatives for part in parts):
        extra_codes, negatives = _resolve_negatives(codes, provided)
    return _Combined(
        queries=queries,
        codes=codes,
        metadata=metadata if any(metadata) else None,
        skipped=skipped,
        files=tuple(files),
        extra_codes=extra_codes,
        negatives=negatives,
    )


def _unused_query_key(query_keys: np.ndarray) -> int:
    """A key no query of the set has: an extra row is no query's positive, so the loss must
    never mask it as one."""
    taken = set(np.asarray(query_keys).tolist())
    key = stable_int64("dualenc: a provided negative, no query's positive")
    while key in taken:
        key += 1
    return key


def load_pair_set(files: str | Path | Sequence[TrainFile], data_config: DataConfig, encoder) -> PairSet:
    """Read a training file, or every file of ``data_config.training_files()``, and tokenize
    both sides (and the extra codes of provided negatives) once with ``encoder``.

    Token ids and dedup keys are cached under ``data_config.cache_dir`` as ``.npy`` files,
    keyed by the files' content hashes, the field names, ``encoder.tokenizer_fingerprint()``
    and ``encoder.max_seq_len``; a later call with the same inputs memory-maps them and
    tokenizes nothing.
    """
    if isinstance(files, (str, Path)):
        files = (TrainFile(str(files)),)
    parts = [read_data_config_pairs(file.path, data_config) for file in files]
    data = _combine(parts, [file.weight for file in files])
    source = " + ".join(str(file.path) for file in files)
    count, extra = len(data.queries), len(data.extra_codes)
    directory = Path(data_config.cache_dir) / f"pairs-{_cache_key(parts, data_config, encoder)}"
    arrays = _load_cached(directory, count, extra)
    if arrays is None:
        started = time.perf_counter()
        query_ids = _tokenize_all(encoder, data.queries, "query")
        code_ids = _tokenize_all(encoder, data.codes + data.extra_codes, "code")
        arrays = {
            "query_ids": query_ids.flat,
            "query_offsets": query_ids.offsets,
            "code_ids": code_ids.flat,
            "code_offsets": code_ids.offsets,
            "query_key": np.array([query_key(q) for q in data.queries], dtype=np.int64),
            "code_key": np.array(
                [normalised_code_key(c) for c in data.codes + data.extra_codes], dtype=np.int64
            ),
        }
        info = {
            "source": source,
            "pairs": count,
            "extra_codes": extra,
            "tokenizer": encoder.tokenizer_fingerprint(),
            "max_seq_len": encoder.max_seq_len,
        }
        _write_cache(directory, arrays, info)
        logger.info(
            "%s: tokenized %d pairs and %d extra negatives in %.1fs, cached in %s",
            source,
            count,
            extra,
            time.perf_counter() - started,
            directory,
        )
    else:
        logger.info("%s: %d pairs, token ids from cache %s", source, count, directory)
    query_keys = np.asarray(arrays["query_key"])
    row_code_key = np.asarray(arrays["code_key"])
    code_rows = RaggedIds(arrays["code_ids"], arrays["code_offsets"])
    row_query_key = query_keys
    if extra:
        row_query_key = np.concatenate([query_keys, np.full(extra, _unused_query_key(query_keys), np.int64)])
    return PairSet(
        queries=data.queries,
        codes=data.codes,
        query_key=query_keys,
        code_key=row_code_key[:count],
        query_ids=RaggedIds(arrays["query_ids"], arrays["query_offsets"]),
        code_ids=RaggedIds(code_rows.flat, code_rows.offsets[: count + 1]),
        metadata=data.metadata,
        skipped=data.skipped,
        pad_id=encoder.pad_id,
        source=source,
        files=data.files,
        code_rows=code_rows,
        row_code_key=row_code_key,
        row_query_key=row_query_key,
        extra_codes=data.extra_codes,
        negatives=data.negatives,
        max_provided_negatives=data_config.max_provided_negatives,
    )

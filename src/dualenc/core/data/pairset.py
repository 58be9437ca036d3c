"""``PairSet`` (public as ``dualenc.PairSet``): pairs with their dedup keys and token ids.

Both sides are tokenized once; their token ids and the dedup keys are cached under
``data.cache_dir`` as ``.npy`` files, memory-mapped on the next load of the same data with
the same tokenizer.
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

from dualenc.core.config import DataConfig
from dualenc.core.data.keys import normalised_code_key, query_key
from dualenc.core.data.records import PairRecords, read_pairs
from dualenc.core.encode import pad_batch
from dualenc.core.io import staged_dir
from dualenc.errors import DualencError

logger = logging.getLogger(__name__)

# bump when the cache layout or what goes into it (keys, limits) changes
CACHE_FORMAT = 1
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


@attrs.frozen(eq=False)
class PairSet:
    """Pairs with their dedup keys and token ids, as training, mining and evaluation use them."""

    queries: list[str]
    codes: list[str]
    query_key: np.ndarray  # [N] int64, see ``query_key``
    code_key: np.ndarray  # [N] int64, see ``normalised_code_key``
    query_ids: RaggedIds
    code_ids: RaggedIds
    metadata: list[dict[str, Any]] | None = None
    skipped: dict[str, int] = attrs.field(factory=dict)
    pad_id: int = 0  # the encoder's, for ``collate``
    source: str | None = None  # the file the pairs came from, for messages

    def __len__(self) -> int:
        return len(self.queries)

    def token_ids(self, side: str) -> RaggedIds:
        return {"query": self.query_ids, "code": self.code_ids}[side]

    def collate(
        self, pair_ids: np.ndarray, side: str, device: torch.device | str | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, L] ids and 0/1 mask of one side, padded to this batch's longest sequence."""
        token_ids = self.token_ids(side)
        input_ids, mask = pad_batch([token_ids[i] for i in pair_ids], self.pad_id)
        return input_ids.to(device), mask.to(device)


_CACHE_ARRAYS = ("query_ids", "query_offsets", "code_ids", "code_offsets", "query_key", "code_key")


def _cache_key(records: PairRecords, data_config: DataConfig, encoder) -> str:
    described = {
        "format": CACHE_FORMAT,
        "data": records.content_hash,
        "fields": [data_config.query_field, data_config.code_field],
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


def _load_cached(directory: Path, count: int) -> dict[str, np.ndarray] | None:
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
    consistent = (
        isinstance(info, dict)
        and info.get("pairs") == count
        and all(
            array.ndim == 1 and array.dtype == _CACHE_DTYPES[name.rsplit("_", 1)[1]]
            for name, array in arrays.items()
        )
        and all(
            len(arrays[f"{side}_offsets"]) == count + 1
            and len(arrays[f"{side}_key"]) == count
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


def load_pair_set(path: str | Path, data_config: DataConfig, encoder) -> PairSet:
    """Read ``path`` and tokenize both sides once with ``encoder``.

    Token ids and dedup keys are cached under ``data_config.cache_dir`` as ``.npy`` files,
    keyed by the data's content hash, the field names, ``encoder.tokenizer_fingerprint()``
    and ``encoder.max_seq_len``; a later call with the same inputs memory-maps them and
    tokenizes nothing.
    """
    records = read_pairs(path, data_config.query_field, data_config.code_field, data_config.on_bad_record)
    count = len(records.queries)
    directory = Path(data_config.cache_dir) / f"pairs-{_cache_key(records, data_config, encoder)}"
    arrays = _load_cached(directory, count)
    if arrays is None:
        started = time.perf_counter()
        query_ids = _tokenize_all(encoder, records.queries, "query")
        code_ids = _tokenize_all(encoder, records.codes, "code")
        arrays = {
            "query_ids": query_ids.flat,
            "query_offsets": query_ids.offsets,
            "code_ids": code_ids.flat,
            "code_offsets": code_ids.offsets,
            "query_key": np.array([query_key(q) for q in records.queries], dtype=np.int64),
            "code_key": np.array([normalised_code_key(c) for c in records.codes], dtype=np.int64),
        }
        info = {
            "source": str(path),
            "pairs": count,
            "tokenizer": encoder.tokenizer_fingerprint(),
            "max_seq_len": encoder.max_seq_len,
        }
        _write_cache(directory, arrays, info)
        logger.info(
            "%s: tokenized %d pairs in %.1fs, cached in %s",
            path,
            count,
            time.perf_counter() - started,
            directory,
        )
    else:
        logger.info("%s: %d pairs, token ids from cache %s", path, count, directory)
    return PairSet(
        queries=records.queries,
        codes=records.codes,
        query_key=np.asarray(arrays["query_key"]),
        code_key=np.asarray(arrays["code_key"]),
        query_ids=RaggedIds(arrays["query_ids"], arrays["query_offsets"]),
        code_ids=RaggedIds(arrays["code_ids"], arrays["code_offsets"]),
        metadata=records.metadata,
        skipped=records.skipped,
        pad_id=encoder.pad_id,
        source=str(path),
    )

"""``Retriever``: searches an index directory (``dualenc index build``) with the encoder it
was built with; ``Hit``: one result. ``from dualenc import Retriever``."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import faiss
import numpy as np

from dualenc.core.checkpoint import checkpoint_hash, load_encoder, resolve
from dualenc.core.config import RetrievalConfig, RunConfig
from dualenc.core.device import resolve_device
from dualenc.core.encode import encode_texts
from dualenc.core.index.store import (
    MANIFEST_FILE,
    META_FILE,
    check_dim,
    check_encoder,
    open_index,
    read_manifest,
)
from dualenc.errors import ConfigError, DualencError

# sqlite's smallest default limit on bound parameters per statement
SQL_PARAMETERS = 900


@attrs.frozen
class Hit:
    code: str
    path: str | None
    symbol: str | None
    line: int | None
    id: str  # the record's key: its corpus id, else path::symbol
    score: float

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


class Retriever:
    """Searches an index directory with the encoder it was built with.

    ``Retriever.load("indices/global_kb").search(["binary search"], k=10)``. One retriever
    may serve several threads.
    """

    def __init__(
        self,
        index_dir: Path,
        manifest: dict[str, Any],
        index: faiss.Index,
        meta: sqlite3.Connection,
        encoder,
        batch_size: int = 64,
    ):
        self.index_dir = Path(index_dir)
        self.manifest = manifest
        self.index = index
        # encode_texts restores the mode it finds: eval once here, so that concurrent
        # searches never see another one's switch back to training mode (dropout)
        self.encoder = encoder.eval()
        self.batch_size = batch_size
        self._meta = meta
        self._meta_lock = threading.Lock()

    @classmethod
    def load(
        cls,
        index_dir: str | Path,
        encoder_checkpoint: str | Path | None = None,
        *,
        encoder=None,
        catalog=None,
        batch_size: int = 64,
    ) -> Retriever:
        """Open ``index_dir``. The encoder checkpoint is the one its manifest records unless
        ``encoder_checkpoint`` names another copy; either way its hash must match the
        manifest's. ``encoder``: that checkpoint's encoder, when already loaded; else it is
        rebuilt through ``catalog`` (the installed plugins when None)."""
        index_dir = Path(index_dir)
        manifest = read_manifest(index_dir)
        if encoder_checkpoint is None:
            checkpoint = Path(manifest["encoder"]["checkpoint"])
            if not resolve(checkpoint).exists():
                raise DualencError(
                    f"{index_dir / MANIFEST_FILE}: its encoder checkpoint {checkpoint} is not found; "
                    "pass encoder_checkpoint (--encoder-checkpoint) to use a copy of it"
                )
        else:
            checkpoint = Path(encoder_checkpoint)
        check_encoder(index_dir, manifest, checkpoint, checkpoint_hash(checkpoint))
        index, meta = open_index(index_dir, manifest)
        try:
            if encoder is None:
                encoder, _, _ = load_encoder(checkpoint, catalog)
                encoder.to(resolve_device())
            check_dim(index_dir, index, encoder.dim)
        except BaseException:
            meta.close()
            raise
        return cls(index_dir, manifest, index, meta, encoder, batch_size)

    @classmethod
    def from_config(cls, config: RunConfig | RetrievalConfig | dict[str, Any], *, encoder=None) -> Retriever:
        """A retriever from the seed's ``retrieval:`` block (``enabled``, ``encoder_checkpoint``,
        ``faiss_index``): a ``RunConfig``, a ``RetrievalConfig``, or a dict holding the block
        or a whole config with one."""
        retrieval = _retrieval_config(config)
        if not retrieval.enabled:
            raise DualencError("retrieval.enabled is false; set it to true to use the retriever")
        return cls.load(retrieval.faiss_index, retrieval.encoder_checkpoint, encoder=encoder)

    def encode(self, queries: Sequence[str]) -> np.ndarray:
        """[Q, dim] query vectors, encoded in batches."""
        return encode_texts(self.encoder, list(queries), "query", self.batch_size)

    def search(self, queries: Sequence[str], k: int = 10) -> list[list[Hit]]:
        """The top ``k`` hits of each query, best first; one list per query."""
        if isinstance(queries, str):
            queries = [queries]
        if not queries:
            return []
        check_queries(queries)
        return self.search_vectors(self.encode(queries), k)

    def search_vectors(self, vectors: np.ndarray, k: int = 10) -> list[list[Hit]]:
        """The top ``k`` hits of already encoded queries."""
        if k < 1:
            raise DualencError(f"k must be >= 1 (got {k})")
        scores, ids = self.index.search(np.ascontiguousarray(vectors, dtype=np.float32), k)
        rows = self._records(ids[ids >= 0])
        return [
            [Hit(*rows[int(i)], score=float(s)) for s, i in zip(row_scores, row_ids, strict=True) if i >= 0]
            for row_scores, row_ids in zip(scores, ids, strict=True)
        ]

    def _records(self, ids: np.ndarray) -> dict[int, tuple]:
        """faiss id -> (code, path, symbol, line, key)."""
        wanted = sorted({int(i) for i in ids})
        found: dict[int, tuple] = {}
        with self._meta_lock:
            for start in range(0, len(wanted), SQL_PARAMETERS):
                part = wanted[start : start + SQL_PARAMETERS]
                marks = ",".join("?" * len(part))
                query = f"SELECT id, code, path, symbol, line, key FROM records WHERE id IN ({marks})"
                for row in self._meta.execute(query, part):
                    found[row[0]] = row[1:]
        missing = [i for i in wanted if i not in found]
        if missing:
            raise DualencError(
                f"{self.index_dir / META_FILE}: no records for faiss ids {missing[:5]}; rebuild the index"
            )
        return found

    def close(self) -> None:
        with self._meta_lock:
            self._meta.close()

    def __enter__(self) -> Retriever:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def check_queries(queries: Sequence[str]) -> None:
    """Refuse a query that is not a string or is blank: it would match nothing in particular,
    yet still return k hits."""
    for position, query in enumerate(queries):
        if not isinstance(query, str):
            raise DualencError(f"query {position + 1}: must be a string, got {type(query).__name__}")
        if not query.strip():
            raise DualencError(f"query {position + 1}: is empty or blank; give some words to search for")


def _retrieval_config(config: RunConfig | RetrievalConfig | dict[str, Any]) -> RetrievalConfig:
    if isinstance(config, RunConfig):
        return config.retrieval
    if isinstance(config, RetrievalConfig):
        return config
    if isinstance(config, dict):
        from dualenc.core.configio import Problems, structure

        problems = Problems("retrieval config", {}, {})
        retrieval = structure(config.get("retrieval", config), RetrievalConfig, ("retrieval",), problems)
        if problems.items:
            raise ConfigError(problems.items)
        return retrieval
    raise TypeError(f"expected a RunConfig, RetrievalConfig or dict, got {type(config).__name__}")

"""``Retriever``: searches an index directory (``dualenc index build``) with the encoder it
was built with, or codes indexed in memory (``Retriever.from_encoder``); ``Hit``: one result.
``from dualenc import Retriever``.

Three modes: ``dense`` (the encoder's vectors, FAISS), ``lexical`` (BM25 over code words,
``dualenc.core.lexical``) and ``hybrid`` (both, fused as ``dualenc.core.fusion`` describes);
hybrid is the default wherever there is a lexical part.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import faiss
import numpy as np

from dualenc.core.checkpoint import checkpoint_hash, load_encoder, resolve
from dualenc.core.config import RetrievalConfig, RunConfig
from dualenc.core.device import resolve_device
from dualenc.core.encode import encode_texts
from dualenc.core.fusion import Fusion, check_mode, gather, order
from dualenc.core.index.compressed import RerankedIndex
from dualenc.core.index.store import (
    MANIFEST_FILE,
    META_FILE,
    check_dim,
    check_encoder,
    open_index,
    open_lexical,
    read_manifest,
)
from dualenc.core.lexical import LEXICAL_FILE, LexicalIndex, top_columns
from dualenc.errors import ConfigError, DualencError

# sqlite's smallest default limit on bound parameters per statement
SQL_PARAMETERS = 900
# the Hit fields an index directory's records table holds, in the order selected
RECORD_FIELDS = ("code", "path", "symbol", "line", "id")


@attrs.frozen
class Hit:
    code: str
    path: str | None
    symbol: str | None
    line: int | None
    id: str  # the record's key: its corpus id, else path::symbol
    score: float
    # what ``Retriever.from_encoder`` was given for this code; None for an index directory's
    metadata: dict[str, Any] | None = attrs.field(default=None, hash=False)

    def to_dict(self) -> dict[str, Any]:
        fields = attrs.asdict(self)
        if fields["metadata"] is None:
            del fields["metadata"]
        return fields


class Retriever:
    """Searches an index directory with the encoder it was built with, or codes indexed in
    memory.

    ``Retriever.load("indices/global_kb").search(["binary search"], k=10)``;
    ``Retriever.from_encoder(encoder, codes).search(...)``. One retriever may serve several
    threads. ``lexical``: the BM25 index of the same records by faiss id, or None;
    ``fusion``: how hybrid search fuses (the manifest's, else the default).
    """

    def __init__(
        self,
        index_dir: Path | None,
        manifest: dict[str, Any] | None,
        index: faiss.Index,
        records: SqliteRecords | MemoryRecords,
        encoder,
        batch_size: int = 64,
        lexical: LexicalIndex | None = None,
        fusion: Fusion | None = None,
    ):
        self.index_dir = Path(index_dir) if index_dir is not None else None
        self.manifest = manifest
        self.index = index
        # encode_texts restores the mode it finds: eval once here, so that concurrent
        # searches never see another one's switch back to training mode (dropout)
        self.encoder = encoder.eval()
        self.batch_size = batch_size
        self.lexical = lexical
        self.fusion = fusion or Fusion()
        self._records = records
        self._vectors_lock = threading.Lock()
        self._vector_source = None

    @property
    def default_mode(self) -> str:
        """``hybrid`` when there is a lexical part, else ``dense``."""
        return "dense" if self.lexical is None else "hybrid"

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
            lexical, fusion = open_lexical(index_dir, manifest)
            if encoder is None:
                encoder, _, _ = load_encoder(checkpoint, catalog)
                encoder.to(resolve_device())
            check_dim(index_dir, index, encoder.dim)
        except BaseException:
            meta.close()
            raise
        records = SqliteRecords(index_dir / META_FILE, meta)
        return cls(index_dir, manifest, index, records, encoder, batch_size, lexical, fusion)

    @classmethod
    def from_encoder(
        cls,
        encoder,
        codes: Sequence[str],
        *,
        metadata: Sequence[Mapping[str, Any] | None] | None = None,
        ids: Sequence[str] | None = None,
        batch_size: int = 64,
        lexical: bool = False,
        fusion: Fusion | None = None,
    ) -> Retriever:
        """Index ``codes`` in memory (exact inner product) with ``encoder``, a
        ``dualenc.Encoder`` or an encoder plugin, for code kept in one's own storage.

        ``ids``: each code's ``Hit.id`` (default its position, ``"0"``, ``"1"``, ...), unique.
        ``metadata``: one mapping (or None) per code, returned as ``Hit.metadata``; its
        ``path``, ``symbol`` and ``line`` fill the hit's fields of those names.
        ``lexical``: also build the BM25 index of the codes, for lexical and hybrid search
        (then the default mode); ``fusion``: hybrid search's (default ``Fusion()``)."""
        from dualenc.encoder import Encoder

        model = encoder.model if isinstance(encoder, Encoder) else encoder
        codes = list(codes)
        if not codes:
            raise DualencError("codes: empty; give at least one code to search")
        for position, code in enumerate(codes):
            if not isinstance(code, str):
                raise DualencError(f"codes[{position}]: must be a string, got {type(code).__name__}")
        records = MemoryRecords(codes, metadata, ids)
        index = faiss.IndexFlatIP(model.dim)
        index.add(encode_texts(model.eval(), codes, "code", batch_size))
        bm25 = LexicalIndex.build(codes) if lexical else None
        return cls(None, None, index, records, model, batch_size, bm25, fusion)

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

    def search(
        self,
        queries: Sequence[str],
        k: int = 10,
        *,
        mode: str | None = None,
        fusion: str | None = None,
        weight: float | None = None,
    ) -> list[list[Hit]]:
        """The top ``k`` hits of each query, best first; one list per query.

        ``mode``: ``dense``, ``lexical`` or ``hybrid`` (default: ``default_mode``). In hybrid
        mode ``fusion`` (``interpolate`` or ``rrf``) and ``weight`` (the dense score's, in an
        interpolation; a weight alone means interpolation) override the retriever's fusion.
        A hit's score is that of its mode: inner product, BM25 score, fused score. Lexical
        search leaves out codes sharing no word with the query, so it may return fewer."""
        if isinstance(queries, str):
            queries = [queries]
        mode = self._check_mode(mode, fusion, weight)
        if not queries:
            return []
        check_queries(queries)
        if k < 1:
            raise DualencError(f"k must be >= 1 (got {k})")
        if mode == "lexical":
            return self._lexical_hits(list(queries), k)
        return self.search_vectors(
            self.encode(queries), k, queries=queries, mode=mode, fusion=fusion, weight=weight
        )

    def search_vectors(
        self,
        vectors: np.ndarray,
        k: int = 10,
        *,
        queries: Sequence[str] | None = None,
        mode: str = "dense",
        fusion: str | None = None,
        weight: float | None = None,
    ) -> list[list[Hit]]:
        """The top ``k`` hits of already encoded queries: dense search, or hybrid search of
        the ``queries`` whose vectors these are (``mode="hybrid"``, as ``search``)."""
        if k < 1:
            raise DualencError(f"k must be >= 1 (got {k})")
        mode = self._check_mode(mode, fusion, weight)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if mode == "dense":
            scores, ids = self.index.search(vectors, k)
            return self._hits([(i[i >= 0], s[i >= 0]) for s, i in zip(scores, ids, strict=True)])
        if queries is None or len(queries) != len(vectors):
            raise DualencError(
                f"mode {mode!r}: give the query texts of the vectors (queries=, one per vector)"
            )
        if mode == "lexical":
            return self._lexical_hits(list(queries), k)
        return self._hybrid_hits(list(queries), vectors, k, self.fusion.with_overrides(fusion, weight))

    def _check_mode(self, mode: str | None, fusion: str | None, weight: float | None) -> str:
        mode = check_mode(self.default_mode if mode is None else mode)
        self.fusion.with_overrides(fusion, weight)  # refuses a bad fusion in any mode
        if mode != "dense" and self.lexical is None:
            where = f"{self.index_dir / MANIFEST_FILE}: the index" if self.index_dir else "this retriever"
            fix = (
                "rebuild it with dualenc index build --overwrite (or --update)"
                if self.index_dir
                else "pass lexical=True to Retriever.from_encoder"
            )
            raise DualencError(f"mode {mode!r}: {where} has no lexical part ({LEXICAL_FILE}); {fix}")
        return mode

    def _lexical_hits(self, queries: list[str], k: int) -> list[list[Hit]]:
        found = []
        row = np.zeros(self.lexical.count, dtype=np.float64)  # reused: see fusion.gather
        for position, query in enumerate(queries):
            if position:
                row.fill(0.0)
            columns = top_columns(self.lexical.score_row(query, row), k, positive=True)
            found.append((self.lexical.ids[columns], row[columns]))
        return self._hits(found)

    def _hybrid_hits(
        self, queries: list[str], vectors: np.ndarray, k: int, fusion: Fusion
    ) -> list[list[Hit]]:
        where = str(self.index_dir / LEXICAL_FILE) if self.index_dir else "lexical index"
        gathered = gather(
            vectors,
            queries,
            max(k, fusion.candidates),
            self.index.search,
            self._vectors_of,
            self.lexical,
            where,
        )
        found = []
        for candidates in gathered:
            fused = candidates.fused(fusion)
            best = order(fused, candidates.dense, candidates.ids)[:k]
            found.append((candidates.ids[best], fused[best]))
        return self._hits(found)

    def _hits(self, found: list[tuple[np.ndarray, np.ndarray]]) -> list[list[Hit]]:
        """Hits of each query's (ids, scores), best first."""
        rows = self._records.get(sorted({int(i) for ids, _ in found for i in ids}))
        return [
            [Hit(**rows[int(i)], score=float(s)) for i, s in zip(ids, scores, strict=True)]
            for ids, scores in found
        ]

    def _vectors_of(self, ids: np.ndarray) -> np.ndarray:
        """The stored vectors of faiss ``ids``: an IVF index gets a map from id to vector on
        first use."""
        with self._vectors_lock:
            if self._vector_source is None:
                source = self.index
                if not isinstance(source, faiss.IndexIDMap2 | faiss.IndexFlat | RerankedIndex):
                    ivf = faiss.extract_index_ivf(source)
                    ivf.set_direct_map_type(faiss.DirectMap.Hashtable)
                self._vector_source = source
        return self._vector_source.reconstruct_batch(np.ascontiguousarray(ids, dtype=np.int64))

    def close(self) -> None:
        self._records.close()

    def __enter__(self) -> Retriever:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class SqliteRecords:
    """The records of an index directory, in its meta.sqlite."""

    def __init__(self, path: Path, meta: sqlite3.Connection):
        self.path, self._meta, self._lock = path, meta, threading.Lock()

    def get(self, wanted: list[int]) -> dict[int, dict[str, Any]]:
        """faiss id -> the ``Hit`` fields but the score, of each of the sorted ids ``wanted``."""
        found: dict[int, dict[str, Any]] = {}
        with self._lock:
            for start in range(0, len(wanted), SQL_PARAMETERS):
                part = wanted[start : start + SQL_PARAMETERS]
                marks = ",".join("?" * len(part))
                query = f"SELECT id, code, path, symbol, line, key FROM records WHERE id IN ({marks})"
                for row in self._meta.execute(query, part):
                    found[row[0]] = dict(zip(RECORD_FIELDS, row[1:], strict=True))
        missing = [i for i in wanted if i not in found]
        if missing:
            raise DualencError(f"{self.path}: no records for faiss ids {missing[:5]}; rebuild the index")
        return found

    def close(self) -> None:
        with self._lock:
            self._meta.close()


class MemoryRecords:
    """Codes given in Python: faiss id i is codes[i]."""

    def __init__(
        self,
        codes: list[str],
        metadata: Sequence[Mapping[str, Any] | None] | None,
        ids: Sequence[str] | None,
    ):
        count = len(codes)
        ids = [str(i) for i in range(count)] if ids is None else list(ids)
        metadata = [None] * count if metadata is None else list(metadata)
        for name, given in (("ids", ids), ("metadata", metadata)):
            if len(given) != count:
                raise DualencError(f"{name}: {len(given)} given for {count} codes; give one per code")
        seen: dict[str, int] = {}
        for position, key in enumerate(ids):
            if not isinstance(key, str):
                raise DualencError(f"ids[{position}]: must be a string, got {type(key).__name__}")
            if key in seen:
                raise DualencError(f"ids[{position}]: {key!r} is also ids[{seen[key]}]; ids must be unique")
            seen[key] = position
        self.rows = []
        for position, (code, key, meta) in enumerate(zip(codes, ids, metadata, strict=True)):
            if meta is not None and not isinstance(meta, Mapping):
                raise DualencError(f"metadata[{position}]: must be a mapping, got {type(meta).__name__}")
            meta = dict(meta) if meta is not None else None
            given = meta or {}
            self.rows.append(
                {
                    "code": code,
                    **{name: given.get(name) for name in ("path", "symbol", "line")},
                    "id": key,
                    "metadata": meta,
                }
            )

    def get(self, wanted: list[int]) -> dict[int, dict[str, Any]]:
        return {i: self.rows[i] for i in wanted}

    def close(self) -> None:
        pass


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

"""FAISS indices of code: streamed build, incremental update, and the ``Retriever``.

An index directory holds three files:

- ``index.faiss``: the code vectors. Exact inner product (``IndexIDMap2`` over
  ``IndexFlatIP``) up to ``exact_threshold`` vectors; above it ``IndexIVFFlat`` with
  ``nprobe`` raised until recall@10 against exact search reaches the target.
- ``meta.sqlite``: one row per vector, keyed by its faiss id: the record's key (its corpus
  ``id``, else ``path::symbol``), a hash of its code, path, symbol, line and code.
- ``manifest.json``: the encoder checkpoint and its hash, dimension, count, index type and
  parameters, the measured recall.

Vectors are built in an exact ``IndexIDMap2`` store, one chunk of records at a time; an IVF
index is trained from that store once all vectors are in, so a large build holds the
vectors twice for a moment. An update re-encodes only new and changed records.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import shutil
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import attrs
import faiss
import numpy as np

from dualenc import __version__
from dualenc.core.config import RetrievalConfig, RunConfig, at_least, at_most, greater_than
from dualenc.core.encode import encode_texts
from dualenc.errors import ConfigError, DualencError

INDEX_FILE = "index.faiss"
META_FILE = "meta.sqlite"
MANIFEST_FILE = "manifest.json"
FORMAT_VERSION = 1
RECALL_K = 10
# the checkpoint files whose bytes identify an encoder; tokenizer.json only when present
CHECKPOINT_FILES = ("encoder.json", "model.safetensors")
OPTIONAL_CHECKPOINT_FILES = ("tokenizer.json",)
RECALL_QUERY_SOURCE = (
    "code vectors sampled from the corpus, each query's own vector excluded from both result "
    "lists; real queries were not available at build time (tune_queries), so natural-language "
    "queries will see a lower recall"
)
# sqlite's smallest default limit on bound parameters per statement
SQL_PARAMETERS = 900

_SCHEMA = """
CREATE TABLE records (
    id INTEGER PRIMARY KEY,  -- the vector's faiss id
    key TEXT NOT NULL UNIQUE,  -- identity across updates: the corpus id, else path::symbol
    content_hash TEXT NOT NULL,
    path TEXT,
    symbol TEXT,
    line INTEGER,
    code TEXT NOT NULL
);
CREATE TABLE info (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@attrs.frozen
class IndexOptions:
    # up to this many vectors the index is exact; above it IVF with tuned nprobe
    exact_threshold: int = attrs.field(default=50_000, validator=at_least(1))
    # recall@10 an approximate index must reach against exact search
    recall_target: float = attrs.field(default=0.95, validator=[greater_than(0.0), at_most(1.0)])
    # queries used when measuring recall
    recall_queries: int = attrs.field(default=1000, validator=at_least(1))
    # natural-language queries to tune nprobe on: JSONL with a "query" field, or one per line.
    # Without them corpus code vectors stand in, and those sit close to their own IVF list:
    # tuned on them, real queries lost recall (0.95 -> 0.91 at 4k codes, 0.98 -> 0.42 at 100k)
    tune_queries: str | None = None
    # records read, encoded and added per step: memory is the index plus one chunk
    chunk_size: int = attrs.field(default=2048, validator=at_least(1))
    batch_size: int = attrs.field(default=128, validator=at_least(1))
    seed: int = 0


@attrs.frozen
class CodeRecord:
    """One entry of a code corpus."""

    code: str
    path: str | None = None
    symbol: str | None = None
    line: int | None = None
    id: str | None = None

    def content_hash(self) -> str:
        return hashlib.blake2b(self.code.encode("utf-8"), digest_size=16).hexdigest()

    def base_key(self) -> str:
        """Identity across updates; a record with neither id nor path+symbol is its code."""
        if self.id is not None:
            return self.id
        if self.path and self.symbol:
            return f"{self.path}::{self.symbol}"
        return f"sha:{self.content_hash()}"


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


@attrs.frozen
class BuildReport:
    output_dir: Path
    count: int
    encoded: int  # new and changed records
    unchanged: int
    removed: int  # records gone from the corpus
    seconds: float
    encode_seconds: float
    manifest: dict[str, Any]


# --- corpus ---------------------------------------------------------------------------


def iter_corpus(path: Path) -> Iterator[CodeRecord]:
    """Records of a JSONL file (field ``code``; optional ``path``, ``symbol``, ``line``,
    ``id``), or the functions of a folder or ``.py`` file of Python sources."""
    path = Path(path)
    if not path.exists():
        raise DualencError(f"{path}: code corpus not found")
    if path.is_dir() or path.suffix == ".py":
        return _iter_python_functions(path)
    return _iter_jsonl(path)


def _iter_python_functions(path: Path) -> Iterator[CodeRecord]:
    from dualenc.core.extract import scan_functions

    # every function, docstring kept: the same records `dualenc data extract` reads, unfiltered
    for function in scan_functions([path], keep_docstring=True).functions:
        yield CodeRecord(code=function.code, path=function.path, symbol=function.symbol, line=function.line)


def _iter_jsonl(path: Path) -> Iterator[CodeRecord]:
    with open(path, encoding="utf-8-sig") as lines:
        for number, line in enumerate(lines, 1):
            if line.strip():
                yield _parse_record(line, f"{path}:{number}")


def _parse_record(line: str, where: str) -> CodeRecord:
    try:
        data = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DualencError(f"{where}: not valid JSON ({exc.msg})") from None
    if not isinstance(data, dict):
        raise DualencError(f"{where}: expected a JSON object, got {type(data).__name__}")
    code = data.get("code")
    if not isinstance(code, str) or not code.strip():
        raise DualencError(f"{where}: 'code' must be a non-empty string")
    for field in ("path", "symbol"):
        if data.get(field) is not None and not isinstance(data[field], str):
            raise DualencError(f"{where}: '{field}' must be a string")
    line_number = data.get("line")
    if line_number is not None and (isinstance(line_number, bool) or not isinstance(line_number, int)):
        raise DualencError(f"{where}: 'line' must be an integer")
    record_id = data.get("id")
    if record_id is not None and (isinstance(record_id, bool) or not isinstance(record_id, str | int)):
        raise DualencError(f"{where}: 'id' must be a string or an integer")
    return CodeRecord(
        code=code,
        path=data.get("path"),
        symbol=data.get("symbol"),
        line=line_number,
        id=None if record_id is None else str(record_id),
    )


def _chunks(records: Iterable[CodeRecord], size: int) -> Iterator[list[CodeRecord]]:
    iterator = iter(records)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


# --- encoder checkpoints --------------------------------------------------------------


def checkpoint_hash(directory: Path) -> str:
    """sha256 over the files that define an encoder checkpoint's vectors."""
    from dualenc.core.checkpoint import read_encoder_record, resolve

    directory = resolve(Path(directory))
    read_encoder_record(directory)  # a clear error for a folder that is not a checkpoint
    digest = hashlib.sha256()
    names = list(CHECKPOINT_FILES) + [n for n in OPTIONAL_CHECKPOINT_FILES if (directory / n).is_file()]
    for name in names:
        file = directory / name
        if not file.is_file():
            raise DualencError(f"{directory}: not an encoder checkpoint (no {name})")
        digest.update(name.encode() + b"\0")
        with open(file, "rb") as handle:
            while block := handle.read(1 << 20):
                digest.update(block)
    return f"sha256:{digest.hexdigest()}"


def _load_encoder(checkpoint: Path):
    import torch

    from dualenc.core.checkpoint import load_encoder

    encoder, _, _ = load_encoder(checkpoint)
    if torch.cuda.is_available():
        encoder.to("cuda")
    return encoder


def _check_encoder(index_dir: Path, manifest: dict, checkpoint: Path, actual_hash: str) -> None:
    recorded = manifest["encoder"]
    if recorded["hash"] != actual_hash:
        raise DualencError(
            f"{index_dir / MANIFEST_FILE}: the index was built with encoder checkpoint "
            f"{recorded['checkpoint']} ({recorded['hash'][:19]}), but {checkpoint} is a different "
            f"encoder ({actual_hash[:19]}); pass the checkpoint the index was built with, or rebuild "
            "the index with --overwrite"
        )


# --- reading an index directory -------------------------------------------------------


def read_manifest(index_dir: Path) -> dict[str, Any]:
    index_dir = Path(index_dir)
    path = index_dir / MANIFEST_FILE
    if not index_dir.is_dir():
        raise DualencError(f"{index_dir}: index directory not found")
    if not path.is_file():
        raise DualencError(
            f"{path}: missing; {index_dir} is not a dualenc index (build one with dualenc index build)"
        )
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DualencError(f"{path}: unreadable ({exc})") from None
    for key in ("format", "encoder", "count", "index", "generation"):
        if not isinstance(manifest, dict) or key not in manifest:
            raise DualencError(f"{path}: missing key {key!r}")
    if manifest["format"] != FORMAT_VERSION:
        raise DualencError(f"{path}: index format {manifest['format']}; this dualenc reads {FORMAT_VERSION}")
    return manifest


def _read_faiss(path: Path) -> faiss.Index:
    if not path.is_file():
        raise DualencError(f"{path}: missing; rebuild the index")
    try:
        return faiss.read_index(str(path))
    except RuntimeError as exc:
        reason = str(exc).strip().splitlines()[-1].split("Error: ")[-1]
        raise DualencError(
            f"{path}: unreadable faiss index, truncated or corrupt ({reason}); rebuild it"
        ) from None


def _open_meta(path: Path) -> sqlite3.Connection:
    """meta.sqlite, read-only: builds change a copy of it."""
    if not path.is_file():
        raise DualencError(f"{path}: missing; rebuild the index")
    uri = path.resolve().as_uri() + "?mode=ro"
    # the Retriever serialises its own queries, so one connection may serve many threads
    return sqlite3.connect(uri, uri=True, check_same_thread=False)


def _check_consistent(index_dir: Path, manifest: dict, index: faiss.Index, meta: sqlite3.Connection) -> None:
    meta_path = index_dir / META_FILE
    try:
        rows = meta.execute("SELECT COUNT(*) FROM records").fetchone()[0]
        generation = meta.execute("SELECT value FROM info WHERE name = 'generation'").fetchone()
    except sqlite3.DatabaseError as exc:
        raise DualencError(f"{meta_path}: unreadable ({exc}); rebuild the index") from None
    if generation is None or generation[0] != manifest["generation"]:
        raise DualencError(
            f"{meta_path}: belongs to another build than {index_dir / MANIFEST_FILE} "
            "(an interrupted build or update?); rebuild the index"
        )
    if not index.ntotal == rows == manifest["count"]:
        raise DualencError(
            f"{index_dir / INDEX_FILE}: holds {index.ntotal} vectors, but {meta_path} has {rows} records "
            f"and the manifest says {manifest['count']}; the index is truncated or stale, rebuild it"
        )


# --- the metadata store while building ------------------------------------------------


class _MetaStore:
    """meta.sqlite during a build: decides per record whether it must be encoded."""

    def __init__(self, path: Path):
        self.db = sqlite3.connect(path)
        if not self.db.execute("SELECT name FROM sqlite_master WHERE name = 'records'").fetchone():
            self.db.executescript(_SCHEMA)
        self.db.execute("CREATE TEMP TABLE seen (key TEXT PRIMARY KEY)")
        self.next_id = (self.db.execute("SELECT MAX(id) FROM records").fetchone()[0] or 0) + 1
        self.stale_ids: list[int] = []
        self.unchanged = 0

    def claim_key(self, record: CodeRecord) -> str:
        """The record's key, numbered (``#2``...) when an earlier record of this corpus has it."""
        base = key = record.base_key()
        number = 1
        while not self.db.execute("INSERT OR IGNORE INTO seen VALUES (?)", (key,)).rowcount:
            number += 1
            key = f"{base}#{number}"
        return key

    def needs_encoding(self, key: str, record: CodeRecord, content_hash: str) -> bool:
        """False for an unchanged record (its location is refreshed); a changed one's old
        row goes and its vector is marked for removal."""
        row = self.db.execute("SELECT id, content_hash FROM records WHERE key = ?", (key,)).fetchone()
        if row is None:
            return True
        record_id, old_hash = row
        if old_hash == content_hash:
            self.db.execute(
                "UPDATE records SET path = ?, symbol = ?, line = ? WHERE id = ?",
                (record.path, record.symbol, record.line, record_id),
            )
            self.unchanged += 1
            return False
        self.db.execute("DELETE FROM records WHERE id = ?", (record_id,))
        self.stale_ids.append(record_id)
        return True

    def insert(self, rows: list[tuple[str, str, CodeRecord]]) -> np.ndarray:
        ids = np.arange(self.next_id, self.next_id + len(rows), dtype=np.int64)
        self.next_id += len(rows)
        self.db.executemany(
            "INSERT INTO records (id, key, content_hash, path, symbol, line, code) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                (int(i), key, content_hash, r.path, r.symbol, r.line, r.code)
                for i, (key, content_hash, r) in zip(ids, rows, strict=True)
            ],
        )
        return ids

    def drop_unseen(self) -> int:
        """Remove the records the corpus no longer has; returns how many."""
        unseen = "FROM records WHERE key NOT IN (SELECT key FROM seen)"
        gone = [row[0] for row in self.db.execute(f"SELECT id {unseen}")]
        self.db.execute(f"DELETE {unseen}")
        self.stale_ids.extend(gone)
        return len(gone)

    def finish(self, generation: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO info VALUES ('generation', ?)", (generation,))
        self.db.commit()
        self.db.close()


# --- building -------------------------------------------------------------------------


def build_index(
    corpus: Path,
    output_dir: Path,
    encoder_checkpoint: Path,
    *,
    encoder=None,
    update: bool = False,
    overwrite: bool = False,
    options: IndexOptions = IndexOptions(),
    progress: bool = True,
) -> BuildReport:
    """Encode ``corpus`` with the encoder of ``encoder_checkpoint`` into ``output_dir``.

    ``encoder``: that checkpoint's encoder, when the caller has loaded it already.
    ``update``: re-encode only new and changed records of the index in ``output_dir`` (a new
    index when it holds none). ``overwrite``: replace the index in ``output_dir``.
    """
    started = time.perf_counter()
    corpus, output_dir, encoder_checkpoint = Path(corpus), Path(output_dir), Path(encoder_checkpoint)
    encoder_hash = checkpoint_hash(encoder_checkpoint)
    records = iter_corpus(corpus)
    existing = [name for name in (MANIFEST_FILE, INDEX_FILE, META_FILE) if (output_dir / name).exists()]
    if existing and not (update or overwrite):
        raise DualencError(
            f"{output_dir}: already holds an index; pass --update to bring it up to date with the "
            "corpus, or --overwrite to rebuild it"
        )
    previous = None
    if update and existing:
        previous = read_manifest(output_dir)
        _check_encoder(output_dir, previous, encoder_checkpoint, encoder_hash)
        store = _exact_store(_read_checked_index(output_dir, previous))
    if encoder is None:
        encoder = _load_encoder(encoder_checkpoint)
    if previous is None:
        store = faiss.IndexIDMap2(faiss.IndexFlatIP(encoder.dim))
    output_dir.mkdir(parents=True, exist_ok=True)
    # all changes go to a copy of meta.sqlite, so an interrupted build leaves the index as it was
    staged_meta = output_dir / f"{META_FILE}.tmp"
    staged_meta.unlink(missing_ok=True)
    if previous is not None:
        shutil.copyfile(output_dir / META_FILE, staged_meta)

    meta_store = _MetaStore(staged_meta)
    try:
        records_read, encoded, encode_seconds = _add_corpus(
            records, encoder, store, meta_store, options, progress
        )
        if records_read == 0:
            raise DualencError(f"{corpus}: no code records")
        removed = meta_store.drop_unseen()
        if meta_store.stale_ids:
            store.remove_ids(np.asarray(meta_store.stale_ids, dtype=np.int64))
        index, index_info, recall = _finalize(store, options, encoder)
        generation = uuid.uuid4().hex
        meta_store.finish(generation)
    except BaseException:
        meta_store.db.close()
        staged_meta.unlink(missing_ok=True)
        raise

    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    manifest = {
        "format": FORMAT_VERSION,
        "dualenc_version": __version__,
        "created": previous["created"] if previous else now,
        "updated": now,
        "generation": generation,
        "encoder": {
            "checkpoint": str(encoder_checkpoint.resolve()),
            "hash": encoder_hash,
            "dim": encoder.dim,
        },
        "corpus": str(corpus.resolve()),
        "count": int(index.ntotal),
        "index": index_info,
        "exact_threshold": options.exact_threshold,
        "recall": recall,
    }
    _install(output_dir, index, staged_meta, manifest)
    return BuildReport(
        output_dir=output_dir,
        count=int(index.ntotal),
        encoded=encoded,
        unchanged=meta_store.unchanged,
        removed=removed,
        seconds=time.perf_counter() - started,
        encode_seconds=encode_seconds,
        manifest=manifest,
    )


def _add_corpus(
    records: Iterable[CodeRecord],
    encoder,
    store: faiss.IndexIDMap2,
    meta_store: _MetaStore,
    options: IndexOptions,
    progress: bool,
) -> tuple[int, int, float]:
    """Encode the new and changed records into ``store``, one chunk at a time.

    Returns (records read, records encoded, seconds spent encoding).
    """
    from tqdm import tqdm

    records_read = encoded = 0
    encode_seconds = 0.0
    with tqdm(desc="encoding", unit=" codes", disable=None if progress else True) as bar:
        for chunk in _chunks(records, options.chunk_size):
            records_read += len(chunk)
            pending = []
            for record in chunk:
                key, content_hash = meta_store.claim_key(record), record.content_hash()
                if meta_store.needs_encoding(key, record, content_hash):
                    pending.append((key, content_hash, record))
            if not pending:
                continue
            encode_started = time.perf_counter()
            vectors = encode_texts(encoder, [r.code for _, _, r in pending], "code", options.batch_size)
            encode_seconds += time.perf_counter() - encode_started
            store.add_with_ids(vectors, meta_store.insert(pending))
            encoded += len(pending)
            bar.update(len(pending))
    return records_read, encoded, encode_seconds


def _read_checked_index(index_dir: Path, manifest: dict) -> faiss.Index:
    index = _read_faiss(index_dir / INDEX_FILE)
    meta = _open_meta(index_dir / META_FILE)
    try:
        _check_consistent(index_dir, manifest, index, meta)
    finally:
        meta.close()
    return index


def _exact_store(index: faiss.Index) -> faiss.IndexIDMap2:
    """The exact, updatable form of a loaded index: itself, or an IVF index's vectors."""
    if isinstance(index, faiss.IndexIDMap2):
        return index
    ivf = faiss.extract_index_ivf(index)
    store = faiss.IndexIDMap2(faiss.IndexFlatIP(ivf.d))
    lists = ivf.invlists
    for list_number in range(ivf.nlist):
        size = lists.list_size(list_number)
        if size:
            ids = faiss.rev_swig_ptr(lists.get_ids(list_number), size)
            codes = faiss.rev_swig_ptr(lists.get_codes(list_number), size * lists.code_size)
            store.add_with_ids(codes.view(np.float32).reshape(size, ivf.d), ids)
    return store


def _store_vectors(store: faiss.IndexIDMap2) -> tuple[np.ndarray, np.ndarray]:
    """(ids, vectors) of the exact store; the vectors are a view, valid while it lives."""
    flat = faiss.downcast_index(store.index)
    vectors = faiss.rev_swig_ptr(flat.get_xb(), store.ntotal * store.d).reshape(store.ntotal, store.d)
    return faiss.vector_to_array(store.id_map), vectors


def read_queries(path: Path) -> list[str]:
    """Queries of a JSONL file (field ``query``) or of a text file, one per line."""
    path = Path(path)
    if not path.is_file():
        raise DualencError(f"{path}: query file not found")
    queries = []
    with open(path, encoding="utf-8-sig") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            if not line.lstrip().startswith("{"):
                queries.append(line.strip())
                continue
            try:
                query = json.loads(line).get("query")
            except (json.JSONDecodeError, AttributeError):
                raise DualencError(f"{path}:{number}: not a JSON object") from None
            if not isinstance(query, str) or not query.strip():
                raise DualencError(f"{path}:{number}: 'query' must be a non-empty string")
            queries.append(query)
    if not queries:
        raise DualencError(f"{path}: no queries")
    return queries


def _recall_queries(
    store: faiss.IndexIDMap2, options: IndexOptions, encoder, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, str, str]:
    """Query ids (-1: not in the corpus), query vectors, their kind and where they came from."""
    if options.tune_queries is not None:
        queries = read_queries(Path(options.tune_queries))
        if len(queries) > options.recall_queries:
            chosen = np.sort(rng.choice(len(queries), size=options.recall_queries, replace=False))
            queries = [queries[i] for i in chosen]
        vectors = encode_texts(encoder, queries, "query", options.batch_size)
        source = f"{len(queries)} natural-language queries from {options.tune_queries}, encoded as queries"
        return np.full(len(queries), -1, dtype=np.int64), vectors, "queries", source
    ids, vectors = _store_vectors(store)
    rows = np.sort(rng.choice(len(ids), size=min(options.recall_queries, len(ids)), replace=False))
    return ids[rows], vectors[rows], "code vectors", RECALL_QUERY_SOURCE


def _finalize(store: faiss.IndexIDMap2, options: IndexOptions, encoder) -> tuple[faiss.Index, dict, dict]:
    """The index to serve, its type and parameters, and its recall against exact search."""
    count = store.ntotal
    if count <= options.exact_threshold:
        info = {"type": "flat", "faiss": "IDMap2,Flat", "metric": "inner_product", "params": {}}
        return store, info, {"k": RECALL_K, "value": 1.0, "method": "exact search"}
    ids, vectors = _store_vectors(store)
    rng = np.random.default_rng(options.seed)
    # ~4 sqrt(N) lists, each with at least the 39 training points faiss asks for
    nlist = max(1, min(int(4 * math.sqrt(count)), count // 39))
    ivf = _train_ivf(ids, vectors, nlist, rng)
    del vectors  # the IVF index holds its own copy
    query_ids, queries, tuned_on, source = _recall_queries(store, options, encoder, rng)
    nprobe, recall = _tune_nprobe(ivf, store, query_ids, queries, options.recall_target)
    info = {
        "type": "ivf",
        "faiss": f"IVF{nlist},Flat",
        "metric": "inner_product",
        "params": {"nlist": nlist, "nprobe": nprobe},
    }
    recall_info = {
        "k": RECALL_K,
        "value": round(recall, 4),
        "target": options.recall_target,
        "queries": len(query_ids),
        "tuned_on": tuned_on,
        "query_source": source,
    }
    return ivf, info, recall_info


def _train_ivf(ids: np.ndarray, vectors: np.ndarray, nlist: int, rng: np.random.Generator) -> faiss.Index:
    count, dim = vectors.shape
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
    # k-means uses at most 256 points per centroid anyway
    sample = np.sort(rng.choice(count, size=min(count, 256 * nlist), replace=False))
    on_gpus = faiss.get_num_gpus() > 0
    # k-means and list assignment are the slow parts: on GPUs they run there, and the
    # trained index comes back to the CPU to be written and served
    working = faiss.index_cpu_to_all_gpus(ivf) if on_gpus else ivf
    working.train(vectors[sample])
    working.add_with_ids(vectors, ids)
    return faiss.index_gpu_to_cpu(working) if on_gpus else ivf


def _tune_nprobe(
    ivf: faiss.Index, store: faiss.IndexIDMap2, query_ids: np.ndarray, queries: np.ndarray, target: float
) -> tuple[int, float]:
    """The smallest nprobe whose recall@k against exact search reaches ``target``."""
    k = min(RECALL_K, store.ntotal - 1)
    exact = store.search(queries, k + 1)  # one more: a corpus query's own vector is dropped

    def recall_at(nprobe: int) -> float:
        ivf.nprobe = nprobe
        return _recall(query_ids, exact, ivf.search(queries, k + 1), k)

    # double until the target is met (nprobe = nlist scans everything: exact), then bisect
    low, high = 0, 1
    while high < ivf.nlist and recall_at(high) < target:
        low, high = high, min(2 * high, ivf.nlist)
    while high - low > 1:
        middle = (low + high) // 2
        if recall_at(middle) >= target:
            high = middle
        else:
            low = middle
    return high, recall_at(high)


def _recall(
    query_ids: np.ndarray, exact: tuple[np.ndarray, np.ndarray], found: tuple[np.ndarray, np.ndarray], k: int
) -> float:
    """Share of the exact top k that the approximate top k finds, each query's own vector
    left out (query id -1: a query from outside the corpus); a result scoring at least the
    exact k-th score counts (ties are common: duplicate code encodes to the same vector)."""
    hits = 0
    for query_id, exact_scores, exact_ids, found_scores, found_ids in zip(
        query_ids, *exact, *found, strict=True
    ):
        kth_score = exact_scores[exact_ids != query_id][k - 1]
        kept = found_scores[(found_ids != query_id) & (found_ids >= 0)][:k]
        hits += int(np.count_nonzero(kept >= kth_score - 1e-5))
    return hits / (len(query_ids) * k)


def _install(output_dir: Path, index: faiss.Index, staged_meta: Path, manifest: dict) -> None:
    """Move the new files into place. meta.sqlite goes first and the manifest last: in
    between their generations differ, so a reader sees an interrupted build as one."""
    staged_index = output_dir / f"{INDEX_FILE}.tmp"
    faiss.write_index(index, str(staged_index))
    _fsync(staged_index)
    os.replace(staged_meta, output_dir / META_FILE)
    os.replace(staged_index, output_dir / INDEX_FILE)
    staged_manifest = output_dir / f"{MANIFEST_FILE}.tmp"
    staged_manifest.write_text(json.dumps(manifest, indent=2) + "\n")
    _fsync(staged_manifest)
    os.replace(staged_manifest, output_dir / MANIFEST_FILE)


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


# --- searching ------------------------------------------------------------------------


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
        batch_size: int = 64,
    ) -> Retriever:
        """Open ``index_dir``. The encoder checkpoint is the one its manifest records unless
        ``encoder_checkpoint`` names another copy; either way its hash must match the
        manifest's. ``encoder``: that checkpoint's encoder, when already loaded."""
        from dualenc.core.checkpoint import resolve

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
        _check_encoder(index_dir, manifest, checkpoint, checkpoint_hash(checkpoint))
        index = _read_faiss(index_dir / INDEX_FILE)
        meta = _open_meta(index_dir / META_FILE)
        try:
            _check_consistent(index_dir, manifest, index, meta)
            if encoder is None:
                encoder = _load_encoder(checkpoint)
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

"""The index folder: its files, reading and checking them, the metadata store a build
changes, and installing a build.

An index directory holds these files:

- ``index.faiss``: the code vectors. Exact inner product (``IndexIDMap2`` over
  ``IndexFlatIP``) up to ``exact_threshold`` vectors; above it ``IndexIVFFlat`` with
  ``nprobe`` raised until recall@10 against exact search reaches the target; above
  ``compress_threshold`` ``IndexIVFPQ``, whose shortlist is re-ranked from
  ``vectors-GENERATION.f16.npy`` and ``vector_ids-GENERATION.npy`` (fp16 vectors in id order,
  and their ids; ``dualenc.core.index.compressed``).
- ``meta.sqlite``: one row per vector, keyed by its faiss id: the record's key (its corpus
  ``id``, else ``path::symbol``), a hash of its code, path, symbol, line and code.
- ``lexical.npz`` and ``lexical_vocab.json``: BM25 weights of every record's code words, by
  faiss id (``dualenc.core.lexical``); absent from an index built without its lexical part.
- ``manifest.json``: the encoder checkpoint and its hash, dimension, count, index type and
  parameters, the measured recall, the lexical part's parameters and the fusion of hybrid
  search.

The manifest, meta.sqlite and the lexical files all name the build's generation: files of
different builds (an interrupted install) are told apart by it.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from dualenc.core.fusion import DEFAULT_METHOD, Fusion
from dualenc.core.index.compressed import RerankedIndex, VectorStore, install_store, remove_stale_stores
from dualenc.core.index.corpus import CodeRecord
from dualenc.core.io import (
    atomic_write_json,
    fsync_dir,
    fsync_file,
    hidden_sibling,
    read_json,
    remove_orphaned_siblings,
)
from dualenc.core.lexical import LEXICAL_FILE, VOCAB_FILE, LexicalIndex
from dualenc.errors import DualencError

INDEX_FILE = "index.faiss"
META_FILE = "meta.sqlite"
MANIFEST_FILE = "manifest.json"
FORMAT_VERSION = 1

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


# --- reading and checking ---------------------------------------------------------------


def holds_index(directory: Path) -> bool:
    """Whether ``directory`` holds any file of an index."""
    names = (MANIFEST_FILE, INDEX_FILE, META_FILE, LEXICAL_FILE, VOCAB_FILE)
    return any((directory / name).exists() for name in names)


# key path -> the JSON types it must have, and their names for the message; every key a
# reader or an update uses
_MANIFEST_SHAPE: dict[tuple[str, ...], tuple[tuple[type, ...], str]] = {
    ("format",): ((int,), "an integer"),
    ("generation",): ((str,), "a string"),
    ("count",): ((int,), "an integer"),
    ("encoder",): ((dict,), "an object"),
    ("encoder", "checkpoint"): ((str,), "a string"),
    ("encoder", "hash"): ((str,), "a string"),
    ("index",): ((dict,), "an object"),
}


def read_manifest(index_dir: Path) -> dict[str, Any]:
    """manifest.json, checked to hold every key readers use, each of the right type."""
    index_dir = Path(index_dir)
    path = index_dir / MANIFEST_FILE
    if not index_dir.is_dir():
        raise DualencError(f"{index_dir}: index directory not found")
    if not path.is_file():
        raise DualencError(
            f"{path}: missing; {index_dir} is not a dualenc index (build one with dualenc index build)"
        )
    manifest = read_json(path)
    if not isinstance(manifest, dict):
        raise DualencError(
            f"{path}: expected a JSON object, got {type(manifest).__name__}; rebuild the index"
        )
    for keys, (types, described) in _MANIFEST_SHAPE.items():
        value: Any = manifest
        for key in keys:  # parents come first in _MANIFEST_SHAPE, so value is a dict here
            if key not in value:
                raise DualencError(f"{path}: missing key {'.'.join(keys)!r}; rebuild the index")
            value = value[key]
        # bool is an int to Python, never to a manifest
        if not isinstance(value, types) or isinstance(value, bool):
            raise DualencError(
                f"{path}: {'.'.join(keys)} must be {described}, got {value!r:.60}; rebuild the index"
            )
    if manifest["format"] != FORMAT_VERSION:
        raise DualencError(f"{path}: index format {manifest['format']}; this dualenc reads {FORMAT_VERSION}")
    if manifest["count"] < 0:
        raise DualencError(f"{path}: count must be >= 0, got {manifest['count']}; rebuild the index")
    return manifest


def check_encoder(index_dir: Path, manifest: dict, checkpoint: Path, actual_hash: str) -> None:
    """Refuse an encoder checkpoint other than the one the index was built with."""
    recorded = manifest["encoder"]
    if recorded["hash"] != actual_hash:
        raise DualencError(
            f"{index_dir / MANIFEST_FILE}: the index was built with encoder checkpoint "
            f"{recorded['checkpoint']} ({recorded['hash'][:19]}), but {checkpoint} is a different "
            f"encoder ({actual_hash[:19]}); pass the checkpoint the index was built with, or rebuild "
            "the index with --overwrite"
        )


def open_index(index_dir: Path, manifest: dict) -> tuple[faiss.Index, sqlite3.Connection]:
    """index.faiss and meta.sqlite (read-only: builds change a copy of it), checked to be
    the build ``manifest`` describes."""
    index = _read_faiss(index_dir / INDEX_FILE)
    if manifest["index"].get("type") == "ivfpq":
        index = _reranked(index_dir, manifest, index)
    meta = _open_meta(index_dir / META_FILE)
    try:
        _check_consistent(index_dir, manifest, index, meta)
    except BaseException:
        meta.close()
        raise
    return index, meta


def _reranked(index_dir: Path, manifest: dict, ivfpq: faiss.Index) -> RerankedIndex:
    """A compressed index with its re-rank vectors, as its manifest names them."""
    where = index_dir / MANIFEST_FILE
    entry, params = manifest["index"].get("rerank"), manifest["index"].get("params")
    if not isinstance(entry, dict) or not all(isinstance(entry.get(key), str) for key in ("vectors", "ids")):
        raise DualencError(
            f"{where}: index.rerank must name its 'vectors' and 'ids' files; rebuild the index"
        )
    factor = params.get("rerank_factor") if isinstance(params, dict) else None
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
        raise DualencError(f"{where}: index.params.rerank_factor must be an integer >= 1; rebuild the index")
    store = VectorStore(index_dir / entry["vectors"], index_dir / entry["ids"])
    if store.count != ivfpq.ntotal or store.dim != ivfpq.d:
        raise DualencError(
            f"{store.vectors_path}: holds {store.count} vectors of {store.dim} dimensions, but "
            f"{index_dir / INDEX_FILE} has {ivfpq.ntotal} of {ivfpq.d}; rebuild the index"
        )
    index = RerankedIndex(ivfpq, store, factor)
    nprobe = params.get("nprobe")
    if isinstance(nprobe, int) and not isinstance(nprobe, bool) and nprobe >= 1:
        index.nprobe = nprobe
    return index


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
    if not path.is_file():
        raise DualencError(f"{path}: missing; rebuild the index")
    uri = path.resolve().as_uri() + "?mode=ro"
    # the Retriever serialises its own queries, so one connection may serve many threads
    return sqlite3.connect(uri, uri=True, check_same_thread=False)


def _check_consistent(index_dir: Path, manifest: dict, index: faiss.Index, meta: sqlite3.Connection) -> None:
    meta_path = index_dir / META_FILE
    try:
        rows = meta.execute("SELECT COUNT(*) FROM records").fetchone()[0]
        # every column a search or an update reads: a database of another shape fails here
        meta.execute("SELECT id, key, content_hash, path, symbol, line, code FROM records LIMIT 1").fetchall()
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


def open_lexical(index_dir: Path, manifest: dict) -> tuple[LexicalIndex | None, Fusion]:
    """The lexical part of the index (None when it was built without one, as before hybrid
    search) and the fusion its manifest records, checked to be the build ``manifest`` describes."""
    where = index_dir / MANIFEST_FILE
    entry = manifest.get("lexical")
    if entry is None:
        return None, Fusion()
    if not isinstance(entry, dict):
        raise DualencError(f"{where}: lexical must be an object, got {entry!r:.60}; rebuild the index")
    fusion = Fusion.from_manifest(manifest.get("fusion", {"method": DEFAULT_METHOD}), str(where))
    lexical = LexicalIndex.read(index_dir, manifest["generation"], manifest["count"])
    return lexical, fusion


def check_dim(index_dir: Path, index: faiss.Index, encoder_dim: int) -> None:
    """Refuse an encoder whose vectors do not fit the index's."""
    if index.d != encoder_dim:
        raise DualencError(
            f"{index_dir / INDEX_FILE}: holds {index.d}-dimensional vectors, but the encoder makes "
            f"{encoder_dim}-dimensional ones; rebuild the index"
        )


# --- building ---------------------------------------------------------------------------


@contextmanager
def staged_meta(output_dir: Path, copy_existing: bool) -> Iterator[Path]:
    """Where a build writes its meta.sqlite: a copy of the index's (``copy_existing``) or a
    new file, beside it. Removed when the build fails, so that the index stays as it was;
    what a killed build left half-written there is removed first."""
    output_dir.mkdir(parents=True, exist_ok=True)
    remove_orphaned_siblings(output_dir)
    staged = hidden_sibling(output_dir / META_FILE)
    if copy_existing:
        shutil.copyfile(output_dir / META_FILE, staged)
    try:
        yield staged
    except BaseException:
        staged.unlink(missing_ok=True)
        raise


class MetaStore:
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

    def column(self, name: str, ids: range) -> list:
        """Column ``name`` (``code``, ``content_hash``) of the records with faiss ids in ``ids``,
        in id order."""
        query = f"SELECT {name} FROM records WHERE id >= ? AND id < ? ORDER BY id"
        return [row[0] for row in self.db.execute(query, (ids.start, ids.stop))]

    def count(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM records").fetchone()[0]

    def drop_unseen(self) -> int:
        """Remove the records the corpus no longer has; returns how many."""
        unseen = "FROM records WHERE key NOT IN (SELECT key FROM seen)"
        gone = [row[0] for row in self.db.execute(f"SELECT id {unseen}")]
        self.db.execute(f"DELETE {unseen}")
        self.stale_ids.extend(gone)
        return len(gone)

    def lexical_index(self, k1: float, b: float, spill_dir: Path) -> LexicalIndex:
        """The BM25 index of every record's code, as the records stand now, by faiss id (its
        build spills postings to an unnamed file in ``spill_dir``)."""
        ids = np.fromiter((row[0] for row in self.db.execute("SELECT id FROM records ORDER BY id")), np.int64)
        codes = (row[0] for row in self.db.execute("SELECT code FROM records ORDER BY id"))
        return LexicalIndex.build(codes, ids, k1=k1, b=b, spill_dir=spill_dir)

    def ids_of_hashes(self, hashes: list[str]) -> dict[str, list[int]]:
        """Each of ``hashes`` that some records' code has -> their faiss ids (one scan of
        the records against a temporary table: no dict of the whole corpus)."""
        self.db.execute("CREATE TEMP TABLE IF NOT EXISTS wanted (content_hash TEXT PRIMARY KEY)")
        self.db.execute("DELETE FROM wanted")
        self.db.executemany("INSERT OR IGNORE INTO wanted VALUES (?)", [(h,) for h in hashes])
        found: dict[str, list[int]] = {}
        query = "SELECT id, content_hash FROM records WHERE content_hash IN (SELECT content_hash FROM wanted)"
        for record_id, content_hash in self.db.execute(query):
            found.setdefault(content_hash, []).append(record_id)
        return found

    def finish(self, generation: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO info VALUES ('generation', ?)", (generation,))
        self.db.commit()

    def __enter__(self) -> MetaStore:
        return self

    def __exit__(self, *exc_info) -> None:
        self.db.close()


def install(
    output_dir: Path,
    index,
    meta_file: Path,
    manifest: dict,
    lexical: LexicalIndex | None = None,
    staged_store: tuple[Path, Path] | None = None,
) -> None:
    """Move a build's files into place: ``meta_file`` (its staged meta.sqlite), then
    ``index``, then the ``lexical`` part and a compressed index's re-rank vectors
    (``staged_store``, named for the generation), then ``manifest``, to which the bytes per
    vector are added. meta.sqlite goes first and the manifest last: in between their
    generations differ, so a reader sees an interrupted build as one. Files of an earlier
    build that this one has not (a lexical part, re-rank vectors) are removed."""
    staged_index = hidden_sibling(output_dir / INDEX_FILE)
    staged_lexical = [hidden_sibling(output_dir / name) for name in (LEXICAL_FILE, VOCAB_FILE)]
    try:
        faiss.write_index(index.ivfpq if isinstance(index, RerankedIndex) else index, str(staged_index))
        fsync_file(staged_index)
        manifest["index"]["bytes_per_vector"] = _bytes_per_vector(
            staged_index, staged_store, manifest["count"]
        )
        if lexical is not None:
            lexical.write(*staged_lexical, manifest["generation"])
        os.replace(meta_file, output_dir / META_FILE)
        os.replace(staged_index, output_dir / INDEX_FILE)
        if lexical is not None:
            for staged, name in zip(staged_lexical, (LEXICAL_FILE, VOCAB_FILE), strict=True):
                os.replace(staged, output_dir / name)
        if staged_store is not None:
            manifest["index"]["rerank"] = {
                **install_store(output_dir, staged_store, manifest["generation"]),
                "dtype": "float16",
            }
    finally:
        for staged in (staged_index, *staged_lexical):
            staged.unlink(missing_ok=True)
    atomic_write_json(output_dir / MANIFEST_FILE, manifest)
    if lexical is None:
        for name in (LEXICAL_FILE, VOCAB_FILE):
            (output_dir / name).unlink(missing_ok=True)
    remove_stale_stores(output_dir, manifest["index"].get("rerank", {}).values())
    fsync_dir(output_dir)


def _bytes_per_vector(index_file: Path, staged_store: tuple[Path, Path] | None, count: int) -> dict:
    """What a vector costs: in memory when served (the faiss index, and a compressed index's
    id list), and on disk for re-ranking (its fp16 copy, read through a memory map)."""
    in_memory = index_file.stat().st_size
    on_disk = 0
    if staged_store is not None:
        vectors_file, ids_file = staged_store
        in_memory += ids_file.stat().st_size
        on_disk = vectors_file.stat().st_size
    per = max(count, 1)
    return {"in_memory": round(in_memory / per, 1), "on_disk": round(on_disk / per, 1)}

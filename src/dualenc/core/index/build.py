"""``build_index``: a streamed build or an incremental update of an index directory.

Vectors are built in an exact ``IndexIDMap2`` store, one chunk of records at a time; an IVF
index is trained from that store once all vectors are in (``tune.index_to_serve``), so a
large build holds the vectors twice for a moment. An update re-encodes only new and changed
records, and works on copies: an interrupted build leaves the index as it was.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import attrs
import faiss
import numpy as np

from dualenc import __version__
from dualenc.core.checkpoint import checkpoint_hash, load_encoder
from dualenc.core.device import resolve_device
from dualenc.core.encode import encode_texts
from dualenc.core.index.corpus import CodeRecord, chunks, iter_corpus
from dualenc.core.index.options import IndexOptions
from dualenc.core.index.store import (
    FORMAT_VERSION,
    MetaStore,
    check_dim,
    check_encoder,
    holds_index,
    install,
    open_index,
    read_manifest,
    staged_meta,
)
from dualenc.core.index.tune import index_to_serve, tune_fusion
from dualenc.errors import DualencError


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


def build_index(
    corpus: Path,
    output_dir: Path,
    encoder_checkpoint: Path,
    *,
    encoder=None,
    catalog=None,
    update: bool = False,
    overwrite: bool = False,
    options: IndexOptions = IndexOptions(),
    progress: bool = True,
) -> BuildReport:
    """Encode ``corpus`` with the encoder of ``encoder_checkpoint`` into ``output_dir``.

    ``encoder``: that checkpoint's encoder, when the caller has loaded it already; else it is
    rebuilt through ``catalog`` (the installed plugins when None).
    ``update``: re-encode only new and changed records of the index in ``output_dir`` (a new
    index when it holds none). ``overwrite``: replace the index in ``output_dir``.
    """
    started = time.perf_counter()
    corpus, output_dir, encoder_checkpoint = Path(corpus), Path(output_dir), Path(encoder_checkpoint)
    encoder_hash = checkpoint_hash(encoder_checkpoint)
    records = iter_corpus(corpus)
    previous = _previous_manifest(output_dir, update, overwrite)
    if previous is not None:
        check_encoder(output_dir, previous, encoder_checkpoint, encoder_hash)
        previous_index, meta = open_index(output_dir, previous)
        meta.close()
        store = _exact_store(previous_index)
    if encoder is None:
        encoder, _, _ = load_encoder(encoder_checkpoint, catalog)
        encoder.to(resolve_device())
    if previous is None:
        store = faiss.IndexIDMap2(faiss.IndexFlatIP(encoder.dim))
    else:
        check_dim(output_dir, store, encoder.dim)

    # folders this build creates, deepest first: a failed build removes them again
    created = [folder for folder in (output_dir, *output_dir.parents) if not folder.exists()]
    try:
        with staged_meta(output_dir, copy_existing=previous is not None) as meta_file:
            with MetaStore(meta_file) as meta_store:
                records_read, encoded, encode_seconds = _add_corpus(
                    records, encoder, store, meta_store, options, progress
                )
                if records_read == 0:
                    raise DualencError(f"{corpus}: no code records")
                removed = meta_store.drop_unseen()
                if meta_store.stale_ids:
                    store.remove_ids(np.asarray(meta_store.stale_ids, dtype=np.int64))
                index, index_info, recall = index_to_serve(store, options, encoder)
                lexical = fusion = None
                if options.lexical:
                    lexical_started = time.perf_counter()
                    lexical = meta_store.lexical_index(options.bm25_k1, options.bm25_b)
                    lexical_seconds = time.perf_counter() - lexical_started
                    fusion = tune_fusion(index, store, lexical, encoder, options, meta_store.ids_of_hash())
                generation = uuid.uuid4().hex
                meta_store.finish(generation)
            now = datetime.now(timezone.utc).isoformat(timespec="seconds")
            manifest = {
                "format": FORMAT_VERSION,
                "dualenc_version": __version__,
                "created": previous.get("created", now) if previous else now,
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
            if lexical is not None:
                manifest["lexical"] = {**lexical.manifest_entry(), "build_seconds": round(lexical_seconds, 3)}
                manifest["fusion"] = fusion
            install(output_dir, index, meta_file, manifest, lexical)
    except BaseException:
        for folder in created:
            try:
                folder.rmdir()
            except OSError:  # not empty: something else wrote there meanwhile
                break
        raise
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


def _previous_manifest(output_dir: Path, update: bool, overwrite: bool) -> dict | None:
    """The manifest of the index an update starts from; None when the build starts afresh."""
    if not holds_index(output_dir):
        return None
    if not (update or overwrite):
        raise DualencError(
            f"{output_dir}: already holds an index; pass --update to bring it up to date with the "
            "corpus, or --overwrite to rebuild it"
        )
    return read_manifest(output_dir) if update else None


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


def _add_corpus(
    records: Iterable[CodeRecord],
    encoder,
    store: faiss.IndexIDMap2,
    meta_store: MetaStore,
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
        for chunk in chunks(records, options.chunk_size):
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

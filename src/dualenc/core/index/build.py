"""``build_index``: a streamed build or an incremental update of an index directory.

Records are read a chunk at a time into the metadata store, which says which are new or
changed; those are encoded in pieces (``shards``: across the ranks of a torchrun build, each
piece kept in a work folder so that a killed build resumes). Up to ``compress_threshold``
vectors the pieces are added to an exact ``IndexIDMap2`` store, from which an IVF index is
trained above ``exact_threshold`` (``tune.index_to_serve``; the vectors are held twice for a
moment). Above ``compress_threshold`` they are streamed a block at a time into an fp16 file
and an IVF-PQ index trained on a bounded sample of it (``compressed``): memory then holds the
compressed index, not the vectors. An update re-encodes only new and changed records, and
works on copies: an interrupted build leaves the index as it was.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import attrs
import faiss
import numpy as np

from dualenc import __version__
from dualenc.core import distributed
from dualenc.core.checkpoint import checkpoint_hash, load_encoder
from dualenc.core.device import resolve_device
from dualenc.core.encode import encoding_alone
from dualenc.core.index.compressed import BLOCK_ROWS, RerankedIndex, VectorStore, write_store
from dualenc.core.index.corpus import CodeRecord, iter_corpus
from dualenc.core.index.options import IndexOptions
from dualenc.core.index.shards import Plan, PlanSender, WorkFolder, encode_pieces, plan_pieces, share_plan
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
from dualenc.core.index.tune import compressed_to_serve, index_to_serve, tune_fusion
from dualenc.core.io import chunks
from dualenc.errors import DualencError


@attrs.frozen
class BuildReport:
    output_dir: Path
    count: int
    encoded: int  # new and changed records
    resumed: int  # of those, the ones an interrupted build had encoded already
    unchanged: int
    removed: int  # records gone from the corpus
    seconds: float
    encode_seconds: float  # encoding the records not resumed, on every rank together
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
) -> BuildReport | None:
    """Encode ``corpus`` with the encoder of ``encoder_checkpoint`` into ``output_dir``.

    ``encoder``: that checkpoint's encoder, when the caller has loaded it already; else it is
    rebuilt through ``catalog`` (the installed plugins when None).
    ``update``: re-encode only new and changed records of the index in ``output_dir`` (a new
    index when it holds none). ``overwrite``: replace the index in ``output_dir``.
    Under torchrun every rank calls this together: each encodes its share of the records;
    rank 0 alone reads the corpus, writes the index and returns the report, the other ranks
    return None.
    """
    started = time.perf_counter()
    corpus, output_dir, encoder_checkpoint = Path(corpus), Path(output_dir), Path(encoder_checkpoint)
    if not distributed.is_main():
        if encoder is None:  # loaded while rank 0 reads the corpus
            encoder = _load_encoder(encoder_checkpoint, catalog)
        plan = share_plan(None)
        if plan is not None:
            encode_pieces(plan, encoder, options.batch_size)
        return None
    sender = PlanSender()
    try:
        return _build(
            corpus,
            output_dir,
            encoder_checkpoint,
            encoder=encoder,
            catalog=catalog,
            update=update,
            overwrite=overwrite,
            options=options,
            progress=progress,
            sender=sender,
            started=started,
        )
    except BaseException:
        sender.abort()  # the other ranks stop waiting for a plan
        raise


def _build(
    corpus: Path,
    output_dir: Path,
    encoder_checkpoint: Path,
    *,
    encoder,
    catalog,
    update: bool,
    overwrite: bool,
    options: IndexOptions,
    progress: bool,
    sender: PlanSender,
    started: float,
) -> BuildReport:
    """``build_index`` on rank 0 (or alone); ``sender`` takes the plan to the other ranks."""
    encoder_hash = checkpoint_hash(encoder_checkpoint)
    records = iter_corpus(corpus)
    previous = _previous_manifest(output_dir, update, overwrite)
    previous_index = None
    if previous is not None:
        check_encoder(output_dir, previous, encoder_checkpoint, encoder_hash)
        previous_index, meta = open_index(output_dir, previous)
        meta.close()
    if encoder is None:
        encoder = _load_encoder(encoder_checkpoint, catalog)
    if previous_index is not None:
        check_dim(output_dir, previous_index, encoder.dim)

    # folders this build creates, deepest first: a failed build removes them again
    created = [folder for folder in (output_dir, *output_dir.parents) if not folder.exists()]
    work = WorkFolder(output_dir)
    generation = uuid.uuid4().hex
    staged_store = None
    try:
        with staged_meta(output_dir, copy_existing=previous is not None) as meta_file:
            with MetaStore(meta_file) as meta_store:
                first_id = meta_store.next_id
                records_read = _claim_records(records, meta_store, options.chunk_size)
                if records_read == 0:
                    raise DualencError(f"{corpus}: no code records")
                removed = meta_store.drop_unseen()
                plan = plan_pieces(
                    meta_store,
                    first_id,
                    meta_store.next_id - first_id,
                    options.chunk_size,
                    encoder_hash,
                    encoder.dim,
                    work,
                )
                sender.send(plan)
                encode_seconds = _encode(plan, encoder, meta_store, work, options, progress)
                count = meta_store.count()
                with encoding_alone():  # the other ranks are done: tuning queries are ours to encode
                    if count > options.compress_threshold:
                        blocks = _vector_blocks(previous_index, meta_store.stale_ids, plan, work)
                        staged_store = write_store(output_dir, count, encoder.dim, blocks)
                        index, index_info, recall = compressed_to_serve(
                            VectorStore(*staged_store, keep_mapped=False), options, encoder
                        )
                        vectors_of = index
                    else:
                        store = _exact_store(previous_index, encoder.dim)
                        for ids, vectors in _vector_blocks(None, [], plan, work):
                            store.add_with_ids(vectors, ids)
                        if meta_store.stale_ids:
                            store.remove_ids(np.asarray(meta_store.stale_ids, dtype=np.int64))
                        index, index_info, recall = index_to_serve(store, options, encoder)
                        vectors_of = store
                    del previous_index  # its vectors are in the new index now
                    lexical = fusion = None
                    if options.lexical:
                        lexical_started = time.perf_counter()
                        lexical = meta_store.lexical_index(options.bm25_k1, options.bm25_b, output_dir)
                        lexical_seconds = time.perf_counter() - lexical_started
                        fusion = tune_fusion(
                            index, vectors_of, lexical, encoder, options, meta_store.ids_of_hashes
                        )
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
                "compress_threshold": options.compress_threshold,
                "recall": recall,
            }
            if lexical is not None:
                manifest["lexical"] = {**lexical.manifest_entry(), "build_seconds": round(lexical_seconds, 3)}
                manifest["fusion"] = fusion
            install(output_dir, index, meta_file, manifest, lexical, staged_store)
        work.remove()
    except BaseException:
        for path in staged_store or ():
            path.unlink(missing_ok=True)
        work.remove_if_empty()
        for folder in created:
            try:
                folder.rmdir()
            except OSError:  # not empty: something else wrote there meanwhile, or kept pieces
                break
        raise
    return BuildReport(
        output_dir=output_dir,
        count=int(index.ntotal),
        encoded=plan.count,
        resumed=plan.resumed,
        unchanged=meta_store.unchanged,
        removed=removed,
        seconds=time.perf_counter() - started,
        encode_seconds=encode_seconds,
        manifest=manifest,
    )


def _load_encoder(encoder_checkpoint: Path, catalog):
    encoder, _, _ = load_encoder(encoder_checkpoint, catalog)
    encoder.to(resolve_device())
    return encoder


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


def _exact_store(previous_index, dim: int) -> faiss.IndexIDMap2:
    """The exact, updatable form of the index an update starts from (None: an empty one):
    itself, or the vectors of an IVF or compressed index."""
    if previous_index is None:
        return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    if isinstance(previous_index, faiss.IndexIDMap2):
        return previous_index
    store = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    for ids, vectors in _previous_blocks(previous_index):
        store.add_with_ids(vectors, ids)
    return store


def _previous_blocks(previous_index) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(ids, vectors) of a loaded index, in ascending id order, a block at a time."""
    if isinstance(previous_index, RerankedIndex):
        yield from previous_index.store.blocks()
        return
    if isinstance(previous_index, faiss.IndexIDMap2):
        flat = faiss.downcast_index(previous_index.index)
        count, dim = previous_index.ntotal, previous_index.d
        vectors = faiss.rev_swig_ptr(flat.get_xb(), count * dim).reshape(count, dim)
        ids = faiss.vector_to_array(previous_index.id_map)
        order = np.argsort(ids, kind="stable")
        for start in range(0, count, BLOCK_ROWS):
            rows = order[start : start + BLOCK_ROWS]
            yield ids[rows], vectors[rows]
        return
    ivf = faiss.extract_index_ivf(previous_index)
    lists = ivf.invlists
    parts = []
    for list_number in range(ivf.nlist):
        size = lists.list_size(list_number)
        if size:
            ids = faiss.rev_swig_ptr(lists.get_ids(list_number), size)
            codes = faiss.rev_swig_ptr(lists.get_codes(list_number), size * lists.code_size)
            parts.append((ids.copy(), codes.view(np.float32).reshape(size, ivf.d).copy()))
    ids = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, dtype=np.int64)
    vectors = np.concatenate([p[1] for p in parts]) if parts else np.zeros((0, ivf.d), dtype=np.float32)
    order = np.argsort(ids, kind="stable")
    for start in range(0, len(ids), BLOCK_ROWS):
        rows = order[start : start + BLOCK_ROWS]
        yield ids[rows], vectors[rows]


def _vector_blocks(
    previous_index, stale_ids: list[int], plan: Plan, work: WorkFolder
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(ids, vectors) of every vector the new index holds, ids ascending: those of the
    previous index but ``stale_ids`` (changed and removed records), then the new pieces."""
    if previous_index is not None:
        stale = np.asarray(stale_ids, dtype=np.int64)
        for ids, vectors in _previous_blocks(previous_index):
            kept = ~np.isin(ids, stale)
            yield ids[kept], vectors[kept]
    for piece in range(plan.pieces):
        ids = plan.ids(piece)
        yield np.arange(ids.start, ids.stop, dtype=np.int64), work.read(plan.digests[piece])


def _claim_records(records: Iterable[CodeRecord], meta_store: MetaStore, chunk_size: int) -> int:
    """Give each new and changed record its row and faiss id in ``meta_store``, one chunk at
    a time; returns the number of records read."""
    records_read = 0
    for chunk in chunks(records, chunk_size):
        records_read += len(chunk)
        pending = []
        for record in chunk:
            key, content_hash = meta_store.claim_key(record), record.content_hash()
            if meta_store.needs_encoding(key, record, content_hash):
                pending.append((key, content_hash, record))
        if pending:
            meta_store.insert(pending)
    return records_read


def _encode(
    plan: Plan, encoder, meta_store: MetaStore, work: WorkFolder, options: IndexOptions, progress: bool
) -> float:
    """Rank 0's part in encoding ``plan``'s pieces into ``work``; returns the seconds it took."""
    from tqdm import tqdm

    started = time.perf_counter()
    total = plan.count - plan.resumed
    with tqdm(desc="encoding", total=total, unit=" codes", disable=None if progress else True) as bar:
        encode_pieces(
            plan,
            encoder,
            options.batch_size,
            codes=lambda ids: meta_store.column("code", ids),
            work=work,
            progress=bar.update,
        )
    return time.perf_counter() - started

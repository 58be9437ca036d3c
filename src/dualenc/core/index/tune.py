"""Which index a build serves: the exact store up to ``exact_threshold`` vectors, above it
IVF with the smallest ``nprobe`` whose recall@10 against exact search reaches the target,
measured on natural-language queries when given, else on code vectors of the corpus. And
how hybrid search fuses dense and lexical scores: the best setting on query/code pairs when
the tuning queries are pairs, else the default."""

from __future__ import annotations

import math
from pathlib import Path

import faiss
import numpy as np

from dualenc.core.encode import encode_texts
from dualenc.core.fusion import METHODS, WEIGHT_GRID, Fusion, gather
from dualenc.core.index.compressed import (
    RERANK_FACTORS,
    TRAIN_SAMPLE,
    RerankedIndex,
    VectorStore,
    exact_top,
    pq_bytes,
    train_ivfpq,
)
from dualenc.core.index.corpus import CodeRecord, read_queries, read_query_pairs
from dualenc.core.index.options import IndexOptions

RECALL_K = 10
DEFAULT_FUSION_SOURCE = (
    "default: interpolation weight chosen on 1,000 stdlib training pairs with the zero-shot "
    "all-MiniLM-L6-v2; give query/code pairs as --tune-queries to choose on your own queries"
)
RECALL_QUERY_SOURCE = (
    "code vectors sampled from the corpus, each query's own vector excluded from both result "
    "lists; real queries were not available at build time (tune_queries), so natural-language "
    "queries will see a lower recall"
)


def index_to_serve(
    store: faiss.IndexIDMap2, options: IndexOptions, encoder
) -> tuple[faiss.Index, dict, dict]:
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
    query_ids, queries, tuned_on, source = _recall_queries(count, _code_sample(store), options, encoder, rng)
    k = min(RECALL_K, count - 1)
    exact = store.search(queries, k + 1)  # one more: a corpus query's own vector is dropped
    nprobe, recall = _tune_nprobe(ivf, exact, query_ids, queries, options.recall_target, k)
    info = {
        "type": "ivf",
        "faiss": f"IVF{nlist},Flat",
        "metric": "inner_product",
        "params": {"nlist": nlist, "nprobe": nprobe},
    }
    return ivf, info, _recall_info(recall, options, query_ids, tuned_on, source)


def compressed_to_serve(
    store: VectorStore, options: IndexOptions, encoder
) -> tuple[RerankedIndex, dict, dict]:
    """IVF-PQ re-ranked from the fp16 ``store``, with the ``nprobe`` and shortlist of the
    least estimated work whose recall@10 against exact search over the store reaches the
    target; its type, parameters and recall."""
    count = store.count
    rng = np.random.default_rng(options.seed)
    # ~2 sqrt(N) lists: k-means trains on a bounded sample, which must give each its points
    nlist = max(1, min(int(2 * math.sqrt(count)), count // 39, TRAIN_SAMPLE // 39))
    code_bytes = pq_bytes(store.dim, options.pq_bytes)
    index = RerankedIndex(train_ivfpq(store, nlist, code_bytes, rng), store, RERANK_FACTORS[0])

    def sample(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return store.ids[rows], store.rows(rows)

    query_ids, queries, tuned_on, source = _recall_queries(count, sample, options, encoder, rng)
    k = min(RECALL_K, count - 1)
    exact = exact_top(store, queries, k + 1)
    tried = []
    best_work = math.inf
    # the largest shortlist first: it needs the fewest lists, and bounds the others' search
    for factor in sorted(RERANK_FACTORS, reverse=True):
        index.rerank_factor = factor
        rerank_work = 4 * factor * RECALL_K * store.dim * 2
        probe_work = count / nlist * code_bytes
        # bytes touched per query: the PQ codes of the lists probed, the shortlist's fp16 rows
        # (a random read each, weighed 4x); a setting that cannot beat the best is not searched
        limit = nlist if math.isinf(best_work) else int((best_work - rerank_work) / probe_work)
        if limit < 1:
            continue
        nprobe, recall = _tune_nprobe(index, exact, query_ids, queries, options.recall_target, k, limit)
        if recall < options.recall_target and limit < nlist:
            continue
        work = nprobe * probe_work + rerank_work
        if recall >= options.recall_target:
            best_work = min(best_work, work)
        tried.append((recall < options.recall_target, work, -recall, factor, nprobe, recall))
    _, _, _, factor, nprobe, recall = min(tried)
    tuning = [{"rerank_factor": f, "nprobe": n, "recall": round(r, 4)} for *_, f, n, r in tried]
    index.rerank_factor, index.nprobe = factor, nprobe
    info = {
        "type": "ivfpq",
        "faiss": f"IVF{nlist},PQ{code_bytes}",
        "metric": "inner_product",
        "params": {"nlist": nlist, "nprobe": nprobe, "pq_bytes": code_bytes, "rerank_factor": factor},
        "tuning": tuning,  # the smallest nprobe reaching the target at each shortlist size
    }
    return index, info, _recall_info(recall, options, query_ids, tuned_on, source)


def _recall_info(
    recall: float, options: IndexOptions, query_ids: np.ndarray, tuned_on: str, source: str
) -> dict:
    return {
        "k": RECALL_K,
        "value": round(recall, 4),
        "target": options.recall_target,
        "queries": len(query_ids),
        "tuned_on": tuned_on,
        "query_source": source,
    }


def _store_vectors(store: faiss.IndexIDMap2) -> tuple[np.ndarray, np.ndarray]:
    """(ids, vectors) of the exact store; the vectors are a view, valid while it lives."""
    flat = faiss.downcast_index(store.index)
    vectors = faiss.rev_swig_ptr(flat.get_xb(), store.ntotal * store.d).reshape(store.ntotal, store.d)
    return faiss.vector_to_array(store.id_map), vectors


def _code_sample(store: faiss.IndexIDMap2):
    def sample(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ids, vectors = _store_vectors(store)
        return ids[rows], vectors[rows]

    return sample


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


def _recall_queries(
    count: int, code_sample, options: IndexOptions, encoder, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, str, str]:
    """Query ids (-1: not in the corpus), query vectors, their kind and where they came from;
    ``code_sample(rows)``: the ids and vectors of rows of the ``count`` corpus vectors."""
    if options.tune_queries is not None:
        queries = read_queries(Path(options.tune_queries))
        if len(queries) > options.recall_queries:
            chosen = np.sort(rng.choice(len(queries), size=options.recall_queries, replace=False))
            queries = [queries[i] for i in chosen]
        vectors = encode_texts(encoder, queries, "query", options.batch_size)
        source = f"{len(queries)} natural-language queries from {options.tune_queries}, encoded as queries"
        return np.full(len(queries), -1, dtype=np.int64), vectors, "queries", source
    rows = np.sort(rng.choice(count, size=min(options.recall_queries, count), replace=False))
    ids, vectors = code_sample(rows)
    return ids, np.ascontiguousarray(vectors), "code vectors", RECALL_QUERY_SOURCE


def _tune_nprobe(
    index,
    exact: tuple[np.ndarray, np.ndarray],
    query_ids: np.ndarray,
    queries: np.ndarray,
    target: float,
    k: int,
    limit: int | None = None,
) -> tuple[int, float]:
    """The smallest nprobe of ``index`` (at most ``limit``, default every list) whose
    recall@k against the ``exact`` top k + 1 reaches ``target``; else ``limit`` and its recall."""
    limit = index.nlist if limit is None else min(limit, index.nlist)

    def recall_at(nprobe: int) -> float:
        index.nprobe = nprobe
        return _recall(query_ids, exact, index.search(queries, k + 1), k)

    # double until the target is met (nprobe = nlist scans everything), then bisect
    low, high = 0, 1
    while high < limit and recall_at(high) < target:
        low, high = high, min(2 * high, limit)
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


def tune_fusion(
    index,
    store,
    lexical,
    encoder,
    options: IndexOptions,
    ids_of_hashes,
) -> dict:
    """The fusion hybrid search uses, for the manifest: the setting (interpolation weights
    0, 0.1, ..., 1, and RRF) of the best MRR on the tuning pairs whose code is a record of the
    index (``ids_of_hashes(hashes)``: each content hash -> its faiss ids), else the default
    and why. ``store``: anything whose ``reconstruct_batch`` gives vectors by faiss id.

    Each pair's query is searched as hybrid search does (``index`` for the dense top list,
    exact scores from ``store``); its reciprocal rank is that of its code among the fused
    candidates, ties counted against it, 0 when the code is not a candidate."""
    default = Fusion()
    if options.tune_queries is None:
        return {**default.manifest_entry(), "chosen_on": DEFAULT_FUSION_SOURCE}
    path = Path(options.tune_queries)
    pairs = [(query, code) for query, code in read_query_pairs(path) if code is not None]
    if not pairs:
        return {
            **default.manifest_entry(),
            "chosen_on": f"default: {path} has queries but no 'code' field to tune the fusion on",
        }
    # a query of several pairs has each of their codes for gold, as in evaluation
    hashes = [CodeRecord(code=code).content_hash() for _, code in pairs]
    ids_of_hash = ids_of_hashes(hashes)
    golds: dict[str, list[int]] = {}
    for (query, _), content_hash in zip(pairs, hashes, strict=True):
        golds.setdefault(query, []).extend(ids_of_hash.get(content_hash, []))
    kept = [(query, gold) for query, gold in golds.items() if gold]
    if not kept:
        return {
            **default.manifest_entry(),
            "chosen_on": f"default: none of the {len(pairs)} codes of {path} is a record of the index",
        }
    if len(kept) > options.recall_queries:
        rng = np.random.default_rng(options.seed)
        kept = [kept[i] for i in np.sort(rng.choice(len(kept), size=options.recall_queries, replace=False))]
    queries = [query for query, _ in kept]
    vectors = encode_texts(encoder, queries, "query", options.batch_size)
    gathered = gather(
        vectors, queries, default.candidates, index.search, store.reconstruct_batch, lexical, "tuning"
    )
    settings = [Fusion(method="interpolate", weight=weight) for weight in WEIGHT_GRID]
    settings.append(Fusion(method="rrf"))
    assert {setting.method for setting in settings} == set(METHODS)
    mrr = {}
    for setting in settings:
        reciprocal = []
        for found, (_, gold) in zip(gathered, kept, strict=True):
            fused = found.fused(setting)
            is_gold = np.isin(found.ids, gold)
            if not is_gold.any():
                reciprocal.append(0.0)
                continue
            best = fused[is_gold].max()
            reciprocal.append(1.0 / (1 + np.count_nonzero(fused[~is_gold] >= best)))
        mrr[setting.label] = round(float(np.mean(reciprocal)), 4)
    top = max(mrr.values())
    # the default when it is as good as the best, else the first best of the grid
    chosen = default if mrr[default.label] == top else next(s for s in settings if mrr[s.label] == top)
    return {
        **chosen.manifest_entry(),
        "chosen_on": f"{len(kept)} queries of {path} with a code in the index (of {len(pairs)} "
        "query/code pairs): the best MRR over each query's candidates",
        "mrr_per_setting": mrr,
    }

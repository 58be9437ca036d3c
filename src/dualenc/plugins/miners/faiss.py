"""``faiss``: dense hard negatives from the model being trained, refreshed on a schedule.

Each round (before the first step, then every ``refresh_every`` steps) encodes every
training code (or, for ``dualenc mine --corpus``, every code of that corpus) with the current
model, indexes the embeddings with FAISS and searches every training query; the negatives
come from a rank window of the results, after the false-negative and score filters of
``common``, drawn at random or the best-ranked (``sampling``). Between rounds the loop
reuses the last round's negatives. Memory: the code embeddings (N x dim, ``store_dtype``)
and the index; queries are encoded and searched a chunk at a time.
"""

from __future__ import annotations

import functools
import math
import time

import attrs
import numpy as np

from dualenc import Register, at_least, at_most, encode_token_ids, greater_than, hookimpl, one_of
from dualenc.plugins.miners.common import (
    RoundCounts,
    RoundMiner,
    RoundResult,
    check_score_range,
    check_window,
    duplicate_counts,
    encoder_sha256,
    sample_window,
)

# Codes are encoded this many at a time, so only this many float32 rows exist besides the
# stored embeddings; queries are encoded and searched this many at a time.
ENCODE_SLICE = 8192
SEARCH_CHUNK = 4096
# GPU FAISS returns at most 2048 results per query; a pair with more duplicates than that
# may come out short.
MAX_SEARCH_DEPTH = 2048


@attrs.frozen
class FaissMinerOptions:
    num_negatives: int = attrs.field(default=4, validator=at_least(1))
    # re-mine every this many steps; None or 0: mine once, before the first step
    refresh_every: int | None = attrs.field(default=500, validator=at_least(0))
    # negatives are sampled from ranks range_min <= rank < range_max (0 = the best other code)
    range_min: int = attrs.field(default=10, validator=at_least(0))
    range_max: int = attrs.field(default=50, validator=[at_least(1), check_window])
    # drop candidates scoring above positive - margin, or above positive * (1 - relative_margin)
    margin: float | None = attrs.field(default=None, validator=at_least(0))
    relative_margin: float | None = attrs.field(default=None, validator=[at_least(0), at_most(1)])
    # drop candidates scoring below min_score or above max_score (inner products of unit vectors)
    min_score: float | None = None
    max_score: float | None = attrs.field(default=None, validator=check_score_range)
    # among the candidates left: "random" draws num_negatives, "top" takes the best-ranked
    sampling: str = attrs.field(default="random", validator=one_of("random", "top"))
    # also treat codes equal up to identifier names as clones of the positive
    normalise_identifiers: bool = False
    # exact inner-product search up to this many codes; IVF (approximate) beyond
    exact_threshold: int = attrs.field(default=100_000, validator=at_least(0))
    # IVF lists probed per query; None: chosen from the number of lists
    nprobe: int | None = attrs.field(default=None, validator=at_least(1))
    # how the code embeddings (and the index) are stored
    store_dtype: str = attrs.field(default="float32", validator=one_of("float16", "float32"))
    batch_size: int = attrs.field(default=256, validator=greater_than(0))
    seed: int = 0


def ivf_parameters(num_codes: int, nprobe: int | None) -> tuple[int, int]:
    """nlist ~ 4 sqrt(N) (each list holds ~sqrt(N)/4 codes); nprobe ~ 2 sqrt(nlist) lists."""
    nlist = max(1, min(round(4 * math.sqrt(num_codes)), num_codes // 4))
    return nlist, min(nlist, nprobe or max(8, math.ceil(2 * math.sqrt(nlist))))


@functools.cache
def gpu_resources():
    """One set per process: a GPU index needs it alive for as long as the index is used."""
    import faiss

    return faiss.StandardGpuResources()


def build_index(embeddings: np.ndarray, options: FaissMinerOptions, rng: np.random.Generator):
    """An inner-product index over the code embeddings, and what it is (for the manifest)."""
    import faiss

    num_codes, dim = embeddings.shape
    on_gpu = faiss.get_num_gpus() > 0
    fp16 = options.store_dtype == "float16"
    exact = num_codes <= options.exact_threshold
    nlist, nprobe = (None, None) if exact else ivf_parameters(num_codes, options.nprobe)
    # on a GPU the cloner stores float16 itself; on the CPU a scalar quantizer does
    storage = "SQfp16" if fp16 and not on_gpu else "Flat"
    description = storage if exact else f"IVF{nlist},{storage}"
    index = faiss.index_factory(dim, description, faiss.METRIC_INNER_PRODUCT)
    if on_gpu:
        cloner = faiss.GpuClonerOptions()
        cloner.useFloat16 = fp16
        index = faiss.index_cpu_to_gpu(gpu_resources(), 0, index, cloner)
    if not index.is_trained:
        # k-means needs a few dozen codes per list (faiss warns under 39); a seeded sample of
        # 64 per list keeps the float32 copy small
        sample = np.sort(rng.choice(num_codes, size=min(num_codes, 64 * nlist), replace=False))
        index.train(embeddings[sample].astype(np.float32))
    for start in range(0, num_codes, ENCODE_SLICE):
        index.add(embeddings[start : start + ENCODE_SLICE].astype(np.float32))
    if nprobe is not None:
        space = faiss.GpuParameterSpace() if on_gpu else faiss.ParameterSpace()
        space.set_index_parameter(index, "nprobe", nprobe)
    record = {
        "type": description,
        "metric": "inner_product",
        "device": "gpu" if on_gpu else "cpu",
        "store_dtype": options.store_dtype,
        "nlist": nlist,
        "nprobe": nprobe,
    }
    return index, record


class FaissMiner(RoundMiner):
    name = "faiss"

    def mine_round(self, encoder, corpus, candidates, rng) -> RoundResult:
        options = self.options
        num_pairs, num_codes = len(corpus), len(candidates)
        encode_seconds = search_seconds = 0.0

        started = time.perf_counter()
        code_tokens = candidates.token_ids(encoder)
        codes = np.empty((num_codes, encoder.dim), dtype=options.store_dtype)
        for start in range(0, num_codes, ENCODE_SLICE):
            part = [code_tokens[i] for i in range(start, min(start + ENCODE_SLICE, num_codes))]
            codes[start : start + len(part)] = encode_token_ids(encoder, part, "code", options.batch_size)
        encode_seconds += time.perf_counter() - started

        started = time.perf_counter()
        index, index_record = build_index(codes, options, rng)
        search_seconds += time.perf_counter() - started

        query_tokens = corpus.token_ids("query")
        depths = np.minimum(
            options.range_max + 1 + duplicate_counts(candidates), min(num_codes, MAX_SEARCH_DEPTH)
        )
        negatives = np.empty((num_pairs, options.num_negatives), dtype=np.int64)
        counts = RoundCounts()
        for start in range(0, num_pairs, SEARCH_CHUNK):
            rows = np.arange(start, min(start + SEARCH_CHUNK, num_pairs))
            started = time.perf_counter()
            queries = encode_token_ids(encoder, [query_tokens[i] for i in rows], "query", options.batch_size)
            if candidates.pairs_themselves:
                positives = codes[rows].astype(np.float32)
            else:  # the positives are not among the indexed codes
                pair_codes = corpus.token_ids("code")
                positives = encode_token_ids(
                    encoder, [pair_codes[i] for i in rows], "code", options.batch_size
                )
            encode_seconds += time.perf_counter() - started

            started = time.perf_counter()
            scores, candidate_ids = index.search(queries, int(depths[rows].max()))
            search_seconds += time.perf_counter() - started

            positive_scores = np.einsum("ij,ij->i", queries, positives)
            negatives[rows] = sample_window(
                candidate_ids,
                rows,
                candidates,
                options,
                rng,
                counts,
                scores=scores,
                thresholds=self.thresholds(positive_scores),
                positive_scores=positive_scores,
            )
        return RoundResult(
            negatives=negatives,
            counts=counts,
            timings={"mining/encode_seconds": encode_seconds, "mining/search_seconds": search_seconds},
            provenance={
                "encoder_sha256": encoder_sha256(encoder),
                "index": index_record,
                "search_depth_max": int(depths.max()),
            },
        )

    def thresholds(self, positive_scores: np.ndarray) -> np.ndarray | None:
        """Per query, the highest score a negative may have; None without a margin."""
        options = self.options
        limits = []
        if options.margin is not None:
            limits.append(positive_scores - options.margin)
        if options.relative_margin is not None:
            limits.append(positive_scores * (1 - options.relative_margin))
        return np.minimum.reduce(limits) if limits else None


@hookimpl
def register_miners(register: Register):
    register(
        "faiss",
        FaissMiner,
        options=FaissMinerOptions,
        description="Dense hard negatives: FAISS search with the current model, refreshed on a schedule.",
    )

"""Exact ranking metrics: every query is ranked against the whole candidate pool.

The ranking is a total order, pessimistic about ties: pool items by score (dot product),
highest first; among equal scores, non-relevant items come first, then relevant items by
grade ascending, then by pool index. A relevant item's rank is its 1-based position in this
order, so a gold item tied with a distractor ranks below it. Every metric derives from
these ranks alone: NDCG@10 needs only where the relevant items sit within the first ten,
and the order above fixes that, ties included.

Identical pool vectors (duplicate codes, a collapsed encoder) always tie exactly: the pool
is deduplicated and each distinct vector scored once, since float32 matrix products may
give two copies of one vector scores an ulp apart. Distinct vectors compare by their scores
as computed. Scores are computed in blocks of ``query_chunk`` queries x ``pool_chunk``
distinct vectors, so memory stays bounded for any pool size; nothing is approximated.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import attrs
import numpy as np

from dualenc import DualencError

RECALL_CUTOFFS = (1, 5, 10, 100)
NDCG_CUTOFF = 10
MRR_CUTOFF = 10


@attrs.frozen(eq=False)
class Rankings:
    """Where each query's relevant items landed in the full ranking of the pool.

    (query, relevant item) pairs are flat arrays grouped by query: query i owns pairs
    ``offsets[i]:offsets[i + 1]``, in the order of its relevance mapping.
    """

    pool_size: int
    offsets: np.ndarray  # [Q + 1]
    items: np.ndarray  # [M] pool index of each relevant item
    grades: np.ndarray  # [M] its relevance grade
    ranks: np.ndarray  # [M] its 1-based position in the query's full ranking
    top_ids: np.ndarray | None = None  # [Q, k] the first k pool indices of each ranking

    @property
    def num_queries(self) -> int:
        return len(self.offsets) - 1

    def first_ranks(self) -> np.ndarray:
        """[Q] the rank of each query's best-ranked relevant item."""
        return np.minimum.reduceat(self.ranks, self.offsets[:-1])

    def reciprocal_ranks(self) -> np.ndarray:
        return 1.0 / self.first_ranks()

    def gold_ids(self, query: int) -> list[int]:
        return self.items[self.offsets[query] : self.offsets[query + 1]].tolist()

    def metrics(self) -> dict[str, float]:
        """MRR, MRR@10, NDCG@10, Recall@k, mean and median first rank, pool and query counts."""
        first = self.first_ranks()
        sizes = np.diff(self.offsets)
        starts = self.offsets[:-1]

        def per_query_mean(values: np.ndarray) -> float:
            return float(np.mean(np.add.reduceat(values, starts)))

        result = {
            "mrr": float(np.mean(1.0 / first)),
            f"mrr@{MRR_CUTOFF}": float(np.mean(np.where(first <= MRR_CUTOFF, 1.0 / first, 0.0))),
            f"ndcg@{NDCG_CUTOFF}": float(np.mean(self._ndcg(NDCG_CUTOFF))),
        }
        for cutoff in RECALL_CUTOFFS:
            # each pair weighs 1/|relevant of its query|, so the per-query sum is a fraction
            result[f"recall@{cutoff}"] = per_query_mean((self.ranks <= cutoff) / np.repeat(sizes, sizes))
        result["mean_rank"] = float(np.mean(first))
        result["median_rank"] = float(np.median(first))
        result["pool_size"] = self.pool_size
        result["num_queries"] = self.num_queries
        return result

    def _ndcg(self, cutoff: int) -> np.ndarray:
        """[Q] NDCG@cutoff with linear gains (the grade) and a log2(rank + 1) discount."""
        starts = self.offsets[:-1]
        sizes = np.diff(self.offsets)
        query_of_pair = np.repeat(np.arange(self.num_queries), sizes)
        gains = np.where(self.ranks <= cutoff, self.grades / np.log2(self.ranks + 1.0), 0.0)
        dcg = np.add.reduceat(gains, starts)
        # the ideal ranking puts the query's grades in descending order at ranks 1, 2, ...
        order = np.lexsort((-self.grades, query_of_pair))
        ideal_rank = np.arange(len(order)) - np.repeat(starts, sizes) + 1
        ideal_gains = np.where(ideal_rank <= cutoff, self.grades[order] / np.log2(ideal_rank + 1.0), 0.0)
        return dcg / np.add.reduceat(ideal_gains, starts)


def rank_pool(
    query_vectors: np.ndarray,
    pool_vectors: np.ndarray,
    relevant: Sequence[Mapping[int, float]],
    query_chunk: int = 256,
    pool_chunk: int = 32768,
    top_k: int = 0,
) -> Rankings:
    """Rank every relevant item of every query in the full pool (see the module docstring).

    ``relevant[i]`` maps pool indices to grades (> 0) for query i. With ``top_k`` > 0 the
    first ``top_k`` pool indices of each ranking are kept too.
    """
    if query_chunk < 1 or pool_chunk < 1:
        raise ValueError("query_chunk and pool_chunk must be >= 1")
    queries = _checked_vectors(query_vectors, "query")
    pool = _checked_vectors(pool_vectors, "pool")
    if queries.shape[1] != pool.shape[1]:
        raise DualencError(f"query vectors have dim {queries.shape[1]}, pool vectors {pool.shape[1]}")
    if not len(queries):
        raise DualencError("no queries to rank")
    if len(relevant) != len(queries):
        raise DualencError(f"{len(queries)} query vectors but {len(relevant)} relevance entries")
    offsets, items, grades = _flatten_relevance(relevant, len(pool))
    distinct, group_of, group_sizes = _distinct_rows(pool)

    sizes = np.diff(offsets)
    pair_query = np.repeat(np.arange(len(queries)), sizes)
    pair_group = group_of[items]
    gold_scores = np.einsum("ij,ij->i", queries[pair_query], distinct[pair_group])
    # (pair, other pair of the same query) for every pair, itself included; sorted by pair
    pair_sizes = sizes[pair_query]
    combo_pair = np.repeat(np.arange(len(items)), pair_sizes)
    combo_other = np.repeat(offsets[pair_query], pair_sizes) + (
        np.arange(len(combo_pair)) - np.repeat(np.cumsum(pair_sizes) - pair_sizes, pair_sizes)
    )

    # pool items other than the pair's own query's relevant ones scoring >= its gold score
    outranking = np.zeros(len(items), dtype=np.int64)
    top = _TopItems(group_of, group_sizes, min(top_k, len(pool))) if top_k else None
    for q_start in range(0, len(queries), query_chunk):
        q_end = min(q_start + query_chunk, len(queries))
        p_start, p_end = offsets[q_start], offsets[q_end]
        c_start, c_end = np.searchsorted(combo_pair, [p_start, p_end])
        rows = pair_query[p_start:p_end] - q_start
        one_pair_per_row = p_end - p_start == q_end - q_start
        for g_start in range(0, len(distinct), pool_chunk):
            g_end = min(g_start + pool_chunk, len(distinct))
            scores = queries[q_start:q_end] @ distinct[g_start:g_end].T
            pair_scores = scores if one_pair_per_row else scores[rows]
            at_least = pair_scores >= gold_scores[p_start:p_end, None]
            # the gold's own vector ties with it, whatever rounding did to either score
            own = pair_group[p_start:p_end] - g_start
            inside = (own >= 0) & (own < g_end - g_start)
            at_least[np.flatnonzero(inside), own[inside]] = True
            counts = np.count_nonzero(at_least, axis=1)
            repeated = np.flatnonzero(group_sizes[g_start:g_end] > 1)
            if len(repeated):
                counts += at_least[:, repeated] @ (group_sizes[g_start + repeated] - 1)
            outranking[p_start:p_end] += counts
            # relevant items are ordered among themselves below; take back what they added
            pair = combo_pair[c_start:c_end]
            other_group = pair_group[combo_other[c_start:c_end]] - g_start
            inside = (other_group >= 0) & (other_group < g_end - g_start)
            np.subtract.at(outranking, pair[inside], at_least[pair[inside] - p_start, other_group[inside]])
            if top is not None:
                top.add_block(q_start, scores, g_start)

    ranks = 1 + outranking + _relevant_ahead(combo_pair, combo_other, pair_group, gold_scores, grades, items)
    top_ids = None
    if top is not None:
        top_ids = np.empty((len(queries), top.k), dtype=np.int64)
        for query, mapping in enumerate(relevant):
            top_ids[query] = top.first_items(query, mapping)
    return Rankings(len(pool), offsets, items, grades, ranks, top_ids)


def rank_scores(
    score_block: Callable[[int, int], np.ndarray],
    num_queries: int,
    pool_size: int,
    relevant: Sequence[Mapping[int, float]],
    query_chunk: int = 256,
    top_k: int = 0,
) -> Rankings:
    """``rank_pool`` for scores given directly: ``score_block(start, end)`` is the
    [end - start, pool_size] score matrix of queries start..end-1 (lexical or fused scores;
    -inf for an item a query does not rank). The same total order: by score, highest first,
    ties against the relevant items (non-relevant first, then relevant by grade ascending,
    then by pool index)."""
    if query_chunk < 1:
        raise ValueError("query_chunk must be >= 1")
    if not num_queries:
        raise DualencError("no queries to rank")
    if len(relevant) != num_queries:
        raise DualencError(f"{num_queries} queries but {len(relevant)} relevance entries")
    offsets, items, grades = _flatten_relevance(relevant, pool_size)
    ranks = np.empty(len(items), dtype=np.int64)
    k = min(top_k, pool_size)
    top_ids = np.empty((num_queries, k), dtype=np.int64) if top_k else None
    for start in range(0, num_queries, query_chunk):
        end = min(start + query_chunk, num_queries)
        block = np.asarray(score_block(start, end), dtype=np.float64)
        if block.shape != (end - start, pool_size):
            raise DualencError(f"score block of shape {block.shape}, expected {(end - start, pool_size)}")
        if np.isnan(block).any():
            raise DualencError("scores contain NaN")
        for row, scores in enumerate(block):
            query = start + row
            grade = np.zeros(pool_size)
            pairs = slice(offsets[query], offsets[query + 1])
            grade[items[pairs]] = grades[pairs]
            order = np.lexsort((np.arange(pool_size), grade, -scores))
            position = np.empty(pool_size, dtype=np.int64)
            position[order] = np.arange(1, pool_size + 1)
            ranks[pairs] = position[items[pairs]]
            if top_ids is not None:
                top_ids[query] = order[:k]
    return Rankings(pool_size, offsets, items, grades, ranks, top_ids)


def paired_bootstrap(
    a: np.ndarray, b: np.ndarray, samples: int = 10_000, seed: int = 0, level: float = 0.95
) -> dict[str, float]:
    """Mean of ``a - b`` (per-query values of two systems on the same queries) and its
    percentile bootstrap interval, queries resampled with replacement."""
    differences = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if differences.ndim != 1 or not len(differences):
        raise DualencError("paired bootstrap needs one value per query of each system")
    rng = np.random.default_rng(seed)
    means = np.empty(samples)
    for start in range(0, samples, 1000):
        draws = rng.integers(0, len(differences), size=(min(1000, samples - start), len(differences)))
        means[start : start + len(draws)] = differences[draws].mean(axis=1)
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(means, [tail, 100 - tail])
    return {"mean": float(differences.mean()), "low": float(low), "high": float(high), "level": level}


def _relevant_ahead(combo_pair, combo_other, pair_group, gold_scores, grades, items) -> np.ndarray:
    """[M] how many of a pair's fellow relevant items precede it in the tie-broken order."""
    mine, other = combo_pair, combo_other
    tied = (pair_group[other] == pair_group[mine]) | (gold_scores[other] == gold_scores[mine])
    before_in_tie = (grades[other] < grades[mine]) | (
        (grades[other] == grades[mine]) & (items[other] < items[mine])
    )
    ahead = np.where(tied, before_in_tie, gold_scores[other] > gold_scores[mine])
    return np.bincount(mine, weights=ahead, minlength=len(items)).astype(np.int64)


class _TopItems:
    """The first k pool indices of each query's ranking, gathered block by block.

    From each block it keeps, per query, the distinct vectors scoring at least the block's
    k-th best: any vector below that is outranked by k vectors of at least one item each.
    """

    def __init__(self, group_of: np.ndarray, group_sizes: np.ndarray, k: int):
        self.k = k
        self.group_sizes = group_sizes
        self.members = np.argsort(group_of, kind="stable")  # by group, then pool index
        self.member_start = np.concatenate([[0], np.cumsum(group_sizes)])
        self.candidates: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}

    def add_block(self, q_start: int, scores: np.ndarray, g_start: int) -> None:
        kth = scores.shape[1] - min(self.k, scores.shape[1])
        threshold = np.partition(scores, kth, axis=1)[:, kth]
        for row, row_scores in enumerate(scores):
            kept = np.flatnonzero(row_scores >= threshold[row])
            self.candidates.setdefault(q_start + row, []).append((g_start + kept, row_scores[kept]))

    def first_items(self, query: int, grade_of: Mapping[int, float]) -> np.ndarray:
        groups = np.concatenate([g for g, _ in self.candidates[query]])
        scores = np.concatenate([s for _, s in self.candidates[query]])
        # the best vectors until they hold k items, and every vector tied with the last
        order = np.argsort(-scores, kind="stable")
        held = np.cumsum(self.group_sizes[groups[order]])
        cut = scores[order[min(np.searchsorted(held, self.k), len(order) - 1)]]
        item_ids, item_scores = [], []
        kept = scores >= cut
        for group, score in zip(groups[kept], scores[kept], strict=True):
            # within one vector non-relevant items come first, by index: k + |relevant| suffice
            start = self.member_start[group]
            end = min(start + self.k + len(grade_of), self.member_start[group + 1])
            item_ids.append(self.members[start:end])
            item_scores.append(np.full(end - start, score))
        item_ids = np.concatenate(item_ids)
        item_scores = np.concatenate(item_scores)
        item_grades = np.array([grade_of.get(i, 0.0) for i in item_ids.tolist()])
        return item_ids[np.lexsort((item_ids, item_grades, -item_scores))][: self.k]


def _checked_vectors(vectors: np.ndarray, what: str) -> np.ndarray:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[1] == 0:
        raise DualencError(f"{what} vectors must be a [N, dim] array, got shape {vectors.shape}")
    if not np.isfinite(vectors).all():
        raise DualencError(f"{what} vectors contain NaN or infinity (did training diverge?)")
    return vectors


def _flatten_relevance(relevant, pool_size: int):
    """Validated (offsets [Q + 1], items [M], grades [M]) from per-query {index: grade}."""
    items, grades, sizes = [], [], []
    for query, mapping in enumerate(relevant):
        if not mapping:
            raise DualencError(f"query {query} has no relevant pool item")
        for index, grade in mapping.items():
            if not 0 <= index < pool_size:
                raise DualencError(f"query {query}: relevant index {index} outside the pool of {pool_size}")
            if not grade > 0 or not np.isfinite(grade):
                raise DualencError(f"query {query}: relevance grade of {index} must be > 0 (got {grade})")
            items.append(index)
            grades.append(grade)
        sizes.append(len(mapping))
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    return offsets, np.array(items, dtype=np.int64), np.array(grades, dtype=np.float64)


def _distinct_rows(vectors: np.ndarray):
    """(distinct rows, [N] group of each row, [G] rows per group), identical bytes = one row."""
    as_bytes = vectors.view(np.dtype((np.void, vectors.itemsize * vectors.shape[1])))[:, 0]
    _, first, group_of, group_sizes = np.unique(
        as_bytes, return_index=True, return_inverse=True, return_counts=True
    )
    return vectors[first], group_of.reshape(-1), group_sizes

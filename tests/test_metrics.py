"""Exact ranking metrics: hand-computed rankings, a brute-force reference, and ir_measures."""

import math

import numpy as np
import pytest

from dualenc.errors import DualencError
from dualenc.plugins.evaluators.metrics import rank_pool

# query [1, 0] scores the pool 0.5, 1.0, 0.5, 0.25: items 0 and 2 tie, exactly in float32
QUERY = np.array([[1.0, 0.0]], dtype=np.float32)
POOL = np.array([[0.5, 0.0], [1.0, 0.0], [0.5, 0.0], [0.25, 0.0]], dtype=np.float32)


def reference_order(query, pool, grade_of):
    """Pool indices in the documented order: score desc, then grade asc, then index."""
    scores = np.array([float(np.dot(query.astype(np.float64), p.astype(np.float64))) for p in pool])
    grades = np.array([grade_of.get(i, 0.0) for i in range(len(pool))])
    return np.lexsort((np.arange(len(pool)), grades, -scores))


def reference_ranks(queries, pool, relevant):
    ranks = []
    for query, grade_of in zip(queries, relevant, strict=True):
        position = np.empty(len(pool), dtype=np.int64)
        position[reference_order(query, pool, grade_of)] = np.arange(1, len(pool) + 1)
        ranks.extend(position[list(grade_of)])
    return np.array(ranks)


@pytest.mark.parametrize(
    ("relevant", "ranks", "top_ids"),
    [
        ({2: 1.0}, [3], [1, 0, 2, 3]),  # tied with item 0: the tie counts against the gold
        ({0: 1.0}, [3], [1, 2, 0, 3]),
        ({1: 1.0}, [1], [1, 0, 2, 3]),
        ({0: 1.0, 2: 1.0}, [2, 3], [1, 0, 2, 3]),  # two tied golds: by index
        ({2: 3.0, 0: 1.0}, [3, 2], [1, 0, 2, 3]),  # tied golds: the lower grade first
    ],
)
def test_hand_computed_ranks_with_ties(relevant, ranks, top_ids):
    rankings = rank_pool(QUERY, POOL, [relevant], top_k=4)
    assert rankings.ranks.tolist() == ranks
    assert rankings.top_ids.tolist() == [top_ids]


def test_hand_computed_metrics():
    # query 0: gold tied at rank 3; query 1: golds at ranks 2 (grade 1) and 3 (grade 3)
    rankings = rank_pool(np.repeat(QUERY, 2, axis=0), POOL, [{2: 1.0}, {0: 1.0, 2: 3.0}])
    metrics = rankings.metrics()
    ndcg_one = (1 / math.log2(4)) / 1.0
    ndcg_graded = (1 / math.log2(3) + 3 / math.log2(4)) / (3 / math.log2(2) + 1 / math.log2(3))
    assert metrics == pytest.approx(
        {
            "mrr": (1 / 3 + 1 / 2) / 2,
            "mrr@10": (1 / 3 + 1 / 2) / 2,
            "ndcg@10": (ndcg_one + ndcg_graded) / 2,
            "recall@1": 0.0,
            "recall@5": 1.0,
            "recall@10": 1.0,
            "recall@100": 1.0,
            "mean_rank": 2.5,
            "median_rank": 2.5,
            "pool_size": 4,
            "num_queries": 2,
        }
    )
    assert rankings.first_ranks().tolist() == [3, 2]
    assert rankings.reciprocal_ranks() == pytest.approx([1 / 3, 1 / 2])


def test_cutoffs_at_ten_and_recall_fractions():
    # 12 items on a line, the query prefers higher indices: item i ranks 12 - i
    pool = np.stack([np.arange(12, dtype=np.float32), np.zeros(12, dtype=np.float32)], axis=1)
    rankings = rank_pool(QUERY, pool, [{1: 1.0, 6: 1.0}])  # ranks 11 and 6
    metrics = rankings.metrics()
    assert rankings.ranks.tolist() == [11, 6]
    assert metrics["mrr"] == pytest.approx(1 / 6)
    assert metrics["mrr@10"] == pytest.approx(1 / 6)
    assert metrics["recall@5"] == 0.0
    assert metrics["recall@10"] == 0.5
    assert metrics["recall@100"] == 1.0
    assert metrics["ndcg@10"] == pytest.approx((1 / math.log2(7)) / (1 + 1 / math.log2(3)))
    far = rank_pool(QUERY, pool, [{0: 1.0}]).metrics()  # rank 12: outside every @10
    assert far["mrr"] == pytest.approx(1 / 12)
    assert far["mrr@10"] == 0.0
    assert far["ndcg@10"] == 0.0


def test_identical_vectors_tie_exactly():
    """A collapsed encoder (every vector the same) ranks each gold last, not at random."""
    rng = np.random.default_rng(0)
    vector = rng.standard_normal(384).astype(np.float32)
    pool = np.repeat(vector[None], 50, axis=0)
    queries = rng.standard_normal((7, 384)).astype(np.float32)
    rankings = rank_pool(queries, pool, [{i * 7: 1.0} for i in range(7)], pool_chunk=3, top_k=5)
    assert rankings.ranks.tolist() == [50] * 7
    assert rankings.top_ids[0].tolist() == [1, 2, 3, 4, 5]


def random_case(seed, num_queries=23, pool_size=97, dim=4, integer=True):
    """Small-integer vectors: exact float arithmetic, with many ties and duplicate rows."""
    rng = np.random.default_rng(seed)
    if integer:
        queries = rng.integers(-2, 3, size=(num_queries, dim)).astype(np.float32)
        pool = rng.integers(-2, 3, size=(pool_size, dim)).astype(np.float32)
    else:
        queries = rng.standard_normal((num_queries, dim)).astype(np.float32)
        pool = rng.standard_normal((pool_size, dim)).astype(np.float32)
    relevant = []
    for _ in range(num_queries):
        chosen = rng.choice(pool_size, size=int(rng.integers(1, 5)), replace=False)
        relevant.append({int(i): float(rng.integers(1, 4)) for i in chosen})
    return queries, pool, relevant


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("integer", [True, False])
def test_matches_brute_force_with_ties_and_duplicates(seed, integer):
    queries, pool, relevant = random_case(seed, dim=4 if integer else 64, integer=integer)
    pool[80:90] = pool[0:10]
    rankings = rank_pool(queries, pool, relevant, top_k=6)
    assert rankings.ranks.tolist() == reference_ranks(queries, pool, relevant).tolist()
    for query, grade_of, top in zip(queries, relevant, rankings.top_ids, strict=True):
        assert top.tolist() == reference_order(query, pool, grade_of)[:6].tolist()


@pytest.mark.parametrize(("query_chunk", "pool_chunk"), [(1, 1), (3, 7), (5, 1000), (1000, 4)])
def test_chunked_equals_unchunked(query_chunk, pool_chunk):
    for integer in (True, False):
        queries, pool, relevant = random_case(11, pool_size=60, dim=8, integer=integer)
        pool[40:50] = pool[0:10]  # duplicates that land in other pool blocks
        whole = rank_pool(queries, pool, relevant, query_chunk=10**6, pool_chunk=10**6, top_k=8)
        chunked = rank_pool(queries, pool, relevant, query_chunk=query_chunk, pool_chunk=pool_chunk, top_k=8)
        assert chunked.ranks.tolist() == whole.ranks.tolist()
        assert chunked.top_ids.tolist() == whole.top_ids.tolist()
        assert chunked.metrics() == whole.metrics()


def test_agrees_with_ir_measures():
    ir_measures = pytest.importorskip("ir_measures")
    from ir_measures import RR, R, nDCG

    # Gaussian vectors: no ties, which ir_measures (trec_eval) would break by doc id
    queries, pool, relevant = random_case(5, num_queries=40, pool_size=300, dim=16, integer=False)
    qrels = [
        ir_measures.Qrel(f"q{q}", f"d{item}", int(grade))
        for q, grade_of in enumerate(relevant)
        for item, grade in grade_of.items()
    ]
    scores = queries.astype(np.float64) @ pool.astype(np.float64).T
    run = [
        ir_measures.ScoredDoc(f"q{q}", f"d{item}", float(scores[q, item]))
        for q in range(len(queries))
        for item in range(len(pool))
    ]
    expected = ir_measures.calc_aggregate([RR, RR @ 10, nDCG @ 10, R @ 1, R @ 5, R @ 10, R @ 100], qrels, run)
    metrics = rank_pool(queries, pool, relevant).metrics()
    assert metrics["mrr"] == pytest.approx(expected[RR])
    assert metrics["mrr@10"] == pytest.approx(expected[RR @ 10])
    assert metrics["ndcg@10"] == pytest.approx(expected[nDCG @ 10])
    for cutoff in (1, 5, 10, 100):
        assert metrics[f"recall@{cutoff}"] == pytest.approx(expected[R @ cutoff])


@pytest.mark.parametrize(
    ("queries", "pool", "relevant", "message"),
    [
        (QUERY, POOL, [{}], "no relevant pool item"),
        (QUERY[:0], POOL, [], "no queries"),
        (QUERY, POOL, [{4: 1.0}], "outside the pool"),
        (QUERY, POOL, [{0: 0.0}], "must be > 0"),
        (QUERY, POOL, [{0: 1.0}, {1: 1.0}], "1 query vectors but 2"),
        (np.array([[np.nan, 0.0]], dtype=np.float32), POOL, [{0: 1.0}], "NaN"),
        (np.ones((1, 3), dtype=np.float32), POOL, [{0: 1.0}], "dim 3"),
    ],
)
def test_bad_input_is_reported(queries, pool, relevant, message):
    with pytest.raises(DualencError, match=message):
        rank_pool(queries, pool, relevant)

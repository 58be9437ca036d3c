"""The faiss, random and bm25 miners: filters, margins, seeds, schedule, resume, manifests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from fakes import TinyEncoder, write_pairs

from dualenc.core.config import DataConfig
from dualenc.core.data.keys import normalised_code_key
from dualenc.core.data.pairset import PairSet, load_pair_set
from dualenc.plugins.miners.bm25 import BM25Miner, BM25MinerOptions, TermWeights, code_words
from dualenc.plugins.miners.common import Candidates, RoundCounts, sample_window
from dualenc.plugins.miners.faiss import FaissMiner, FaissMinerOptions, ivf_parameters
from dualenc.plugins.miners.random import RandomMiner, RandomMinerOptions


def load_pairs(tmp_path: Path, pairs: list[tuple[str, str]], encoder) -> PairSet:
    data_config = DataConfig(cache_dir=str(tmp_path / "cache"))
    return load_pair_set(write_pairs(tmp_path / "train.jsonl", pairs), data_config, encoder)


VERBS = ["read", "write", "parse", "load", "save", "merge", "split", "sort", "find", "count"]
NOUNS = ["file", "config", "token", "header", "record", "buffer", "path", "user"]


def synthetic_pairs() -> list[tuple[str, str]]:
    """80 distinct pairs, then duplicates of each kind a miner must never return.

    The literals differ between the 80, so they stay distinct when identifiers are normalised.
    """
    pairs = [
        (
            f"{verb.capitalize()} the {noun} number {i}.",
            f"def {verb}_{noun}(items):\n    return items.{verb}('{noun}', {i})",
        )
        for i, (verb, noun) in enumerate((v, n) for v in VERBS for n in NOUNS)
    ]
    clones = [
        # the same normalised code as read_file: a comment and whitespace only
        ("Read the file, another way.", "def read_file(items):  # fast\n    return  items.read('file', 0)"),
        ("Load the file quickly.", "def read_file(items):\n\n    return items.read('file', 0)\n"),
        # the same query as read_file, case and spacing aside
        (
            "read THE file  number 0.",
            "def read_file_stripped(items):\n    return items.read('file', 0).strip()",
        ),
        # write_file up to names: a clone only with normalise_identifiers
        ("Put the file under another name.", "def put_file(things):\n    return things.write('file', 8)"),
    ]
    return pairs + clones


@pytest.fixture(scope="module")
def encoder():
    return TinyEncoder()


@pytest.fixture
def corpus(tmp_path, encoder):
    return load_pairs(tmp_path, synthetic_pairs(), encoder)


def make_miner(kind: str, **options):
    if kind == "faiss":
        return FaissMiner(FaissMinerOptions(**options))
    if kind == "faiss-ivf":
        return FaissMiner(FaissMinerOptions(exact_threshold=10, store_dtype="float16", **options))
    if kind == "random":  # no ranks: every pair is equally likely
        window = ("range_min", "range_max")
        return RandomMiner(RandomMinerOptions(**{k: v for k, v in options.items() if k not in window}))
    return BM25Miner(BM25MinerOptions(**options))


MINERS = ["faiss", "faiss-ivf", "random", "bm25"]


def assert_no_false_negatives(negatives: np.ndarray, corpus: PairSet, keys: list[np.ndarray]) -> None:
    for row, picked in enumerate(negatives):
        picked = picked[picked >= 0]
        assert row not in picked
        for key in keys:
            assert not (key[picked] == key[row]).any(), (row, picked)


@pytest.mark.parametrize("kind", MINERS)
@pytest.mark.parametrize("normalise_identifiers", [False, True])
def test_never_the_positive_a_clone_or_the_same_query(kind, normalise_identifiers, corpus, encoder, tmp_path):
    # the window starts at rank 0, where clones and same-query pairs rank first; random
    # draws half the corpus, so that it meets them too
    wanted = 40 if kind == "random" else 8
    miner = make_miner(
        kind, range_min=0, range_max=50, num_negatives=wanted, normalise_identifiers=normalise_identifiers
    )
    metrics = miner.mine(encoder, corpus, 0, tmp_path)
    negatives = miner.negatives(np.arange(len(corpus)))
    assert negatives.shape == (len(corpus), wanted) and negatives.dtype == np.int64
    keys = [corpus.code_key, corpus.query_key]
    if normalise_identifiers:
        keys.append(np.array([normalised_code_key(c, normalise_identifiers=True) for c in corpus.codes]))
    assert_no_false_negatives(negatives, corpus, keys)
    assert metrics["mining/filtered"] > 0  # the duplicates were there to be removed
    assert metrics["mining/short"] == 0
    assert (negatives >= 0).all()


@pytest.mark.parametrize("normalise_identifiers", [False, True])
def test_identifier_clones_are_excluded_only_with_the_option(
    normalise_identifiers, corpus, encoder, tmp_path
):
    renamed = len(corpus) - 1  # put_file: write_file up to names
    original = corpus.codes.index("def write_file(items):\n    return items.write('file', 8)")
    # a window and a sample as large as the corpus: every candidate that survives is returned
    options = FaissMinerOptions(
        range_min=0,
        range_max=len(corpus),
        num_negatives=len(corpus),
        normalise_identifiers=normalise_identifiers,
    )
    miner = FaissMiner(options)
    miner.mine(encoder, corpus, 0, tmp_path)
    assert (renamed in miner.negatives(np.array([original]))[0]) != normalise_identifiers


MARGIN_CASE_SCORES = [0.95, 0.89, 0.87, 0.86, 0.84, 0.80, 0.60, 0.30]


def margin_case(tmp_path) -> tuple[PairSet, TinyEncoder]:
    """Query 0 scores 0.9 with its code and the listed scores with codes 1..8.

    Queries 1..8 are one text (one query key), so their only candidate is code 0, which
    they score 0 against a positive of 0.3: no margin removes it.
    """
    table = np.zeros((11, 3))
    table[0] = [0.9, np.sqrt(1 - 0.9**2), 0]  # code 0
    for j, score in enumerate(MARGIN_CASE_SCORES, start=1):
        table[j] = [score, np.sqrt(1 - score**2 - 0.3**2), 0.3]  # code j
    table[9] = [0, 0, 1]  # the query of pairs 1..8
    table[10] = [1, 0, 0]  # query 0
    pairs = [("v10", "v0")] + [("v9", f"v{j}") for j in range(1, 9)]
    encoder = TinyEncoder(word_vectors={f"v{i}": row for i, row in enumerate(table)})
    return load_pairs(tmp_path, pairs, encoder), encoder


@pytest.mark.parametrize(
    ("margin", "relative_margin", "kept_scores"),
    [
        (None, None, MARGIN_CASE_SCORES),
        (0.05, None, [0.84, 0.80, 0.60, 0.30]),  # above 0.85 removed
        (None, 0.05, [0.84, 0.80, 0.60, 0.30]),  # above 0.855 removed
        (None, 0.1, [0.80, 0.60, 0.30]),  # above 0.81 removed
        (0.05, 0.1, [0.80, 0.60, 0.30]),  # both: the stricter wins
    ],
)
def test_margin_filter_removes_exactly_the_candidates_too_close_to_the_positive(
    margin, relative_margin, kept_scores, tmp_path
):
    corpus, encoder = margin_case(tmp_path)
    scores = dict(enumerate(MARGIN_CASE_SCORES, start=1))
    miner = FaissMiner(
        FaissMinerOptions(
            num_negatives=8, range_min=0, range_max=8, margin=margin, relative_margin=relative_margin
        )
    )
    metrics = miner.mine(encoder, corpus, 0, tmp_path)
    picked = miner.negatives(np.array([0]))[0]
    assert sorted(scores[j] for j in picked[picked >= 0]) == sorted(kept_scores)
    manifest = json.loads((tmp_path / "mining" / "round-0000000.json").read_text())
    assert manifest["counts"]["filtered_margin"] == 8 - len(kept_scores)
    # queries 1..8: code 0 is their one candidate and always survives
    assert (miner.negatives(np.arange(1, 9))[:, 0] == 0).all()
    assert metrics["mining/short"] == 8 + (len(kept_scores) < 8)
    expected_gap = np.mean([0.9 - s for s in kept_scores] + [0.3 - 0.0] * 8)
    assert metrics["mining/score_gap"] == pytest.approx(expected_gap, abs=1e-5)


def test_the_rank_window_skips_the_top_range_min(tmp_path):
    corpus, encoder = margin_case(tmp_path)
    miner = FaissMiner(FaissMinerOptions(num_negatives=8, range_min=2, range_max=5))
    miner.mine(encoder, corpus, 0, tmp_path)
    picked = miner.negatives(np.array([0]))[0]
    # ranks 2, 3, 4 of codes ordered by score: 0.87, 0.86, 0.84
    assert sorted(picked[picked >= 0]) == [3, 4, 5]


@pytest.mark.parametrize("kind", MINERS)
def test_negatives_are_reproducible_for_a_seed(kind, corpus, encoder, tmp_path):
    def mined(seed: int) -> np.ndarray:
        miner = make_miner(kind, seed=seed)
        miner.mine(encoder, corpus, 0, tmp_path)
        return miner.negatives(np.arange(len(corpus)))

    first = mined(1)
    assert np.array_equal(first, mined(1))
    assert not np.array_equal(first, mined(2))


def test_each_round_has_its_own_seed_and_reports_churn(corpus, encoder, tmp_path):
    miner = RandomMiner(RandomMinerOptions(refresh_every=10))
    first = miner.mine(encoder, corpus, 0, tmp_path)
    before = miner.negatives(np.arange(len(corpus)))
    second = miner.mine(encoder, corpus, 10, tmp_path)
    after = miner.negatives(np.arange(len(corpus)))
    assert "mining/churn" not in first
    changed = np.mean([len(set(a) - set(b)) / len(a) for a, b in zip(after, before, strict=True)])
    assert second["mining/churn"] == pytest.approx(changed)
    assert 0.5 < second["mining/churn"] <= 1


def test_refresh_happens_on_schedule(corpus, encoder, tmp_path):
    miner = RandomMiner(RandomMinerOptions(refresh_every=5))
    steps = []
    for step in range(16):
        if miner.due(step):
            miner.mine(encoder, corpus, step, tmp_path)
            steps.append(step)
        miner.negatives(np.array([0, 1]))
    assert steps == [0, 5, 10, 15]


@pytest.mark.parametrize("refresh_every", [None, 0])
def test_without_refresh_every_mining_runs_once(refresh_every, corpus, encoder, tmp_path):
    miner = RandomMiner(RandomMinerOptions(refresh_every=refresh_every))
    assert miner.due(0)
    miner.mine(encoder, corpus, 0, tmp_path)
    assert not any(miner.due(step) for step in range(0, 2000, 100))


def test_bm25_mines_once(corpus, encoder, tmp_path):
    miner = BM25Miner(BM25MinerOptions())
    assert miner.due(0)
    miner.mine(encoder, corpus, 0, tmp_path)
    assert not any(miner.due(step) for step in range(0, 2000, 100))


def test_negatives_before_mining_is_an_error():
    with pytest.raises(RuntimeError, match="has not mined"):
        FaissMiner(FaissMinerOptions()).negatives(np.array([0]))


def checkpointed(state: dict) -> dict:
    """What a checkpoint gives back: arrays through safetensors (torch), the rest through JSON."""
    arrays = {k: torch.from_numpy(v).numpy().copy() for k, v in state.items() if isinstance(v, np.ndarray)}
    rest = json.loads(json.dumps({k: v for k, v in state.items() if not isinstance(v, np.ndarray)}))
    return {**rest, **arrays}


@pytest.mark.parametrize("kind", ["faiss", "random", "bm25"])
def test_state_dict_round_trip_resumes_exactly(kind, corpus, encoder, tmp_path):
    options = {"refresh_every": 4} if kind != "bm25" else {}
    uninterrupted = make_miner(kind, **options)
    uninterrupted.mine(encoder, corpus, 0, tmp_path / "a")
    state = checkpointed(uninterrupted.state_dict())

    resumed = make_miner(kind, **options)
    resumed.load_state_dict(state)
    everything = np.arange(len(corpus))
    assert np.array_equal(resumed.negatives(everything), uninterrupted.negatives(everything))
    for step in (1, 2, 3, 4, 5):
        assert resumed.due(step) == uninterrupted.due(step) == (step == 4 and kind != "bm25")
    if kind != "bm25":
        a = uninterrupted.mine(encoder, corpus, 4, tmp_path / "a")
        b = resumed.mine(encoder, corpus, 4, tmp_path / "b")
        assert np.array_equal(resumed.negatives(everything), uninterrupted.negatives(everything))
        assert a["mining/churn"] == b["mining/churn"]


def test_fresh_state_round_trip():
    miner = FaissMiner(FaissMinerOptions())
    miner.load_state_dict(checkpointed(miner.state_dict()))
    assert miner.due(0) and miner.due(7)


def test_manifest_explains_the_round(corpus, encoder, tmp_path):
    miner = FaissMiner(FaissMinerOptions(relative_margin=0.05, seed=3))
    metrics = miner.mine(encoder, corpus, 0, tmp_path)
    manifest = json.loads((tmp_path / "mining" / "round-0000000.json").read_text())
    assert manifest["miner"] == "faiss" and manifest["step"] == 0
    assert manifest["num_pairs"] == len(corpus)
    assert len(manifest["encoder_sha256"]) == len(manifest["corpus_sha256"]) == 64
    assert manifest["index"]["type"] == "Flat" and manifest["index"]["device"] == "cpu"
    assert manifest["options"]["range_min"] == 10 and manifest["options"]["range_max"] == 50
    assert manifest["options"]["relative_margin"] == 0.05 and manifest["options"]["margin"] is None
    assert manifest["round_seed"] == [3, 0]
    assert set(manifest["counts"]) >= {"kept", "filtered", "short"}
    assert manifest["counts"]["filtered"] == metrics["mining/filtered"]
    for name in ("seconds", "encode_seconds", "search_seconds", "filtered", "short", "score_gap"):
        assert f"mining/{name}" in metrics
    assert metrics["mining/seconds"] >= metrics["mining/encode_seconds"] + metrics["mining/search_seconds"]

    # a changed model is a different round: the weights hash says so
    miner.mine(TinyEncoder(seed=1), corpus, 500, tmp_path)
    later = json.loads((tmp_path / "mining" / "round-0000500.json").read_text())
    assert later["encoder_sha256"] != manifest["encoder_sha256"]
    assert later["corpus_sha256"] == manifest["corpus_sha256"]


@pytest.mark.parametrize("store_dtype", ["float32", "float16"])
def test_ivf_index_beyond_the_exact_threshold(store_dtype, corpus, encoder, tmp_path):
    miner = FaissMiner(FaissMinerOptions(exact_threshold=10, store_dtype=store_dtype, range_min=2))
    metrics = miner.mine(encoder, corpus, 0, tmp_path)
    index = json.loads((tmp_path / "mining" / "round-0000000.json").read_text())["index"]
    nlist, nprobe = ivf_parameters(len(corpus), None)
    storage = "SQfp16" if store_dtype == "float16" else "Flat"
    assert index == {
        "type": f"IVF{nlist},{storage}",
        "metric": "inner_product",
        "device": "cpu",
        "store_dtype": store_dtype,
        "nlist": nlist,
        "nprobe": nprobe,
    }
    assert metrics["mining/short"] < len(corpus) / 10


def test_ivf_parameters_grow_with_the_corpus():
    assert ivf_parameters(10_000, None) == (400, 40)
    assert ivf_parameters(1_000_000, None) == (4000, 127)
    assert ivf_parameters(1_000_000, 64) == (4000, 64)


def test_code_words_split_identifiers():
    # the tokenizer of an index's lexical part too (dualenc.code_words)
    assert code_words("getFileName(HTTPServer, snake_case2)") == [
        "get",
        "file",
        "name",
        "getfilename",
        "http",
        "server",
        "httpserver",
        "snake",
        "case",
        "2",
        "snake_case2",
    ]


def test_registered_with_their_options():
    from dualenc.registry.catalog import load_catalog

    catalog = load_catalog()
    for name, options in (
        ("faiss", FaissMinerOptions),
        ("random", RandomMinerOptions),
        ("bm25", BM25MinerOptions),
    ):
        component = catalog.get("miner", name)
        assert component.options is options
        miner = component.create(None)
        assert miner.options == options() and miner.num_negatives == 4


def test_an_empty_rank_window_is_refused():
    with pytest.raises(ValueError, match="range_min"):
        FaissMinerOptions(range_min=50, range_max=50)
    with pytest.raises(ValueError, match="range_min"):
        BM25MinerOptions(range_min=30, range_max=10)


def test_term_weights_score_like_rank_bm25(corpus):
    from rank_bm25 import BM25Okapi

    bm25 = BM25Okapi([code_words(code) for code in corpus.codes])
    weights = TermWeights(bm25)
    for query in [*corpus.queries[:20], "read read the file", "no such words"]:
        words = code_words(query)
        np.testing.assert_allclose(weights.scores(words), bm25.get_scores(words), rtol=1e-12, atol=0)


@pytest.mark.parametrize(
    ("options", "kept_scores", "filtered_margin", "filtered_score"),
    [
        ({"max_score": 0.88}, [0.87, 0.86, 0.84, 0.80, 0.60, 0.30], 0, 2),
        # min_score also removes code 0 from queries 1..8, which score it 0
        ({"min_score": 0.5}, [0.95, 0.89, 0.87, 0.86, 0.84, 0.80, 0.60], 0, 1 + 8),
        ({"min_score": 0.5, "max_score": 0.85}, [0.84, 0.80, 0.60], 0, 5 + 8),
        # the margin (above 0.85) goes first; max_score then removes 0.84 only
        ({"margin": 0.05, "max_score": 0.82}, [0.80, 0.60, 0.30], 4, 1),
    ],
)
def test_score_bounds_remove_exactly_the_candidates_outside_them(
    options, kept_scores, filtered_margin, filtered_score, tmp_path
):
    corpus, encoder = margin_case(tmp_path)
    scores = dict(enumerate(MARGIN_CASE_SCORES, start=1))
    miner = FaissMiner(FaissMinerOptions(num_negatives=8, range_min=0, range_max=8, **options))
    miner.mine(encoder, corpus, 0, tmp_path)
    picked = miner.negatives(np.array([0]))[0]
    assert sorted(scores[j] for j in picked[picked >= 0]) == sorted(kept_scores)
    counts = json.loads((tmp_path / "mining" / "round-0000000.json").read_text())["counts"]
    assert counts["filtered_margin"] == filtered_margin and counts["filtered_score"] == filtered_score
    # queries 1..8 are one query: each meets the other 7 as duplicates
    assert counts["filtered"] == 8 * 7 + filtered_margin + filtered_score
    kept_by_others = miner.negatives(np.arange(1, 9))[:, 0]
    assert (kept_by_others == (-1 if "min_score" in options else 0)).all()


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({}, [1, 2, 3]),  # 0.95, 0.89, 0.87: the best three, best first
        ({"range_min": 2}, [3, 4, 5]),  # ranks 2, 3, 4
        ({"max_score": 0.88}, [3, 4, 5]),  # the best three at most 0.88
        ({"relative_margin": 0.1, "range_max": 7}, [6, 7, -1]),  # ranks 5, 6 survive below 0.81
    ],
)
def test_top_sampling_takes_the_best_ranked_survivors(options, expected, tmp_path):
    corpus, encoder = margin_case(tmp_path)
    rows = []
    for seed in (1, 2):  # no draw: the seed changes nothing
        settings = {"num_negatives": 3, "range_min": 0, "range_max": 8, "sampling": "top", "seed": seed}
        miner = FaissMiner(FaissMinerOptions(**{**settings, **options}))
        miner.mine(encoder, corpus, 0, tmp_path)
        rows.append(miner.negatives(np.array([0]))[0].tolist())
    assert rows == [expected, expected]


def test_sample_window_on_a_hand_made_candidate_list():
    """One pair (id 0) and its ranked candidates: itself, then pairs 4, 2 (a clone: same code
    key), 5, 3, 1 with the scores below; the window is ranks 1..3 of the non-clones."""
    code_key = np.array([10, 11, 10, 13, 14, 15])
    query_key = np.array([20, 21, 22, 23, 24, 25])
    candidates = Candidates(None, [(code_key, code_key), (query_key, query_key)], True)
    candidate_ids = np.array([[0, 4, 2, 5, 3, 1]])
    scores = np.array([[0.9, 0.8, 0.79, 0.7, 0.6, 0.5]])

    def run(**options):
        defaults = {"num_negatives": 3, "range_min": 1, "range_max": 4, "sampling": "top"}
        counts = RoundCounts()
        negatives = sample_window(
            candidate_ids,
            np.array([0]),
            candidates,
            FaissMinerOptions(**{**defaults, **options}),
            np.random.default_rng(0),
            counts,
            scores=scores,
        )
        return negatives[0].tolist(), counts

    # non-clones by rank: 4 (rank 0), 5 (1), 3 (2), 1 (3)
    assert run()[0] == [5, 3, 1]
    picked, counts = run(min_score=0.55, max_score=0.65)
    assert picked == [3, -1, -1] and counts.score == 2 and counts.short == 1 and counts.duplicates == 1
    # random sampling draws the same set when it must take all three
    assert sorted(run(sampling="random")[0]) == [1, 3, 5]


def test_new_options_are_validated_with_their_key_path():
    from dualenc import ConfigError, load_config

    with pytest.raises(ValueError, match=r"must be >= min_score \(0.5\) \(got 0.4\)"):
        FaissMinerOptions(min_score=0.5, max_score=0.4)
    with pytest.raises(ValueError, match="must be one of 'random', 'top'"):
        BM25MinerOptions(sampling="best")
    with pytest.raises(ConfigError, match=r"miner.max_score: must be >= min_score \(0.5\) \(got 0.4\)"):
        load_config(data={"plugins": {"miner": "faiss"}, "miner": {"min_score": 0.5, "max_score": 0.4}})
    with pytest.raises(ConfigError, match=r"miner.sampling: must be one of 'random', 'top' \(got 'best'\)"):
        load_config(data={"plugins": {"miner": "bm25"}, "miner": {"sampling": "best"}})


@pytest.mark.parametrize("kind", ["faiss", "random", "bm25"])
def test_negatives_from_other_codes_are_never_a_clone_of_the_positive(kind, corpus, encoder, tmp_path):
    """``run_round(codes=...)``: negatives index the given codes; a clone of a pair's code
    (same normalised key) is never one of its negatives, another pair's code may be."""
    # read_file's code with a comment: a clone of pair 0; then 40 codes of the corpus itself
    codes = ["def read_file(items):  # clone\n    return items.read('file', 0)", *corpus.codes[1:41]]
    wanted = 20 if kind == "random" else 8
    miner = make_miner(kind, range_min=0, range_max=41, num_negatives=wanted)
    mined = miner.run_round(encoder, corpus, 0, codes=codes)
    negatives = mined.negatives
    assert negatives.shape == (len(corpus), wanted) and negatives.max() < len(codes)
    keys = np.array([normalised_code_key(code) for code in codes])
    for row, picked in enumerate(negatives):
        picked = picked[picked >= 0]
        assert not (keys[picked] == corpus.code_key[row]).any(), (row, picked)
    assert 0 not in negatives[0]  # the clone
    assert mined.record["num_candidates"] == len(codes)
    assert miner.due(0)  # a round for the command leaves the training state alone

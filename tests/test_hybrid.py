"""Lexical (BM25) and hybrid search: the tokenizer, BM25 against a brute force, the fusion
against hand computation, the index's lexical files (build, update, damage), tuning, the
search and evaluate commands' modes."""

from __future__ import annotations

import json
import math
import random
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from fakes import TinyEncoder, write_distribution, write_jsonl, write_pairs
from fakes import build_index as build

from dualenc import Fusion, LexicalIndex, Retriever, code_words
from dualenc.core import lexical as lexical_module
from dualenc.core.checkpoint import save_encoder
from dualenc.core.config import DataConfig
from dualenc.core.data.evalsets import load_eval_set
from dualenc.core.encode import encode_texts
from dualenc.core.fusion import candidates
from dualenc.core.lexical import BM25_B, BM25_K1
from dualenc.errors import DualencError
from dualenc.plugins.evaluators.metrics import paired_bootstrap, rank_pool, rank_scores
from dualenc.plugins.evaluators.mrr import MRREvaluator, MRROptions
from dualenc.registry import load_catalog

DIM = 256  # hashed words nearly orthogonal: a query finds the codes that share its words

# --- the tokenizer ------------------------------------------------------------------------


def test_code_words_split_identifiers_and_keep_them_whole():
    assert code_words("getFileName(HTTPServer, snake_case2)") == [
        *("get", "file", "name", "getfilename"),
        *("http", "server", "httpserver"),
        *("snake", "case", "2", "snake_case2"),
    ]
    assert code_words("os.path.join(a, b)") == ["os", "path", "join", "a", "b"]
    assert code_words("__init__ GET_FILE_NAME") == ["init", "get", "file", "name", "get_file_name"]
    assert code_words("Read the file!") == ["read", "the", "file"]


# --- BM25 against a brute force -------------------------------------------------------------


def brute_force_bm25(documents: list[str], query: str, k1: float, b: float) -> list[float]:
    """Okapi BM25 with Lucene's idf, one document and one query word at a time."""
    words = [code_words(document) for document in documents]
    average = sum(len(w) for w in words) / len(words)
    scores = []
    for document_words in words:
        counts = Counter(document_words)
        score = 0.0
        for word in code_words(query):
            holding = sum(1 for other in words if word in other)
            idf = math.log(1 + (len(words) - holding + 0.5) / (holding + 0.5))
            tf = counts[word]
            score += idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * len(document_words) / average))
        scores.append(score)
    return scores


VOCABULARY = ["read", "file", "parse", "json", "HTTPServer", "get_value", "sortList", "os.path", "x", "i"]


def random_documents(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [
        f"def f{i}({rng.choice(VOCABULARY)}):\n    return "
        + " + ".join(rng.choices(VOCABULARY, k=rng.randint(1, 12)))
        for i in range(count)
    ]


@pytest.mark.parametrize(("k1", "b"), [(1.2, 0.75), (1.5, 0.75), (0.9, 0.0)])
def test_lexical_scores_equal_a_brute_force_bm25(k1, b):
    documents = random_documents(40, seed=1)
    queries = ["read a json file", "HTTPServer get value", "sort list sort", "no such words", "os path x"]
    ids = np.arange(5, 5 + 3 * len(documents), 3)  # any ascending ids
    index = LexicalIndex.build(documents, ids, k1=k1, b=b)
    scores = index.scores(queries)
    assert scores.shape == (len(queries), len(documents))
    for query, row in zip(queries, scores, strict=True):
        np.testing.assert_allclose(row, brute_force_bm25(documents, query, k1, b), rtol=0, atol=1e-9)
    assert not scores[3].any()  # no known word: every score 0
    np.testing.assert_array_equal(index.columns(ids[[4, 0, 7]]), [4, 0, 7])
    with pytest.raises(DualencError, match=r"no entry for ids \[6\]"):
        index.columns(np.array([6]))


def test_lexical_index_built_in_chunks_equals_one_chunk_to_the_last_bit(monkeypatch, tmp_path):
    """A build spills each chunk's postings to an unnamed file and fills the CSR arrays from
    it: chunks of 7 documents (words first seen in later chunks, rows spanning chunks) must
    give the very arrays of one chunk, canonical CSR, the brute-force scores, and leave
    nothing in the spill folder."""
    documents = random_documents(61, seed=4) + ["", "def lonely_word_only_here(): pass"]
    ids = np.arange(len(documents)) * 2 + 1
    whole = LexicalIndex.build(documents, ids)
    monkeypatch.setattr(lexical_module, "POSTINGS_CHUNK", 7)
    read = []
    chunked = LexicalIndex.build((read.append(d) or d for d in documents), ids, spill_dir=tmp_path)
    assert read == documents  # the iterable is read once
    assert list(tmp_path.iterdir()) == []
    assert chunked.words == whole.words and chunked.row_of == whole.row_of
    for name in ("indptr", "indices", "data"):
        assert np.array_equal(getattr(chunked.weights, name), getattr(whole.weights, name)), name
    chunked.weights.check_format(full_check=True)
    assert chunked.weights.has_canonical_format
    query = "read the json file with HTTPServer lonely"
    np.testing.assert_allclose(
        chunked.score_row(query), brute_force_bm25(documents, query, BM25_K1, BM25_B), rtol=0, atol=1e-9
    )


def test_lexical_index_does_not_depend_on_document_order():
    documents = random_documents(30, seed=2)
    shuffled = list(range(30))
    random.Random(0).shuffle(shuffled)
    one = LexicalIndex.build(documents)
    other = LexicalIndex.build([documents[i] for i in shuffled])
    assert one.words == other.words
    query = ["read the json file with HTTPServer"]
    np.testing.assert_allclose(one.scores(query)[0][shuffled], other.scores(query)[0], atol=1e-12)


def test_score_row_equals_the_sparse_product_to_the_last_bit():
    """The per-query path adds posting rows with np.add.at; a scipy product of the query's
    word counts and the weights matrix must give the very same floats (ties rank alike)."""
    from scipy import sparse

    documents = random_documents(200, seed=3)
    index = LexicalIndex.build(documents)
    queries = ["read read json file", "HTTPServer get_value sortList x x x", "i", "nothing known", ""]
    for query in queries:
        rows, counts = index.query_words(query)
        vector = sparse.csr_matrix(
            (counts.astype(np.float64), rows, [0, len(rows)]), shape=(1, len(index.words))
        )
        expected = (vector @ index.weights).toarray()[0]
        assert np.array_equal(index.score_row(query), expected)
    buffer = np.zeros(index.count)
    assert index.score_row(queries[0], buffer) is buffer
    assert np.array_equal(index.scores(queries)[1], index.score_row(queries[1]))


# --- the fusion against hand computation ----------------------------------------------------


def test_interpolation_and_rrf_equal_hand_computation():
    dense = np.array([0.9, 0.5, 0.7, 0.1])
    lexical = np.array([0.0, 8.0, 2.0, 4.0])
    dense_rank = np.array([1, 3, 2, 0])
    lexical_rank = np.array([0, 1, 3, 2])
    # min-max: dense (0.9, 0.5, 0.7, 0.1) -> (1, .5, .75, 0); lexical (0, 8, 2, 4) -> (0, 1, .25, .5)
    fused = Fusion(method="interpolate", weight=0.3).fuse(dense, lexical, dense_rank, lexical_rank)
    np.testing.assert_allclose(fused, [0.3, 0.3 * 0.5 + 0.7, 0.3 * 0.75 + 0.7 * 0.25, 0.7 * 0.5])
    rrf = Fusion(method="rrf").fuse(dense, lexical, dense_rank, lexical_rank)
    np.testing.assert_allclose(rrf, [1 / 61, 1 / 63 + 1 / 61, 1 / 62 + 1 / 63, 1 / 62])
    # a constant score normalises to 0: the other one decides
    flat = Fusion(weight=0.5).fuse(np.ones(3), np.array([1.0, 3.0, 2.0]), np.ones(3), np.ones(3))
    np.testing.assert_allclose(flat, [0.0, 0.5, 0.25])


def test_candidates_are_the_union_with_each_lists_ranks():
    union, dense_rank, lexical_rank = candidates(np.array([7, 3, 9]), np.array([9, 4, 7, 5]))
    assert union.tolist() == [7, 3, 9, 4, 5]
    assert dense_rank.tolist() == [1, 2, 3, 0, 0]
    assert lexical_rank.tolist() == [3, 0, 1, 2, 4]
    rng = np.random.default_rng(0)
    for dense_size, lexical_size in ((0, 0), (0, 5), (5, 0), (30, 30), (50, 10)):
        dense_ids = rng.permutation(60)[:dense_size]
        lexical_ids = rng.permutation(60)[:lexical_size]
        union, dense_rank, lexical_rank = candidates(dense_ids, lexical_ids)
        # the same by plain Python lists
        expected = list(dense_ids) + [i for i in lexical_ids if i not in set(dense_ids)]
        assert union.tolist() == expected
        assert dense_rank.tolist() == [_rank(dense_ids, i) for i in expected]
        assert lexical_rank.tolist() == [_rank(lexical_ids, i) for i in expected]


def _rank(ids: np.ndarray, wanted: int) -> int:
    return ids.tolist().index(wanted) + 1 if wanted in ids.tolist() else 0


def test_pool_scores_fuse_only_each_querys_candidates():
    dense = np.array([[0.9, 0.8, 0.1, 0.2, 0.0]])
    lexical = np.array([[0.0, 1.0, 0.0, 3.0, 2.0]])
    fusion = Fusion(weight=0.5, candidates=2)
    # candidates: dense top 2 (0, 1) and lexical top 2 (3, 4); item 2 is none
    fused = fusion.pool_scores(dense, lexical)
    dense_norm = (np.array([0.9, 0.8, 0.2, 0.0]) - 0.0) / 0.9
    lexical_norm = np.array([0.0, 1.0, 3.0, 2.0]) / 3.0
    expected = 0.5 * dense_norm + 0.5 * lexical_norm
    np.testing.assert_allclose(fused[0, [0, 1, 3, 4]], expected)
    assert fused[0, 2] == -np.inf


def test_fusion_overrides():
    fusion = Fusion(method="rrf")
    assert fusion.with_overrides(weight=0.2) == Fusion(method="interpolate", weight=0.2)
    assert fusion.with_overrides("interpolate").method == "interpolate"
    with pytest.raises(DualencError, match="weight: applies to interpolation only"):
        fusion.with_overrides("rrf", 0.5)
    with pytest.raises(ValueError, match="must be <= 1.0"):
        Fusion(weight=1.5)


# --- the Retriever ----------------------------------------------------------------------------

CODES = [
    "def parseHttpHeader(raw):\n    return raw.split(b':')\n",
    "def parse_json(text):\n    return loads(text)\n",
    "def read_header(stream):\n    return stream.readline()\n",
    "def http_get(url):\n    return urlopen(url)\n",
    *(f"def helper{i}(value):\n    return value * {i}\n" for i in range(30)),
]


def test_retriever_hybrid_and_lexical_equal_the_brute_force_ranking():
    encoder = TinyEncoder(dim=DIM)
    retriever = Retriever.from_encoder(encoder, CODES, lexical=True)
    assert retriever.default_mode == "hybrid"
    queries = ["parse http header", "read the header", "helper value"]
    dense = encode_texts(encoder, queries, "query") @ encode_texts(encoder, CODES, "code").T
    lexical = LexicalIndex.build(CODES).scores(queries)
    for fusion in (Fusion(weight=0.4), Fusion(method="rrf")):
        hits = retriever.search(
            queries,
            k=5,
            fusion=fusion.method,
            weight=fusion.weight if fusion.method == "interpolate" else None,
        )
        fused = fusion.pool_scores(dense, lexical, k=5)
        for row, query_hits in zip(range(len(queries)), hits, strict=True):
            order = np.lexsort((np.arange(len(CODES)), -dense[row], -fused[row]))[:5]
            assert [hit.id for hit in query_hits] == [str(i) for i in order]
            np.testing.assert_allclose([hit.score for hit in query_hits], fused[row, order], atol=1e-6)
    (lexical_hits,) = retriever.search(["parse http header"], k=10, mode="lexical")
    positive = np.flatnonzero(lexical[0] > 0)
    assert [hit.id for hit in lexical_hits] == [
        str(i) for i in positive[np.argsort(-lexical[0][positive], kind="stable")]
    ]
    np.testing.assert_allclose([hit.score for hit in lexical_hits], np.sort(lexical[0][positive])[::-1])
    vectors = encode_texts(encoder, queries, "query")
    assert retriever.search_vectors(vectors, k=4, queries=queries, mode="hybrid") == retriever.search(
        queries, k=4
    )
    with pytest.raises(DualencError, match="give the query texts of the vectors"):
        retriever.search_vectors(vectors, k=4, mode="hybrid")
    dense_only = Retriever.from_encoder(encoder, CODES)
    assert dense_only.default_mode == "dense"
    assert retriever.search(queries, k=3, mode="dense") == dense_only.search(queries, k=3)
    with pytest.raises(
        DualencError, match="mode 'lexical': this retriever has no lexical part.*lexical=True"
    ):
        dense_only.search(["x"], mode="lexical")
    with pytest.raises(DualencError, match="mode must be one of dense, lexical, hybrid"):
        retriever.search(["x"], mode="sparse")


# --- the index folder -----------------------------------------------------------------------


def make_records(count: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [
        {
            "code": f"def {rng.choice(['get', 'set', 'load'])}Item{i}():\n    return "
            + " + ".join(rng.sample(VOCABULARY, 4)),
            "id": f"r{i}",
        }
        for i in range(count)
    ]


@pytest.fixture
def encoder() -> TinyEncoder:
    return TinyEncoder(dim=DIM)


@pytest.fixture
def checkpoint(tmp_path, encoder) -> Path:
    directory = tmp_path / "encoder"
    save_encoder(encoder, "hashbag", None, directory)
    return directory


def test_build_writes_the_lexical_part_and_its_manifest(tmp_path, encoder, checkpoint):
    out = tmp_path / "kb"
    report = build(write_jsonl(tmp_path / "corpus.jsonl", make_records(30)), out, checkpoint, encoder)
    assert {p.name for p in out.iterdir()} == {
        "index.faiss", "meta.sqlite", "manifest.json", "lexical.npz", "lexical_vocab.json",
    }  # fmt: skip
    lexical = report.manifest["lexical"]
    assert lexical["type"] == "bm25" and (lexical["k1"], lexical["b"]) == (1.2, 0.75)
    assert lexical["count"] == 30 and lexical["files"] == ["lexical.npz", "lexical_vocab.json"]
    assert report.manifest["fusion"]["method"] == "interpolate"
    assert report.manifest["fusion"]["chosen_on"].startswith("default")
    with np.load(out / "lexical.npz", allow_pickle=False) as arrays:  # numpy arrays only
        assert str(arrays["generation"]) == report.manifest["generation"]
    with Retriever.load(out, encoder=encoder) as retriever:
        assert retriever.default_mode == "hybrid"
        (hits,) = retriever.search(["load item 7"], k=3, mode="lexical")
        assert hits[0].id == "r7"  # the only code with the word 7 (of ...Item7)
        assert len(retriever.search(["get item"], k=4)[0]) == 4


def test_a_dense_only_index(tmp_path, encoder, checkpoint):
    out = tmp_path / "kb"
    corpus = write_jsonl(tmp_path / "corpus.jsonl", make_records(10))
    report = build(corpus, out, checkpoint, encoder, lexical=False)
    assert "lexical" not in report.manifest and not (out / "lexical.npz").exists()
    with Retriever.load(out, encoder=encoder) as retriever:
        assert retriever.default_mode == "dense"
        with pytest.raises(DualencError, match=r"kb/manifest.json: the index has no lexical part"):
            retriever.search(["x"], mode="hybrid")
    build(corpus, out, checkpoint, encoder, update=True)  # an update adds it
    assert (out / "lexical.npz").exists()
    build(corpus, out, checkpoint, encoder, update=True, lexical=False)  # and removes it
    assert not (out / "lexical.npz").exists() and not (out / "lexical_vocab.json").exists()


def search_all(index_dir: Path, encoder, queries: list[str]) -> dict:
    with Retriever.load(index_dir, encoder=encoder) as retriever:
        return {
            mode: [
                [(hit.id, round(hit.score, 6)) for hit in hits]
                for hits in retriever.search(queries, k=8, mode=mode)
            ]
            for mode in ("dense", "lexical", "hybrid")
        }


@pytest.mark.parametrize("exact_threshold", [50_000, 20], ids=["exact", "ivf"])
def test_update_keeps_the_lexical_part_equal_to_a_fresh_build(tmp_path, encoder, checkpoint, exact_threshold):
    records = make_records(60)
    out = tmp_path / "kb"
    build(
        write_jsonl(tmp_path / "first.jsonl", records),
        out,
        checkpoint,
        encoder,
        exact_threshold=exact_threshold,
    )
    changed = [dict(r) for r in records[10:]]  # 10 removed
    changed[0]["code"] = "def parseHttpHeader(raw):\n    return raw"  # one changed
    changed += make_records(70, seed=5)[60:]  # 10 new
    corpus = write_jsonl(tmp_path / "second.jsonl", changed)
    report = build(corpus, out, checkpoint, encoder, update=True, exact_threshold=exact_threshold)
    assert (report.encoded, report.removed) == (11, 10)
    fresh = tmp_path / "fresh"
    build(corpus, fresh, checkpoint, encoder, exact_threshold=exact_threshold)
    queries = ["parse http header", "get item 3 json", "load file", "set value"]
    updated, rebuilt = search_all(out, encoder, queries), search_all(fresh, encoder, queries)
    assert updated["lexical"] == rebuilt["lexical"] and updated["lexical"][0][0][0] == "r10"
    if exact_threshold > 60:
        assert updated == rebuilt
    with Retriever.load(out, encoder=encoder) as retriever:
        assert retriever.lexical.count == retriever.index.ntotal == 60


# --- damaged lexical files ------------------------------------------------------------------


@pytest.fixture
def built(tmp_path, encoder, checkpoint) -> Path:
    out = tmp_path / "kb"
    build(write_jsonl(tmp_path / "corpus.jsonl", make_records(20)), out, checkpoint, encoder)
    return out


def _truncate(name: str):
    def damage(index_dir: Path) -> None:
        data = (index_dir / name).read_bytes()
        (index_dir / name).write_bytes(data[: len(data) // 2])

    return damage


def _other_generation(name: str):
    def damage(index_dir: Path) -> None:
        if name.endswith(".json"):
            vocab = json.loads((index_dir / name).read_text())
            vocab["generation"] = "0" * 32
            (index_dir / name).write_text(json.dumps(vocab))
        else:
            with np.load(index_dir / name, allow_pickle=False) as npz:
                arrays = dict(npz)
            arrays["generation"] = np.array("0" * 32)
            np.savez(index_dir / name, **arrays)

    return damage


def _fewer_words(index_dir: Path) -> None:
    vocab = json.loads((index_dir / "lexical_vocab.json").read_text())
    vocab["words"].pop()
    (index_dir / "lexical_vocab.json").write_text(json.dumps(vocab))


def _pickled_array(index_dir: Path) -> None:
    with np.load(index_dir / "lexical.npz", allow_pickle=False) as npz:
        arrays = dict(npz)
    arrays["ids"] = np.array([object()] * 20, dtype=object)
    np.savez(index_dir / "lexical.npz", **arrays)


LEXICAL_DAMAGE = {
    "missing-npz": (lambda d: (d / "lexical.npz").unlink(), r"kb/lexical.npz: missing; rebuild the index"),
    "missing-vocab": (lambda d: (d / "lexical_vocab.json").unlink(), r"kb/lexical_vocab.json: missing"),
    "truncated-npz": (
        _truncate("lexical.npz"),
        r"kb/lexical.npz: unreadable lexical index, truncated or corrupt",
    ),
    "garbage-npz": (
        lambda d: (d / "lexical.npz").write_bytes(b"PK\x03\x04junk" * 20),
        r"kb/lexical.npz: unreadable",
    ),
    "truncated-vocab": (_truncate("lexical_vocab.json"), r"kb/lexical_vocab.json: not valid JSON"),
    "npz-of-another-build": (_other_generation("lexical.npz"), r"kb/lexical.npz: belongs to another build"),
    "vocab-of-another-build": (
        _other_generation("lexical_vocab.json"),
        r"kb/lexical_vocab.json: belongs to another build",
    ),
    "vocab-mismatch": (_fewer_words, r"kb/lexical.npz: holds \d+ words, but .*lexical_vocab.json lists \d+"),
    "object-array": (
        _pickled_array,
        r"kb/lexical.npz: 'ids' is an object array, which dualenc never unpickles",
    ),
}


@pytest.mark.parametrize(("damage", "message"), LEXICAL_DAMAGE.values(), ids=LEXICAL_DAMAGE.keys())
def test_a_damaged_lexical_part_is_named(tmp_path, built, encoder, checkpoint, damage, message):
    damage(built)
    with pytest.raises(DualencError, match=message):
        Retriever.load(built, checkpoint, encoder=encoder)
    from dualenc.cli import cli

    result = CliRunner().invoke(
        cli, ["search", "--index", str(built), "--encoder-checkpoint", str(checkpoint), "x"]
    )
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit) and "Traceback" not in result.output
    assert re.search(message, result.output), result.output
    # an update rebuilds the lexical part from the records: it repairs it
    build(tmp_path / "corpus.jsonl", built, checkpoint, encoder, update=True)
    with Retriever.load(built, checkpoint, encoder=encoder) as retriever:
        assert retriever.lexical.count == 20


# --- tuning ---------------------------------------------------------------------------------


def test_tune_queries_with_codes_choose_the_fusion(tmp_path, encoder, checkpoint):
    records = make_records(40)
    corpus = write_jsonl(tmp_path / "corpus.jsonl", records)
    rng = random.Random(3)
    pairs = [
        (" ".join(code_words(r["code"])[1:4]) + f" {rng.choice(VOCABULARY)}", r["code"]) for r in records[:25]
    ]
    pairs.append(("a query whose code is elsewhere", "def nowhere(): pass"))
    tune = write_pairs(tmp_path / "tune.jsonl", pairs)
    report = build(corpus, tmp_path / "kb", checkpoint, encoder, tune_queries=str(tune))
    fusion = report.manifest["fusion"]
    settings = fusion["mrr_per_setting"]
    assert list(settings) == [f"interpolate:{w / 10:.1f}" for w in range(11)] + ["rrf"]
    assert fusion["chosen_on"].startswith(f"25 queries of {tune} with a code in the index (of 26")
    chosen = "rrf" if fusion["method"] == "rrf" else f"interpolate:{fusion['weight']:.1f}"
    assert settings[chosen] == max(settings.values())
    with Retriever.load(tmp_path / "kb", encoder=encoder) as retriever:
        assert retriever.fusion == Fusion.from_manifest(fusion, "m")

    queries_only = tmp_path / "queries.txt"
    queries_only.write_text("load an item\nget json\n")
    report = build(corpus, tmp_path / "kb2", checkpoint, encoder, tune_queries=str(queries_only))
    assert "no 'code' field" in report.manifest["fusion"]["chosen_on"]


# --- the commands -----------------------------------------------------------------------------

HASHBAG_PLUGIN = f"""
from dualenc import hookimpl
from fakes import TinyEncoder


@hookimpl
def register_encoders(register):
    register("hashbag", lambda options: TinyEncoder(dim={DIM}), description="test encoder")
"""


@pytest.fixture
def hashbag(tmp_path, monkeypatch):
    """The test encoder installed as a throwaway distribution, for the commands."""
    root = write_distribution(tmp_path / "site", "dualenc-hashbag", "0.1", {"hashbag_plugin": HASHBAG_PLUGIN})
    monkeypatch.syspath_prepend(str(root))
    return load_catalog()


def run_cli(*args: str):
    from dualenc.cli import cli

    return CliRunner().invoke(cli, list(args))


def test_search_mode_lexical_finds_the_identifier_the_random_encoder_misses(tmp_path, hashbag, checkpoint):
    # the encoder's words are lower-case runs: parseHttpHeader is one word, shared with no query
    corpus = write_jsonl(
        tmp_path / "corpus.jsonl", [{"code": code, "id": f"c{i}"} for i, code in enumerate(CODES)]
    )
    out = tmp_path / "kb"
    result = run_cli(
        "index",
        "build",
        "--encoder-checkpoint",
        str(checkpoint),
        "--code-corpus",
        str(corpus),
        "--output-dir",
        str(out),
    )
    assert result.exit_code == 0, result.output
    assert re.search(
        r"lexical: BM25 \(k1=1.2, b=0.75\) over \d+ words; hybrid fusion interpolate", result.output
    )

    def top_ids(*options: str, k: int = 3) -> list[str]:
        result = run_cli("search", "--index", str(out), "parse http header", "-k", str(k), "--json", *options)
        assert result.exit_code == 0, result.output
        return [hit["id"] for hit in json.loads(result.stdout)[0]["hits"]]

    assert top_ids("--mode", "lexical")[0] == "c0"
    assert "c0" not in top_ids("--mode", "dense")
    # hybrid: with RRF or an even interpolation the lexical match climbs above every code but
    # the three sharing a word with the query in both rankings; the default weighs dense 0.8
    assert top_ids("--fusion", "rrf", k=4)[3] == "c0" and top_ids("--weight", "0.5", k=4)[3] == "c0"
    assert top_ids() == top_ids("--fusion", "interpolate", "--weight", "0.8")
    assert top_ids("--weight", "0.3")[0] == "c0"
    assert top_ids("--weight", "1") == top_ids("--mode", "dense")
    for options, message in (
        (["--fusion", "rrf", "--weight", "0.5"], "--weight: applies to --fusion interpolate only"),
        (["--mode", "dense", "--fusion", "rrf"], "--fusion and --weight apply to hybrid search"),
    ):
        result = run_cli("search", "--index", str(out), "x", *options)
        assert result.exit_code == 2 and message in result.output, result.output


EVAL_PAIRS = [
    ("parse an http header", CODES[0]),
    ("parse json text", CODES[1]),
    ("read a header line", CODES[2]),
    ("http get of a url", CODES[3]),
    *((f"helper number {i}", CODES[4 + i]) for i in range(0, 30, 3)),
]


def test_evaluate_reports_every_mode(tmp_path, hashbag):
    pairs = write_pairs(tmp_path / "val.jsonl", EVAL_PAIRS)
    per_query = tmp_path / "per_query.jsonl"
    result = run_cli(
        "evaluate",
        "--encoder",
        "hashbag",
        "--data",
        str(pairs),
        "--mode",
        "all",
        "--json",
        "--per-query",
        str(per_query),
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert set(report["modes"]) == {"dense", "lexical", "hybrid"} and report["mode"] == "all"
    assert report["metrics"] == report["modes"]["dense"]
    eval_set = load_eval_set(pairs, DataConfig())
    encoder = TinyEncoder(dim=DIM)
    for mode in ("dense", "lexical", "hybrid"):
        alone = MRREvaluator(MRROptions(mode=mode)).evaluate(encoder, eval_set, prefix="p")
        assert report["modes"][mode]["mrr"] == pytest.approx(alone["p/mrr"])
    lexical = LexicalIndex.build(eval_set.pool).scores(eval_set.queries)
    expected = rank_scores(lambda s, e: lexical[s:e], len(lexical), lexical.shape[1], eval_set.relevant)
    assert report["modes"]["lexical"]["mrr"] == pytest.approx(expected.metrics()["mrr"])
    interval = report["mrr_differences"]["hybrid-dense"]
    assert interval["low"] <= interval["mean"] <= interval["high"]
    assert interval["mean"] == pytest.approx(
        report["modes"]["hybrid"]["mrr"] - report["modes"]["dense"]["mrr"]
    )
    rows = [json.loads(line) for line in per_query.read_text().splitlines()]
    assert np.mean([1 / row["ranks"]["hybrid"] for row in rows]) == pytest.approx(
        report["modes"]["hybrid"]["mrr"]
    )

    result = run_cli(
        "evaluate", "--encoder", "hashbag", "--data", str(pairs), "--mode", "hybrid", "--weight", "0"
    )
    assert result.exit_code == 0, result.output
    assert re.search(r"mrr\s+\d\.\d{4}", result.output)
    result = run_cli("evaluate", "--encoder", "hashbag", "--data", str(pairs), "--mode", "all")
    assert result.exit_code == 0, result.output
    assert re.search(r"mrr\s+\d\.\d{4}\s+\d\.\d{4}\s+\d\.\d{4}", result.output)
    assert re.search(r"mrr hybrid-dense: [+-]\d\.\d{4} \(paired bootstrap 95% interval", result.output)


def test_evaluate_logs_every_mode_under_its_prefix(tmp_path):
    eval_set = load_eval_set(write_pairs(tmp_path / "val.jsonl", EVAL_PAIRS), DataConfig())
    metrics = MRREvaluator(MRROptions(mode="all")).evaluate(TinyEncoder(dim=DIM), eval_set)
    dense = MRREvaluator().evaluate(TinyEncoder(dim=DIM), eval_set)
    assert metrics["val/mrr"] == dense["val/mrr"]
    assert {"val/lexical/mrr", "val/hybrid/mrr", "val/hybrid/ndcg@10"} <= set(metrics)
    assert "val/hybrid/pool_size" not in metrics


# --- ranking by scores ----------------------------------------------------------------------


def test_rank_scores_equals_rank_pool_on_inner_products():
    rng = np.random.default_rng(0)
    queries = rng.normal(size=(12, 8)).astype(np.float32)
    pool = rng.normal(size=(30, 8)).astype(np.float32)
    relevant = [
        {int(i): 1.0 for i in rng.choice(30, size=rng.integers(1, 4), replace=False)} for _ in range(12)
    ]
    relevant[0] = {3: 2.0, 7: 1.0}
    expected = rank_pool(queries, pool, relevant, top_k=5)
    scores = queries @ pool.T
    got = rank_scores(lambda s, e: scores[s:e], 12, 30, relevant, query_chunk=5, top_k=5)
    np.testing.assert_array_equal(got.ranks, expected.ranks)
    np.testing.assert_array_equal(got.top_ids, expected.top_ids)
    assert got.metrics() == expected.metrics()


def test_rank_scores_breaks_ties_against_the_relevant():
    scores = np.array([[1.0, 1.0, 1.0, 0.0]])
    rankings = rank_scores(lambda s, e: scores[s:e], 1, 4, [{0: 1.0}], top_k=4)
    assert rankings.ranks.tolist() == [3]
    assert rankings.top_ids.tolist() == [[1, 2, 0, 3]]


def test_paired_bootstrap_interval():
    a = np.array([1.0, 0.5, 1.0, 0.25, 1.0])
    result = paired_bootstrap(a, a)
    assert result == {"mean": 0.0, "low": 0.0, "high": 0.0, "level": 0.95}
    better = paired_bootstrap(a + 0.1, a)
    assert better["low"] == pytest.approx(0.1) and better["mean"] == pytest.approx(0.1)

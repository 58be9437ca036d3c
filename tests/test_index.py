"""Index build and update, the Retriever, and the index/search commands."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import faiss
import numpy as np
import pytest
from click.testing import CliRunner
from fakes import TinyEncoder, write_jsonl
from fakes import build_index as build

from dualenc import Retriever
from dualenc.commands.index import index as index_group
from dualenc.commands.search import search as search_command
from dualenc.core.checkpoint import checkpoint_hash, save_encoder
from dualenc.core.config import RetrievalConfig, RunConfig
from dualenc.core.encode import encode_texts
from dualenc.core.index.corpus import read_queries
from dualenc.errors import ConfigError, DualencError

WORDS = [f"w{i}" for i in range(400)]
INDEX_FILES = {"index.faiss", "meta.sqlite", "manifest.json", "lexical.npz", "lexical_vocab.json"}


def make_records(count: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [
        {
            "code": f"def f{i}():\n    return " + " + ".join(rng.sample(WORDS, 8)),
            "path": f"pkg/m{i % 40}.py",
            "symbol": f"f{i}",
            "line": 1 + 3 * (i // 40),
        }
        for i in range(count)
    ]


@pytest.fixture
def encoder() -> TinyEncoder:
    return TinyEncoder()


@pytest.fixture
def checkpoint(tmp_path, encoder) -> Path:
    directory = tmp_path / "encoder"
    save_encoder(encoder, "test-hashing", None, directory)
    return directory


def test_exact_index_files_manifest_and_search(tmp_path, encoder, checkpoint):
    records = make_records(60)
    out = tmp_path / "kb"
    report = build(write_jsonl(tmp_path / "corpus.jsonl", records), out, checkpoint, encoder)

    assert {p.name for p in out.iterdir()} == INDEX_FILES
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["count"] == report.count == report.encoded == 60
    assert manifest["index"]["type"] == "flat"
    assert manifest["recall"]["value"] == 1.0
    assert manifest["encoder"] == {
        "checkpoint": str(checkpoint.resolve()),
        "hash": checkpoint_hash(checkpoint),
        "dim": 32,
    }

    with Retriever.load(out, encoder=encoder) as retriever:
        results = retriever.search([records[7]["code"], records[33]["code"]], k=3)
    assert [len(hits) for hits in results] == [3, 3]
    top = results[0][0]
    assert (top.code, top.path, top.symbol, top.line, top.id) == (
        records[7]["code"],
        "pkg/m7.py",
        "f7",
        1,
        "pkg/m7.py::f7",
    )
    assert top.score == pytest.approx(1.0, abs=1e-5)
    assert results[1][0].symbol == "f33"
    assert results[0][0].score >= results[0][1].score >= results[0][2].score


def _recall_against_numpy(
    retriever: Retriever, corpus_vectors: np.ndarray, keys: list[str], queries
) -> float:
    """recall@10 of the retriever against exact numpy search, ties at the 10th score counted."""
    scores = queries @ corpus_vectors.T
    results = retriever.search_vectors(queries, k=10)
    found = 0
    for row, hits in zip(scores, results, strict=True):
        tenth = np.sort(row)[-10]
        found += sum(row[keys.index(hit.id)] >= tenth - 1e-5 for hit in hits)
    return found / (10 * len(queries))


def test_approximate_index_meets_recall_target_and_records_it(tmp_path, encoder, checkpoint):
    records = make_records(3000)
    out = tmp_path / "kb"
    build(write_jsonl(tmp_path / "corpus.jsonl", records), out, checkpoint, encoder, exact_threshold=500)

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["index"]["type"] == "ivf"
    params = manifest["index"]["params"]
    assert 1 <= params["nprobe"] < params["nlist"]
    assert manifest["recall"]["value"] >= 0.95
    assert manifest["recall"]["target"] == 0.95
    assert "real queries were not available" in manifest["recall"]["query_source"]
    assert manifest["recall"]["tuned_on"] == "code vectors"

    corpus_vectors = encode_texts(encoder, [r["code"] for r in records], "code")
    keys = [f"{r['path']}::{r['symbol']}" for r in records]
    fresh_queries = encode_texts(
        encoder, [" ".join(random.Random(i).sample(WORDS, 5)) for i in range(200)], "query"
    )
    with Retriever.load(out, encoder=encoder) as retriever:
        assert faiss.extract_index_ivf(retriever.index).nprobe == params["nprobe"]
        assert _recall_against_numpy(retriever, corpus_vectors, keys, fresh_queries) >= 0.9


def test_tuning_on_real_queries_meets_the_target_for_queries_like_them(tmp_path, encoder, checkpoint):
    records = make_records(3000)
    corpus = write_jsonl(tmp_path / "corpus.jsonl", records)
    # short queries (3 words) sit far from every code vector (8 words), as natural language does
    queries = [" ".join(random.Random(i).sample(WORDS, 3)) for i in range(600)]
    tune_file = write_jsonl(tmp_path / "queries.jsonl", [{"query": q, "extra": 1} for q in queries[:300]])
    out = tmp_path / "kb"
    build(corpus, out, checkpoint, encoder, exact_threshold=500, tune_queries=str(tune_file))

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["index"]["type"] == "ivf"
    assert manifest["recall"]["value"] >= 0.95
    assert manifest["recall"]["queries"] == 300
    assert manifest["recall"]["tuned_on"] == "queries"
    assert str(tune_file) in manifest["recall"]["query_source"]
    corpus_vectors = encode_texts(encoder, [r["code"] for r in records], "code")
    keys = [f"{r['path']}::{r['symbol']}" for r in records]
    held_out = encode_texts(encoder, queries[300:], "query")
    with Retriever.load(out, encoder=encoder) as retriever:
        assert _recall_against_numpy(retriever, corpus_vectors, keys, held_out) >= 0.93

    # plain text, one query per line, works too; a JSONL line without a query is an error
    (tmp_path / "queries.txt").write_text("\n".join(queries[:50]) + "\n\n")
    assert read_queries(tmp_path / "queries.txt") == queries[:50]
    (tmp_path / "bad.jsonl").write_text('{"query": "ok"}\n\n{"q": "typo"}\n')
    with pytest.raises(DualencError, match=r"bad.jsonl:3: 'query' must be a non-empty string"):
        read_queries(tmp_path / "bad.jsonl")


def test_update_encodes_only_new_and_changed_records(tmp_path, encoder, checkpoint):
    records = make_records(20)
    out = tmp_path / "kb"
    corpus = tmp_path / "corpus.jsonl"
    build(write_jsonl(corpus, records), out, checkpoint, encoder)

    old_code = records[1]["code"]
    updated = [dict(r) for r in records[1:]]  # f0 is deleted
    updated[0]["code"] = "def f1():\n    return changed_body"
    updated[1]["line"] = 99  # f2 moved, code unchanged
    updated.append(
        {"code": "def brand_new():\n    return fresh_thing", "path": "pkg/new.py", "symbol": "brand_new"}
    )
    encoder.texts_tokenized = 0
    report = build(write_jsonl(corpus, updated), out, checkpoint, encoder, update=True)

    assert encoder.texts_tokenized == 2
    assert (report.encoded, report.unchanged, report.removed, report.count) == (2, 18, 1, 20)
    with Retriever.load(out, encoder=encoder) as retriever:
        (new_hits, changed_hits, moved_hits) = retriever.search(
            [updated[-1]["code"], updated[0]["code"], updated[1]["code"]], k=1
        )
        everything = retriever.search(["anything"], k=100)[0]
    assert new_hits[0].id == "pkg/new.py::brand_new" and new_hits[0].line is None
    assert changed_hits[0].id == "pkg/m1.py::f1" and changed_hits[0].code == updated[0]["code"]
    assert moved_hits[0].line == 99
    assert len(everything) == 20
    assert old_code not in {hit.code for hit in everything}
    assert "pkg/m0.py::f0" not in {hit.id for hit in everything}


def test_update_of_python_sources_and_duplicate_keys(tmp_path, encoder, checkpoint):
    package = tmp_path / "src" / "pkg"
    package.mkdir(parents=True)
    (package / "a.py").write_text("def one():\n    return 1\n\n\ndef two():\n    return 2\n")
    # the same symbol twice in one file: keys are numbered, not merged
    (package / "b.py").write_text(
        "if X:\n    def f():\n        return 'x'\nelse:\n    def f():\n        return 'y'\n"
    )
    out = tmp_path / "kb"
    assert build(tmp_path / "src", out, checkpoint, encoder).count == 4

    (package / "a.py").write_text("def one():\n    return 'one changed'\n\n\ndef two():\n    return 2\n")
    (package / "c.py").write_text("def three():\n    return 3\n")
    encoder.texts_tokenized = 0
    report = build(tmp_path / "src", out, checkpoint, encoder, update=True)

    assert encoder.texts_tokenized == 2
    assert (report.encoded, report.unchanged, report.removed, report.count) == (2, 3, 0, 5)
    with Retriever.load(out, encoder=encoder) as retriever:
        hits = retriever.search(["return 3"], k=5)[0]
    assert {hit.id for hit in hits} == {
        "src/pkg/a.py::one",
        "src/pkg/a.py::two",
        "src/pkg/b.py::f",
        "src/pkg/b.py::f#2",
        "src/pkg/c.py::three",
    }
    assert next(hit for hit in hits if hit.symbol == "three").path == "src/pkg/c.py"


def test_update_of_approximate_index_rebuilds_it(tmp_path, encoder, checkpoint):
    records = make_records(2000)
    out = tmp_path / "kb"
    corpus = tmp_path / "corpus.jsonl"
    build(write_jsonl(corpus, records), out, checkpoint, encoder, exact_threshold=500)
    for record in records[:10]:
        record["code"] += " + changed"
    encoder.texts_tokenized = 0
    report = build(write_jsonl(corpus, records), out, checkpoint, encoder, update=True, exact_threshold=500)

    assert encoder.texts_tokenized == 10
    assert report.manifest["index"]["type"] == "ivf"
    assert report.manifest["recall"]["value"] >= 0.95
    with Retriever.load(out, encoder=encoder) as retriever:
        hit = retriever.search([records[3]["code"]], k=1)[0][0]
    assert hit.code == records[3]["code"] and hit.score == pytest.approx(1.0, abs=1e-5)


def test_failed_update_leaves_the_index_as_it_was(tmp_path, encoder, checkpoint, monkeypatch):
    records = make_records(20)
    out = tmp_path / "kb"
    corpus = write_jsonl(tmp_path / "corpus.jsonl", records)
    build(corpus, out, checkpoint, encoder)
    write_jsonl(corpus, records[5:] + [{"code": "def added(): pass", "id": "added"}])

    def interrupted(texts, side):
        raise KeyboardInterrupt

    monkeypatch.setattr(encoder, "tokenize", interrupted)
    with pytest.raises(KeyboardInterrupt):
        build(corpus, out, checkpoint, encoder, update=True)
    monkeypatch.undo()

    assert {p.name for p in out.iterdir()} == INDEX_FILES
    with Retriever.load(out, encoder=encoder) as retriever:
        assert len(retriever.search(["w1"], k=50)[0]) == 20


# --- failures --------------------------------------------------------------------------


@pytest.fixture
def built(tmp_path, encoder, checkpoint) -> Path:
    out = tmp_path / "kb"
    build(write_jsonl(tmp_path / "corpus.jsonl", make_records(20)), out, checkpoint, encoder)
    return out


@pytest.fixture
def other_checkpoint(tmp_path) -> Path:
    directory = tmp_path / "other-encoder"
    save_encoder(TinyEncoder(seed=1), "test-hashing", None, directory)
    return directory


def test_another_encoder_is_refused(tmp_path, built, encoder, other_checkpoint):
    message = r"kb/manifest.json: the index was built with encoder checkpoint .* is a different encoder"
    with pytest.raises(DualencError, match=message):
        Retriever.load(built, other_checkpoint, encoder=encoder)
    with pytest.raises(DualencError, match=message):
        build(tmp_path / "corpus.jsonl", built, other_checkpoint, encoder, update=True)


def _truncate_index(index_dir: Path) -> None:
    data = (index_dir / "index.faiss").read_bytes()
    (index_dir / "index.faiss").write_bytes(data[: len(data) // 2])


def _drop_a_record(index_dir: Path) -> None:
    with sqlite3.connect(index_dir / "meta.sqlite") as db:
        db.execute("DELETE FROM records WHERE id = (SELECT MIN(id) FROM records)")
    db.close()


def _change_generation(index_dir: Path) -> None:
    manifest = json.loads((index_dir / "manifest.json").read_text())
    manifest["generation"] = "0" * 32
    (index_dir / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: (d / "index.faiss").unlink(), r"kb/index.faiss: missing"),
        (_truncate_index, r"kb/index.faiss: unreadable faiss index, truncated or corrupt"),
        (_drop_a_record, r"kb/index.faiss: holds 20 vectors, but .*kb/meta.sqlite has 19 records"),
        (lambda d: (d / "manifest.json").unlink(), r"kb/manifest.json: missing; .* is not a dualenc index"),
        (lambda d: (d / "meta.sqlite").unlink(), r"kb/meta.sqlite: missing"),
        (_change_generation, r"kb/meta.sqlite: belongs to another build"),
    ],
    ids=[
        "missing-index",
        "truncated-index",
        "count-mismatch",
        "missing-manifest",
        "missing-meta",
        "generation",
    ],
)
def test_damaged_index_is_reported(built, encoder, checkpoint, damage, message):
    damage(built)
    with pytest.raises(DualencError, match=message):
        Retriever.load(built, checkpoint, encoder=encoder)


def test_empty_corpus_is_refused_and_writes_nothing(tmp_path, encoder, checkpoint):
    corpus = tmp_path / "empty.jsonl"
    corpus.write_text("\n")
    with pytest.raises(DualencError, match=r"empty.jsonl: no code records"):
        build(corpus, tmp_path / "kb", checkpoint, encoder)
    assert not (tmp_path / "kb").exists()


def test_bad_corpus_line_names_file_and_line(tmp_path, encoder, checkpoint):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"code": "def f(): pass"}\n{"path": "x.py"}\n')
    with pytest.raises(DualencError, match=r"corpus.jsonl:2: 'code' must be a non-empty string"):
        build(corpus, tmp_path / "kb", checkpoint, encoder)


def test_existing_index_needs_update_or_overwrite(tmp_path, built, encoder, checkpoint):
    corpus = write_jsonl(tmp_path / "small.jsonl", make_records(5))
    with pytest.raises(DualencError, match=r"kb: already holds an index; pass --update"):
        build(corpus, built, checkpoint, encoder)
    assert build(corpus, built, checkpoint, encoder, overwrite=True).count == 5


# --- Retriever.from_config ---------------------------------------------------------------


def test_from_config_accepts_run_config_retrieval_config_and_dicts(built, encoder, checkpoint):
    block = {"enabled": True, "encoder_checkpoint": str(checkpoint), "faiss_index": str(built)}
    configs = [
        RunConfig(retrieval=RetrievalConfig(**block)),
        RetrievalConfig(**block),
        block,
        {"retrieval": block},
    ]
    for config in configs:
        with Retriever.from_config(config, encoder=encoder) as retriever:
            assert len(retriever.search(["return w1"], k=4)[0]) == 4


def test_from_config_refuses_disabled_retrieval_and_unknown_keys(built, checkpoint):
    with pytest.raises(DualencError, match="retrieval.enabled is false"):
        Retriever.from_config({"retrieval": {"enabled": False, "faiss_index": str(built)}})
    with pytest.raises(ConfigError, match=r"retrieval.enabld: unknown key; did you mean 'enabled'"):
        Retriever.from_config({"enabld": True})


# --- CLI, with the hf encoder rebuilt from its checkpoint ------------------------------


@pytest.fixture(scope="module")
def hf_checkpoint(tmp_path_factory) -> Path:
    from dualenc.registry import load_catalog

    component = load_catalog().get("encoder", "hf")
    options = component.options(max_seq_len=64)
    directory = tmp_path_factory.mktemp("hf") / "encoder"
    save_encoder(component.create(options), "hf", options, directory)
    return directory


def test_build_and_search_commands(tmp_path, hf_checkpoint, monkeypatch):
    records = [
        {"code": "def binary_search(items, x):\n    lo, hi = 0, len(items)\n", "path": "a.py", "line": 3},
        {"code": "def read_csv(path):\n    return open(path).read().split(',')\n", "path": "b.py"},
        {"code": "def send_email(to, body):\n    smtp.send(to, body)\n", "id": 7},
    ]
    corpus = write_jsonl(tmp_path / "corpus.jsonl", records)
    out = tmp_path / "kb"
    runner = CliRunner()
    result = runner.invoke(
        index_group,
        [
            "build",
            "--encoder-checkpoint",
            str(hf_checkpoint),
            "--code-corpus",
            str(corpus),
            "--output-dir",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert (
        "3 records (flat; exact; " in result.output
        and " bytes a vector in memory); 3 encoded" in result.output
    )

    result = runner.invoke(
        search_command, ["--index", str(out), "binary search implementation", "-k", "2", "--json"]
    )
    assert result.exit_code == 0, result.output
    (answer,) = json.loads(result.stdout)
    assert answer["query"] == "binary search implementation"
    assert [hit["path"] for hit in answer["hits"]][0] == "a.py"
    assert set(answer["hits"][0]) == {"code", "path", "symbol", "line", "id", "score"}
    assert len(answer["hits"]) == 2

    result = runner.invoke(search_command, ["--index", str(out), "email someone", "-k", "1"])
    assert result.exit_code == 0, result.output
    assert "send_email" in result.stdout and "  -  7" in result.stdout

    monkeypatch.setattr("dualenc.commands.search._rich_printer", lambda: None)  # as without rich
    result = runner.invoke(
        search_command, ["--index", str(out), "read a csv file", "-k", "1", "--max-lines", "1"]
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[1:] == ["     def read_csv(path):", "     ... 1 more line"]


# --- damaged and hand-edited index files, through the API and the CLI ----------------------


def _edit_manifest(edit):
    def damage(index_dir: Path) -> None:
        manifest = json.loads((index_dir / "manifest.json").read_text())
        edit(manifest)
        (index_dir / "manifest.json").write_text(json.dumps(manifest))

    return damage


def _write(name: str, data: bytes):
    return lambda index_dir: (index_dir / name).write_bytes(data)


def _truncate(name: str):
    def damage(index_dir: Path) -> None:
        data = (index_dir / name).read_bytes()
        (index_dir / name).write_bytes(data[: len(data) // 3])

    return damage


def _meta_of_another_shape(index_dir: Path) -> None:
    with sqlite3.connect(index_dir / "meta.sqlite") as db:
        db.execute("ALTER TABLE records RENAME COLUMN code TO source")
    db.close()


def _smaller_vectors(index_dir: Path) -> None:
    index = faiss.IndexIDMap2(faiss.IndexFlatIP(8))
    index.add_with_ids(np.zeros((20, 8), dtype=np.float32), np.arange(1, 21, dtype=np.int64))
    faiss.write_index(index, str(index_dir / "index.faiss"))


MANIFEST_DAMAGE = {
    "encoder-string": (
        _edit_manifest(lambda m: m.update(encoder="encoder")),
        r"kb/manifest.json: encoder must be an object, got 'encoder'",
    ),
    "no-encoder-hash": (
        _edit_manifest(lambda m: m["encoder"].pop("hash")),
        r"kb/manifest.json: missing key 'encoder.hash'",
    ),
    "hash-number": (
        _edit_manifest(lambda m: m["encoder"].update(hash=7)),
        r"kb/manifest.json: encoder.hash must be a string, got 7",
    ),
    "count-string": (
        _edit_manifest(lambda m: m.update(count="20")),
        r"kb/manifest.json: count must be an integer, got '20'",
    ),
    "no-generation": (
        _edit_manifest(lambda m: m.pop("generation")),
        r"kb/manifest.json: missing key 'generation'",
    ),
    "not-an-object": (
        _write("manifest.json", b"[1, 2]"),
        r"kb/manifest.json: expected a JSON object, got list",
    ),
    "not-json": (_write("manifest.json", b'{"format": 1,'), r"kb/manifest.json: not valid JSON"),
}
FILE_DAMAGE = {
    "garbage-meta": (_write("meta.sqlite", b"not a database " * 100), r"kb/meta.sqlite: unreadable"),
    "truncated-meta": (_truncate("meta.sqlite"), r"kb/meta.sqlite: unreadable"),
    "empty-meta": (_write("meta.sqlite", b""), r"kb/meta.sqlite: unreadable"),
    "meta-of-another-shape": (_meta_of_another_shape, r"kb/meta.sqlite: unreadable \(no such column: code\)"),
    "garbage-index": (_write("index.faiss", b"\x00garbage" * 50), r"kb/index.faiss: unreadable faiss index"),
    "empty-index": (_write("index.faiss", b""), r"kb/index.faiss: unreadable faiss index"),
}


@pytest.mark.parametrize(("damage", "message"), MANIFEST_DAMAGE.values(), ids=MANIFEST_DAMAGE.keys())
def test_a_manifest_of_the_wrong_shape_is_named(tmp_path, built, encoder, checkpoint, damage, message):
    damage(built)
    with pytest.raises(DualencError, match=message):
        Retriever.load(built, checkpoint, encoder=encoder)
    with pytest.raises(DualencError, match=message):
        Retriever.load(built, encoder=encoder)  # the checkpoint the manifest records
    with pytest.raises(DualencError, match=message):
        build(tmp_path / "corpus.jsonl", built, checkpoint, encoder, update=True)


@pytest.mark.parametrize(("damage", "message"), FILE_DAMAGE.values(), ids=FILE_DAMAGE.keys())
def test_damaged_index_files_are_named(tmp_path, built, encoder, checkpoint, damage, message):
    damage(built)
    with pytest.raises(DualencError, match=message):
        Retriever.load(built, checkpoint, encoder=encoder)
    with pytest.raises(DualencError, match=message):
        build(tmp_path / "corpus.jsonl", built, checkpoint, encoder, update=True)


def test_an_index_of_other_vectors_than_the_encoders_is_refused(tmp_path, built, encoder, checkpoint):
    _smaller_vectors(built)
    message = r"kb/index.faiss: holds 8-dimensional vectors, but the encoder makes 32-dimensional ones"
    with pytest.raises(DualencError, match=message):
        Retriever.load(built, checkpoint, encoder=encoder)
    with pytest.raises(DualencError, match=message):
        build(tmp_path / "corpus.jsonl", built, checkpoint, encoder, update=True)


def run_cli(*args: str):
    """``dualenc ARGS`` as the console script runs it: its errors exit 2 with a message."""
    from dualenc.cli import cli

    return CliRunner().invoke(cli, list(args))


def assert_user_error(result, message: str) -> None:
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)  # not a traceback
    assert re.search(message, result.output), result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("damage", "message"),
    [*MANIFEST_DAMAGE.values(), *FILE_DAMAGE.values()],
    ids=[*MANIFEST_DAMAGE.keys(), *FILE_DAMAGE.keys()],
)
def test_cli_names_a_damaged_index_and_exits_2(tmp_path, built, checkpoint, damage, message):
    damage(built)
    assert_user_error(
        run_cli("search", "--index", str(built), "--encoder-checkpoint", str(checkpoint), "x"), message
    )
    update = ["index", "build", "--encoder-checkpoint", str(checkpoint), "--update"]
    update += ["--code-corpus", str(tmp_path / "corpus.jsonl"), "--output-dir", str(built)]
    assert_user_error(run_cli(*update), message)


@pytest.mark.parametrize("queries", [[""], [" "], ["find a file", "\t\n"]], ids=["empty", "space", "second"])
def test_blank_queries_are_refused(built, encoder, checkpoint, queries):
    position = len(queries)
    with Retriever.load(built, checkpoint, encoder=encoder) as retriever:
        with pytest.raises(DualencError, match=rf"query {position}: is empty or blank"):
            retriever.search(queries)
        with pytest.raises(DualencError, match=r"query 1: must be a string, got NoneType"):
            retriever.search([None])
    result = run_cli("search", "--index", str(built), "--encoder-checkpoint", str(checkpoint), *queries)
    assert_user_error(result, rf"error: query {position}: is empty or blank; give some words to search for")


def test_a_failed_build_leaves_no_folder_it_created(tmp_path, encoder, checkpoint):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"code": "def f(): pass"}\n{"path": "x.py"}\n')
    message = r"corpus.jsonl:2: 'code' must be a non-empty string"
    with pytest.raises(DualencError, match=message):
        build(corpus, tmp_path / "new" / "deeper" / "kb", checkpoint, encoder)
    assert not (tmp_path / "new").exists()
    existing = tmp_path / "existing"  # a folder the user made stays, empty as it was
    existing.mkdir()
    with pytest.raises(DualencError, match=message):
        build(corpus, existing, checkpoint, encoder)
    assert list(existing.iterdir()) == []


# --- the compressed index (IVF-PQ re-ranked from fp16 vectors on disk) --------------------


def _store_files(out: Path) -> set[str]:
    return {p.name for p in out.iterdir() if p.name.startswith(("vectors-", "vector_ids-"))}


def test_above_the_compress_threshold_the_index_is_ivfpq_reranked_from_fp16(tmp_path, encoder, checkpoint):
    records = make_records(3000)
    out = tmp_path / "kb"
    queries = [" ".join(random.Random(i).sample(WORDS, 3)) for i in range(400)]
    tune_file = write_jsonl(tmp_path / "queries.jsonl", [{"query": q} for q in queries[:200]])
    corpus = write_jsonl(tmp_path / "corpus.jsonl", records)
    build(
        corpus,
        out,
        checkpoint,
        encoder,
        exact_threshold=500,
        compress_threshold=1000,
        tune_queries=str(tune_file),
    )

    manifest = json.loads((out / "manifest.json").read_text())
    info = manifest["index"]
    assert info["type"] == "ivfpq"
    params = info["params"]
    assert params["pq_bytes"] == 4  # one byte per 8 of the 32 dimensions
    assert info["faiss"] == f"IVF{params['nlist']},PQ4"
    assert params["rerank_factor"] >= 4 and 1 <= params["nprobe"] <= params["nlist"]
    assert manifest["recall"]["value"] >= 0.95 and manifest["recall"]["tuned_on"] == "queries"
    generation = manifest["generation"]
    assert info["rerank"] == {
        "vectors": f"vectors-{generation}.f16.npy",
        "ids": f"vector_ids-{generation}.npy",
        "dtype": "float16",
    }
    assert _store_files(out) == {info["rerank"]["vectors"], info["rerank"]["ids"]}
    stored = np.load(out / info["rerank"]["vectors"])
    assert stored.shape == (3000, 32) and stored.dtype == np.float16
    corpus_vectors = encode_texts(encoder, [r["code"] for r in records], "code")
    np.testing.assert_allclose(stored.astype(np.float32), corpus_vectors, atol=1e-3)
    # in memory: the PQ code, its id twice (the lists' and the re-rank id list) and the
    # quantisers' share; on disk: 2 bytes a dimension and the header's share
    sizes = info["bytes_per_vector"]
    in_memory = ((out / "index.faiss").stat().st_size + (out / info["rerank"]["ids"]).stat().st_size) / 3000
    assert sizes["in_memory"] == pytest.approx(in_memory, abs=0.1)
    assert 4 + 16 < sizes["in_memory"] < 32 * 4
    assert sizes["on_disk"] == pytest.approx(64 + 128 / 3000, abs=0.1)

    keys = [f"{r['path']}::{r['symbol']}" for r in records]
    fresh = encode_texts(encoder, queries[200:], "query")
    with Retriever.load(out, encoder=encoder) as retriever:
        assert retriever.index.nprobe == params["nprobe"]
        assert _recall_against_numpy(retriever, corpus_vectors, keys, fresh) >= 0.9
        top = retriever.search([records[5]["code"]], k=3, mode="dense")[0][0]
        assert top.symbol == "f5" and top.score == pytest.approx(1.0, abs=2e-3)
        hybrid = retriever.search([records[5]["code"]], k=3, mode="hybrid")[0]
        assert hybrid[0].symbol == "f5"


def test_reranked_search_equals_exact_search_over_the_fp16_vectors(tmp_path):
    from dualenc.core.index.compressed import RerankedIndex, VectorStore, exact_top, train_ivfpq, write_store

    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((700, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = np.arange(700, dtype=np.int64) * 3 + 5  # gaps, as after an update
    blocks = [(ids[:300], vectors[:300]), (ids[300:], vectors[300:])]
    store = VectorStore(*write_store(tmp_path, 700, 16, blocks))
    index = RerankedIndex(train_ivfpq(store, 8, 4, rng), store, rerank_factor=70)
    index.nprobe = 8  # every list, and a shortlist of all 700: re-ranking alone decides
    queries = rng.standard_normal((20, 16)).astype(np.float32)
    scores, found = index.search(queries, 10)

    exact = queries @ vectors.astype(np.float16).astype(np.float32).T
    expected = np.argsort(-exact, axis=1, kind="stable")[:, :10]
    np.testing.assert_array_equal(found, ids[expected])
    np.testing.assert_allclose(scores, np.take_along_axis(exact, expected, axis=1), rtol=1e-5)
    top_scores, top_ids = exact_top(store, queries, 10)
    np.testing.assert_array_equal(top_ids, ids[expected])
    np.testing.assert_allclose(index.reconstruct_batch(ids[[4, 600]]), vectors[[4, 600]], atol=1e-3)


def test_updating_a_compressed_index_reuses_its_vectors_and_replaces_its_files(tmp_path, encoder, checkpoint):
    records = make_records(1500)
    corpus, out = tmp_path / "corpus.jsonl", tmp_path / "kb"
    options = {"exact_threshold": 500, "compress_threshold": 1000}
    build(write_jsonl(corpus, records), out, checkpoint, encoder, **options)
    before = json.loads((out / "manifest.json").read_text())
    old_vectors = np.load(out / before["index"]["rerank"]["vectors"])
    old_ids = np.load(out / before["index"]["rerank"]["ids"])

    records[3]["code"] += " + changed"
    del records[10:20]
    records += make_records(1520, seed=5)[1500:]  # 20 new functions f1500..f1519
    report = build(write_jsonl(corpus, records), out, checkpoint, encoder, update=True, **options)
    assert (report.count, report.encoded, report.removed) == (1510, 21, 10)
    after = json.loads((out / "manifest.json").read_text())
    assert after["index"]["type"] == "ivfpq" and after["generation"] != before["generation"]
    assert _store_files(out) == {after["index"]["rerank"]["vectors"], after["index"]["rerank"]["ids"]}
    new_vectors = np.load(out / after["index"]["rerank"]["vectors"])
    new_ids = np.load(out / after["index"]["rerank"]["ids"])
    kept = np.isin(old_ids, new_ids)
    assert kept.sum() == 1500 - 11  # all but the changed and the removed
    np.testing.assert_array_equal(new_vectors[np.isin(new_ids, old_ids)], old_vectors[kept])
    with Retriever.load(out, encoder=encoder) as retriever:
        assert retriever.search([records[3]["code"]], k=1, mode="dense")[0][0].symbol == "f3"
        assert retriever.search([records[-1]["code"]], k=1, mode="dense")[0][0].symbol == "f1519"

    # shrunk below the threshold it becomes exact, and the re-rank files go
    build(write_jsonl(corpus, records[:800]), out, checkpoint, encoder, update=True, **options)
    assert json.loads((out / "manifest.json").read_text())["index"]["type"] == "ivf"
    assert _store_files(out) == set()
    with Retriever.load(out, encoder=encoder) as retriever:
        assert retriever.search([records[3]["code"]], k=1, mode="dense")[0][0].symbol == "f3"


def test_damaged_rerank_vectors_are_refused_by_name(tmp_path, encoder, checkpoint):
    built = tmp_path / "built"
    options = {"exact_threshold": 500, "compress_threshold": 1000, "lexical": False}
    build(write_jsonl(tmp_path / "corpus.jsonl", make_records(1200)), built, checkpoint, encoder, **options)
    rerank = json.loads((built / "manifest.json").read_text())["index"]["rerank"]
    for damage in ("missing", "truncated", "other ids"):
        out = tmp_path / damage
        shutil.copytree(built, out)
        vectors, ids = out / rerank["vectors"], out / rerank["ids"]
        if damage == "missing":
            vectors.unlink()
        elif damage == "truncated":
            vectors.write_bytes(vectors.read_bytes()[:5000])
        else:
            np.save(ids, np.arange(7, dtype=np.int64))
        with pytest.raises(DualencError) as caught:
            Retriever.load(out, encoder=encoder)
        message = str(caught.value)
        assert str(vectors) in message and "rebuild the index" in message, damage
        if damage == "other ids":
            assert str(ids) in message


def test_a_build_removes_what_a_killed_build_left_half_written(tmp_path, encoder, checkpoint):
    out = tmp_path / "kb"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that ran and is gone
    orphans = [
        out / f".meta.sqlite.{dead.pid}.0a1b2c3d.tmp",
        out / f".meta.sqlite.{dead.pid}.0a1b2c3d.tmp-journal",
    ]
    orphans.append(out / f".vectors.f16.npy.{dead.pid}.deadbeef.tmp")
    alive = out / f".meta.sqlite.{os.getpid()}.0a1b2c3d.tmp"  # a build still running
    other = out / ".notes.tmp"
    for path in (*orphans, alive, other):
        path.write_text("x")
    build(write_jsonl(tmp_path / "corpus.jsonl", make_records(20)), out, checkpoint, encoder)
    assert sorted(p.name for p in out.glob(".*")) == sorted([alive.name, other.name])

"""Provided negatives: the row shapes, code rows, the batch layout, the loss and an exact resume."""

from __future__ import annotations

import logging
from contextlib import nullcontext
from pathlib import Path

import attrs
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from fakes import TinyEncoder, logged_losses, tiny_config, write_jsonl

from dualenc.core.config import DataConfig
from dualenc.core.data.keys import normalised_code_key, query_key
from dualenc.core.data.pairset import load_pair_set
from dualenc.core.data.records import read_pairs, read_training_texts
from dualenc.core.loop import train
from dualenc.core.step import encode_contrastive_batch, grad_cache_step
from dualenc.errors import DualencError
from dualenc.plugins.losses.infonce import InfoNCE, InfoNCEOptions

# --- reading ---------------------------------------------------------------------------


def test_rows_with_negatives_and_flagembedding_rows_give_one_pair_per_positive(tmp_path: Path):
    path = write_jsonl(
        tmp_path / "train.jsonl",
        [
            {"query": "add", "code": "def add(a, b): return a + b", "neg": ["def sub(a, b): return a - b"]},
            {
                "query": "negate",
                "pos": ["def neg(a): return -a", "def neg2(a): return 0 - a"],
                "neg": ["x", "y"],
            },
            {"query": "plain", "code": "pass", "path": "m.py"},
        ],
    )
    records = read_pairs(path)
    assert records.queries == ["add", "negate", "negate", "plain"]
    assert records.codes == [
        "def add(a, b): return a + b",
        "def neg(a): return -a",
        "def neg2(a): return 0 - a",
        "pass",
    ]
    assert records.negatives == [["def sub(a, b): return a - b"], ["x", "y"], ["x", "y"], []]
    assert records.metadata == [{}, {}, {}, {"path": "m.py"}]
    assert read_pairs(write_jsonl(tmp_path / "plain.jsonl", [{"query": "q", "code": "c"}])).negatives is None
    # the vocabulary sees every negative once per row
    texts = read_training_texts(path, DataConfig())
    assert texts[-3:] == ["def sub(a, b): return a - b", "x", "y"]


def test_field_names_come_from_the_data_config(tmp_path: Path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"q": "find", "positives": ["a", "b"], "hard": ["c"]}])
    records = read_pairs(path, "q", "code", positives_field="positives", negatives_field="hard")
    assert records.codes == ["a", "b"] and records.negatives == [["c"], ["c"]]


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"query": "q", "code": "c", "neg": "d"}, "field 'neg' is a string, not a list of strings"),
        ({"query": "q", "code": "c", "neg": ["d", 3]}, "field 'neg' item 2 is a number, not a string"),
        ({"query": "q", "code": "c", "neg": [" "]}, "field 'neg' item 1 is empty"),
        ({"query": "q", "pos": []}, "field 'pos' is an empty list"),
        ({"query": "q", "pos": "c"}, "field 'pos' is a string, not a list of strings"),
        ({"query": "q", "pos": [None]}, "field 'pos' item 1 is null, not a string"),
        ({"query": "q", "code": "c", "pos": ["c"]}, "has both 'code' and 'pos': give one code or a list"),
        ({"query": "q", "neg": ["d"]}, "missing field 'code' or 'pos' (fields present: neg, query)"),
    ],
)
def test_a_badly_shaped_row_is_a_bad_record_with_its_line(tmp_path: Path, record, message):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"query": "fine", "code": "x = 1"}, record])
    with pytest.raises(DualencError) as error:
        read_pairs(path)
    assert str(error.value).startswith(f"{path}:2: {message}")
    skipped = read_pairs(path, on_bad_record="skip")
    assert skipped.queries == ["fine"] and sum(skipped.skipped.values()) == 1


def test_a_null_neg_is_no_negatives(tmp_path: Path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"query": "q", "code": "c", "neg": None}])
    assert read_pairs(path).negatives is None


def write_parquet(path: Path, columns: dict) -> Path:
    pq.write_table(pa.table(columns), path)
    return path


def test_parquet_reads_like_jsonl_with_row_numbers_in_errors(tmp_path: Path, caplog):
    path = write_parquet(
        tmp_path / "train.parquet",
        {
            "query": ["add", "negate", "bad one", "plain"],
            "pos": [["a + b"], ["-a", "0 - a"], [], ["pass"]],
            "neg": [["a - b"], None, ["x"], []],
            "repo": ["r", None, None, "s"],
        },
    )
    with pytest.raises(DualencError) as error:
        read_pairs(path)
    assert str(error.value).startswith(f"{path}: row 3: field 'pos' is an empty list")
    with caplog.at_level(logging.WARNING, logger="dualenc.core.data.records"):
        records = read_pairs(path, on_bad_record="skip")
    assert records.queries == ["add", "negate", "negate", "plain"]
    assert records.codes == ["a + b", "-a", "0 - a", "pass"]
    assert records.negatives == [["a - b"], [], [], []]
    assert records.metadata == [{"repo": "r"}, {}, {}, {"repo": "s"}]
    assert records.skipped == {"empty_field": 1} and f"{path}: row 3" in caplog.text
    # the same pairs as the same rows in JSONL, and the content hash follows the file
    again = read_pairs(write_parquet(tmp_path / "copy.parquet", {"query": ["q"], "code": ["c"]}))
    assert again.codes == ["c"] and again.negatives is None and again.content_hash != records.content_hash


def test_parquet_column_problems_are_file_errors(tmp_path: Path):
    wrong = write_parquet(tmp_path / "wrong.parquet", {"query": ["q"], "code": [1], "neg": [[1]]})
    with pytest.raises(
        DualencError, match=r"wrong\.parquet: column 'code' is int64, not string; column 'neg' is"
    ):
        read_pairs(wrong)
    missing = write_parquet(tmp_path / "missing.parquet", {"text": ["q"]})
    with pytest.raises(DualencError, match=r"no column 'query'; no column 'code' or 'pos' \(columns: text\)"):
        read_pairs(missing)
    (tmp_path / "fake.parquet").write_bytes(b"not parquet")
    with pytest.raises(DualencError, match=r"fake\.parquet: not a readable parquet file"):
        read_pairs(tmp_path / "fake.parquet")
    with pytest.raises(DualencError, match=r"absent\.parquet: data file not found"):
        read_pairs(tmp_path / "absent.parquet")


# --- code rows -------------------------------------------------------------------------


def test_a_negative_that_is_a_pairs_code_uses_its_row_and_others_become_extra_rows(tmp_path: Path):
    path = write_jsonl(
        tmp_path / "train.jsonl",
        [
            {
                "query": "one",
                "code": "def one(): return 1",
                "neg": ["def two(): return 2", "def other(): pass"],
            },
            {
                "query": "two",
                "code": "def two(): return 2",
                "neg": ["def other(): pass", "def one(): return 1"],
            },
            {"query": "three", "code": "def three(): return 3"},
        ],
    )
    config = DataConfig(cache_dir=str(tmp_path / "cache"))
    encoder = TinyEncoder()
    pairs = load_pair_set(path, config, encoder)
    assert encoder.texts_tokenized == 3 + 4  # queries, codes and the one extra code
    # miners and the sampler see the three pairs only
    assert len(pairs) == len(pairs.codes) == len(pairs.code_ids) == len(pairs.code_key) == 3
    assert len(pairs.code_rows) == len(pairs.row_code_key) == len(pairs.row_query_key) == 4
    assert pairs.extra_codes == ["def other(): pass"] and pairs.row_code(3) == "def other(): pass"
    np.testing.assert_array_equal(pairs.provided_negatives(np.array([0, 1, 2])), [[1, 3], [3, 0], [-1, -1]])
    np.testing.assert_array_equal(pairs.code_rows[3], encoder.tokenize(["def other(): pass"], "code")[0])
    assert pairs.row_code_key[3] == normalised_code_key("def other(): pass")
    assert pairs.row_query_key[3] not in {query_key(q) for q in pairs.queries}
    np.testing.assert_array_equal(pairs.provided_negatives(np.array([2])), np.zeros((1, 0)))

    again = TinyEncoder()
    cached = load_pair_set(path, config, again)
    assert again.texts_tokenized == 0 and isinstance(cached.code_rows.flat, np.memmap)
    np.testing.assert_array_equal(cached.code_rows[3], pairs.code_rows[3])
    np.testing.assert_array_equal(cached.row_query_key, pairs.row_query_key)

    capped = load_pair_set(path, attrs.evolve(config, max_provided_negatives=1), TinyEncoder())
    np.testing.assert_array_equal(capped.provided_negatives(np.array([1, 2])), [[3], [-1]])


# --- the batch and the loss ------------------------------------------------------------

WORDS = ["qa", "qb", "qc", "ca", "cb", "cc", "cd", "xa", "note"]


def test_provided_negatives_follow_the_mined_ones_masked_like_them(tmp_path: Path):
    rng = np.random.default_rng(7)
    vectors = {word: rng.normal(size=6) for word in WORDS}
    path = write_jsonl(
        tmp_path / "train.jsonl",
        [
            {"query": "qa", "code": "ca", "neg": ["cb", "xa"]},  # pair 1's code, and a new text
            {"query": "qb", "code": "cb", "neg": ["cb # note"]},  # a clone of its own positive
            {"query": "qc", "code": "cc", "neg": ["cd"]},  # pair 3's code: pair 0's query's positive
            {"query": "qa", "code": "cd"},
        ],
    )
    encoder = TinyEncoder(word_vectors=vectors)
    pairs = load_pair_set(path, DataConfig(cache_dir=str(tmp_path / "cache")), encoder)
    pair_ids = np.array([0, 1, 2])
    mined = np.array([[2, -1], [-1, -1], [0, 1]])
    device = torch.device("cpu")
    batch = encode_contrastive_batch(encoder, pairs, pair_ids, mined, device, nullcontext, False)

    # candidates: positives 0 1 2, mined 2 0 1, provided 1 "xa" "cb # note" 3
    def unit(v):
        return v / np.linalg.norm(v)

    texts = ["ca", "cb", "cc", "cc", "ca", "cb", "cb", "xa", "cb note", "cd"]
    candidates = np.stack([unit(sum(vectors[w] for w in text.split())) for text in texts])
    queries = np.stack([unit(vectors[w]) for w in ("qa", "qb", "qc")])
    np.testing.assert_allclose(batch.candidates.detach().numpy(), candidates, atol=1e-6)
    expected_mask = np.zeros((3, 10), dtype=bool)
    expected_mask[0, [4, 9]] = True  # mined clone of "ca"; "cd", the positive of pair 3 (query "qa")
    expected_mask[1, [5, 6, 8]] = True  # mined and provided "cb", and its clone "cb # note"
    expected_mask[2, [3]] = True  # mined "cc"
    np.testing.assert_array_equal(batch.false_negative_mask().numpy(), expected_mask)

    temperature = 0.1
    scores = queries @ candidates.T / temperature
    expected = np.mean([np.log(np.exp(scores[i][~expected_mask[i]]).sum()) - scores[i, i] for i in range(3)])
    loss_fn = InfoNCE(InfoNCEOptions(temperature=temperature))
    loss = loss_fn(batch)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    without = loss_fn(
        encode_contrastive_batch(encoder, pairs, pair_ids, mined[:, :0], device, nullcontext, False)
    )
    assert without.item() != pytest.approx(loss.item(), rel=1e-3)  # provided negatives do count

    loss.backward()
    direct = encoder.embedding.weight.grad.clone()
    encoder.zero_grad()
    chunked = grad_cache_step(encoder, loss_fn, pairs, pair_ids, mined, device, nullcontext, 2, False)
    assert chunked.item() == pytest.approx(loss.item(), abs=1e-6)
    torch.testing.assert_close(encoder.embedding.weight.grad, direct, atol=1e-5, rtol=1e-4)


# --- training --------------------------------------------------------------------------


def with_negatives(source: Path, target: Path) -> Path:
    """``source``'s pairs, each with two provided negatives: another pair's code and a new text."""
    records = read_pairs(source)
    count = len(records.codes)
    return write_jsonl(
        target,
        (
            {
                "query": q,
                "code": c,
                "neg": [records.codes[(i + 7) % count], f"def helper_{i}(y):\n    return y"],
            }
            for i, (q, c) in enumerate(zip(records.queries, records.codes, strict=True))
        ),
    )


def test_a_run_with_provided_negatives_resumes_exactly(tmp_path: Path, pair_files):
    negatives_file = with_negatives(pair_files[0], tmp_path / "neg.jsonl")
    whole = tiny_config(tmp_path / "a", (negatives_file, pair_files[1]))
    assert train(whole).step == 6
    expected = logged_losses(tmp_path / "a" / "run")

    split = tiny_config(tmp_path / "b", (negatives_file, pair_files[1]))
    assert train(split, stop_after=3).status == "stopped"
    assert train(split, resume_from=tmp_path / "b" / "run" / "last").step == 6
    assert logged_losses(tmp_path / "b" / "run") == pytest.approx(expected, abs=1e-5)

    plain = tiny_config(tmp_path / "c", pair_files)
    train(plain)
    assert logged_losses(tmp_path / "c" / "run")[1] != pytest.approx(expected[1], rel=1e-3)


def test_mined_negatives_written_as_rows_give_the_same_candidates(tmp_path: Path, pair_files):
    """Contract of ``dualenc mine``: its rows, read back, lay a batch out as the miner's round did."""
    from dualenc.plugins.miners.random import RandomMiner, RandomMinerOptions

    config = DataConfig(cache_dir=str(tmp_path / "cache"))
    encoder = TinyEncoder()
    pairs = load_pair_set(pair_files[0], config, encoder)
    miner = RandomMiner(RandomMinerOptions(num_negatives=3, seed=1))
    miner.mine(encoder, pairs, 0, tmp_path / "run")
    mined = miner.negatives(np.arange(len(pairs)))
    mined[::5, 1] = -1  # a short row
    rows = (
        {"query": q, "code": c, "neg": [pairs.codes[j] for j in row if j >= 0]}
        for q, c, row in zip(pairs.queries, pairs.codes, mined, strict=True)
    )
    provided = load_pair_set(write_jsonl(tmp_path / "mined.jsonl", rows), config, encoder)
    assert provided.extra_codes == []  # every negative is a pair's code
    device = torch.device("cpu")
    for ids in (np.arange(8), np.arange(40, 56)):
        in_training = encode_contrastive_batch(encoder, pairs, ids, mined[ids], device, nullcontext, False)
        fed_back = encode_contrastive_batch(
            encoder, provided, ids, mined[ids, :0], device, nullcontext, False
        )
        for name in ("candidates", "candidate_code_key", "candidate_query_key"):
            assert torch.equal(getattr(in_training, name), getattr(fed_back, name)), name

"""Reading pairs, dedup keys, the token cache, the batch sampler and evaluation sets."""

from __future__ import annotations

import gzip
import itertools
import json
import logging
from pathlib import Path

import attrs
import numpy as np
import pytest
import torch
from fakes import TinyEncoder, write_pairs

from dualenc.core.config import DEFAULT_TRAIN_FILE, DataConfig, TrainFile
from dualenc.core.data.evalsets import eval_set_from_pairs, load_eval_set
from dualenc.core.data.keys import normalised_code_key, query_key, stable_int64
from dualenc.core.data.pairset import PairFile, PairSet, RaggedIds, load_pair_set
from dualenc.core.data.records import read_pairs, read_training_texts
from dualenc.core.data.sampler import BucketBatchSampler, computed_tokens, length_groups
from dualenc.errors import DualencError


def write_lines(path: Path, lines: list[str | bytes]) -> Path:
    path.write_bytes(b"".join((line if isinstance(line, bytes) else line.encode()) + b"\n" for line in lines))
    return path


def pair_line(query: str, code: str, **extra) -> str:
    return json.dumps({"query": query, "code": code, **extra})


# --- reading ---------------------------------------------------------------------------


def test_reads_pairs_metadata_blank_lines_and_a_bom(tmp_path: Path):
    path = write_lines(
        tmp_path / "train.jsonl",
        [
            "\ufeff" + pair_line("add two numbers", "def add(a, b): return a + b", path="m.py", line=3),
            "",
            "  ",
            '{"query": "negate", "code": "def neg(a): return -a", "other": [1]}',
        ],
    )
    records = read_pairs(path)
    assert records.queries == ["add two numbers", "negate"]
    assert records.codes[1] == "def neg(a): return -a"
    assert records.metadata == [{"path": "m.py", "line": 3}, {}]
    assert records.skipped == {}


def test_training_texts_are_all_queries_then_all_codes(tmp_path: Path):
    path = write_lines(tmp_path / "t.jsonl", [pair_line("q one", "c1"), pair_line("q two", "c2")])
    assert read_training_texts(path, DataConfig()) == ["q one", "q two", "c1", "c2"]


def test_reads_codesearchnet_fields_from_gzip(tmp_path: Path):
    path = tmp_path / "python_train_0.jsonl.gz"
    with gzip.open(path, "wt") as out:
        for i in range(3):
            out.write(
                json.dumps({"docstring": f"doc {i}", "code": f"x = {i}", "repo": "r/r", "url": "u"}) + "\n"
            )
    config = DataConfig(query_field="docstring", cache_dir=str(tmp_path / "cache"))
    pairs = load_pair_set(path, config, TinyEncoder())
    assert pairs.queries == ["doc 0", "doc 1", "doc 2"] and pairs.codes[2] == "x = 2"
    assert pairs.metadata[0] == {"repo": "r/r", "url": "u"}


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"query": "q", "code": ', "bad.jsonl:2: bad JSON: Expecting value (column 24)"),
        ('["q", "c"]', "bad.jsonl:2: expected a JSON object, got an array"),
        ('{"code": "x = 1"}', "bad.jsonl:2: missing field 'query' (fields present: code)"),
        ('{"query": "q", "code": 7}', "bad.jsonl:2: field 'code' is a number, not a string"),
        ('{"query": "q", "code": null}', "bad.jsonl:2: field 'code' is null, not a string"),
        ('{"query": "  ", "code": "x = 1"}', "bad.jsonl:2: field 'query' is empty"),
        (
            '{"query": "\\ud800 q", "code": "x"}',
            "bad.jsonl:2: field 'query' holds an unpaired surrogate escape",
        ),
        (b'{"query": "caf\xe9", "code": "x"}', "bad.jsonl:2: not valid UTF-8 (byte 0xe9 at column 15)"),
    ],
)
def test_a_bad_line_stops_with_its_location(tmp_path: Path, line, message):
    path = write_lines(tmp_path / "bad.jsonl", [pair_line("fine query", "x = 1"), line])
    with pytest.raises(DualencError) as error:
        read_pairs(path)
    assert str(error.value).startswith(f"{tmp_path}/{message}")
    assert "on_bad_record=skip" in str(error.value)


def test_skip_drops_bad_lines_and_reports_counts(tmp_path: Path, caplog):
    path = write_lines(
        tmp_path / "mixed.jsonl",
        [
            pair_line("good one", "x = 1"),
            "{not json",
            '{"code": "x"}',
            '{"query": "q"}',
            b"\xff\xfe",
            pair_line("good two", "y = 2"),
        ],
    )
    with caplog.at_level(logging.WARNING, logger="dualenc.core.data.records"):
        records = read_pairs(path, on_bad_record="skip")
    assert records.queries == ["good one", "good two"]
    assert records.skipped == {"bad_json": 1, "missing_field": 2, "not_utf8": 1}
    assert "skipped 4 bad records" in caplog.text and f"{path}:3: missing field 'query'" in caplog.text


def test_file_level_problems_are_clear_errors(tmp_path: Path):
    with pytest.raises(DualencError, match=r"missing\.jsonl: data file not found$"):
        read_pairs(tmp_path / "missing.jsonl")
    with pytest.raises(DualencError, match="is a directory, not a data file"):
        read_pairs(tmp_path)
    (tmp_path / "empty.jsonl").write_bytes(b"")
    with pytest.raises(DualencError, match=r"empty\.jsonl: empty file, no pairs"):
        read_pairs(tmp_path / "empty.jsonl")
    write_lines(tmp_path / "blank.jsonl", ["", "   "])
    with pytest.raises(DualencError, match="empty file, no pairs"):
        read_pairs(tmp_path / "blank.jsonl")
    write_lines(tmp_path / "allbad.jsonl", ["[]", "{"])
    with pytest.raises(
        DualencError, match=r"no valid pairs, every record was bad \(not_object 1, bad_json 1\)"
    ):
        read_pairs(tmp_path / "allbad.jsonl", on_bad_record="skip")
    (tmp_path / "fake.jsonl.gz").write_bytes(b"this is not gzip\n")
    with pytest.raises(DualencError, match=r"fake\.jsonl\.gz: not a readable gzip file"):
        read_pairs(tmp_path / "fake.jsonl.gz")


def test_a_10_mb_record_is_rejected_without_reading_it_whole(tmp_path: Path):
    huge = pair_line("huge", "x" * (10 << 20))
    path = write_lines(
        tmp_path / "big.jsonl", [pair_line("small one", "x = 1"), huge, pair_line("small two", "y")]
    )
    with pytest.raises(
        DualencError, match=r"big\.jsonl:2: record is 10\.0 MiB, over the 4 MiB limit per line"
    ):
        read_pairs(path)
    records = read_pairs(path, on_bad_record="skip")
    assert records.queries == ["small one", "small two"] and records.skipped == {"too_large": 1}


# --- keys ------------------------------------------------------------------------------


def test_code_key_ignores_comments_docstrings_and_whitespace():
    code = 'def area(w, h):\n    """Area of a rectangle."""\n    return w * h  # product\n'
    assert normalised_code_key(code) == normalised_code_key("def area(w,h):\n\n  return w*h")
    assert normalised_code_key(code) != normalised_code_key("def area(w, h):\n    return w + h\n")
    # strings that are values, not statements, are code
    assert normalised_code_key('x = "a"') != normalised_code_key('x = "b"')
    renamed = "def size(a, b):\n    return a * b\n"
    assert normalised_code_key(code) != normalised_code_key(renamed)
    assert normalised_code_key(code, normalise_identifiers=True) == normalised_code_key(
        renamed, normalise_identifiers=True
    )


def test_code_key_falls_back_for_code_that_does_not_tokenize():
    java = "public int add(int a, int b) {\n  return a + b;\n}"
    assert normalised_code_key(java) == normalised_code_key("public int add(int a,int b){ return a+b; }")
    broken = "def f(:\n  x = (1,\n"  # unbalanced: tokenize raises
    assert normalised_code_key(broken) == normalised_code_key("def f( :  x = ( 1 ,")
    assert normalised_code_key("  if x:\n  a\n b\n") != 0  # inconsistent dedent


def test_keys_are_stable_int64_and_query_key_ignores_case_and_spacing():
    assert query_key("Sort  a List\n") == query_key("sort a list")
    assert query_key("sort a list") != query_key("sort a dict")
    # the same value in every process and Python version: blake2b, not hash()
    assert stable_int64("sort a list") == 4700119175861191676
    keys = np.array([normalised_code_key(f"x = {i}") for i in range(100)], dtype=np.int64)
    assert len(set(keys.tolist())) == 100


# --- token cache -----------------------------------------------------------------------


def make_pairs_file(path: Path, count: int = 40) -> Path:
    pairs = [
        (f"query number {i} " + "word " * (i % 7), f"def f{i}(x):\n    return x + {i}") for i in range(count)
    ]
    return write_pairs(path, pairs)


def test_token_cache_is_hit_on_the_second_load(tmp_path: Path):
    data = make_pairs_file(tmp_path / "train.jsonl")
    config = DataConfig(cache_dir=str(tmp_path / "cache"))
    encoder = TinyEncoder()
    first = load_pair_set(data, config, encoder)
    assert encoder.texts_tokenized == 80
    second = load_pair_set(data, config, encoder)
    assert encoder.texts_tokenized == 80  # nothing tokenized again
    assert isinstance(second.code_ids.flat, np.memmap)
    assert len(second) == 40 and second.queries == first.queries
    for i in (0, 17, 39):
        np.testing.assert_array_equal(second.query_ids[i], first.query_ids[i])
        np.testing.assert_array_equal(second.code_ids[i], encoder.tokenize([first.codes[i]], "code")[0])
    np.testing.assert_array_equal(second.code_key, first.code_key)
    np.testing.assert_array_equal(second.query_key, [query_key(q) for q in first.queries])
    (entry,) = (tmp_path / "cache").iterdir()  # one cache, no temporary folders left
    assert sorted(p.suffix for p in entry.iterdir()) == [".json"] + [".npy"] * 6


def test_token_cache_is_invalidated_by_tokenizer_length_and_data(tmp_path: Path):
    data = make_pairs_file(tmp_path / "train.jsonl")
    config = DataConfig(cache_dir=str(tmp_path / "cache"))
    load_pair_set(data, config, TinyEncoder())
    changed_tokenizer = TinyEncoder(fingerprint="tiny-v2")
    load_pair_set(data, config, changed_tokenizer)
    assert changed_tokenizer.texts_tokenized == 80
    shorter = TinyEncoder(max_seq_len=4)
    pairs = load_pair_set(data, config, shorter)
    assert shorter.texts_tokenized == 80 and pairs.query_ids.lengths.max() == 4
    make_pairs_file(data, count=41)
    more_data = TinyEncoder()
    assert len(load_pair_set(data, config, more_data)) == 41 and more_data.texts_tokenized == 82
    assert len(list((tmp_path / "cache").iterdir())) == 4


def test_a_damaged_cache_is_rebuilt(tmp_path: Path):
    data = make_pairs_file(tmp_path / "train.jsonl")
    config = DataConfig(cache_dir=str(tmp_path / "cache"))
    expected = load_pair_set(data, config, TinyEncoder())
    (entry,) = (tmp_path / "cache").iterdir()
    (entry / "code_ids.npy").write_bytes(b"garbage")
    encoder = TinyEncoder()
    pairs = load_pair_set(data, config, encoder)
    assert encoder.texts_tokenized == 80
    np.testing.assert_array_equal(pairs.code_ids[5], expected.code_ids[5])
    again = TinyEncoder()
    load_pair_set(data, config, again)
    assert again.texts_tokenized == 0


def test_an_unwritable_cache_only_warns(tmp_path: Path, caplog):
    data = make_pairs_file(tmp_path / "train.jsonl")
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache folder should be")
    with caplog.at_level(logging.WARNING, logger="dualenc.core.data.pairset"):
        pairs = load_pair_set(data, DataConfig(cache_dir=str(blocker)), TinyEncoder())
    assert len(pairs) == 40 and "cannot write the token cache" in caplog.text


# --- batches ---------------------------------------------------------------------------


def synthetic_pairs(
    count: int, distinct_codes: int | None = None, distinct_queries: int | None = None
) -> PairSet:
    """Pairs with random lengths; code keys repeat every ``distinct_codes`` pairs."""
    rng = np.random.default_rng(123)
    ids = np.arange(count, dtype=np.int64)
    return PairSet(
        queries=[f"query {i}" for i in range(count)],
        codes=[f"code {i}" for i in range(count)],
        query_key=ids % (distinct_queries or count) + 10_000,
        code_key=ids % (distinct_codes or count),
        query_ids=RaggedIds.from_arrays([np.ones(n, np.int32) for n in rng.integers(3, 30, count)]),
        code_ids=RaggedIds.from_arrays([np.ones(n, np.int32) for n in rng.integers(5, 128, count)]),
    )


def synthetic_sampler(
    count: int = 100, batch_size: int = 10, distinct_codes=None, distinct_queries=None, **kwargs
) -> BucketBatchSampler:
    return BucketBatchSampler(synthetic_pairs(count, distinct_codes, distinct_queries), batch_size, **kwargs)


def take(sampler: BucketBatchSampler, count: int) -> list[list[int]]:
    iterator = iter(sampler)
    return [next(iterator).tolist() for _ in range(count)]


def test_sampler_is_deterministic_covers_every_pair_and_reshuffles_each_epoch():
    sampler = synthetic_sampler(window=2, seed=5)
    assert take(sampler, 30) == take(synthetic_sampler(window=2, seed=5), 30)
    assert take(synthetic_sampler(seed=6), 10) != take(synthetic_sampler(seed=5), 10)
    first, second = sampler.epoch_batches(0), sampler.epoch_batches(1)
    assert sorted(np.concatenate(first).tolist()) == list(range(100))
    assert [b.tolist() for b in first] != [b.tolist() for b in second]
    assert all(len(batch) == 10 for batch in first)


def test_no_batch_repeats_a_code_key_or_query_key():
    # every code key is shared by 3 pairs, every query key by 4
    sampler = synthetic_sampler(count=120, batch_size=8, distinct_codes=40, distinct_queries=30, seed=1)
    for epoch in range(3):
        batches = sampler.epoch_batches(epoch)
        assert sorted(np.concatenate(batches).tolist()) == list(range(120))
        for batch in batches:
            assert len(set((batch % 40).tolist())) == len(batch)
            assert len(set((batch % 30).tolist())) == len(batch)
        assert sum(len(batch) == 8 for batch in batches) >= 13  # deferring still fills batches


def test_restored_sampler_continues_exactly_across_an_epoch_boundary():
    uninterrupted = take(synthetic_sampler(seed=9, window=3), 27)
    sampler = synthetic_sampler(seed=9, window=3)
    take(sampler, 7)
    state = json.loads(json.dumps(sampler.state_dict()))
    assert state == {"epoch": 0, "position": 7}
    restored = synthetic_sampler(seed=9, window=3)
    restored.load_state_dict(state)
    assert take(restored, 20) == uninterrupted[7:]
    assert restored.state_dict() == {"epoch": 2, "position": 7}  # 10 batches per epoch


def test_shards_get_equal_numbers_of_full_disjoint_batches():
    shards = [synthetic_sampler(count=105, batch_size=10, seed=3, num_replicas=3, rank=r) for r in range(3)]
    for epoch in range(2):
        per_rank = [shard.epoch_batches(epoch) for shard in shards]
        assert [len(batches) for batches in per_rank] == [3, 3, 3]  # 10 full batches: 1 dropped
        seen = np.concatenate([batch for batches in per_rank for batch in batches])
        assert len(set(seen.tolist())) == len(seen) == 90
    single = synthetic_sampler(count=105, batch_size=10, seed=3).epoch_batches(0)
    full = [batch.tolist() for batch in single if len(batch) == 10]
    assert [batch.tolist() for batch in shards[1].epoch_batches(0)] == full[1:9:3]
    with pytest.raises(DualencError, match="cannot fill one batch"):
        synthetic_sampler(count=20, batch_size=10, num_replicas=3)


def weighted_sampler(seed: int = 4) -> BucketBatchSampler:
    """100 pairs: 0-39 from a file of weight 2, 40-99 from one of weight 0.5."""
    pairs = attrs.evolve(
        synthetic_pairs(100), files=(PairFile("a.jsonl", 0, 40, 2.0), PairFile("b.parquet", 40, 100, 0.5))
    )
    return BucketBatchSampler(pairs, 10, seed=seed, window=2)


def test_file_weights_repeat_and_subsample_pairs_per_epoch():
    sampler = weighted_sampler()
    drawn = []
    for epoch in range(2):
        batches = sampler.epoch_batches(epoch)
        counts = np.bincount(np.concatenate(batches), minlength=100)
        assert (counts[:40] == 2).all()  # weight 2: every pair twice
        assert set(counts[40:].tolist()) == {0, 1} and counts[40:].sum() == 30  # 0.5: half of 60
        assert all(len(set(batch.tolist())) == len(batch) for batch in batches)  # copies apart
        drawn.append(set(np.flatnonzero(counts[40:])))
    assert drawn[0] != drawn[1]  # another half each epoch
    assert [b.tolist() for b in weighted_sampler().epoch_batches(1)] == [b.tolist() for b in batches]
    assert [b.tolist() for b in weighted_sampler(5).epoch_batches(1)] != [b.tolist() for b in batches]
    # a restored position continues exactly, across the epoch boundary
    uninterrupted = take(weighted_sampler(), 30)
    restored = weighted_sampler()
    restored.load_state_dict({"epoch": 0, "position": 8})
    assert take(restored, 22) == uninterrupted[8:]


def write_parquet_pairs(path: Path, rows: list[dict]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = {key: [row.get(key) for row in rows] for key in rows[0]}
    pq.write_table(pa.table(columns), path)
    return path


def test_train_files_are_read_in_order_with_their_weights_and_cached_together(tmp_path: Path):
    first = make_pairs_file(tmp_path / "a.jsonl", count=5)
    second = write_parquet_pairs(
        tmp_path / "b.parquet",
        [
            {
                "query": "flag one",
                "pos": ["def g(): pass", "def h(): pass"],
                "neg": ["def f2(x):\n    return x + 2"],
            },
            {"query": "flag two", "pos": ["def k(): pass"], "neg": None},
        ],
    )
    config = DataConfig(
        cache_dir=str(tmp_path / "cache"), train_files=(TrainFile(str(first), 2.0), TrainFile(str(second)))
    )
    encoder = TinyEncoder()
    pairs = load_pair_set(config.training_files(), config, encoder)
    assert len(pairs) == 8 and pairs.codes[5:] == ["def g(): pass", "def h(): pass", "def k(): pass"]
    assert pairs.files == (PairFile(str(first), 0, 5, 2.0), PairFile(str(second), 5, 8, 1.0))
    assert pairs.source == f"{first} + {second}"
    # a negative in one file that is a pair's code in another is that pair's row
    np.testing.assert_array_equal(pairs.provided_negatives(np.array([5, 6, 7, 0])), [[2], [2], [-1], [-1]])
    assert encoder.texts_tokenized == 16
    again = TinyEncoder()
    load_pair_set(config.training_files(), config, again)
    assert again.texts_tokenized == 0
    make_pairs_file(first, count=6)
    changed = TinyEncoder()
    assert len(load_pair_set(config.training_files(), config, changed)) == 9 and changed.texts_tokenized == 18
    texts = read_training_texts(config.training_files(), config)
    assert len(texts) == 9 + 9 + 1 and texts[-1] == "def f2(x):\n    return x + 2"


def test_train_files_in_a_config_are_checked_and_trained_on(tmp_path: Path, pair_files):
    from fakes import tiny_config

    from dualenc.core.configio import check_input_files, load_config
    from dualenc.core.loop import train
    from dualenc.errors import ConfigError

    files = [{"path": str(pair_files[0]), "weight": 0.5}, {"path": str(tmp_path / "none.parquet")}]
    config = load_config(data={"data": {"train_files": files, "val_file": str(pair_files[1])}})
    assert config.data.training_files() == (
        TrainFile(str(pair_files[0]), 0.5),
        TrainFile(str(tmp_path / "none.parquet")),
    )
    with pytest.raises(ConfigError, match=r"data\.train_files\.1\.path: .*none\.parquet: file not found"):
        check_input_files(config)
    with pytest.raises(
        ConfigError,
        match=r"data\.train_files: give data\.train_file \(a\.jsonl\) or data\.train_files, not both",
    ):
        load_config(data={"data": {"train_file": "a.jsonl", "train_files": files}})
    with pytest.raises(ConfigError, match=r"data\.train_files: x\.jsonl: weight must be > 0 \(got 0\.0\)"):
        load_config(data={"data": {"train_files": [{"path": "x.jsonl", "weight": 0}]}})

    second = write_pairs(tmp_path / "b.jsonl", 40, seed=5)
    run = tiny_config(tmp_path, pair_files, max_steps=2, eval_interval=2, save_interval=2)
    weighted = (TrainFile(str(pair_files[0]), 0.5), TrainFile(str(second), 1.0))
    run = attrs.evolve(run, data=attrs.evolve(run.data, train_file=DEFAULT_TRAIN_FILE, train_files=weighted))
    assert train(run).step == 2


def padding_fraction(
    pairs: PairSet,
    batches: list[np.ndarray],
    sides: tuple[str, ...] | list[str] = ("query", "code"),
    grouped: bool = True,
) -> float:
    """Padding tokens / all tokens computed over ``sides``, each side of a batch encoded in
    ``length_groups`` (as training does) or, without ``grouped``, padded to its longest."""
    padded = computed = 0
    for batch in batches:
        for side in sides:
            lengths = pairs.token_ids(side).lengths[batch]
            side_computed = computed_tokens(lengths) if grouped else int(lengths.max()) * len(batch)
            computed += side_computed
            padded += side_computed - int(lengths.sum())
    return padded / computed if computed else 0.0


def test_bucketing_cuts_padding_and_batches_pad_to_their_own_longest(tmp_path: Path):
    rng = np.random.default_rng(0)
    lines = [
        pair_line(
            " ".join(["w"] * int(rng.integers(1, 15))) + f" {i}",
            " ".join(["c"] * int(rng.integers(1, 60))) + f" {i}",
        )
        for i in range(400)
    ]
    config = DataConfig(cache_dir=str(tmp_path / "cache"))
    pairs = load_pair_set(write_lines(tmp_path / "t.jsonl", lines), config, TinyEncoder(max_seq_len=64))
    sampler = BucketBatchSampler(pairs, 16, seed=0, window=8)
    bucketed = sampler.epoch_batches(0)
    shuffled = np.array_split(rng.permutation(400), 25)
    one_padded = {"grouped": False}  # each side of a batch padded to its longest
    assert padding_fraction(pairs, bucketed, **one_padded) < 0.75 * padding_fraction(
        pairs, shuffled, **one_padded
    )
    # sorted by code length first: that side, the longer one, gains most
    assert padding_fraction(pairs, bucketed, ["code"], **one_padded) < 0.3 * padding_fraction(
        pairs, shuffled, ["code"], **one_padded
    )
    # length groups within a batch cut more, on the query side (these batches are short, so a
    # group's overhead often outweighs what it saves)
    assert padding_fraction(pairs, bucketed, ["query"]) < padding_fraction(
        pairs, bucketed, ["query"], **one_padded
    )
    take(sampler, 25)  # the whole epoch
    assert sampler.padding_fraction() == pytest.approx(padding_fraction(pairs, bucketed))
    assert sampler.padding_fraction() == 0.0  # nothing handed out since

    code_ids, code_mask = pairs.collate(bucketed[0], "code")
    code_lengths = pairs.code_ids.lengths[bucketed[0]]
    assert code_ids.shape == (16, code_lengths.max()) and code_ids.dtype == torch.long
    assert code_mask.sum(1).tolist() == code_lengths.tolist()
    np.testing.assert_array_equal(code_ids[0, : code_lengths[0]], pairs.code_ids[bucketed[0][0]])
    query_ids, _ = pairs.collate(bucketed[0], "query", "cpu")
    assert query_ids.shape[1] == pairs.query_ids.lengths[bucketed[0]].max()


def test_padding_fraction_counts_both_sides(tmp_path: Path):
    path = write_lines(tmp_path / "t.jsonl", [pair_line("a", "x y"), pair_line("a b c", "x y z")])
    pairs = load_pair_set(path, DataConfig(cache_dir=str(tmp_path / "cache")), TinyEncoder())
    # query lengths 2 and 4 (with the start id), code lengths 3 and 4: 2 + 1 padded of 8 + 8
    assert padding_fraction(pairs, [np.array([0, 1])]) == pytest.approx(3 / 16)


# --- evaluation sets -------------------------------------------------------------------


def test_eval_set_pools_distinct_codes_and_groups_relevant_ones_per_query():
    queries = ["sum a list", "Sum  a list", "reverse text", "sort items", "sort items"]
    codes = ["sum(xs)", "def total(xs): return sum(xs)", "t[::-1]", "sorted(xs)", "sorted( xs )  # same"]
    eval_set = eval_set_from_pairs(queries, codes, "val")
    assert eval_set.name == "val"
    assert eval_set.queries == ["sum a list", "reverse text", "sort items"]
    assert eval_set.pool == ["sum(xs)", "def total(xs): return sum(xs)", "t[::-1]", "sorted(xs)"]
    assert eval_set.relevant == [{0: 1.0, 1: 1.0}, {2: 1.0}, {3: 1.0}]
    first_two = eval_set_from_pairs(queries, codes, "val", max_pairs=3)
    assert first_two.queries == ["sum a list", "reverse text"] and len(first_two.pool) == 3


def test_load_eval_set_honours_max_val_pairs(tmp_path: Path):
    path = make_pairs_file(tmp_path / "val.jsonl", count=30)
    eval_set = load_eval_set(path, DataConfig(max_val_pairs=12))
    assert len(eval_set.queries) == len(eval_set.pool) == 12
    assert eval_set.queries[0].startswith("query number 0")
    assert len(load_eval_set(path, DataConfig()).pool) == 30


def brute_force_groups_cost(lengths: list[int], max_groups: int, overhead: int) -> int:
    """The least tokens + overhead over every split of the sorted lengths into contiguous groups."""
    ordered = sorted(lengths)
    best = None
    for groups in range(1, min(max_groups, len(ordered)) + 1):
        for cuts in itertools.combinations(range(1, len(ordered)), groups - 1):
            bounds = (0, *cuts, len(ordered))
            cost = sum(ordered[b - 1] * (b - a) for a, b in itertools.pairwise(bounds)) + overhead * groups
            best = cost if best is None else min(best, cost)
    return best


@pytest.mark.parametrize("seed", range(30))
def test_length_groups_are_an_optimal_partition(seed):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 128, size=int(rng.integers(1, 10)))
    max_groups, overhead = int(rng.integers(1, 5)), int(rng.integers(0, 80))
    groups = length_groups(lengths, max_groups=max_groups, overhead=overhead)
    assert sorted(np.concatenate(groups).tolist()) == list(range(len(lengths)))
    assert len(groups) <= max_groups
    cost = sum(int(lengths[g].max()) * len(g) for g in groups) + overhead * len(groups)
    assert cost == brute_force_groups_cost(lengths.tolist(), max_groups, overhead)


def test_length_groups_split_mixed_queries_and_keep_alike_lengths_together():
    mixed = np.array([8, 9, 7, 60, 10, 8, 61, 9, 7, 8] * 3)
    groups = length_groups(mixed, overhead=64)
    assert sorted(len(g) for g in groups) == [6, 24]
    assert computed_tokens(mixed) == 6 * 61 + 24 * 10
    assert len(length_groups(np.full(32, 100), overhead=64)) == 1


# --- degenerate data, damaged caches, the skip report ---------------------------------------


@pytest.mark.parametrize(
    ("pairs", "message"),
    [
        (
            [("sort a list", "def f(x):\n    return sorted(x)")] * 5,
            r"train.jsonl: 5 pairs, 1 distinct queries, 1 distinct codes .* every pair shares its query",
        ),
        (  # one code, whitespace and comments aside, under different queries
            [(f"query {i}", f"def f(x):  # {i}\n    return  x") for i in range(4)],
            r"train.jsonl: 4 pairs, 4 distinct queries, 1 distinct codes .* every pair shares its code",
        ),
        (
            [("Sort  a list", f"def f{i}(x): return {i}") for i in range(3)]
            + [("sort a LIST", "def g(): pass")],
            r"4 pairs, 1 distinct queries, 4 distinct codes .* shares its query",
        ),
        ([("one query", "def one(): pass")], r"train.jsonl: 1 pairs, 1 distinct queries, 1 distinct codes"),
    ],
    ids=["all-equal", "one-code", "one-query", "one-pair"],
)
def test_pairs_that_cannot_share_a_batch_are_refused(tmp_path: Path, pairs, message):
    path = write_pairs(tmp_path / "train.jsonl", pairs)
    pair_set = load_pair_set(path, DataConfig(cache_dir=str(tmp_path / "cache")), TinyEncoder())
    with pytest.raises(DualencError, match=message + r".*training would see no negatives"):
        BucketBatchSampler(pair_set, batch_size=4)


def test_too_few_distinct_pairs_for_a_full_batch_only_warn(caplog):
    with caplog.at_level(logging.WARNING, logger="dualenc.core.data.sampler"):
        sampler = synthetic_sampler(count=30, batch_size=8, distinct_codes=5)
    assert "30 pairs, 30 distinct queries, 5 distinct codes: batches hold at most 5 pairs" in caplog.text
    assert max(len(batch) for batch in take(sampler, 6)) == 5


def test_training_on_duplicate_pairs_is_refused_before_it_starts(tmp_path: Path, pair_files):
    from fakes import tiny_config

    from dualenc.core.loop import train

    duplicates = write_pairs(tmp_path / "train.jsonl", [("sort a list", "def f(x): return sorted(x)")] * 40)
    config = tiny_config(tmp_path, (duplicates, pair_files[1]))
    with pytest.raises(DualencError, match=r"train.jsonl: 40 pairs, 1 distinct queries, 1 distinct codes"):
        train(config)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_a_val_pool_of_one_is_refused_and_a_small_one_warned_about(tmp_path: Path, caplog):
    one = write_pairs(tmp_path / "one.jsonl", [("sort a list", "def f(x): return sorted(x)")] * 3)
    message = r"one.jsonl: 3 pairs, 1 distinct queries, 1 distinct codes: ranking a pool of 1 candidate"
    with pytest.raises(DualencError, match=message + r" scores MRR 1.0 whatever the encoder"):
        load_eval_set(one, DataConfig())
    many = make_pairs_file(tmp_path / "val.jsonl", count=40)
    with pytest.raises(DualencError, match=r"val.jsonl: 1 pairs, .* \(or raise data.max_val_pairs\)"):
        load_eval_set(many, DataConfig(max_val_pairs=1))
    with caplog.at_level(logging.WARNING, logger="dualenc.core.data.evalsets"):
        assert len(load_eval_set(many, DataConfig(max_val_pairs=4)).pool) == 4
    assert (
        "val.jsonl: 4 pairs, 4 distinct queries, 4 distinct codes: a pool this small says little"
        in caplog.text
    )
    assert "(a random ranking scores MRR 0.52)" in caplog.text  # (1 + 1/2 + 1/3 + 1/4) / 4
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="dualenc.core.data.evalsets"):
        load_eval_set(write_pairs(tmp_path / "big.jsonl", 60), DataConfig())
    assert caplog.text == ""


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:100])


def _cache_entry(tmp_path: Path) -> tuple[Path, DataConfig, Path]:
    data = make_pairs_file(tmp_path / "train.jsonl")
    config = DataConfig(cache_dir=str(tmp_path / "cache"))
    load_pair_set(data, config, TinyEncoder())
    (entry,) = (tmp_path / "cache").iterdir()
    return data, config, entry


@pytest.mark.parametrize(
    ("damage", "warning"),
    [
        (lambda e: (e / "code_ids.npy").write_bytes(b""), "unreadable token cache, rebuilding (No data left"),
        (
            lambda e: (e / "query_offsets.npy").write_bytes((e / "query_offsets.npy").read_bytes()[:100]),
            "unreadable",
        ),
        (lambda e: (e / "info.json").write_text("{garbage"), "unreadable token cache, rebuilding (Expecting"),
        (lambda e: (e / "info.json").write_bytes(b"\xff\xfe"), "unreadable token cache, rebuilding"),
        (lambda e: (e / "info.json").write_text("[]"), "token cache does not match the data, rebuilding"),
        (lambda e: np.save(e / "code_key.npy", np.zeros(40)), "token cache does not match the data"),
        (lambda e: np.save(e / "code_offsets.npy", np.arange(41)[::-1].copy()), "does not match the data"),
        (lambda e: (e / "query_key.npy").unlink(), "unreadable token cache, rebuilding"),
    ],
    ids=[
        "empty-npy",
        "truncated-npy",
        "info-not-json",
        "info-not-utf8",
        "info-list",
        "float-keys",
        "offsets-backwards",
        "missing-npy",
    ],
)
def test_a_damaged_token_cache_is_rebuilt_with_a_warning(tmp_path: Path, caplog, damage, warning):
    data, config, entry = _cache_entry(tmp_path)
    expected = np.array(load_pair_set(data, config, TinyEncoder()).code_key)  # a copy, not the mmap
    damage(entry)
    encoder = TinyEncoder()
    with caplog.at_level(logging.WARNING, logger="dualenc.core.data.pairset"):
        pairs = load_pair_set(data, config, encoder)
    assert encoder.texts_tokenized == 80 and warning in caplog.text and str(entry) in caplog.text
    np.testing.assert_array_equal(pairs.code_key, expected)
    again = TinyEncoder()
    load_pair_set(data, config, again)
    assert again.texts_tokenized == 0


def test_training_reports_skipped_records_once(tmp_path: Path, pair_files, caplog):
    import attrs
    from fakes import tiny_config

    from dualenc.core.loop import train

    train_file = tmp_path / "train.jsonl"
    train_file.write_text(pair_files[0].read_text() + "{not json\n")
    config = tiny_config(tmp_path, (train_file, pair_files[1]), max_steps=1, eval_interval=1, save_interval=1)
    config = attrs.evolve(config, data=attrs.evolve(config.data, on_bad_record="skip"))
    with caplog.at_level(logging.WARNING, logger="dualenc.core.data.records"):
        train(config)
    assert caplog.text.count("skipped 1 bad records") == 1, caplog.text

"""Evaluation during training: named validation sets, the metric that picks the best
checkpoint, early stopping, and their config errors. Tiny runs of the one-layer transformer."""

import json

import pytest
from fakes import tiny_config, write_distribution, write_pairs

from dualenc.core import checkpoint
from dualenc.core.best import BestMetric
from dualenc.core.checkpoint import best_name
from dualenc.core.config import DataConfig
from dualenc.core.configio import load_config, unstructure
from dualenc.core.data.evalsets import load_cosqa, load_eval_set, load_val_sets
from dualenc.core.loop import train
from dualenc.errors import ConfigError
from dualenc.plugins.evaluators.mrr import MRREvaluator

# a scripted evaluator: each set's score at its n-th evaluation, and the weights it saw
SCRIPTED_EVALUATOR = """
import torch
from dualenc import hookimpl

SCORES = {
    "val/a": [0.1, 0.2, 0.9, 0.3, 0.3, 0.3, 0.3],
    "val/b": [0.1, 0.5, 0.2, 0.3, 0.8, 0.4, 0.2],
    "val": [0.1, 0.3, 0.35, 0.36, 0.2, 0.5, 0.6],
}


class Scripted:
    primary_metric = "score"

    def __init__(self, options=None):
        self.calls = {}

    def evaluate(self, encoder, eval_set, prefix="val"):
        n = self.calls[prefix] = self.calls.get(prefix, -1) + 1
        with torch.no_grad():
            weight_sum = sum(float(p.double().sum()) for p in encoder.state_dict().values())
        return {f"{prefix}/score": SCORES[prefix][n], f"{prefix}/weight_sum": weight_sum}


@hookimpl
def register_evaluators(register):
    register("scripted", Scripted)
"""


@pytest.fixture
def scripted(tmp_path, monkeypatch):
    site = write_distribution(tmp_path / "site", "scripted", "0.1", {"scripted": SCRIPTED_EVALUATOR})
    monkeypatch.syspath_prepend(str(site))


def run_config(tmp_path, pair_files, data=None, train=None, evaluator=None):
    """``tiny_config``'s run with ``data`` and ``train`` keys on top; ``data.val_sets``
    replaces its val_file."""
    config = unstructure(tiny_config(tmp_path, pair_files))
    if data and "val_sets" in data:
        del config["data"]["val_file"]
    config["data"].update(data or {})
    config["train"].update(train or {})
    if evaluator:
        del config["evaluator"]  # the mrr evaluator's options
        config["plugins"]["evaluator"] = evaluator
    return load_config(data=config)


def rows(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def logged(run, name) -> dict[int, float]:
    return {row["step"]: row[name] for row in rows(run) if name in row}


def test_each_set_is_logged_under_its_own_prefix(tmp_path, pair_files):
    small = write_pairs(tmp_path / "small.jsonl", 10, 7)
    config = run_config(
        tmp_path,
        pair_files,
        data={"val_sets": {"a": str(pair_files[1]), "b": {"file": str(small), "max_pairs": 8}}},
    )
    result = train(config)
    run = tmp_path / "run"
    assert result.best_metric_name == "val/a/mrr"
    assert result.best_checkpoint == run / "encoder-best-a-mrr" and result.best_checkpoint.is_dir()
    assert not any("val/mrr" in row for row in rows(run))
    assert sorted(logged(run, "val/a/mrr")) == sorted(logged(run, "val/b/mrr")) == [0, 3, 6]
    assert logged(run, "val/a/pool_size")[6] == 24 and logged(run, "val/b/pool_size")[6] == 8

    # the values at the last step are those of last/'s weights on each set, evaluated anew
    encoder, _, _ = checkpoint.load_encoder(run / "last")
    data = DataConfig()
    for prefix, eval_set in (
        ("val/a", load_eval_set(pair_files[1], data)),
        ("val/b", load_eval_set(small, data, max_pairs=8)),
    ):
        expected = MRREvaluator().evaluate(encoder, eval_set, prefix=prefix)
        for name in ("mrr", "ndcg@10", "recall@1"):
            assert logged(run, f"{prefix}/{name}")[6] == pytest.approx(expected[f"{prefix}/{name}"], abs=1e-6)


def test_a_benchmark_split_is_a_val_set(tmp_path, pair_files, monkeypatch):
    codes = [f"def f{i}(x):\n    return x + {i}\n" for i in range(5)]
    cosqa = tmp_path / "cosqa"
    cosqa.mkdir()
    (cosqa / "code_idx_map.txt").write_text(json.dumps({code: i for i, code in enumerate(codes)}))
    (cosqa / "cosqa-retrieval-test-500.json").write_text(
        json.dumps([{"doc": "add one", "retrieval_idx": 1}, {"doc": "add four", "retrieval_idx": 4}])
    )
    monkeypatch.setenv("DUALENC_COSQA_DIR", str(cosqa))
    config = run_config(
        tmp_path,
        pair_files,
        data={"val_sets": {"stdlib": str(pair_files[1]), "cosqa": {"benchmark": "cosqa", "split": "test"}}},
        train={"max_steps": 3},
    )
    train(config)
    assert logged(tmp_path / "run", "val/cosqa/pool_size") == {0: 5, 3: 5}
    assert logged(tmp_path / "run", "val/cosqa/num_queries") == {0: 2, 3: 2}
    assert (tmp_path / "run" / "encoder-best-stdlib-mrr").is_dir()
    encoder, _, _ = checkpoint.load_encoder(tmp_path / "run" / "last")
    expected = MRREvaluator().evaluate(encoder, load_cosqa(cosqa, "test"), prefix="val/cosqa")
    assert logged(tmp_path / "run", "val/cosqa/mrr")[3] == pytest.approx(expected["val/cosqa/mrr"], abs=1e-6)


def test_the_best_checkpoint_follows_the_chosen_metric(tmp_path, pair_files, scripted):
    small = write_pairs(tmp_path / "small.jsonl", 10, 7)
    sets = {"val_sets": {"a": str(pair_files[1]), "b": str(small)}}
    config = run_config(
        tmp_path,
        pair_files,
        data=sets,
        train={"eval_interval": 1, "best_metric": "val/b/score"},
        evaluator="scripted",
    )
    result = train(config)
    run = tmp_path / "run"
    a, b = logged(run, "val/a/score"), logged(run, "val/b/score")
    best_b, best_a = max(b, key=b.get), max(a, key=a.get)
    assert (best_a, best_b) == (2, 4)  # the sets disagree
    best = run / "encoder-best-b-score"
    assert checkpoint.load_trainer_state(best, None).step == best_b
    state = json.loads((best / "trainer_state.json").read_text())
    assert (state["best_metric_name"], state["best_metric"]) == ("val/b/score", b[best_b])
    assert (result.best_metric, result.best_metric_name, result.best_checkpoint) == (
        b[best_b],
        "val/b/score",
        best,
    )
    encoder, _, _ = checkpoint.load_encoder(best)
    weight_sum = sum(float(p.double().sum()) for p in encoder.state_dict().values())
    assert weight_sum == pytest.approx(logged(run, "val/b/weight_sum")[best_b], rel=1e-9)
    assert not (run / "encoder-best-a-score").exists()


def stop_step(values: dict[int, float], patience: int, min_delta: float) -> int:
    """Where early stopping must stop, from the logged values: the first evaluation that ends
    ``patience`` in a row that did not beat the best so far by more than ``min_delta``."""
    best, stale = None, 0
    for step in sorted(values):
        stale = 0 if best is None or values[step] > best + min_delta else stale + 1
        best = values[step] if best is None else max(best, values[step])
        if stale == patience:
            return step
    return max(values)


def test_early_stopping_stops_where_the_logged_values_say(tmp_path, pair_files, scripted):
    patience, min_delta = 2, 0.1
    train_keys = {
        "eval_interval": 1,
        "early_stopping_patience": patience,
        "early_stopping_min_delta": min_delta,
    }
    config = run_config(tmp_path, pair_files, train=train_keys, evaluator="scripted")
    result = train(config)
    run = tmp_path / "run"
    scores = logged(run, "val/score")
    assert result.status == "early_stopped"
    assert result.step == stop_step(scores, patience, min_delta) == 3  # 0.35 and 0.36 gain too little
    assert max(row["step"] for row in rows(run)) == 3
    assert checkpoint.load_trainer_state(run / "last", None).step == 3
    # each small gain is still the best checkpoint: early stopping's margin does not pick it
    assert checkpoint.load_trainer_state(run / "encoder-best-score", None).step == 3
    assert result.best_metric == 0.36


def test_early_stopping_counts_on_across_a_resume(tmp_path, pair_files):
    # a gain of more than 1 is impossible for MRR: every evaluation after the first is stale
    keys = {"eval_interval": 1, "early_stopping_patience": 3, "early_stopping_min_delta": 1.0}
    whole = train(run_config(tmp_path / "whole", pair_files, train=keys))
    assert (whole.status, whole.step) == ("early_stopped", 3)

    split = run_config(tmp_path / "split", pair_files, train=keys)
    assert train(split, stop_after=2).status == "stopped"
    last = tmp_path / "split" / "run" / "last"
    state = json.loads((last / "trainer_state.json").read_text())
    assert (state["evals_without_improvement"], state["best_metric_name"]) == (2, "val/mrr")
    resumed = train(split, resume_from=last)
    assert (resumed.status, resumed.step, resumed.best_metric) == ("early_stopped", 3, whole.best_metric)
    expected = logged(tmp_path / "whole" / "run", "val/mrr")
    assert logged(tmp_path / "split" / "run", "val/mrr") == pytest.approx(expected, abs=1e-6)

    # an early-stopped run resumed stops again at once
    again = train(split, resume_from=last)
    assert (again.status, again.step) == ("early_stopped", 3)
    assert max(row["step"] for row in rows(tmp_path / "split" / "run")) == 3


def test_best_metric_min_mode():
    best = BestMetric("val/mean_rank", mode="min", patience=2)
    bests = [best.update({"val/mean_rank": value}) for value in (5.0, 3.0, 4.0, 2.0, 2.0, 6.0)]
    assert bests == [True, True, False, True, False, False]
    assert (best.value, best.stale, best.patience_spent) == (2.0, 2, True)


def test_best_checkpoint_names():
    assert best_name("val/mrr") == "encoder-best-mrr"  # the seed's stage two resumes from it
    assert best_name("val/cosqa/mrr") == "encoder-best-cosqa-mrr"
    assert best_name("val/stdlib/ndcg@10") == "encoder-best-stdlib-ndcg@10"


def test_an_unknown_metric_fails_at_the_first_evaluation_before_any_step(tmp_path, pair_files):
    config = run_config(tmp_path, pair_files, train={"best_metric": "val/mrrr"})
    with pytest.raises(
        ConfigError,
        match="train.best_metric: 'val/mrrr' is not a metric the evaluation logged; "
        "it logged: val/mrr, val/mrr@10, ",
    ):
        train(config)
    assert not any("train/loss" in row for row in rows(tmp_path / "run"))
    # without eval_at_start, at the first evaluation
    late = run_config(
        tmp_path / "late", pair_files, train={"best_metric": "val/mrrr", "eval_at_start": False}
    )
    with pytest.raises(ConfigError, match="'val/mrrr' is not a metric"):
        train(late)
    assert max(logged(tmp_path / "late" / "run", "train/loss")) == 3


CONFIG_WITH_PROBLEMS = """\
data:
  val_file: data/other.jsonl
  val_sets:
    stdlib: data/stdlib/val.jsonl
    cosqa: {benchmark: cosqa, split: train}
    other: {benchmark: cosqa2}
    both: {file: a.jsonl, benchmark: cosqa}
    capped: {file: a.jsonl, max_pairs: 0, dir: x}
train:
  best_metric: val/codesearch/mrr
  early_stopping_patience: 0
"""


def test_config_errors_name_the_line_and_key(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(CONFIG_WITH_PROBLEMS)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert error.value.problems == [
        f"{path}:3: data.val_sets: give data.val_file (data/other.jsonl, line 2) or data.val_sets, not both "
        "(to keep the file, name it in val_sets)",
        f"{path}:5: data.val_sets.cosqa.split: unknown cosqa split 'train'; splits: dev, test",
        f"{path}:6: data.val_sets.other.benchmark: unknown benchmark 'cosqa2'; benchmarks: cosqa "
        "(did you mean 'cosqa'?)",
        f"{path}:7: data.val_sets.both.file: give file or benchmark, not both",
        f"{path}:8: data.val_sets.capped.max_pairs: must be >= 1 (got 0)",
        f"{path}:8: data.val_sets.capped.dir: only a benchmark set takes dir",
        f"{path}:10: train.best_metric: 'val/codesearch/mrr' is not a metric of a validation set; they log "
        "val/stdlib/<metric>, val/cosqa/<metric>, val/other/<metric>, val/both/<metric>, val/capped/<metric> "
        "(e.g. val/stdlib/mrr)",
        f"{path}:11: train.early_stopping_patience: must be >= 1 (got 0)",
    ]


def test_a_set_needs_a_file_or_a_benchmark_and_a_plain_name():
    with pytest.raises(
        ConfigError, match=r"<mapping>: data.val_sets: empty: give file: PAIRS.jsonl or benchmark"
    ):
        load_config(data={"data": {"val_sets": {"empty": None}}})
    with pytest.raises(ConfigError, match=r"data.val_sets: 'a/b': a set's name is letters"):
        load_config(data={"data": {"val_sets": {"a/b": "x.jsonl"}}})


def test_val_sets_round_trip_and_take_set_overrides(tmp_path):
    config = load_config(
        data={"data": {"val_sets": {"stdlib": "s.jsonl"}}},
        sets=["data.val_sets.cosqa.benchmark=cosqa", "train.best_metric=val/cosqa/mrr"],
    )
    assert list(config.data.val_sets) == ["stdlib", "cosqa"]
    assert config.data.val_sets["stdlib"].file == "s.jsonl" and config.data.val_sets["cosqa"].split is None
    assert load_config(data=unstructure(config)) == config


def test_training_checks_every_val_set_file_before_any_work(tmp_path, pair_files):
    sets = {
        "a": str(pair_files[1]),
        "b": str(tmp_path / "missing.jsonl"),
        "c": {"benchmark": "cosqa", "dir": str(tmp_path)},
    }
    with pytest.raises(ConfigError) as error:
        train(run_config(tmp_path, pair_files, data={"val_sets": sets}))
    assert error.value.problems == [
        f"data.val_sets.b.file: {tmp_path / 'missing.jsonl'}: file not found",
        f"data.val_sets.c.dir: {tmp_path / 'code_idx_map.txt'}: file not found",
        f"data.val_sets.c.dir: {tmp_path / 'cosqa-retrieval-dev-500.json'}: file not found",
    ]
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()


def test_the_shared_cosqa_dev_split_loads_as_a_val_set(repo_root):
    cosqa = repo_root.parent / "shared" / "benchmarks" / "cosqa"
    if not cosqa.is_dir():
        pytest.skip("CoSQA benchmark files not present")
    config = load_config(data={"data": {"val_sets": {"cosqa": {"benchmark": "cosqa", "dir": str(cosqa)}}}})
    (eval_set,) = load_val_sets(config.data).values()
    assert (len(eval_set.queries), len(eval_set.pool)) == (500, 6267)

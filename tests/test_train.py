"""The training loop end to end on a tiny transformer: resume, GradCache, kills, signals."""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from contextlib import nullcontext

import attrs
import numpy as np
import pytest
import torch
import yaml
from fakes import logged_losses, tiny_config, write_distribution, write_pairs
from safetensors.torch import load_file

from dualenc.core import checkpoint
from dualenc.core.configio import dump_yaml, load_config, unstructure
from dualenc.core.data.pairset import load_pair_set
from dualenc.core.data.records import read_training_texts
from dualenc.core.data.sampler import length_groups
from dualenc.core.loop import train
from dualenc.core.step import encode_contrastive_batch, encode_side, grad_cache_step
from dualenc.errors import DualencError
from dualenc.registry import load_catalog


def test_stopped_and_resumed_run_matches_an_uninterrupted_one(tmp_path, pair_files):
    whole = tiny_config(tmp_path / "a", pair_files)
    result = train(whole)
    assert result.status == "finished" and result.step == 6
    expected = logged_losses(tmp_path / "a" / "run")
    assert sorted(expected) == [1, 2, 3, 4, 5, 6]

    split = tiny_config(tmp_path / "b", pair_files)
    assert train(split, stop_after=2).status == "stopped"
    resumed = train(split, resume_from=tmp_path / "b" / "run" / "last")
    assert resumed.step == 6
    got = logged_losses(tmp_path / "b" / "run")
    assert got == pytest.approx(expected, abs=1e-5)

    best = checkpoint.resolve(tmp_path / "a" / "run" / "encoder-best-mrr")
    encoder, plugin, _ = checkpoint.load_encoder(best)
    assert plugin == "transformer" and encoder.dim == 32
    assert sorted(p.name for p in (tmp_path / "a" / "run").glob("step-*")) == ["step-0000003", "step-0000006"]


# the keys of issue 19, which checkpoints saved before it lack; at their defaults in tiny_config
KEYS_ADDED_LATER = {
    "data": ["train_files", "val_sets", "positives_field", "negatives_field", "max_provided_negatives"],
    "train": ["best_metric", "best_mode", "early_stopping_patience", "early_stopping_min_delta"],
    "encoder": ["query_prefix", "code_prefix", "query_max_len", "code_max_len"],
}


def make_checkpoint_old(directory):
    """Make ``directory`` look saved before issue 19: its config.yaml, encoder.json and
    trainer_state.json without the keys added since, and without the files added since."""
    config = yaml.safe_load((directory / "config.yaml").read_text())
    record = json.loads((directory / "encoder.json").read_text())
    for section, keys in KEYS_ADDED_LATER.items():
        for key in keys:
            del config[section][key]
            if section == "encoder":
                del record["options"][key]
    (directory / "config.yaml").unlink()  # a new inode: the step-N copies are hard links
    (directory / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (directory / "encoder.json").unlink()
    (directory / "encoder.json").write_text(json.dumps(record))
    state = json.loads((directory / "trainer_state.json").read_text())
    del state["best_metric_name"], state["evals_without_improvement"]
    (directory / "trainer_state.json").unlink()
    (directory / "trainer_state.json").write_text(json.dumps(state))
    (directory / "training.json").unlink()
    (directory / "config_sentence_transformers.json").unlink()


def test_a_checkpoint_saved_before_keys_were_added_resumes_exactly(tmp_path, pair_files, caplog):
    whole = tiny_config(tmp_path / "a", pair_files, max_steps=4)
    train(whole)
    split = tiny_config(tmp_path / "b", pair_files, max_steps=4)
    train(split, stop_after=2)
    make_checkpoint_old(tmp_path / "b" / "run" / "last")
    caplog.set_level("INFO", logger="dualenc.train")
    assert train(split, resume_from=tmp_path / "b" / "run" / "last").step == 4
    assert "resuming exactly from" in caplog.text
    expected = logged_losses(tmp_path / "a" / "run")
    assert sorted(expected) == [1, 2, 3, 4]
    assert logged_losses(tmp_path / "b" / "run") == pytest.approx(expected, abs=1e-5)


def test_a_key_the_checkpoint_lacks_is_a_change_only_away_from_its_default(tmp_path, pair_files):
    config = tiny_config(tmp_path, pair_files)
    old = yaml.safe_load(dump_yaml(config))
    for section, keys in KEYS_ADDED_LATER.items():
        for key in keys:
            del old[section][key]
    old_yaml = yaml.safe_dump(old)
    assert checkpoint.config_changes(old_yaml, config) == []
    changed = attrs.evolve(
        config,
        train=attrs.evolve(config.train, best_mode="min"),
        encoder=attrs.evolve(config.encoder, query_prefix="query: "),
    )
    assert checkpoint.config_changes(old_yaml, changed) == [
        "encoder.query_prefix: None -> 'query: '",
        "train.best_mode: 'max' -> 'min'",
    ]
    # a config the current classes no longer read (a removed key) is compared as written
    old["train"]["removed_key"] = 1
    # (a missing key reads as None, so only the keys whose default is not None show)
    assert checkpoint.config_changes(yaml.safe_dump(old), config) == [
        "data.negatives_field: None -> 'neg'",
        "data.positives_field: None -> 'pos'",
        "data.train_files: None -> []",
        "train.best_mode: None -> 'max'",
        "train.early_stopping_min_delta: None -> 0.0",
        "train.removed_key: 1 -> None",
    ]


def test_the_train_command_names_the_best_metric_and_its_checkpoint(tmp_path, pair_files):
    from click.testing import CliRunner

    from dualenc.cli import cli

    config_file = tmp_path / "run.yaml"
    config_file.write_text(dump_yaml(tiny_config(tmp_path, pair_files, max_steps=2, eval_interval=2)))
    result = CliRunner().invoke(cli, ["train", "--config", str(config_file)])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    best = max(row["val/mrr"] for row in rows if "val/mrr" in row)
    assert result.output.splitlines()[-2:] == [
        f"finished at step 2; best val/mrr {best:.4f} in {tmp_path / 'run' / 'encoder-best-mrr'}",
        f"last checkpoint: {tmp_path / 'run' / 'last'}",
    ]


def test_a_new_config_takes_only_the_weights(tmp_path, pair_files, caplog):
    first = tiny_config(tmp_path / "a", pair_files, max_steps=3)
    train(first)
    second = tiny_config(tmp_path / "b", pair_files, max_steps=2, learning_rate=5e-4)
    caplog.set_level("INFO", logger="dualenc.train")
    result = train(second, resume_from=tmp_path / "a" / "run" / "encoder-best-mrr")
    assert result.step == 2  # a fresh schedule, not step 3 + 2
    assert "train.learning_rate: 0.001 -> 0.0005" in caplog.text
    assert "train.max_steps: 3 -> 2" in caplog.text


def test_refuses_to_overwrite_a_run(tmp_path, pair_files):
    config = tiny_config(tmp_path, pair_files, max_steps=1)
    train(config)
    with pytest.raises(DualencError, match="already holds a run; resume it with --resume-from"):
        train(config)


def test_grad_cache_gives_the_unchunked_loss_and_gradients(tmp_path, pair_files):
    config = tiny_config(tmp_path, pair_files)
    catalog = load_catalog()
    encoder = catalog.get("encoder", "transformer").create(config.encoder)
    encoder.prepare(read_training_texts(config.data.train_file, config.data))
    pairs = load_pair_set(config.data.train_file, config.data, encoder)
    loss_fn = catalog.get("loss", "infonce").create(config.loss)
    ids = np.arange(16)
    negatives = np.stack([(ids + 20) % len(pairs), np.full(16, -1)], axis=1)  # with mined negatives
    encoder.eval()  # no dropout: both paths then see identical activations

    batch = encode_contrastive_batch(encoder, pairs, ids, negatives, torch.device("cpu"), nullcontext, False)
    direct = loss_fn(batch)
    direct.backward()
    expected = {n: p.grad.clone() for n, p in encoder.named_parameters() if p.grad is not None}
    encoder.zero_grad()
    cached = grad_cache_step(
        encoder, loss_fn, pairs, ids, negatives, torch.device("cpu"), nullcontext, 5, False
    )
    assert cached.item() == pytest.approx(direct.item(), abs=1e-6)
    for name, param in encoder.named_parameters():
        if name in expected:
            # summed in another order (other groups and chunks): float32 rounding only
            torch.testing.assert_close(param.grad, expected[name], atol=1e-5, rtol=1e-4)


def test_length_grouped_encoding_equals_one_padded_batch(tmp_path, pair_files):
    # a few long codes among short ones, as in a real batch
    terms = [30 if i % 8 == 0 else 1 + i % 3 for i in range(24)]
    codes = [f"def f{i}(x):\n    return " + " + ".join(["x"] * n) for i, n in enumerate(terms)]
    varied = write_pairs(tmp_path / "varied.jsonl", [(f"sum {i}", code) for i, code in enumerate(codes)])
    config = tiny_config(tmp_path, (varied, pair_files[1]))
    encoder = load_catalog().get("encoder", "transformer").create(config.encoder)
    encoder.prepare(read_training_texts(config.data.train_file, config.data))
    pairs = load_pair_set(config.data.train_file, config.data, encoder)
    ids = np.arange(24)
    assert len(length_groups(pairs.code_ids.lengths[ids])) > 1  # the case under test
    encoder.eval()
    weights = torch.randn(len(ids), encoder.dim)
    grouped = encode_side(encoder, pairs, ids, "code", torch.device("cpu"))
    (grouped * weights).sum().backward()
    expected_grads = {n: p.grad.clone() for n, p in encoder.named_parameters() if p.grad is not None}
    encoder.zero_grad()
    whole = encoder(*pairs.collate(ids, "code"), "code")
    (whole * weights).sum().backward()
    torch.testing.assert_close(grouped, whole, atol=1e-5, rtol=1e-5)
    for name, param in encoder.named_parameters():
        if name in expected_grads:
            torch.testing.assert_close(param.grad, expected_grads[name], atol=1e-5, rtol=1e-4)


def test_mining_overhead_is_logged_per_refresh_interval(tmp_path, pair_files):
    config = tiny_config(tmp_path, pair_files, max_steps=4, eval_interval=100, save_interval=100)
    config = load_config(
        data={
            **unstructure(config),
            "plugins": {**unstructure(config)["plugins"], "miner": "random"},
            "miner": {"num_negatives": 1, "refresh_every": 2},
        }
    )
    train(config)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    rounds = [row for row in rows if any(key.startswith("mining/") for key in row)]
    assert [row["step"] for row in rounds] == [0, 2]
    assert "mining/overhead_pct" not in rounds[0]  # no interval before the first round
    assert 0 < rounds[1]["mining/overhead_pct"] < 100


NAN_LOSS = """
from dualenc import hookimpl
from dualenc.plugins.losses.infonce import InfoNCE, InfoNCEOptions


class NanOnThirdCall(InfoNCE):
    calls = 0

    def forward(self, batch):
        NanOnThirdCall.calls += 1
        loss = super().forward(batch)
        return loss * float("nan") if NanOnThirdCall.calls == 3 else loss


@hookimpl
def register_losses(register):
    register("nan_third", NanOnThirdCall, options=InfoNCEOptions)
"""


def test_non_finite_loss_stops_with_the_step_and_keeps_the_last_checkpoint(tmp_path, pair_files, monkeypatch):
    monkeypatch.syspath_prepend(
        str(write_distribution(tmp_path / "site", "nanloss", "0.1", {"nan_loss": NAN_LOSS}))
    )
    config = tiny_config(tmp_path, pair_files, save_interval=2, eval_interval=100)
    config = load_config(
        data={
            **unstructure(config),
            "plugins": {"encoder": "transformer", "loss": "nan_third", "trackers": []},
        }
    )
    with pytest.raises(DualencError, match=r"loss is nan at step 3; stopped without saving"):
        train(config)
    state = checkpoint.load_trainer_state(tmp_path / "run" / "last", None)
    assert state.step == 2


KILL_DURING_SAVE = textwrap.dedent("""
    import os, signal, sys
    from dualenc.core import checkpoint
    from dualenc.core.configio import dump_yaml, load_config, unstructure
    from dualenc.core.loop import train

    config = load_config(sys.argv[1])
    where = sys.argv[2]
    if where == "weights":
        real = checkpoint.save_file
        def dying_save_file(*args, **kwargs):
            real(*args, **kwargs)
            os.kill(os.getpid(), signal.SIGKILL)
        checkpoint.save_file = dying_save_file
    else:  # between moving the old last/ aside and moving the new one in
        real_rename = os.rename
        def dying_rename(src, dst):
            real_rename(src, dst)
            if str(dst).endswith(".last.old"):
                os.kill(os.getpid(), signal.SIGKILL)
        checkpoint.os.rename = dying_rename
    train(config, resume_from=sys.argv[3])
""")


@pytest.mark.parametrize("where", ["weights", "rename"])
def test_a_kill_during_a_save_leaves_the_previous_checkpoint_loadable(tmp_path, pair_files, where):
    import yaml

    config = tiny_config(tmp_path, pair_files, eval_interval=100)
    train(config, stop_after=2)
    config_file = tmp_path / "run.yaml"
    config_file.write_text(dump_yaml(config))
    script = tmp_path / "kill.py"
    script.write_text(KILL_DURING_SAVE)
    done = subprocess.run(
        [sys.executable, str(script), str(config_file), where, str(tmp_path / "run" / "last")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr
    last = checkpoint.resolve(tmp_path / "run" / "last")
    assert checkpoint.load_trainer_state(last, None).step == 2
    checkpoint.load_encoder(last)
    assert yaml.safe_load((last / "config.yaml").read_text())["train"]["max_steps"] == 6
    # and the run resumes from it
    assert train(config, resume_from=tmp_path / "run" / "last").step == 6


def test_sigterm_saves_a_resumable_checkpoint_and_exits_zero(tmp_path, pair_files):
    config = tiny_config(tmp_path, pair_files, max_steps=100000, eval_interval=100000, save_interval=100000)
    config_file = tmp_path / "run.yaml"
    config_file.write_text(dump_yaml(config))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "dualenc", "train", "--config", str(config_file)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and "train/loss" in metrics.read_text()):
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 0, output
    assert "interrupted at step" in output
    state = checkpoint.load_trainer_state(tmp_path / "run" / "last", None)
    assert state.step >= 1


WORSENING_EVALUATOR = """
import torch
from dualenc import hookimpl


class Worsening:
    primary_metric = "score"

    def __init__(self, options=None):
        self.calls = 0

    def evaluate(self, encoder, eval_set, prefix="val"):
        self.calls += 1
        with torch.no_grad():
            weight_sum = sum(float(p.double().sum()) for p in encoder.state_dict().values())
        return {f"{prefix}/score": 1.0 / self.calls, f"{prefix}/weight_sum": weight_sum}


@hookimpl
def register_evaluators(register):
    register("worsening", Worsening)
"""


def weight_sum(directory) -> float:
    encoder, _, _ = checkpoint.load_encoder(checkpoint.resolve(directory))
    return sum(float(p.double().sum()) for p in encoder.state_dict().values())


def test_the_best_checkpoint_holds_the_start_weights_when_no_later_eval_beats_them(
    tmp_path, pair_files, monkeypatch
):
    monkeypatch.syspath_prepend(
        str(write_distribution(tmp_path / "site", "worsening", "0.1", {"worsening": WORSENING_EVALUATOR}))
    )
    data = unstructure(tiny_config(tmp_path, pair_files))
    del data["evaluator"]  # the mrr evaluator's options
    config = load_config(data={**data, "plugins": {**data["plugins"], "evaluator": "worsening"}})
    result = train(config)
    assert result.best_metric == 1.0
    run = tmp_path / "run"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    at_start = next(row for row in rows if row["step"] == 0 and "val/score" in row)
    assert checkpoint.load_trainer_state(run / "encoder-best-score", None).step == 0
    assert weight_sum(run / "encoder-best-score") == pytest.approx(at_start["val/weight_sum"], rel=1e-9)
    assert weight_sum(run / "last") != pytest.approx(at_start["val/weight_sum"], rel=1e-9)


def test_a_weights_only_resume_into_the_same_folder_keeps_the_earlier_rows(tmp_path, pair_files):
    config = tiny_config(tmp_path, pair_files)
    train(config, stop_after=4)
    run = tmp_path / "run"
    before = (run / "metrics.jsonl").read_text()
    longer = attrs.evolve(config, train=attrs.evolve(config.train, max_steps=config.train.max_steps + 2))
    train(longer, resume_from=run / "last")  # a changed config: a new schedule from step 0
    assert (run / "metrics.jsonl").read_text().startswith(before)


def test_a_resume_keeps_one_metrics_row_per_step_and_removes_leftovers(tmp_path, pair_files):
    config = tiny_config(tmp_path, pair_files)
    train(config, stop_after=4)  # saved at 3 and 4; metrics rows up to step 4
    run = tmp_path / "run"
    # what a run killed after its step-3 checkpoint leaves: rows past step 3, staging folders,
    # and a step-3 save cut short between moving last/ aside and moving the new one in
    shutil.rmtree(run / "last")
    (run / "step-0000003").rename(run / ".last.old")
    (run / ".last.tmp-kill1").mkdir()
    (run / ".last.tmp-kill1" / "model.safetensors").write_bytes(b"half")
    (run / ".step-0000006.tmp-kill2").mkdir()
    with open(run / "metrics.jsonl", "a") as metrics:
        metrics.write('{"step": 5, "train/loss": 1.0}\n{"step": 6, "train/lo')
    resumed = train(config, resume_from=run / "last")
    assert resumed.step == 6
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [row["step"] for row in rows if "train/loss" in row]
    assert losses == [1, 2, 3, 4, 5, 6]
    assert [row["step"] for row in rows if "val/mrr" in row] == [0, 3, 6]
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".")) == []
    assert checkpoint.load_trainer_state(run / "last", None).step == 6


@pytest.fixture
def ten_seconds_a_step(monkeypatch):
    """The loop's clock advances 10 s per optimizer step and not otherwise: time budgets that
    stop at a known step, whatever the machine's speed."""
    from dualenc.core import loop
    from dualenc.core.step import TrainStep

    now = [1000.0]
    update = TrainStep.update

    def timed_update(self):
        now[0] += 10.0
        return update(self)

    monkeypatch.setattr(TrainStep, "update", timed_update)
    monkeypatch.setattr(loop, "clock", lambda: now[0])


def logged(run_dir, key: str) -> dict[int, float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {row["step"]: row[key] for row in rows if key in row}


def test_a_time_budget_stops_saves_and_resumes_with_the_rest(
    tmp_path, pair_files, ten_seconds_a_step, caplog
):
    whole = tiny_config(tmp_path / "a", pair_files, max_steps=10, eval_interval=20, save_interval=20)
    assert train(whole).status == "finished"
    caplog.set_level("INFO", logger="dualenc.train")
    # 25 s: steps 1 and 2 take 20 s, step 3 reaches 30 s and ends the run
    limited = tiny_config(
        tmp_path / "b", pair_files, max_steps=10, eval_interval=20, save_interval=20, max_train_seconds=25
    )
    result = train(limited)
    run = tmp_path / "b" / "run"
    assert (result.status, result.step) == ("time_limit", 3)
    assert (
        "stopped at step 3 (train.max_train_seconds: 30 s of training reached the limit of 25 s"
        in caplog.text
    )
    # it ends as max_steps does (evaluated and saved), on the schedule of all 10 steps
    assert sorted(logged(run, "val/mrr")) == [0, 3]
    state = checkpoint.load_trainer_state(run / "last", None)
    assert (state.step, state.train_seconds) == (3, 30.0)
    assert logged(run, "train/lr") == pytest.approx(
        {s: v for s, v in logged(tmp_path / "a" / "run", "train/lr").items() if s <= 3}
    )

    # the same config again: its budget is spent, so no step
    again = train(limited, resume_from=run / "last")
    assert (again.status, again.step) == ("time_limit", 3)
    assert checkpoint.load_trainer_state(run / "last", None).step == 3
    # a bigger budget resumes exactly (not a config change) with the 30 s already spent
    longer = attrs.evolve(limited, train=attrs.evolve(limited.train, max_train_seconds=45))
    resumed = train(longer, resume_from=run / "last")
    assert (resumed.status, resumed.step) == ("time_limit", 5)
    assert "resuming exactly from" in caplog.text
    assert checkpoint.load_trainer_state(run / "last", None).train_seconds == 50.0
    expected = {s: v for s, v in logged_losses(tmp_path / "a" / "run").items() if s <= 5}
    assert logged_losses(run) == pytest.approx(expected, abs=1e-5)


def test_a_checkpoint_without_training_time_resumes_with_the_whole_budget(
    tmp_path, pair_files, ten_seconds_a_step
):
    config = tiny_config(tmp_path, pair_files, max_steps=10, max_train_seconds=25)
    assert train(config).step == 3
    state_file = tmp_path / "run" / "last" / "trainer_state.json"
    state = json.loads(state_file.read_text())
    del state["train_seconds"]  # as saved before train.max_train_seconds existed
    state_file.unlink()  # a new inode: the step-3 copy is a hard link
    state_file.write_text(json.dumps(state))
    assert checkpoint.load_trainer_state(tmp_path / "run" / "last", None).train_seconds == 0.0
    assert train(config, resume_from=tmp_path / "run" / "last").step == 6


@pytest.mark.parametrize("value", ["0", "-5"])
def test_max_train_seconds_must_be_positive(tmp_path, value):
    config_file = tmp_path / "run.yaml"
    config_file.write_text(f"train:\n  max_train_seconds: {value}\n")
    with pytest.raises(DualencError, match=rf"train\.max_train_seconds: must be > 0 \(got {float(value)}\)"):
        load_config(config_file)


@pytest.mark.parametrize("grad_cache_chunk", [None, 4])
def test_sparse_embedding_gradients_train_as_dense_ones(tmp_path, pair_files, monkeypatch, grad_cache_chunk):
    """A token table of SPARSE_EMBEDDING_ROWS rows or more trains with sparse gradients
    (densified before the update): the same losses and weights as dense ones, to rounding."""
    from dualenc.core import step as step_module

    def config(name):
        tiny = tiny_config(tmp_path / name, pair_files, grad_cache_chunk=grad_cache_chunk)
        return attrs.evolve(tiny, encoder=attrs.evolve(tiny.encoder, vocab_size=4096))

    encoder = load_catalog().get("encoder", "transformer").create(config("probe").encoder)
    assert step_module.sparse_embedding_gradients(encoder) == 1  # the tokens; not the 48 positions
    assert encoder.token_embedding.sparse and not encoder.towers["shared"].positions.sparse

    densified = []
    real_densify = step_module.densify_gradients

    def densify(params):
        params = list(params)
        densified.append(sum(p.grad is not None and p.grad.is_sparse for p in params))
        real_densify(params)
        assert not any(p.grad is not None and p.grad.is_sparse for p in params)

    monkeypatch.setattr(step_module, "densify_gradients", densify)
    sparse = train(config("sparse"))
    assert densified and all(count == 1 for count in densified)
    monkeypatch.setattr(step_module, "SPARSE_EMBEDDING_ROWS", 10**9)
    dense = train(config("dense"))
    assert logged_losses(sparse.run_dir) == pytest.approx(logged_losses(dense.run_dir), abs=1e-5)
    expected = load_file(str(dense.last_checkpoint / "model.safetensors"))
    got = load_file(str(sparse.last_checkpoint / "model.safetensors"))
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, atol=1e-5, rtol=1e-4)

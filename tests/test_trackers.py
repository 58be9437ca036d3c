"""Trackers write real files: a real Aim repository read back with Aim's SDK, metrics.jsonl."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dualenc.plugins.trackers.aim import AimOptions, AimTracker
from dualenc.plugins.trackers.jsonl import JsonlTracker


def test_aim_run_reads_back(tmp_path):
    repo = tmp_path / "aimrepo"
    tracker = AimTracker(AimOptions(repo=str(repo), experiment="test"))
    config = {"train": {"batch_size": 4, "learning_rate": 1e-4}, "plugins": {"loss": "infonce"}}
    tracker.start(tmp_path / "run", config)
    tracker.log({"train/loss": 2.5, "train/lr": 1e-5}, step=1)
    tracker.log({"train/loss": 1.5}, step=2)
    tracker.log({"val/mrr": 0.25, "val/ndcg@10": 0.3}, step=2)
    tracker.finish("finished")

    # a fresh process sees a finished run only after the index is rebuilt
    aim_cli = Path(sys.executable).parent / "aim"
    subprocess.run(
        [aim_cli, "storage", "--repo", str(repo), "reindex", "--yes"], check=True, capture_output=True
    )
    import aim

    runs = list(aim.Repo.from_path(str(repo)).iter_runs())
    assert len(runs) == 1
    run = runs[0]
    assert run.get("hparams") == config
    assert run.get("status") == "finished"
    series = {}
    for metric in run.metrics():
        series[metric.name] = {step: value for step, (value, *_rest) in metric.data.items()}
    assert series["train/loss"] == {1: 2.5, 2: 1.5}
    assert series["val/mrr"] == {2: 0.25}
    assert series["val/ndcg@10"] == {2: pytest.approx(0.3)}
    assert not any(name.startswith("__system") for name in series)


def test_jsonl_appends_one_object_per_step(tmp_path):
    tracker = JsonlTracker()
    tracker.start(tmp_path, {})
    tracker.log({"train/loss": 2.31, "train/lr": 1e-4}, step=10)
    tracker.log({"val/mrr": float("nan")}, step=10)
    tracker.finish("finished")
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows == [{"step": 10, "train/loss": 2.31, "train/lr": 1e-4}, {"step": 10, "val/mrr": "nan"}]

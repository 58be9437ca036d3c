"""Distributed training with real torchrun processes on CPU (gloo)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from fakes import logged_losses, tiny_config
from safetensors.torch import load_file

from dualenc.core import checkpoint
from dualenc.core.configio import dump_yaml

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
HERE = Path(__file__).parent


def config_file(tmp_path, pair_files, **train) -> Path:
    config = tiny_config(tmp_path, pair_files, **train)
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "run.yaml"
    text = dump_yaml(config).replace("dropout: 0.1", "dropout: 0.0")
    path.write_text(text)
    return path


def run(command, **kwargs):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, **kwargs)


def test_two_ranks_of_8_equal_one_rank_of_16_with_mined_negatives(tmp_path, pair_files):
    config = config_file(tmp_path, pair_files)
    single = run([sys.executable, str(HERE / "dist_step.py"), str(config), str(tmp_path / "one")])
    assert single.returncode == 0, single.stderr
    double = run([*TORCHRUN, str(HERE / "dist_step.py"), str(config), str(tmp_path / "two")])
    assert double.returncode == 0, double.stderr
    one = load_file(str(tmp_path / "one" / "step.safetensors"))
    two = load_file(str(tmp_path / "two" / "step.safetensors"))
    # gathered layout: rank 0's positives, rank 1's, then rank 0's negatives, rank 1's
    assert two["positive"].tolist() == list(range(16))
    assert torch.equal(one["candidate_code_key"], two["candidate_code_key"])
    torch.testing.assert_close(two["loss"], one["loss"], atol=1e-5, rtol=1e-5)
    for name in one:
        torch.testing.assert_close(two[name], one[name], atol=1e-5, rtol=1e-4, msg=name)


def test_two_rank_run_stopped_and_resumed_matches_uninterrupted(tmp_path, pair_files):
    whole = config_file(tmp_path / "a", pair_files, max_steps=4, eval_interval=2, save_interval=2)
    done = run([*TORCHRUN, "-m", "dualenc", "train", "--config", str(whole)])
    assert done.returncode == 0, done.stderr
    assert (
        "2 process(es) x batch 8 = effective batch 16; each query sees 15 in-batch negatives" in done.stderr
    )
    expected = logged_losses(tmp_path / "a" / "run")
    assert sorted(expected) == [1, 2, 3, 4]
    rows = [json.loads(x) for x in (tmp_path / "a" / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "val/mrr" in r] == [0, 2, 4]  # one logger, not one per rank

    split = config_file(tmp_path / "b", pair_files, max_steps=4, eval_interval=2, save_interval=2)
    first = run([*TORCHRUN, "-m", "dualenc", "train", "--config", str(split), "--stop-after", "2"])
    assert first.returncode == 0, first.stderr
    last = tmp_path / "b" / "run" / "last"
    second = run([*TORCHRUN, "-m", "dualenc", "train", "--config", str(split), "--resume-from", str(last)])
    assert second.returncode == 0, second.stderr
    assert logged_losses(tmp_path / "b" / "run") == pytest.approx(expected, abs=1e-5)


def test_killing_one_rank_ends_the_others_and_keeps_the_checkpoint(tmp_path, pair_files):
    config = config_file(tmp_path, pair_files, max_steps=100000, eval_interval=100000, save_interval=2)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    launcher = subprocess.Popen(
        [*TORCHRUN, "-m", "dualenc", "train", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    last = tmp_path / "run" / "last"
    deadline = time.time() + 180
    while time.time() < deadline and not (last / checkpoint.TRAINER_JSON).exists():
        time.sleep(0.2)
    assert last.exists(), "no checkpoint was written"
    workers = [
        p for p in psutil.Process(launcher.pid).children(recursive=True) if "dualenc" in " ".join(p.cmdline())
    ]
    assert len(workers) == 2
    workers[-1].send_signal(signal.SIGKILL)
    killed_at = time.time()
    _, stderr = launcher.communicate(timeout=120)
    assert launcher.returncode != 0
    assert time.time() - killed_at < 120
    assert not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers)
    checkpoint.load_encoder(checkpoint.resolve(last))
    assert checkpoint.load_trainer_state(last, None).step >= 2

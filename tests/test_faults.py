"""Damaged checkpoints, failing disks and kills: a named error and exit 2, or an exact resume."""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from fakes import logged_losses, tiny_config
from safetensors.torch import load_file

from dualenc.cli import cli
from dualenc.core import checkpoint
from dualenc.core.configio import dump_yaml
from dualenc.core.loop import train
from dualenc.registry import load_catalog

ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory, pair_files) -> tuple[Path, Path]:
    """(the run's config file, its last/ after 3 steps)."""
    root = tmp_path_factory.mktemp("stopped")
    config = tiny_config(root, pair_files)
    train(config, stop_after=3)
    (root / "run.yaml").write_text(dump_yaml(config))
    return root / "run.yaml", root / "run" / "last"


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


DAMAGES = {
    "truncated": truncate,
    "garbage": lambda path: path.write_bytes(bytes(range(256)) * 20),
    "empty": lambda path: path.write_bytes(b""),
    "{}": lambda path: path.write_text("{}"),
    "missing": lambda path: path.unlink(),
    "negative train_seconds": lambda path: path.write_text(
        json.dumps({**json.loads(path.read_text()), "train_seconds": -5.0})
    ),
}

# (file, damage, message): resume reads every file; export, evaluate and index build the encoder's
CASES = [
    ("model.safetensors", "truncated", "not a readable safetensors file"),
    ("model.safetensors", "garbage", "not a readable safetensors file"),
    ("model.safetensors", "empty", "not a readable safetensors file"),
    ("trainer_state.safetensors", "truncated", "not a readable safetensors file"),
    ("trainer_state.safetensors", "garbage", "not a readable safetensors file"),
    ("trainer_state.safetensors", "missing", "file not found; the checkpoint is incomplete"),
    ("trainer_state.json", "truncated", "not valid JSON"),
    ("trainer_state.json", "{}", "missing key 'step'"),
    (
        "trainer_state.json",
        "negative train_seconds",
        "'train_seconds' must be a finite number >= 0, got -5.0",
    ),
    ("config.yaml", "missing", "not found; a training checkpoint holds the config"),
    ("config.yaml", "garbage", "not valid YAML"),
]


def commands(config_file: Path, damaged: Path, out: Path, val_file: Path) -> dict[str, list[str]]:
    return {
        "train --resume-from": [
            *("train", "--config", str(config_file), "--set", f"output_dir={out}"),
            *("--resume-from", str(damaged)),
        ],
        "export": ["export", str(damaged), "--out", str(out)],
        "evaluate": ["evaluate", "--checkpoint", str(damaged), "--data", str(val_file)],
        "index build": [
            *("index", "build", "--encoder-checkpoint", str(damaged)),
            *("--code-corpus", str(val_file), "--output-dir", str(out)),
        ],
    }


@pytest.mark.parametrize(("name", "damage", "message"), CASES, ids=[f"{n}-{d}" for n, d, _ in CASES])
def test_a_damaged_checkpoint_file_is_named_with_exit_2(
    tmp_path, stopped_run, pair_files, name, damage, message
):
    config_file, last = stopped_run
    damaged = tmp_path / "damaged"
    shutil.copytree(last, damaged)  # copies: last/'s files are hard links shared with its copies
    DAMAGES[damage](damaged / name)
    runs = commands(config_file, damaged, tmp_path / "out", pair_files[1])
    if name != "model.safetensors":  # the other files are read by a resume only
        runs = {"train --resume-from": runs["train --resume-from"]}
    catalog = load_catalog()
    for command, args in runs.items():
        result = CliRunner().invoke(cli, args, obj=catalog)
        assert result.exit_code == 2, (command, result.output)
        assert "Traceback" not in result.output, command
        assert f"error: {damaged / name}: {message}" in result.output, (command, result.output)


FAILING_DISK = textwrap.dedent("""
    import resource, signal, sys
    # a file may grow to sys.argv[1] bytes, as on a nearly full disk; the write then fails
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), int(sys.argv[1])))
    from dualenc.cli import main
    sys.argv = ["dualenc", *sys.argv[2:]]
    main()
""")


@pytest.mark.parametrize(
    ("limit", "failing"), [(50_000, "model.safetensors"), (150_000, "trainer_state.safetensors")]
)
def test_a_failed_save_names_the_file_and_keeps_the_previous_checkpoint(tmp_path, pair_files, limit, failing):
    config = tiny_config(tmp_path, pair_files)
    train(config, stop_after=3)
    config_file, run = tmp_path / "run.yaml", tmp_path / "run"
    config_file.write_text(dump_yaml(config))
    script = tmp_path / "failing_disk.py"
    script.write_text(FAILING_DISK)
    before = {p.name: p.read_bytes() for p in (run / "last").iterdir()}
    done = subprocess.run(
        [sys.executable, str(script), str(limit), "train", "--config", str(config_file)]
        + ["--resume-from", str(run / "last")],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert (
        f"error: {run / 'last' / failing}: could not write the checkpoint at step 6 "
        "(Error while serializing: I/O error: File too large (os error 27)); "
        f"the previous checkpoint {run / 'last'} is unchanged." in done.stderr
    ), done.stderr
    assert {p.name: p.read_bytes() for p in (run / "last").iterdir()} == before
    assert not [p.name for p in run.iterdir() if p.name.startswith(".")]


def test_an_output_dir_that_cannot_be_created_is_named_before_any_work(tmp_path, pair_files):
    (tmp_path / "file").write_text("a file, not a folder")
    config = tiny_config(tmp_path, pair_files)
    config_file = write_config(tmp_path, config)
    result = CliRunner().invoke(
        cli, ["train", "--config", str(config_file), "--set", f"output_dir={tmp_path}/file/run"]
    )
    assert result.exit_code == 2, result.output
    message = f"error: {tmp_path}/file/run: cannot create the output folder ({tmp_path}/file is a file)"
    assert message in result.output
    assert not (tmp_path / "cache").exists()  # refused before the data was read


def write_config(tmp_path: Path, config) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "run.yaml"
    path.write_text(dump_yaml(config))
    return path


# --- SIGKILL at random moments, resumed each time -----------------------------------------

KILLS, STEPS = 5, 12
SAVING = (".last.tmp-", ".step-", ".encoder-best-", ".last.old")


def start(config_file: Path, run: Path) -> subprocess.Popen:
    args = [sys.executable, "-m", "dualenc", "train", "--config", str(config_file)]
    if checkpoint.resolve(run / "last").exists():
        args += ["--resume-from", str(run / "last")]
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV)


def last_step(run: Path) -> int | None:
    last = checkpoint.resolve(run / "last")
    return checkpoint.load_trainer_state(last, None).step if last.exists() else None


def logged_step(run: Path) -> int:
    """The latest step with a train/loss row in the run's metrics.jsonl (0 when none)."""
    try:
        lines = (run / "metrics.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return 0
    steps = [json.loads(line)["step"] for line in lines if line.endswith("}") and "train/loss" in line]
    return max(steps, default=0)


def kill_at(process: subprocess.Popen, run: Path, step: int, in_save: bool, delay: float) -> None:
    """SIGKILL ``process`` once it logged ``step``: ``delay`` s later, or (``in_save``) ``delay``
    s after the next save's staging folder shows up."""
    while process.poll() is None and logged_step(run) < step:
        time.sleep(0.002)
    while in_save and process.poll() is None:
        if any(entry.name.startswith(SAVING) for entry in os.scandir(run)):
            break
        time.sleep(0.0005)
    time.sleep(delay)
    process.send_signal(signal.SIGKILL)


def test_runs_killed_at_random_moments_and_resumed_equal_an_uninterrupted_one(tmp_path, pair_files):
    settings = {"max_steps": STEPS, "save_interval": 2, "eval_interval": 2, "log_interval": 1}
    whole = write_config(tmp_path / "a", tiny_config(tmp_path / "a", pair_files, **settings))
    assert start(whole, tmp_path / "a" / "run").wait(timeout=120) == 0
    config_file = write_config(tmp_path / "b", tiny_config(tmp_path / "b", pair_files, **settings))
    run = tmp_path / "b" / "run"
    rng, kills, cut_saves = random.Random(18), [], 0
    for attempt in range(KILLS):
        # a step the run has yet to reach (the rows past its checkpoint go at its start)
        first = min((last_step(run) or 0) + 1, STEPS)
        target = rng.randint(first, min(first + 2, STEPS))
        process = start(config_file, run)
        in_save = attempt % 2 == 1
        while logged_step(run) >= target and process.poll() is None:  # until the rows are rewound
            time.sleep(0.002)
        kill_at(process, run, target, in_save, rng.uniform(0, 0.02 if in_save else 0.06))
        kills.append(process.wait(timeout=120))
        left = sorted(p.name for p in run.iterdir() if p.name.startswith(".")) if run.is_dir() else []
        print(f"kill {attempt}: exit {kills[-1]}, left {left}, last at step", last_step(run))
        cut_saves += any(name.startswith(SAVING) for name in left)
    assert kills.count(-signal.SIGKILL) >= 3, kills  # most attempts were cut short
    assert cut_saves >= 1  # and at least one inside a save
    final = start(config_file, run)
    _, stderr = final.communicate(timeout=120)
    assert final.returncode == 0, stderr.decode()

    expected, got = tmp_path / "a" / "run", run
    assert logged_losses(got) == logged_losses(expected)
    train_rows = [line for line in (got / "metrics.jsonl").read_text().splitlines() if "train/loss" in line]
    assert len(train_rows) == settings["max_steps"]  # one row per step, none replayed twice
    for name in ("last", "encoder-best-mrr", "step-0000010", "step-0000012"):
        for file in ("model.safetensors", "trainer_state.safetensors"):
            want, have = load_file(str(expected / name / file)), load_file(str(got / name / file))
            assert want.keys() == have.keys(), (name, file)
            for key in want:
                assert torch.equal(want[key], have[key]), (name, file, key)
    assert sorted(p.name for p in got.iterdir()) == sorted(p.name for p in expected.iterdir())
    assert not [p.name for p in got.iterdir() if p.name.startswith(".")]

"""``dualenc mine``: the in-training miner's round, written as training rows, and fed back."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from fakes import logged_losses, tiny_config, write_distribution, write_jsonl

from dualenc.core.checkpoint import checkpoint_hash
from dualenc.core.configio import dump_yaml, load_config, unstructure
from dualenc.core.data.keys import normalised_code_key
from dualenc.core.data.records import read_pairs

MINER = {
    "num_negatives": 3,
    "range_min": 1,
    "range_max": 12,
    "relative_margin": 0.02,
    "refresh_every": None,  # one round, at step 0
    "seed": 7,
}


def run_cli(*args) -> object:
    from dualenc.cli import cli

    return CliRunner().invoke(cli, [str(arg) for arg in args])


def assert_user_error(result, message: str) -> None:
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)  # not a traceback
    assert re.search(message, result.output), result.output


def write_config(path: Path, base, miner: str = "faiss", options: dict | None = None, **data) -> Path:
    """``base`` with a miner (and data keys) changed, as a YAML file."""
    plain = unstructure(base)
    plain["plugins"]["miner"] = miner
    plain["miner"] = MINER if options is None else options
    plain["data"].update(data)
    plain["output_dir"] = str(path.parent / "run")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dump_yaml(load_config(data=plain)))
    return path


@pytest.fixture(scope="module")
def start(tmp_path_factory, pair_files) -> tuple[object, Path]:
    """(a tiny config, the checkpoint of its 2-step run): what both sides start from."""
    root = tmp_path_factory.mktemp("start")
    config = tiny_config(root, pair_files, max_steps=2, eval_interval=100, save_interval=100)
    config_file = root / "start.yaml"
    config_file.write_text(dump_yaml(config))
    result = run_cli("train", "--config", config_file)
    assert result.exit_code == 0, result.output
    return config, root / "run" / "last"


@pytest.fixture(scope="module")
def in_training(tmp_path_factory, start) -> Path:
    """The run dir of 4 steps from ``start`` with the faiss miner: one round, at step 0."""
    config, checkpoint = start
    root = tmp_path_factory.mktemp("a")
    base = load_config(
        data={**unstructure(config), "train": {**unstructure(config)["train"], "max_steps": 4}}
    )
    config_file = write_config(root / "a.yaml", base)
    result = run_cli("train", "--config", config_file, "--resume-from", checkpoint)
    assert result.exit_code == 0, result.output
    return root / "run"


def mined_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_mine_writes_the_in_training_round(tmp_path, start, in_training, pair_files):
    config, checkpoint = start
    config_file = write_config(tmp_path / "b.yaml", config)
    out = tmp_path / "hard" / "mined.jsonl"
    result = run_cli("mine", "--config", config_file, "--checkpoint", checkpoint, "--out", out)
    assert result.exit_code == 0, result.output

    round_a = json.loads((in_training / "mining" / "round-0000000.json").read_text())
    manifest = json.loads((tmp_path / "hard" / "mined.jsonl.manifest.json").read_text())
    # the same pair-id negatives as training's own round, from the same weights and seed
    assert manifest["round"]["negatives_sha256"] == round_a["negatives_sha256"]
    assert manifest["round"]["encoder_sha256"] == round_a["encoder_sha256"]
    assert manifest["round"]["round_seed"] == round_a["round_seed"] == [7, 0]
    assert manifest["round"]["counts"] == round_a["counts"]

    train_file = pair_files[0]
    pairs = read_pairs(train_file)
    rows = mined_rows(out)
    assert [(r["query"], r["code"]) for r in rows] == list(zip(pairs.queries, pairs.codes, strict=True))
    negatives = sum(len(r["neg"]) for r in rows)
    short = sum(len(r["neg"]) < 3 for r in rows)
    assert negatives == round_a["counts"]["kept"] and short == round_a["counts"]["short"]
    for row in rows:  # never the positive again
        assert all(normalised_code_key(neg) != normalised_code_key(row["code"]) for neg in row["neg"])

    assert manifest["model"]["checkpoint"] == str(checkpoint)
    assert manifest["model"]["checkpoint_sha256"] == checkpoint_hash(checkpoint)
    assert manifest["miner"]["name"] == "faiss"
    assert manifest["miner"]["options"]["relative_margin"] == 0.02
    assert manifest["miner"]["options"]["sampling"] == "random"
    assert manifest["seed"] == 7 and manifest["step"] == 0
    assert manifest["data"]["files"] == [
        {
            "path": str(train_file),
            "weight": 1.0,
            "sha256": "sha256:" + hashlib.sha256(train_file.read_bytes()).hexdigest(),
            "pairs": 96,
        }
    ]
    assert manifest["output"]["sha256"] == "sha256:" + hashlib.sha256(out.read_bytes()).hexdigest()
    assert manifest["counts"] == {
        "rows": 96,
        "negatives": negatives,
        "short": short,
        "num_negatives": 3,
        "provided": 0,
    }
    assert manifest["command"] == (
        f"dualenc mine --config {config_file} --checkpoint {checkpoint} --out {out} --corpus-field code"
    )
    assert manifest["dualenc_version"]
    assert f"{out}: 96 rows, {negatives} negatives" in result.output

    # another seed, another round
    other = tmp_path / "other.jsonl"
    run = run_cli("mine", "--config", config_file, "--checkpoint", checkpoint, "--out", other, "--seed", 8)
    assert run.exit_code == 0, run.output
    assert json.loads(other.with_name("other.jsonl.manifest.json").read_text())["seed"] == 8
    assert mined_rows(other) != rows


def test_top_sampling_takes_the_best_ranked(tmp_path, start):
    """``top`` with range_min 1: ranks 1, 2, 3 of an exact search by the checkpoint's vectors,
    counted among the codes that are not the positive again (same code or same query)."""
    from dualenc.core.checkpoint import load_encoder
    from dualenc.core.data.pairset import load_pair_set
    from dualenc.core.encode import encode_token_ids

    config, checkpoint = start
    options = {**MINER, "sampling": "top", "relative_margin": None}
    config_file = write_config(tmp_path / "b.yaml", config, options=options)
    out = tmp_path / "mined.jsonl"
    result = run_cli("mine", "--config", config_file, "--checkpoint", checkpoint, "--out", out)
    assert result.exit_code == 0, result.output

    encoder, _, _ = load_encoder(checkpoint)
    pairs = load_pair_set(config.data.train_file, config.data, encoder)
    queries = encode_token_ids(encoder, list(pairs.token_ids("query")), "query")
    codes = encode_token_ids(encoder, list(pairs.token_ids("code")), "code")
    scores = queries @ codes.T
    expected = []
    for row in range(len(pairs)):
        same = (pairs.code_key == pairs.code_key[row]) | (pairs.query_key == pairs.query_key[row])
        ranked = [j for j in np.argsort(-scores[row], kind="stable") if not same[j]]
        expected.append([pairs.codes[j] for j in ranked[1:4]])
    assert [row["neg"] for row in mined_rows(out)] == expected


def test_negatives_from_another_corpus(tmp_path, start, pair_files):
    config, checkpoint = start
    pairs = read_pairs(pair_files[0])
    # other codes, a clone of the first pair's positive (a comment added) and a copy of the second's
    others = [f"def other_{i}(x):\n    return x + {i}\n" for i in range(30)]
    clone = pairs.codes[0].replace("\n", "  # same\n", 1)
    corpus = write_jsonl(tmp_path / "codes.jsonl", [{"code": c} for c in [*others, clone, pairs.codes[1]]])
    options = {**MINER, "range_min": 0, "range_max": 32, "num_negatives": 32, "relative_margin": None}
    config_file = write_config(tmp_path / "b.yaml", config, options=options)
    out = tmp_path / "mined.jsonl"
    result = run_cli(
        "mine", "--config", config_file, "--checkpoint", checkpoint, "--out", out, "--corpus", corpus
    )
    assert result.exit_code == 0, result.output
    rows = mined_rows(out)
    allowed = set(others) | {clone, pairs.codes[1]}
    assert all(set(row["neg"]) <= allowed for row in rows)
    # a window as large as the corpus: every code but the positive's clones is returned
    assert set(rows[0]["neg"]) == set(others) | {pairs.codes[1]}
    assert set(rows[1]["neg"]) == set(others) | {clone}
    assert set(rows[2]["neg"]) == allowed
    manifest = json.loads(out.with_name("mined.jsonl.manifest.json").read_text())
    assert manifest["corpus"]["codes"] == 32 and manifest["corpus"]["file"] == str(corpus)
    assert manifest["round"]["num_candidates"] == 32


@pytest.mark.parametrize("miner", ["random", "bm25"])
def test_other_miners_mine_too(tmp_path, start, miner):
    config, checkpoint = start
    options = {"num_negatives": 2, "seed": 1}
    config_file = write_config(tmp_path / "b.yaml", config, miner=miner, options=options)
    out = tmp_path / "mined.jsonl"
    result = run_cli("mine", "--config", config_file, "--checkpoint", checkpoint, "--out", out)
    assert result.exit_code == 0, result.output
    rows = mined_rows(out)
    assert len(rows) == 96 and all(len(row["neg"]) <= 2 for row in rows)
    assert json.loads(out.with_name("mined.jsonl.manifest.json").read_text())["miner"]["name"] == miner


def test_user_errors_exit_2(tmp_path, start):
    config, checkpoint = start
    config_file = write_config(tmp_path / "b.yaml", config)
    out = tmp_path / "mined.jsonl"
    assert_user_error(
        run_cli("mine", "--config", config_file, "--checkpoint", tmp_path / "nowhere", "--out", out),
        r"nowhere: checkpoint directory not found",
    )
    none = write_config(tmp_path / "none.yaml", config, miner="none", options={})
    assert_user_error(
        run_cli("mine", "--config", none, "--checkpoint", checkpoint, "--out", out),
        r"plugins.miner: the config selects no miner \('none'\); choose one with --plugin miner=faiss",
    )
    bad = tmp_path / "codes.jsonl"
    bad.write_text('{"code": "def f(): pass"}\n{"code": \n')
    assert_user_error(
        run_cli("mine", "--config", config_file, "--checkpoint", checkpoint, "--out", out, "--corpus", bad),
        r"codes.jsonl:2: not valid JSON",
    )
    bad.write_text('{"code": "def f(): pass"}\n{"text": "x"}\n')
    assert_user_error(
        run_cli("mine", "--config", config_file, "--checkpoint", checkpoint, "--out", out, "--corpus", bad),
        r"codes.jsonl:2: field 'code' missing",
    )
    assert_user_error(
        run_cli(
            "mine",
            "--config",
            config_file,
            "--checkpoint",
            checkpoint,
            "--out",
            out,
            "--set",
            "miner.sampling=best",
        ),
        r"miner.sampling: must be one of 'random', 'top' \(got 'best'\)",
    )
    assert_user_error(
        run_cli("mine", "--config", config_file, "--checkpoint", checkpoint, "--out", tmp_path),
        r"is a directory",
    )
    missing = tmp_path / "missing.jsonl"
    assert_user_error(
        run_cli(
            *("mine", "--config", config_file, "--checkpoint", checkpoint, "--out", out),
            *("--set", f"data.train_file={missing}"),
        ),
        rf"data.train_file: {missing}: file not found",
    )
    assert not out.exists()


def test_fed_back_with_miner_none_trains_as_the_in_training_round(tmp_path, start, in_training):
    """The issue's round trip: ``mine`` output trained with miner none gives the losses the
    in-training miner gives, step for step (one round, at step 0)."""
    config, checkpoint = start
    out = tmp_path / "mined.jsonl"
    mined = run_cli(
        "mine",
        "--config",
        write_config(tmp_path / "m.yaml", config),
        "--checkpoint",
        checkpoint,
        "--out",
        out,
    )
    assert mined.exit_code == 0, mined.output
    base = load_config(
        data={**unstructure(config), "train": {**unstructure(config)["train"], "max_steps": 4}}
    )
    config_b = write_config(tmp_path / "b" / "b.yaml", base, miner="none", options={}, train_file=str(out))
    result = run_cli("train", "--config", config_b, "--resume-from", checkpoint)
    assert result.exit_code == 0, result.output
    expected = logged_losses(in_training)
    assert sorted(expected) == [1, 2, 3, 4]
    assert logged_losses(tmp_path / "b" / "run") == expected

    # and the negatives count: without them the same start trains to other losses
    config_c = write_config(tmp_path / "c" / "c.yaml", base, miner="none", options={})
    assert run_cli("train", "--config", config_c, "--resume-from", checkpoint).exit_code == 0
    without = logged_losses(tmp_path / "c" / "run")
    assert all(abs(without[step] - expected[step]) > 1e-4 for step in expected)


def test_the_console_script_mines(tmp_path, start):
    """``python -m dualenc mine`` as a user runs it: exit 0 and the summary line."""
    config, checkpoint = start
    config_file = write_config(tmp_path / "b.yaml", config, options={**MINER, "sampling": "top"})
    out = tmp_path / "mined.jsonl"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "dualenc",
            "mine",
            "--config",
            config_file,
            "--checkpoint",
            checkpoint,
            "--out",
            out,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "96 rows" in done.stdout
    manifest = json.loads(out.with_name("mined.jsonl.manifest.json").read_text())
    assert manifest["command"].startswith(f"dualenc mine --config {config_file} --checkpoint")
    assert np.all([len(row["neg"]) <= 3 for row in mined_rows(out)])


def test_without_a_checkpoint_it_mines_with_the_encoder_a_new_run_starts_from(tmp_path, pair_files):
    """No --checkpoint: the config's encoder built (seeded, vocabulary learnt) as a new run
    builds it, so the round is a fresh run's first one."""
    config = tiny_config(tmp_path, pair_files, max_steps=1, eval_interval=100, save_interval=100)
    config_file = write_config(tmp_path / "fresh.yaml", config)
    assert run_cli("train", "--config", config_file).exit_code == 0
    fresh_round = json.loads((tmp_path / "run" / "mining" / "round-0000000.json").read_text())
    out = tmp_path / "mined.jsonl"
    result = run_cli("mine", "--config", config_file, "--out", out)
    assert result.exit_code == 0, result.output
    manifest = json.loads(out.with_name("mined.jsonl.manifest.json").read_text())
    assert manifest["round"]["encoder_sha256"] == fresh_round["encoder_sha256"]
    assert manifest["round"]["negatives_sha256"] == fresh_round["negatives_sha256"]
    assert manifest["model"]["checkpoint"] is None and manifest["model"]["checkpoint_sha256"] is None


def test_negatives_a_row_provided_follow_the_mined_ones(tmp_path, start, pair_files):
    config, checkpoint = start
    pairs = read_pairs(pair_files[0])
    rows = [{"query": q, "code": c} for q, c in zip(pairs.queries[:40], pairs.codes[:40], strict=True)]
    rows[0]["neg"] = ["def provided():\n    pass\n"]
    rows[1]["neg"] = [pairs.codes[5]]  # another pair's code
    train_file = write_jsonl(tmp_path / "with_neg.jsonl", rows)
    options = {"num_negatives": 2, "seed": 1}
    config_file = write_config(
        tmp_path / "b.yaml", config, miner="random", options=options, train_file=str(train_file)
    )
    out = tmp_path / "mined.jsonl"
    result = run_cli("mine", "--config", config_file, "--checkpoint", checkpoint, "--out", out)
    assert result.exit_code == 0, result.output
    mined = mined_rows(out)
    assert mined[0]["neg"][2:] == ["def provided():\n    pass\n"] and mined[1]["neg"][2:] == [pairs.codes[5]]
    assert all(len(row["neg"]) == 2 for row in mined[2:])
    manifest = json.loads(out.with_name("mined.jsonl.manifest.json").read_text())
    assert manifest["counts"]["provided"] == 2 and manifest["counts"]["negatives"] == 80


NEXT_PAIR_MINER = """
import numpy as np
from dualenc import hookimpl


class NextPair:
    num_negatives = 1

    def __init__(self, options=None):
        self._negatives = None

    def due(self, step):
        return self._negatives is None

    def mine(self, encoder, corpus, step, run_dir):
        self._negatives = ((np.arange(len(corpus)) + 1) % len(corpus))[:, None]
        return {"mining/seconds": 0.0}

    def negatives(self, pair_ids):
        return self._negatives[pair_ids]

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


@hookimpl
def register_miners(register):
    register("next_pair", NextPair, description="the next pair's code")
"""


def test_a_third_party_miner_mines_through_the_miner_protocol(tmp_path, start, monkeypatch):
    monkeypatch.syspath_prepend(
        str(write_distribution(tmp_path / "site", "nextpair", "0.1", {"next_pair": NEXT_PAIR_MINER}))
    )
    config, checkpoint = start
    config_file = write_config(tmp_path / "b.yaml", config, miner="next_pair", options={})
    out = tmp_path / "mined.jsonl"
    result = run_cli("mine", "--config", config_file, "--checkpoint", checkpoint, "--out", out)
    assert result.exit_code == 0, result.output
    rows = mined_rows(out)
    assert [row["neg"] for row in rows] == [[rows[(i + 1) % 96]["code"]] for i in range(96)]
    manifest = json.loads(out.with_name("mined.jsonl.manifest.json").read_text())
    assert manifest["miner"] == {"name": "next_pair", "options": None} and manifest["seed"] is None
    corpus = write_jsonl(tmp_path / "codes.jsonl", [{"code": "def f():\n    pass\n"}])
    assert_user_error(
        run_cli(
            "mine", "--config", config_file, "--checkpoint", checkpoint, "--out", out, "--corpus", corpus
        ),
        r"--corpus: the 'next_pair' miner cannot draw negatives from another corpus",
    )


def test_dualenc_mine_from_python_writes_what_the_command_writes(tmp_path, start):
    """``dualenc.mine`` is the command's own call: from a mapping, with overrides and a
    plugin selection, the same row bytes and counts as ``dualenc mine`` from a YAML file."""
    import dualenc

    config, checkpoint = start
    config_file = write_config(tmp_path / "b.yaml", config, miner="random", options={"num_negatives": 2})
    cli_out = tmp_path / "cli.jsonl"
    result = run_cli(
        *("mine", "--config", config_file, "--checkpoint", checkpoint, "--out", cli_out),
        *("--plugin", "miner=faiss", "--set", "miner.sampling=top", "--seed", 3),
    )
    assert result.exit_code == 0, result.output

    mapping = unstructure(load_config(config_file))
    mined = dualenc.mine(
        mapping,
        out=str(tmp_path / "py" / "py.jsonl"),
        checkpoint=str(checkpoint),
        seed=3,
        overrides={"miner.sampling": "top"},
        plugins={"miner": "faiss"},
    )
    assert isinstance(mined, dualenc.MineResult)
    assert mined.out.read_bytes() == cli_out.read_bytes()
    manifest = json.loads(mined.manifest.read_text())
    cli_manifest = json.loads(cli_out.with_name("cli.jsonl.manifest.json").read_text())
    assert manifest["counts"] == cli_manifest["counts"]
    timed = {"metrics"}  # seconds differ from one round to the next
    assert {k: v for k, v in manifest["round"].items() if k not in timed} == {
        k: v for k, v in cli_manifest["round"].items() if k not in timed
    }
    assert manifest["miner"]["options"]["sampling"] == "top" and manifest["seed"] == 3
    assert manifest["command"] is None
    assert (mined.rows, mined.negatives, mined.short, mined.num_negatives, mined.provided) == (
        96,
        manifest["counts"]["negatives"],
        manifest["counts"]["short"],
        2,
        0,
    )
    assert f"{cli_out}: 96 rows, {mined.negatives} negatives ({mined.short} rows short of 2)" in result.output

    # errors raise, as the command's do (which it prints as exit 2)
    with pytest.raises(dualenc.DualencError, match=r"plugins.miner: the config selects no miner"):
        dualenc.mine(
            mapping, out=tmp_path / "none.jsonl", plugins={"miner": "none"}, overrides={"miner": None}
        )
    with pytest.raises(dualenc.ConfigError, match=r"miner.sampling"):
        dualenc.mine(mapping, out=tmp_path / "bad.jsonl", overrides={"miner.sampling": "best"})
    assert not (tmp_path / "none.jsonl").exists() and not (tmp_path / "bad.jsonl").exists()

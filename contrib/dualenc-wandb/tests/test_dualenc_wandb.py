"""dualenc-wandb as an installed third-party package: a real training run tracked offline,
read back from the ``.wandb`` file with wandb's own protobuf classes.

wandb 0.31 has no public reader for that file, so ``read_chunks`` below decodes its framing:
a 7-byte header (``:W&B``, magic 0xBEE1 little-endian, version 0), then LevelDB-log blocks of
32 KiB counted from the start of the file. Each chunk has a 7-byte header: crc32 (zlib) of the
type byte and the payload, payload length, type (FULL=1, FIRST=2, MIDDLE=3, LAST=4); a block
with fewer than 7 bytes left is padded. Each reassembled record is one
``wandb.proto.wandb_internal_pb2.Record``. (Checked against files wandb-core wrote here,
including records that span blocks: see the last test.)
"""

import importlib.metadata as md
import json
import logging
import math
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from fakes import write_pairs

try:
    md.distribution("dualenc-wandb")
except md.PackageNotFoundError:
    pytest.skip(
        "dualenc-wandb is not installed: pip install -e contrib/dualenc-wandb (make test does)",
        allow_module_level=True,
    )

import wandb  # noqa: E402
from dualenc_wandb.plugin import WandbOptions, WandbTracker, resolve_mode  # noqa: E402
from wandb.proto.wandb_internal_pb2 import Record  # noqa: E402

from dualenc import ConfigError, load_catalog, load_config  # noqa: E402
from dualenc.core.configio import unstructure  # noqa: E402
from dualenc.core.loop import train  # noqa: E402

FILE_HEADER = struct.Struct("<4sHB")  # ident, magic, version
CHUNK_HEADER = struct.Struct("<IHB")  # crc32, payload length, chunk type
BLOCK_SIZE = 32 * 1024
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4
SRC = Path(__file__).resolve().parents[3] / "src" / "dualenc"


def read_chunks(path: Path):
    """Yield (chunk type, payload) of every chunk, checking each checksum."""
    data = path.read_bytes()
    assert FILE_HEADER.unpack_from(data) == (b":W&B", 0xBEE1, 0)
    position = FILE_HEADER.size
    while position < len(data):
        room = BLOCK_SIZE - position % BLOCK_SIZE
        if room < CHUNK_HEADER.size:
            assert data[position : position + room] == bytes(min(room, len(data) - position))
            position += room
            continue
        checksum, length, kind = CHUNK_HEADER.unpack_from(data, position)
        start = position + CHUNK_HEADER.size
        payload = data[start : start + length]
        assert len(payload) == length, f"truncated chunk at byte {position}"
        assert zlib.crc32(bytes([kind]) + payload) == checksum, f"bad checksum at byte {position}"
        yield kind, payload
        position = start + length


def read_records(path: Path) -> list[Record]:
    records, pieces = [], []
    for kind, payload in read_chunks(path):
        assert kind in (FULL, FIRST, MIDDLE, LAST)
        assert bool(pieces) == (kind in (MIDDLE, LAST)), "a record split out of order"
        pieces.append(payload)
        if kind in (FULL, LAST):
            record = Record()
            record.ParseFromString(b"".join(pieces))
            records.append(record)
            pieces = []
    assert not pieces, "the file ends inside a record"
    return records


def item_value(item):
    kind = item.WhichOneof("value")
    if kind is None:
        return json.loads(item.value_json)
    if kind == "json":
        return json.loads(item.json)
    return None if kind == "none" else getattr(item, kind)


def item_key(item) -> str:
    return item.key or "/".join(item.nested_key)


def history_by_step(records) -> dict[int, dict]:
    rows = {}
    for record in records:
        if record.WhichOneof("record_type") == "history":
            row = {item_key(item): item_value(item) for item in record.history.item}
            rows[row["_step"]] = row
    return rows


def logged_config(records) -> dict:
    config = {}
    for record in records:
        kind = record.WhichOneof("record_type")
        updates = (
            record.run.config.update if kind == "run" else record.config.update if kind == "config" else []
        )
        config.update({item_key(item): json.loads(item.value_json) for item in updates})
    config.pop("_wandb", None)  # wandb's own bookkeeping
    return config


def summary(records) -> dict:
    values = {}
    for record in records:
        if record.WhichOneof("record_type") == "summary":
            values.update({item_key(item): json.loads(item.value_json) for item in record.summary.update})
    return values


def offline_wandb_file(run_dir: Path) -> Path:
    """The run's ``.wandb`` file, complete.

    wandb-core buffers the file in 32 KiB blocks and writes the rest when the run's stream
    closes, which ``run.finish()`` does not wait for; the end of the process does (through
    ``wandb.teardown``), so the test does what the end of ``dualenc train`` does.
    """
    wandb.teardown()
    (path,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    return path


@pytest.fixture
def offline_wandb(tmp_path, monkeypatch):
    """wandb offline and silent, its config and caches in the test's directory: no network."""
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for variable, folder in [
        ("WANDB_DIR", "wandb-dir"),
        ("WANDB_CONFIG_DIR", "wandb-config"),
        ("WANDB_CACHE_DIR", "wandb-cache"),
        ("WANDB_DATA_DIR", "wandb-data"),
    ]:
        (tmp_path / folder).mkdir()
        monkeypatch.setenv(variable, str(tmp_path / folder))


def jsonl_by_step(run_dir: Path) -> dict[int, dict]:
    """metrics.jsonl with the rows of one step merged, as wandb merges them."""
    merged: dict[int, dict] = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        merged.setdefault(row.pop("step"), {}).update(row)
    return merged


def test_the_tracker_comes_from_its_own_distribution():
    component = load_catalog().get("tracker", "wandb")
    assert (component.distribution, component.version) == ("dualenc-wandb", "0.1.0")
    assert component.options is WandbOptions


def test_nothing_in_dualenc_names_the_plugin():
    named = [
        p for p in SRC.rglob("*.py") if "dualenc_wandb" in p.read_text() or "dualenc-wandb" in p.read_text()
    ]
    assert named == []


def test_auto_mode_is_offline_without_an_api_key():
    assert resolve_mode("auto", {}) == "offline"
    assert resolve_mode("auto", {"WANDB_API_KEY": "k"}) == "online"
    assert resolve_mode("auto", {"WANDB_API_KEY": "k", "WANDB_MODE": "offline"}) == "offline"
    assert resolve_mode("auto", {"WANDB_API_KEY": "k", "WANDB_MODE": "disabled"}) == "disabled"
    assert resolve_mode("online", {}) == "online"


def test_options_come_from_the_trackers_block_with_key_path_errors():
    data = {"plugins": {"trackers": ["wandb"]}, "trackers": {"wandb": {"tags": ["a", "b"], "entity": "me"}}}
    options = load_config(data=data).trackers["wandb"]
    assert options == WandbOptions(entity="me", tags=("a", "b"))
    data["trackers"]["wandb"] = {"mode": "sometimes", "tags": "a"}
    with pytest.raises(ConfigError) as info:
        load_config(data=data)
    assert sorted(info.value.problems) == [
        "<mapping>: trackers.wandb.mode: must be one of 'auto', 'offline', 'online', 'disabled' "
        "(got 'sometimes')",
        "<mapping>: trackers.wandb.tags: expected a list, got str 'a'",
    ]


def test_a_training_run_is_tracked_offline_in_its_output_dir(tmp_path, offline_wandb, monkeypatch, caplog):
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    config = load_config(
        data={
            "plugins": {"encoder": "transformer", "trackers": ["wandb"]},
            "encoder": {"vocab_size": 300, "d_model": 32, "n_layers": 1, "n_heads": 2, "max_seq_len": 48},
            "data": {
                "train_file": str(write_pairs(tmp_path / "train.jsonl", 64, 0)),
                "val_file": str(write_pairs(tmp_path / "val.jsonl", 16, 1)),
                "cache_dir": str(tmp_path / "cache"),
            },
            "train": {
                "batch_size": 8,
                "max_steps": 4,
                "warmup_steps": 1,
                "eval_interval": 2,
                "save_interval": 4,
                "log_interval": 1,
                "precision": "fp32",
            },
            "trackers": {"wandb": {"project": "dualenc-test", "tags": ["ci"], "name": "tiny"}},
            "output_dir": str(tmp_path / "run"),
        }
    )
    caplog.set_level(logging.INFO, logger="dualenc_wandb")
    assert train(config).status == "finished"

    run_dir = tmp_path / "run"
    wandb_file = offline_wandb_file(run_dir)
    records = read_records(wandb_file)
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert (run.project, run.display_name, list(run.tags)) == ("dualenc-test", "tiny", ["ci"])
    assert logged_config(records) == json.loads(json.dumps(unstructure(config)))

    expected = jsonl_by_step(run_dir)
    assert sorted(expected) == [0, 1, 2, 3, 4]  # step 0: the evaluation before training
    history = history_by_step(records)
    assert sorted(history) == sorted(expected)
    for step, metrics in expected.items():
        assert {"train/loss", "val/mrr"} & set(metrics)
        for name, value in metrics.items():
            got = history[step][name]
            if isinstance(value, str):  # metrics.jsonl writes non-finite values as text
                assert math.isnan(got) if value == "nan" else got == float(value)
            else:
                assert got == pytest.approx(value, rel=1e-6), (step, name)

    assert summary(records)["dualenc/status"] == "finished"
    (exit_record,) = [r.exit for r in records if r.WhichOneof("record_type") == "exit"]
    assert exit_record.exit_code == 0
    sync_dir = wandb_file.parent
    assert f"saved in offline run {sync_dir}; upload it with: wandb sync {sync_dir}" in caplog.text
    # wandb's own uploader recognises the run (without uploading: no key, no network)
    wandb_cli = Path(sys.executable).parent / "wandb"
    dry_run = subprocess.run([wandb_cli, "sync", "--dry-run", sync_dir], capture_output=True, text=True)
    assert "Would sync 1 run(s)" in dry_run.stdout + dry_run.stderr


def test_records_that_span_blocks_read_back(tmp_path, offline_wandb):
    tracker = WandbTracker(WandbOptions(mode="offline"))
    note = "x" * (3 * BLOCK_SIZE)  # one record over four blocks: FIRST, MIDDLE, MIDDLE, LAST
    tracker.start(tmp_path, {"note": note})
    for step in range(1, 301):
        tracker.log({"train/loss": 1 / step}, step=step)
    tracker.finish("interrupted")

    wandb_file = offline_wandb_file(tmp_path)
    assert {FIRST, MIDDLE, LAST} <= {kind for kind, _ in read_chunks(wandb_file)}
    records = read_records(wandb_file)
    assert logged_config(records) == {"note": note}
    history = history_by_step(records)
    assert sorted(history) == list(range(1, 301))
    assert all(history[step]["train/loss"] == 1 / step for step in history)
    assert summary(records)["dualenc/status"] == "interrupted"

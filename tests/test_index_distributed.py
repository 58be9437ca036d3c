"""Index builds shared by torchrun ranks (real gloo processes), and builds that resume after a kill."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import faiss
import numpy as np
import pytest
from fakes import TinyEncoder, write_distribution, write_jsonl, write_pairs
from fakes import build_index as build

from dualenc.core.checkpoint import save_encoder
from dualenc.core.index.shards import WORK_SUFFIX
from dualenc.core.io import iter_jsonl

HERE = Path(__file__).parent
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
INDEX_FILES = {"index.faiss", "meta.sqlite", "manifest.json", "lexical.npz", "lexical_vocab.json"}

# TinyEncoder as an installed plugin, for the dualenc processes: it logs the size of every
# batch of codes it encodes to $ENCODE_LOG, and sleeps $ENCODE_SLEEP seconds a batch
COUNTING_PLUGIN = """
import os
import time

from dualenc import hookimpl
from fakes import TinyEncoder


class CountingEncoder(TinyEncoder):
    def forward(self, input_ids, attention_mask, side):
        if side == "code":
            with open(os.environ["ENCODE_LOG"], "a") as log:
                log.write(f"{len(input_ids)}\\n")
            time.sleep(float(os.environ.get("ENCODE_SLEEP", "0")))
        return super().forward(input_ids, attention_mask, side)


@hookimpl
def register_encoders(register):
    register("counting", lambda options: CountingEncoder(), description="test encoder")
"""


@pytest.fixture
def encoder() -> TinyEncoder:
    return TinyEncoder()


@pytest.fixture
def checkpoint(tmp_path, encoder) -> Path:
    directory = tmp_path / "encoder"
    save_encoder(encoder, "counting", None, directory)
    return directory


@pytest.fixture
def env(tmp_path) -> dict[str, str]:
    """The environment of the dualenc processes: the counting plugin installed, one thread each."""
    site = write_distribution(
        tmp_path / "site", "dualenc-counting", "0.1", {"counting_plugin": COUNTING_PLUGIN}
    )
    path = os.pathsep.join(filter(None, [str(site), str(HERE), os.environ.get("PYTHONPATH")]))
    log = tmp_path / "encoded.log"
    return {
        **os.environ,
        "PYTHONPATH": path,
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
        "ENCODE_LOG": str(log),
    }


def encoded_codes(env: dict[str, str]) -> int:
    """Codes the dualenc processes have encoded so far (every rank's), then forgotten."""
    log = Path(env["ENCODE_LOG"])
    count = sum(int(line) for line in log.read_text().split()) if log.exists() else 0
    log.unlink(missing_ok=True)
    return count


def build_command(checkpoint: Path, corpus: Path, out: Path, *options: str) -> list[str]:
    command = ["-m", "dualenc", "index", "build", "--encoder-checkpoint", str(checkpoint)]
    return [*command, "--code-corpus", str(corpus), "--output-dir", str(out), *options]


def run(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)


def contents(index_dir: Path) -> dict:
    """What an index holds, timing fields and the generation aside: the manifest, the
    metadata rows, the vectors by id and the lexical arrays."""
    manifest = json.loads((index_dir / "manifest.json").read_text())
    for key in ("created", "updated", "generation"):
        del manifest[key]
    del manifest["lexical"]["build_seconds"]
    with closing(sqlite3.connect(index_dir / "meta.sqlite")) as db:
        rows = db.execute("SELECT id, key, content_hash, path, symbol, line, code FROM records ORDER BY id")
        rows = rows.fetchall()
    index = faiss.read_index(str(index_dir / "index.faiss"))
    if manifest["index"]["type"] == "ivf":  # reconstruct by id; ids start at 1, hence a hash table
        faiss.extract_index_ivf(index).set_direct_map_type(faiss.DirectMap.Hashtable)
    vectors = np.stack([index.reconstruct(row[0]) for row in rows])
    with np.load(index_dir / "lexical.npz", allow_pickle=False) as npz:
        lexical = {name: npz[name] for name in npz.files if name != "generation"}
    words = json.loads((index_dir / "lexical_vocab.json").read_text())["words"]
    return {"manifest": manifest, "rows": rows, "vectors": vectors, "lexical": lexical, "words": words}


def assert_same_index(got: Path, expected: Path) -> None:
    assert {p.name for p in got.iterdir()} == INDEX_FILES
    assert not got.with_name(f".{got.name}{WORK_SUFFIX}").exists()
    a, b = contents(got), contents(expected)
    assert a["manifest"] == b["manifest"]
    assert a["rows"] == b["rows"]
    np.testing.assert_allclose(a["vectors"], b["vectors"], atol=1e-6, rtol=0)
    assert a["lexical"].keys() == b["lexical"].keys()
    for name in a["lexical"]:
        np.testing.assert_array_equal(a["lexical"][name], b["lexical"][name], err_msg=name)
    assert a["words"] == b["words"]


def corpus_of(pairs: Path, path: Path, count: int | None = None, changed: int = 0) -> Path:
    """The codes of a pairs file as a corpus, ``count`` of them, the first ``changed`` edited."""
    codes = [data["code"] for _, data in iter_jsonl(pairs, "pairs")][:count]
    codes = [code + "    # edited\n" if i < changed else code for i, code in enumerate(codes)]
    return write_jsonl(path, ({"id": f"c{i}", "code": code} for i, code in enumerate(codes)))


def test_a_two_rank_build_equals_a_single_process_build(tmp_path, encoder, checkpoint, env):
    pairs = write_pairs(tmp_path / "pairs.jsonl", 150, 0)
    corpus = corpus_of(pairs, tmp_path / "corpus.jsonl")
    # IVF above 100 vectors, tuned on the queries and the fusion chosen on the pairs: rank 0
    # encodes those alone once the shards are in
    options = {"exact_threshold": 100, "tune_queries": str(pairs), "chunk_size": 16, "batch_size": 8}
    build(corpus, tmp_path / "one", checkpoint, encoder, **options)

    flags = [
        "--exact-threshold",
        "100",
        "--tune-queries",
        str(pairs),
        "--chunk-size",
        "16",
        "--batch-size",
        "8",
    ]
    done = run([*TORCHRUN, *build_command(checkpoint, corpus, tmp_path / "two", *flags)], env)
    assert done.returncode == 0, done.stderr
    assert "150 records (ivf, nlist=3, nprobe=" in done.stdout and "150 encoded, 0 unchanged" in done.stdout
    assert done.stdout.count("records (") == 1  # rank 0 alone reports
    assert encoded_codes(env) == 150  # each code once, over both ranks
    assert_same_index(tmp_path / "two", tmp_path / "one")
    assert contents(tmp_path / "two")["manifest"]["index"]["type"] == "ivf"


def test_a_killed_update_resumes_under_torchrun_encoding_only_the_rest(tmp_path, encoder, checkpoint, env):
    pairs = write_pairs(tmp_path / "pairs.jsonl", 150, 0)
    build(corpus_of(pairs, tmp_path / "old.jsonl", 100), tmp_path / "kb", checkpoint, encoder)
    shutil.copytree(tmp_path / "kb", tmp_path / "expected")
    before = (tmp_path / "kb" / "manifest.json").read_text()
    # 30 of the 100 codes edited, 50 new ones: 80 to encode, 5 pieces of 16
    corpus = corpus_of(pairs, tmp_path / "corpus.jsonl", changed=30)
    build(corpus, tmp_path / "expected", checkpoint, encoder, update=True)

    work = tmp_path / f".kb{WORK_SUFFIX}"
    command = [
        sys.executable,
        *build_command(checkpoint, corpus, tmp_path / "kb", "--update", "--chunk-size", "16"),
    ]
    killed = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**env, "ENCODE_SLEEP": "0.5"}
    )
    deadline = time.time() + 120
    while time.time() < deadline and killed.poll() is None and not list(work.glob("*.npy")):
        time.sleep(0.02)
    killed.send_signal(signal.SIGKILL)
    _, stderr = killed.communicate(timeout=60)
    assert killed.returncode == -signal.SIGKILL, stderr
    pieces = len(list(work.glob("*.npy")))
    assert 1 <= pieces < 5
    assert (tmp_path / "kb" / "manifest.json").read_text() == before  # the index is as it was
    assert [p.name.split(".")[1] for p in (tmp_path / "kb").glob(".*.tmp")] == ["meta"]  # its staged copy
    encoded_codes(env)

    resumed = run(
        [*TORCHRUN, *build_command(checkpoint, corpus, tmp_path / "kb", "--update", "--chunk-size", "16")],
        env,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "150 records (flat; exact; " in resumed.stdout
    assert f"; 80 encoded ({16 * pieces} by an interrupted build)" in resumed.stdout
    assert "70 unchanged, 0 removed" in resumed.stdout
    assert encoded_codes(env) == 80 - 16 * pieces
    # the rerun removed the killed process's staged metadata: no hidden file is left
    assert list((tmp_path / "kb").glob(".*")) == []
    assert_same_index(tmp_path / "kb", tmp_path / "expected")


class FailingEncoder(TinyEncoder):
    """Fails on its ``fail_at``-th batch of codes."""

    def __init__(self, fail_at: int):
        super().__init__()
        self.batches, self.fail_at = 0, fail_at

    def forward(self, input_ids, attention_mask, side):
        self.batches += 1
        if self.batches == self.fail_at:
            raise RuntimeError("encoder failed")
        return super().forward(input_ids, attention_mask, side)


def test_a_failed_build_keeps_its_pieces_and_the_rerun_encodes_only_the_rest(tmp_path, encoder, checkpoint):
    pairs = write_pairs(tmp_path / "pairs.jsonl", 40, 0)
    corpus = corpus_of(pairs, tmp_path / "corpus.jsonl")
    out, work = tmp_path / "new" / "kb", tmp_path / "new" / f".kb{WORK_SUFFIX}"
    with pytest.raises(RuntimeError, match="encoder failed"):  # in the third piece
        build(corpus, out, checkpoint, FailingEncoder(fail_at=3), chunk_size=16, batch_size=16)
    assert not out.exists()
    kept = sorted(work.glob("*.npy"))
    assert len(kept) == 2  # the folder holding them stays
    kept[1].write_bytes(kept[1].read_bytes()[:-100])  # a damaged piece is encoded again

    rerun = TinyEncoder()
    report = build(corpus, out, checkpoint, rerun, chunk_size=16, batch_size=16)
    assert (report.encoded, report.resumed, rerun.texts_tokenized) == (40, 16, 24)
    assert not work.exists()
    build(corpus, tmp_path / "whole", checkpoint, encoder, chunk_size=16, batch_size=16)
    assert_same_index(out, tmp_path / "whole")

    # another encoder's pieces are not this one's: a piece's name hashes the checkpoint too
    other = tmp_path / "other"
    save_encoder(TinyEncoder(seed=1), "counting", None, other)
    with pytest.raises(RuntimeError, match="encoder failed"):
        build(corpus, tmp_path / "kb2", checkpoint, FailingEncoder(fail_at=2), chunk_size=16, batch_size=16)
    second = TinyEncoder(seed=1)
    report = build(corpus, tmp_path / "kb2", other, second, chunk_size=16, batch_size=16)
    assert (report.resumed, second.texts_tokenized) == (0, 40)

"""Encoding the records an index build must encode: in pieces, shared by the ranks of a
torchrun build, and resumable after a kill.

A build's new and changed records have consecutive faiss ids (``MetaStore.insert``); they
are cut into pieces of ``chunk_size`` records. Each rank encodes a contiguous run of the
pieces still to do, one piece a round; rank 0 receives every rank's vectors and writes each
piece as an ``.npy`` file into the work folder beside the index (``.NAME.work``), named by a
hash of the encoder and the piece's codes. A rerun with the same inputs, after a kill, finds
them and encodes only the rest, with any number of ranks; the folder goes once the index is
installed. Only rank 0 reads the corpus and writes files: the others receive their codes
from it, so ranks on other machines need neither the corpus nor a shared disk.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import attrs
import numpy as np
import torch.distributed as dist

from dualenc.core import distributed
from dualenc.core.encode import encode_texts, encoder_device, encoding_alone
from dualenc.core.index.store import MetaStore
from dualenc.core.io import hidden_sibling, remove_orphaned_siblings

WORK_SUFFIX = ".work"


@attrs.frozen
class Plan:
    """The records a build encodes, cut into pieces, and the pieces still to encode."""

    first_id: int  # the faiss id of the first record to encode; the others follow it
    count: int
    piece_size: int
    digests: tuple[str, ...]  # per piece: the name of its file in the work folder
    todo: tuple[int, ...] = ()  # the pieces the work folder lacks, in order

    @property
    def pieces(self) -> int:
        return math.ceil(self.count / self.piece_size)

    def ids(self, piece: int) -> range:
        start = self.first_id + piece * self.piece_size
        return range(start, min(start + self.piece_size, self.first_id + self.count))

    @property
    def resumed(self) -> int:
        """Records whose vectors an earlier, interrupted build left in the work folder."""
        return self.count - sum(len(self.ids(piece)) for piece in self.todo)


class WorkFolder:
    """Rank 0's encoded pieces of a build, beside the index until it is installed."""

    def __init__(self, output_dir: Path):
        output_dir = Path(output_dir).resolve()
        self.path = output_dir.with_name(f".{output_dir.name}{WORK_SUFFIX}")
        if self.path.is_dir():  # a killed build's half-written piece goes; its whole ones stay
            remove_orphaned_siblings(self.path)

    def _file(self, digest: str) -> Path:
        return self.path / f"{digest}.npy"

    def holds(self, digest: str, rows: int, dim: int) -> bool:
        """Whether a whole piece of ``rows`` vectors of ``dim`` floats is there: its header
        and size are checked, its data not read."""
        try:
            vectors = np.load(self._file(digest), mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError):  # absent, or damaged: encoded again
            return False
        return vectors.shape == (rows, dim) and vectors.dtype == np.float32

    def write(self, digest: str, vectors: np.ndarray) -> None:
        self.path.mkdir(exist_ok=True)
        file = self._file(digest)
        staged = hidden_sibling(file)
        try:
            with open(staged, "wb") as handle:
                np.save(handle, vectors, allow_pickle=False)
            os.replace(staged, file)  # a kill while writing leaves no piece that looks whole
        finally:
            staged.unlink(missing_ok=True)

    def read(self, digest: str) -> np.ndarray:
        return np.load(self._file(digest), allow_pickle=False)

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def remove_if_empty(self) -> None:
        """After a failed build: its pieces stay for the rerun, an empty folder goes."""
        with contextlib.suppress(OSError):  # absent, or holding pieces
            self.path.rmdir()


def plan_pieces(
    meta_store: MetaStore,
    first_id: int,
    count: int,
    piece_size: int,
    encoder_hash: str,
    dim: int,
    work: WorkFolder,
) -> Plan:
    """Rank 0: the pieces of the ``count`` records from ``first_id`` and those ``work`` lacks.

    A piece's name hashes the encoder and its records' code hashes in order: a rerun reuses
    a piece only for the same codes encoded by the same encoder.
    """
    plan = Plan(first_id, count, piece_size, ())
    digests = []
    for piece in range(plan.pieces):
        digest = hashlib.blake2b(encoder_hash.encode(), digest_size=16)
        for content_hash in meta_store.column("content_hash", plan.ids(piece)):
            digest.update(b"\n" + content_hash.encode())
        digests.append(digest.hexdigest())
    plan = attrs.evolve(plan, digests=tuple(digests))
    todo = [p for p in range(plan.pieces) if not work.holds(digests[p], len(plan.ids(p)), dim)]
    return attrs.evolve(plan, todo=tuple(todo))


def share_plan(plan: Plan | None) -> Plan | None:
    """Rank 0's ``plan`` on every rank; None: rank 0's build stopped before encoding."""
    if distributed.world_size() == 1:
        return plan
    box = [plan]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class PlanSender:
    """Rank 0's side of ``share_plan``: the plan goes out once, and ``abort`` sends None in
    its place when the build fails before it, so that the other ranks stop waiting."""

    def __init__(self):
        self.sent = False

    def send(self, plan: Plan | None) -> None:
        self.sent = True
        share_plan(plan)

    def abort(self) -> None:
        if not self.sent:
            self.send(None)


def encode_pieces(
    plan: Plan,
    encoder,
    batch_size: int,
    codes: Callable[[range], list[str]] | None = None,
    work: WorkFolder | None = None,
    progress: Callable[[int], None] | None = None,
) -> None:
    """Every rank together: encode this rank's contiguous share of ``plan.todo``, a piece a
    round. Rank 0 passes ``codes`` (the codes of the records of some ids) and ``work``,
    where every rank's piece of each round goes; ``progress(n)`` after each round."""
    world, rank = distributed.world_size(), distributed.rank()
    shares = np.array_split(np.asarray(plan.todo, dtype=np.int64), world)
    device = encoder_device(encoder)
    for round_number in range(len(shares[0])):  # rank 0's share is the longest
        pieces = [int(share[round_number]) for share in shares if round_number < len(share)]
        texts = [codes(plan.ids(piece)) for piece in pieces] if rank == 0 else None
        mine = _scatter(texts, len(pieces))
        with encoding_alone():
            vectors = (
                encode_texts(encoder, mine, "code", batch_size)
                if mine
                else np.empty((0, encoder.dim), dtype=np.float32)
            )
        gathered = distributed.gather_rows(vectors, device)  # in rank order: the pieces' order
        if rank == 0:
            offset = 0
            for piece in pieces:
                size = len(plan.ids(piece))
                work.write(plan.digests[piece], gathered[offset : offset + size])
                offset += size
            if progress is not None:
                progress(offset)


def _scatter(texts: list[list[str]] | None, busy_ranks: int) -> list[str]:
    """This rank's texts of rank 0's ``texts`` (one list per busy rank; the first ranks are
    the busy ones), [] for a rank without a piece this round."""
    if distributed.world_size() == 1:
        return texts[0]
    if texts is not None:
        texts = texts + [[] for _ in range(distributed.world_size() - busy_ranks)]
    received: list = [None]
    dist.scatter_object_list(received, texts, src=0)
    return received[0]

"""The compressed index of large corpora: IVF with product quantisation finds a shortlist,
which is re-ranked by exact inner products with fp16 copies of the vectors kept on disk.

At 384 dimensions a vector costs 1,544 bytes in an exact or IVF-flat index (fp32 and its
id); here it costs its PQ code (``dim / 8`` bytes by default) and its id in memory, and 768
bytes on disk, of which a search reads the shortlist's rows through a memory map.

The fp16 vectors are also what an update keeps (``VectorStore``): a later build takes the
unchanged ones from there instead of re-encoding, and trains a new IVF-PQ over all of them.
A build streams the file through plain reads and writes a block at a time, and lets go of
the mapped rows it re-ranks after each read: a memory map's resident pages count as the
process's, and a build's memory must not grow with the store.
"""

from __future__ import annotations

import math
import mmap
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import faiss
import numpy as np

from dualenc.core.io import fsync_file, hidden_sibling
from dualenc.errors import DualencError

VECTORS_FILE = "vectors-{generation}.f16.npy"
IDS_FILE = "vector_ids-{generation}.npy"
BLOCK_ROWS = 16_384
# points k-means trains the coarse lists on: enough for faiss (39 a list), bounded in memory
TRAIN_SAMPLE = 131_072
# shortlist sizes tried while tuning, as multiples of k
RERANK_FACTORS = (4, 8, 16, 32)


class VectorStore:
    """fp16 vectors [count, dim] in ascending faiss-id order, and their ids, as two .npy files.

    Rows are read through a memory map. ``keep_mapped``: the rows read stay in this
    process's memory (serving: the hot ones stay at hand); else they are let go after each
    read (a build: its memory does not grow with the rows it has read; they stay in the
    page cache)."""

    def __init__(
        self, vectors_path: Path, ids_path: Path, where: str | None = None, keep_mapped: bool = True
    ):
        self.vectors_path, self.ids_path = Path(vectors_path), Path(ids_path)
        self.keep_mapped = keep_mapped
        where = where or str(self.vectors_path)
        try:
            header = np.load(self.vectors_path, mmap_mode="r", allow_pickle=False)
            self.ids = np.load(self.ids_path, allow_pickle=False)
        except FileNotFoundError as exc:
            raise DualencError(f"{exc.filename}: missing; rebuild the index") from None
        except (OSError, ValueError) as exc:
            raise DualencError(f"{where}: unreadable re-rank vectors ({exc}); rebuild the index") from None
        shape_ok = header.ndim == 2 and header.dtype == np.float16
        if not shape_ok or self.ids.shape != (len(header),) or self.ids.dtype != np.int64:
            raise DualencError(
                f"{where}: re-rank vectors of shape {header.shape} ({header.dtype}) do not "
                f"match the {self.ids.shape[0]} ids of {self.ids_path}; rebuild the index"
            )
        self.offset, shape = header.offset, header.shape  # the data starts after the .npy header
        del header
        with open(self.vectors_path, "rb") as handle:
            self._map = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        count = shape[0] * shape[1]
        self.vectors = np.frombuffer(self._map, np.float16, count, self.offset).reshape(shape)

    @property
    def count(self) -> int:
        return len(self.ids)

    @property
    def dim(self) -> int:
        return self.vectors.shape[1]

    def rows(self, rows: np.ndarray) -> np.ndarray:
        """[len(rows), dim] float32: the vectors of ``rows``."""
        vectors = self.vectors[rows].astype(np.float32)
        if not self.keep_mapped and hasattr(mmap, "MADV_DONTNEED"):
            self._map.madvise(mmap.MADV_DONTNEED)  # unmaps the pages read; the file is unchanged
        return vectors

    def rows_of(self, ids: np.ndarray) -> np.ndarray:
        rows = np.searchsorted(self.ids, ids)
        rows = np.minimum(rows, len(self.ids) - 1)
        if not np.array_equal(self.ids[rows], ids):
            missing = ids[self.ids[rows] != ids]
            raise DualencError(f"{self.vectors_path}: no vectors for faiss ids {missing[:5].tolist()}")
        return rows

    def blocks(self, rows: int = BLOCK_ROWS) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids, fp32 vectors) a block at a time, read from the file rather than the map."""
        row_bytes = self.dim * 2
        with open(self.vectors_path, "rb") as handle:
            handle.seek(self.offset)
            for start in range(0, self.count, rows):
                stop = min(start + rows, self.count)
                data = np.fromfile(handle, dtype=np.float16, count=(stop - start) * self.dim)
                if data.size * 2 != (stop - start) * row_bytes:
                    raise DualencError(f"{self.vectors_path}: truncated; rebuild the index")
                yield self.ids[start:stop], data.reshape(-1, self.dim).astype(np.float32)


def write_store(
    output_dir: Path, count: int, dim: int, blocks: Iterable[tuple[np.ndarray, np.ndarray]]
) -> tuple[Path, Path]:
    """Stream ``blocks`` of (ascending ids, fp32 vectors), ``count`` rows in all, into hidden
    staged files in ``output_dir``; returns their paths (vectors, ids)."""
    vectors_path = hidden_sibling(output_dir / "vectors.f16.npy")
    ids_path = hidden_sibling(output_dir / "vector_ids.npy")
    ids = np.empty(count, dtype=np.int64)
    written = 0
    try:
        with open(vectors_path, "wb") as handle:
            header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float16)), "fortran_order": False}
            np.lib.format.write_array_header_1_0(handle, {**header, "shape": (count, dim)})
            for block_ids, vectors in blocks:
                if len(block_ids) == 0:
                    continue
                if written and block_ids[0] <= ids[written - 1]:
                    raise AssertionError("vector store ids must ascend")
                ids[written : written + len(block_ids)] = block_ids
                handle.write(np.ascontiguousarray(vectors, dtype=np.float16).tobytes())
                written += len(block_ids)
        if written != count:
            raise AssertionError(f"vector store: {written} rows written, {count} expected")
        with open(ids_path, "wb") as handle:
            np.save(handle, ids, allow_pickle=False)
        fsync_file(vectors_path)
        fsync_file(ids_path)
    except BaseException:
        vectors_path.unlink(missing_ok=True)
        ids_path.unlink(missing_ok=True)
        raise
    return vectors_path, ids_path


class RerankedIndex:
    """IVF-PQ's top ``rerank_factor * k``, re-ranked by exact inner products with the fp16
    vectors of ``store``. Searches like a faiss index: ``search(queries, k)`` gives
    (scores, ids), -1 where there are fewer than k."""

    def __init__(self, ivfpq: faiss.Index, store: VectorStore, rerank_factor: int):
        self.ivfpq, self.store, self.rerank_factor = ivfpq, store, rerank_factor
        self.ivf = faiss.extract_index_ivf(ivfpq)

    @property
    def ntotal(self) -> int:
        return self.ivfpq.ntotal

    @property
    def d(self) -> int:
        return self.ivfpq.d

    @property
    def nlist(self) -> int:
        return self.ivf.nlist

    @property
    def nprobe(self) -> int:
        return self.ivf.nprobe

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        self.ivf.nprobe = value

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        _, shortlist = self.ivfpq.search(queries, max(k, k * self.rerank_factor))
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        ids = np.full((len(queries), k), -1, dtype=np.int64)
        for start in range(0, len(queries), 64):  # bounds the gathered vectors' memory
            part = slice(start, start + 64)
            found = shortlist[part]
            valid = found >= 0
            rows = self.store.rows_of(found[valid])
            exact = np.full(found.shape, -np.inf, dtype=np.float32)
            gathered = self.store.rows(rows)
            query_of = np.nonzero(valid)[0]
            exact[valid] = np.einsum("nd,nd->n", gathered, queries[part][query_of])
            width = min(k, found.shape[1])
            best = np.argsort(-exact, axis=1, kind="stable")[:, :width]
            best_scores = np.take_along_axis(exact, best, axis=1)
            best_ids = np.where(np.isfinite(best_scores), np.take_along_axis(found, best, axis=1), -1)
            scores[part, :width], ids[part, :width] = best_scores, best_ids
        return scores, ids

    def reconstruct_batch(self, ids: np.ndarray) -> np.ndarray:
        return self.store.rows(self.store.rows_of(np.asarray(ids, dtype=np.int64)))


def pq_bytes(dim: int, requested: int | None) -> int:
    """Bytes of a vector's PQ code: ``requested``, else one per 8 dimensions; it must divide dim."""
    chosen = requested if requested is not None else max(1, dim // 8)
    while requested is None and dim % chosen:
        chosen -= 1
    if dim % chosen:
        raise DualencError(f"pq_bytes: must divide the encoder's dimension {dim} (got {chosen})")
    return chosen


def train_ivfpq(store: VectorStore, nlist: int, code_bytes: int, rng: np.random.Generator) -> faiss.Index:
    """IVF-PQ trained on a bounded sample of ``store``, then every vector added a block at a time."""
    sample_size = min(store.count, TRAIN_SAMPLE)
    chosen = np.zeros(store.count, dtype=bool)
    chosen[rng.choice(store.count, size=sample_size, replace=False)] = True
    sample = np.empty((sample_size, store.dim), dtype=np.float32)
    filled = 0
    for start, (_, vectors) in zip(range(0, store.count, BLOCK_ROWS), store.blocks(), strict=True):
        picked = vectors[chosen[start : start + len(vectors)]]
        sample[filled : filled + len(picked)] = picked
        filled += len(picked)
    index = faiss.IndexIVFPQ(
        faiss.IndexFlatIP(store.dim), store.dim, nlist, code_bytes, 8, faiss.METRIC_INNER_PRODUCT
    )
    index.cp.max_points_per_centroid = math.ceil(sample_size / nlist)  # the sample is the budget
    index.train(sample)
    del sample
    for ids, vectors in store.blocks():
        index.add_with_ids(vectors, ids)
    return index


def exact_top(store: VectorStore, queries: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores, ids) of each query's exact top ``width`` over ``store``, best first: each
    block's top ``width`` (faiss.knn), merged with the best so far; memory is a block and the
    queries' [Q, 2 x width] lists, whatever the store's size."""
    best_scores = np.full((len(queries), 0), -np.inf, dtype=np.float32)
    best_ids = np.zeros((len(queries), 0), dtype=np.int64)
    for ids, vectors in store.blocks():
        scores, rows = faiss.knn(queries, vectors, min(width, len(ids)), metric=faiss.METRIC_INNER_PRODUCT)
        all_scores = np.concatenate([best_scores, scores], axis=1)
        all_ids = np.concatenate([best_ids, ids[rows]], axis=1)
        # stable on the concatenation: an earlier (lower) id wins a tie, as one exact search does
        order = np.argsort(-all_scores, axis=1, kind="stable")[:, :width]
        best_scores = np.take_along_axis(all_scores, order, axis=1)
        best_ids = np.take_along_axis(all_ids, order, axis=1)
    return best_scores, best_ids


def install_store(output_dir: Path, staged: tuple[Path, Path], generation: str) -> dict[str, str]:
    """Move staged store files to this generation's names; returns the manifest's names."""
    names = {
        "vectors": VECTORS_FILE.format(generation=generation),
        "ids": IDS_FILE.format(generation=generation),
    }
    for path, name in zip(staged, (names["vectors"], names["ids"]), strict=True):
        os.replace(path, output_dir / name)
    return names


def remove_stale_stores(output_dir: Path, keep: Iterable[str]) -> None:
    """Remove store files of earlier generations (after the new manifest is in place)."""
    keep = set(keep)
    for pattern in ("vectors-*.f16.npy", "vector_ids-*.npy"):
        for path in output_dir.glob(pattern):
            if path.name not in keep:
                path.unlink(missing_ok=True)

"""Multi-process training under torchrun: process group, cross-rank gathers, gradient sums.

No home-made process management: torchrun starts the processes and sets RANK, WORLD_SIZE,
LOCAL_RANK and the rendezvous; this module only joins the group it describes. Without
torchrun every helper here is a no-op for a single process.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress

import numpy as np
import torch
import torch.distributed as dist

from dualenc.core.device import resolve_device


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def setup(device_name: str, timeout_s: int) -> torch.device:
    """Join torchrun's process group when launched by it; return this process's device."""
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1
    cuda = torch.cuda.is_available() and device_name in ("auto", "cuda")
    if launched and not dist.is_initialized():
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(
            backend="nccl" if cuda else "gloo", timeout=datetime.timedelta(seconds=timeout_s)
        )
    return resolve_device("auto" if cuda else device_name)


def teardown(together: bool = True) -> None:
    """Leave the process group; ``together``: once every rank has come this far. A gloo rank
    that destroys its group while another is still finishing its work was seen to abort
    ("terminate called without an active exception", exit -6). After a failure no barrier:
    the other ranks may be gone; a rank that failed later breaks the barrier, which says
    nothing about this rank's own work, so that is not an error here."""
    if dist.is_available() and dist.is_initialized():
        if together:
            with suppress(RuntimeError):  # gloo's DistBackendError: a peer left first
                dist.barrier()
        dist.destroy_process_group()


@contextmanager
def session(device_name: str, timeout_s: int) -> Iterator[torch.device]:
    """``setup`` on entry, ``teardown`` on exit, however the block ends."""
    device = setup(device_name, timeout_s)
    try:
        yield device
    except BaseException:
        teardown(together=False)
        raise
    teardown()


def _gather_sizes(n: int, device: torch.device) -> list[int]:
    size = torch.tensor([n], device=device)
    sizes = [torch.zeros_like(size) for _ in range(world_size())]
    dist.all_gather(sizes, size)
    return [int(s) for s in sizes]


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's ``tensor`` along dim 0 (sizes may differ between ranks).

    Only this rank's slice keeps its autograd history, so gradients flow back to the
    embeddings this rank computed: summing parameter gradients over ranks then gives the
    gradient of the global loss.
    """
    if world_size() == 1:
        return tensor
    sizes = _gather_sizes(len(tensor), tensor.device)
    padded = tensor.new_zeros((max(sizes), *tensor.shape[1:]))
    padded[: len(tensor)] = tensor.detach()
    parts = [torch.zeros_like(padded) for _ in sizes]
    dist.all_gather(parts, padded.contiguous())
    parts = [part[:size] for part, size in zip(parts, sizes, strict=True)]
    parts[rank()] = tensor
    return torch.cat(parts)


def sum_gradients(parameters, average: bool = False) -> None:
    """Sum (or average) gradients over ranks, one flattened buffer per dtype for few collectives."""
    if world_size() == 1:
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for grad in grads:
        by_dtype.setdefault(grad.dtype, []).append(grad)
    for group in by_dtype.values():
        flat = torch.cat([g.reshape(-1) for g in group])
        dist.all_reduce(flat)
        if average:
            flat /= world_size()
        offset = 0
        for grad in group:
            grad.copy_(flat[offset : offset + grad.numel()].view_as(grad))
            offset += grad.numel()


def mean_over_ranks(value: float, device: torch.device) -> float:
    if world_size() == 1:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return float(tensor) / world_size()


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when ``flag`` is true on any (e.g. a signal reached one rank)."""
    if world_size() == 1:
        return flag
    tensor = torch.tensor([int(flag)], device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item())


def gather_rows(rows: np.ndarray, device: torch.device) -> np.ndarray:
    """Concatenate every rank's float32 rows (no grad), in rank order."""
    if world_size() == 1:
        return rows
    tensor = torch.from_numpy(np.ascontiguousarray(rows)).to(device)
    return gather_with_grad(tensor).cpu().numpy()


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()

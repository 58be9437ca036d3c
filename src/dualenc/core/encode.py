"""Encoding many texts for evaluation, mining and indexing: no grad, sorted by length."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar

import numpy as np
import torch

from dualenc.core import distributed


def pad_batch(token_ids: Sequence[np.ndarray], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad to the longest sequence of this batch only: [B, L] ids and 0/1 attention mask."""
    width = max(len(ids) for ids in token_ids)
    input_ids = np.full((len(token_ids), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(token_ids), width), dtype=np.int64)
    for row, ids in enumerate(token_ids):
        input_ids[row, : len(ids)] = ids
        mask[row, : len(ids)] = 1
    return torch.from_numpy(input_ids), torch.from_numpy(mask)


# Tokens per encoding batch on the CPU. MiniLM encoding at batch 256 ran 1.8x (codes, ~100
# tokens) and 3.7x (docstrings) slower per text than at 1024 tokens a batch on a 2-core Xeon:
# the activations of a large batch leave the caches. Accelerators want the largest batch that
# fits, so this applies to the CPU only.
CPU_TOKENS_PER_BATCH = 1024


def iter_length_sorted_batches(
    token_ids: Sequence[np.ndarray], batch_size: int, max_tokens: int | None = None
) -> Iterator[np.ndarray]:
    """Index batches in order of decreasing length, so each batch pads very little: at most
    ``batch_size`` texts and, if given, ``max_tokens`` padded tokens (at least one text)."""
    lengths = np.fromiter((len(ids) for ids in token_ids), dtype=np.int64, count=len(token_ids))
    order = np.argsort(-lengths, kind="stable")
    start = 0
    while start < len(order):
        size = batch_size
        if max_tokens is not None:  # the first text is the batch's longest
            size = max(1, min(batch_size, max_tokens // max(1, int(lengths[order[start]]))))
        yield order[start : start + size]
        start += size


_ALONE: ContextVar[bool] = ContextVar("dualenc_encoding_alone", default=False)


@contextmanager
def encoding_alone() -> Iterator[None]:
    """Inside the block this process encodes alone, even under torchrun: for work that one
    rank does while the others do something else (a rank's share of an index build, rank 0
    tuning the index it assembled), where a shared encode would wait for them forever."""
    token = _ALONE.set(True)
    try:
        yield
    finally:
        _ALONE.reset(token)


def encoder_device(encoder) -> torch.device:
    return next(encoder.parameters()).device


def encode_token_ids(
    encoder,
    token_ids: Sequence[np.ndarray],
    side: str,
    batch_size: int = 128,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """[N, dim] float32 unit vectors for already-tokenized texts, in input order.

    Under torchrun every rank encodes a 1/world share and all receive the whole result,
    so evaluation and mining cost 1/world each; every rank must call this together (but
    inside ``encoding_alone``). ``progress(n)`` is called after each batch with the number of
    texts it encoded (this rank's).
    """
    world = 1 if _ALONE.get() else distributed.world_size()
    if world == 1:
        return _encode_local(encoder, token_ids, side, batch_size, progress)
    shares = [np.arange(len(token_ids))[r::world] for r in range(world)]
    mine = shares[distributed.rank()]
    local = _encode_local(encoder, [token_ids[i] for i in mine], side, batch_size, progress)
    gathered = distributed.gather_rows(local, encoder_device(encoder))
    out = np.empty_like(gathered)
    out[np.concatenate(shares)] = gathered
    return out


@torch.no_grad()
def _encode_local(
    encoder, token_ids: Sequence[np.ndarray], side: str, batch_size: int, progress=None
) -> np.ndarray:
    out = np.empty((len(token_ids), encoder.dim), dtype=np.float32)
    if not len(token_ids):
        return out
    device = encoder_device(encoder)
    was_training = encoder.training
    encoder.eval()
    try:
        max_tokens = CPU_TOKENS_PER_BATCH if device.type == "cpu" else None
        for index in iter_length_sorted_batches(token_ids, batch_size, max_tokens):
            input_ids, mask = pad_batch([token_ids[i] for i in index], encoder.pad_id)
            vectors = encoder(input_ids.to(device), mask.to(device), side)
            out[index] = vectors.float().cpu().numpy()
            if progress is not None:
                progress(len(index))
    finally:
        encoder.train(was_training)
    return out


def encode_texts(encoder, texts: Sequence[str], side: str, batch_size: int = 128) -> np.ndarray:
    """Tokenize and encode ``texts``: [N, dim] float32 unit vectors in input order."""
    return encode_token_ids(encoder, encoder.tokenize(list(texts), side), side, batch_size)

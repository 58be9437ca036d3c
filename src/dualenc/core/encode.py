"""Encoding many texts for evaluation, mining and indexing: no grad, sorted by length."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

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


def iter_length_sorted_batches(token_ids: Sequence[np.ndarray], batch_size: int) -> Iterator[np.ndarray]:
    """Index batches in order of decreasing length, so each batch pads very little."""
    order = np.argsort([-len(ids) for ids in token_ids], kind="stable")
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


def encoder_device(encoder) -> torch.device:
    return next(encoder.parameters()).device


def encode_token_ids(
    encoder, token_ids: Sequence[np.ndarray], side: str, batch_size: int = 128
) -> np.ndarray:
    """[N, dim] float32 unit vectors for already-tokenized texts, in input order.

    Under torchrun every rank encodes a 1/world share and all receive the whole result,
    so evaluation and mining cost 1/world each; every rank must call this together.
    """
    world = distributed.world_size()
    if world == 1:
        return _encode_local(encoder, token_ids, side, batch_size)
    shares = [np.arange(len(token_ids))[r::world] for r in range(world)]
    mine = shares[distributed.rank()]
    local = _encode_local(encoder, [token_ids[i] for i in mine], side, batch_size)
    gathered = distributed.gather_rows(local, encoder_device(encoder))
    out = np.empty_like(gathered)
    out[np.concatenate(shares)] = gathered
    return out


@torch.no_grad()
def _encode_local(encoder, token_ids: Sequence[np.ndarray], side: str, batch_size: int) -> np.ndarray:
    out = np.empty((len(token_ids), encoder.dim), dtype=np.float32)
    if not len(token_ids):
        return out
    device = encoder_device(encoder)
    was_training = encoder.training
    encoder.eval()
    try:
        for index in iter_length_sorted_batches(token_ids, batch_size):
            input_ids, mask = pad_batch([token_ids[i] for i in index], encoder.pad_id)
            vectors = encoder(input_ids.to(device), mask.to(device), side)
            out[index] = vectors.float().cpu().numpy()
    finally:
        encoder.train(was_training)
    return out


def encode_texts(encoder, texts: Sequence[str], side: str, batch_size: int = 128) -> np.ndarray:
    """Tokenize and encode ``texts``: [N, dim] float32 unit vectors in input order."""
    return encode_token_ids(encoder, encoder.tokenize(list(texts), side), side, batch_size)

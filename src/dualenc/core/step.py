"""One optimisation step: encode a batch by length groups (or GradCache chunks), the loss,
gradients reduced across ranks, clipping, the optimizer and schedule.

``TrainStep`` holds what stays fixed for a run; the loop calls ``backward`` and, once it has
checked the loss, ``update``.

A batch's candidates are its positives, then the mined negatives (row-major [B, K], -1
skipped), then the provided negatives of its pairs (``PairSet.provided_negatives``, the
same way): code rows of the pair set, so a provided negative that is a pair's code is
encoded and keyed exactly as if it had been mined.
"""

from __future__ import annotations

import math
from contextlib import nullcontext

import numpy as np
import torch

from dualenc.core import distributed
from dualenc.core.data.sampler import length_groups
from dualenc.registry.kinds import ContrastiveBatch

# an embedding table of at least this many rows trains with sparse gradients: its dense
# gradient is allocated and zero-filled in full for every length group's backward
# (MiniLM's 30,522 x 384 words: 10-14% of a bf16 CPU step), while a batch touches a few
# thousand rows
SPARSE_EMBEDDING_ROWS = 4096


class TrainStep:
    """Encode, loss and backward for one batch of pair ids; then the parameter update."""

    def __init__(
        self, encoder, loss_fn, optimizer, scheduler, pairs, device, precision, train_config, gather
    ):
        self.encoder, self.loss_fn, self.pairs = encoder, loss_fn, pairs
        self.optimizer, self.scheduler = optimizer, scheduler
        self.device, self.gather = device, gather
        self.grad_cache_chunk, self.grad_clip = train_config.grad_cache_chunk, train_config.grad_clip
        self.autocast = self._bf16 if precision == "bf16" else nullcontext
        self.params = [p for group in optimizer.param_groups for p in group["params"]]

    def _bf16(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def backward(self, pair_ids: np.ndarray, negative_ids: np.ndarray) -> float:
        """Gradients of the batch's loss, ``negative_ids`` the mined negatives [B, K] (the
        provided ones come from the pair set); returns the loss (the mean over ranks unless
        gathered)."""
        if self.grad_cache_chunk:
            loss = grad_cache_step(
                self.encoder,
                self.loss_fn,
                self.pairs,
                pair_ids,
                negative_ids,
                self.device,
                self.autocast,
                self.grad_cache_chunk,
                self.gather,
            )
        else:
            batch = encode_contrastive_batch(
                self.encoder, self.pairs, pair_ids, negative_ids, self.device, self.autocast, self.gather
            )
            loss = self.loss_fn(batch)
            loss.backward()
        densify_gradients(self.params)
        # gathered: every rank holds the global loss, and its gradient is the sum over ranks of
        # what flowed into each rank's own embeddings; otherwise average
        distributed.sum_gradients(self.params, average=not self.gather)
        value = float(loss.detach())
        return value if self.gather else distributed.mean_over_ranks(value, self.device)

    def update(self) -> None:
        if self.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)


def sparse_embedding_gradients(module: torch.nn.Module) -> int:
    """Give every trainable ``torch.nn.Embedding`` of ``module`` with at least
    SPARSE_EMBEDDING_ROWS rows sparse gradients (the rows its ids touched, summed over the
    length groups of a backward); returns how many. ``TrainStep.backward`` makes them dense
    again before gradients are reduced, clipped and applied."""
    tables = [
        child
        for child in module.modules()
        if type(child) is torch.nn.Embedding
        and child.num_embeddings >= SPARSE_EMBEDDING_ROWS
        and child.weight.requires_grad
    ]
    for table in tables:
        table.sparse = True
    return len(tables)


def densify_gradients(params) -> None:
    """Replace each sparse ``.grad`` of ``params`` by its dense sum."""
    for param in params:
        if param.grad is not None and param.grad.is_sparse:
            param.grad = param.grad.to_dense()


def encode_side(encoder, pairs, ids, side, device):
    """Embeddings of one side of ``ids``, in their order, encoded in ``length_groups``: the
    queries that come with a bucket of like-length codes vary in length, and each group
    padded to its own longest computes far fewer padding tokens than one batch."""
    groups = length_groups(pairs.row_lengths(side)[ids])
    if len(groups) == 1:
        return encoder(*pairs.collate(ids, side, device), side)
    parts = [encoder(*pairs.collate(ids[group], side, device), side) for group in groups]
    return in_original_order(parts, np.concatenate(groups), device)


def in_original_order(parts, order: np.ndarray, device) -> torch.Tensor:
    """Concatenated ``parts``, whose rows are items ``order[0], order[1], ...``, put back in item order."""
    inverse = np.empty(len(order), dtype=np.int64)
    inverse[order] = np.arange(len(order))
    return torch.cat(parts)[torch.from_numpy(inverse).to(device)]


def candidate_rows(pairs, pair_ids: np.ndarray, negative_ids: np.ndarray) -> np.ndarray:
    """The code rows of a batch's candidates: positives, mined negatives, provided negatives."""
    provided = pairs.provided_negatives(pair_ids)
    parts = [pair_ids, negative_ids[negative_ids >= 0], provided[provided >= 0]]
    return np.concatenate(parts).astype(np.int64, copy=False)


def encode_contrastive_batch(encoder, pairs, pair_ids, negative_ids, device, autocast, gather):
    """Encode one step's queries, positives, mined and provided negatives into a ContrastiveBatch."""
    candidate_ids = candidate_rows(pairs, pair_ids, negative_ids)
    with autocast():
        query = encode_side(encoder, pairs, pair_ids, "query", device)
        parts = [encode_side(encoder, pairs, pair_ids, "code", device)]
        if len(candidate_ids) > len(pair_ids):  # negatives grouped by their own lengths
            parts.append(encode_side(encoder, pairs, candidate_ids[len(pair_ids) :], "code", device))
    return _contrastive(query, torch.cat(parts), pairs, candidate_ids, device, gather)


def _contrastive(query, candidates, pairs, candidate_ids, device, gather: bool) -> ContrastiveBatch:
    """Assemble the batch; with ``gather``, over every rank's queries and candidates.

    Gathered layout: all ranks' positives in rank order, then all ranks' negatives (each
    rank's mined, then its provided ones), so the positive of global query j is candidate j.
    """
    code_key = torch.from_numpy(np.asarray(pairs.row_code_key[candidate_ids])).to(device)
    query_key = torch.from_numpy(np.asarray(pairs.row_query_key[candidate_ids])).to(device)
    if gather:
        n = len(query)
        query = distributed.gather_with_grad(query)
        candidates, code_key, query_key = (
            torch.cat([distributed.gather_with_grad(t[:n]), distributed.gather_with_grad(t[n:])])
            for t in (candidates, code_key, query_key)
        )
    return ContrastiveBatch(
        query=query,
        candidates=candidates,
        positive=torch.arange(len(query), device=device),
        candidate_code_key=code_key,
        candidate_query_key=query_key,
    )


def grad_cache_step(encoder, loss_fn, pairs, pair_ids, negative_ids, device, autocast, chunk, gather):
    """GradCache: the loss over the whole batch with the activation memory of one chunk.

    1. encode every chunk without grad; 2. loss and its gradient w.r.t. the embeddings;
    3. re-encode each chunk with grad (same RNG state, so the same dropout) and
    backpropagate the cached embedding gradients.
    """
    candidate_ids = candidate_rows(pairs, pair_ids, negative_ids)
    # chunks cut from each side sorted by length: each chunk is padded to its own longest
    orders = {
        "query": np.argsort(pairs.row_lengths("query")[pair_ids], kind="stable"),
        "code": np.argsort(pairs.row_lengths("code")[candidate_ids], kind="stable"),
    }
    sides = [("query", pair_ids[orders["query"]]), ("code", candidate_ids[orders["code"]])]
    chunks = [(side, ids[i : i + chunk]) for side, ids in sides for i in range(0, len(ids), chunk)]
    rng_states, embeddings = [], []
    with torch.no_grad():
        for side, ids in chunks:
            rng_states.append(torch.get_rng_state())
            with autocast():
                embeddings.append(encoder(*pairs.collate(ids, side, device), side).float())
    cached = [e.detach().requires_grad_() for e in embeddings]
    n_query_chunks = math.ceil(len(pair_ids) / chunk)

    batch = _contrastive(
        in_original_order(cached[:n_query_chunks], orders["query"], device),
        in_original_order(cached[n_query_chunks:], orders["code"], device),
        pairs,
        candidate_ids,
        device,
        gather,
    )
    loss = loss_fn(batch)
    loss.backward()
    resume_state = torch.get_rng_state()
    for (side, ids), state, emb in zip(chunks, rng_states, cached, strict=True):
        torch.set_rng_state(state)
        with autocast():
            again = encoder(*pairs.collate(ids, side, device), side).float()
        again.backward(emb.grad)
    torch.set_rng_state(resume_state)
    return loss.detach()

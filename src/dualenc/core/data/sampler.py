"""Batches: length-bucketed pair ids without duplicate keys, and length groups within a batch."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

from dualenc.errors import DualencError

if TYPE_CHECKING:
    from dualenc.core.data.pairset import PairSet

logger = logging.getLogger(__name__)
# An encoder call has a fixed cost (Python, dispatch, small kernels) that one sequence's worth
# of tokens would hide: on a 2-core CPU, a MiniLM forward and backward costs about this many
# tokens more per call. Splitting a batch must save more padding than that.
GROUP_OVERHEAD_TOKENS = 64
MAX_LENGTH_GROUPS = 4


def length_groups(
    lengths: np.ndarray, max_groups: int = MAX_LENGTH_GROUPS, overhead: int = GROUP_OVERHEAD_TOKENS
) -> list[np.ndarray]:
    """Positions into ``lengths``, split into at most ``max_groups`` groups of similar length.

    Each group is encoded on its own, padded to its longest; the split minimises the tokens
    computed plus ``overhead`` per group (exactly, by dynamic programming over the sorted
    lengths). Buckets make code lengths alike already; queries that come with them are not.
    """
    order = np.argsort(lengths, kind="stable")
    ordered = np.asarray(lengths, dtype=np.int64)[order]
    count = len(ordered)
    starts = np.arange(count)
    # least[j]: the least tokens computed for the j shortest in the groups so far; cuts: where
    # each prefix's last group starts, per number of groups
    least = np.full(count + 1, np.inf)
    least[0] = 0.0
    cuts: list[np.ndarray] = []
    best_groups, best_cost = 0, np.inf
    for groups in range(1, min(max_groups, count) + 1):
        previous, least = least, np.full(count + 1, np.inf)
        cut = np.zeros(count + 1, dtype=np.int64)
        for end in range(1, count + 1):
            costs = previous[:end] + ordered[end - 1] * (end - starts[:end])
            cut[end] = int(np.argmin(costs))
            least[end] = costs[cut[end]]
        cuts.append(cut)
        if least[count] + overhead * groups < best_cost:
            best_groups, best_cost = groups, least[count] + overhead * groups
    bounds = [count]
    for cut in reversed(cuts[:best_groups]):
        bounds.append(int(cut[bounds[-1]]))
    bounds.reverse()
    return [order[start:end] for start, end in zip(bounds, bounds[1:], strict=False)]


def computed_tokens(lengths: np.ndarray) -> int:
    """Tokens an encoder computes for ``lengths`` when they are encoded in ``length_groups``."""
    return sum(int(lengths[group].max()) * len(group) for group in length_groups(lengths))


def check_batchable(pairs: PairSet, batch_size: int) -> None:
    """Refuse pairs that cannot form a batch of two: no pair would ever see a negative.

    Two pairs share a batch only when their queries and their codes both differ (by
    ``query_key`` and ``normalised_code_key``). Among pairs (edges between queries and
    codes), no two differ in both exactly when all of them share one query or one code,
    so the distinct counts decide it. Too few of either for a full batch only warns:
    batches are then smaller than ``batch_size``, but still train.
    """
    count = len(pairs)
    queries = len(np.unique(np.asarray(pairs.query_key)))
    codes = len(np.unique(np.asarray(pairs.code_key)))
    where = f"{pairs.source}: " if pairs.source else ""
    counts = f"{count} pairs, {queries} distinct queries, {codes} distinct codes"
    if min(queries, codes) < 2:
        raise DualencError(
            f"{where}{counts} (case, spacing and comments ignored): every pair shares its "
            f"{'query' if queries < 2 else 'code'} with all the others, so no batch can hold two of them "
            "and training would see no negatives (loss 0); give pairs with different queries and codes"
        )
    if min(queries, codes) < batch_size:
        logger.warning(
            "%s%s: batches hold at most %d pairs, fewer than batch_size %d",
            where,
            counts,
            min(queries, codes),
            batch_size,
        )


class BucketBatchSampler:
    """Endless batches of pair ids: similar lengths together, no duplicate keys in a batch.

    Each epoch, pairs are shuffled and cut into windows of ``window`` batches; a
    window is sorted by code length, then query length, and cut into batches, which are
    then shuffled across the epoch. A pair whose code key or query key is already in the
    batch being filled waits for a later batch (it would be a false in-batch negative).
    Pairs that find no place in their window move on to the next; at the end of the epoch
    they form the last, possibly smaller, batches, so every pair of the epoch is used.

    File weights (``pairs.files``, from ``data.train_files``) set what an epoch holds: a
    file of weight w contributes each of its pairs floor(w) times, plus round(frac(w) x its
    pairs) more drawn without replacement by ``numpy.random.default_rng([seed, epoch,
    file])``: weight 2 repeats every pair twice, 0.5 draws a different half each epoch. The
    epoch depends on ``seed`` and its number only, so the saved position resumes it exactly.
    Copies of a pair never share a batch (their keys are the same).

    With ``num_replicas > 1`` every rank computes the same epoch (same ``seed``), keeps
    only full batches, drops the remainder so the count divides evenly, and takes batches
    ``rank, rank + num_replicas, ...``: all ranks get the same number of equal-size batches.
    """

    def __init__(
        self,
        pairs: PairSet,
        batch_size: int,
        *,
        seed: int = 0,
        window: int = 64,
        num_replicas: int = 1,
        rank: int = 0,
    ):
        count = len(pairs)
        if count == 0:
            raise DualencError("no pairs to batch")
        if batch_size < 1 or window < 1:
            raise ValueError("batch_size and window must be >= 1")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} outside 0..{num_replicas - 1}")
        check_batchable(pairs, batch_size)
        if num_replicas > 1 and count < batch_size * num_replicas:
            raise DualencError(
                f"{count} pairs cannot fill one batch of {batch_size} for each of {num_replicas} replicas"
            )
        self.code_lengths = pairs.code_ids.lengths
        self.query_lengths = pairs.query_ids.lengths
        # plain ints: set lookups on numpy scalars are several times slower
        self._code_key = np.asarray(pairs.code_key).tolist()
        self._query_key = np.asarray(pairs.query_key).tolist()
        self.files = [(file.start, file.stop, file.weight) for file in pairs.files]
        self.batch_size = batch_size
        self.window = window
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0
        self.position = 0  # batches of ``epoch`` already handed out to this rank
        self._memo: tuple[int, list[np.ndarray]] | None = None
        # tokens computed and padded in the batches handed out since ``padding_fraction()``
        self._computed = 0
        self._padded = 0

    def _fill(self, ordered: list[int], final: bool) -> tuple[list[list[int]], list[int]]:
        """Batches cut from ``ordered`` and the pairs left over (none when ``final``)."""
        batches: list[list[int]] = []
        pending = ordered
        while pending:
            batch: list[int] = []
            deferred: list[int] = []
            codes: set[int] = set()
            queries: set[int] = set()
            for index, pair in enumerate(pending):
                if len(batch) == self.batch_size:
                    deferred.extend(pending[index:])
                    break
                code, query = self._code_key[pair], self._query_key[pair]
                if code in codes or query in queries:
                    deferred.append(pair)
                    continue
                batch.append(pair)
                codes.add(code)
                queries.add(query)
            if len(batch) < self.batch_size and not final:
                return batches, pending
            batches.append(batch)
            pending = deferred
        return batches, []

    def epoch_pairs(self, epoch: int) -> np.ndarray:
        """The pair ids of ``epoch`` by the file weights, before shuffling (see the class)."""
        if all(weight == 1 for _, _, weight in self.files):
            return np.arange(len(self.code_lengths))
        parts = []
        for index, (start, stop, weight) in enumerate(self.files):
            ids = np.arange(start, stop)
            parts += [ids] * int(weight)
            draw = int((weight - int(weight)) * len(ids) + 0.5)
            if draw:
                chosen = np.random.default_rng([self.seed, epoch, index]).choice(
                    len(ids), draw, replace=False
                )
                parts.append(ids[np.sort(chosen)])
        if not parts:
            raise DualencError(f"the train file weights leave epoch {epoch} without pairs")
        return np.concatenate(parts)

    def _all_batches(self, epoch: int) -> list[list[int]]:
        """The whole epoch's batches, in order, before sharding."""
        rng = np.random.default_rng([self.seed, epoch])
        ids = self.epoch_pairs(epoch)
        order = ids[rng.permutation(len(ids))]
        window = self.window * self.batch_size
        batches: list[list[int]] = []
        leftover = np.zeros(0, dtype=order.dtype)
        for start in range(0, len(order), window):
            ids = np.concatenate([leftover, order[start : start + window]])
            ids = ids[np.lexsort((self.query_lengths[ids], self.code_lengths[ids]))]
            filled, left = self._fill(ids.tolist(), final=False)
            batches.extend(filled)
            leftover = np.asarray(left, dtype=order.dtype)
        batches.extend(self._fill(leftover.tolist(), final=True)[0])
        return [batches[i] for i in rng.permutation(len(batches))]

    def epoch_batches(self, epoch: int) -> list[np.ndarray]:
        """This rank's batches of ``epoch``: arrays of pair ids."""
        if self._memo is None or self._memo[0] != epoch:
            batches = self._all_batches(epoch)
            if self.num_replicas > 1:
                batches = [batch for batch in batches if len(batch) == self.batch_size]
                usable = len(batches) // self.num_replicas * self.num_replicas
                batches = batches[self.rank : usable : self.num_replicas]
            if not batches:
                raise DualencError(
                    f"epoch {epoch} has no batch for rank {self.rank}: too few distinct pairs for "
                    f"{self.num_replicas} replicas of batch size {self.batch_size}"
                )
            self._memo = (epoch, [np.asarray(batch, dtype=np.int64) for batch in batches])
        return self._memo[1]

    def __iter__(self) -> Iterator[np.ndarray]:
        while True:
            batches = self.epoch_batches(self.epoch)
            if self.position >= len(batches):
                self.epoch += 1
                self.position = 0
                continue
            batch = batches[self.position]
            self.position += 1
            for lengths in (self.query_lengths[batch], self.code_lengths[batch]):
                computed = computed_tokens(lengths)
                self._computed += computed
                self._padded += computed - int(lengths.sum())
            yield batch

    def padding_fraction(self) -> float:
        """Padding share (both sides) of the batches handed out since the previous call."""
        fraction = self._padded / self._computed if self._computed else 0.0
        self._computed = self._padded = 0
        return fraction

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])

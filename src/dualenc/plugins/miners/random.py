"""``random``: uniformly random negatives from the training pairs (or the codes of
``dualenc mine --corpus``), with the same filters.

The baseline a hard-negative miner has to beat: extra negatives that cost no search. A
draw that is the pair itself or a duplicate of its positive (same code key or query key) is
redrawn; there are no scores, so no margin filter.
"""

from __future__ import annotations

import time

import attrs
import numpy as np

from dualenc import Register, at_least, hookimpl
from dualenc.plugins.miners.common import RoundCounts, RoundMiner, RoundResult, excluded_candidates

# Vectorised draws for every row still short; after these, the few rows left (a pair whose
# duplicates are a large share of the corpus) are sampled exactly from their eligible pairs.
VECTOR_DRAW_ROUNDS = 4


@attrs.frozen
class RandomMinerOptions:
    num_negatives: int = attrs.field(default=4, validator=at_least(1))
    # redraw every this many steps; None or 0: draw once, before the first step
    refresh_every: int | None = attrs.field(default=500, validator=at_least(0))
    # also treat codes equal up to identifier names as clones of the positive
    normalise_identifiers: bool = False
    seed: int = 0


class RandomMiner(RoundMiner):
    name = "random"

    def mine_round(self, encoder, corpus, candidates, rng) -> RoundResult:
        started = time.perf_counter()
        num_pairs, num_codes, wanted = len(corpus), len(candidates), self.options.num_negatives
        negatives = np.full((num_pairs, wanted), -1, dtype=np.int64)
        filled = np.zeros(num_pairs, dtype=np.int64)
        counts = RoundCounts()
        for _ in range(VECTOR_DRAW_ROUNDS):
            rows = np.flatnonzero(filled < wanted)
            if not len(rows):
                break
            draws = rng.integers(0, num_codes, size=(len(rows), wanted))
            itself, duplicate = excluded_candidates(draws, rows, candidates)
            counts.duplicates += int(duplicate.sum())
            for column in range(wanted):
                candidate = draws[:, column]
                repeat = (negatives[rows] == candidate[:, None]).any(axis=1)
                take = ~itself[:, column] & ~duplicate[:, column] & ~repeat & (filled[rows] < wanted)
                negatives[rows[take], filled[rows[take]]] = candidate[take]
                filled[rows[take]] += 1
        for row in np.flatnonzero(filled < wanted):
            same = np.zeros(num_codes, dtype=bool)
            for pair_key, candidate_key in candidates.keys:
                same |= candidate_key == pair_key[row]
            if candidates.pairs_themselves:
                same[row] = True
            same[negatives[row, : filled[row]]] = True
            eligible = np.flatnonzero(~same)
            extra = rng.choice(eligible, size=min(len(eligible), wanted - filled[row]), replace=False)
            negatives[row, filled[row] : filled[row] + len(extra)] = extra
            filled[row] += len(extra)
        counts.kept = int(filled.sum())
        counts.short = int((filled < wanted).sum())
        return RoundResult(
            negatives=negatives,
            counts=counts,
            timings={"mining/sample_seconds": time.perf_counter() - started},
            provenance={},
        )


@hookimpl
def register_miners(register: Register):
    register(
        "random",
        RandomMiner,
        options=RandomMinerOptions,
        description="Random negatives from the training pairs (clones and same-query pairs excluded).",
    )

"""What the ``faiss``, ``random`` and ``bm25`` miners share.

A mining round turns, for every training pair, a ranked list of candidate codes (the
training pairs' own or, for ``dualenc mine --corpus``, another corpus': ``Candidates``) into
``num_negatives`` negatives:

1. Candidates that are the positive again are *excluded*: the pair itself, a clone of its
   code (same normalised-code key, optionally also the identifier-normalised key) and
   another pair of the same query (same query key; not for an external corpus). They do not
   take up a rank, which is why a search asks for a few more than ``range_max`` results.
2. The rest are ranked from 0 by score; ranks ``range_min <= rank < range_max`` form the
   window. The top ``range_min`` are skipped: the best-scoring codes are the likeliest
   unlabelled positives.
3. In the window, candidates scoring above the query's threshold (``positive_score - margin``,
   ``positive_score * (1 - relative_margin)``) are *removed* as probable false negatives, then
   those scoring above ``max_score`` or below ``min_score``.
4. ``num_negatives`` of the survivors are taken: sampled with the round's generator
   (``sampling: random``) or the best-ranked (``sampling: top``); -1 fills the rest of a row
   that had too few ("short").

Each round uses ``numpy.random.default_rng([seed, step])``: its result depends on the seed
and the step only, so the state to save is the negatives themselves.
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import time
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch

from dualenc import atomic_write_json

log = logging.getLogger("dualenc.mining")

MANIFEST_DIR = "mining"


def round_rng(seed: int, step: int) -> np.random.Generator:
    return np.random.default_rng([seed, step])


def check_window(options, attribute, range_max):
    """attrs validator of ``range_max``: the rank window must not be empty."""
    if range_max <= options.range_min:
        raise ValueError(f"must be > range_min ({options.range_min}) (got {range_max})")


def duplicate_keys(corpus, normalise_identifiers: bool) -> list[np.ndarray]:
    """Per-pair int64 keys; two pairs equal in any of them are the same positive.

    The identifier-normalised key is computed here, only for miners that ask for it; it
    re-tokenizes every code (seconds for thousands), so miners keep the result.
    """
    keys = [np.asarray(corpus.code_key, dtype=np.int64), np.asarray(corpus.query_key, dtype=np.int64)]
    if normalise_identifiers:
        from dualenc import normalised_code_key

        keys.append(
            np.fromiter(
                (normalised_code_key(code, normalise_identifiers=True) for code in corpus.codes),
                dtype=np.int64,
                count=len(corpus),
            )
        )
    return keys


class Candidates:
    """The codes one round draws negatives from; a negative is an index into ``codes``.

    ``keys`` pairs each dedup key of the training pairs with the same key of the candidates:
    a candidate equal to a pair's positive in one of them is excluded. ``pairs_themselves``:
    the candidates are the training pairs, so candidate i of pair i is the pair itself.
    """

    def __init__(self, codes, keys, pairs_themselves: bool, token_ids=None):
        self.codes = codes
        self.keys: list[tuple[np.ndarray, np.ndarray]] = keys
        self.pairs_themselves = pairs_themselves
        self._token_ids = token_ids

    @classmethod
    def of_pairs(cls, corpus, keys: list[np.ndarray]) -> Candidates:
        return cls(corpus.codes, [(key, key) for key in keys], True, corpus.token_ids("code"))

    @classmethod
    def of_codes(cls, codes, pair_keys: list[np.ndarray], normalise_identifiers: bool) -> Candidates:
        """Other codes than the pairs': only the code keys apply (they have no queries)."""
        keys = [(pair_keys[0], _code_keys(codes, normalise_identifiers=False))]
        if normalise_identifiers:
            keys.append((pair_keys[2], _code_keys(codes, normalise_identifiers=True)))
        return cls(list(codes), keys, False)

    def __len__(self) -> int:
        return len(self.codes)

    def token_ids(self, encoder):
        """The code side's token ids; an external corpus is tokenized on first use."""
        if self._token_ids is None:
            self._token_ids = [
                np.asarray(ids, dtype=np.int32) for ids in encoder.tokenize(self.codes, "code")
            ]
        return self._token_ids


def _code_keys(codes, normalise_identifiers: bool) -> np.ndarray:
    from dualenc import normalised_code_key

    return np.fromiter(
        (normalised_code_key(code, normalise_identifiers=normalise_identifiers) for code in codes),
        dtype=np.int64,
        count=len(codes),
    )


def duplicate_counts(candidates: Candidates) -> np.ndarray:
    """An upper bound, per pair, on the candidates other than the pair itself that share one
    of its keys."""
    counts = np.zeros(len(candidates.keys[0][0]), dtype=np.int64)
    for pair_key, candidate_key in candidates.keys:
        ordered = np.sort(candidate_key)
        counts += np.searchsorted(ordered, pair_key, "right") - np.searchsorted(ordered, pair_key, "left")
        counts -= int(candidates.pairs_themselves)
    return counts


def excluded_candidates(
    candidate_ids: np.ndarray, query_ids: np.ndarray, candidates: Candidates
) -> tuple[np.ndarray, np.ndarray]:
    """Two [C, k] bool masks: missing (-1) or the pair itself; a duplicate of the positive."""
    missing = candidate_ids < 0
    ids = np.where(missing, 0, candidate_ids)
    itself = missing | (ids == query_ids[:, None]) if candidates.pairs_themselves else missing
    duplicate = np.zeros_like(itself)
    for pair_key, candidate_key in candidates.keys:
        duplicate |= candidate_key[ids] == pair_key[query_ids][:, None]
    return itself, duplicate & ~itself


def check_score_range(options, attribute, max_score):
    """attrs validator of ``max_score``: no score can be both above min_score and below it."""
    if max_score is not None and options.min_score is not None and max_score < options.min_score:
        raise ValueError(f"must be >= min_score ({options.min_score}) (got {max_score})")


@attrs.define
class RoundCounts:
    """What one round's filters did, summed over its rows."""

    kept: int = 0
    # excluded as the positive again, among the candidates a search reached before the window ended
    duplicates: int = 0
    margin: int = 0
    # in the window, above max_score or below min_score (and not already removed by the margin)
    score: int = 0
    short: int = 0
    # sum of positive minus negative score over the kept negatives; None where unscored
    gap_sum: float | None = None

    @property
    def filtered(self) -> int:
        return self.duplicates + self.margin + self.score

    def as_dict(self) -> dict[str, int]:
        return {
            "kept": self.kept,
            "filtered": self.filtered,
            "filtered_duplicates": self.duplicates,
            "filtered_margin": self.margin,
            "filtered_score": self.score,
            "short": self.short,
        }


def sample_window(
    candidate_ids: np.ndarray,
    rows: np.ndarray,
    candidates: Candidates,
    options,
    rng: np.random.Generator,
    counts: RoundCounts,
    scores: np.ndarray | None = None,
    thresholds: np.ndarray | None = None,
    positive_scores: np.ndarray | None = None,
) -> np.ndarray:
    """[C, num_negatives] negatives for pairs ``rows`` from their ranked candidates [C, k]
    (best first), -1 where short: taken from ranks ``options.range_min`` to ``range_max`` among
    the candidates that are neither the pair itself nor a duplicate of it.

    ``scores`` [C, k] and ``thresholds`` (per row) turn on the margin filter; ``scores`` also
    the ``min_score``/``max_score`` filters of options that have them. ``options.sampling``
    (``random`` where absent): ``random`` draws among the survivors, ``top`` takes the
    best-ranked. ``positive_scores`` adds the score gap to ``counts``.
    """
    range_min, range_max, num_negatives = options.range_min, options.range_max, options.num_negatives
    itself, duplicate = excluded_candidates(candidate_ids, rows, candidates)
    depth = candidate_ids.shape[1]
    eligible = ~(itself | duplicate)
    eligible_before = np.cumsum(eligible, axis=1) - eligible  # eligible candidates ranked above
    counts.duplicates += int((duplicate & (eligible_before < range_max)).sum())
    in_window = eligible & (eligible_before >= range_min) & (eligible_before < range_max)
    if thresholds is not None:
        too_close = in_window & (scores > thresholds[:, None])
        counts.margin += int(too_close.sum())
        in_window &= ~too_close
    min_score, max_score = getattr(options, "min_score", None), getattr(options, "max_score", None)
    if scores is not None and (min_score is not None or max_score is not None):
        outside = np.zeros_like(in_window)
        if max_score is not None:
            outside |= scores > max_score
        if min_score is not None:
            outside |= scores < min_score
        outside &= in_window
        counts.score += int(outside.sum())
        in_window &= ~outside
    if getattr(options, "sampling", "random") == "top":
        # a stable sort of "not kept" leaves the survivors first, in rank order
        order = np.argsort(~in_window, axis=1, kind="stable")[:, :num_negatives]
    else:
        draws = rng.random((len(rows), depth))
        draws[~in_window] = np.inf
        order = np.argsort(draws, axis=1, kind="stable")[:, :num_negatives]
    picked = np.take_along_axis(candidate_ids, order, axis=1)
    valid = np.take_along_axis(in_window, order, axis=1)
    negatives = np.full((len(rows), num_negatives), -1, dtype=np.int64)
    negatives[:, : order.shape[1]] = np.where(valid, picked, -1)
    kept_per_row = valid.sum(axis=1)
    counts.kept += int(kept_per_row.sum())
    counts.short += int((kept_per_row < num_negatives).sum())
    if positive_scores is not None:
        counts.gap_sum = counts.gap_sum or 0.0
        picked_scores = np.take_along_axis(scores, order, axis=1)
        counts.gap_sum += float(((positive_scores[:, None] - picked_scores) * valid).sum())
    return negatives


def churn(previous: np.ndarray, current: np.ndarray, chunk: int = 65536) -> float:
    """Share of the current negatives that were not among the same row's previous ones."""
    changed, total = 0, 0
    for start in range(0, len(current), chunk):
        now, before = current[start : start + chunk], previous[start : start + chunk]
        valid = now >= 0
        kept = (now[:, :, None] == before[:, None, :]).any(axis=2) & valid
        changed += int(valid.sum() - kept.sum())
        total += int(valid.sum())
    return changed / total if total else 0.0


def array_sha256(*arrays: np.ndarray) -> str:
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(np.ascontiguousarray(array))
    return digest.hexdigest()


def encoder_sha256(encoder: torch.nn.Module) -> str:
    """A hash of the weights (names, dtypes, shapes, bytes): which model mined a round."""
    digest = hashlib.sha256()
    for name, tensor in sorted(encoder.state_dict().items()):
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def write_manifest(run_dir: Path, step: int, record: dict[str, Any]) -> Path:
    """``run_dir/mining/round-<step>.json``, written whole or not at all."""
    directory = Path(run_dir) / MANIFEST_DIR
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"round-{step:07d}.json"
    atomic_write_json(path, record)  # a failed write leaves no temporary file behind
    return path


@attrs.define
class RoundResult:
    """What a miner's round returns to ``RoundMiner.mine``."""

    negatives: np.ndarray  # [N, num_negatives] int64
    counts: RoundCounts
    timings: dict[str, float]  # metric name -> seconds, e.g. "mining/encode_seconds"
    provenance: dict[str, Any]  # miner-specific manifest fields (index, encoder hash, ...)


@attrs.define
class MinedRound:
    """What ``RoundMiner.run_round`` returns: the negatives and what explains them."""

    negatives: np.ndarray  # [N, num_negatives] int64, -1 where short
    counts: RoundCounts
    metrics: dict[str, float]
    record: dict[str, Any]  # the round's manifest fields


class RoundMiner:
    """The schedule, the negatives of the last round, their state, metrics and manifests.

    A subclass sets ``name`` and ``options`` (with ``num_negatives``, ``seed`` and
    ``normalise_identifiers``) and implements ``mine_round``; ``refresh_every`` of None or 0
    mines once, before the first step.
    """

    name: str

    def __init__(self, options):
        self.options = options
        self.num_negatives = options.num_negatives
        self._negatives: np.ndarray | None = None
        self._last_step: int | None = None
        self._keys: tuple[Any, list[np.ndarray]] | None = None  # (corpus, its duplicate keys)

    @property
    def refresh_every(self) -> int | None:
        return getattr(self.options, "refresh_every", None)

    def due(self, step: int) -> bool:
        if self._negatives is None:
            return True
        if not self.refresh_every or step == self._last_step:
            return False
        return step % self.refresh_every == 0

    def mine_round(self, encoder, corpus, candidates: Candidates, rng: np.random.Generator) -> RoundResult:
        raise NotImplementedError

    def run_round(self, encoder, corpus, step: int, codes=None) -> MinedRound:
        """One round for the pairs of ``corpus`` at ``step``, with ``round_rng(seed, step)``;
        the miner's state is left as it was. ``codes``: draw the negatives from these codes
        instead of the pairs' own (a negative is then an index into ``codes``)."""
        started = time.perf_counter()
        if self._keys is None or self._keys[0] is not corpus:  # the loop passes one corpus throughout
            self._keys = (corpus, duplicate_keys(corpus, self.options.normalise_identifiers))
        keys = self._keys[1]
        if codes is None:
            candidates = Candidates.of_pairs(corpus, keys)
        else:
            candidates = Candidates.of_codes(codes, keys, self.options.normalise_identifiers)
        result = self.mine_round(encoder, corpus, candidates, round_rng(self.options.seed, step))
        counts = result.counts
        metrics = {
            **result.timings,
            "mining/filtered": float(counts.filtered),
            "mining/short": float(counts.short),
        }
        if counts.gap_sum is not None and counts.kept:
            metrics["mining/score_gap"] = counts.gap_sum / counts.kept
        record = {
            "miner": self.name,
            "step": step,
            "num_pairs": len(corpus),
            "corpus_sha256": array_sha256(keys[0], keys[1]),
            **({} if codes is None else {"num_candidates": len(candidates)}),
            **result.provenance,
            "options": attrs.asdict(self.options),
            "round_seed": [self.options.seed, step],
            "counts": counts.as_dict(),
            "negatives_sha256": array_sha256(result.negatives),
        }
        metrics["mining/seconds"] = time.perf_counter() - started
        return MinedRound(negatives=result.negatives, counts=counts, metrics=metrics, record=record)

    def mine(self, encoder, corpus, step: int, run_dir: Path) -> dict[str, float]:
        mined = self.run_round(encoder, corpus, step)
        metrics, record, counts = mined.metrics, mined.record, mined.counts
        if self._negatives is not None and self._negatives.shape == mined.negatives.shape:
            metrics["mining/churn"] = churn(self._negatives, mined.negatives)
        self._negatives, self._last_step = mined.negatives, step
        record["metrics"] = metrics
        record["time"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        path = write_manifest(run_dir, step, record)
        log.info(
            "%s mining at step %d: %d negatives kept, %d filtered, %d pairs short, %.1fs (%s)",
            self.name,
            step,
            counts.kept,
            counts.filtered,
            counts.short,
            metrics["mining/seconds"],
            path,
        )
        return metrics

    def negatives(self, pair_ids: np.ndarray) -> np.ndarray:
        if self._negatives is None:
            raise RuntimeError(f"the {self.name} miner has not mined yet: call mine() when due()")
        return self._negatives[np.asarray(pair_ids)]

    def state_dict(self) -> dict[str, Any]:
        if self._negatives is None:
            return {"last_step": None}
        return {"negatives": self._negatives, "last_step": self._last_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        negatives = state.get("negatives")
        self._negatives = None if negatives is None else np.asarray(negatives, dtype=np.int64)
        self._last_step = state.get("last_step")

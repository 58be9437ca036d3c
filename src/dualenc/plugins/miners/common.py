"""What the ``faiss``, ``random`` and ``bm25`` miners share.

A mining round turns, for every training pair, a ranked list of candidate pairs into
``num_negatives`` negatives:

1. Candidates that are the positive again are *excluded*: the pair itself, a clone of its
   code (same normalised-code key, optionally also the identifier-normalised key) and
   another pair of the same query (same query key). They do not take up a rank, which is
   why a search asks for a few more than ``range_max`` results.
2. The rest are ranked from 0 by score; ranks ``range_min <= rank < range_max`` form the
   window. The top ``range_min`` are skipped: the best-scoring codes are the likeliest
   unlabelled positives.
3. In the window, candidates scoring above the query's threshold (``positive_score - margin``,
   ``positive_score * (1 - relative_margin)``) are *removed* as probable false negatives.
4. ``num_negatives`` of the survivors are sampled with the round's generator; -1 fills the
   rest of a row that had too few ("short").

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


def duplicate_counts(keys: list[np.ndarray]) -> np.ndarray:
    """An upper bound, per pair, on the other pairs that share one of its keys."""
    counts = np.zeros(len(keys[0]), dtype=np.int64)
    for key in keys:
        _, inverse, sizes = np.unique(key, return_inverse=True, return_counts=True)
        counts += sizes[inverse.reshape(-1)] - 1
    return counts


def excluded_candidates(
    candidate_ids: np.ndarray, query_ids: np.ndarray, keys: list[np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Two [C, k] bool masks: missing (-1) or the pair itself; a duplicate of the positive."""
    missing = candidate_ids < 0
    ids = np.where(missing, 0, candidate_ids)
    itself = missing | (ids == query_ids[:, None])
    duplicate = np.zeros_like(itself)
    for key in keys:
        duplicate |= key[ids] == key[query_ids][:, None]
    return itself, duplicate & ~itself


@attrs.define
class RoundCounts:
    """What one round's filters did, summed over its rows."""

    kept: int = 0
    # excluded as the positive again, among the candidates a search reached before the window ended
    duplicates: int = 0
    margin: int = 0
    short: int = 0
    # sum of positive minus negative score over the kept negatives; None where unscored
    gap_sum: float | None = None

    @property
    def filtered(self) -> int:
        return self.duplicates + self.margin

    def as_dict(self) -> dict[str, int]:
        return {
            "kept": self.kept,
            "filtered": self.filtered,
            "filtered_duplicates": self.duplicates,
            "filtered_margin": self.margin,
            "short": self.short,
        }


def sample_window(
    candidate_ids: np.ndarray,
    rows: np.ndarray,
    keys: list[np.ndarray],
    options,
    rng: np.random.Generator,
    counts: RoundCounts,
    scores: np.ndarray | None = None,
    thresholds: np.ndarray | None = None,
    positive_scores: np.ndarray | None = None,
) -> np.ndarray:
    """[C, num_negatives] negatives for pairs ``rows`` from their ranked candidates [C, k]
    (best first), -1 where short: drawn from ranks ``options.range_min`` to ``range_max`` among
    the candidates that are neither the pair itself nor a duplicate of it (by ``keys``).

    ``scores`` and ``thresholds`` (per row) turn on the margin filter; ``positive_scores``
    adds the score gap to ``counts``.
    """
    range_min, range_max, num_negatives = options.range_min, options.range_max, options.num_negatives
    itself, duplicate = excluded_candidates(candidate_ids, rows, keys)
    depth = candidate_ids.shape[1]
    eligible = ~(itself | duplicate)
    eligible_before = np.cumsum(eligible, axis=1) - eligible  # eligible candidates ranked above
    counts.duplicates += int((duplicate & (eligible_before < range_max)).sum())
    in_window = eligible & (eligible_before >= range_min) & (eligible_before < range_max)
    if thresholds is not None:
        too_close = in_window & (scores > thresholds[:, None])
        counts.margin += int(too_close.sum())
        in_window &= ~too_close
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

    def mine_round(self, encoder, corpus, keys: list[np.ndarray], rng: np.random.Generator) -> RoundResult:
        raise NotImplementedError

    def mine(self, encoder, corpus, step: int, run_dir: Path) -> dict[str, float]:
        started = time.perf_counter()
        if self._keys is None or self._keys[0] is not corpus:  # the loop passes one corpus throughout
            self._keys = (corpus, duplicate_keys(corpus, self.options.normalise_identifiers))
        keys = self._keys[1]
        result = self.mine_round(encoder, corpus, keys, round_rng(self.options.seed, step))
        counts = result.counts
        metrics = {
            **result.timings,
            "mining/filtered": float(counts.filtered),
            "mining/short": float(counts.short),
        }
        if counts.gap_sum is not None and counts.kept:
            metrics["mining/score_gap"] = counts.gap_sum / counts.kept
        if self._negatives is not None and self._negatives.shape == result.negatives.shape:
            metrics["mining/churn"] = churn(self._negatives, result.negatives)
        self._negatives, self._last_step = result.negatives, step
        record = {
            "miner": self.name,
            "step": step,
            "num_pairs": len(corpus),
            "corpus_sha256": array_sha256(keys[0], keys[1]),
            **result.provenance,
            "options": attrs.asdict(self.options),
            "round_seed": [self.options.seed, step],
            "counts": counts.as_dict(),
            "negatives_sha256": array_sha256(result.negatives),
        }
        metrics["mining/seconds"] = time.perf_counter() - started
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

"""Hybrid search: the dense and the lexical ranking of a query fused into one.

Per query the candidates are the union of the dense top ``candidates`` and the lexical top
``candidates`` (documents sharing at least one word with the query), ``candidates`` at least
the k asked for; both scores of every candidate are exact. Two fusions:

- ``interpolate``: each score min-max normalised over the query's candidates (a constant
  score normalises to 0), then ``weight * dense + (1 - weight) * lexical``; weight 1 is the
  dense ranking, 0 the lexical one (ties broken by the dense score).
- ``rrf``: reciprocal rank fusion, the sum of ``1 / (rrf_k + rank)`` over the lists that hold
  the candidate (its rank in that list's top ``candidates``, from 1), ``rrf_k`` 60.

Fused scores order the candidates, ties by the dense score, then by id. The same function
ranks an index's candidates (``Retriever``), an evaluation pool (``Fusion.pool_scores``) and the
tuning queries of a build (``index build --tune-queries``).
"""

from __future__ import annotations

from typing import Any

import attrs
import numpy as np

from dualenc.errors import DualencError
from dualenc.validators import at_least, at_most, one_of

MODES = ("dense", "lexical", "hybrid")
METHODS = ("interpolate", "rrf")
# chosen on 1,000 stdlib training pairs with the zero-shot all-MiniLM-L6-v2 (README, Index and
# search); an index built with query/code pairs as --tune-queries records its own
DEFAULT_METHOD = "interpolate"
DEFAULT_WEIGHT = 0.8
RRF_K = 60
CANDIDATES = 100
# the settings a build's tuning tries: every interpolation weight in steps of 0.1, and RRF
WEIGHT_GRID = tuple(round(0.1 * step, 1) for step in range(11))


@attrs.frozen
class Fusion:
    """How hybrid search fuses the dense and the lexical scores of a query's candidates."""

    method: str = attrs.field(default=DEFAULT_METHOD, validator=one_of(*METHODS))
    # the dense score's weight in an interpolation (the lexical one's is 1 - weight)
    weight: float = attrs.field(
        default=DEFAULT_WEIGHT, converter=float, validator=[at_least(0.0), at_most(1.0)]
    )
    rrf_k: int = attrs.field(default=RRF_K, validator=at_least(1))
    # each ranking's top this many (or k, when more) are the candidates
    candidates: int = attrs.field(default=CANDIDATES, validator=at_least(1))

    @property
    def label(self) -> str:
        return f"interpolate:{self.weight:.1f}" if self.method == "interpolate" else "rrf"

    def describe(self) -> str:
        if self.method == "interpolate":
            return f"interpolate, dense weight {self.weight:g}"
        return f"rrf, k={self.rrf_k}"

    def fuse(
        self, dense: np.ndarray, lexical: np.ndarray, dense_rank: np.ndarray, lexical_rank: np.ndarray
    ) -> np.ndarray:
        """Fused scores of one query's candidates: their dense and lexical scores, and their
        1-based ranks in the dense and the lexical top lists (0: not in that list)."""
        if self.method == "rrf":
            fused = np.zeros(len(dense), dtype=np.float64)
            for ranks in (dense_rank, lexical_rank):
                held = ranks > 0
                fused[held] += 1.0 / (self.rrf_k + ranks[held])
            return fused
        return self.weight * _min_max(dense) + (1.0 - self.weight) * _min_max(lexical)

    def pool_scores(self, dense: np.ndarray, lexical: np.ndarray, k: int = 1) -> np.ndarray:
        """[Q, N] fused scores of a pool whose every dense and lexical score is known ([Q, N]
        each): each query's candidates as a search for ``k`` gathers them, the rest -inf."""
        from dualenc.core.lexical import top_columns

        depth = max(k, self.candidates)
        fused = np.full(dense.shape, -np.inf, dtype=np.float64)
        for row in range(len(dense)):
            dense_top = top_columns(dense[row], depth)
            lexical_top = top_columns(lexical[row], depth, positive=True)
            union, dense_rank, lexical_rank = candidates(dense_top, lexical_top)
            fused[row, union] = self.fuse(dense[row, union], lexical[row, union], dense_rank, lexical_rank)
        return fused

    def manifest_entry(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "weight": self.weight,
            "rrf_k": self.rrf_k,
            "candidates": self.candidates,
        }

    @classmethod
    def from_manifest(cls, entry: Any, where: str) -> Fusion:
        """The fusion a manifest records; a malformed entry is an error naming ``where``."""
        if not isinstance(entry, dict):
            raise DualencError(f"{where}: fusion must be an object, got {entry!r:.60}; rebuild the index")
        try:
            return cls(
                method=entry["method"],
                weight=entry.get("weight", DEFAULT_WEIGHT),
                rrf_k=entry.get("rrf_k", RRF_K),
                candidates=entry.get("candidates", CANDIDATES),
            )
        except KeyError:
            raise DualencError(f"{where}: missing key 'fusion.method'; rebuild the index") from None
        except (TypeError, ValueError) as exc:
            raise DualencError(f"{where}: fusion: {exc}; rebuild the index") from None

    def with_overrides(self, method: str | None = None, weight: float | None = None) -> Fusion:
        """This fusion with a search's own choices: a weight alone means interpolation."""
        if method is not None and method not in METHODS:
            raise DualencError(f"fusion must be one of {', '.join(METHODS)} (got {method!r})")
        if weight is not None:
            if method == "rrf":
                raise DualencError("weight: applies to interpolation only, not to fusion 'rrf'")
            if not 0.0 <= weight <= 1.0:
                raise DualencError(f"weight must be between 0 and 1 (got {weight})")
            return attrs.evolve(self, method="interpolate", weight=weight)
        if method is not None:
            return attrs.evolve(self, method=method)
        return self


def _min_max(scores: np.ndarray) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64)
    if not len(scores):
        return scores
    low, high = scores.min(), scores.max()
    if high <= low:
        return np.zeros(len(scores))
    return (scores - low) / (high - low)


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise DualencError(f"mode must be one of {', '.join(MODES)} (got {mode!r})")
    return mode


def candidates(dense_ids: np.ndarray, lexical_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(union of the ids, each one's 1-based rank in ``dense_ids``, in ``lexical_ids``; 0:
    absent) of two best-first id lists, each without repeats; dense ids come first, in their
    order."""
    dense_ids, lexical_ids = np.asarray(dense_ids, dtype=np.int64), np.asarray(lexical_ids, dtype=np.int64)
    # each dense id's lexical rank, by binary search in the sorted lexical ids
    if len(lexical_ids):
        by_id = np.argsort(lexical_ids)
        at = by_id[np.minimum(np.searchsorted(lexical_ids[by_id], dense_ids), len(lexical_ids) - 1)]
        dense_lexical_rank = np.where(lexical_ids[at] == dense_ids, at + 1, 0)
    else:
        dense_lexical_rank = np.zeros(len(dense_ids), dtype=np.int64)
    extra = np.ones(len(lexical_ids), dtype=bool)
    extra[dense_lexical_rank[dense_lexical_rank > 0] - 1] = False
    union = np.concatenate([dense_ids, lexical_ids[extra]])
    dense_rank = np.zeros(len(union), dtype=np.int64)
    dense_rank[: len(dense_ids)] = np.arange(1, len(dense_ids) + 1)
    lexical_rank = np.concatenate([dense_lexical_rank, np.flatnonzero(extra) + 1])
    return union, dense_rank, lexical_rank


def order(fused: np.ndarray, dense: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Positions of the candidates best first: by fused score, then dense score, then id."""
    return np.lexsort((ids, -dense, -fused))


@attrs.frozen(eq=False)
class Candidates:
    """One query's candidates: ids, exact dense and lexical scores, ranks in each top list."""

    ids: np.ndarray
    dense: np.ndarray
    lexical: np.ndarray
    dense_rank: np.ndarray
    lexical_rank: np.ndarray

    def fused(self, fusion: Fusion) -> np.ndarray:
        return fusion.fuse(self.dense, self.lexical, self.dense_rank, self.lexical_rank)


def gather(
    query_vectors: np.ndarray,
    texts: list[str],
    depth: int,
    dense_search,
    vectors_of,
    lexical,
    where: str = "lexical index",
) -> list[Candidates]:
    """Each query's candidates: the union of ``dense_search(vectors, depth)``'s ids (faiss's
    (scores, ids), -1 for none) and the lexical index's top ``depth``; dense scores are the
    inner products with ``vectors_of(ids)``, so both scores are exact for every candidate."""
    from dualenc.core.lexical import top_columns

    query_vectors = np.ascontiguousarray(query_vectors, dtype=np.float32)
    _, found = dense_search(query_vectors, depth)
    # one row of document scores, zeroed per query: a fresh one would page-fault on every write
    row_scores = np.zeros(lexical.count, dtype=np.float64)
    gathered = []
    for query, text in enumerate(texts):
        if query:
            row_scores.fill(0.0)
        lexical.score_row(text, row_scores)
        dense_ids = found[query][found[query] >= 0]
        lexical_ids = lexical.ids[top_columns(row_scores, depth, positive=True)]
        union, dense_rank, lexical_rank = candidates(dense_ids, lexical_ids)
        dense = vectors_of(union) @ query_vectors[query] if len(union) else np.zeros(0)
        lexical_part = row_scores[lexical.columns(union, where)]
        gathered.append(Candidates(union, dense.astype(np.float64), lexical_part, dense_rank, lexical_rank))
    return gathered

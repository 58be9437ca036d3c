"""``mrr``: exact ranking metrics over the full candidate pool (computed in ``metrics.py`` beside it)."""

from __future__ import annotations

import time
from pathlib import Path

import attrs

from dualenc import EvalSet, Register, at_least, encode_texts, hookimpl, read_codes
from dualenc.plugins.evaluators.metrics import Rankings, rank_pool


@attrs.frozen
class MRROptions:
    # texts per encoder forward pass
    batch_size: int = attrs.field(default=128, validator=at_least(1))
    # scores are computed in blocks of chunk_size queries x pool_chunk_size codes (memory bound)
    chunk_size: int = attrs.field(default=256, validator=at_least(1))
    pool_chunk_size: int = attrs.field(default=32768, validator=at_least(1))
    # a JSONL file of extra candidate codes (field "code") added to every pool
    distractors: str | None = None


@attrs.frozen
class Evaluation:
    """One evaluation: where the relevant codes ranked, and how long each phase took."""

    eval_set: EvalSet
    rankings: Rankings
    encode_seconds: float
    score_seconds: float


class MRREvaluator:
    primary_metric = "mrr"

    def __init__(self, options: MRROptions | None = None):
        self.options = options or MRROptions()
        # read once: the evaluator runs at every eval step of a training run
        self.distractors = read_codes(Path(self.options.distractors)) if self.options.distractors else []

    def with_distractors(self, eval_set: EvalSet) -> EvalSet:
        """The eval set with the distractor codes appended to its pool, skipping known texts.

        A distractor identical to a pool code would tie with it and count against the gold.
        """
        known = set(eval_set.pool)
        extra = [code for code in dict.fromkeys(self.distractors) if code not in known]
        if not extra:
            return eval_set
        return attrs.evolve(eval_set, pool=[*eval_set.pool, *extra])

    def run(self, encoder, eval_set: EvalSet, top_k: int = 0) -> Evaluation:
        """Encode and rank; ``top_k`` > 0 also keeps each query's first pool indices."""
        eval_set = self.with_distractors(eval_set)
        started = time.perf_counter()
        query_vectors = encode_texts(encoder, eval_set.queries, "query", self.options.batch_size)
        pool_vectors = encode_texts(encoder, eval_set.pool, "code", self.options.batch_size)
        encoded = time.perf_counter()
        rankings = rank_pool(
            query_vectors,
            pool_vectors,
            eval_set.relevant,
            query_chunk=self.options.chunk_size,
            pool_chunk=self.options.pool_chunk_size,
            top_k=top_k,
        )
        return Evaluation(eval_set, rankings, encoded - started, time.perf_counter() - encoded)

    def evaluate(self, encoder, eval_set: EvalSet, prefix: str = "val") -> dict[str, float]:
        evaluation = self.run(encoder, eval_set)
        metrics = {f"{prefix}/{name}": value for name, value in evaluation.rankings.metrics().items()}
        metrics[f"{prefix}/encode_seconds"] = evaluation.encode_seconds
        metrics[f"{prefix}/score_seconds"] = evaluation.score_seconds
        return metrics


@hookimpl
def register_evaluators(register: Register):
    register(
        "mrr",
        MRREvaluator,
        options=MRROptions,
        description="MRR, NDCG@10, Recall@k over the full candidate pool, exactly.",
    )

"""``mrr``: exact ranking metrics over the full candidate pool (computed in ``metrics.py`` beside it).

``mode`` picks the ranking: ``dense`` (the encoder's inner products), ``lexical`` (BM25 over
the pool's code words), ``hybrid`` (both, fused as hybrid search fuses an index's candidates:
``Fusion.pool_scores``), or ``all``: the three, dense as the metrics of record and the others
beside them (``val/lexical/mrr``, ``val/hybrid/mrr``).
"""

from __future__ import annotations

import time
from pathlib import Path

import attrs

from dualenc import (
    EvalSet,
    Fusion,
    LexicalIndex,
    Register,
    at_least,
    at_most,
    encode_texts,
    hookimpl,
    one_of,
    read_codes,
)
from dualenc.plugins.evaluators.metrics import Rankings, rank_pool, rank_scores

MODES = ("dense", "lexical", "hybrid")
FUSION_DEFAULTS = attrs.fields(Fusion)


@attrs.frozen
class MRROptions:
    # texts per encoder forward pass
    batch_size: int = attrs.field(default=128, validator=at_least(1))
    # scores are computed in blocks of chunk_size queries x pool_chunk_size codes (memory bound)
    chunk_size: int = attrs.field(default=256, validator=at_least(1))
    pool_chunk_size: int = attrs.field(default=32768, validator=at_least(1))
    # a JSONL file of extra candidate codes (field "code") added to every pool
    distractors: str | None = None
    # dense, lexical, hybrid, or all three (dense the metrics of record)
    mode: str = attrs.field(default="dense", validator=one_of(*MODES, "all"))
    # hybrid's fusion: "interpolate" (min-max normalised, fusion_weight on dense) or "rrf"
    fusion: str = attrs.field(default=FUSION_DEFAULTS.method.default, validator=one_of("interpolate", "rrf"))
    fusion_weight: float = attrs.field(
        default=FUSION_DEFAULTS.weight.default, validator=[at_least(0.0), at_most(1.0)]
    )


@attrs.frozen
class Evaluation:
    """One evaluation: where the relevant codes ranked, and how long each phase took."""

    eval_set: EvalSet
    rankings: Rankings  # the mode's; dense for "all"
    encode_seconds: float
    score_seconds: float
    # every mode ranked: {mode: its rankings}
    modes: dict[str, Rankings] = attrs.field(factory=dict)


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

    @property
    def modes(self) -> tuple[str, ...]:
        return MODES if self.options.mode == "all" else (self.options.mode,)

    @property
    def fusion(self) -> Fusion:
        return Fusion(method=self.options.fusion, weight=self.options.fusion_weight)

    def run(self, encoder, eval_set: EvalSet, top_k: int = 0) -> Evaluation:
        """Encode and rank; ``top_k`` > 0 also keeps each query's first pool indices."""
        eval_set = self.with_distractors(eval_set)
        options = self.options
        started = time.perf_counter()
        query_vectors = pool_vectors = None
        if self.modes != ("lexical",):
            query_vectors = encode_texts(encoder, eval_set.queries, "query", options.batch_size)
            pool_vectors = encode_texts(encoder, eval_set.pool, "code", options.batch_size)
        encoded = time.perf_counter()
        rankings = {}
        if "dense" in self.modes:
            rankings["dense"] = rank_pool(
                query_vectors,
                pool_vectors,
                eval_set.relevant,
                query_chunk=options.chunk_size,
                pool_chunk=options.pool_chunk_size,
                top_k=top_k,
            )
        if "lexical" in self.modes or "hybrid" in self.modes:
            lexical = LexicalIndex.build(eval_set.pool)
            queries, fusion = eval_set.queries, self.fusion

            def lexical_block(start: int, end: int):
                return lexical.scores(queries[start:end])

            def hybrid_block(start: int, end: int):
                dense = query_vectors[start:end] @ pool_vectors.T
                return fusion.pool_scores(dense, lexical.scores(queries[start:end]))

            for mode, block in (("lexical", lexical_block), ("hybrid", hybrid_block)):
                if mode in self.modes:
                    rankings[mode] = rank_scores(
                        block,
                        len(queries),
                        len(eval_set.pool),
                        eval_set.relevant,
                        query_chunk=options.chunk_size,
                        top_k=top_k,
                    )
        primary = rankings["dense" if options.mode == "all" else options.mode]
        return Evaluation(eval_set, primary, encoded - started, time.perf_counter() - encoded, rankings)

    def evaluate(self, encoder, eval_set: EvalSet, prefix: str = "val") -> dict[str, float]:
        evaluation = self.run(encoder, eval_set)
        metrics = {f"{prefix}/{name}": value for name, value in evaluation.rankings.metrics().items()}
        if self.options.mode == "all":
            for mode in ("lexical", "hybrid"):
                for name, value in evaluation.modes[mode].metrics().items():
                    if name not in ("pool_size", "num_queries"):
                        metrics[f"{prefix}/{mode}/{name}"] = value
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

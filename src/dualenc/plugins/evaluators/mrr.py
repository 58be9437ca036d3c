"""``mrr``: exact full-pool ranking metrics (implementation in progress)."""

import attrs

from dualenc import hookimpl
from dualenc.core.config import at_least


@attrs.frozen
class MRROptions:
    batch_size: int = attrs.field(default=128, validator=at_least(1))


def create(options: MRROptions):
    raise NotImplementedError("the mrr evaluator is being built")


@hookimpl
def register_evaluators(register):
    register(
        "mrr",
        create,
        options=MRROptions,
        description="MRR, NDCG@10, Recall@k over the full candidate pool, exactly.",
    )

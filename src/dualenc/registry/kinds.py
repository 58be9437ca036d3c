"""The five component kinds: one Protocol each, and the records that pass between them.

The core loop talks to components only through these protocols. A plugin implements them
structurally; it need not import or subclass anything from here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import attrs

if TYPE_CHECKING:  # the protocols name these types; importing dualenc must not load torch
    import numpy as np
    import torch

SIDES = ("query", "code")


@attrs.frozen
class Component:
    """One registered component and where it came from."""

    kind: str
    name: str
    factory: Callable[[Any], Any]
    options: type | None
    description: str
    distribution: str
    version: str
    always_on: bool = False  # a tracker that runs whether or not the config selects it

    def create(self, options: Any = None) -> Any:
        """Build the component; ``None`` means the options class's defaults."""
        if options is None and self.options is not None:
            options = self.options()
        return self.factory(options)


@runtime_checkable
class EncoderModel(Protocol):
    """Maps token ids to L2-normalised vectors; a ``torch.nn.Module``.

    ``side`` is ``"query"`` or ``"code"``: encoders with one shared tower ignore it.

    Two optional attributes of the factory (``core.checkpoint.load_encoder``):
    ``from_checkpoint(options, directory)``, a classmethod that builds the encoder from a folder
    ``save`` wrote, when ``factory(options)`` would read something outside it (the ``hf``
    encoder's base model); and ``options_changeable_on_load``, the option names a resume may give
    other values than the checkpoint's (none by default: any other change is refused).
    """

    dim: int
    max_seq_len: int
    pad_id: int

    def prepare(self, texts: Iterable[str]) -> None:
        """Called once before training on a fresh model with the training texts.

        Encoders that learn their vocabulary (a BPE tokenizer) do it here; others do nothing.
        """

    def tokenizer_fingerprint(self) -> str:
        """A stable hash of the tokenizer; token caches are keyed by it."""

    def tokenize(self, texts: Sequence[str], side: str) -> list[np.ndarray]:
        """Token ids (int32, special tokens included) truncated to ``max_seq_len``."""

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, side: str) -> torch.Tensor:
        """[B, L] ids and 0/1 mask -> [B, dim] unit vectors."""

    def save(self, directory: Path) -> None:
        """Write weights (model.safetensors) and tokenizer (tokenizer.json) to directory."""

    def load(self, directory: Path) -> None:
        """Load what ``save`` wrote into this already-built encoder."""


@attrs.frozen
class ContrastiveBatch:
    """Everything a contrastive loss needs for one step.

    ``candidates`` holds the positives' code embeddings first (row ``positive[i]`` belongs
    to query i), then any mined negatives, then any provided ones (the training rows' ``neg``).
    A candidate is the code of a training pair, its keys that pair's normalised code and
    query, or a provided code that is no pair's (its query key then matches no query), so a
    loss can mask false negatives: a candidate whose code key equals query i's positive code
    key (a clone), or whose query key equals query i's (another positive of the same query).
    """

    query: torch.Tensor  # [B, D]
    candidates: torch.Tensor  # [C, D], C >= B
    positive: torch.Tensor  # [B] long, index into candidates
    candidate_code_key: torch.Tensor  # [C] int64
    candidate_query_key: torch.Tensor  # [C] int64

    def false_negative_mask(self) -> torch.Tensor:
        """[B, C] bool: True where a candidate must not count as a negative for a query."""
        import torch

        pos_code = self.candidate_code_key[self.positive]
        pos_query = self.candidate_query_key[self.positive]
        same = (self.candidate_code_key[None, :] == pos_code[:, None]) | (
            self.candidate_query_key[None, :] == pos_query[:, None]
        )
        is_positive = torch.zeros_like(same)
        is_positive[torch.arange(len(self.positive)), self.positive] = True
        return same & ~is_positive


class Loss(Protocol):
    """A scalar objective over a ``ContrastiveBatch``.

    If the loss is a ``torch.nn.Module`` with parameters (a learnable temperature), the
    loop optimises them with the encoder's.
    """

    def __call__(self, batch: ContrastiveBatch) -> torch.Tensor: ...


class Miner(Protocol):
    """A source of extra negatives per training pair, refreshed on its own schedule."""

    num_negatives: int

    def due(self, step: int) -> bool:
        """True when ``mine`` must run before training step ``step``."""

    def mine(self, encoder: EncoderModel, corpus: Any, step: int, run_dir: Path) -> dict[str, float]:
        """Recompute negatives for every pair of ``corpus`` (a ``dualenc.PairSet``).

        Returns metrics to log (``mining/seconds``, ...).
        """

    def negatives(self, pair_ids: np.ndarray) -> np.ndarray:
        """[B] pair ids -> [B, num_negatives] pair ids of negatives; -1 where none."""

    def state_dict(self) -> dict[str, Any]:
        """Numpy arrays and JSON-able values that make ``negatives`` reproducible on resume."""

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@attrs.frozen
class EvalSet:
    """Queries ranked against a candidate pool.

    ``relevant[i]`` maps pool indices to graded relevance (> 0) for query i.
    """

    name: str
    queries: list[str]
    pool: list[str]
    relevant: list[dict[int, float]]


class Evaluator(Protocol):
    """Scores an encoder on an ``EvalSet``."""

    primary_metric: str  # the key (without prefix) the best checkpoint is chosen by: "mrr"

    def evaluate(self, encoder: EncoderModel, eval_set: EvalSet, prefix: str = "val") -> dict[str, float]:
        """Metrics named ``f"{prefix}/{metric}"``, e.g. ``val/mrr``, ``val/ndcg@10``."""


class Tracker(Protocol):
    """Receives the resolved config once and metrics at every logged step.

    Optional: ``rewind(step)``, called right after ``start``: logging goes on from ``step``
    (0 for a new run, the checkpoint's step + 1 for a resume), so a tracker that keeps rows
    drops those of ``step`` and later, which a run killed after its last checkpoint wrote."""

    def start(self, run_dir: Path, config: dict[str, Any]) -> None: ...

    def log(self, metrics: dict[str, float], step: int) -> None: ...

    def finish(self, status: str) -> None:
        """``status``: ``"finished"``, ``"stopped"`` (--stop-after), ``"early_stopped"``
        (``train.early_stopping_patience``), ``"time_limit"`` (``train.max_train_seconds``),
        ``"interrupted"`` (a signal) or ``"failed"``."""


# kind -> (hook name, protocol)
KINDS: dict[str, tuple[str, type]] = {
    "encoder": ("register_encoders", EncoderModel),
    "loss": ("register_losses", Loss),
    "miner": ("register_miners", Miner),
    "evaluator": ("register_evaluators", Evaluator),
    "tracker": ("register_trackers", Tracker),
}

"""The best checkpoint and early stopping: one logged metric, followed across evaluations.

``train.best_metric`` names the metric (default: the evaluator's primary metric on the first
validation set, ``val/mrr`` for a run with ``data.val_file``); ``train.best_mode`` says
whether higher or lower is better; ``train.early_stopping_patience`` stops a run after that
many evaluations in a row that did not beat the best value by more than
``train.early_stopping_min_delta``. Checkpoints save the best value and that count, so a
resume goes on with both.
"""

from __future__ import annotations

import math

import attrs

from dualenc.core.config import RunConfig, TrainConfig
from dualenc.errors import ConfigError


@attrs.define
class BestMetric:
    """The metric that picks the best checkpoint, its best value and early stopping's count."""

    name: str
    mode: str = "max"
    patience: int | None = None
    min_delta: float = 0.0
    value: float | None = None  # the best so far; None before the first evaluation
    stale: int = 0  # evaluations since the last one that beat the best by more than min_delta

    @classmethod
    def from_config(cls, train: TrainConfig, default_name: str) -> BestMetric:
        return cls(
            train.best_metric or default_name,
            train.best_mode,
            train.early_stopping_patience,
            train.early_stopping_min_delta,
        )

    def update(self, metrics: dict[str, float]) -> bool:
        """Take one evaluation's metrics; True when it is the best so far (the first is)."""
        if self.name not in metrics:
            raise ConfigError(
                [
                    f"train.best_metric: {self.name!r} is not a metric the evaluation logged; "
                    f"it logged: {', '.join(metrics)}"
                ]
            )
        value = float(metrics[self.name])
        if self.value is None:
            gain = math.inf
        else:
            gain = value - self.value if self.mode == "max" else self.value - value
        self.stale = 0 if gain > self.min_delta else self.stale + 1  # NaN counts as no gain
        if gain > 0:
            self.value = value
            return True
        return False

    @property
    def patience_spent(self) -> bool:
        return self.patience is not None and self.stale >= self.patience


def best_metric_problem(config: RunConfig) -> str | None:
    """Why ``train.best_metric`` names no validation set of the config, if it does not. The
    metric's own name is checked at the first evaluation: only the evaluator knows its names."""
    from dualenc.core.data.evalsets import val_set_specs

    name = config.train.best_metric
    if name is None or not name.startswith("val/"):  # the field's validator reports the latter
        return None
    prefixes = list(val_set_specs(config.data))
    if any(name.startswith(f"{prefix}/") for prefix in prefixes):
        return None
    return (
        f"{name!r} is not a metric of a validation set; they log "
        + ", ".join(f"{prefix}/<metric>" for prefix in prefixes)
        + f" (e.g. {prefixes[0]}/mrr)"
    )

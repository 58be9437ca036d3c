"""``wandb``: a Weights & Biases run with the resolved config and every metric of a dualenc run.

Metrics keep the names and steps the training loop gives them (``train/loss``, ``val/mrr``),
the same as the ``aim`` tracker and ``metrics.jsonl``. Offline (the default when no
``WANDB_API_KEY`` is set) the run is written under the run's output directory,
``<output_dir>/wandb/offline-run-*/``, and ``wandb sync <that dir>`` uploads it later.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from dualenc import Register, hookimpl, one_of

log = logging.getLogger(__name__)

MODES = ("auto", "offline", "online", "disabled")


@attrs.frozen
class WandbOptions:
    project: str = "dualenc"
    # the W&B user or team; None: the default entity of the API key
    entity: str | None = None
    # "auto": WANDB_MODE when it is offline or disabled, else online with WANDB_API_KEY, offline without
    mode: str = attrs.field(default="auto", validator=one_of(*MODES))
    tags: tuple[str, ...] = ()
    # the run's display name; None lets W&B pick one
    name: str | None = None


def resolve_mode(mode: str, environ: Mapping[str, str]) -> str:
    """The W&B mode to run in: ``mode`` itself unless it is ``"auto"``."""
    if mode != "auto":
        return mode
    if environ.get("WANDB_MODE") in ("offline", "disabled"):
        return environ["WANDB_MODE"]
    # without a key an online run would stop to ask for a login, which a training job cannot answer
    return "online" if environ.get("WANDB_API_KEY") else "offline"


class WandbTracker:
    def __init__(self, options: WandbOptions | None = None):
        self.options = options or WandbOptions()
        self.run = None
        self.mode: str | None = None

    def start(self, run_dir: Path, config: dict[str, Any]) -> None:
        import wandb

        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        self.mode = resolve_mode(self.options.mode, os.environ)
        self.run = wandb.init(
            project=self.options.project,
            entity=self.options.entity,
            name=self.options.name,
            tags=list(self.options.tags),
            config=config,
            dir=str(run_dir),
            mode=self.mode,
            # each tracker owns its run: another run in the same process must not end this one
            reinit="create_new",
        )
        self._announce("writing to")

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log({name: float(value) for name, value in metrics.items()}, step=step)

    def finish(self, status: str) -> None:
        if self.run is None:
            return
        self.run.summary["dualenc/status"] = status
        # "stopped" (--stop-after) and "early_stopped" are clean ends; W&B marks non-zero exits as failed
        self.run.finish(exit_code=0 if status in ("finished", "stopped", "early_stopped") else 1)
        self._announce("saved in")
        self.run = None

    def _announce(self, doing: str) -> None:
        # the run's place is the one thing a user needs later; wandb's own banner may be silenced
        if self.mode == "offline":
            where = self.run.settings.sync_dir
            log.info("dualenc-wandb: %s offline run %s; upload it with: wandb sync %s", doing, where, where)
        elif self.mode == "online":
            log.info("dualenc-wandb: %s run %s", doing, self.run.url)


@hookimpl
def dualenc_api_version():
    return ">=1.0,<2"


@hookimpl
def register_trackers(register: Register):
    register(
        "wandb",
        WandbTracker,
        options=WandbOptions,
        description="Weights & Biases run: config and metrics; offline in the output dir without a key.",
    )

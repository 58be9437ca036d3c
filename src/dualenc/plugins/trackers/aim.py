"""``aim``: a real Aim run with the resolved config as hparams and every metric.

See the curves with ``aim up --repo .aim``.
"""

from __future__ import annotations

from pathlib import Path

import attrs

from dualenc import Register, hookimpl


@attrs.frozen
class AimOptions:
    repo: str = ".aim"
    experiment: str = "dualenc"
    # seconds between CPU/memory samples; None turns Aim's system metrics off
    system_tracking_interval: int | None = None


class AimTracker:
    def __init__(self, options: AimOptions):
        self.options = options
        self.run = None

    def start(self, run_dir: Path, config: dict) -> None:
        import aim

        # Aim creates the repo itself; an empty directory made beforehand reads as out of date
        self.run = aim.Run(
            repo=self.options.repo,
            experiment=self.options.experiment,
            system_tracking_interval=self.options.system_tracking_interval,
        )
        self.run["hparams"] = config
        self.run["output_dir"] = str(run_dir)

    def log(self, metrics: dict[str, float], step: int) -> None:
        for name, value in metrics.items():
            self.run.track(float(value), name=name, step=step)

    def finish(self, status: str) -> None:
        if self.run is not None:
            self.run["status"] = status
            self.run.close()
            self.run = None


@hookimpl
def register_trackers(register: Register):
    register("aim", AimTracker, options=AimOptions, description="Aim run: hparams and metrics.")

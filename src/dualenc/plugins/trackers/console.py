"""``console``: a progress bar with loss, lr, pairs/s and ETA; one line per evaluation."""

from __future__ import annotations

from pathlib import Path

from tqdm.auto import tqdm

from dualenc import Register, hookimpl, progress_enabled


class ConsoleTracker:
    def __init__(self, options=None):
        self._bar = None

    def start(self, run_dir: Path, config: dict) -> None:
        total = config.get("train", {}).get("max_steps")
        self._bar = tqdm(
            total=total, desc="train", unit="step", dynamic_ncols=True, disable=not progress_enabled()
        )

    def log(self, metrics: dict[str, float], step: int) -> None:
        self._bar.update(max(0, step - self._bar.n))
        if "train/loss" in metrics:
            self._bar.set_postfix(
                loss=f"{metrics['train/loss']:.4f}",
                lr=f"{metrics.get('train/lr', 0):.2e}",
                pairs_s=f"{metrics.get('train/pairs_per_sec', 0):.1f}",
                refresh=False,
            )
        sets: dict[str, dict[str, float]] = {}  # one line per validation set: val, val/<name>
        for name, value in metrics.items():
            if name.startswith("val/"):
                prefix, _, metric = name.rpartition("/")
                sets.setdefault(prefix, {})[metric] = value
        for prefix, evaluation in sets.items():
            shown = "  ".join(f"{prefix}/{k}={v:.4f}" for k, v in evaluation.items() if k != "pool_size")
            pool = evaluation.get("pool_size")
            suffix = f"  (pool {int(pool)})" if pool else ""
            self._bar.write(f"step {step}: {shown}{suffix}")

    def finish(self, status: str) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


@hookimpl
def register_trackers(register: Register):
    register("console", ConsoleTracker, description="Progress bar and evaluation summaries.")

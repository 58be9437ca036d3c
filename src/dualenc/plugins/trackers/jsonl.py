"""``jsonl``: one JSON object per logged step in ``output_dir/metrics.jsonl``; always on."""

from __future__ import annotations

import json
import math
from pathlib import Path

from dualenc import Register, atomic_write_text, hookimpl


class JsonlTracker:
    def __init__(self, options=None):
        self._file = None

    def start(self, run_dir: Path, config: dict) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        # append: a resumed run continues the same file
        self._file = open(run_dir / "metrics.jsonl", "a", encoding="utf-8")  # noqa: SIM115

    def rewind(self, step: int) -> None:
        """Drop the rows of ``step`` and later: a run killed after its last checkpoint logged
        steps that the resumed run logs again. A line cut short by the kill goes too."""
        path = Path(self._file.name)
        self._file.close()
        kept = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] < step:
                kept.append(line + "\n")
        atomic_write_text(path, "".join(kept))  # a kill now leaves the old rows or the new
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115

    def log(self, metrics: dict[str, float], step: int) -> None:
        row = {"step": step}
        for key, value in metrics.items():
            value = float(value)
            row[key] = value if math.isfinite(value) else str(value)
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()

    def finish(self, status: str) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


@hookimpl
def register_trackers(register: Register):
    register(
        "jsonl", JsonlTracker, description="metrics.jsonl in the output dir (always on).", always_on=True
    )

"""``none``: no mined negatives; the loss sees in-batch negatives only."""

from pathlib import Path

import numpy as np

from dualenc import Register, hookimpl


class NoMiner:
    num_negatives = 0

    def __init__(self, options=None):
        pass  # registered without options: built with None

    def due(self, step: int) -> bool:
        return False

    def mine(self, encoder, corpus, step: int, run_dir: Path) -> dict[str, float]:
        return {}

    def negatives(self, pair_ids: np.ndarray) -> np.ndarray:
        return np.empty((len(pair_ids), 0), dtype=np.int64)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


@hookimpl
def register_miners(register: Register):
    register("none", NoMiner, description="No mined negatives (in-batch only).")

import os
from pathlib import Path

import pytest
from fakes import write_pairs

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def pair_files(tmp_path_factory) -> tuple[Path, Path]:
    """(train, val) pair files for the training tests: 96 and 24 drawn pairs."""
    root = tmp_path_factory.mktemp("pairs")
    return write_pairs(root / "train.jsonl", 96, 0), write_pairs(root / "val.jsonl", 24, 1)

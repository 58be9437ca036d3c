"""Checkpoints: directories of safetensors and JSON, written atomically. Never pickle.

An encoder checkpoint holds what ``encoder.save`` writes (model.safetensors,
tokenizer.json) plus ``encoder.json``: the plugin name and its resolved options, so that
``load_encoder`` can rebuild the same encoder through the catalog.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dualenc import __version__
from dualenc.errors import DualencError

ENCODER_CONFIG = "encoder.json"


def save_encoder(encoder, plugin: str, options: Any, directory: Path) -> None:
    """Write the encoder's weights, tokenizer and ``encoder.json`` into ``directory``."""
    from dualenc.core.configio import CONVERTER

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    encoder.save(directory)
    record = {
        "plugin": plugin,
        "options": CONVERTER.unstructure(options) if options is not None else None,
        "dim": encoder.dim,
        "dualenc_version": __version__,
    }
    (directory / ENCODER_CONFIG).write_text(json.dumps(record, indent=2) + "\n")


def read_encoder_record(directory: Path) -> dict:
    directory = Path(directory)
    path = directory / ENCODER_CONFIG
    if not directory.is_dir():
        raise DualencError(f"{directory}: checkpoint directory not found")
    if not path.is_file():
        raise DualencError(f"{directory}: not an encoder checkpoint (no {ENCODER_CONFIG})")
    try:
        record = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DualencError(f"{path}: unreadable ({exc})") from None
    if not isinstance(record, dict) or "plugin" not in record:
        raise DualencError(f"{path}: missing key 'plugin'")
    return record


def load_encoder(directory: Path, catalog=None):
    """Rebuild the encoder saved in ``directory``: returns (encoder, plugin name, options)."""
    from dualenc.core.configio import Problems, structure
    from dualenc.errors import ConfigError
    from dualenc.registry.catalog import load_catalog

    directory = Path(directory)
    record = read_encoder_record(directory)
    component = (catalog or load_catalog()).get("encoder", record["plugin"])
    options = None
    if component.options is not None:
        problems = Problems(str(directory / ENCODER_CONFIG), {}, {})
        options = structure(record.get("options") or {}, component.options, ("options",), problems)
        if problems.items:
            raise ConfigError(problems.items)
    encoder = component.create(options)
    encoder.load(directory)
    return encoder, record["plugin"], options

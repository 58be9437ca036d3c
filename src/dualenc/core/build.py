"""The one place components are created: resolved config + catalog -> components."""

from __future__ import annotations

from typing import Any

import attrs

from dualenc.core.config import RunConfig
from dualenc.registry.catalog import Catalog

ALWAYS_ON_TRACKERS = ("jsonl",)


@attrs.define
class Components:
    encoder: Any
    loss: Any
    miner: Any
    evaluator: Any
    trackers: list[Any]


def build_encoder(config: RunConfig, catalog: Catalog):
    return catalog.get("encoder", config.plugins.encoder).create(config.encoder)


def build(config: RunConfig, catalog: Catalog, encoder=None) -> Components:
    """Create every selected component; ``encoder`` replaces the configured one (resume)."""
    tracker_names = [
        *ALWAYS_ON_TRACKERS,
        *(n for n in config.plugins.trackers if n not in ALWAYS_ON_TRACKERS),
    ]
    return Components(
        encoder=encoder if encoder is not None else build_encoder(config, catalog),
        loss=catalog.get("loss", config.plugins.loss).create(config.loss),
        miner=catalog.get("miner", config.plugins.miner).create(config.miner),
        evaluator=catalog.get("evaluator", config.plugins.evaluator).create(config.evaluator),
        trackers=[catalog.get("tracker", n).create(config.trackers.get(n)) for n in tracker_names],
    )

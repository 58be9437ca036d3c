"""The one place components are created: resolved config + catalog -> components."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs

from dualenc.core import checkpoint
from dualenc.core.config import RunConfig
from dualenc.errors import DualencError
from dualenc.registry.catalog import Catalog


@attrs.define
class Components:
    encoder: Any
    loss: Any
    miner: Any
    evaluator: Any
    trackers: list[Any]


def build_encoder(config: RunConfig, catalog: Catalog, checkpoint_dir: Path | None = None):
    """The configured encoder; from ``checkpoint_dir``, the one saved there (architecture,
    weights, tokenizer), which must be of the configured plugin.

    It is built with the config's encoder options, which checkpoints record, so that what a
    run records is what it trains with. Options the plugin may not change on load (those that
    shape the weights) must equal the checkpoint's; ``load_encoder`` refuses any that differ.
    """
    if checkpoint_dir is None:
        return catalog.get("encoder", config.plugins.encoder).create(config.encoder)
    checkpoint_dir = checkpoint.resolve(Path(checkpoint_dir))
    plugin = checkpoint.read_encoder_record(checkpoint_dir)["plugin"]
    if plugin != config.plugins.encoder:
        raise DualencError(
            f"{checkpoint_dir}: checkpoint holds a {plugin!r} encoder but the config selects "
            f"{config.plugins.encoder!r}"
        )
    encoder, _, _ = checkpoint.load_encoder(checkpoint_dir, catalog, options=config.encoder)
    return encoder


def tracker_names(config: RunConfig, catalog: Catalog) -> list[str]:
    """The always-on trackers, then the selected ones."""
    always = [c.name for c in catalog.of_kind("tracker") if c.always_on]
    return [*always, *(name for name in config.plugins.trackers if name not in always)]


def build(config: RunConfig, catalog: Catalog, checkpoint_dir: Path | None = None) -> Components:
    """Create every selected component; the encoder from ``checkpoint_dir`` when given."""
    return Components(
        encoder=build_encoder(config, catalog, checkpoint_dir),
        loss=catalog.get("loss", config.plugins.loss).create(config.loss),
        miner=catalog.get("miner", config.plugins.miner).create(config.miner),
        evaluator=catalog.get("evaluator", config.plugins.evaluator).create(config.evaluator),
        trackers=[
            catalog.get("tracker", n).create(config.trackers.get(n)) for n in tracker_names(config, catalog)
        ],
    )

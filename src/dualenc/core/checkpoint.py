"""Checkpoints: directories of safetensors and JSON, written atomically. Never pickle.

An encoder checkpoint holds what ``encoder.save`` writes (model.safetensors,
tokenizer.json) plus ``encoder.json``: the plugin name and its resolved options, so that
``load_encoder`` can rebuild the same encoder through the catalog.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch
from safetensors.torch import load_file, save_file

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
    directory = resolve(directory)
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

    directory = resolve(directory)
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


# --- full training checkpoints ---------------------------------------------------------

TRAINER_TENSORS = "trainer_state.safetensors"
TRAINER_JSON = "trainer_state.json"
RUN_CONFIG = "config.yaml"
BEST_NAME = "encoder-best-mrr"
LAST_NAME = "last"


def _old(target: Path) -> Path:
    return target.with_name(f".{target.name}.old")


def resolve(directory: Path) -> Path:
    """The checkpoint at ``directory``, or its previous version if a save was cut short
    between moving the old copy aside and moving the new one in."""
    directory = Path(directory)
    if not directory.exists() and _old(directory).is_dir():
        return _old(directory)
    return directory


def _fsync_tree(directory: Path) -> None:
    for path in directory.iterdir():
        if path.is_dir():
            _fsync_tree(path)
            continue
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())
    _fsync_dir(directory)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _install(tmp: Path, target: Path) -> None:
    """Move a complete ``tmp`` directory to ``target``, replacing it. At every instant
    either ``target`` or its ``.old`` twin is a complete checkpoint."""
    old = _old(target)
    if target.exists():
        if old.exists():
            shutil.rmtree(old)
        os.rename(target, old)
    os.rename(tmp, target)
    _fsync_dir(target.parent)
    shutil.rmtree(old, ignore_errors=True)


def _link_copy(source: Path, target: Path) -> None:
    """Atomically make ``target`` a copy of ``source`` using hard links (no extra disk)."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    shutil.copytree(source, tmp, copy_function=os.link, dirs_exist_ok=True)
    _install(tmp, target)


def _flatten_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict] = {}
    for index, values in state["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    for index, values in meta["scalars"].items():
        state.setdefault(int(index), {}).update(values)
    return {"state": state, "param_groups": meta["param_groups"]}


@attrs.define
class TrainerState:
    """Everything besides the weights that an exact resume needs."""

    step: int
    optimizer: dict
    scheduler: dict
    sampler: dict
    miner: dict
    best_metric: float | None
    torch_rng: torch.Tensor
    cuda_rng: list[torch.Tensor]


def save_checkpoint(
    run_dir: Path,
    *,
    encoder,
    plugin: str,
    options: Any,
    loss_module: torch.nn.Module | None,
    state: TrainerState,
    config_yaml: str,
    periodic: bool,
    best: bool,
    keep_last: int,
) -> Path:
    """Write ``last/`` atomically; also ``step-N/`` when periodic and the best copy when best."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".last.tmp-", dir=run_dir))
    save_encoder(encoder, plugin, options, tmp)
    optimizer_tensors, optimizer_meta = _flatten_optimizer(state.optimizer)
    tensors = {**optimizer_tensors, "rng.torch": state.torch_rng.contiguous()}
    for index, rng in enumerate(state.cuda_rng):
        tensors[f"rng.cuda.{index}"] = rng.contiguous()
    for key, value in state.miner.items():
        if isinstance(value, np.ndarray):
            tensors[f"miner.{key}"] = torch.from_numpy(np.ascontiguousarray(value))
    if loss_module is not None:
        for key, value in loss_module.state_dict().items():
            tensors[f"loss.{key}"] = value.detach().cpu().contiguous()
    save_file(tensors, str(tmp / TRAINER_TENSORS))
    record = {
        "step": state.step,
        "best_metric": state.best_metric,
        "optimizer": optimizer_meta,
        "scheduler": state.scheduler,
        "sampler": state.sampler,
        "miner": {k: v for k, v in state.miner.items() if not isinstance(v, np.ndarray)},
        "cuda_devices": len(state.cuda_rng),
        "dualenc_version": __version__,
    }
    (tmp / TRAINER_JSON).write_text(json.dumps(record, indent=2) + "\n")
    (tmp / RUN_CONFIG).write_text(config_yaml)
    _fsync_tree(tmp)
    last = run_dir / LAST_NAME
    _install(tmp, last)
    if periodic:
        _link_copy(last, run_dir / f"step-{state.step:07d}")
        periodic_dirs = sorted(run_dir.glob("step-[0-9]*"))
        for stale in periodic_dirs[: max(0, len(periodic_dirs) - keep_last)]:
            shutil.rmtree(stale)
    if best:
        _link_copy(last, run_dir / BEST_NAME)
    return last


def load_trainer_state(directory: Path, loss_module: torch.nn.Module | None) -> TrainerState:
    directory = resolve(directory)
    json_path = directory / TRAINER_JSON
    if not json_path.is_file():
        raise DualencError(f"{directory}: no {TRAINER_JSON}; not a resumable training checkpoint")
    record = json.loads(json_path.read_text())
    tensors = load_file(str(directory / TRAINER_TENSORS))
    miner = dict(record["miner"])
    for key, value in tensors.items():
        if key.startswith("miner."):
            miner[key[len("miner.") :]] = value.numpy()
    if loss_module is not None:
        loss_state = {k[len("loss.") :]: v for k, v in tensors.items() if k.startswith("loss.")}
        loss_module.load_state_dict(loss_state, strict=False)
    return TrainerState(
        step=record["step"],
        optimizer=_unflatten_optimizer(tensors, record["optimizer"]),
        scheduler=record["scheduler"],
        sampler=record["sampler"],
        miner=miner,
        best_metric=record["best_metric"],
        torch_rng=tensors["rng.torch"],
        cuda_rng=[tensors[f"rng.cuda.{i}"] for i in range(record["cuda_devices"])],
    )

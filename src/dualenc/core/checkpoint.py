"""Checkpoints: directories of safetensors and JSON, written atomically. Never pickle.

An encoder checkpoint holds what ``encoder.save`` writes (model.safetensors,
tokenizer.json) plus ``encoder.json``: the plugin name and its resolved options, so that
``load_encoder`` can rebuild the same encoder through the catalog.
"""

from __future__ import annotations

import hashlib
import json
import logging
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
from dualenc.core.io import fsync_tree, old_twin, read_json, replace_dir
from dualenc.errors import DualencError

log = logging.getLogger("dualenc.train")

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
    record = read_json(path)
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
LAST_NAME = "last"


def best_name(metric: str) -> str:
    """The folder of the best checkpoint by the evaluator's primary ``metric``:
    ``encoder-best-mrr`` for mrr, the path the seed's stage two resumes from."""
    return f"encoder-best-{metric}"


def resolve(directory: Path) -> Path:
    """The checkpoint at ``directory``, or its previous version if a save was cut short
    between moving the old copy aside and moving the new one in (see ``io.replace_dir``)."""
    directory = Path(directory)
    if not directory.exists() and old_twin(directory).is_dir():
        return old_twin(directory)
    return directory


def _link_copy(source: Path, target: Path) -> None:
    """Atomically make ``target`` a copy of ``source`` using hard links (no extra disk)."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    shutil.copytree(source, tmp, copy_function=os.link, dirs_exist_ok=True)
    replace_dir(tmp, target)


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
    best: str | None,
    keep_last: int,
) -> Path:
    """Write ``last/`` atomically; also ``step-N/`` when periodic and, when this is the best
    checkpoint so far, a copy named ``best``."""
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
    fsync_tree(tmp)
    last = run_dir / LAST_NAME
    replace_dir(tmp, last)
    if periodic:
        _link_copy(last, run_dir / f"step-{state.step:07d}")
        periodic_dirs = sorted(run_dir.glob("step-[0-9]*"))
        for stale in periodic_dirs[: max(0, len(periodic_dirs) - keep_last)]:
            shutil.rmtree(stale)
    if best:
        _link_copy(last, run_dir / best)
    return last


def load_trainer_state(directory: Path, loss_module: torch.nn.Module | None) -> TrainerState:
    directory = resolve(directory)
    json_path = directory / TRAINER_JSON
    if not json_path.is_file():
        raise DualencError(f"{directory}: no {TRAINER_JSON}; not a resumable training checkpoint")
    record = read_json(json_path)
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


# --- a run's checkpoints: saving as it goes, resuming ----------------------------------


def config_changes(old_yaml: str, new_yaml: str) -> list[str]:
    """``key: old -> new`` for every value that differs between two resolved configs."""
    import yaml

    def flat(node, prefix=""):
        if isinstance(node, dict):
            out = {}
            for key, value in node.items():
                out.update(flat(value, f"{prefix}{key}."))
            return out
        return {prefix[:-1]: node}

    old, new = flat(yaml.safe_load(old_yaml)), flat(yaml.safe_load(new_yaml))
    return [
        f"{key}: {old.get(key)!r} -> {new.get(key)!r}"
        for key in sorted(set(old) | set(new))
        if old.get(key) != new.get(key) and not key.startswith("output_dir")
    ]


@attrs.define
class Checkpointer:
    """The live objects of a training run that a checkpoint saves and a resume restores."""

    config: Any  # the run's RunConfig
    config_yaml: str
    components: Any  # the run's core.build.Components
    optimizer: Any
    scheduler: Any
    sampler: Any

    @property
    def run_dir(self) -> Path:
        return Path(self.config.output_dir)

    @property
    def encoder(self):
        return self.components.encoder

    @property
    def loss_fn(self):
        return self.components.loss

    @property
    def miner(self):
        return self.components.miner

    @property
    def _loss_module(self) -> torch.nn.Module | None:
        return self.loss_fn if isinstance(self.loss_fn, torch.nn.Module) else None

    def save(self, step: int, best_metric: float | None, *, periodic: bool, is_best: bool) -> Path:
        state = TrainerState(
            step=step,
            optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict(),
            sampler=self.sampler.state_dict(),
            miner=self.miner.state_dict(),
            best_metric=best_metric,
            torch_rng=torch.get_rng_state(),
            cuda_rng=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        )
        return save_checkpoint(
            self.run_dir,
            encoder=self.encoder,
            plugin=self.config.plugins.encoder,
            options=self.config.encoder,
            loss_module=self._loss_module,
            state=state,
            config_yaml=self.config_yaml,
            periodic=periodic,
            best=best_name(self.components.evaluator.primary_metric) if is_best else None,
            keep_last=self.config.train.keep_last,
        )

    def resume(self, directory: Path) -> tuple[int, float | None]:
        """Continue from the checkpoint in ``directory``, whose weights the encoder holds.

        With the same config it resumes exactly: optimizer, schedule, batch order, miner, RNG
        and step go on as if never stopped. With a changed config only the weights carry over.
        Returns the step and best metric to go on from.
        """
        directory = resolve(Path(directory))
        changes = config_changes((directory / RUN_CONFIG).read_text(), self.config_yaml)
        if changes or not (directory / TRAINER_JSON).is_file():
            log.info(
                "starting from the weights of %s; new optimizer and schedule. Config changes:\n  %s",
                directory,
                "\n  ".join(changes) or "(none)",
            )
            return 0, None
        log.info("resuming exactly from %s", directory)
        state = load_trainer_state(directory, self._loss_module)
        self.optimizer.load_state_dict(state.optimizer)
        self.scheduler.load_state_dict(state.scheduler)
        self.sampler.load_state_dict(state.sampler)
        self.miner.load_state_dict(state.miner)
        torch.set_rng_state(state.torch_rng)
        if state.cuda_rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state.cuda_rng)
        return state.step, state.best_metric


# --- encoder identity -----------------------------------------------------------------

# the checkpoint files whose bytes identify an encoder; tokenizer.json only when present
CHECKPOINT_FILES = (ENCODER_CONFIG, "model.safetensors")
OPTIONAL_CHECKPOINT_FILES = ("tokenizer.json",)


def checkpoint_hash(directory: Path) -> str:
    """sha256 over the files that define an encoder checkpoint's vectors."""
    directory = resolve(Path(directory))
    read_encoder_record(directory)  # a clear error for a folder that is not a checkpoint
    digest = hashlib.sha256()
    names = list(CHECKPOINT_FILES) + [n for n in OPTIONAL_CHECKPOINT_FILES if (directory / n).is_file()]
    for name in names:
        file = directory / name
        if not file.is_file():
            raise DualencError(f"{directory}: not an encoder checkpoint (no {name})")
        digest.update(name.encode() + b"\0")
        with open(file, "rb") as handle:
            while block := handle.read(1 << 20):
                digest.update(block)
    return f"sha256:{digest.hexdigest()}"

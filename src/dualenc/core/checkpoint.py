"""Checkpoints: directories of safetensors and JSON, written atomically. Never pickle.

An encoder checkpoint holds what ``encoder.save`` writes (model.safetensors,
tokenizer.json) plus ``encoder.json``: the plugin name and its resolved options, so that
``load_encoder`` can rebuild the same encoder through the catalog.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from dualenc import __version__
from dualenc.core.best import BestMetric
from dualenc.core.io import fsync_tree, old_twin, read_json, replace_dir, staged_dir, twin_of
from dualenc.core.training_record import TRAINING_JSON, write_training_record
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


def load_encoder(directory: Path, catalog=None, options: Any = None):
    """Rebuild the encoder saved in ``directory`` from that folder alone: returns (encoder,
    plugin name, options).

    ``options`` (of the saved plugin's options class): build with these instead of the recorded
    ones, as a resume with a changed config does. They may differ only in the options the
    encoder's factory lists in ``options_changeable_on_load`` (none unless it says so); any other
    difference would change what the saved weights mean and is refused, naming each key.
    A factory with a ``from_checkpoint(options, directory)`` classmethod builds the encoder from
    the folder itself; otherwise it is created from its options and then ``load``-ed.
    """
    from dualenc.core.configio import Problems, structure
    from dualenc.errors import ConfigError
    from dualenc.registry.catalog import load_catalog

    directory = resolve(directory)
    record = read_encoder_record(directory)
    component = (catalog or load_catalog()).get("encoder", record["plugin"])
    recorded = None
    if component.options is not None:
        problems = Problems(str(directory / ENCODER_CONFIG), {}, {})
        recorded = structure(record.get("options") or {}, component.options, ("options",), problems)
        if problems.items:
            raise ConfigError(problems.items)
    if options is None:
        options = recorded
    else:
        _check_option_changes(directory, component, recorded, options)
    from_checkpoint = getattr(component.factory, "from_checkpoint", None)
    if from_checkpoint is not None:
        encoder = from_checkpoint(options, directory)
    else:
        encoder = component.create(options)
        encoder.load(directory)
    return encoder, record["plugin"], options


def _check_option_changes(directory: Path, component, recorded: Any, wanted: Any) -> None:
    if recorded is None or wanted == recorded:
        return
    changeable = set(getattr(component.factory, "options_changeable_on_load", ()))
    refused = [
        f"encoder.{field.name}: {getattr(recorded, field.name)!r} in the checkpoint, "
        f"{getattr(wanted, field.name)!r} in the config"
        for field in attrs.fields(type(recorded))
        if field.name not in changeable and getattr(recorded, field.name) != getattr(wanted, field.name)
    ]
    if refused:
        allowed = ", ".join(f"encoder.{name}" for name in sorted(changeable)) or "none"
        raise DualencError(
            f"{directory / ENCODER_CONFIG}: the config changes encoder options that the checkpoint's "
            f"weights were trained with:\n  " + "\n  ".join(refused) + "\n"
            f"Set them back to the checkpoint's values (or drop the --set), or train a new encoder "
            f"without --resume-from. The options of the {component.name!r} encoder that a resume "
            f"may change: {allowed}"
        )


# how many tensor names a weights-mismatch message shows per kind of problem
SHOWN_NAMES = 3


def load_weights(module: torch.nn.Module, path: Path, device: str = "cpu", describes: str = "") -> None:
    """Load the safetensors file ``path`` into ``module``, every tensor present and of the same
    shape. A file that does not fit gets a short error: counts and the first few names.
    ``describes``: the file(s) that define ``module``'s architecture, for the message."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_model

    path = Path(path)
    if not path.is_file():
        raise DualencError(f"{path}: weights file not found")
    try:
        with safe_open(str(path), framework="pt") as file:
            shapes = {name: tuple(file.get_slice(name).get_shape()) for name in file.keys()}  # noqa: SIM118
    except (SafetensorError, OSError) as exc:
        raise DualencError(f"{path}: not a readable safetensors file ({exc})") from None
    expected = module.state_dict()
    # a tensor that shares storage with a saved one (tied weights) is saved once, under one name
    saved_storage = {expected[name].data_ptr() for name in shapes if name in expected}
    missing = [n for n in expected if n not in shapes and expected[n].data_ptr() not in saved_storage]
    unexpected = [name for name in shapes if name not in expected]
    reshaped = [
        f"{name} {_shape(shapes[name])} in the file, {_shape(expected[name].shape)} here"
        for name in shapes
        if name in expected and shapes[name] != tuple(expected[name].shape)
    ]
    if missing or unexpected or reshaped:
        parts = [
            f"{len(names)} {what} ({'; '.join(names[:SHOWN_NAMES])}"
            + (f"; {len(names) - SHOWN_NAMES} more)" if len(names) > SHOWN_NAMES else ")")
            for what, names in (
                ("of another shape", reshaped),
                ("missing from the file", missing),
                ("in the file but not in the model", unexpected),
            )
            if names
        ]
        source = f" described by {describes}" if describes else ""
        raise DualencError(
            f"{path}: the weights do not fit the model{source}, of {len(expected)} tensors: "
            + ", ".join(parts)
            + ". The checkpoint's files were edited, or come from different models."
        )
    load_model(module, str(path), strict=True, device=device)


def _shape(shape) -> str:
    return "x".join(str(size) for size in shape) or "scalar"


# --- full training checkpoints ---------------------------------------------------------

TRAINER_TENSORS = "trainer_state.safetensors"
ENCODER_WEIGHTS = "model.safetensors"  # the safetensors file of both built-in encoders
TRAINER_JSON = "trainer_state.json"
RUN_CONFIG = "config.yaml"
LAST_NAME = "last"


def best_name(metric: str) -> str:
    """The folder of the best checkpoint by the logged ``metric``: ``encoder-best-mrr`` for
    ``val/mrr`` (the path the seed's stage two resumes from), ``encoder-best-cosqa-mrr`` for
    ``val/cosqa/mrr``."""
    return "encoder-best-" + metric.removeprefix("val/").replace("/", "-")


def resolve(directory: Path) -> Path:
    """The checkpoint at ``directory``, or its previous version if a save was cut short
    between moving the old copy aside and moving the new one in (see ``io.replace_dir``)."""
    directory = Path(directory)
    if not directory.exists() and old_twin(directory).is_dir():
        return old_twin(directory)
    return directory


def best_checkpoints(run_dir: Path) -> list[Path]:
    """The complete best checkpoints of a run folder, by name; one whose save was cut short
    counts as its previous version (``resolve``)."""
    pattern = best_name("*")
    names = {p.name for p in run_dir.glob(pattern)} | {
        twin_of(p).name for p in run_dir.glob(f".{pattern}.old")
    }
    found = (resolve(run_dir / name) for name in sorted(names))
    return [folder for folder in found if (folder / ENCODER_CONFIG).is_file()]


# in the names of the hidden folders saves build in: what ``remove_leftovers`` removes
STAGING_MARK = ".tmp-"


def _staging(target: Path) -> Path:
    """A new hidden folder beside ``target`` to build its next version in."""
    return Path(tempfile.mkdtemp(prefix=f".{target.name}{STAGING_MARK}", dir=target.parent))


def _link_copy(source: Path, target: Path) -> None:
    """Atomically make ``target`` a copy of ``source`` using hard links (no extra disk)."""
    with staged_dir(target, prefix=f".{target.name}{STAGING_MARK}") as tmp:
        shutil.copytree(source, tmp, copy_function=os.link, dirs_exist_ok=True)


def _remove(directory: Path) -> None:
    """Delete ``directory``, renaming it to a hidden staging name first, so that a kill halfway
    leaves a leftover that ``remove_leftovers`` finds rather than a half checkpoint."""
    doomed = _staging(directory)
    os.rename(directory, doomed / directory.name)
    shutil.rmtree(doomed)


def remove_leftovers(run_dir: Path) -> None:
    """Clear what interrupted saves left in ``run_dir``: staging folders, and the previous
    version a save moved aside (``io.old_twin``): deleted beside a complete checkpoint, put back
    where the save was cut short before the new one was in place."""
    if not Path(run_dir).is_dir():
        return
    for entry in Path(run_dir).iterdir():
        if not (entry.name.startswith(".") and entry.is_dir()):
            continue
        if STAGING_MARK in entry.name:
            log.info("removing %s, left by an interrupted save", entry)
            shutil.rmtree(entry)
        elif (target := twin_of(entry)) is not None:
            if target.exists():
                shutil.rmtree(entry)
            else:
                os.rename(entry, target)


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
    best_metric_name: str | None = None  # None in checkpoints from before it was saved
    # early stopping's count: evaluations since best_metric last improved (see core.best)
    evals_without_improvement: int = 0
    # the training loop's wall time so far, for train.max_train_seconds (0 in older checkpoints)
    train_seconds: float = 0.0


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
    last: bool = True,
) -> Path:
    """Write ``last/`` atomically (unless ``last`` is false); also ``step-N/`` when periodic
    and, when this is the best checkpoint so far, a copy named ``best``.

    The copies are made before ``last/`` is replaced, so a save cut short anywhere leaves the
    previous ``last/``, from which a resume redoes all of them. An ``OSError`` (a full disk, a
    read-only folder) is a ``DualencError`` naming the file; the previous checkpoints stay.
    """
    run_dir = Path(run_dir)
    last_dir = run_dir / LAST_NAME
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        tmp = _staging(last_dir)
    except OSError as exc:
        raise DualencError(
            f"{exc.filename or run_dir}: cannot create the checkpoint folder ({exc.strerror})"
        ) from None
    writing = [ENCODER_WEIGHTS]  # the file being written; safetensors' errors do not name it
    try:
        _write_checkpoint(tmp, encoder, plugin, options, loss_module, state, config_yaml, writing)
        if best:
            _link_copy(tmp, run_dir / best)
        if periodic:
            _link_copy(tmp, run_dir / f"step-{state.step:07d}")
            periodic_dirs = sorted(run_dir.glob("step-[0-9]*"))
            for stale in periodic_dirs[: max(0, len(periodic_dirs) - keep_last)]:
                _remove(stale)
        if last:
            replace_dir(tmp, last_dir)
    except (OSError, SafetensorError) as exc:
        why = getattr(exc, "strerror", None) or str(exc)
        kept = f"; the previous checkpoint {last_dir} is unchanged" if last_dir.exists() else ""
        raise DualencError(
            f"{getattr(exc, 'filename', None) or last_dir / writing[-1]}: could not write the "
            f"checkpoint at step {state.step} "
            f"({why}){kept}. Free disk space or fix the folder's permissions, then resume."
        ) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return last_dir


def _write_checkpoint(
    tmp: Path, encoder, plugin, options, loss_module, state: TrainerState, config_yaml, writing: list
) -> None:
    save_encoder(encoder, plugin, options, tmp)
    writing.append(TRAINER_TENSORS)
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
        "best_metric_name": state.best_metric_name,
        "evals_without_improvement": state.evals_without_improvement,
        "train_seconds": state.train_seconds,
        "optimizer": optimizer_meta,
        "scheduler": state.scheduler,
        "sampler": state.sampler,
        "miner": {k: v for k, v in state.miner.items() if not isinstance(v, np.ndarray)},
        "cuda_devices": len(state.cuda_rng),
        "dualenc_version": __version__,
    }
    writing.append(TRAINER_JSON)
    (tmp / TRAINER_JSON).write_text(json.dumps(record, indent=2) + "\n")
    writing.append(RUN_CONFIG)
    (tmp / RUN_CONFIG).write_text(config_yaml)
    writing.append(TRAINING_JSON)  # provenance for the model card of dualenc export
    write_training_record(tmp, config_yaml, state.step)
    writing.append("")  # then only links and renames, whose errors name their files
    fsync_tree(tmp)


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of the safetensors file ``path``; a missing, cut-short or garbled file is a
    ``DualencError`` naming it."""
    if not Path(path).is_file():
        raise DualencError(f"{path}: file not found; the checkpoint is incomplete")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise DualencError(
            f"{path}: not a readable safetensors file ({exc}); the checkpoint is damaged"
        ) from None


# trainer_state.json: each key and the type its value must have
TRAINER_JSON_KEYS = {
    "step": int,
    "best_metric": (int, float, type(None)),
    "optimizer": dict,
    "scheduler": dict,
    "sampler": dict,
    "miner": dict,
    "cuda_devices": int,
}
# keys that checkpoints written before they were saved lack
OPTIONAL_TRAINER_JSON_KEYS = {
    "best_metric_name": (str, type(None)),
    "evals_without_improvement": int,
    "train_seconds": (int, float),
}


def load_trainer_state(directory: Path, loss_module: torch.nn.Module | None) -> TrainerState:
    directory = resolve(directory)
    json_path = directory / TRAINER_JSON
    if not json_path.is_file():
        raise DualencError(f"{directory}: no {TRAINER_JSON}; not a resumable training checkpoint")
    record = read_json(json_path)
    if not isinstance(record, dict):
        raise DualencError(f"{json_path}: expected a JSON object, got {type(record).__name__}")
    for key, kind in {**TRAINER_JSON_KEYS, **OPTIONAL_TRAINER_JSON_KEYS}.items():
        if key not in record and key in OPTIONAL_TRAINER_JSON_KEYS:
            continue
        if key not in record:
            raise DualencError(f"{json_path}: missing key {key!r}; the checkpoint is damaged")
        if not isinstance(record[key], kind) or isinstance(record[key], bool):
            raise DualencError(f"{json_path}: {key!r} has the wrong type ({type(record[key]).__name__})")
    train_seconds = record.get("train_seconds", 0.0)
    if not math.isfinite(train_seconds) or train_seconds < 0:
        raise DualencError(f"{json_path}: 'train_seconds' must be a finite number >= 0, got {train_seconds}")
    tensors_path = directory / TRAINER_TENSORS
    tensors = read_tensors(tensors_path)
    try:
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
            best_metric_name=record.get("best_metric_name"),
            evals_without_improvement=record.get("evals_without_improvement", 0),
            train_seconds=float(train_seconds),
        )
    except (KeyError, ValueError, TypeError, RuntimeError) as exc:
        raise DualencError(
            f"{json_path} and {tensors_path} do not agree ({type(exc).__name__}: {exc}); "
            "the checkpoint is damaged"
        ) from None


# --- a run's checkpoints: saving as it goes, resuming ----------------------------------


# config keys a resume may change and still go on exactly
NOT_CHANGES = ("train.max_train_seconds",)


def config_changes(old_yaml: str, config: Any) -> list[str]:
    """``key: old -> new`` for every value that differs between a checkpoint's resolved config
    and the run's ``config`` (a RunConfig). A key the checkpoint's config lacks (it was written
    before the key existed) counts as its default: a change only when ``config`` sets another
    value. ``train.max_train_seconds`` is not a change: a resume may extend the time budget and
    still go on exactly (the schedule runs on max_steps)."""
    from dualenc.core.configio import fill_defaults, unstructure

    def flat(node, prefix=""):
        if isinstance(node, dict):
            out = {}
            for key, value in node.items():
                out.update(flat(value, f"{prefix}{key}."))
            return out
        return {prefix[:-1]: node}

    written = yaml.safe_load(old_yaml)
    filled = fill_defaults(written, config) if isinstance(written, dict) else None
    old = flat(written if filled is None else filled)  # None: compared as written
    new = flat(unstructure(config))
    return [
        f"{key}: {old.get(key)!r} -> {new.get(key)!r}"
        for key in sorted(set(old) | set(new))
        if old.get(key) != new.get(key) and not key.startswith("output_dir") and key not in NOT_CHANGES
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
    clock: Any  # the run's core.loop.TrainClock: saved, and restored by an exact resume

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

    def save(self, step: int, best: BestMetric, *, periodic: bool, is_best: bool, last: bool = True) -> Path:
        state = TrainerState(
            step=step,
            optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict(),
            sampler=self.sampler.state_dict(),
            miner=self.miner.state_dict(),
            best_metric=best.value,
            torch_rng=torch.get_rng_state(),
            cuda_rng=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            best_metric_name=best.name,
            evals_without_improvement=best.stale,
            train_seconds=self.clock.seconds(),
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
            best=best_name(best.name) if is_best else None,
            keep_last=self.config.train.keep_last,
            last=last,
        )

    def resume(self, directory: Path, best: BestMetric) -> int:
        """Continue from the checkpoint in ``directory``, whose weights the encoder holds.

        With the same config it resumes exactly: optimizer, schedule, batch order, miner, RNG,
        step, the best metric's value and early stopping's count (into ``best``) and the
        training time spent (into ``clock``) go on as if never stopped. With a changed config
        only the weights carry over. Returns the step to go on from.
        """
        directory = resolve(Path(directory))
        config_path = directory / RUN_CONFIG
        if not config_path.is_file():
            raise DualencError(
                f"{config_path}: not found; a training checkpoint holds the config it was trained "
                "with (restore the file, or resume from another checkpoint of the run)"
            )
        try:
            changes = config_changes(config_path.read_text(encoding="utf-8"), self.config)
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            reason = " ".join(str(exc).split())  # yaml's message spans lines
            raise DualencError(
                f"{config_path}: not valid YAML ({reason}); the checkpoint is damaged"
            ) from None
        if changes or not (directory / TRAINER_JSON).is_file():
            log.info(
                "starting from the weights of %s; new optimizer and schedule. Config changes:\n  %s",
                directory,
                "\n  ".join(changes) or "(none)",
            )
            return 0
        log.info("resuming exactly from %s", directory)
        state = load_trainer_state(directory, self._loss_module)
        try:
            self.optimizer.load_state_dict(state.optimizer)
            self.scheduler.load_state_dict(state.scheduler)
            self.sampler.load_state_dict(state.sampler)
            self.miner.load_state_dict(state.miner)
            torch.set_rng_state(state.torch_rng)
        except (KeyError, ValueError, TypeError, RuntimeError) as exc:
            raise DualencError(
                f"{directory / TRAINER_JSON}: does not fit this run's optimizer, schedule, batches or "
                f"miner ({type(exc).__name__}: {exc}); the checkpoint is damaged"
            ) from None
        if state.cuda_rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state.cuda_rng)
        if state.best_metric_name in (None, best.name):  # None: saved before the name was
            best.value, best.stale = state.best_metric, state.evals_without_improvement
        self.clock.spent = state.train_seconds
        return state.step


# --- encoder identity -----------------------------------------------------------------

# the checkpoint files whose bytes identify an encoder; the optional ones only when present
# (config_sentence_transformers.json holds the built-in encoders' query and code prompts)
CHECKPOINT_FILES = (ENCODER_CONFIG, ENCODER_WEIGHTS)
OPTIONAL_CHECKPOINT_FILES = ("tokenizer.json", "config_sentence_transformers.json")


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

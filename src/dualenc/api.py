"""``dualenc.train`` and ``dualenc.mine``: a training run, or a round of hard-negative
mining, from Python, the same ones ``dualenc train`` and ``dualenc mine`` make.

    result = dualenc.train("configs/quickstart.yaml", overrides={"train.max_steps": 50})
    result.best_checkpoint  # a folder dualenc.Encoder.load reads
    dualenc.mine("configs/quickstart.yaml", out="mined.jsonl", checkpoint=result.best_checkpoint)

The config goes through the same validation as the command line's and problems raise
``ConfigError`` / ``DualencError``; nothing calls ``sys.exit`` or configures logging, and
no signal handler is left installed, so it runs in a notebook or a thread. Importing this
module loads neither torch nor faiss.
"""

from __future__ import annotations

import contextvars
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dualenc.core.config import RunConfig
    from dualenc.core.loop import TrainResult
    from dualenc.core.mine import MineResult
    from dualenc.registry.catalog import Catalog

# a display setting of this call, not of the run: a config key would make a resume with
# another value a changed config, which restarts the optimiser
_PROGRESS: contextvars.ContextVar[bool] = contextvars.ContextVar("dualenc_progress", default=True)


def progress_enabled() -> bool:
    """False while ``dualenc.train(..., progress=False)`` runs in this thread (context):
    trackers and other plugins that draw progress bars leave them out."""
    return _PROGRESS.get()


def train(
    config: str | os.PathLike | Mapping[str, Any] | RunConfig,
    *,
    overrides: Mapping[str, Any] | Sequence[str] | None = None,
    plugins: Mapping[str, str | Sequence[str]] | Sequence[Any] | Any = None,
    resume_from: str | os.PathLike | None = None,
    stop_after: int | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train a dual encoder as ``dualenc train`` does; returns the run's ``TrainResult``.

    ``config``: a YAML file, a mapping of the same keys, or a ``RunConfig``; each is validated
    again, with ``overrides`` applied, as the command line does.
    ``overrides``: ``{"train.max_steps": 200}`` or ``["train.max_steps=200"]``, as ``--set``.
    ``plugins``: ``{"miner": "faiss", "trackers": ["jsonl"]}`` selects components, as
    ``--plugin``; a list holds plugin objects (modules, classes or instances with
    ``@dualenc.hookimpl`` functions) to use besides the installed plugins, and may hold
    ``"kind=name"`` selections too.
    ``resume_from``, ``stop_after``: as ``--resume-from`` and ``--stop-after``.
    ``progress``: False leaves out the console tracker's progress bar (its evaluation lines
    stay).
    """
    from dualenc.registry.catalog import load_catalog

    selection, objects = split_plugins(plugins)
    return run(
        config,
        catalog=load_catalog(plugins=objects),
        overrides=overrides,
        selection=selection,
        resume_from=resume_from,
        stop_after=stop_after,
        progress=progress,
    )


def run(
    config: str | os.PathLike | Mapping[str, Any] | RunConfig | None,
    *,
    catalog: Catalog,
    overrides: Mapping[str, Any] | Sequence[str] | None = None,
    selection: Sequence[str] = (),
    resume_from: str | os.PathLike | None = None,
    stop_after: int | None = None,
    progress: bool = True,
) -> TrainResult:
    """``train`` through a catalog already built (the command line's); ``selection`` holds
    ``"kind=name"`` strings. ``config`` None: every default."""
    from dualenc.core.loop import train as train_loop

    resolved = resolve_config(config, overrides=overrides, selection=selection, catalog=catalog)
    token = _PROGRESS.set(bool(progress))
    try:
        return train_loop(
            resolved,
            resume_from=Path(resume_from) if resume_from is not None else None,
            stop_after=stop_after,
            catalog=catalog,
        )
    finally:
        _PROGRESS.reset(token)


def mine(
    config: str | os.PathLike | Mapping[str, Any] | RunConfig,
    *,
    out: str | os.PathLike,
    checkpoint: str | os.PathLike | None = None,
    corpus: str | os.PathLike | None = None,
    corpus_field: str = "code",
    seed: int | None = None,
    overrides: Mapping[str, Any] | Sequence[str] | None = None,
    plugins: Mapping[str, str | Sequence[str]] | Sequence[Any] | Any = None,
) -> MineResult:
    """Mine one round of hard negatives as ``dualenc mine`` does: every training pair of
    ``config`` written to ``out`` as a ``{query, code, neg: [...]}`` row, the manifest beside
    it; returns the ``MineResult`` (paths and counts).

    ``config``, ``overrides`` and ``plugins`` as for ``train`` (``plugins={"miner": "bm25"}``
    picks the miner); ``checkpoint``, ``corpus``, ``corpus_field`` and ``seed`` as the flags
    ``--checkpoint``, ``--corpus``, ``--corpus-field`` and ``--seed``. The manifest's
    ``command`` is null: its resolved ``config`` says what ran.
    """
    from dualenc.registry.catalog import load_catalog

    selection, objects = split_plugins(plugins)
    return mine_run(
        config,
        catalog=load_catalog(plugins=objects),
        overrides=overrides,
        selection=selection,
        out=out,
        checkpoint=checkpoint,
        corpus=corpus,
        corpus_field=corpus_field,
        seed=seed,
    )


def mine_run(
    config: str | os.PathLike | Mapping[str, Any] | RunConfig | None,
    *,
    catalog: Catalog,
    out: str | os.PathLike,
    overrides: Mapping[str, Any] | Sequence[str] | None = None,
    selection: Sequence[str] = (),
    checkpoint: str | os.PathLike | None = None,
    corpus: str | os.PathLike | None = None,
    corpus_field: str = "code",
    seed: int | None = None,
    command: str | None = None,
) -> MineResult:
    """``mine`` through a catalog already built (the command line's); ``command``: the
    invocation the manifest records. ``config`` None: every default."""
    from dualenc.core.mine import mine_to_file

    resolved = resolve_config(config, overrides=overrides, selection=selection, catalog=catalog)
    return mine_to_file(
        resolved,
        out=out,
        checkpoint=checkpoint,
        corpus=corpus,
        corpus_field=corpus_field,
        seed=seed,
        catalog=catalog,
        command=command,
    )


def resolve_config(
    config: str | os.PathLike | Mapping[str, Any] | RunConfig | None,
    *,
    overrides: Mapping[str, Any] | Sequence[str] | None = None,
    selection: Sequence[str] = (),
    catalog: Catalog | None = None,
) -> RunConfig:
    """The validated ``RunConfig`` of a path, mapping or ``RunConfig``, overrides applied."""
    from dualenc.core.config import RunConfig
    from dualenc.core.configio import load_config, unstructure

    if isinstance(config, RunConfig):
        config = unstructure(config)  # checked again, like a mapping: it may be hand-made
    elif isinstance(config, (str, os.PathLike)):
        config = Path(config)
    elif config is not None and not isinstance(config, Mapping):
        raise TypeError(
            f"config: expected a YAML path, a mapping or a RunConfig, got {type(config).__name__}"
        )
    return load_config(config, plugins=list(selection), sets=override_strings(overrides), catalog=catalog)


def override_strings(overrides: Mapping[str, Any] | Sequence[str] | None) -> list[str]:
    """``--set`` strings: a mapping's values are written as YAML, which reads them back."""
    import yaml

    from dualenc.core.configio import plain_data

    if overrides is None:
        return []
    if isinstance(overrides, Mapping):
        return [
            f"{key}={_yaml_scalar(yaml.safe_dump(plain_data(value), default_flow_style=True, width=1 << 30))}"
            for key, value in overrides.items()
        ]
    if isinstance(overrides, str):
        raise TypeError(f"overrides: expected a mapping or a list of 'key=value' strings, got {overrides!r}")
    return list(overrides)


def _yaml_scalar(text: str) -> str:
    """A dumped value without the document end marker yaml adds after a plain scalar."""
    return text.strip().removesuffix("...").strip()


def split_plugins(plugins: Any) -> tuple[list[str], list[Any]]:
    """(``"kind=name"`` selections, plugin objects) of ``train``'s ``plugins``."""
    if plugins is None:
        return [], []
    if isinstance(plugins, Mapping):
        selection = []
        for kind, name in plugins.items():
            if not isinstance(name, str):  # the trackers' list
                name = ",".join(name)
            selection.append(f"{kind}={name}")
        return selection, []
    if isinstance(plugins, str):
        raise TypeError(f"plugins: expected a mapping of kind to name or a list, got {plugins!r}")
    items = plugins if isinstance(plugins, (list, tuple)) else [plugins]
    selection = [item for item in items if isinstance(item, str)]
    return selection, [item for item in items if not isinstance(item, str)]

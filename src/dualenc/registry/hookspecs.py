"""The hooks a dualenc plugin implements.

A plugin is a module (or object) named by an entry point in the ``dualenc`` group::

    [project.entry-points.dualenc]
    my_loss = "my_package.plugin"

Each component hook receives one callback, ``register(name, factory, *, options=None,
description=None)``:

- ``name``: unique within its kind across all installed packages;
- ``factory(options)``: returns the component; it is called once per run;
- ``options``: a frozen attrs class; the component's YAML block is structured into it with
  key-path errors (``loss.temperature: must be > 0 (got -1)``). ``None`` means no options;
- ``description``: one line for ``dualenc plugins list``;
- ``always_on`` (trackers only): the tracker runs in every run, selected or not; the
  built-in ``jsonl`` (the run's own ``metrics.jsonl``) is one.

The protocol each component must follow is in :mod:`dualenc.registry.kinds`; both it and
``Register`` are importable from ``dualenc``.
Every hook collects all results; none is firstresult. dualenc calls each plugin's hook
separately, so it knows which distribution registered which component.
"""

from collections.abc import Callable
from typing import Any, Protocol

import pluggy

PROJECT = "dualenc"
API_VERSION = "1.0"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


class Register(Protocol):
    """The callback each component hook receives; annotate a hook's parameter with it."""

    def __call__(
        self,
        name: str,
        factory: Callable[[Any], Any],
        *,
        options: type | None = None,
        description: str | None = None,
        always_on: bool = False,
    ) -> None: ...


@hookspec
def register_encoders(register):
    """Register encoders: models that turn token ids into L2-normalised vectors.

    Call ``register("name", factory, options=OptionsClass, description="...")`` once per
    encoder. ``factory(options)`` returns an object following ``kinds.EncoderModel``.
    """


@hookspec
def register_losses(register):
    """Register contrastive losses.

    ``factory(options)`` returns an object following ``kinds.Loss``: called with a
    ``kinds.ContrastiveBatch`` it returns a scalar tensor to minimise.
    """


@hookspec
def register_miners(register):
    """Register negative miners: sources of extra negatives for each training query.

    ``factory(options)`` returns an object following ``kinds.Miner``.
    """


@hookspec
def register_evaluators(register):
    """Register evaluators: they score an encoder on a held-out set of query/code pairs.

    ``factory(options)`` returns an object following ``kinds.Evaluator``.
    """


@hookspec
def register_trackers(register):
    """Register trackers: sinks for the metrics and the resolved config of a run.

    ``factory(options)`` returns an object following ``kinds.Tracker``.
    """


@hookspec
def register_commands(cli):
    """Add subcommands to the ``dualenc`` command line.

    ``cli`` is the root ``click.Group``; call ``cli.add_command(...)`` or use
    ``@cli.command()``. Return nothing.
    """


@hookspec
def dualenc_api_version():
    """Return the range of plugin API versions this plugin supports, e.g. ``">=1.0,<2"``.

    Optional. dualenc's current API version is ``dualenc.registry.hookspecs.API_VERSION``;
    a plugin whose range excludes it is reported as incompatible and cannot be selected.
    """

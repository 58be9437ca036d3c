"""The catalog: every installed component, with the distribution that provides it.

Built-in components come through the same ``dualenc`` entry-point group as third-party
ones. A plugin that fails to import, or whose hook raises (``register_commands`` included),
is recorded as broken (with the error's last line) instead of breaking dualenc; only
selecting one of its components fails.
"""

from __future__ import annotations

import importlib.metadata as md
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any

import attrs
import pluggy
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import Version

from dualenc.core.io import did_you_mean
from dualenc.errors import DualencError
from dualenc.registry import hookspecs
from dualenc.registry.kinds import KINDS, Component

if TYPE_CHECKING:
    import click

GROUP = hookspecs.PROJECT


@attrs.frozen
class PluginProblem:
    """An entry point that could not be used: it failed to import, one of its hooks raised, or it
    wants another API."""

    entry_point: str
    distribution: str
    version: str
    error: str


@attrs.frozen
class Catalog:
    components: tuple[Component, ...]
    problems: tuple[PluginProblem, ...] = ()

    def of_kind(self, kind: str) -> list[Component]:
        return sorted((c for c in self.components if c.kind == kind), key=lambda c: c.name)

    def get(self, kind: str, name: str) -> Component:
        """The component ``name`` of ``kind``, or an error listing what is available."""
        if kind not in KINDS:
            raise DualencError(
                f"unknown component kind {kind!r}; kinds are: {', '.join(KINDS)}" + did_you_mean(kind, KINDS)
            )
        matches = [c for c in self.components if c.kind == kind and c.name == name]
        if len(matches) > 1:
            owners = " and ".join(f"{c.distribution} {c.version}" for c in matches)
            raise DualencError(
                f"{kind} {name!r} is registered by more than one package: {owners}; uninstall one of them"
            )
        if matches:
            return matches[0]
        available = self.of_kind(kind)
        listing = ", ".join(f"{c.name} ({c.distribution})" for c in available) or "none"
        message = f"unknown {kind} {name!r}; available: {listing}" + did_you_mean(
            name, [c.name for c in available]
        )
        for problem in self.problems:
            message += (
                f"\nnote: plugin {problem.entry_point} from {problem.distribution} "
                f"{problem.version} could not be loaded: {problem.error}"
            )
        raise DualencError(message)


def _supports_api(plugin: Any) -> str | None:
    """None when the plugin accepts our API version, else why not."""
    declare = getattr(plugin, "dualenc_api_version", None)
    if declare is None:
        return None
    spec = declare()
    try:
        accepted = Version(hookspecs.API_VERSION) in SpecifierSet(spec)
    except InvalidSpecifier:
        return f"declares an invalid API version range {spec!r}"
    if accepted:
        return None
    return f"incompatible: wants dualenc plugin API {spec}; this dualenc provides {hookspecs.API_VERSION}"


# the distribution and version shown for a plugin object passed to load_catalog
IN_PROCESS = ("<python>", "in-process")


def _load_plugins(group: str, objects: Sequence[Any] = ()):
    """A plugin manager holding every usable entry point of ``group`` and every plugin object
    in ``objects``, and the problems."""
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    problems: list[PluginProblem] = []
    provenance: dict[str, tuple[str, str]] = {}

    def add(label: str, name: str, dist_name: str, dist_version: str, load: Callable[[], Any]) -> None:
        try:
            plugin = load()
            refusal = _supports_api(plugin)
            if refusal is None and not manager.is_registered(plugin):
                manager.register(plugin, name=label)
        except Exception as exc:  # noqa: BLE001 - an import failure is reported, not raised
            refusal = _last_line(exc)
        if refusal is not None:
            problems.append(PluginProblem(name, dist_name, dist_version, refusal))
            return
        provenance[label] = (dist_name, dist_version)

    for entry_point in sorted(md.entry_points(group=group), key=lambda ep: ep.name):
        dist = entry_point.dist
        dist_name = dist.name if dist else "unknown"
        dist_version = dist.version if dist else "unknown"
        label = f"{dist_name}:{entry_point.name}"
        if manager.has_plugin(label):
            continue  # the same distribution seen twice on sys.path
        add(label, entry_point.name, dist_name, dist_version, entry_point.load)
    for plugin in objects:
        _check_object(plugin)
        name = _object_name(plugin)
        add(f"{IN_PROCESS[0]}:{name}", name, *IN_PROCESS, lambda plugin=plugin: plugin)
    return manager, provenance, problems


def _object_name(plugin: Any) -> str:
    """``module.qualname`` of a module, class or function; an instance is named by its class."""
    named = plugin if hasattr(plugin, "__qualname__") or isinstance(plugin, ModuleType) else type(plugin)
    if isinstance(named, ModuleType):
        return named.__name__
    return f"{named.__module__}.{named.__qualname__}"


def _check_object(plugin: Any) -> None:
    """A plugin object must implement some hook: anything else was passed by mistake, which
    is raised at once (a broken installed plugin is only recorded)."""
    if not any(hasattr(getattr(plugin, name, None), f"{GROUP}_impl") for name in dir(plugin)):
        raise DualencError(
            f"{_object_name(plugin)} is not a dualenc plugin: it has no @dualenc.hookimpl functions"
        )


def load_catalog(
    group: str = GROUP, cli: click.Group | None = None, *, plugins: Sequence[Any] = ()
) -> Catalog:
    """Discover every entry point in ``group`` and collect the components each registers;
    given the root command group ``cli``, also let every plugin add its commands to it.

    ``plugins``: plugin objects (modules, classes or instances with ``@dualenc.hookimpl``
    functions) to use besides the installed ones, such as one defined in a notebook; their
    components show the distribution ``<python>``."""
    manager, provenance, problems = _load_plugins(group, plugins)
    components: list[Component] = []
    for kind, (hook_name, _) in KINDS.items():
        for impl in getattr(manager.hook, hook_name).get_hookimpls():
            registered: list[Component] = []
            register = _registrar(registered, kind, *provenance[impl.plugin_name])
            if _call_hook(impl, provenance, problems, register=register):
                components.extend(registered)
    if cli is not None:
        for impl in manager.hook.register_commands.get_hookimpls():
            before = dict(cli.commands)
            if not _call_hook(impl, provenance, problems, cli=cli):
                cli.commands.clear()  # drop what it added before it raised
                cli.commands.update(before)
    return Catalog(tuple(components), tuple(problems))


def _call_hook(impl, provenance, problems: list[PluginProblem], **arguments) -> bool:
    """Call one plugin's hook; when it raises, record the plugin as broken and return False."""
    try:
        impl.function(**arguments)
    except Exception as exc:  # noqa: BLE001 - a hook that fails is reported like an import
        dist_name, dist_version = provenance[impl.plugin_name]
        entry_point = impl.plugin_name.partition(":")[2]
        problems.append(PluginProblem(entry_point, dist_name, dist_version, _last_line(exc)))
        return False
    return True


def _last_line(exc: Exception) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[-1] if lines else ''}".rstrip(": ")


def _registrar(components: list[Component], kind: str, dist: str, version: str):
    """The ``register`` callback handed to one plugin's hook for one kind."""

    def register(name, factory, *, options=None, description=None, always_on=False):
        if not isinstance(name, str) or not name.strip():
            raise DualencError(f"{dist} registered a {kind} with an invalid name {name!r}")
        if options is not None and not attrs.has(options):
            raise DualencError(f"{dist}: {kind} {name!r}: options must be an attrs class")
        lines = (description or "").strip().splitlines()
        if always_on and kind != "tracker":
            raise DualencError(f"{dist}: {kind} {name!r}: only trackers can be always on")
        description = lines[0] if lines else ""
        components.append(
            Component(kind, name, factory, options, description, dist, version, bool(always_on))
        )

    return register

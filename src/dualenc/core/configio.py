"""YAML -> dict -> overrides -> attrs, reporting every problem at once with its key path.

Two phases: the root ``RunConfig`` is structured with each component block left as a dict;
then each block is structured into the options class of the plugin the selection names.
Validators are disabled while structuring and run afterwards, field by field, so that all
problems are reported together as ``file:line: key.path: message``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import cattrs
import yaml
from cattrs.errors import (
    ClassValidationError,
    ForbiddenExtraKeysError,
    IterableValidationError,
)

from dualenc.core.config import RunConfig
from dualenc.core.io import close_match, did_you_mean
from dualenc.errors import ConfigError
from dualenc.registry.catalog import Catalog

SINGLE_KINDS = ("encoder", "loss", "miner", "evaluator")
SET_SOURCE = "--set"
PLUGIN_SOURCE = "--plugin"


def _strict(kind: type, expected: str):
    def structure(value, _type):
        if kind is float and isinstance(value, str):
            try:  # YAML 1.1 reads 1e-4 (no dot) as a string
                return float(value)
            except ValueError:
                pass
        ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if not ok:
            raise TypeError(f"expected {expected}, got {type(value).__name__} {value!r}")
        return value

    return structure


def _sequence_hook(type_):
    (item,) = {a for a in type_.__args__ if a is not Ellipsis}

    def structure(value, _type):
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"expected a list, got {type(value).__name__} {value!r}")
        return tuple(CONVERTER.structure(v, item) for v in value)

    return structure


def make_converter() -> cattrs.Converter:
    converter = cattrs.Converter(forbid_extra_keys=True)
    converter.register_structure_hook(int, _strict(int, "an integer"))
    converter.register_structure_hook(float, _strict(float, "a number"))
    converter.register_structure_hook(bool, _strict(bool, "true or false"))
    converter.register_structure_hook(str, _strict(str, "a string"))
    converter.register_structure_hook(Any, lambda value, _: value)
    converter.register_structure_hook_factory(
        lambda t: getattr(t, "__origin__", None) is tuple, _sequence_hook
    )
    converter.register_unstructure_hook(tuple, list)  # YAML has lists, not tuples
    return converter


CONVERTER = make_converter()


@attrs.define
class Problems:
    """Collects problems and formats each with its source (file and line, or the flag)."""

    source: str
    lines: dict[tuple, int]
    origins: dict[tuple, str]
    items: list[str] = attrs.field(factory=list)
    _lines: list[int] = attrs.field(factory=list, init=False)

    def add(self, path: tuple, message: str) -> None:
        dotted = ".".join(str(p) for p in path) or "(top level)"
        where, line = self.source, 0
        for depth in range(len(path), -1, -1):
            prefix = tuple(path[:depth])
            if prefix in self.origins:
                where = self.origins[prefix]
                break
            if prefix in self.lines:
                line = self.lines[prefix]
                where = f"{self.source}:{line}"
                break
        # keep file order: insert after every problem on an earlier or the same line
        position = len(self.items)
        while position > 0 and self._lines[position - 1] > line:
            position -= 1
        self.items.insert(position, f"{where}: {dotted}: {message}")
        self._lines.insert(position, line)

    def note(self, message: str) -> None:
        """A problem that belongs to no key (a malformed flag)."""
        self.items.insert(0, message)
        self._lines.insert(0, 0)


def _line_map(node, path=()) -> dict[tuple, int]:
    lines: dict[tuple, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            sub = path + (key_node.value,)
            lines[sub] = key_node.start_mark.line + 1
            lines.update(_line_map(value_node, sub))
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines[path + (index,)] = item.start_mark.line + 1
            lines.update(_line_map(item, path + (index,)))
    return lines


def read_yaml(path: str | Path) -> tuple[dict, dict[tuple, int]]:
    """The mapping in a YAML file and the line of every key in it."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{path}: config file not found"]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})"]) from None
    try:
        data = yaml.safe_load(text)
        node = yaml.compose(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        reason = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([f"{where}: invalid YAML: {reason}"]) from None
    if data is None:
        return {}, {}
    if not isinstance(data, dict):
        raise ConfigError([f"{path}: the top level must be a mapping of sections"])
    return data, _line_map(node)


def _translate_seed(data: dict, lines: dict[tuple, int]) -> dict:
    """Accept the seed's spellings: model -> encoder, training -> train,
    train.temperature -> loss.temperature, train.use_hard_negatives -> plugins.miner."""

    def move(src: tuple, dst: tuple) -> None:
        for key, line in list(lines.items()):
            if key[: len(src)] == src:
                lines.setdefault(dst + key[len(src) :], line)

    data = dict(data)
    for seed, ours in (("model", "encoder"), ("training", "train")):
        if seed in data and ours not in data:
            data[ours] = data.pop(seed)
            move((seed,), (ours,))
    train = data.get("train")
    if isinstance(train, dict):
        train = dict(train)
        if "temperature" in train:
            loss = dict(data.get("loss") or {})
            loss.setdefault("temperature", train.pop("temperature"))
            data["loss"] = loss
            move(("train", "temperature"), ("loss", "temperature"))
        if "use_hard_negatives" in train:
            flag = train.pop("use_hard_negatives")
            move(("train", "use_hard_negatives"), ("plugins", "miner"))
            if flag is True:
                data["plugins"] = {**(data.get("plugins") or {}), "miner": "faiss"}
            elif flag is not False:
                data["plugins"] = {**(data.get("plugins") or {}), "miner": flag}
        data["train"] = train
    return data


def _apply_sets(data: dict, sets: list[str], problems: Problems) -> None:
    for item in sets:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            problems.note(f"{SET_SOURCE} {item!r}: expected dotted.key=value")
            continue
        path = tuple(key.strip().split("."))
        target = data
        for part in path[:-1]:
            child = target.get(part)
            if not isinstance(child, dict):
                child = {} if child is None else child
                target[part] = child
            if not isinstance(child, dict):
                problems.note(f"{SET_SOURCE} {key}: {part} is not a section")
                break
            target = child
        else:
            value = yaml.safe_load(raw) if raw.strip() else ""
            target[path[-1]] = value
            problems.origins[path] = f"{SET_SOURCE} {key}"


def _apply_plugins(data: dict, plugins: list[str], problems: Problems) -> None:
    selection = data.setdefault("plugins", {})
    if not isinstance(selection, dict):
        return  # reported when structuring
    choices = (*SINGLE_KINDS, "trackers")
    for item in plugins:
        kind, sep, name = item.partition("=")
        kind, name = kind.strip(), name.strip()
        if not sep or not name:
            problems.note(f"{PLUGIN_SOURCE} {item!r}: expected kind=name")
            continue
        if kind not in choices:
            problems.note(
                f"{PLUGIN_SOURCE} {item}: unknown kind {kind!r}; kinds are: {', '.join(choices)}"
                + did_you_mean(kind, choices)
            )
            continue
        selection[kind] = [n.strip() for n in name.split(",") if n.strip()] if kind == "trackers" else name
        problems.origins[("plugins", kind)] = f"{PLUGIN_SOURCE} {kind}"


def unknown_key(key, valid: list[str]) -> str:
    close = close_match(key, valid)
    if close:
        return f"unknown key; did you mean {close!r}?"
    return f"unknown key; valid keys: {', '.join(valid)}"


def _walk_errors(exc: BaseException, path: tuple, problems: Problems):
    if isinstance(exc, (ClassValidationError, IterableValidationError)):
        with_notes, without = exc.group_exceptions()
        for sub, note in with_notes:
            step = getattr(note, "name", None)
            if step is None:
                step = getattr(note, "index", None)
            _walk_errors(sub, path + (step,), problems)
        for sub in without:
            _walk_errors(sub, path, problems)
    elif isinstance(exc, ForbiddenExtraKeysError):
        valid = [f.name for f in attrs.fields(exc.cl)] if attrs.has(exc.cl) else []
        for key in sorted(exc.extra_fields):
            problems.add(path + (key,), unknown_key(key, valid))
    elif isinstance(exc, KeyError):
        problems.add(path, "required key is missing")
    else:
        message = str(exc)
        if isinstance(exc, AttributeError):  # cattrs calling .items() on a non-mapping
            message = "expected a mapping of keys to values"
        problems.add(path, message)


def structure(data: Any, cls: type, path: tuple, problems: Problems) -> Any:
    """Structure ``data`` into the attrs class ``cls`` field by field.

    Every problem is recorded; a field that fails keeps its default so that the remaining
    fields are still checked. Returns None only when ``data`` is not a mapping.
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        problems.add(path, f"expected a mapping of keys to values, got {type(data).__name__}")
        return None
    fields = {field.name: field for field in attrs.fields(attrs.resolve_types(cls))}
    for key in data:
        if key not in fields:
            problems.add(path + (key,), unknown_key(key, list(fields)))
    values: dict[str, Any] = {}
    for name, field in fields.items():
        if name not in data:
            continue
        if attrs.has(field.type):
            value = structure(data[name], field.type, path + (name,), problems)
        else:
            try:
                value = CONVERTER.structure(data[name], field.type)
            except Exception as exc:  # noqa: BLE001 - every failure becomes a path message
                _walk_errors(exc, path + (name,), problems)
                value = None
        if value is not None or data[name] is None:
            values[name] = value
    with attrs.validators.disabled():
        obj = cls(**values)
    for name, field in fields.items():
        if field.validator is not None and name in values:
            try:
                field.validator(obj, field, values[name])
            except (ValueError, TypeError) as exc:
                problems.add(path + (name,), str(exc))
    return obj


def _resolve_components(config: RunConfig, catalog: Catalog, problems: Problems) -> RunConfig:
    """Structure each selected component's block into its plugin's options class."""
    changes: dict[str, Any] = {}
    for kind in SINGLE_KINDS:
        name = getattr(config.plugins, kind)
        block = getattr(config, kind)
        try:
            component = catalog.get(kind, name)
        except Exception as exc:  # noqa: BLE001 - DualencError with the available list
            problems.add(("plugins", kind), str(exc))
            continue
        changes[kind] = _structure_options(component, block, (kind,), problems)
    trackers = dict(config.trackers)
    for name in config.plugins.trackers:
        try:
            component = catalog.get("tracker", name)
        except Exception as exc:  # noqa: BLE001
            problems.add(("plugins", "trackers"), str(exc))
            continue
        trackers[name] = _structure_options(component, trackers.get(name), ("trackers", name), problems)
    changes["trackers"] = trackers
    return attrs.evolve(config, **changes)


def _structure_options(component, block: Any, path: tuple, problems: Problems) -> Any:
    if component.options is None:
        if block:
            problems.add(path, f"{component.kind} {component.name!r} takes no options")
        return None
    if attrs.has(type(block)):
        return block  # already structured (a RunConfig made in Python)
    return structure(block, component.options, path, problems)


def load_config(
    path: str | Path | None = None,
    *,
    plugins: list[str] = (),
    sets: list[str] = (),
    catalog: Catalog | None = None,
    data: dict | None = None,
) -> RunConfig:
    """Load, override and validate a config; raise ConfigError listing every problem."""
    from dualenc.registry.catalog import load_catalog

    source = str(path) if path is not None else "<config>"
    lines: dict[tuple, int] = {}
    if path is not None:
        data, lines = read_yaml(path)
    data = _translate_seed(dict(data or {}), lines)
    problems = Problems(source, lines, {})
    _apply_sets(data, list(sets), problems)
    _apply_plugins(data, list(plugins), problems)
    config = structure(data, RunConfig, (), problems) or RunConfig()
    # resolve components even after problems above, so that all are reported at once
    config = _resolve_components(config, catalog or load_catalog(), problems)
    if problems.items:
        raise ConfigError(problems.items)
    return config


def unstructure(config: RunConfig) -> dict:
    """The fully resolved config as plain data; ``load_config(data=...)`` gives it back."""
    return CONVERTER.unstructure(config)


def dump_yaml(config: RunConfig) -> str:
    return yaml.safe_dump(unstructure(config), sort_keys=False, default_flow_style=False)

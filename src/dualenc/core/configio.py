"""YAML -> dict -> overrides -> attrs, reporting every problem at once with its key path.

Two phases: the root ``RunConfig`` is structured with each component block left as a dict;
then each block is structured into the options class of the plugin the selection names.
Validators are disabled while structuring and run afterwards, field by field, so that all
problems are reported together as ``file:line: key.path: message``.
"""

from __future__ import annotations

import os
import types
import typing
from collections.abc import Mapping
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

from dualenc.core.best import best_metric_problem
from dualenc.core.config import RunConfig
from dualenc.core.io import close_match, did_you_mean
from dualenc.errors import ConfigError
from dualenc.registry.catalog import Catalog

SINGLE_KINDS = ("encoder", "loss", "miner", "evaluator")
SET_SOURCE = "--set"
MAPPING_SOURCE = "<mapping>"
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
    """Collects problems and formats each with its source (file and line, or the flag).

    ``texts`` holds each scalar's text as written (a ``str`` field takes it as is);
    ``unparsed`` the ``--set`` values that are not YAML, with the reason, until a field
    takes them as text or they are reported.
    """

    source: str
    lines: dict[tuple, int]
    origins: dict[tuple, str]
    items: list[str] = attrs.field(factory=list)
    texts: dict[tuple, str] = attrs.field(factory=dict)
    unparsed: dict[tuple, str] = attrs.field(factory=dict)
    _lines: list[int] = attrs.field(factory=list, init=False)

    def add(self, path: tuple, message: str, line: int | None = None) -> None:
        dotted = ".".join(str(p) for p in path) or "(top level)"
        if line is not None:  # a problem of the file's text itself (a duplicate key)
            where = f"{self.source}:{line}"
        else:
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


def _lenient(construct):
    """A scalar constructor that gives the text as written where the typed reading fails
    (``2024-13-45``, ``!!int x``): the target field then judges the text."""

    def wrapper(loader, node):
        try:
            return construct(loader, node)
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError):
            return node.value

    return wrapper


TYPED_TAGS = tuple(f"tag:yaml.org,2002:{name}" for name in ("bool", "int", "float", "timestamp"))


class _Loader(yaml.SafeLoader):
    yaml_constructors = {
        **yaml.SafeLoader.yaml_constructors,
        **{tag: _lenient(yaml.SafeLoader.yaml_constructors[tag]) for tag in TYPED_TAGS},
    }


@attrs.define
class Parsed:
    """A YAML text read: the data, and the line and source text of every key and scalar."""

    data: Any
    lines: dict[tuple, int] = attrs.field(factory=dict)
    texts: dict[tuple, str] = attrs.field(factory=dict)
    # (path, line, line of the first occurrence) of each key given twice in one mapping
    duplicates: list[tuple[tuple, int, int]] = attrs.field(factory=list)


def parse_yaml(text: str, path: tuple = ()) -> Parsed:
    """Parse once: the composed node gives lines and texts, and is then constructed."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        parsed = Parsed(None)
        if node is not None:
            # walked first: constructing merges ``<<`` keys into the node, as if written twice
            _walk_nodes(node, path, parsed)
            parsed.data = loader.construct_document(node)
    finally:
        loader.dispose()
    return parsed


def _walk_nodes(node, path: tuple, parsed: Parsed) -> None:
    if isinstance(node, yaml.MappingNode):
        first: dict[str, int] = {}
        for key_node, value_node in node.value:
            sub = path + (key_node.value,)
            line = key_node.start_mark.line + 1
            if isinstance(key_node, yaml.ScalarNode):
                if key_node.value in first:
                    parsed.duplicates.append((sub, line, first[key_node.value]))
                first.setdefault(key_node.value, line)
            parsed.lines[sub] = line
            _walk_nodes(value_node, sub, parsed)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            parsed.lines[path + (index,)] = item.start_mark.line + 1
            _walk_nodes(item, path + (index,), parsed)
    elif isinstance(node, yaml.ScalarNode):
        parsed.texts[path] = node.value


def _yaml_reason(exc: yaml.YAMLError) -> str:
    return getattr(exc, "problem", None) or str(exc)


def read_yaml(path: str | Path) -> Parsed:
    """The mapping in a YAML file, with the line and text of every key and scalar in it."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{path}: config file not found"]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})"]) from None
    try:
        parsed = parse_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError([f"{where}: invalid YAML: {_yaml_reason(exc)}"]) from None
    if parsed.data is None:
        return Parsed({})
    if not isinstance(parsed.data, dict):
        raise ConfigError([f"{path}: the top level must be a mapping of sections"])
    return parsed


def _translate_seed(data: dict, *maps: dict[tuple, Any]) -> dict:
    """Accept the seed's spellings: model -> encoder, training -> train,
    train.temperature -> loss.temperature, train.use_hard_negatives -> plugins.miner.
    ``maps`` (lines, texts) are keyed by path: the new paths get the old paths' entries."""

    def move(src: tuple, dst: tuple) -> None:
        for entries in maps:
            for key, entry in list(entries.items()):
                if key[: len(src)] == src:
                    entries.setdefault(dst + key[len(src) :], entry)

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
            # what the file said at or below this path no longer applies
            for entries in (problems.lines, problems.texts, problems.unparsed):
                for stale in [p for p in entries if p[: len(path)] == path]:
                    del entries[stale]
            try:
                parsed = parse_yaml(raw, path) if raw.strip() else Parsed("")
            except yaml.YAMLError as exc:  # a str field takes it as written; others report it
                parsed = Parsed(raw.strip(), texts={path: raw.strip()})
                problems.unparsed[path] = _yaml_reason(exc)
            target[path[-1]] = parsed.data
            problems.texts.update(parsed.texts)
            problems.origins[path] = f"{SET_SOURCE} {key}"


def _apply_plugins(data: dict, plugins: list[str], problems: Problems) -> None:
    selection = data.setdefault("plugins", {})
    if not isinstance(selection, dict):
        return  # reported when structuring
    choices = (*SINGLE_KINDS, "trackers")
    for item in plugins:
        kind, sep, name = item.partition("=")
        kind, name = kind.strip(), name.strip()
        if not sep or not (name or kind == "trackers"):  # trackers= selects none
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


# a single key and the key that replaces it: written together, which one applies is unclear
REPLACED_KEYS = (
    ("train_file", "train_files", "to keep the file, list it in train_files"),
    ("val_file", "val_sets", "to keep the file, name it in val_sets"),
)


def _written_at(problems: Problems, path: tuple) -> tuple | None:
    """The key path at or below ``path`` where the config wrote it: ``path`` itself, or for a
    section built by ``--set a.b.c=...`` the first such flag's path; None where not written."""
    if path in problems.origins or path in problems.lines:
        return path
    return next((p for p in problems.origins if p[: len(path)] == path), None)


def _check_replaced_keys(data: dict, problems: Problems) -> None:
    """Report each of ``REPLACED_KEYS`` written along with its replacement, naming where each
    was written. A key written as null counts as not written (so ``--set data.val_file=null``
    takes back a file's val_file): its default applies; an empty replacement (``train_files:
    []``, as a resolved config shows it) replaces nothing."""
    section = data.get("data")
    if not isinstance(section, dict):
        return
    for single, several, hint in REPLACED_KEYS:
        for key in (single, several):
            if key in section and section[key] is None:
                del section[key]
        if single not in section or not section.get(several):
            continue
        at, replacement = _written_at(problems, ("data", single)), _written_at(problems, ("data", several))
        if at in problems.origins:
            where = f", {problems.origins[at]}"
        elif at in problems.lines:
            where = f", line {problems.lines[at]}"
            if replacement in problems.origins:  # the file's key, the flag's replacement
                hint += f"; --set data.{single}=null takes back the file's data.{single}"
        else:
            where = ""  # a mapping from Python: no lines
        problems.add(
            replacement or ("data", several),
            f"give data.{single} ({section[single]}{where}) or data.{several}, not both ({hint})",
        )
        del section[single]  # reported here; DataConfig's own check would say it again


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


def _named_attrs(type_: Any) -> bool:
    """A ``dict[str, C]`` field with C an attrs class: each value is structured as C."""
    args = typing.get_args(type_)
    return typing.get_origin(type_) is dict and len(args) == 2 and attrs.has(args[1])


def _structure_named(data: Any, cls: type, path: tuple, problems: Problems) -> dict | None:
    """A mapping of names to ``cls``, each structured with its key path; a scalar value is
    short for ``{cls.shorthand: value}`` where ``cls`` has one. None when not a mapping."""
    if data is None:
        return {}
    if not isinstance(data, dict):
        problems.add(path, f"expected a mapping of names to values, got {type(data).__name__}")
        return None
    shorthand = getattr(cls, "shorthand", None)
    named = {}
    for key, value in data.items():
        sub = path + (str(key),)
        if shorthand and value is not None and not isinstance(value, (dict, list)):
            value = {shorthand: problems.texts.get(sub, value)}
        item = structure(value, cls, sub, problems)
        if item is not None:
            named[str(key)] = item
    return named


def _takes_text(type_: Any) -> bool:
    """A ``str`` or ``str | None`` field: it takes a scalar's text as written."""
    if type_ is str:
        return True
    union = typing.get_origin(type_) in (typing.Union, types.UnionType)
    return union and set(typing.get_args(type_)) == {str, type(None)}


def _as_written(value: Any, type_: Any, path: tuple, texts: dict[tuple, str]) -> Any:
    """``value`` with every non-string scalar bound for a string field (``yes``, ``0123``,
    ``2024-01-01``) replaced by its source text; values from Python (no text) stay strict."""
    if _takes_text(type_):
        if value is not None and not isinstance(value, (str, dict, list)) and path in texts:
            return texts[path]
    elif typing.get_origin(type_) is tuple and isinstance(value, list):
        (item,) = {a for a in typing.get_args(type_) if a is not Ellipsis}
        return [_as_written(v, item, path + (i,), texts) for i, v in enumerate(value)]
    return value


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
            problems.unparsed.pop(path + (key,), None)  # the unknown key is the problem
            problems.add(path + (key,), unknown_key(key, list(fields)))
    values: dict[str, Any] = {}
    for name, field in fields.items():
        if name not in data:
            continue
        sub = path + (name,)
        reason = problems.unparsed.pop(sub, None)
        if reason is not None and not _takes_text(field.type):
            problems.add(sub, f"not valid YAML ({reason}): {data[name]!r}")
            continue
        raw = _as_written(data[name], field.type, sub, problems.texts)
        if attrs.has(field.type):
            value = structure(raw, field.type, sub, problems)
        elif _named_attrs(field.type):
            value = _structure_named(raw, typing.get_args(field.type)[1], sub, problems)
        else:
            try:
                value = CONVERTER.structure(raw, field.type)
            except Exception as exc:  # noqa: BLE001 - every failure becomes a path message
                _walk_errors(exc, sub, problems)
                continue  # keeps its default: its validator has nothing to add
        if value is not None or raw is None:
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
    with attrs.validators.disabled():  # structure() has checked (and reported) every field
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
    path: str | Path | Mapping | None = None,
    *,
    plugins: list[str] = (),
    sets: list[str] = (),
    catalog: Catalog | None = None,
    data: Mapping | None = None,
) -> RunConfig:
    """Load, override and validate a config; raise ConfigError listing every problem.

    ``path``: a YAML file, or a mapping of the same keys (as is ``data``); problems in a
    mapping are reported as ``<mapping>: key.path: message``."""
    from dualenc.registry.catalog import load_catalog

    if isinstance(path, Mapping):
        path, data = None, path
    source = str(path) if path is not None else MAPPING_SOURCE
    parsed = read_yaml(path) if path is not None else Parsed(plain_data(data))
    data = _translate_seed(dict(parsed.data or {}), parsed.lines, parsed.texts)
    problems = Problems(source, parsed.lines, {}, texts=parsed.texts)
    for key_path, line, first in parsed.duplicates:
        problems.add(key_path, f"duplicate key (first at line {first})", line=line)
    _apply_sets(data, list(sets), problems)
    _apply_plugins(data, list(plugins), problems)
    _check_replaced_keys(data, problems)
    config = structure(data, RunConfig, (), problems) or RunConfig()
    # resolve components even after problems above, so that all are reported at once
    config = _resolve_components(config, catalog or load_catalog(), problems)
    if (problem := best_metric_problem(config)) is not None:
        problems.add(("train", "best_metric"), problem)
    for key_path, reason in problems.unparsed.items():  # values no field took as text
        problems.add(key_path, f"not valid YAML ({reason})")
    if problems.items:
        raise ConfigError(problems.items)
    return config


def plain_data(value: Any) -> Any:
    """A mapping from Python as YAML would give it: a copy (overrides edit it in place) of
    plain dicts and lists, with paths as strings."""
    if isinstance(value, Mapping):
        return {key: plain_data(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_data(item) for item in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def check_input_files(config: RunConfig) -> None:
    """Raise ConfigError naming each data file a run reads that is missing or not a file,
    so that a wrong path is found before a model is loaded or a file tokenized."""
    from dualenc.core.data.evalsets import val_set_files

    problems = []
    files = [(f"train_files.{i}.path", file.path) for i, file in enumerate(config.data.train_files)]
    files = files or [("train_file", config.data.train_file)]
    for key, name in [*files, *val_set_files(config.data)]:
        path = Path(name)
        if not path.exists():
            problems.append(f"data.{key}: {name}: file not found")
        elif not path.is_file():
            problems.append(f"data.{key}: {name}: not a file")
    if problems:
        raise ConfigError(problems)


def unstructure(config: RunConfig) -> dict:
    """The fully resolved config as plain data; ``load_config(data=...)`` gives it back.

    Without ``data.train_file`` when ``data.train_files`` replaces it (and ``val_file`` when
    ``val_sets`` does): it does not apply, and written back beside its replacement it would be
    an error."""
    data = CONVERTER.unstructure(config)
    for single, several, _ in REPLACED_KEYS:
        if data["data"][several]:
            del data["data"][single]
    return data


def fill_defaults(data: Any, like: RunConfig) -> dict | None:
    """``data``, a resolved config as plain data (a checkpoint's config.yaml, perhaps written
    by an older dualenc), with every key the current classes have and it lacks at its default.

    A component block is structured into the options class of ``like``'s block when both
    select the same plugin (the catalog is not needed); one of another plugin stays as written.
    None when ``data`` does not structure: a removed key, a value no longer valid.
    """
    problems = Problems("<checkpoint>", {}, {})
    config = structure(data, RunConfig, (), problems)
    if config is None or problems.items:
        return None
    changes: dict[str, Any] = {}
    for kind in SINGLE_KINDS:
        options = getattr(like, kind)
        if getattr(config.plugins, kind) == getattr(like.plugins, kind) and attrs.has(type(options)):
            changes[kind] = structure(getattr(config, kind), type(options), (kind,), problems)
    trackers = dict(config.trackers)
    for name, block in trackers.items():
        options = like.trackers.get(name)
        if attrs.has(type(options)):
            trackers[name] = structure(block, type(options), ("trackers", name), problems)
    if problems.items:
        return None
    with attrs.validators.disabled():  # structure() has checked every field
        return unstructure(attrs.evolve(config, **changes, trackers=trackers))


def dump_yaml(config: RunConfig) -> str:
    return yaml.safe_dump(unstructure(config), sort_keys=False, default_flow_style=False)

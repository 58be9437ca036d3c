"""Small jobs every part of dualenc does with files: atomic writes, reading JSON and JSONL
with the file and line in every error, and "did you mean" suggestions.

Atomic means a reader sees the old file or folder or the new one, never half of either:
the new one is written beside its destination under a hidden name, flushed to disk, and
renamed into place.
"""

from __future__ import annotations

import difflib
import itertools
import json
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from dualenc.errors import DualencError

T = TypeVar("T")

# --- suggestions ----------------------------------------------------------------------


def close_match(word: str, choices: Iterable[str]) -> str | None:
    """The choice closest to ``word`` when one is close enough, else None."""
    close = difflib.get_close_matches(str(word), list(choices), n=1)
    return close[0] if close else None


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """``" (did you mean 'x'?)"``, or an empty string when nothing is close."""
    close = close_match(word, choices)
    return f" (did you mean {close!r}?)" if close else ""


# --- atomic writes --------------------------------------------------------------------


def fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(directory: Path) -> None:
    for path in Path(directory).iterdir():
        if path.is_dir():
            fsync_tree(path)
        else:
            fsync_file(path)
    fsync_dir(directory)


def hidden_sibling(path: Path, tag: str = "tmp") -> Path:
    """A unique hidden name beside ``path``: where its next version is written."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.{tag}")


def chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """``items`` in lists of ``size`` (the last one shorter), read lazily."""
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


_SIBLING = re.compile(r"^\.(?P<name>.+)\.(?P<pid>[0-9]+)\.[0-9a-f]{8}\.tmp(-journal)?$")


def remove_orphaned_siblings(directory: Path) -> list[Path]:
    """Remove the ``hidden_sibling`` files in ``directory`` that a process killed while
    writing left behind (its pid no longer runs on this machine); returns them."""
    removed = []
    for path in Path(directory).glob(".*.tmp*"):
        match = _SIBLING.match(path.name)
        if match is None or _running(int(match["pid"])):
            continue
        path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


@contextmanager
def atomic_open(path: Path, mode: str = "w", **kwargs) -> Iterator[Any]:
    """A file opened beside ``path`` and renamed onto it when the block ends without an error:
    a reader sees the old file or the whole new one, never a part."""
    path = Path(path)
    temporary = hidden_sibling(path)
    try:
        with open(temporary, mode, **kwargs) as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_open(path, "w", encoding="utf-8") as out:
        out.write(text)


def atomic_write_json(path: Path, value: Any) -> None:
    atomic_write_text(path, json.dumps(value, indent=2) + "\n")


def atomic_write_jsonl(path: Path, records: Iterable[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def old_twin(target: Path) -> Path:
    """Where ``replace_dir`` keeps the previous version of ``target`` for a moment."""
    target = Path(target)
    return target.with_name(f".{target.name}.old")


def twin_of(old: Path) -> Path | None:
    """The folder an ``old_twin`` keeps the previous version of; None for another name."""
    old = Path(old)
    if not (old.name.startswith(".") and old.name.endswith(".old")):
        return None
    return old.with_name(old.name[1 : -len(".old")])


def replace_dir(staged: Path, target: Path) -> None:
    """Move the complete folder ``staged`` to ``target``, replacing it. At every instant
    ``target`` or its ``old_twin`` is a complete folder."""
    old = old_twin(target)
    if target.exists():
        if old.exists():
            shutil.rmtree(old)
        os.rename(target, old)
    os.rename(staged, target)
    fsync_dir(target.parent)
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def staged_dir(target: Path, prefix: str | None = None) -> Iterator[Path]:
    """A new empty folder beside ``target`` to fill; installed as ``target`` (see
    ``replace_dir``) when the block ends normally, removed when it raises."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(prefix=prefix or f".{target.name}.tmp-", dir=target.parent))
    try:
        yield staged
        replace_dir(staged, target)
    finally:
        shutil.rmtree(staged, ignore_errors=True)


# --- reading --------------------------------------------------------------------------


def read_json(path: Path, what: str = "file") -> Any:
    """The JSON value in ``path``; a missing or unreadable file is a ``DualencError`` naming it."""
    path = Path(path)
    if not path.is_file():
        raise DualencError(f"{path}: {what} not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DualencError(f"{path}: not valid JSON ({exc})") from None


def iter_jsonl(path: Path, what: str = "file") -> Iterator[tuple[int, dict]]:
    """(1-based line number, object) for each non-blank line; a bad line stops with file:line."""
    path = Path(path)
    if not path.is_file():
        raise DualencError(f"{path}: {what} not found")
    with open(path, encoding="utf-8-sig") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DualencError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
            if not isinstance(record, dict):
                raise DualencError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
            yield number, record

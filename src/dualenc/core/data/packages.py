"""Source roots and the top-level packages they hold, for splitting pairs by package.

A root is a folder or a ``.py`` file given to ``dualenc data extract``. Its packages: a file
is one module (its stem); a folder with ``__init__.py`` is one package (its name); any other
folder holds one package per entry below it (``json/`` -> ``json``, ``shlex.py`` -> ``shlex``),
as the standard library or a ``src/`` folder does, except right in a site-packages folder,
where it is a namespace package.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Sequence
from pathlib import Path

from dualenc.errors import DualencError

# entries of site-packages that are importable names but not code anyone wrote
_NOT_PACKAGES = ("__pycache__", "__editable__*")


def root_is_package(root: Path) -> bool:
    """A module, a folder with ``__init__.py``, or any folder right in a site-packages folder:
    there one without it is a namespace package (``google``, ``opentelemetry``), one name."""
    return (
        root.is_file()
        or (root / "__init__.py").is_file()
        or root.resolve().parent.name in ("site-packages", "dist-packages")
    )


def package_of(display_path: str, root_package: bool) -> str:
    """The top-level package of a file, from its display path ("root/pkg/mod.py" -> "pkg").

    A root that is itself a package or module is one package: the first component.
    """
    parts = display_path.split("/")
    name = parts[0] if root_package or len(parts) == 1 else parts[1]
    return name[:-3] if name.endswith(".py") else name


def matches_any(name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def _has_python_source(path: Path) -> bool:
    for _directory, _dirnames, filenames in os.walk(path):
        if any(name.endswith(".py") for name in filenames):
            return True
    return False


def site_packages_dirs(directory: Path) -> list[Path]:
    """The site-packages folders of a virtualenv (``lib/python*/site-packages``), or the folder."""
    found = sorted(directory.glob("lib/python*/site-packages"))
    return [path for path in found if path.is_dir()] or [directory]


def site_packages_roots(directory: Path) -> list[Path]:
    """Every top-level importable package or module of a site-packages folder, by name.

    An entry is one when its name (a module's stem) is a Python identifier and it holds
    Python source: that leaves out ``*.dist-info``, ``*.egg-info``, ``*.pth``, compiled
    extensions, ``foo.libs`` and data folders. ``__pycache__`` and editable-install finders
    are left out too. A folder without any is an error naming it.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise DualencError(f"--site-packages {directory}: not a folder")
    roots: list[Path] = []
    for site in site_packages_dirs(directory):
        for entry in sorted(site.iterdir(), key=lambda path: path.name):
            name = entry.name[:-3] if entry.is_file() and entry.name.endswith(".py") else entry.name
            if not name.isidentifier() or matches_any(entry.name, _NOT_PACKAGES):
                continue
            if (entry.is_file() and entry.name.endswith(".py")) or (
                entry.is_dir() and _has_python_source(entry)
            ):
                roots.append(entry)
    if not roots:
        raise DualencError(
            f"--site-packages {directory}: no Python package or module in it"
            " (give a site-packages folder or a virtualenv with lib/python*/site-packages)"
        )
    return roots


def root_names(roots: Sequence[Path]) -> list[str]:
    """A distinct display name per root: its folder or file name, "#2" etc. on repeats."""
    names: list[str] = []
    seen: dict[str, int] = {}
    for root in roots:
        name = Path(root).resolve().name
        seen[name] = seen.get(name, 0) + 1
        names.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
    return names

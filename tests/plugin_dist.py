"""Build throwaway plugin distributions on disk: a module plus a dist-info with entry points."""

from __future__ import annotations

import textwrap
from pathlib import Path


def write_distribution(root: Path, dist: str, version: str, modules: dict[str, str]) -> Path:
    """Write ``modules`` ({module_name: source}) and a dist-info registering each in ``dualenc``.

    ``root`` must then be put on sys.path (or PYTHONPATH) for discovery.
    """
    root.mkdir(parents=True, exist_ok=True)
    for name, source in modules.items():
        (root / f"{name}.py").write_text(textwrap.dedent(source))
    info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    lines = "\n".join(f"{name} = {name}" for name in modules)
    (info / "entry_points.txt").write_text(f"[dualenc]\n{lines}\n")
    return root

"""The README's "From Python" section runs: every ```python block of it, in order, in one
namespace (as the cells of a notebook), in an empty folder."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
SECTION = "## From Python"


def section_text() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index(f"\n{SECTION}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def python_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", section_text(), re.S | re.M)


def test_the_section_follows_install():
    headings = re.findall(r"^## .*$", README.read_text(encoding="utf-8"), re.M)
    assert headings[headings.index("## Install") + 1] == SECTION


def test_every_python_example_of_the_section_runs(tmp_path, monkeypatch, capsys):
    blocks = python_blocks()
    assert len(blocks) >= 4
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__readme__"}
    for number, source in enumerate(blocks, 1):
        code = compile(source, f"README.md {SECTION!r} block {number}", "exec")
        exec(code, namespace)  # noqa: S102 - the README's own examples
    printed = capsys.readouterr().out
    assert "finished 4 val/mrr" in printed  # the first block's result line
    assert (tmp_path / "runs" / "tiny" / "last").is_dir()

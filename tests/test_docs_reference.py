"""docs/plugins.md follows the code.

Every hookspec and every protocol member has a heading that is its exact signature; the
worked examples are what ``dualenc plugins new`` writes, and they register and train; the
outputs the page shows are what dualenc prints.
"""

import inspect
import re
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from fakes import write_distribution, write_pairs

from dualenc.cli import cli
from dualenc.commands.plugins_new import component_module
from dualenc.core import checkpoint
from dualenc.core.configio import load_config
from dualenc.core.loop import train
from dualenc.registry import hookspecs, load_catalog
from dualenc.registry.kinds import KINDS, ContrastiveBatch

DOC = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"
EXAMPLE_BLOCK = re.compile(r"<!-- example: (\w+) -->\n```python\n(.*?)```", re.S)


def doc_text() -> str:
    return DOC.read_text(encoding="utf-8")


def fenced_block(marker: str) -> str:
    """The fenced block right after ``<!-- marker -->``."""
    found = re.search(rf"<!-- {marker} -->\n```\w*\n(.*?)```", doc_text(), re.S)
    assert found, f"docs/plugins.md has no block marked <!-- {marker} -->"
    return found.group(1)


def headings(level: int) -> set[str]:
    prefix = "#" * level + " "
    return {
        line[len(prefix) :].strip().strip("`") for line in doc_text().splitlines() if line.startswith(prefix)
    }


def hookspec_headings() -> set[str]:
    marker = f"{hookspecs.PROJECT}_spec"  # what pluggy's HookspecMarker sets on a hookspec
    return {
        f"{name}{inspect.signature(function)}"
        for name, function in vars(hookspecs).items()
        if inspect.isfunction(function) and hasattr(function, marker)
    }


def method_signature(function) -> str:
    """``(a: T, b: U = 'x') -> R`` without ``self``, annotations as written in kinds.py."""
    signature = inspect.signature(function)
    parameters = []
    for parameter in list(signature.parameters.values())[1:]:
        text = parameter.name
        if parameter.annotation is not parameter.empty:
            text += f": {parameter.annotation}"
        if parameter.default is not parameter.empty:
            text += f" = {parameter.default!r}"
        parameters.append(text)
    returns = signature.return_annotation
    return f"({', '.join(parameters)})" + ("" if returns is signature.empty else f" -> {returns}")


def protocol_headings() -> set[str]:
    expected = set()
    for _, protocol in KINDS.values():
        for attribute, annotation in vars(protocol).get("__annotations__", {}).items():
            expected.add(f"{protocol.__name__}.{attribute}: {annotation}")
        for name, member in vars(protocol).items():
            if inspect.isfunction(member) and (not name.startswith("_") or name == "__call__"):
                expected.add(f"{protocol.__name__}.{name}{method_signature(member)}")
    return expected


def assert_same(documented: set[str], expected: set[str], what: str) -> None:
    missing, stale = sorted(expected - documented), sorted(documented - expected)
    assert not missing and not stale, (
        f"docs/plugins.md does not follow {what}: add headings {missing}; fix or remove {stale}"
    )


def test_every_hookspec_is_a_heading_with_its_signature():
    assert_same({h for h in headings(3) if "(" in h}, hookspec_headings(), "hookspecs.py")


def test_every_protocol_member_is_a_heading_with_its_signature():
    names = tuple(f"{protocol.__name__}." for _, protocol in KINDS.values())
    assert_same({h for h in headings(4) if h.startswith(names)}, protocol_headings(), "kinds.py")


def test_the_reference_check_sees_a_changed_signature():
    def register_losses(register, extra):
        """A hookspec that grew a parameter."""

    changed = {h for h in hookspec_headings() if not h.startswith("register_losses")}
    changed.add(f"register_losses{inspect.signature(register_losses)}")
    with pytest.raises(AssertionError, match=r"add headings \['register_losses\(register, extra\)'\]"):
        assert_same({h for h in headings(3) if "(" in h}, changed, "hookspecs.py")


def test_the_examples_are_what_plugins_new_writes():
    examples = dict(EXAMPLE_BLOCK.findall(doc_text()))
    assert sorted(examples) == sorted(KINDS)
    for kind, source in examples.items():
        assert source == component_module("toy", kind), (
            f"the {kind} example differs from `dualenc plugins new toy --kind {kind}`; update one of them"
        )


@pytest.fixture
def doc_examples(tmp_path, monkeypatch):
    """The page's example modules as the installed distribution dualenc-toy 0.1.0."""
    modules = {f"doc_example_{kind}": source for kind, source in EXAMPLE_BLOCK.findall(doc_text())}
    root = write_distribution(tmp_path / "site", "dualenc-toy", "0.1.0", modules)
    monkeypatch.syspath_prepend(str(root))
    yield root
    for name in modules:
        sys.modules.pop(name, None)


def test_the_examples_register_one_component_of_each_kind(doc_examples):
    catalog = load_catalog()
    for kind in KINDS:
        component = catalog.get(kind, "toy")
        assert (component.distribution, component.version) == ("dualenc-toy", "0.1.0")
        assert component.description
    assert [p for p in catalog.problems if p.distribution == "dualenc-toy"] == []


def test_the_example_loss_computes_a_number(doc_examples):
    loss = load_catalog().get("loss", "toy").create()
    torch.manual_seed(0)
    query = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    keys = torch.arange(6)

    def loss_against(candidates):
        return loss(ContrastiveBatch(query, candidates, torch.arange(4), keys, keys))

    aligned = loss_against(torch.cat([query, torch.nn.functional.normalize(torch.randn(2, 8), dim=-1)]))
    shuffled = loss_against(torch.nn.functional.normalize(torch.randn(6, 8), dim=-1))
    assert aligned.ndim == 0 and torch.isfinite(aligned)
    assert aligned < shuffled


def test_the_examples_train_together(doc_examples, tmp_path):
    config = load_config(
        data={
            "plugins": {
                "encoder": "toy",
                "loss": "toy",
                "miner": "toy",
                "evaluator": "toy",
                "trackers": ["toy"],
            },
            "encoder": {"dim": 16, "max_seq_len": 64},
            "miner": {"num_negatives": 2, "refresh_every": 2},
            "data": {
                "train_file": str(write_pairs(tmp_path / "train.jsonl", 48, 0)),
                "val_file": str(write_pairs(tmp_path / "val.jsonl", 12, 1)),
                "cache_dir": str(tmp_path / "cache"),
            },
            "train": {
                "batch_size": 8,
                "learning_rate": 1e-2,
                "max_steps": 4,
                "warmup_steps": 1,
                "eval_interval": 2,
                "save_interval": 4,
                "log_interval": 1,
                "precision": "fp32",
            },
            "output_dir": str(tmp_path / "run"),
        }
    )
    assert train(config).status == "finished"

    run_dir = tmp_path / "run"
    lines = (run_dir / "toy.tsv").read_text().splitlines()
    assert lines[0].startswith("# config ") and lines[-1] == "# finished"
    logged = [line.split("\t") for line in lines[1:-1]]
    assert {int(step) for step, name, _ in logged if name == "train/loss"} == {1, 2, 3, 4}
    assert {int(step) for step, name, _ in logged if name == "val/mrr"} == {0, 2, 4}
    assert {int(step) for step, name, _ in logged if name == "mining/seconds"} == {0, 2}
    encoder, plugin, _ = checkpoint.load_encoder(run_dir / checkpoint.LAST_NAME)
    assert plugin == "toy" and encoder.dim == 16


def test_the_options_error_shown_is_what_dualenc_prints(doc_examples, tmp_path, monkeypatch):
    command, *output = fenced_block("bad-config-output").splitlines(keepends=True)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.yaml").write_text(fenced_block("bad-config"))
    result = CliRunner().invoke(cli, command.split()[2:])
    assert result.exit_code == 2
    assert result.output == "".join(output)


@pytest.fixture
def broken_plugins(tmp_path, monkeypatch):
    modules = {
        "broken_import": "import not_installed_dependency\n",
        "future_api": """
            from dualenc import hookimpl

            @hookimpl
            def dualenc_api_version():
                return ">=2,<3"

            @hookimpl
            def register_losses(register):
                register("future", lambda options: None)
            """,
    }
    root = write_distribution(tmp_path / "site", "dualenc-broken", "0.2.0", modules)
    monkeypatch.syspath_prepend(str(root))
    yield root
    for name in modules:
        sys.modules.pop(name, None)


def test_the_broken_plugins_shown_are_what_dualenc_prints(broken_plugins):
    def words(line):
        return " ".join(line.split())  # columns are padded to the longest installed name

    listed = CliRunner().invoke(cli, ["plugins", "list"])
    assert listed.exit_code == 0
    shown = [words(line) for line in fenced_block("broken-list").splitlines() if line.startswith("broken")]
    assert len(shown) == 2 and set(shown) <= {words(line) for line in listed.output.splitlines()}

    command, first, *notes = fenced_block("broken-select").splitlines()
    selected = CliRunner().invoke(cli, command.split()[2:])
    assert selected.exit_code == 2
    printed = selected.output.splitlines()
    # the list of available losses depends on what else is installed
    assert printed[0].partition("available:")[0] == first.partition("available:")[0]
    assert [line for line in printed if line.startswith("note: ") and "dualenc-broken" in line] == notes

"""Discovery goes through real entry points: a throwaway distribution on sys.path."""

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner
from fakes import write_distribution

from dualenc.cli import cli
from dualenc.core.configio import load_config
from dualenc.errors import DualencError
from dualenc.registry import load_catalog

THROWAWAY = """
import attrs
import torch
from dualenc import hookimpl
from dualenc import greater_than


@attrs.frozen
class ScaledOptions:
    scale: float = attrs.field(default=2.0, validator=greater_than(0))


class ScaledLoss:
    def __init__(self, options):
        self.options = options

    def __call__(self, batch):
        return self.options.scale * (batch.query @ batch.candidates.T).mean()


@hookimpl
def register_losses(register):
    register("scaled", ScaledLoss, options=ScaledOptions, description="A throwaway loss.\\nMore.")
"""


@pytest.fixture
def throwaway(tmp_path, monkeypatch):
    root = write_distribution(tmp_path / "site", "dualenc-throwaway", "0.3.1", {"throwaway_loss": THROWAWAY})
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.setenv("PYTHONPATH", str(root))
    return root


def test_builtins_are_entry_points():
    catalog = load_catalog()
    names = {(c.kind, c.name) for c in catalog.components}
    for expected in [
        ("encoder", "transformer"),
        ("loss", "infonce"),
        ("miner", "none"),
        ("evaluator", "mrr"),
        ("tracker", "aim"),
        ("tracker", "jsonl"),
        ("tracker", "console"),
    ]:
        assert expected in names
    assert {c.distribution for c in catalog.components if c.name == "infonce"} == {"dualenc"}


def test_throwaway_plugin_is_discovered_selected_and_configured(throwaway, tmp_path):
    component = load_catalog().get("loss", "scaled")
    assert (component.distribution, component.version) == ("dualenc-throwaway", "0.3.1")
    assert component.description == "A throwaway loss."

    config_file = tmp_path / "run.yaml"
    config_file.write_text("plugins:\n  loss: infonce\nloss:\n  scale: 3.5\n")
    config = load_config(config_file, plugins=["loss=scaled"])
    assert config.plugins.loss == "scaled"
    assert type(config.loss).__name__ == "ScaledOptions" and config.loss.scale == 3.5
    assert component.create(config.loss).options.scale == 3.5

    config_file.write_text("loss:\n  scale: -1\n")
    with pytest.raises(DualencError, match=r"run.yaml:2: loss.scale: must be > 0 \(got -1.0\)"):
        load_config(config_file, plugins=["loss=scaled"])


def test_plugins_list_shows_provenance_in_a_real_process(throwaway):
    out = subprocess.run(
        [sys.executable, "-m", "dualenc", "plugins", "list", "--json"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows = json.loads(out)["components"]
    assert {
        "kind": "loss",
        "name": "scaled",
        "package": "dualenc-throwaway",
        "version": "0.3.1",
        "description": "A throwaway loss.",
    } in rows


def test_unknown_plugin_lists_available_with_packages():
    result = CliRunner().invoke(cli, ["config", "validate", "--plugin", "loss=infonse"])
    assert result.exit_code == 2
    assert "unknown loss 'infonse'; available: infonce (dualenc)" in result.output
    assert "did you mean 'infonce'" in result.output


def test_unknown_kind_is_an_error():
    result = CliRunner().invoke(cli, ["config", "validate", "--plugin", "optimiser=adam"])
    assert result.exit_code == 2
    assert "unknown kind 'optimiser'" in result.output


def test_two_packages_registering_one_name_is_an_error_naming_both(tmp_path, monkeypatch):
    clash = THROWAWAY.replace('"scaled"', '"infonce"')
    root = write_distribution(tmp_path / "site", "dualenc-clash", "1.0", {"clash_loss": clash})
    monkeypatch.syspath_prepend(str(root))
    with pytest.raises(
        DualencError,
        match=r"registered by more than one package: (dualenc 0\.1\.0 and "
        r"dualenc-clash 1\.0|dualenc-clash 1\.0 and dualenc 0\.1\.0)",
    ):
        load_catalog().get("loss", "infonce")

"""What a plugin author meets: broken and incompatible plugins are reported without breaking
dualenc, and ``dualenc plugins new`` writes packages that install, are discovered, can be
selected and pass their own tests."""

import json
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from fakes import write_distribution

from dualenc.cli import cli
from dualenc.commands.plugins_new import SCAFFOLD_KINDS, package_files
from dualenc.errors import DualencError
from dualenc.registry import load_catalog
from dualenc.registry.kinds import KINDS

BIN = Path(sys.executable).parent

BROKEN = {
    "missing_dependency": "import not_installed_dependency\n",
    "syntax_error": "def register_losses(register:\n",
    "raises_while_registering": """
        from dualenc import hookimpl

        @hookimpl
        def register_losses(register):
            register("half_registered", lambda options: None)
            raise RuntimeError("cannot reach the model server\\ncheck its URL")
        """,
    "wants_next_api": """
        from dualenc import hookimpl

        @hookimpl
        def dualenc_api_version():
            return ">=2,<3"

        @hookimpl
        def register_losses(register):
            register("future", lambda options: None)
        """,
    "bad_api_range": """
        from dualenc import hookimpl

        @hookimpl
        def dualenc_api_version():
            return "banana"
        """,
    # the same distribution's sound entry points still work
    "still_works": """
        from dualenc import hookimpl

        @hookimpl
        def dualenc_api_version():
            return ">=1.0,<2"

        @hookimpl
        def register_losses(register):
            register("still_works", lambda options: None, description="A sound sibling.")
        """,
}


@pytest.fixture
def broken_distribution(tmp_path, monkeypatch):
    root = write_distribution(tmp_path / "site", "dualenc-broken", "0.2.0", BROKEN)
    monkeypatch.syspath_prepend(str(root))
    yield root
    for name in BROKEN:
        sys.modules.pop(name, None)


def problems_by_entry_point() -> dict[str, str]:
    return {p.entry_point: p.error for p in load_catalog().problems if p.distribution == "dualenc-broken"}


def test_broken_plugins_are_recorded_with_the_last_line_of_their_error(broken_distribution):
    problems = problems_by_entry_point()
    assert set(problems) == {
        "missing_dependency",
        "syntax_error",
        "raises_while_registering",
        "wants_next_api",
        "bad_api_range",
    }
    assert problems["missing_dependency"] == "ModuleNotFoundError: No module named 'not_installed_dependency'"
    assert problems["syntax_error"].startswith("SyntaxError: ")
    assert "syntax_error.py, line 1" in problems["syntax_error"]
    assert problems["raises_while_registering"] == "RuntimeError: check its URL"
    assert problems["wants_next_api"] == (
        "incompatible: wants dualenc plugin API >=2,<3; this dualenc provides 1.0"
    )
    assert problems["bad_api_range"] == "declares an invalid API version range 'banana'"

    catalog = load_catalog()
    losses = {c.name for c in catalog.of_kind("loss")}
    assert {"infonce", "still_works"} <= losses
    # a hook that raised half-way registers nothing; an incompatible plugin's hooks never run
    assert not {"half_registered", "future"} & losses


def test_plugins_list_shows_them_in_a_real_process(broken_distribution):
    environment = {**os.environ, "PYTHONPATH": str(broken_distribution)}
    listing = subprocess.run(
        [sys.executable, "-m", "dualenc", "plugins", "list", "--json"],
        capture_output=True,
        text=True,
        check=True,
        env=environment,
    )
    document = json.loads(listing.stdout)
    assert {
        "entry_point": "missing_dependency",
        "package": "dualenc-broken",
        "version": "0.2.0",
        "error": "ModuleNotFoundError: No module named 'not_installed_dependency'",
    } in document["broken"]
    assert {"transformer", "infonce", "still_works"} <= {row["name"] for row in document["components"]}


def test_plugins_list_text_names_distribution_version_and_error(broken_distribution):
    result = CliRunner().invoke(cli, ["plugins", "list"])
    assert result.exit_code == 0
    rows = {" ".join(line.split()) for line in result.output.splitlines()}
    assert (
        "broken wants_next_api dualenc-broken 0.2.0 incompatible: wants dualenc plugin API >=2,<3; "
        "this dualenc provides 1.0"
    ) in rows
    assert "broken raises_while_registering dualenc-broken 0.2.0 RuntimeError: check its URL" in rows
    assert "loss still_works dualenc-broken 0.2.0 A sound sibling." in rows


COMMANDS = {
    "adds_a_command": """
        import click
        from dualenc import hookimpl

        @hookimpl
        def register_commands(cli):
            @cli.command("hello")
            def hello():
                click.echo("hello from a plugin")
        """,
    "raises_adding_commands": """
        from dualenc import hookimpl

        @hookimpl
        def register_commands(cli):
            @cli.command("half-added")
            def half_added():
                pass

            raise RuntimeError("cannot reach the licence server")
        """,
}


@pytest.fixture
def command_plugins(tmp_path, monkeypatch):
    root = write_distribution(tmp_path / "site", "dualenc-commands", "0.4.0", COMMANDS)
    monkeypatch.syspath_prepend(str(root))
    yield root
    for name in COMMANDS:
        sys.modules.pop(name, None)


def test_a_raising_register_commands_is_a_broken_plugin_and_adds_nothing(command_plugins):
    group = click.Group()
    problems = [p for p in load_catalog(cli=group).problems if p.distribution == "dualenc-commands"]
    assert [(p.entry_point, p.error) for p in problems] == [
        ("raises_adding_commands", "RuntimeError: cannot reach the licence server")
    ]
    assert sorted(group.commands) == ["hello"]


def test_the_command_line_starts_with_it_and_lists_it(command_plugins):
    environment = {**os.environ, "PYTHONPATH": str(command_plugins)}
    dualenc = [sys.executable, "-m", "dualenc"]
    listing = subprocess.run(
        [*dualenc, "plugins", "list", "--json"], capture_output=True, text=True, env=environment
    )
    assert listing.returncode == 0, listing.stderr
    assert {
        "entry_point": "raises_adding_commands",
        "package": "dualenc-commands",
        "version": "0.4.0",
        "error": "RuntimeError: cannot reach the licence server",
    } in json.loads(listing.stdout)["broken"]
    hello = subprocess.run([*dualenc, "hello"], capture_output=True, text=True, env=environment)
    assert (hello.returncode, hello.stdout) == (0, "hello from a plugin\n")


def test_selecting_what_a_broken_plugin_would_provide_names_it_and_its_error(broken_distribution):
    result = CliRunner().invoke(cli, ["config", "validate", "--plugin", "loss=future"])
    assert result.exit_code == 2
    assert "unknown loss 'future'" in result.output
    assert (
        "note: plugin wants_next_api from dualenc-broken 0.2.0 could not be loaded: "
        "incompatible: wants dualenc plugin API >=2,<3; this dualenc provides 1.0"
    ) in result.output

    with pytest.raises(DualencError) as info:
        load_catalog().get("loss", "the_missing_one")
    assert (
        "note: plugin missing_dependency from dualenc-broken 0.2.0 could not be loaded: "
        "ModuleNotFoundError: No module named 'not_installed_dependency'"
    ) in str(info.value)

    assert CliRunner().invoke(cli, ["config", "validate", "--plugin", "loss=still_works"]).exit_code == 0


# --- dualenc plugins new -----------------------------------------------------------------


def test_plugins_new_knows_every_kind():
    assert list(SCAFFOLD_KINDS) == list(KINDS)


def test_plugins_new_refuses_a_bad_name_a_taken_name_and_a_full_directory(tmp_path):
    runner = CliRunner()
    result = runner.invoke(cli, ["plugins", "new", "My-Loss", "--kind", "loss", "--out", str(tmp_path / "a")])
    assert result.exit_code == 2 and "use lower-case letters, digits and underscores" in result.output

    result = runner.invoke(cli, ["plugins", "new", "infonce", "--kind", "loss", "--out", str(tmp_path / "b")])
    assert result.exit_code == 2
    assert "loss 'infonce' is already provided by dualenc" in result.output

    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    result = runner.invoke(
        cli, ["plugins", "new", "fresh", "--kind", "loss", "--out", str(tmp_path / "full")]
    )
    assert result.exit_code == 2 and "already exists and is not an empty directory" in result.output
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_the_package_layout(tmp_path):
    files = package_files("made_miner", "miner")
    assert sorted(files) == [
        "README.md",
        "pyproject.toml",
        "src/dualenc_made_miner/__init__.py",
        "src/dualenc_made_miner/plugin.py",
        "tests/test_dualenc_made_miner.py",
    ]
    assert (
        '[project.entry-points.dualenc]\nmade_miner = "dualenc_made_miner.plugin"' in files["pyproject.toml"]
    )
    assert 'name = "dualenc-made-miner"' in files["pyproject.toml"]
    assert "dualenc config validate --plugin miner=made_miner" in files["README.md"]


def run(command: list, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, f"{command} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result


def test_new_packages_install_are_discovered_selectable_and_pass_their_tests(tmp_path):
    """One package per kind, each a real pip install (its build backend, metadata and entry
    point). They go to a --target directory on PYTHONPATH rather than into the shared venv,
    so that test runs in parallel never see them and nothing needs uninstalling."""
    packages = []
    for kind in KINDS:
        out = tmp_path / f"dualenc-made-{kind}"
        result = CliRunner().invoke(
            cli, ["plugins", "new", f"made_{kind}", "--kind", kind, "--out", str(out)]
        )
        assert result.exit_code == 0, result.output
        assert f"next: pip install -e {out}" in result.output
        packages.append(out)

    # ruff's defaults as the new package has them: dualenc is a third-party import there
    run([BIN / "ruff", "check", "--isolated", "--select", "E,F,W,B,UP,SIM,I", *packages], cwd=tmp_path)
    run([BIN / "ruff", "format", "--isolated", "--check", *packages], cwd=tmp_path)

    site = tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-index"]
    run([*pip, "--no-deps", "--no-build-isolation", "--target", site, *packages])
    environment = {**os.environ, "PYTHONPATH": str(site)}

    listing = json.loads(
        run([sys.executable, "-m", "dualenc", "plugins", "list", "--json"], env=environment).stdout
    )
    for kind in KINDS:
        assert {
            "kind": kind,
            "name": f"made_{kind}",
            "package": f"dualenc-made-{kind}",
            "version": "0.1.0",
        }.items() <= next(row for row in listing["components"] if row["name"] == f"made_{kind}").items()
    assert [p for p in listing["broken"] if p["package"].startswith("dualenc-made")] == []

    selection = [f"--plugin={kind}=made_{kind}" for kind in KINDS if kind != "tracker"]
    run(
        [sys.executable, "-m", "dualenc", "config", "validate", *selection, "--plugin=trackers=made_tracker"],
        env=environment,
        cwd=tmp_path,
    )
    tests = run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *(p / "tests" for p in packages)],
        env=environment,
        cwd=tmp_path,
    )
    assert f"{len(KINDS)} passed" in tests.stdout

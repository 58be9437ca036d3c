"""``dualenc plugins new``: write a ready-to-install plugin package for one component kind.

Every file of the package is a ``string.Template`` in ``dualenc/templates/``: a pyproject with
the entry point in the ``dualenc`` group, a README, and per kind ``KIND/plugin.py.tmpl`` (an
options class, a minimal working component, its hooks), ``KIND/test_plugin.py.tmpl`` (finds
the component through the catalog and runs it) and ``KIND/options.yaml.tmpl`` (its defaults,
for the README). The component modules are also the worked examples of docs/plugins.md; a
test keeps the two the same.
"""

from __future__ import annotations

import re
from importlib.resources import files
from pathlib import Path
from string import Template

import attrs
import click

from dualenc.cli_options import current_catalog
from dualenc.errors import DualencError
from dualenc.registry.hookspecs import API_VERSION
from dualenc.registry.kinds import KINDS

NAME_PATTERN = re.compile(r"[a-z][a-z0-9_]*")
TEMPLATES = files("dualenc") / "templates"
# the kinds with a template folder, in the catalog's order
SCAFFOLD_KINDS = tuple(kind for kind in KINDS if (TEMPLATES / kind).is_dir())


@attrs.frozen
class PluginNames:
    """How one component name is spelled in each place of its package."""

    component: str  # "my_loss": what users select with --plugin
    distribution: str  # "dualenc-my-loss": what pip installs
    module: str  # "dualenc_my_loss": what Python imports
    camel: str  # "MyLoss": the prefix of its classes

    @classmethod
    def of(cls, name: str) -> PluginNames:
        if not NAME_PATTERN.fullmatch(name):
            raise DualencError(
                f"plugin name {name!r}: use lower-case letters, digits and underscores, "
                "starting with a letter"
            )
        return cls(
            component=name,
            distribution="dualenc-" + name.replace("_", "-"),
            module="dualenc_" + name,
            camel="".join(part.capitalize() for part in name.split("_")),
        )


def supported_api_range() -> str:
    """The range a new plugin declares: this API version up to the next major one."""
    major = int(API_VERSION.split(".")[0])
    return f">={API_VERSION},<{major + 1}"


def render(template: str, values: dict[str, str]) -> str:
    """The text of ``templates/<template>`` with ``values`` substituted."""
    return Template((TEMPLATES / template).read_text(encoding="utf-8")).substitute(values)


def _substitutions(names: PluginNames, kind: str) -> dict[str, str]:
    values = {
        "component": names.component,
        "distribution": names.distribution,
        "module": names.module,
        "Camel": names.camel,
        "kind": kind,
        "api_range": supported_api_range(),
    }
    # trackers are a list: the new one joins the console tracker
    values["selection"] = (
        f"trackers=console,{names.component}" if kind == "tracker" else f"{kind}={names.component}"
    )
    values["options_yaml"] = render(f"{kind}/options.yaml.tmpl", values).rstrip("\n")
    return values


def component_module(name: str, kind: str) -> str:
    """The source of the component module ``plugins new NAME --kind KIND`` writes."""
    return render(f"{kind}/plugin.py.tmpl", _substitutions(PluginNames.of(name), kind))


def package_files(name: str, kind: str) -> dict[str, str]:
    """Relative path -> text of every file of the package."""
    names = PluginNames.of(name)
    values = _substitutions(names, kind)
    return {
        "pyproject.toml": render("pyproject.toml.tmpl", values),
        "README.md": render("README.md.tmpl", values),
        f"src/{names.module}/__init__.py": render("__init__.py.tmpl", values),
        f"src/{names.module}/plugin.py": render(f"{kind}/plugin.py.tmpl", values),
        f"tests/test_{names.module}.py": render(f"{kind}/test_plugin.py.tmpl", values),
    }


def write_package(name: str, kind: str, out: Path) -> list[Path]:
    """Write the package into ``out`` (which must not exist or be empty)."""
    if kind not in SCAFFOLD_KINDS:
        raise DualencError(f"unknown kind {kind!r}; kinds are: {', '.join(SCAFFOLD_KINDS)}")
    contents = package_files(name, kind)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DualencError(f"{out} already exists and is not an empty directory")
    written = []
    for relative, text in contents.items():
        path = out / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


@click.command("new")
@click.argument("name")
@click.option("--kind", type=click.Choice(SCAFFOLD_KINDS), required=True, help="The component kind.")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="The package directory to create (default: ./dualenc-NAME).",
)
def new(name, kind, out):
    """Write a plugin package with one NAME component of KIND, its test and a README."""
    names = PluginNames.of(name)
    taken = [c for c in current_catalog().of_kind(kind) if c.name == name]
    if taken:
        raise DualencError(
            f"{kind} {name!r} is already provided by {taken[0].distribution} {taken[0].version}; "
            "two packages cannot register one name"
        )
    out = out if out is not None else Path(names.distribution)
    written = write_package(name, kind, out)
    click.echo(f"wrote {out}/ ({kind} {name!r}, package {names.distribution}):")
    for path in written:
        click.echo(f"  {path.relative_to(out)}")
    click.echo(f"next: pip install -e {out} && dualenc plugins list && pytest {out}/tests")

"""``dualenc plugins new``: write a ready-to-install plugin package for one component kind.

The package holds a pyproject with the entry point in the ``dualenc`` group, a component
module (an options class, a minimal working component, its hooks), a test that finds the
component through the catalog and runs it, and a README. The component modules are also the
worked examples of docs/plugins.md; a test keeps the two the same.
"""

from __future__ import annotations

import re
from pathlib import Path
from string import Template

import attrs
import click

from dualenc.errors import DualencError
from dualenc.registry.hookspecs import API_VERSION

NAME_PATTERN = re.compile(r"[a-z][a-z0-9_]*")


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


# --- the component module of each kind -------------------------------------------------

API_VERSION_HOOK = """

@hookimpl
def dualenc_api_version():
    return "$api_range"
"""

COMPONENTS = {
    "encoder": '''"""``$component``: an encoder for dualenc (written by ``dualenc plugins new``).

Bytes in, vectors out: the UTF-8 bytes of a text are its tokens (there is no
vocabulary to learn); their embeddings are mean-pooled and projected by one linear
layer per side.
"""

from __future__ import annotations

import json
from pathlib import Path

import attrs
import numpy as np
import torch
from dualenc import hookimpl
from dualenc.core.config import at_least
from safetensors.torch import load_file, save_file

VOCABULARY = 257  # id 0 pads; byte b is id b + 1


@attrs.frozen
class ${Camel}Options:
    dim: int = attrs.field(default=64, validator=at_least(1))
    # bytes kept per text
    max_seq_len: int = attrs.field(default=256, validator=at_least(1))


class ${Camel}Encoder(torch.nn.Module):
    pad_id = 0

    def __init__(self, options: ${Camel}Options | None = None):
        super().__init__()
        options = options or ${Camel}Options()
        self.dim, self.max_seq_len = options.dim, options.max_seq_len
        self.embed = torch.nn.Embedding(VOCABULARY, self.dim, padding_idx=self.pad_id)
        # one projection per side: queries and code are different languages
        self.project = torch.nn.ModuleDict(
            {side: torch.nn.Linear(self.dim, self.dim) for side in ("query", "code")}
        )

    def prepare(self, texts) -> None:
        pass  # bytes need no vocabulary

    def tokenizer_fingerprint(self) -> str:
        return "utf8-bytes-v1"

    def tokenize(self, texts, side: str) -> list[np.ndarray]:
        token_ids = []
        for text in texts:
            kept = text.encode()[: self.max_seq_len]
            token_ids.append(np.frombuffer(kept, dtype=np.uint8).astype(np.int32) + 1)
        return token_ids

    def forward(self, input_ids, attention_mask, side: str) -> torch.Tensor:
        mask = attention_mask.unsqueeze(-1).to(self.embed.weight.dtype)
        pooled = (self.embed(input_ids) * mask).sum(1) / mask.sum(1).clamp(min=1)
        return torch.nn.functional.normalize(self.project[side](pooled), dim=-1)

    def save(self, directory: Path) -> None:
        directory = Path(directory)
        save_file(self.state_dict(), str(directory / "model.safetensors"))
        # no vocabulary to store: the file says how texts become ids
        tokenizer = {"type": "utf8-bytes", "max_seq_len": self.max_seq_len}
        (directory / "tokenizer.json").write_text(json.dumps(tokenizer))

    def load(self, directory: Path) -> None:
        self.load_state_dict(load_file(str(Path(directory) / "model.safetensors")))
$api_version_hook

@hookimpl
def register_encoders(register):
    register(
        "$component",
        ${Camel}Encoder,
        options=${Camel}Options,
        description="Mean-pooled byte embeddings, one projection per side.",
    )
''',
    "loss": '''"""``$component``: a contrastive loss for dualenc (written by ``dualenc plugins new``).

InfoNCE at a fixed temperature: each query's positive against every other candidate
of the batch, leaving out candidates that are the same positive (a clone of its code,
another pair of the same query).
"""

from __future__ import annotations

import attrs
import torch
from dualenc import hookimpl
from dualenc.core.config import greater_than


@attrs.frozen
class ${Camel}Options:
    # scores are divided by this before the softmax: lower is sharper
    temperature: float = attrs.field(default=0.05, validator=greater_than(0))


class ${Camel}Loss:
    def __init__(self, options: ${Camel}Options | None = None):
        self.options = options or ${Camel}Options()

    def __call__(self, batch) -> torch.Tensor:
        scores = batch.query @ batch.candidates.T / self.options.temperature
        scores = scores.masked_fill(batch.false_negative_mask(), float("-inf"))
        return torch.nn.functional.cross_entropy(scores, batch.positive)
$api_version_hook

@hookimpl
def register_losses(register):
    register(
        "$component",
        ${Camel}Loss,
        options=${Camel}Options,
        description="InfoNCE at a fixed temperature.",
    )
''',
    "miner": '''"""``$component``: a negative miner for dualenc (written by ``dualenc plugins new``).

Random negatives: every ``refresh_every`` steps each training pair gets
``num_negatives`` other pairs drawn at random. A draw may duplicate the positive (a
clone, another pair of the same query); the loss's false-negative mask leaves it out.
"""

from __future__ import annotations

import time
from pathlib import Path

import attrs
import numpy as np
from dualenc import hookimpl
from dualenc.core.config import at_least


@attrs.frozen
class ${Camel}Options:
    num_negatives: int = attrs.field(default=2, validator=at_least(1))
    refresh_every: int = attrs.field(default=100, validator=at_least(1))
    seed: int = 0


class ${Camel}Miner:
    def __init__(self, options: ${Camel}Options | None = None):
        self.options = options or ${Camel}Options()
        self.num_negatives = self.options.num_negatives
        self._negatives = None  # [pairs, num_negatives] pair ids, after the first mine

    def due(self, step: int) -> bool:
        return self._negatives is None or step % self.options.refresh_every == 0

    def mine(self, encoder, corpus, step: int, run_dir: Path) -> dict[str, float]:
        started = time.perf_counter()
        count = len(corpus)
        self._negatives = np.full((count, self.num_negatives), -1, dtype=np.int64)
        if count > 1:
            # seeded by the step: a resumed run draws what an uninterrupted one would
            rng = np.random.default_rng([self.options.seed, step])
            draws = rng.integers(0, count - 1, size=(count, self.num_negatives))
            # shift the draws at or above each pair's own index: never the pair itself
            self._negatives[:] = draws + (draws >= np.arange(count)[:, None])
        return {"mining/seconds": time.perf_counter() - started}

    def negatives(self, pair_ids: np.ndarray) -> np.ndarray:
        return self._negatives[pair_ids]

    def state_dict(self) -> dict:
        return {"negatives": self._negatives}

    def load_state_dict(self, state: dict) -> None:
        self._negatives = np.asarray(state["negatives"], dtype=np.int64)
$api_version_hook

@hookimpl
def register_miners(register):
    register(
        "$component",
        ${Camel}Miner,
        options=${Camel}Options,
        description="Random other pairs as negatives, redrawn on a schedule.",
    )
''',
    "evaluator": '''"""``$component``: an evaluator for dualenc (written by ``dualenc plugins new``).

Ranks the whole pool for every query by cosine similarity; reports the mean
reciprocal rank of the best-ranked relevant candidate and the recall at ``k``.
"""

from __future__ import annotations

import attrs
import numpy as np
import torch
from dualenc import hookimpl
from dualenc.core.config import at_least


@attrs.frozen
class ${Camel}Options:
    k: int = attrs.field(default=10, validator=at_least(1))
    # texts per forward pass
    batch_size: int = attrs.field(default=64, validator=at_least(1))


class ${Camel}Evaluator:
    primary_metric = "mrr"

    def __init__(self, options: ${Camel}Options | None = None):
        self.options = options or ${Camel}Options()

    def evaluate(self, encoder, eval_set, prefix: str = "val") -> dict[str, float]:
        queries = self._encode(encoder, eval_set.queries, "query")
        pool = self._encode(encoder, eval_set.pool, "code")
        ranks = []
        for row, relevant in zip(queries @ pool.T, eval_set.relevant, strict=True):
            best = max(row[index] for index in relevant)
            ranks.append(1 + int((row > best).sum()))  # candidates scoring above it
        ranks, k = np.array(ranks), self.options.k
        return {
            f"{prefix}/mrr": float(np.mean(1 / ranks)),
            f"{prefix}/recall@{k}": float(np.mean(ranks <= k)),
        }

    @torch.no_grad()
    def _encode(self, encoder, texts, side: str) -> torch.Tensor:
        encoder.eval()
        device = next(encoder.parameters()).device
        size, vectors = self.options.batch_size, []
        for start in range(0, len(texts), size):
            token_ids = encoder.tokenize(texts[start : start + size], side)
            width = max(1, *(len(ids) for ids in token_ids))
            input_ids = torch.full((len(token_ids), width), encoder.pad_id)
            mask = torch.zeros((len(token_ids), width), dtype=torch.long)
            for row, ids in enumerate(token_ids):
                input_ids[row, : len(ids)] = torch.as_tensor(ids)
                mask[row, : len(ids)] = 1
            encoded = encoder(input_ids.to(device), mask.to(device), side)
            vectors.append(encoded.float().cpu())
        return torch.cat(vectors)
$api_version_hook

@hookimpl
def register_evaluators(register):
    register(
        "$component",
        ${Camel}Evaluator,
        options=${Camel}Options,
        description="MRR and recall@k over the whole pool.",
    )
''',
    "tracker": '''"""``$component``: a tracker for dualenc (written by ``dualenc plugins new``).

Appends one tab-separated line per metric (step, name, value) to a file in the run's
output directory, after a line with the resolved config and before one with how the
run ended.
"""

from __future__ import annotations

import json
from pathlib import Path

import attrs
from dualenc import hookimpl
from dualenc.core.config import non_empty


@attrs.frozen
class ${Camel}Options:
    # the file's name inside the run's output directory
    filename: str = attrs.field(default="$component.tsv", validator=non_empty)


class ${Camel}Tracker:
    def __init__(self, options: ${Camel}Options | None = None):
        self.options = options or ${Camel}Options()
        self.path = None

    def start(self, run_dir: Path, config: dict) -> None:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        self.path = Path(run_dir) / self.options.filename
        # append: a resumed run continues the same file
        self._write([f"# config {json.dumps(config, sort_keys=True)}"])

    def log(self, metrics: dict[str, float], step: int) -> None:
        lines = [f"{step}\\t{name}\\t{float(value)!r}" for name, value in metrics.items()]
        self._write(lines)

    def finish(self, status: str) -> None:
        self._write([f"# {status}"])

    def _write(self, lines: list[str]) -> None:
        with open(self.path, "a", encoding="utf-8") as out:
            out.writelines(line + "\\n" for line in lines)
$api_version_hook

@hookimpl
def register_trackers(register):
    register(
        "$component",
        ${Camel}Tracker,
        options=${Camel}Options,
        description="step, name and value per line in a TSV file in the output dir.",
    )
''',
}

# --- its test ----------------------------------------------------------------------------

TEST_DOC = '''"""The ``$component`` $kind, found the way dualenc finds it.

Through its entry point: these tests pass once the package is installed.
"""
'''

TEST_INSTALLED = """

def installed():
    component = load_catalog().get("$kind", "$component")
    assert component.distribution == "$distribution"
    return component
"""

TESTS = {
    "encoder": (
        ["import torch"],
        [],
        """

def test_unit_vectors_that_survive_save_and_load(tmp_path):
    encoder = installed().create()
    texts = ["sort a list", "def f(x):\\n    return sorted(x)"]
    encoder.prepare(texts)
    token_ids = encoder.tokenize(texts, "code")
    width = max(len(ids) for ids in token_ids)
    assert width <= encoder.max_seq_len
    input_ids = torch.full((len(texts), width), encoder.pad_id)
    mask = torch.zeros((len(texts), width), dtype=torch.long)
    for row, ids in enumerate(token_ids):
        input_ids[row, : len(ids)] = torch.as_tensor(ids)
        mask[row, : len(ids)] = 1
    vectors = encoder(input_ids, mask, "code")
    assert vectors.shape == (len(texts), encoder.dim)
    torch.testing.assert_close(vectors.norm(dim=-1), torch.ones(len(texts)))

    encoder.save(tmp_path)
    reloaded = installed().create()
    reloaded.load(tmp_path)
    torch.testing.assert_close(reloaded(input_ids, mask, "code"), vectors)
""",
    ),
    "loss": (
        ["import torch"],
        ["from dualenc.registry.kinds import ContrastiveBatch"],
        """

def test_a_finite_scalar_with_gradients():
    torch.manual_seed(0)
    query = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1).requires_grad_()
    candidates = torch.nn.functional.normalize(torch.randn(6, 8), dim=-1)
    batch = ContrastiveBatch(
        query=query,
        candidates=candidates,
        positive=torch.arange(4),
        candidate_code_key=torch.arange(6),
        candidate_query_key=torch.arange(6),
    )
    loss = installed().create()(batch)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert query.grad is not None
""",
    ),
    "miner": (
        ["import numpy as np"],
        [],
        """

def test_negatives_are_other_pairs_and_survive_a_resume(tmp_path):
    miner = installed().create()
    assert miner.due(0)
    corpus = [f"pair {i}" for i in range(10)]  # this miner only needs len(corpus)
    miner.mine(None, corpus, step=0, run_dir=tmp_path)
    pair_ids = np.arange(10)
    negatives = miner.negatives(pair_ids)
    assert negatives.shape == (10, miner.num_negatives)
    assert not (negatives == pair_ids[:, None]).any()

    resumed = installed().create()
    resumed.load_state_dict(miner.state_dict())
    assert not resumed.due(1)
    np.testing.assert_array_equal(resumed.negatives(pair_ids), negatives)
""",
    ),
    "evaluator": (
        ["import numpy as np", "import pytest", "import torch"],
        ["from dualenc.registry.kinds import EvalSet"],
        '''

class FirstLetterEncoder(torch.nn.Module):
    """Texts with the same first letter get the same unit vector."""

    dim, max_seq_len, pad_id = 128, 1, 0

    def __init__(self):
        super().__init__()
        # evaluators find the encoder's device from its parameters
        self.unused = torch.nn.Parameter(torch.zeros(1))

    def tokenize(self, texts, side):
        return [np.array([ord(text[0]) % self.dim], dtype=np.int32) for text in texts]

    def forward(self, input_ids, attention_mask, side):
        return torch.nn.functional.one_hot(input_ids[:, 0], self.dim).float()


def test_ranks_the_pool():
    evaluator = installed().create()
    pool = ["apple", "banana", "cherry"]
    right = EvalSet("right", ["a", "b", "c"], pool, [{0: 1.0}, {1: 1.0}, {2: 1.0}])
    metrics = evaluator.evaluate(FirstLetterEncoder(), right, prefix="test")
    assert metrics["test/mrr"] == 1.0
    assert f"test/{evaluator.primary_metric}" in metrics

    # "a" and "c" find their own letter first, then the relevant one at rank 2
    swapped = EvalSet("swapped", ["a", "b", "c"], pool, [{2: 1.0}, {1: 1.0}, {0: 1.0}])
    metrics = evaluator.evaluate(FirstLetterEncoder(), swapped)
    assert metrics["val/mrr"] == pytest.approx((0.5 + 1 + 0.5) / 3)
''',
    ),
    "tracker": (
        [],
        [],
        """

def test_writes_every_metric_and_how_the_run_ended(tmp_path):
    tracker = installed().create()
    tracker.start(tmp_path, {"train": {"batch_size": 8}})
    tracker.log({"train/loss": 2.5, "train/lr": 0.001}, step=1)
    tracker.log({"val/mrr": 0.25}, step=2)
    tracker.finish("finished")
    lines = (tmp_path / tracker.options.filename).read_text().splitlines()
    assert lines == [
        '# config {"train": {"batch_size": 8}}',
        "1\\ttrain/loss\\t2.5",
        "1\\ttrain/lr\\t0.001",
        "2\\tval/mrr\\t0.25",
        "# finished",
    ]
""",
    ),
}

# --- packaging ---------------------------------------------------------------------------

PYPROJECT = """[build-system]
requires = ["setuptools>=77"]
build-backend = "setuptools.build_meta"

[project]
name = "$distribution"
version = "0.1.0"
description = "The $component $kind for dualenc."
readme = "README.md"
requires-python = ">=3.10"
dependencies = ["dualenc"]

[project.optional-dependencies]
test = ["pytest"]

# dualenc finds the component through this entry point, like its own built-ins
[project.entry-points.dualenc]
$component = "$module.plugin"

[tool.setuptools.packages.find]
where = ["src"]

[tool.pytest.ini_options]
testpaths = ["tests"]
"""

PACKAGE_INIT = '''"""The ``$component`` $kind for dualenc: see ``plugin.py``."""
'''

README = """# $distribution

The `$component` $kind for dualenc, as written by
`dualenc plugins new $component --kind $kind`. The component is in `src/$module/plugin.py`;
the entry point that makes dualenc find it is in `pyproject.toml`
(`[project.entry-points.dualenc]`).

## Install and check

```bash
pip install -e .
dualenc plugins list   # a row: $kind  $component  $distribution 0.1.0
pytest tests
```

## Use

```bash
dualenc config validate --plugin $selection
dualenc train --config run.yaml --plugin $selection
```

Its options in a run config (the defaults):

```yaml
$options_yaml
```

The hooks and the protocol a $kind follows are in dualenc's docs/plugins.md.
"""

# each option with its default, as a run config spells it
OPTIONS_YAML = {
    "encoder": "encoder:\n  dim: 64\n  max_seq_len: 256",
    "loss": "loss:\n  temperature: 0.05",
    "miner": "miner:\n  num_negatives: 2\n  refresh_every: 100\n  seed: 0",
    "evaluator": "evaluator:\n  k: 10\n  batch_size: 64",
    "tracker": "trackers:\n  $component:\n    filename: $component.tsv",
}


def _substitutions(names: PluginNames, kind: str) -> dict[str, str]:
    values = {
        "component": names.component,
        "distribution": names.distribution,
        "module": names.module,
        "Camel": names.camel,
        "kind": kind,
        "api_range": supported_api_range(),
    }
    values["api_version_hook"] = Template(API_VERSION_HOOK).substitute(values)
    # trackers are a list: the new one joins the console tracker
    values["selection"] = (
        f"trackers=console,{names.component}" if kind == "tracker" else f"{kind}={names.component}"
    )
    values["options_yaml"] = Template(OPTIONS_YAML[kind]).substitute(values)
    return values


def component_module(name: str, kind: str) -> str:
    """The source of the component module ``plugins new NAME --kind KIND`` writes."""
    return Template(COMPONENTS[kind]).substitute(_substitutions(PluginNames.of(name), kind))


def package_files(name: str, kind: str) -> dict[str, str]:
    """Relative path -> text of every file of the package."""
    names = PluginNames.of(name)
    values = _substitutions(names, kind)
    other_imports, dualenc_imports, body = TESTS[kind]
    # dualenc is a third-party package here: one import block
    imports = [*other_imports, "from dualenc.registry import load_catalog", *dualenc_imports]
    test = "\n".join(
        [Template(TEST_DOC).substitute(values), *imports, Template(TEST_INSTALLED).substitute(values) + body]
    )
    return {
        "pyproject.toml": Template(PYPROJECT).substitute(values),
        "README.md": Template(README).substitute(values),
        f"src/{names.module}/__init__.py": Template(PACKAGE_INIT).substitute(values),
        f"src/{names.module}/plugin.py": component_module(name, kind),
        f"tests/test_{names.module}.py": test,
    }


def write_package(name: str, kind: str, out: Path) -> list[Path]:
    """Write the package into ``out`` (which must not exist or be empty)."""
    if kind not in COMPONENTS:
        raise DualencError(f"unknown kind {kind!r}; kinds are: {', '.join(COMPONENTS)}")
    files = package_files(name, kind)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DualencError(f"{out} already exists and is not an empty directory")
    written = []
    for relative, text in files.items():
        path = out / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


@click.command("new")
@click.argument("name")
@click.option("--kind", type=click.Choice(list(COMPONENTS)), required=True, help="The component kind.")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="The package directory to create (default: ./dualenc-NAME).",
)
def new(name, kind, out):
    """Write a plugin package with one NAME component of KIND, its test and a README."""
    from dualenc.registry import load_catalog

    names = PluginNames.of(name)
    taken = [c for c in load_catalog().of_kind(kind) if c.name == name]
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

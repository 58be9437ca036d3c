"""Config loading: every problem reported at once, with file, line and key path."""

import textwrap

import pytest
import yaml
from click.testing import CliRunner

from dualenc.cli import cli
from dualenc.core.config import RunConfig, TrainConfig
from dualenc.core.configio import dump_yaml, load_config, unstructure
from dualenc.errors import ConfigError


def write(tmp_path, text, name="x.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def problems_of(path, **kwargs):
    with pytest.raises(ConfigError) as info:
        load_config(path, **kwargs)
    return info.value.problems


def test_defaults_are_the_seeds():
    config = load_config(data={})
    assert (config.encoder.vocab_size, config.encoder.d_model, config.encoder.n_layers) == (50257, 768, 6)
    assert (config.encoder.n_heads, config.encoder.max_seq_len) == (12, 512)
    assert (config.train.batch_size, config.train.learning_rate, config.train.max_steps) == (32, 1e-4, 50000)
    assert config.loss.temperature == 0.07
    assert config.plugins.miner == "none"
    assert config.output_dir == "checkpoints/encoder"


def test_all_problems_at_once_with_lines_and_paths(tmp_path):
    path = write(
        tmp_path,
        """\
        train:
          batch_size: -3
          learnin_rate: 0.1
          max_steps: 2.5
        loss:
          temperature: -1
        plugins:
          trackers: aim
        """,
    )
    assert problems_of(path) == [
        f"{path}:2: train.batch_size: must be >= 1 (got -3)",
        f"{path}:3: train.learnin_rate: unknown key; did you mean 'learning_rate'?",
        f"{path}:4: train.max_steps: expected an integer, got float 2.5",
        f"{path}:6: loss.temperature: must be > 0 (got -1.0)",
        f"{path}:8: plugins.trackers: expected a list, got str 'aim'",
    ]


def test_wrong_types_say_what_was_expected(tmp_path):
    path = write(tmp_path, "train:\n  precision: fp64\n  eval_at_start: 'yes'\ndata: [1, 2]\n")
    assert problems_of(path) == [
        f"{path}:2: train.precision: must be one of 'auto', 'fp32', 'bf16' (got 'fp64')",
        f"{path}:3: train.eval_at_start: expected true or false, got str 'yes'",
        f"{path}:4: data: expected a mapping of keys to values, got list",
    ]


def test_yaml_syntax_error_names_the_line(tmp_path):
    path = write(tmp_path, "train:\n  batch_size: [1\n")
    (problem,) = problems_of(path)
    assert problem.startswith(f"{path}:3: invalid YAML")


def test_missing_file(tmp_path):
    assert problems_of(tmp_path / "nope.yaml") == [f"{tmp_path / 'nope.yaml'}: config file not found"]


def test_seed_spellings(tmp_path):
    path = write(
        tmp_path,
        """\
        model: {vocab_size: 1000, d_model: 64, n_layers: 2, n_heads: 4, max_seq_len: 128}
        training: {batch_size: 8, learning_rate: 1e-4, max_steps: 10, temperature: 0.05,
                   use_hard_negatives: false}
        """,
    )
    config = load_config(path)
    assert config.encoder.vocab_size == 1000 and config.train.batch_size == 8
    assert config.train.learning_rate == 1e-4  # "1e-4" is a string to YAML 1.1
    assert config.loss.temperature == 0.05 and config.plugins.miner == "none"
    hard = write(tmp_path, "training: {use_hard_negatives: true}\n", "hard.yaml")
    assert load_config(hard).plugins.miner == "faiss"
    bad = write(tmp_path, "training:\n  batch_size: 0\n", "bad.yaml")
    assert problems_of(bad) == [f"{bad}:2: train.batch_size: must be >= 1 (got 0)"]


def test_set_overrides_are_typed_by_the_target_field(tmp_path):
    config = load_config(
        None, sets=["train.batch_size=8", "loss.temperature=1e-2", "train.grad_cache_chunk=null"]
    )
    assert config.train.batch_size == 8 and config.loss.temperature == 0.01
    problems = problems_of(None, sets=["train.batch_size=many", "train.nope=1"])
    assert problems == [
        "--set train.nope: train.nope: unknown key; valid keys: "
        + ", ".join(f.name for f in TrainConfig.__attrs_attrs__),
        "--set train.batch_size: train.batch_size: expected an integer, got str 'many'",
    ]


def test_round_trip_of_the_resolved_config(tmp_path):
    original = load_config(None, plugins=["trackers=console"], sets=["train.max_steps=7"])
    path = write(tmp_path, dump_yaml(original), "shown.yaml")
    assert load_config(path) == original
    assert unstructure(original)["plugins"]["trackers"] == ["console"]
    assert isinstance(original, RunConfig)


SEED_MODEL = {"vocab_size": 50257, "d_model": 768, "n_layers": 6, "n_heads": 12, "max_seq_len": 512}
SEED_STAGE = {
    **{f"encoder.{key}": value for key, value in SEED_MODEL.items()},
    "plugins.encoder": "transformer",
    "plugins.loss": "infonce",
    "plugins.evaluator": "mrr",
    "loss.temperature": 0.07,
    "train.batch_size": 32,
    "train.learning_rate": 1e-4,
}
# what README.md, scripts/demo.sh and each file's header say of the shipped configs
SHIPPED = {
    "baseline.yaml": {
        **SEED_STAGE,
        "plugins.miner": "none",
        "train.max_steps": 50000,
        "output_dir": "checkpoints/encoder",
    },
    "with_hard_negatives.yaml": {
        **SEED_STAGE,
        "plugins.miner": "faiss",
        "output_dir": "checkpoints/encoder-hn",
    },
    "quickstart.yaml": {
        "plugins.encoder": "hf",
        "encoder.model_path": None,  # the offline all-MiniLM-L6-v2
        "plugins.loss": "infonce",
        "plugins.miner": "none",
        "loss.temperature": 0.07,
        "train.batch_size": 32,
        "data.train_file": "data/stdlib/train.jsonl",
        "data.val_file": "data/stdlib/val.jsonl",
        "output_dir": "checkpoints/quickstart",
    },
}


def dotted(tree: dict, key: str):
    for part in key.split("."):
        tree = tree[part]
    return tree


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_configs_validate(repo_root, name):
    shown = unstructure(load_config(repo_root / "configs" / name))
    assert {key: dotted(shown, key) for key in SHIPPED[name]} == SHIPPED[name]


def test_the_shipped_stages_chain(repo_root):
    baseline = load_config(repo_root / "configs" / "baseline.yaml")
    hard = load_config(repo_root / "configs" / "with_hard_negatives.yaml")
    # the seed's retrieval block finds stage one's best checkpoint, which stage two resumes from
    assert baseline.retrieval.encoder_checkpoint == f"{baseline.output_dir}/encoder-best-mrr"
    assert hard.encoder == baseline.encoder  # so the weights fit
    assert 0 < hard.miner.refresh_every < hard.train.max_steps  # negatives refreshed during training


def test_cli_validate_and_show(tmp_path):
    runner = CliRunner()
    bad = write(tmp_path, "train: {batch_size: -3}\n")
    result = runner.invoke(cli, ["config", "validate", "--config", str(bad)])
    assert result.exit_code == 2
    assert "train.batch_size: must be >= 1 (got -3)" in result.output
    assert "Traceback" not in result.output
    result = runner.invoke(
        cli, ["config", "show", "--set", "train.batch_size=4", "--plugin", "trackers=console"]
    )
    assert result.exit_code == 0, result.output
    shown = yaml.safe_load(result.output)
    assert shown["train"]["batch_size"] == 4 and shown["plugins"]["trackers"] == ["console"]

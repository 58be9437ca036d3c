"""Config loading: every problem reported at once, with file, line and key path."""

import subprocess
import sys
import textwrap

import fakes
import pytest
import yaml
from click.testing import CliRunner

from dualenc.cli import cli
from dualenc.core.config import RunConfig, TrainConfig, TrainFile
from dualenc.core.configio import dump_yaml, load_config, unstructure
from dualenc.core.device import resolve_device
from dualenc.core.loop import train
from dualenc.errors import ConfigError, DualencError


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
    "with_val_sets.yaml": {
        "plugins.encoder": "hf",
        "data.train_file": "data/stdlib/train.jsonl",
        "data.val_sets.stdlib.file": "data/stdlib/val.jsonl",
        "data.val_sets.cosqa.benchmark": "cosqa",
        "data.val_sets.cosqa.split": "dev",
        "train.best_metric": "val/cosqa/mrr",
        "train.early_stopping_patience": 3,
        "output_dir": "checkpoints/with-val-sets",
    },
    "recipe.yaml": {
        "plugins.encoder": "hf",
        "data.train_files": [
            {"path": "data/stdlib/train.jsonl", "weight": 1.0},
            {"path": "data/venv/train.jsonl", "weight": 1.0},
        ],
        "data.val_sets.packages.file": "data/venv/val.jsonl",
        "data.val_sets.heldout.max_pairs": 1000,
        "train.best_metric": "val/packages/mrr",
        "output_dir": "checkpoints/recipe",
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


def cli_run(*args):
    """(exit code, output) of ``dualenc ARGS``; a traceback fails the test."""
    result = CliRunner().invoke(cli, [str(arg) for arg in args])
    assert "Traceback" not in result.output and not isinstance(result.exception, AssertionError)
    if result.exit_code not in (0, 2):
        raise AssertionError(result.output) from result.exception
    return result.exit_code, result.output


def cli_error(*args) -> str:
    """The message of a command that must exit 2."""
    code, output = cli_run(*args)
    assert code == 2, output
    return output.removeprefix("error: ").strip()


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("train.batch_size=[1,2", "expected ',' or ']', but got '<stream end>'"),
        ("train.batch_size=@x", "found character '@' that cannot start any token"),
        ("train.batch_size=*x", "found undefined alias 'x'"),
        ("encoder={d_model: 8", "expected ',' or '}', but got '<stream end>'"),
    ],
)
def test_set_values_that_are_not_yaml_are_config_problems(value, reason):
    key, _, raw = value.partition("=")
    message = cli_error("config", "validate", "--set", value)
    assert message == f"--set {key}: {key}: not valid YAML ({reason}): {raw!r}"


@pytest.mark.parametrize("raw", ["*runs", "@runs/x", "yes", "0123", "2024-01-01", "2024-13-45", "1e3", "[a"])
def test_a_string_field_takes_a_set_value_as_written(raw):
    code, output = cli_run("config", "show", "--set", f"output_dir={raw}")
    assert code == 0, output
    assert yaml.safe_load(output)["output_dir"] == raw  # and the shown YAML loads back to it
    assert load_config(None, sets=[f"output_dir={raw}"]).output_dir == raw
    # YAML quoting still applies: the quotes are not part of the value
    assert load_config(None, sets=[f"output_dir='{raw}'"]).output_dir == raw


def test_a_string_field_takes_a_yaml_scalar_as_written(tmp_path):
    path = write(
        tmp_path,
        """\
        output_dir: yes
        data: {train_file: 0123, val_file: 2024-01-01, cache_dir: 2024-13-45}
        model: {tokenizer: 0x1F}
        evaluator: {distractors: no}
        plugins: {trackers: [console]}
        retrieval: {encoder_checkpoint: 2024-01-01 10:00:00, faiss_index: 1e3}
        """,
    )
    code, output = cli_run("config", "show", "--config", path)
    assert code == 0, output
    config = load_config(write(tmp_path, output, "shown.yaml"))
    assert config == load_config(path)
    assert (config.output_dir, config.data.train_file, config.data.val_file) == ("yes", "0123", "2024-01-01")
    assert (config.data.cache_dir, config.encoder.tokenizer, config.evaluator.distractors) == (
        "2024-13-45",
        "0x1F",
        "no",
    )
    assert config.retrieval.encoder_checkpoint == "2024-01-01 10:00:00"


def test_other_fields_stay_strict(tmp_path):
    path = write(
        tmp_path,
        """\
        train:
          batch_size: yes
          seed: 2024-01-01
          max_steps: !!int x
          warmup_steps: 2024-13-45
        data: {bucket_window: '8'}
        """,
    )
    assert cli_error("config", "validate", "--config", path).splitlines() == [
        f"{path}:2: train.batch_size: expected an integer, got bool True",
        f"{path}:3: train.seed: expected an integer, got date datetime.date(2024, 1, 1)",
        f"{path}:4: train.max_steps: expected an integer, got str 'x'",
        f"{path}:5: train.warmup_steps: expected an integer, got str '2024-13-45'",
        f"{path}:6: data.bucket_window: expected an integer, got str '8'",
    ]
    assert cli_error("config", "validate", "--set", "train.eval_at_start=maybe", "--set", "output_dir=~") == (
        "--set train.eval_at_start: train.eval_at_start: expected true or false, got str 'maybe'\n"
        "--set output_dir: output_dir: expected a string, got NoneType None"
    )


def test_duplicate_keys_are_reported_with_both_lines(tmp_path):
    path = write(
        tmp_path,
        """\
        train:
          batch_size: 8
          max_steps: 10
          batch_size: 4
        output_dir: a
        data: {cache_dir: c, cache_dir: d}
        output_dir: b
        """,
    )
    assert cli_error("config", "validate", "--config", path).splitlines() == [
        f"{path}:4: train.batch_size: duplicate key (first at line 2)",
        f"{path}:6: data.cache_dir: duplicate key (first at line 6)",
        f"{path}:7: output_dir: duplicate key (first at line 5)",
    ]
    # a key that overrides one merged in with << is no duplicate
    merged = write(tmp_path, "train: {<<: {batch_size: 2, seed: 1}, batch_size: 3}\n", "merged.yaml")
    assert (load_config(merged).train.batch_size, load_config(merged).train.seed) == (3, 1)


def test_a_set_value_replaces_what_the_file_said_below_it(tmp_path):
    path = write(tmp_path, "train:\n  device: cpu\n  batch_size: 0\n")
    # the file's line 3 and its text no longer describe train.*
    assert cli_error("config", "validate", "--config", path, "--set", "train={batch_size: -1}") == (
        "--set train: train.batch_size: must be >= 1 (got -1)"
    )


def test_a_key_written_with_its_replacement_is_an_error_naming_both(tmp_path):
    # the default paths written out, as configs/baseline.yaml does, count as written
    path = write(
        tmp_path,
        """\
        data:
          train_file: data/code_pairs/train.jsonl
          train_files:
            - path: a.jsonl
          val_file: data/code_pairs/val.jsonl
          val_sets:
            x: b.jsonl
        """,
    )
    assert problems_of(path) == [
        f"{path}:3: data.train_files: give data.train_file (data/code_pairs/train.jsonl, line 2) or "
        "data.train_files, not both (to keep the file, list it in train_files)",
        f"{path}:6: data.val_sets: give data.val_file (data/code_pairs/val.jsonl, line 5) or "
        "data.val_sets, not both (to keep the file, name it in val_sets)",
    ]
    one = write(tmp_path, "data:\n  val_file: data/code_pairs/val.jsonl\n", "one.yaml")
    assert problems_of(one, sets=["data.val_sets.x=b.jsonl"]) == [
        "--set data.val_sets.x: data.val_sets.x: give data.val_file (data/code_pairs/val.jsonl, line 2) "
        "or data.val_sets, not both (to keep the file, name it in val_sets; --set data.val_file=null "
        "takes back the file's data.val_file)"
    ]
    assert problems_of(None, sets=["data.train_file=t.jsonl", "data.train_files=[{path: a.jsonl}]"]) == [
        "--set data.train_files: data.train_files: give data.train_file (t.jsonl, --set data.train_file) "
        "or data.train_files, not both (to keep the file, list it in train_files)"
    ]
    # null takes a key back (its default applies); an empty list replaces nothing
    config = load_config(one, sets=["data.val_sets.x=b.jsonl", "data.val_file=null"])
    assert config.data.val_file == "data/code_pairs/val.jsonl" and list(config.data.val_sets) == ["x"]
    empty = load_config(data={"data": {"train_file": "t.jsonl", "train_files": []}})
    assert empty.data.training_files() == (TrainFile("t.jsonl"),)
    # a resolved config leaves out the key its replacement overrides, so it loads back
    assert "val_file" not in unstructure(config)["data"]
    assert load_config(write(tmp_path, dump_yaml(config), "shown.yaml")) == config


def usable_cuda_problem() -> tuple[str, str]:
    """A cuda device name this torch cannot use here, and why."""
    import torch

    if torch.version.cuda is None:
        return "cuda", f"this torch ({torch.__version__}) was built without CUDA"
    if not torch.cuda.is_available():
        return "cuda", "no CUDA device is visible"
    count = torch.cuda.device_count()
    return f"cuda:{count}", f"there are {count} CUDA device(s)"


def test_device_is_checked_when_the_config_loads(tmp_path, pair_files):
    import torch

    usable = "auto, cpu" + (
        ", cuda, " + ", ".join(f"cuda:{i}" for i in range(torch.cuda.device_count()))
        if torch.cuda.is_available()
        else ""
    )
    path = write(tmp_path, "train:\n  device: tpu\n")
    assert cli_error("config", "validate", "--config", path) == (
        f"{path}:2: train.device: unknown device 'tpu'; choose one of: {usable}"
    )
    name, why = usable_cuda_problem()
    expected = f"--set train.device: train.device: cannot use {name!r}: {why}; choose one of: {usable}"
    assert cli_error("config", "validate", "--set", f"train.device={name}") == expected
    for ok in ("auto", "cpu"):
        assert cli_run("config", "validate", "--set", f"train.device={ok}")[0] == 0
    # dualenc train refuses it before any work
    config = write(tmp_path, dump_yaml(fakes.tiny_config(tmp_path, pair_files)), "run.yaml")
    assert cli_error("train", "--config", config, "--set", f"train.device={name}") == expected
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()
    with pytest.raises(DualencError, match="device: unknown device 'tpu'"):
        resolve_device("tpu")


def test_the_device_check_leaves_torch_unimported():
    code = (
        "import sys; from dualenc.core.config import TrainConfig; "
        "TrainConfig(device='cpu'); TrainConfig(device='auto'); assert 'torch' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("key", ["train_file", "val_file"])
def test_training_checks_the_data_files_before_any_work(tmp_path, pair_files, key):
    run = fakes.tiny_config(tmp_path, pair_files)
    config = write(tmp_path, dump_yaml(run), "run.yaml")
    missing, folder = tmp_path / "missing.jsonl", tmp_path
    for value, problem in ((missing, "file not found"), (folder, "not a file")):
        message = cli_error("train", "--config", config, "--set", f"data.{key}={value}")
        assert message == f"data.{key}: {value}: {problem}"
        with pytest.raises(ConfigError, match=f"data.{key}: "):
            train(load_config(config, sets=[f"data.{key}={value}"]))
    # found before a model was built or a file tokenized: nothing was written
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()

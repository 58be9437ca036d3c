"""The Python API: ``dualenc.train``, ``dualenc.Encoder`` and ``Retriever.from_encoder``."""

import json
import shutil
import signal
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from fakes import TinyEncoder

import dualenc
from dualenc.core import checkpoint
from dualenc.core.config import RunConfig
from dualenc.core.configio import load_config
from dualenc.core.encode import encode_texts
from dualenc.core.io import old_twin
from dualenc.core.loop import StopRequested
from dualenc.errors import ConfigError, DualencError
from dualenc.registry.catalog import load_catalog


class TinyPlugin:
    """A plugin defined where it is used, as in a notebook cell: never installed."""

    @staticmethod
    @dualenc.hookimpl
    def register_encoders(register):
        register("tiny", lambda options: TinyEncoder(dim=16, seed=5), description="A test encoder.")


class FailingTracker:
    def start(self, run_dir, config):
        pass

    def log(self, metrics, step):
        if step >= 2:
            raise RuntimeError("tracker broke")

    def finish(self, status):
        pass


class FailingTrackerPlugin:
    @staticmethod
    @dualenc.hookimpl
    def register_trackers(register):
        register("failing", lambda options: FailingTracker())


def tiny_mapping(tmp_path: Path, pair_files, **train) -> dict:
    """A run of the in-test ``tiny`` encoder: a few steps, in about a second."""
    train_file, val_file = pair_files
    return {
        "plugins": {"encoder": "tiny", "trackers": []},
        "data": {"train_file": train_file, "val_file": val_file, "cache_dir": str(tmp_path / "cache")},
        "train": {
            "batch_size": 8,
            "learning_rate": 1e-2,
            "max_steps": 4,
            "warmup_steps": 1,
            "eval_interval": 2,
            "save_interval": 2,
            "log_interval": 1,
            "precision": "fp32",
            **train,
        },
        "output_dir": str(tmp_path / "run"),
    }


def handlers():
    return {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}


def recorded_config(result) -> dict:
    return yaml.safe_load((result.last_checkpoint / checkpoint.RUN_CONFIG).read_text())


def check_result(result, run_dir: Path, steps: int) -> None:
    assert (result.step, result.status) == (steps, "finished")
    assert result.run_dir == run_dir and run_dir.is_dir()
    assert result.last_checkpoint == run_dir / checkpoint.LAST_NAME
    assert (result.last_checkpoint / checkpoint.ENCODER_CONFIG).is_file()
    assert result.best_metric_name == "val/mrr"
    assert (result.best_checkpoint / checkpoint.ENCODER_CONFIG).is_file()
    # the best checkpoint holds the best evaluation the run logged
    logged = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert result.best_metric == max(row["val/mrr"] for row in logged if "val/mrr" in row)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, pair_files):
    """One finished run of the tiny encoder, for the Encoder tests."""
    tmp_path = tmp_path_factory.mktemp("trained")
    return dualenc.train(tiny_mapping(tmp_path, pair_files), plugins=[TinyPlugin], progress=False)


# --- dualenc.train ----------------------------------------------------------------------


def test_train_from_a_mapping_with_a_plugin_object(tmp_path, pair_files):
    before = handlers()
    result = dualenc.train(tiny_mapping(tmp_path, pair_files), plugins=[TinyPlugin])
    check_result(result, tmp_path / "run", 4)
    assert handlers() == before
    encoder, plugin, _ = checkpoint.load_encoder(result.last_checkpoint, load_catalog(plugins=[TinyPlugin]))
    assert plugin == "tiny" and encoder.dim == 16


def test_train_from_a_yaml_path_with_overrides(tmp_path, pair_files):
    path = tmp_path / "run.yaml"
    mapping = tiny_mapping(tmp_path, pair_files)
    mapping["data"] = {key: str(value) for key, value in mapping["data"].items()}
    path.write_text(yaml.safe_dump(mapping))
    result = dualenc.train(
        path, overrides={"train.max_steps": 3, "train.eval_interval": 3}, plugins=[TinyPlugin]
    )
    check_result(result, tmp_path / "run", 3)
    assert recorded_config(result)["train"]["eval_interval"] == 3


def test_train_from_a_run_config_with_a_selection_and_override_strings(tmp_path, pair_files):
    mapping = tiny_mapping(tmp_path, pair_files)
    config = load_config(mapping, catalog=load_catalog(plugins=[TinyPlugin]))
    assert isinstance(config, RunConfig)
    result = dualenc.train(
        config,
        overrides=["train.max_steps=2", "output_dir=" + str(tmp_path / "other")],
        plugins=[TinyPlugin, "trackers=jsonl"],
    )
    check_result(result, tmp_path / "other", 2)
    assert recorded_config(result)["plugins"]["trackers"] == ["jsonl"]


def test_train_selects_plugins_by_mapping(tmp_path, pair_files):
    mapping = tiny_mapping(tmp_path, pair_files, max_steps=2)
    mapping["encoder"] = {"vocab_size": 300, "d_model": 16, "n_layers": 1, "n_heads": 2, "max_seq_len": 32}
    result = dualenc.train(mapping, plugins={"encoder": "transformer", "trackers": []}, progress=False)
    assert result.step == 2
    assert recorded_config(result)["plugins"]["encoder"] == "transformer"


def test_a_bad_key_in_a_mapping_is_a_config_error_with_its_path(tmp_path, pair_files):
    mapping = tiny_mapping(tmp_path, pair_files, max_stpes=3)
    mapping["plugins"]["encoder"] = "tinny"
    with pytest.raises(ConfigError) as error:
        dualenc.train(mapping, overrides={"train.batch_size": 0}, plugins=[TinyPlugin])
    problems = str(error.value).splitlines()
    assert "<mapping>: train.max_stpes: unknown key; did you mean 'max_steps'?" in problems
    assert "--set train.batch_size: train.batch_size: must be >= 1 (got 0)" in problems
    assert any(p.startswith("<mapping>: plugins.encoder: unknown encoder 'tinny'") for p in problems)
    assert not (tmp_path / "run").exists()


def test_errors_of_the_run_raise_and_leave_the_signal_handlers(tmp_path, pair_files):
    """An error before the loop (an existing run) and one inside it (a tracker that raises)."""
    mapping = tiny_mapping(tmp_path, pair_files, max_steps=2)
    before = handlers()
    dualenc.train(mapping, plugins=[TinyPlugin])
    with pytest.raises(DualencError, match="already holds a run"):
        dualenc.train(mapping, plugins=[TinyPlugin])
    mapping["output_dir"] = str(tmp_path / "failing")
    mapping["plugins"]["trackers"] = ["failing"]
    with pytest.raises(RuntimeError, match="tracker broke"):
        dualenc.train(mapping, plugins=[TinyPlugin, FailingTrackerPlugin])
    assert handlers() == before


def test_stop_requested_restores_the_handlers_after_an_exception():
    before = handlers()
    with pytest.raises(ValueError), StopRequested() as stop:
        assert signal.getsignal(signal.SIGINT) == stop._handle
        signal.raise_signal(signal.SIGINT)  # caught by the flag, not a KeyboardInterrupt
        assert stop.signal_name == "SIGINT"
        raise ValueError
    assert handlers() == before


def test_train_runs_in_a_thread_other_than_the_main_one(tmp_path, pair_files):
    before, outcome = handlers(), {}

    def run():
        with StopRequested():
            outcome["installed"] = handlers()  # Python refuses signal.signal off the main thread
        outcome["result"] = dualenc.train(
            tiny_mapping(tmp_path, pair_files, max_steps=2), plugins=[TinyPlugin]
        )

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert outcome["installed"] == before
    check_result(outcome["result"], tmp_path / "run", 2)
    assert handlers() == before


def test_progress_false_leaves_out_the_bar_but_not_the_evaluations(tmp_path, pair_files, capsys):
    mapping = tiny_mapping(tmp_path, pair_files, max_steps=2)
    mapping["plugins"]["trackers"] = ["console"]
    dualenc.train(mapping, plugins=[TinyPlugin], progress=False)
    quiet = capsys.readouterr()
    assert "train:" not in quiet.err and "step 2: val/mrr=" in quiet.out
    mapping["output_dir"] = str(tmp_path / "shown")
    dualenc.train(mapping, plugins=[TinyPlugin])
    assert "train:" in capsys.readouterr().err
    assert dualenc.progress_enabled()


def test_a_plugin_object_without_hooks_is_refused():
    with pytest.raises(DualencError, match="is not a dualenc plugin"):
        load_catalog(plugins=[object()])
    component = load_catalog(plugins=[TinyPlugin]).get("encoder", "tiny")
    assert (component.distribution, component.description) == ("<python>", "A test encoder.")


# --- dualenc.Encoder --------------------------------------------------------------------

TEXTS = ["read a file", "sort the list number 3", "def parse(url):\n    return split(url)\n", "x"]


def test_encoder_encodes_as_evaluation_does(trained):
    encoder = dualenc.Encoder.load(trained.best_checkpoint, plugins=[TinyPlugin])
    assert (encoder.plugin, encoder.dim, encoder.path) == ("tiny", 16, trained.best_checkpoint)
    # TinyEncoder has neither attribute: the defaults of contract 1
    assert encoder.prompts == {"query": "", "code": ""}
    assert encoder.max_lengths == {"query": 64, "code": 64}
    model, _, _ = checkpoint.load_encoder(trained.best_checkpoint, load_catalog(plugins=[TinyPlugin]))
    for side in ("query", "code"):
        vectors = encoder.encode(TEXTS, side=side)
        assert vectors.dtype == np.float32 and vectors.shape == (len(TEXTS), 16)
        np.testing.assert_array_equal(vectors, encode_texts(model, TEXTS, side))
        # other batches pad other widths: the same vectors up to float rounding
        np.testing.assert_allclose(encoder.encode(TEXTS, side=side, batch_size=1), vectors, atol=1e-6)
    np.testing.assert_array_equal(encoder.encode(TEXTS[1]), encoder.encode(TEXTS)[1])
    tensor = encoder.encode(TEXTS, convert_to="torch")
    assert isinstance(tensor, torch.Tensor) and tensor.shape == (len(TEXTS), 16)
    assert encoder.encode([]).shape == (0, 16)


def test_encoder_loads_a_run_folder_as_its_best_checkpoint(trained):
    encoder = dualenc.Encoder.load(trained.run_dir, plugins=[TinyPlugin])
    assert encoder.path == trained.best_checkpoint


def test_a_best_checkpoint_whose_save_was_cut_short_loads_as_its_previous_version(trained, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained.run_dir, run)
    best = run / trained.best_checkpoint.name
    best.rename(old_twin(best))  # killed between moving the old copy aside and the new one in
    assert dualenc.Encoder.load(run, plugins=[TinyPlugin]).path == old_twin(best)

    shutil.copytree(old_twin(best), run / checkpoint.best_name("val/other/mrr"))
    with pytest.raises(DualencError, match="holds several best checkpoints"):
        dualenc.Encoder.load(run, plugins=[TinyPlugin])


def test_encoder_shows_a_progress_bar_on_request(trained, capsys):
    encoder = dualenc.Encoder.load(trained.last_checkpoint, plugins=[TinyPlugin])
    shown = encoder.encode(TEXTS, side="code", show_progress_bar=True)
    assert f"{len(TEXTS)}/{len(TEXTS)}" in capsys.readouterr().err
    np.testing.assert_array_equal(shown, encoder.encode(TEXTS, side="code"))


def test_encoder_refuses_what_it_cannot_do(trained, tmp_path):
    encoder = dualenc.Encoder.load(trained.last_checkpoint, plugins=[TinyPlugin])
    with pytest.raises(DualencError, match="returns unit vectors only"):
        encoder.encode(TEXTS, normalize=False)
    with pytest.raises(DualencError, match="side must be one of query, code"):
        encoder.encode(TEXTS, side="docs")
    with pytest.raises(DualencError, match=r"texts\[1\]: expected a string, got int"):
        encoder.encode(["a", 1])
    with pytest.raises(DualencError, match="no such folder"):
        dualenc.Encoder.load(tmp_path / "missing")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(DualencError, match="neither a dualenc checkpoint .* nor a Hugging Face model"):
        dualenc.Encoder.load(tmp_path)
    with pytest.raises(DualencError, match="the tiny encoder takes no options"):
        dualenc.Encoder.load(trained.last_checkpoint, options={"normalize": False}, plugins=[TinyPlugin])


def test_encoder_options_are_checked_with_their_key_paths(minilm_folder):
    with pytest.raises(ConfigError) as error:
        dualenc.Encoder.load(minilm_folder, options={"pooling": "max", "normalise": False})
    problems = str(error.value).splitlines()
    assert "Encoder.load options: normalise: unknown key; did you mean 'normalize'?" in problems
    assert any(p.startswith("Encoder.load options: pooling: must be one of") for p in problems)


@pytest.fixture(scope="module")
def minilm_folder() -> Path:
    from dualenc.plugins.encoders.hf import default_model_path

    return default_model_path()


def test_a_sentence_transformers_folder_encodes_as_sentence_transformers_does(minilm_folder):
    from sentence_transformers import SentenceTransformer

    # a code longer than 256 tokens: both truncate where sentence_bert_config.json says
    texts = [*TEXTS, "def walk(tree):\n" + "    node = node.next(tree, 'word')\n" * 60]
    encoder = dualenc.Encoder.load(minilm_folder, device="cpu")
    assert (encoder.plugin, encoder.dim, encoder.max_lengths["code"]) == ("hf", 384, 256)
    reference = SentenceTransformer(str(minilm_folder), device="cpu").encode(texts, convert_to_numpy=True)
    for side in ("query", "code"):
        np.testing.assert_allclose(encoder.encode(texts, side=side), reference, atol=1e-5)

    raw = dualenc.Encoder.load(minilm_folder, device="cpu", options={"normalize": False})
    vectors = raw.encode(texts, normalize=False)
    assert np.linalg.norm(vectors, axis=1).min() > 1.5  # MiniLM's mean-pooled vectors are long
    np.testing.assert_allclose(vectors / np.linalg.norm(vectors, axis=1, keepdims=True), reference, atol=1e-5)
    np.testing.assert_allclose(raw.encode(texts), reference, atol=1e-5)

    # the plugin itself, which has a .model of its own (the transformers model), serves too
    search = ["read a file", "walk the tree"]
    by_plugin = dualenc.Retriever.from_encoder(encoder.model, texts).search(search, k=2)
    assert by_plugin == dualenc.Retriever.from_encoder(encoder, texts).search(search, k=2)
    assert [hits[0].id for hits in by_plugin] == ["0", str(len(texts) - 1)]


# --- Retriever.from_encoder ---------------------------------------------------------------

CODES = [
    f"def {verb}_{noun}(x):\n    return {verb}(x, '{noun}')\n"
    for verb in ("sort", "read", "split")
    for noun in ("file", "list", "url")
]


def test_retriever_from_encoder_ranks_as_brute_force(trained):
    encoder = dualenc.Encoder.load(trained.best_checkpoint, plugins=[TinyPlugin])
    ids = [f"code-{i}" for i in range(len(CODES))]
    metadata = [{"path": f"src/m{i}.py", "line": i + 1, "repo": "r"} for i in range(len(CODES))]
    queries = ["read the file", "split a url", "sort"]
    scores = encoder.encode(queries) @ encoder.encode(CODES, side="code").T
    for given in (encoder, encoder.model):  # an Encoder or its plugin
        retriever = dualenc.Retriever.from_encoder(given, CODES, ids=ids, metadata=metadata)
        results = retriever.search(queries, k=4)
        for row, hits in zip(scores, results, strict=True):
            order = np.argsort(-row, kind="stable")[:4]
            assert [hit.id for hit in hits] == [ids[i] for i in order]
            np.testing.assert_allclose([hit.score for hit in hits], row[order], rtol=1e-5)
            for hit, i in zip(hits, order, strict=True):
                assert (hit.code, hit.path, hit.line, hit.symbol) == (CODES[i], f"src/m{i}.py", i + 1, None)
                assert hit.metadata == metadata[i] and hit.to_dict()["metadata"] == metadata[i]


def test_retriever_from_encoder_defaults_and_refusals(trained):
    encoder = dualenc.Encoder.load(trained.best_checkpoint, plugins=[TinyPlugin])
    (hits,) = dualenc.Retriever.from_encoder(encoder, CODES).search(["read"], k=len(CODES) + 5)
    assert sorted(hit.id for hit in hits) == sorted(str(i) for i in range(len(CODES)))
    assert all(hit.metadata is None and "metadata" not in hit.to_dict() for hit in hits)
    with pytest.raises(DualencError, match=r"ids\[1\]: 'a' is also ids\[0\]"):
        dualenc.Retriever.from_encoder(encoder, CODES[:2], ids=["a", "a"])
    with pytest.raises(DualencError, match="metadata: 1 given for 2 codes"):
        dualenc.Retriever.from_encoder(encoder, CODES[:2], metadata=[{}])
    with pytest.raises(DualencError, match="codes: empty"):
        dualenc.Retriever.from_encoder(encoder, [])

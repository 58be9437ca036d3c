"""``dualenc export``: sentence-transformers folders and ONNX graphs, each with a model card."""

import json
import os
import re
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may download

import attrs
import numpy as np
import pytest
from click.testing import CliRunner
from fakes import write_tiny_bert

from dualenc.cli import cli
from dualenc.commands.export import export_onnx, export_sentence_transformers
from dualenc.core.checkpoint import load_encoder, save_encoder
from dualenc.core.configio import dump_yaml, load_config
from dualenc.core.data.extract import extract_pairs
from dualenc.core.encode import encode_texts
from dualenc.errors import DualencError
from dualenc.export.card import ONNX_USAGE
from dualenc.plugins.encoders.transformer import TransformerEncoder, TransformerOptions

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# of very different lengths, the last longer than every max length below
TEXTS = [
    "sort",
    "read a json file",
    "def add(a, b):\n    return a + b\n",
    "    @property\n    def área(self) -> float:  # ünïcode\n        return math.pi * self.r ** 2",
    "class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, item):\n"
    "        self.items.append(item)\n",
    "\n".join(f"def f{i}(x):\n    return x * {i} + sum(range({i}))" for i in range(60)),
]
PROMPTS = {"query": "query: ", "code": "code: "}
LENGTHS = {"query": 16, "code": 40}


@pytest.fixture(scope="module")
def trained_hf(tmp_path_factory):
    """A tiny BERT fine-tuned 2 steps by ``dualenc train`` on pairs that ``dualenc data extract``
    drew from dualenc's own core package, plus one bad line that on_bad_record=skip drops."""
    root = tmp_path_factory.mktemp("export")
    extract_pairs([os.path.join(REPO, "src", "dualenc", "core")], root / "data")
    train_file, val_file = root / "data" / "train.jsonl", root / "data" / "val.jsonl"
    with open(train_file, "a") as handle:
        handle.write('{"query": "no code here"}\n')
    rows = [json.loads(line) for line in train_file.read_text().splitlines()]
    texts = [row[side] for row in rows for side in ("query", "code") if side in row]
    base = write_tiny_bert(root / "base", texts)
    config = load_config(
        data={
            "plugins": {"encoder": "hf", "trackers": []},
            "encoder": {
                "model_path": base,
                "max_seq_len": 48,
                "query_prefix": PROMPTS["query"],
                "code_prefix": PROMPTS["code"],
                "query_max_len": LENGTHS["query"],
                "code_max_len": LENGTHS["code"],
            },
            "data": {
                "train_file": str(train_file),
                "val_file": str(val_file),
                "cache_dir": str(root / "cache"),
                "on_bad_record": "skip",
            },
            "train": {"batch_size": 8, "max_steps": 2, "warmup_steps": 1, "eval_interval": 2},
            "output_dir": str(root / "run"),
        }
    )
    config_file = root / "run.yaml"
    config_file.write_text(dump_yaml(config))
    argv = ["dualenc", "train", "--config", str(config_file)]
    original, sys.argv = sys.argv, argv  # the command the model card reports
    try:
        result = CliRunner().invoke(cli, argv[1:])
    finally:
        sys.argv = original
    assert result.exit_code == 0, result.output
    return {
        "checkpoint": root / "run" / "last",
        "base": base,
        "train_pairs": sum(1 for row in rows if "code" in row),
        "val_records": len(val_file.read_text().splitlines()),
        "stats": json.loads((root / "data" / "stats.json").read_text()),
        "metrics": [json.loads(line) for line in (root / "run" / "metrics.jsonl").read_text().splitlines()],
        "command": " ".join(argv),
    }


def test_sentence_transformers_export_loads_in_sentence_transformers_with_dualencs_embeddings(
    trained_hf, tmp_path
):
    from sentence_transformers import SentenceTransformer

    checkpoint, out = trained_hf["checkpoint"], tmp_path / "st"
    args = ["export", str(checkpoint), "--format", "sentence-transformers", "--out", str(out)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output

    # what sentence-transformers' own save writes
    modules = json.loads((out / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[-1] for m in modules] == ["Transformer", "Pooling", "Normalize"]
    st_config = json.loads((out / "config_sentence_transformers.json").read_text())
    assert st_config["__version__"]["sentence_transformers"]
    assert st_config["prompts"] == {"query": PROMPTS["query"], "document": PROMPTS["code"]}
    assert st_config["default_prompt_name"] is None
    bert_config = json.loads((out / "sentence_bert_config.json").read_text())
    assert (bert_config["query_length"], bert_config["document_length"]) == (16, 40)

    encoder, _, _ = load_encoder(checkpoint)
    model = SentenceTransformer(str(out), device="cpu")
    assert model.max_seq_length == LENGTHS["code"]
    np.testing.assert_allclose(
        model.encode_query(TEXTS, convert_to_numpy=True), encode_texts(encoder, TEXTS, "query"), atol=1e-5
    )
    np.testing.assert_allclose(
        model.encode_document(TEXTS, convert_to_numpy=True), encode_texts(encoder, TEXTS, "code"), atol=1e-5
    )

    card = (out / "README.md").read_text()
    assert "library_name: sentence-transformers" in card
    assert f"`{trained_hf['base']}`" in card  # the base model
    pairs = trained_hf["train_pairs"]
    assert f"| {pairs:,} | missing_field 1 |" in card  # pairs read, the bad line skipped
    assert f"{pairs:,} training pairs in all" in card
    stats = trained_hf["stats"]
    assert f"{stats['files_read']} Python files read" in card
    assert f"{stats['train_pairs']} training pairs from {stats['train_files']} files" in card
    assert "Trained for 2 steps (train.max_steps 2)." in card
    evaluations = [row for row in trained_hf["metrics"] if "val/mrr" in row]
    assert [row["step"] for row in evaluations] == [0, 2]
    best = max(row["val/mrr"] for row in evaluations)
    assert f"Best val/mrr of the evaluations up to this checkpoint: {best:.4f}." in card
    at_two = evaluations[1]
    pool = trained_hf["val_records"]  # extract keeps every code once: each is one candidate
    assert at_two["val/pool_size"] == pool
    assert re.search(rf"\| `val` \| .*{at_two['val/mrr']:.4f}.* \| {pool:,} \|", card)
    assert "model_path: " + trained_hf["base"] in card  # the resolved config
    assert trained_hf["command"] in card

    result = CliRunner().invoke(cli, args)  # an existing folder is never overwritten
    assert result.exit_code == 2 and "already exists and is not an empty folder" in result.output


def test_the_transformer_encoder_has_no_sentence_transformers_export_and_is_pointed_to_onnx(tmp_path):
    save_encoder(tiny_transformer(), "transformer", TINY, tmp_path / "checkpoint")
    with pytest.raises(DualencError, match=r"plugin 'hf'.*--format onnx"):
        export_sentence_transformers(tmp_path / "checkpoint", tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("package", "message"),
    [
        ("sentence_transformers", "pip install sentence-transformers"),
        ("onnxruntime", r"needs onnxruntime .*pip install 'dualenc\[onnx\]'"),
    ],
)
def test_a_missing_optional_package_is_a_clear_error(tmp_path, monkeypatch, package, message):
    save_encoder(tiny_transformer(), "transformer", TINY, tmp_path / "checkpoint")
    monkeypatch.setitem(sys.modules, package, None)  # import now raises ImportError
    run = export_sentence_transformers if package == "sentence_transformers" else export_onnx
    with pytest.raises(DualencError, match=message):
        run(tmp_path / "checkpoint", tmp_path / "out")
    assert not (tmp_path / "out").exists()


TINY = TransformerOptions(vocab_size=400, d_model=32, n_layers=2, n_heads=4, max_seq_len=48)


def tiny_transformer(**changes) -> TransformerEncoder:
    import torch

    torch.manual_seed(0)
    encoder = TransformerEncoder(attrs.evolve(TINY, **changes))
    encoder.prepare(TEXTS * 3)
    return encoder.eval()


def readme_onnx_snippet() -> str:
    """The Python block of the README's "## Export" section that reads an ONNX export."""
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as handle:
        section = handle.read().split("\n## Export\n", 1)[1].split("\n## ", 1)[0]
    (block,) = [b for b in re.findall(r"```python\n(.*?)```", section, re.S) if "dualenc_onnx.json" in b]
    return block


def test_the_readme_shows_the_onnx_reading_code_of_the_model_card():
    assert "```python\n" + readme_onnx_snippet() + "```" == ONNX_USAGE


# the shared-tower transformer writes one graph as hf does: the two cases cover both layouts
@pytest.mark.parametrize("kind", ["hf", "transformer-separate-towers"])
def test_onnx_runtime_reproduces_torchs_embeddings(kind, trained_hf, tmp_path, monkeypatch):
    if kind == "hf":
        checkpoint = trained_hf["checkpoint"]
    else:
        checkpoint = tmp_path / "checkpoint"
        encoder = tiny_transformer(separate_towers=kind.endswith("towers"))
        save_encoder(encoder, "transformer", encoder.options, checkpoint)
    out = tmp_path / "exported-onnx"
    result = CliRunner().invoke(cli, ["export", str(checkpoint), "--format", "onnx", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert result.output == f"wrote {out}\n"  # the exporter's own chatter is not shown
    graphs = ["query.onnx", "code.onnx"] if kind.endswith("towers") else ["model.onnx"]
    assert sorted(p.name for p in out.glob("*.onnx")) == sorted(graphs)
    spec = json.loads((out / "dualenc_onnx.json").read_text())
    encoder, _, _ = load_encoder(checkpoint)
    assert spec["dim"] == encoder.dim and spec["normalized"] is True
    if kind == "hf":
        assert {side: s["prompt"] for side, s in spec["sides"].items()} == PROMPTS
        assert {side: s["max_length"] for side, s in spec["sides"].items()} == LENGTHS
    assert "library_name: onnx" in (out / "README.md").read_text()

    monkeypatch.chdir(tmp_path)  # the README's code reads the folder "exported-onnx"
    namespace: dict = {}
    exec(readme_onnx_snippet(), namespace)
    for side in ("query", "code"):
        expected = encode_texts(encoder, TEXTS, side)
        # one padded batch of texts of every length, then other batch sizes and lengths
        for texts, rows in ((TEXTS, expected), (TEXTS[:1], expected[:1]), (TEXTS[2:4], expected[2:4])):
            got = namespace["encode"](texts, side)
            assert got.shape == rows.shape
            cosine = (got * rows).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(rows, axis=1))
            assert cosine.min() >= 0.9999, (side, cosine)
            np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    if kind == "transformer-separate-towers":  # each side used its own graph
        assert not np.allclose(namespace["encode"](TEXTS, "query"), namespace["encode"](TEXTS, "code"))


def test_onnx_export_refuses_an_existing_folder_before_any_work(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(DualencError, match="already exists"):
        export_onnx(tmp_path / "no-checkpoint", tmp_path / "out")
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


def test_the_card_says_how_the_data_was_split():
    from dualenc.export.card import extraction_note

    stats = {"files_read": 9, "functions_seen": 40, "pairs_kept": 30, "train_pairs": 20, "val_pairs": 6}
    by_file = extraction_note(
        "d/train.jsonl", {**stats, "split_by": "file", "train_files": 5, "val_files": 2}
    )
    assert (
        "split by source file into 20 training pairs from 5 files and 6 validation pairs from 2 files."
        in by_file
    )
    packages = {"train": ["a", "b", "c"], "val": ["d"], "heldout": ["rich", "sympy"]}
    by_package = extraction_note(
        "d/train.jsonl", {**stats, "split_by": "package", "packages": packages, "heldout_pairs": 4}
    )
    assert (
        "split by package into 20 training pairs from 3 packages and 6 validation pairs from 1 packages; "
        "4 pairs of held-out packages (rich, sympy) are in neither." in by_package
    )

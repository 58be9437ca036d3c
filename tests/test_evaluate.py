"""The mrr evaluator, the eval-set loaders and ``dualenc evaluate``, with a small real encoder."""

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from plugin_dist import write_distribution
from safetensors.torch import load_model, save_model

from dualenc.commands.evaluate import evaluate
from dualenc.core.benchmarks import default_cosqa_dir, load_cosqa
from dualenc.core.checkpoint import save_encoder
from dualenc.core.config import DataConfig
from dualenc.core.data import load_eval_set
from dualenc.core.encode import encode_texts
from dualenc.core.metrics import rank_pool
from dualenc.errors import DualencError
from dualenc.plugins.evaluators.mrr import MRREvaluator, MRROptions
from dualenc.registry import load_catalog
from dualenc.registry.kinds import Encoder, EvalSet

COSQA_DIR = Path("/work/shared/benchmarks/cosqa")


class HashBagEncoder(torch.nn.Module):
    """Mean of hashed-word embeddings: a tiny encoder whose queries find codes sharing words."""

    dim = 256
    max_seq_len = 64
    pad_id = 0
    vocab_size = 4096

    def __init__(self, options=None):
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.embedding = torch.nn.Embedding(self.vocab_size, self.dim, padding_idx=self.pad_id)
        with torch.no_grad():
            self.embedding.weight.copy_(torch.randn(self.vocab_size, self.dim, generator=generator))

    def prepare(self, texts):
        pass

    def tokenizer_fingerprint(self) -> str:
        return f"hashbag-{self.vocab_size}"

    def tokenize(self, texts, side):
        # ids 1..vocab-1 from a stable hash of each lowercase word; an empty text becomes [1]
        def word_id(word):
            digest = hashlib.blake2b(word.encode(), digest_size=4).digest()
            return 1 + int.from_bytes(digest, "little") % (self.vocab_size - 1)

        token_ids = []
        for text in texts:
            ids = [word_id(word) for word in re.findall(r"[a-z0-9]+", text.lower())][: self.max_seq_len]
            token_ids.append(np.array(ids or [1], dtype=np.int32))
        return token_ids

    def forward(self, input_ids, attention_mask, side):
        mask = attention_mask.unsqueeze(-1).float()
        pooled = (self.embedding(input_ids) * mask).sum(1) / mask.sum(1)
        return F.normalize(pooled, dim=-1)

    def save(self, directory: Path) -> None:
        save_model(self, str(Path(directory) / "model.safetensors"))

    def load(self, directory: Path) -> None:
        load_model(self, str(Path(directory) / "model.safetensors"))


PAIRS = [
    ("sort a list in reverse", "def sort_desc(items): return sorted(items, reverse=True)"),
    ("read a json file", "def read_json(path): return json.load(open(path))"),
    ("read a json file", "def load_json(path): with open(path) as f: return json.load(f)"),
    ("reverse a string", "def reverse(text): return text[::-1]"),
    ("sum of squares", "def sum_squares(xs): return sum(x * x for x in xs)"),
    ("check if a file exists", "def exists(path): return os.path.exists(path)"),
    ("join paths", "def join(a, b): return os.path.join(a, b)"),
    ("reverse a list", "def sort_desc(items): return sorted(items, reverse=True)"),
]


@pytest.fixture
def pairs_file(tmp_path):
    path = tmp_path / "val.jsonl"
    path.write_text("".join(json.dumps({"query": q, "code": c}) + "\n" for q, c in PAIRS) + "\n")
    return path


HASHBAG_PLUGIN = """
from dualenc import hookimpl
from test_evaluate import HashBagEncoder


@hookimpl
def register_encoders(register):
    register("hashbag", HashBagEncoder, description="test encoder")
"""


@pytest.fixture
def hashbag_catalog(tmp_path, monkeypatch):
    """The test encoder installed as a throwaway distribution, discovered through entry points."""
    root = write_distribution(tmp_path / "site", "dualenc-hashbag", "0.1", {"hashbag_plugin": HASHBAG_PLUGIN})
    monkeypatch.syspath_prepend(str(root))
    return load_catalog()


def test_test_encoder_is_an_encoder():
    assert isinstance(HashBagEncoder(), Encoder)


def test_evaluator_end_to_end(pairs_file):
    eval_set = load_eval_set(pairs_file, DataConfig())
    encoder = HashBagEncoder()
    evaluator = MRREvaluator(MRROptions(batch_size=3, chunk_size=2, pool_chunk_size=3))
    metrics = evaluator.evaluate(encoder, eval_set, prefix="val")
    assert evaluator.primary_metric == "mrr"

    expected = rank_pool(
        encode_texts(encoder, eval_set.queries, "query"),
        encode_texts(encoder, eval_set.pool, "code"),
        eval_set.relevant,
    ).metrics()
    assert {key: metrics[f"val/{key}"] for key in expected} == pytest.approx(expected)
    assert metrics["val/num_queries"] == 7 and metrics["val/pool_size"] == 7
    assert metrics["val/encode_seconds"] >= 0
    assert metrics["val/mrr"] > 0.6  # queries share words with their code; chance is about 0.4


def test_distractors_join_the_pool(tmp_path, pairs_file):
    distractors = tmp_path / "distractors.jsonl"
    codes = ["def noise(): pass", PAIRS[0][1], "def noise(): pass", "def more(): return 1"]
    distractors.write_text("".join(json.dumps({"code": c}) + "\n" for c in codes))
    evaluator = MRREvaluator(MRROptions(distractors=str(distractors)))
    eval_set = load_eval_set(pairs_file, DataConfig())
    # the copy of a pool code and the repeated distractor are skipped
    assert evaluator.with_distractors(eval_set).pool == [*eval_set.pool, codes[0], codes[3]]
    assert evaluator.evaluate(HashBagEncoder(), eval_set, prefix="x")["x/pool_size"] == 9

    distractors.write_text('{"code": "def f(): pass"}\n{"text": "x"}\n')
    with pytest.raises(DualencError, match=r"distractors\.jsonl:2: field 'code' missing"):
        MRREvaluator(MRROptions(distractors=str(distractors)))


@pytest.mark.skipif(not COSQA_DIR.is_dir(), reason="CoSQA benchmark files not present")
@pytest.mark.parametrize("split", ["dev", "test"])
def test_load_cosqa(split):
    eval_set = load_cosqa(COSQA_DIR, split)
    assert eval_set.name == f"cosqa-{split}"
    assert len(eval_set.queries) == 500
    assert len(eval_set.pool) == 6267
    entries = json.loads((COSQA_DIR / f"cosqa-retrieval-{split}-500.json").read_text())
    assert eval_set.queries[0] == entries[0]["doc"]
    # pool index is the candidate id, and the gold id points at the entry's own code
    for entry, relevant in zip(entries, eval_set.relevant, strict=True):
        assert relevant == {entry["retrieval_idx"]: 1.0}
        assert eval_set.pool[entry["retrieval_idx"]] == entry["code"]


def test_cosqa_errors(tmp_path):
    with pytest.raises(DualencError, match="CoSQA directory not found"):
        load_cosqa(tmp_path / "absent", "dev")
    with pytest.raises(DualencError, match="unknown CoSQA split 'train'"):
        load_cosqa(tmp_path, "train")
    with pytest.raises(DualencError, match=r"code_idx_map\.txt: file not found"):
        load_cosqa(tmp_path, "dev")
    (tmp_path / "code_idx_map.txt").write_text(json.dumps({"def a(): pass": 0, "def b(): pass": 2}))
    with pytest.raises(DualencError, match="not exactly 0..1"):
        load_cosqa(tmp_path, "dev")
    (tmp_path / "code_idx_map.txt").write_text(json.dumps({"def a(): pass": 0, "def b(): pass": 1}))
    (tmp_path / "cosqa-retrieval-test-500.json").write_text(json.dumps([{"doc": "a", "retrieval_idx": 5}]))
    with pytest.raises(DualencError, match="entry 0: 'retrieval_idx' must be a candidate id"):
        load_cosqa(tmp_path, "test")


def test_default_cosqa_dir(monkeypatch):
    monkeypatch.delenv("DUALENC_COSQA_DIR", raising=False)
    assert default_cosqa_dir() == Path("../shared/benchmarks/cosqa")
    monkeypatch.setenv("DUALENC_COSQA_DIR", "/data/cosqa")
    assert default_cosqa_dir() == Path("/data/cosqa")


def test_cli_evaluate_data_json(pairs_file, tmp_path, hashbag_catalog):
    per_query = tmp_path / "per_query.jsonl"
    result = CliRunner().invoke(
        evaluate,
        ["--encoder", "hashbag", "--data", str(pairs_file), "--json", "--per-query", str(per_query)],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["eval_set"] == "val" and report["encoder"] == "hashbag"
    assert set(report["metrics"]) == {
        "mrr", "mrr@10", "ndcg@10", "recall@1", "recall@5", "recall@10", "recall@100",
        "mean_rank", "median_rank", "pool_size", "num_queries",
    }  # fmt: skip
    expected = MRREvaluator().evaluate(HashBagEncoder(), load_eval_set(pairs_file, DataConfig()), prefix="p")
    assert report["metrics"]["mrr"] == pytest.approx(expected["p/mrr"])

    rows = [json.loads(line) for line in per_query.read_text().splitlines()]
    assert len(rows) == 7
    json_row = rows[1]
    assert json_row["query"] == "read a json file" and json_row["gold_ids"] == [1, 2]
    assert json_row["reciprocal_rank"] == pytest.approx(1 / json_row["rank"])
    assert len(json_row["top_ids"]) == 5
    assert np.mean([row["reciprocal_rank"] for row in rows]) == pytest.approx(report["metrics"]["mrr"])


def test_cli_evaluate_checkpoint_table(pairs_file, tmp_path, hashbag_catalog):
    save_encoder(HashBagEncoder(), "hashbag", None, tmp_path / "ckpt")
    result = CliRunner().invoke(evaluate, ["--checkpoint", str(tmp_path / "ckpt"), "--data", str(pairs_file)])
    assert result.exit_code == 0, result.output
    assert "val: 7 queries, 7 candidates; encoder hashbag from" in result.output
    assert re.search(r"mrr@10\s+0\.\d{4}", result.output)


@pytest.mark.parametrize(
    "args",
    [
        ["--data", "x.jsonl"],
        ["--encoder", "hashbag", "--checkpoint", "ckpt", "--data", "x.jsonl"],
        ["--encoder", "hashbag"],
        ["--encoder", "hashbag", "--data", "x.jsonl", "--benchmark", "cosqa"],
    ],
)
def test_cli_needs_one_encoder_and_one_source(args):
    result = CliRunner().invoke(evaluate, args)
    assert result.exit_code == 2
    assert "give exactly one of" in result.output


def test_one_query_one_code_is_a_perfect_ranking():
    eval_set = EvalSet(name="n", queries=["q"], pool=["c"], relevant=[{0: 1.0}])
    assert MRREvaluator().evaluate(HashBagEncoder(), eval_set)["val/mrr"] == 1.0

"""The mrr evaluator, the eval-set loaders and ``dualenc evaluate``, with a small real encoder."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from fakes import TinyEncoder, write_distribution, write_jsonl, write_pairs

from dualenc.commands.evaluate import evaluate
from dualenc.core.checkpoint import save_encoder
from dualenc.core.config import DataConfig
from dualenc.core.data.evalsets import default_cosqa_dir, load_cosqa, load_eval_set
from dualenc.core.encode import encode_texts
from dualenc.errors import DualencError
from dualenc.plugins.evaluators.metrics import rank_pool
from dualenc.plugins.evaluators.mrr import MRREvaluator, MRROptions
from dualenc.registry import load_catalog
from dualenc.registry.kinds import EncoderModel, EvalSet

# shared/ lies beside the checkout, here and in CI
COSQA_DIR = Path(__file__).resolve().parents[2] / "shared" / "benchmarks" / "cosqa"
# wide enough for hashed words to be nearly orthogonal: queries then find the codes sharing their words
EVAL_ENCODER_DIM = 256

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
    return write_pairs(tmp_path / "val.jsonl", PAIRS)


HASHBAG_PLUGIN = f"""
from dualenc import hookimpl
from fakes import TinyEncoder


@hookimpl
def register_encoders(register):
    register("hashbag", lambda options: TinyEncoder(dim={EVAL_ENCODER_DIM}), description="test encoder")
"""


@pytest.fixture
def hashbag_catalog(tmp_path, monkeypatch):
    """The test encoder installed as a throwaway distribution, discovered through entry points."""
    root = write_distribution(tmp_path / "site", "dualenc-hashbag", "0.1", {"hashbag_plugin": HASHBAG_PLUGIN})
    monkeypatch.syspath_prepend(str(root))
    return load_catalog()


def test_test_encoder_is_an_encoder():
    assert isinstance(TinyEncoder(dim=EVAL_ENCODER_DIM), EncoderModel)


def test_evaluator_end_to_end(pairs_file):
    eval_set = load_eval_set(pairs_file, DataConfig())
    encoder = TinyEncoder(dim=EVAL_ENCODER_DIM)
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
    codes = ["def noise(): pass", PAIRS[0][1], "def noise(): pass", "def more(): return 1"]
    distractors = write_jsonl(tmp_path / "distractors.jsonl", [{"code": c} for c in codes])
    evaluator = MRREvaluator(MRROptions(distractors=str(distractors)))
    eval_set = load_eval_set(pairs_file, DataConfig())
    # the copy of a pool code and the repeated distractor are skipped
    assert evaluator.with_distractors(eval_set).pool == [*eval_set.pool, codes[0], codes[3]]
    assert evaluator.evaluate(TinyEncoder(dim=EVAL_ENCODER_DIM), eval_set, prefix="x")["x/pool_size"] == 9

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
    expected = MRREvaluator().evaluate(
        TinyEncoder(dim=EVAL_ENCODER_DIM), load_eval_set(pairs_file, DataConfig()), prefix="p"
    )
    assert report["metrics"]["mrr"] == pytest.approx(expected["p/mrr"])

    rows = [json.loads(line) for line in per_query.read_text().splitlines()]
    assert len(rows) == 7
    json_row = rows[1]
    assert json_row["query"] == "read a json file" and json_row["gold_ids"] == [1, 2]
    assert json_row["reciprocal_rank"] == pytest.approx(1 / json_row["rank"])
    assert len(json_row["top_ids"]) == 5
    assert np.mean([row["reciprocal_rank"] for row in rows]) == pytest.approx(report["metrics"]["mrr"])


def test_cli_evaluate_checkpoint_table(pairs_file, tmp_path, hashbag_catalog):
    save_encoder(TinyEncoder(dim=EVAL_ENCODER_DIM), "hashbag", None, tmp_path / "ckpt")
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
    assert MRREvaluator().evaluate(TinyEncoder(dim=EVAL_ENCODER_DIM), eval_set)["val/mrr"] == 1.0


PLAIN_EVALUATOR_PLUGIN = f"""
import attrs
from dualenc import hookimpl
from fakes import TinyEncoder


@attrs.frozen
class CountOptions:
    batch_size: int = 32


class CountEvaluator:
    primary_metric = "queries"

    def __init__(self, options):
        self.options = options

    def evaluate(self, encoder, eval_set, prefix="val"):
        metrics = {{"queries": len(eval_set.queries), "batch_size": self.options.batch_size}}
        return {{f"{{prefix}}/{{name}}": value for name, value in metrics.items()}}


@hookimpl
def register_encoders(register):
    register("hashbag", lambda options: TinyEncoder(dim={EVAL_ENCODER_DIM}))


@hookimpl
def register_evaluators(register):
    register("count", CountEvaluator, options=CountOptions)
"""


@pytest.fixture
def count_evaluator(tmp_path, monkeypatch):
    """An evaluator with nothing but ``evaluate``, installed next to the test encoder."""
    modules = {"count_plugin": PLAIN_EVALUATOR_PLUGIN}
    root = write_distribution(tmp_path / "site", "dualenc-count", "0.1", modules)
    monkeypatch.syspath_prepend(str(root))


def test_cli_evaluate_with_another_evaluator_gets_its_options(pairs_file, count_evaluator):
    args = ["--encoder", "hashbag", "--evaluator", "count", "--data", str(pairs_file)]
    result = CliRunner().invoke(evaluate, [*args, "--batch-size", "7", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["metrics"] == {"queries": 7, "batch_size": 7}
    assert report["seconds"] >= 0

    table = CliRunner().invoke(evaluate, args)
    assert table.exit_code == 0, table.output
    assert "val: 7 queries, 7 candidates; encoder hashbag; evaluated in" in table.output
    assert re.search(r"batch_size\s+32\.0000", table.output)  # the evaluator's own default


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (
            ["--distractors", "extra.jsonl"],
            "--distractors: the 'count' evaluator has no 'distractors' option",
        ),
        (["--per-query", "rows.jsonl"], "--per-query: the 'count' evaluator does not rank query by query"),
    ],
)
def test_cli_evaluate_refuses_what_the_evaluator_cannot_do(pairs_file, count_evaluator, option, message):
    args = ["--encoder", "hashbag", "--evaluator", "count", "--data", str(pairs_file), *option]
    result = CliRunner().invoke(evaluate, args)
    assert result.exit_code == 2
    assert message in result.output


def test_cli_refuses_a_pool_of_one_candidate(tmp_path, hashbag_catalog):
    from dualenc.cli import cli

    one = write_pairs(tmp_path / "one.jsonl", [("sort a list", "def f(x): return sorted(x)")])
    result = CliRunner().invoke(cli, ["evaluate", "--encoder", "hashbag", "--data", str(one)])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output
    assert (
        "one.jsonl: 1 pairs, 1 distinct queries, 1 distinct codes: ranking a pool of 1 candidate"
        in result.output
    )
    assert "Traceback" not in result.output

"""``dualenc evaluate``: exact ranking metrics of an encoder on a JSONL file or on CoSQA."""

from __future__ import annotations

import json
from pathlib import Path

import click

from dualenc.core.benchmarks import COSQA_DIR_ENV, COSQA_SPLITS

TOP_IDS = 5


@click.command("evaluate")
@click.option(
    "--checkpoint",
    type=click.Path(file_okay=False, path_type=Path),
    help="An encoder checkpoint directory (holds encoder.json).",
)
@click.option(
    "--encoder",
    "encoder_name",
    metavar="NAME",
    help="A registered encoder built with its default options, e.g. 'hf' for the pretrained baseline.",
)
@click.option(
    "--data",
    type=click.Path(dir_okay=False, path_type=Path),
    help='A JSONL file of {"query", "code"} pairs; the pool is its distinct codes.',
)
@click.option("--benchmark", type=click.Choice(["cosqa"]), help="A benchmark instead of --data.")
@click.option("--split", type=click.Choice(list(COSQA_SPLITS)), default="dev", show_default=True)
@click.option(
    "--benchmark-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help=f"Where the benchmark lives [default: ${COSQA_DIR_ENV} or ../shared/benchmarks/cosqa].",
)
@click.option(
    "--distractors", type=click.Path(dir_okay=False), help="JSONL of extra pool codes (field 'code')."
)
@click.option("--batch-size", type=click.IntRange(min=1), default=128, show_default=True)
@click.option("--device", default="auto", show_default=True, help="'auto' takes CUDA when there is one.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout.")
@click.option(
    "--per-query",
    type=click.Path(dir_okay=False, path_type=Path),
    help=f"Write each query's rank, gold ids and top-{TOP_IDS} pool ids here (JSONL).",
)
def evaluate(
    checkpoint,
    encoder_name,
    data,
    benchmark,
    split,
    benchmark_dir,
    distractors,
    batch_size,
    device,
    as_json,
    per_query,
):
    """Rank every query against the full pool: MRR, NDCG@10, Recall@k, ranks."""
    from dualenc.plugins.evaluators.mrr import MRREvaluator, MRROptions

    if (checkpoint is None) == (encoder_name is None):
        raise click.UsageError("give exactly one of --checkpoint and --encoder")
    if (data is None) == (benchmark is None):
        raise click.UsageError("give exactly one of --data and --benchmark")

    eval_set = _eval_set(data, benchmark, split, benchmark_dir)
    evaluator = MRREvaluator(MRROptions(batch_size=batch_size, distractors=distractors))
    encoder, encoder_label = _encoder(checkpoint, encoder_name)
    encoder.to(_device(device))
    evaluation = evaluator.run(encoder, eval_set, top_k=TOP_IDS if per_query else 0)
    metrics = evaluation.rankings.metrics()

    if per_query:
        _write_per_query(per_query, evaluation)
    report = {
        "eval_set": evaluation.eval_set.name,
        "encoder": encoder_label,
        "metrics": metrics,
        "encode_seconds": round(evaluation.encode_seconds, 3),
        "score_seconds": round(evaluation.score_seconds, 3),
    }
    if as_json:
        click.echo(json.dumps(report))
        return
    click.echo(
        f"{report['eval_set']}: {metrics['num_queries']} queries, {metrics['pool_size']} candidates; "
        f"encoder {encoder_label}; encoded in {evaluation.encode_seconds:.1f} s, "
        f"scored in {evaluation.score_seconds:.1f} s"
    )
    for name, value in metrics.items():
        if name not in ("num_queries", "pool_size"):
            click.echo(f"  {name:<12} {value:.4f}" if "rank" not in name else f"  {name:<12} {value:g}")


def _eval_set(data, benchmark, split, benchmark_dir):
    from dualenc.core.benchmarks import default_cosqa_dir, load_cosqa
    from dualenc.core.config import DataConfig
    from dualenc.core.data import load_eval_set

    if data is not None:  # the same pool and relevance as val/ metrics during training
        return load_eval_set(data, DataConfig(), name=Path(data).stem)
    return load_cosqa(benchmark_dir or default_cosqa_dir(), split)


def _encoder(checkpoint, encoder_name):
    """(encoder, label for the report)."""
    if checkpoint is not None:
        from dualenc.core.checkpoint import load_encoder

        encoder, plugin, _ = load_encoder(checkpoint)
        return encoder, f"{plugin} from {checkpoint}"
    from dualenc.registry import load_catalog

    component = load_catalog().get("encoder", encoder_name)
    options = component.options() if component.options is not None else None
    return component.create(options), encoder_name


def _device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise click.BadParameter(str(exc), param_hint="--device") from None


def _write_per_query(path: Path, evaluation) -> None:
    rankings = evaluation.rankings
    first = rankings.first_ranks()
    with open(path, "w", encoding="utf-8") as out:
        for index, query in enumerate(evaluation.eval_set.queries):
            row = {
                "query": query,
                "rank": int(first[index]),
                "reciprocal_rank": 1.0 / float(first[index]),
                "gold_ids": rankings.gold_ids(index),
                "top_ids": rankings.top_ids[index].tolist(),
            }
            out.write(json.dumps(row) + "\n")

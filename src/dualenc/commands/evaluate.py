"""``dualenc evaluate``: an evaluator's metrics for an encoder on a JSONL file or on CoSQA.

The evaluator comes from the catalog (``--evaluator``; by default the config's, ``mrr``) with
its options' defaults, ``--batch-size`` and ``--distractors`` set on top when given. One that
also ranks query by query (``run(encoder, eval_set, top_k)``, as ``mrr`` does) gives the whole
report: the time to encode and to score, and each query's rank (``--per-query``). Any other
is reported by the metrics its ``evaluate`` returns and the time it took.

``--mode`` (``dense``, ``lexical``, ``hybrid`` or ``all``), ``--fusion`` and ``--weight`` go to
the evaluator's options ``mode``, ``fusion`` and ``fusion_weight``, as ``mrr`` has them. With
``all`` the report holds every mode's metrics and the paired bootstrap 95% interval of
hybrid's and lexical's MRR minus dense's, queries resampled.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import attrs
import click

from dualenc.cli_options import current_catalog
from dualenc.core.config import PluginSelection
from dualenc.core.data.evalsets import COSQA_DIR_ENV, COSQA_SPLITS
from dualenc.registry.kinds import EvalSet

TOP_IDS = 5
PREFIX = "eval"  # of the metric names a plain evaluator returns; not shown
# how the report's header names the time each key measured
PHASES = {"encode_seconds": "encoded", "score_seconds": "scored", "seconds": "evaluated"}
# the flag of an evaluator option whose name is not the flag's
OPTION_FLAGS = {"fusion_weight": "--weight"}


@attrs.frozen
class Outcome:
    """What one evaluation gives the report."""

    eval_set: EvalSet  # as evaluated: the pool may have grown by distractors
    metrics: dict[str, float]
    seconds: dict[str, float]  # keys of PHASES
    per_query: list[dict] | None
    modes: dict[str, dict[str, float]] = attrs.field(factory=dict)  # mode -> metrics, for --mode all
    differences: dict[str, dict[str, float]] = attrs.field(factory=dict)  # "hybrid-dense" -> interval


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
    "--evaluator",
    "evaluator_name",
    metavar="NAME",
    default=attrs.fields(PluginSelection).evaluator.default,
    show_default=True,
    help="A registered evaluator, built with its default options and those below.",
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
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=None,
    help="Texts per encoder forward pass (default: the evaluator's own).",
)
@click.option(
    "--mode",
    type=click.Choice(["dense", "lexical", "hybrid", "all"]),
    default=None,
    help="Rank by the encoder (dense), by BM25 over code words (lexical), by both fused (hybrid), "
    "or report all three [default: the evaluator's own, dense for mrr].",
)
@click.option(
    "--fusion",
    type=click.Choice(["interpolate", "rrf"]),
    default=None,
    help="Hybrid's fusion [default: the evaluator's own, interpolate for mrr].",
)
@click.option(
    "--weight",
    type=click.FloatRange(0.0, 1.0),
    default=None,
    help="The dense score's weight in hybrid's interpolation (implies --fusion interpolate).",
)
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
    evaluator_name,
    data,
    benchmark,
    split,
    benchmark_dir,
    distractors,
    batch_size,
    mode,
    fusion,
    weight,
    device,
    as_json,
    per_query,
):
    """Rank every query against the full pool: MRR, NDCG@10, Recall@k, ranks."""
    from dualenc.core.device import resolve_device

    if (checkpoint is None) == (encoder_name is None):
        raise click.UsageError("give exactly one of --checkpoint and --encoder")
    if (data is None) == (benchmark is None):
        raise click.UsageError("give exactly one of --data and --benchmark")

    if weight is not None:
        if fusion == "rrf":
            raise click.UsageError("--weight: applies to --fusion interpolate only")
        fusion = "interpolate"
    eval_set = _eval_set(data, benchmark, split, benchmark_dir)
    given = {
        "batch_size": batch_size,
        "distractors": distractors,
        "mode": mode,
        "fusion": fusion,
        "fusion_weight": weight,
    }
    evaluator = _evaluator(evaluator_name, {key: value for key, value in given.items() if value is not None})
    if per_query and not hasattr(evaluator, "run"):
        raise click.UsageError(f"--per-query: the {evaluator_name!r} evaluator does not rank query by query")
    encoder, encoder_label = _encoder(checkpoint, encoder_name)
    encoder.to(resolve_device(device))
    outcome = _run(evaluator, encoder, eval_set, per_query is not None)

    if per_query:
        with open(per_query, "w", encoding="utf-8") as out:
            out.writelines(json.dumps(row) + "\n" for row in outcome.per_query)
    metrics = outcome.metrics
    report = {
        "eval_set": outcome.eval_set.name,
        "encoder": encoder_label,
        "metrics": metrics,
        **{key: round(seconds, 3) for key, seconds in outcome.seconds.items()},
    }
    if mode is not None:
        report["mode"] = mode
    if outcome.modes:
        report["modes"] = outcome.modes
        report["mrr_differences"] = outcome.differences
    if as_json:
        click.echo(json.dumps(report))
        return
    queries = metrics.get("num_queries", len(outcome.eval_set.queries))
    pool = metrics.get("pool_size", len(outcome.eval_set.pool))
    timing = ", ".join(f"{PHASES[key]} in {seconds:.1f} s" for key, seconds in outcome.seconds.items())
    click.echo(
        f"{report['eval_set']}: {queries} queries, {pool} candidates; encoder {encoder_label}; {timing}"
    )
    if outcome.modes:
        _echo_modes(outcome)
        return
    for name, value in metrics.items():
        if name not in ("num_queries", "pool_size"):
            click.echo(f"  {name:<12} {value:.4f}" if "rank" not in name else f"  {name:<12} {value:g}")


def _echo_modes(outcome: Outcome) -> None:
    """Every mode's metrics side by side, then the MRR differences with their intervals."""
    modes = list(outcome.modes)
    click.echo(f"  {'':<12} " + " ".join(f"{mode:>8}" for mode in modes))
    for name in outcome.metrics:
        if name in ("num_queries", "pool_size"):
            continue
        values = [outcome.modes[mode][name] for mode in modes]
        cells = [f"{value:>8g}" if "rank" in name else f"{value:>8.4f}" for value in values]
        click.echo(f"  {name:<12} " + " ".join(cells))
    for label, interval in outcome.differences.items():
        click.echo(
            f"  mrr {label}: {interval['mean']:+.4f} "
            f"(paired bootstrap {100 * interval['level']:.0f}% interval {interval['low']:+.4f} to "
            f"{interval['high']:+.4f})"
        )


def _eval_set(data, benchmark, split, benchmark_dir):
    from dualenc.core.config import DataConfig
    from dualenc.core.data.evalsets import default_cosqa_dir, load_cosqa, load_eval_set

    if data is not None:  # the same pool and relevance as val/ metrics during training
        return load_eval_set(data, DataConfig(), name=Path(data).stem)
    return load_cosqa(benchmark_dir or default_cosqa_dir(), split)


def _evaluator(name: str, given: dict):
    """The evaluator ``name``, its options the defaults but for ``given`` (option name -> value)."""
    component = current_catalog().get("evaluator", name)
    fields = attrs.fields_dict(component.options) if component.options is not None else {}
    for key in given:
        if key not in fields:
            flag = OPTION_FLAGS.get(key, f"--{key.replace('_', '-')}")
            raise click.UsageError(f"{flag}: the {name!r} evaluator has no {key!r} option")
    return component.create(component.options(**given) if component.options is not None else None)


def _encoder(checkpoint, encoder_name):
    """(encoder, label for the report)."""
    if checkpoint is not None:
        from dualenc.core.checkpoint import load_encoder

        encoder, plugin, _ = load_encoder(checkpoint, current_catalog())
        return encoder, f"{plugin} from {checkpoint}"
    return current_catalog().get("encoder", encoder_name).create(), encoder_name


def _run(evaluator, encoder, eval_set: EvalSet, per_query: bool) -> Outcome:
    """Evaluate; an evaluator that ranks query by query (``run``) also gives each phase's time
    and, when ``per_query``, one row per query."""
    if hasattr(evaluator, "run"):  # it ranks query by query and times each phase
        evaluation = evaluator.run(encoder, eval_set, top_k=TOP_IDS if per_query else 0)
        seconds = {"encode_seconds": evaluation.encode_seconds, "score_seconds": evaluation.score_seconds}
        rows = _per_query_rows(evaluation) if per_query else None
        by_mode = getattr(evaluation, "modes", {})
        modes, differences = {}, {}
        if len(by_mode) > 1:
            from dualenc.plugins.evaluators.metrics import paired_bootstrap

            modes = {mode: rankings.metrics() for mode, rankings in by_mode.items()}
            dense = by_mode["dense"].reciprocal_ranks()
            for mode in by_mode:
                if mode != "dense":
                    differences[f"{mode}-dense"] = paired_bootstrap(by_mode[mode].reciprocal_ranks(), dense)
        return Outcome(evaluation.eval_set, evaluation.rankings.metrics(), seconds, rows, modes, differences)
    started = time.perf_counter()
    metrics = evaluator.evaluate(encoder, eval_set, prefix=PREFIX)
    seconds = {"seconds": time.perf_counter() - started}
    unprefixed = {name.removeprefix(f"{PREFIX}/"): value for name, value in metrics.items()}
    return Outcome(eval_set, unprefixed, seconds, None)


def _per_query_rows(evaluation) -> list[dict]:
    """Each query's rank in the evaluation's ranking; with several modes also each mode's."""
    rankings = evaluation.rankings
    first = rankings.first_ranks()
    by_mode = getattr(evaluation, "modes", {})
    mode_ranks = {mode: ranked.first_ranks() for mode, ranked in by_mode.items()} if len(by_mode) > 1 else {}
    rows = []
    for index, query in enumerate(evaluation.eval_set.queries):
        row = {
            "query": query,
            "rank": int(first[index]),
            "reciprocal_rank": 1.0 / float(first[index]),
            "gold_ids": rankings.gold_ids(index),
            "top_ids": rankings.top_ids[index].tolist(),
        }
        if mode_ranks:
            row["ranks"] = {mode: int(ranks[index]) for mode, ranks in mode_ranks.items()}
        rows.append(row)
    return rows

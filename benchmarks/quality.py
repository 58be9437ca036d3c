"""Retrieval quality after the same training: dualenc against sentence-transformers.

From the same pretrained all-MiniLM-L6-v2, the same number of steps (default 300) on the same
standard-library training pairs, batch 32, max_seq_len 128, lr 2e-5, 10% warmup, fp32:

- zero-shot (the pretrained model, encoded through each tool's own path: they must agree),
- sentence-transformers: SentenceTransformerTrainer + MultipleNegativesRankingLoss,
- dualenc: configs/quickstart.yaml (InfoNCE, temperature 0.07, in-batch negatives),
- dualenc with its faiss miner (``--plugin miner=faiss``: ``--miner-negatives`` (default 4) hard
  negatives per query from ranks 10-50, mined before the first step with the model being trained).

Every model is scored by the same code (dualenc's exact ranking over the full pool) on the
held-out stdlib pairs (split by source file) and on the CoSQA test split (500 real web
queries, 6,267 candidate functions). dualenc's loop also logs its own val/mrr at its last
step, reported as a cross-check. All numbers are printed, losses included.

``--equal-time``: quality per hour instead. The peer trains ``--peer-steps`` (default 200) at
its fastest setting (fp32 here, benchmarks/results/train_throughput.json) and its training
wall time T is the budget; dualenc trains ``--recipe`` (default configs/recipe.yaml) on the
same pairs with ``train.max_train_seconds`` = T minus its own tokenization (which the peer
does inside its clock) and ``max_steps`` from a short calibration run of the recipe, so its
schedule ends near the budget. The zero-shot model, the peer and dualenc are scored dense
and hybrid (dualenc's BM25 + fusion at its defaults, for the peer's vectors too) on stdlib
val, CoSQA test and every ``--heldout`` file, with paired bootstrap 95% intervals (queries
resampled) of dualenc minus the peer. Results: quality_equal_time.json.

    python -m benchmarks.quality [--steps 300] [--miner-negatives 4] [--smoke]
    python -m benchmarks.quality --equal-time [--peer-steps 200] [--recipe CONFIG]
        [--train-file FILE ...] [--heldout FILE ...] [--smoke]
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

from benchmarks.common import (
    COSQA_DIR,
    MAX_SEQ_LEN,
    QUICKSTART_CONFIG,
    REPO_ROOT,
    RESULTS_DIR,
    TMP_DIR,
    BenchmarkError,
    argument_parser,
    eval_sets,
    evaluate,
    machine_info,
    model_path,
    parse_arguments,
    peer_encoder,
    print_table,
    read_jsonl,
    run_isolated,
    smoke_pairs_dir,
    spec_evaluation,
    stdlib_pairs_dir,
    write_results,
)
from benchmarks.train_throughput import clocked_catalog, train_spec, warmup_steps

RECIPE_CONFIG = REPO_ROOT / "configs" / "recipe.yaml"
MODES = ("dense", "hybrid")
# the clock both tools' training time is read from, as the results state it
CLOCK = (
    "time.perf_counter wall time from the start of each tool's training loop (the peer: its "
    "trainer's on_train_begin callback; dualenc: the loop's start, the TrainClock of "
    "train.max_train_seconds) to the end of its last optimizer step. Neither counts loading the "
    "model or the pairs; the peer tokenizes each batch inside its clock, dualenc tokenizes all "
    "pairs once before its loop, so dualenc's budget is T minus that tokenization (measured "
    "uncached in the calibration worker)"
)


def zero_shot(spec: dict) -> dict:
    """Worker: the pretrained model, through dualenc's hf encoder and through sentence-transformers."""
    from sentence_transformers import SentenceTransformer

    from dualenc.core.encode import encode_texts
    from dualenc.plugins.encoders.hf import HFEncoder, HFOptions

    sets = eval_sets(Path(spec["val_file"]), Path(spec["cosqa_dir"]), spec["eval_limit"])
    encoder = HFEncoder(HFOptions(max_seq_len=MAX_SEQ_LEN)).eval()
    peer = SentenceTransformer(str(model_path()), device="cpu")
    peer.max_seq_length = MAX_SEQ_LEN
    return {
        "dualenc": evaluate(lambda texts, side: encode_texts(encoder, texts, side, 128), sets),
        "sentence-transformers": evaluate(
            peer_encoder(peer),
            sets,
        ),
    }


def zero_shot_modes(spec: dict) -> dict:
    """Worker: the pretrained model through dualenc's hf encoder, dense and hybrid."""
    from dualenc.core.encode import encode_texts
    from dualenc.plugins.encoders.hf import HFEncoder, HFOptions

    encoder = HFEncoder(HFOptions(max_seq_len=MAX_SEQ_LEN)).eval()
    return {"evaluation": spec_evaluation(spec, lambda texts, side: encode_texts(encoder, texts, side, 128))}


def _recipe_config(spec: dict, catalog):
    """The recipe's config on the benchmark's pairs: its model, loss, miner, batch and schedule
    shape, with the steps and budget of ``spec``; only the last step evaluated and saved,
    a log row (a timestamp) after every step."""
    import yaml

    from dualenc.core.configio import load_config

    data = yaml.safe_load(Path(spec["recipe"]).read_text(encoding="utf-8")) or {}
    max_steps = spec["max_steps"]
    recipe_train = data.get("train") or {}
    # the recipe's warmup as a share of its own steps, kept for the new step count
    fraction = recipe_train.get("warmup_steps", 0) / recipe_train.get("max_steps", max_steps)
    data["plugins"] = {**(data.get("plugins") or {}), "trackers": ["bench_clock"]}
    data_section = {
        key: value
        for key, value in (data.get("data") or {}).items()
        if key not in ("train_file", "train_files", "val_file", "val_sets", "cache_dir", "max_val_pairs")
    }
    data_section.update(
        train_files=[{"path": path} for path in spec["train_files"]],
        val_file=spec["val_file"],
        cache_dir=spec["cache_dir"],
        max_val_pairs=spec["max_val_pairs"],
    )
    data["data"] = data_section
    train_section = {
        key: value
        for key, value in recipe_train.items()
        if key not in ("best_metric", "early_stopping_patience", "early_stopping_min_delta")
    }
    train_section.update(
        max_steps=max_steps,
        warmup_steps=round(fraction * max_steps),
        max_train_seconds=spec.get("max_train_seconds"),
        eval_at_start=False,
        eval_interval=max_steps + 1,
        save_interval=max_steps + 1,
        log_interval=1,
        seed=spec["seed"],
        **({"batch_size": spec["batch_size"]} if spec.get("batch_size") else {}),
    )
    data["train"] = train_section
    data["output_dir"] = spec["output_dir"]
    return load_config(data, catalog=catalog)


def recipe_train(spec: dict) -> dict:
    """Worker: dualenc's recipe through ``dualenc.core.loop.train``; with ``calibrate``, also
    its tokenization of the pairs timed against an empty cache."""
    import attrs

    from dualenc.core import checkpoint
    from dualenc.core.build import build_encoder
    from dualenc.core.data.pairset import load_pair_set
    from dualenc.core.data.records import read_training_texts
    from dualenc.core.encode import encode_texts
    from dualenc.core.loop import train

    clock, catalog = clocked_catalog()
    config = _recipe_config(spec, catalog)
    report = {"tool": "dualenc", "max_steps": config.train.max_steps, "batch_size": config.train.batch_size}
    if spec.get("calibrate"):
        # what the loop does before its clock starts, once without the token cache
        fresh = Path(spec["output_dir"] + "-token-cache")
        shutil.rmtree(fresh, ignore_errors=True)
        started = time.perf_counter()
        encoder = build_encoder(config, catalog)
        loaded = time.perf_counter()
        encoder.prepare(read_training_texts(config.data.training_files(), config.data))
        load_pair_set(config.data.training_files(), attrs.evolve(config.data, cache_dir=str(fresh)), encoder)
        report["tokenize_seconds"] = time.perf_counter() - loaded
        report["model_load_seconds"] = loaded - started
        shutil.rmtree(fresh, ignore_errors=True)
        del encoder
    output_dir = Path(spec["output_dir"])
    shutil.rmtree(output_dir, ignore_errors=True)
    result = train(config, catalog=catalog)
    rows = read_jsonl(output_dir / "metrics.jsonl")
    losses = [row["train/loss"] for row in rows if "train/loss" in row]
    mining = [json.loads(p.read_text()) for p in sorted((output_dir / "mining").glob("round-*.json"))]
    state = json.loads((result.last_checkpoint / checkpoint.TRAINER_JSON).read_text())
    report.update(
        steps=result.step,
        status=result.status,
        clock=[t - clock.times[0] for t in clock.times],
        loop_train_seconds=state["train_seconds"],
        final_loss=losses[-1] if losses else None,
        mining_seconds=[round_["metrics"]["mining/seconds"] for round_ in mining],
        refresh_every=getattr(config.miner, "refresh_every", None),
        miner=config.plugins.miner,
        warmup_steps=config.train.warmup_steps,
        max_train_seconds=config.train.max_train_seconds,
    )
    if spec["evaluate"]:
        encoder, _, _ = checkpoint.load_encoder(result.last_checkpoint)
        report["evaluation"] = spec_evaluation(
            spec, lambda texts, side: encode_texts(encoder, texts, side, 128)
        )
    if spec["evaluate"] and spec.get("merge_weight") is not None:
        from dualenc.core.merge import merge_checkpoint

        started = time.perf_counter()
        merged = merge_checkpoint(result.last_checkpoint, output_dir / "merged", spec["merge_weight"])
        report["merge_seconds"] = time.perf_counter() - started
        encoder, _, _ = checkpoint.load_encoder(merged)
        report["evaluation_merged"] = spec_evaluation(
            spec, lambda texts, side: encode_texts(encoder, texts, side, 128)
        )
    shutil.rmtree(output_dir, ignore_errors=True)  # a checkpoint with optimizer state: ~0.3 GB
    return report


def planned_steps(calibration: dict, budget: float, skip: int) -> tuple[int, dict]:
    """dualenc's max_steps for ``budget`` seconds, from the calibration run: its seconds per
    step after ``skip`` steps, plus its mining rounds (the first before step 1, then one per
    refresh_every steps)."""
    clock, steps = calibration["clock"], calibration["steps"]
    per_step = (clock[steps] - clock[skip]) / (steps - skip)
    rounds = calibration["mining_seconds"]
    first_round = rounds[0] if rounds else 0.0
    refresh = calibration["refresh_every"]
    per_step_mining = (sum(rounds) / len(rounds)) / refresh if rounds and refresh else 0.0
    planned = max(1, math.floor((budget - first_round) / (per_step + per_step_mining)))
    return planned, {
        "seconds_per_step": per_step,
        "first_mining_round_seconds": first_round,
        "mining_seconds_per_step": per_step_mining,
        "calibration_steps": steps,
        "skipped_steps": skip,
    }


def peer_fastest_precision() -> tuple[str, str]:
    """The peer's fastest precision in the throughput results, and where that came from."""
    path = RESULTS_DIR / "train_throughput.json"
    if path.exists():
        fastest = json.loads(path.read_text()).get("peer_fastest")
        if fastest:
            return fastest, f"peer_fastest in {path.relative_to(REPO_ROOT)}"
    return "fp32", f"fp32 ({path.relative_to(REPO_ROOT)} not found)"


def paired_differences(models: dict, set_names: list[str], label: str = "dualenc") -> list[dict]:
    """Per set: the dualenc model ``label`` minus the peer in each mode, and its hybrid minus the
    peer dense, MRR means with paired bootstrap 95% intervals over the queries."""
    from dualenc.plugins.evaluators.metrics import paired_bootstrap

    ours, peer = models[label]["evaluation"], models["sentence-transformers"]["evaluation"]
    rows = []
    for set_name in set_names:
        for mine, theirs in (("dense", "dense"), ("hybrid", "hybrid"), ("hybrid", "dense")):
            interval = paired_bootstrap(
                ours[set_name][mine]["reciprocal_ranks"], peer[set_name][theirs]["reciprocal_ranks"]
            )
            verdict = "ahead" if interval["low"] > 0 else "behind" if interval["high"] < 0 else "level"
            rows.append(
                {
                    "set": set_name,
                    "comparison": f"{label} {mine} - peer {theirs}",
                    **interval,
                    "verdict": verdict,
                }
            )
    return rows


def equal_time(args, machine: dict) -> dict:
    """The --equal-time benchmark: the peer's time for --peer-steps, dualenc's recipe in it."""
    pairs_dir = smoke_pairs_dir() if args.smoke else stdlib_pairs_dir()
    train_files = [str(Path(f).resolve()) for f in args.train_file] or [str(pairs_dir / "train.jsonl")]
    heldout = [str(Path(f).resolve()) for f in args.heldout]
    for flag, paths in (("--train-file", train_files), ("--heldout", heldout)):
        for path in paths:
            if not Path(path).is_file():
                raise BenchmarkError(f"{flag} {path}: file not found")
    recipe, recipe_note = Path(args.recipe).resolve(), str(args.recipe)
    if not recipe.is_file():
        if args.recipe != RECIPE_CONFIG:
            raise BenchmarkError(f"--recipe {recipe}: file not found")
        recipe, recipe_note = QUICKSTART_CONFIG, f"{RECIPE_CONFIG.name} not found: configs/quickstart.yaml"
        print(f"{RECIPE_CONFIG.relative_to(REPO_ROOT)} not found: dualenc runs configs/quickstart.yaml")
    precision, precision_source = (
        (args.peer_precision, "--peer-precision") if args.peer_precision else peer_fastest_precision()
    )
    evaluation = {
        "val_file": str(pairs_dir / "val.jsonl"),
        "cosqa_dir": str(COSQA_DIR),
        "eval_limit": args.eval_limit,
        "heldout": heldout,
        "eval_modes": list(MODES),
    }
    zero = run_isolated("benchmarks.quality:zero_shot_modes", evaluation, "equal-time-zero-shot")

    import yaml

    # the peer trains at the recipe's learning rate: only the tool and what it does in the time differ
    learning_rate = float((yaml.safe_load(recipe.read_text()).get("train") or {}).get("learning_rate", 2e-5))
    peer_spec = train_spec(
        pairs_dir,
        "equal-time-peer",
        learning_rate=learning_rate,
        max_steps=args.peer_steps,
        batch_size=args.batch_size,
        precision=precision,
        evaluate=True,
        train_files=train_files,
        **evaluation,
    )
    peer = run_isolated("benchmarks.train_throughput:peer_train", peer_spec, "equal-time-peer")
    peer_seconds = peer.result["clock"][-1]

    recipe_spec = {
        "recipe": str(recipe),
        "train_files": train_files,
        "cache_dir": str(TMP_DIR / "token-cache"),
        "seed": 42,
        "max_val_pairs": 32,  # the loop's own last-step evaluation, after the clock: kept short
        "batch_size": 8 if args.smoke else None,  # smoke: the recipe's batch would be most of the pairs
        "merge_weight": args.merge_weight,
        **evaluation,
    }
    calibration = run_isolated(
        "benchmarks.quality:recipe_train",
        {
            **recipe_spec,
            "max_steps": args.calibration_skip + args.calibration_steps,
            "calibrate": True,
            "evaluate": False,
            "output_dir": str(TMP_DIR / "runs" / "equal-time-calibration"),
        },
        "equal-time-calibration",
    ).result
    budget = peer_seconds - calibration["tokenize_seconds"]
    if budget <= 0:
        raise BenchmarkError(
            f"the peer trained {peer_seconds:.1f} s, less than dualenc's tokenization "
            f"({calibration['tokenize_seconds']:.1f} s): raise --peer-steps"
        )
    max_steps, plan = planned_steps(calibration, budget, args.calibration_skip)
    ours = run_isolated(
        "benchmarks.quality:recipe_train",
        {
            **recipe_spec,
            "max_steps": max_steps,
            "max_train_seconds": budget,
            "evaluate": True,
            "output_dir": str(TMP_DIR / "runs" / "equal-time-dualenc"),
        },
        "equal-time-dualenc",
    )
    ours_seconds = ours.result["clock"][-1]

    models = {
        "zero-shot": {"evaluation": zero.result["evaluation"], "peak_rss_mb": zero.peak_rss_mb},
        "sentence-transformers": {
            "evaluation": peer.result["evaluation"],
            "precision": precision,
            "steps": peer.result["steps"],
            "train_seconds": peer_seconds,
            "seconds_per_step": peer_seconds / peer.result["steps"],
            "final_loss": peer.result["final_loss"],
            "peak_rss_mb": peer.peak_rss_mb,
        },
        "dualenc": {
            "evaluation": ours.result["evaluation"],
            "recipe": recipe_note,
            "steps": ours.result["steps"],
            "max_steps": max_steps,
            "status": ours.result["status"],
            "train_seconds": ours_seconds,
            "loop_train_seconds": ours.result["loop_train_seconds"],
            "seconds_per_step": ours_seconds / ours.result["steps"],
            "budget_seconds": budget,
            "batch_size": ours.result["batch_size"],
            "warmup_steps": ours.result["warmup_steps"],
            "miner": ours.result["miner"],
            "mining_seconds": ours.result["mining_seconds"],
            "final_loss": ours.result["final_loss"],
            "peak_rss_mb": ours.peak_rss_mb,
        },
    }
    if "evaluation_merged" in ours.result:
        models[f"dualenc + merge {args.merge_weight:g}"] = {
            "evaluation": ours.result["evaluation_merged"],
            "merge_weight": args.merge_weight,
            "merge_seconds": ours.result["merge_seconds"],
        }
    set_names = list(zero.result["evaluation"])
    differences = [
        row
        for label in models
        if label.startswith("dualenc")
        for row in paired_differences(models, set_names, label)
    ]

    print_table(
        f"Training in equal wall time: the peer's {args.peer_steps} steps ({precision}) set the budget",
        ["tool", "batch", "steps", "max_steps", "train s", "s/step", "status", "peak RSS MB"],
        [
            [
                "sentence-transformers MNRL",
                args.batch_size,
                models["sentence-transformers"]["steps"],
                args.peer_steps,
                peer_seconds,
                models["sentence-transformers"]["seconds_per_step"],
                "finished",
                peer.peak_rss_mb,
            ],
            [
                f"dualenc ({recipe.name})",
                ours.result["batch_size"],
                ours.result["steps"],
                max_steps,
                ours_seconds,
                models["dualenc"]["seconds_per_step"],
                ours.result["status"],
                ours.peak_rss_mb,
            ],
        ],
        smoke=args.smoke,
    )
    print(
        f"budget: peer {peer_seconds:.1f} s - dualenc tokenization {calibration['tokenize_seconds']:.1f} s "
        f"= {budget:.1f} s; calibration {plan['seconds_per_step']:.3f} s/step"
        + (
            f" + mining {plan['mining_seconds_per_step']:.3f} s/step"
            if plan["mining_seconds_per_step"]
            else ""
        )
        + f" -> max_steps {max_steps}"
    )
    print(f"clock: {CLOCK}")
    for set_name in set_names:
        rows = []
        for label, model in models.items():
            for mode in MODES:
                scores = model["evaluation"][set_name][mode]
                rows.append(
                    [
                        label,
                        mode,
                        scores["mrr"],
                        scores["mrr@10"],
                        scores["recall@1"],
                        scores["recall@10"],
                        scores["ndcg@10"],
                    ]
                )
        first = models["zero-shot"]["evaluation"][set_name]["dense"]
        print_table(
            f"{set_name}: {first['queries']} queries, pool {first['pool']}",
            ["model", "mode", "MRR", "MRR@10", "R@1", "R@10", "nDCG@10"],
            rows,
            smoke=args.smoke,
        )
    print_table(
        "MRR differences, paired bootstrap 95% intervals (10,000 resamples of the queries)",
        ["set", "comparison", "mean", "low", "high", "verdict"],
        [
            [
                d["set"],
                d["comparison"],
                f"{d['mean']:+.4f}",
                f"{d['low']:+.4f}",
                f"{d['high']:+.4f}",
                d["verdict"],
            ]
            for d in differences
        ],
        smoke=args.smoke,
    )
    payload = {
        "settings": {
            "mode": "equal wall-clock time",
            "clock": CLOCK,
            "peer_steps": args.peer_steps,
            "peer": "SentenceTransformerTrainer + MultipleNegativesRankingLoss, no_duplicates batch sampler, "
            f"batch {args.batch_size}, lr {learning_rate:g} (the recipe's), "
            f"{warmup_steps(args.peer_steps)} warmup steps, "
            f"max_seq_len {MAX_SEQ_LEN}, {precision} ({precision_source})",
            "dualenc": f"{recipe_note}, trained on the same pairs with train.max_train_seconds = budget and "
            "max_steps from the calibration (warmup kept at the recipe's share of its steps); no evaluation "
            "or checkpoint before its last step",
            "budget": {
                "peer_train_seconds": peer_seconds,
                "dualenc_tokenize_seconds": calibration["tokenize_seconds"],
                "dualenc_budget_seconds": budget,
            },
            "calibration": plan,
            "train_files": train_files,
            "heldout": heldout,
            "eval": "dualenc.plugins.evaluators.metrics over the full pool; dense = inner products, hybrid = "
            "dualenc's BM25 (core.lexical) fused by core.fusion.Fusion() defaults (the peer's vectors too)",
            "eval_limit": args.eval_limit,
            "bootstrap": "dualenc.plugins.evaluators.metrics.paired_bootstrap: 10,000 resamples of the "
            "queries, percentile 95% interval of the mean reciprocal-rank difference",
        },
        "models": models,
        "differences": differences,
    }
    write_results("quality_equal_time", args, payload, machine)
    return payload


def main(argv: list[str] | None = None) -> dict:
    parser = argument_parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--equal-time", action="store_true", help="equal wall-clock time instead of equal steps (see above)"
    )
    parser.add_argument(
        "--peer-steps", type=int, default=200, help="--equal-time: the peer's steps, its time the budget"
    )
    parser.add_argument("--recipe", type=Path, default=RECIPE_CONFIG, help="--equal-time: dualenc's config")
    parser.add_argument(
        "--merge-weight",
        type=float,
        default=None,
        help="--equal-time: also score dualenc's model merged with its base at this weight (dualenc merge)",
    )
    parser.add_argument(
        "--train-file",
        action="append",
        default=[],
        help="--equal-time: training pairs of both tools (repeatable)",
    )
    parser.add_argument(
        "--heldout",
        action="append",
        default=[],
        help="--equal-time: another pair file to evaluate on (repeatable)",
    )
    parser.add_argument(
        "--peer-precision",
        choices=("fp32", "bf16"),
        default=None,
        help="--equal-time [default: the peer's fastest]",
    )
    parser.add_argument(
        "--calibration-steps", type=int, default=10, help="--equal-time: dualenc's timed steps"
    )
    parser.add_argument(
        "--calibration-skip", type=int, default=3, help="--equal-time: steps before the timing"
    )
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--miner-negatives", type=int, default=4, help="hard negatives per query for the faiss miner run"
    )
    parser.add_argument("--eval-limit", type=int, default=None, help="score only this many queries per set")
    args = parse_arguments(
        parser,
        argv,
        steps=2,
        eval_limit=20,
        batch_size=8,
        peer_steps=2,
        calibration_steps=2,
        calibration_skip=1,
    )
    machine = machine_info()
    if args.equal_time:
        return equal_time(args, machine)
    pairs_dir = smoke_pairs_dir() if args.smoke else stdlib_pairs_dir()
    shared = {
        "max_steps": args.steps,
        "batch_size": args.batch_size,
        "precision": args.precision,
        "evaluate": True,
        "eval_limit": args.eval_limit,
        # the loop's own evaluation at its last step, over the same val set: a cross-check of ours
        "max_val_pairs": args.eval_limit,
    }
    zero = run_isolated(
        "benchmarks.quality:zero_shot",
        {
            "val_file": str(pairs_dir / "val.jsonl"),
            "cosqa_dir": str(COSQA_DIR),
            "eval_limit": args.eval_limit,
        },
        "quality-zero-shot",
    )
    models = {
        "zero-shot (dualenc encoder)": {"evaluation": zero.result["dualenc"]},
        "zero-shot (sentence-transformers encode)": {"evaluation": zero.result["sentence-transformers"]},
    }
    for label, function, settings in (
        ("sentence-transformers MNRL", "peer_train", {}),
        ("dualenc", "dualenc_train", {}),
        (
            "dualenc + faiss miner",
            "dualenc_train",
            {"miner": "faiss", "miner_negatives": args.miner_negatives},
        ),
    ):
        name = "quality-" + label.replace(" ", "-").replace("+", "").replace("--", "-")
        run = run_isolated(
            f"benchmarks.train_throughput:{function}", train_spec(pairs_dir, name, **shared, **settings), name
        )
        models[label] = {
            "evaluation": run.result["evaluation"],
            "train_seconds": run.result["clock"][-1],
            "final_loss": run.result["final_loss"],
            "loop_val_mrr": run.result.get("loop_val_mrr"),
            "mining_seconds": run.result.get("mining_seconds"),
            "peak_rss_mb": run.peak_rss_mb,
        }

    headers = ["model", "train s"]
    for set_name in ("stdlib-val", "cosqa-test"):
        headers += [f"{set_name} MRR", "MRR@10", "R@1", "R@10"]
    rows = []
    for label, model in models.items():
        row = [label, model.get("train_seconds")]
        for set_name in ("stdlib-val", "cosqa-test"):
            scores = model["evaluation"][set_name]
            row += [scores["mrr"], scores["mrr@10"], scores["recall@1"], scores["recall@10"]]
        rows.append(row)
    print_table(
        f"Retrieval quality after {args.steps} steps: {args.precision}, batch {args.batch_size}, lr 2e-5, "
        f"max_seq_len {MAX_SEQ_LEN}",
        headers,
        rows,
        smoke=args.smoke,
    )
    peer = models["sentence-transformers MNRL"]["evaluation"]
    for label in ("dualenc", "dualenc + faiss miner"):
        deltas = ", ".join(
            f"{set_name} MRR {models[label]['evaluation'][set_name]['mrr'] - peer[set_name]['mrr']:+.4f}"
            for set_name in ("stdlib-val", "cosqa-test")
        )
        print(f"{label} minus sentence-transformers: {deltas}")
        print(
            f"  dualenc's loop logged val/mrr {models[label]['loop_val_mrr']} (cross-check of stdlib-val MRR)"
        )
    payload = {
        "settings": {
            "steps": args.steps,
            "precision": args.precision,
            "batch_size": args.batch_size,
            "learning_rate": 2e-5,
            "warmup_steps": train_spec(pairs_dir, "settings", max_steps=args.steps)["warmup_steps"],
            "max_seq_len": MAX_SEQ_LEN,
            "train_pairs": str(pairs_dir / "train.jsonl"),
            "eval": "dualenc.plugins.evaluators.metrics.rank_pool over the full pool; "
            "stdlib val (held out by source file) and CoSQA test",
            "eval_limit": args.eval_limit,
            "dualenc": "configs/quickstart.yaml: infonce, temperature 0.07 (fixed), false-negative masking, "
            f"weight decay 0.01; faiss miner: {args.miner_negatives} negatives per query, ranks 10-50, mined "
            "once before step 1 (refresh_every 500 > steps)",
            "peer": "MultipleNegativesRankingLoss (scale 20 = temperature 0.05), no_duplicates batch "
            "sampler, weight decay 0",
        },
        "models": models,
    }
    write_results("quality", args, payload, machine)
    return payload


if __name__ == "__main__":
    main()

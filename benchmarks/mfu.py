"""Model FLOP utilisation of dualenc's training against this machine's measured matmul peak.

Peak: the best FLOP/s of a large square torch matmul (2 n^3 FLOPs), in fp32 and in bf16, on
the threads torch uses here. Training: dualenc fine-tuning all-MiniLM-L6-v2 (batch 32,
max_seq_len 128) in fp32 and in bf16 autocast, timed like train_throughput (timestamps
after each optimizer step, the first steps left out).

Model FLOPs per training step, summed over every query and code sequence of the step, with
l its real (unpadded) length:

    FLOPs = sum over sequences of ( 6 * N * l  +  12 * n_layers * d_model * l^2 )

N = the encoder's non-embedding parameters (token, position and type embeddings are lookups);
6 = 2 FLOPs per multiply-add, times 3 for forward + backward; 12 * n_layers * d_model * l^2
= the attention scores and the weighted sum (2 matmuls of 2 l^2 d FLOPs per layer, times 3).
MFU = model FLOPs / step time / peak. HFU counts what is actually computed instead: each
sequence padded to its batch's longest.

    python -m benchmarks.mfu [--steps 20] [--smoke]
"""

from __future__ import annotations

import time

from benchmarks.common import (
    MAX_SEQ_LEN,
    argument_parser,
    machine_info,
    median,
    parse_arguments,
    print_table,
    run_isolated,
    stdlib_pairs_dir,
    write_results,
)
from benchmarks.train_throughput import PRECISIONS, train_spec

FORMULA = "sum over sequences of (6 * N * l + 12 * n_layers * d_model * l^2), l = real tokens of the sequence"


def matmul_peak(spec: dict) -> dict:
    """Worker: the best FLOP/s of an n x n matmul in fp32 and bf16."""
    import torch

    size, repeats = spec["size"], spec["repeats"]
    peaks = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
        for _ in range(2):  # warm-up: thread pool, kernel choice
            torch.matmul(a, b)
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            torch.matmul(a, b)
            times.append(time.perf_counter() - started)
        flops = 2 * size**3
        peaks[name] = {
            "best_flops_per_sec": flops / min(times),
            "median_flops_per_sec": flops / median(times),
        }
    return {"size": size, "repeats": repeats, "threads": torch.get_num_threads(), "peaks": peaks}


def encoder_shape() -> dict:
    """Non-embedding parameters, layers and width of dualenc's hf encoder (all-MiniLM-L6-v2).

    The pooler is left out: it runs once per sequence, not per token, and its output is unused.
    """
    from dualenc.plugins.encoders.hf import HFEncoder, HFOptions

    encoder = HFEncoder(HFOptions(max_seq_len=MAX_SEQ_LEN))
    config = encoder.model.config
    non_embedding = sum(
        p.numel()
        for name, p in encoder.model.named_parameters()
        if not name.startswith(("embeddings.", "pooler."))
    )
    return {
        "non_embedding_params": non_embedding,
        "all_params": sum(p.numel() for p in encoder.parameters()),
        "n_layers": config.num_hidden_layers,
        "d_model": config.hidden_size,
    }


def step_flops(shape: dict, tokens: int, squared: int) -> float:
    return 6 * shape["non_embedding_params"] * tokens + 12 * shape["n_layers"] * shape["d_model"] * squared


def main(argv: list[str] | None = None) -> dict:
    parser = argument_parser(__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="timed steps per run")
    parser.add_argument("--skip-steps", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=1, help="training runs per precision (median)")
    parser.add_argument("--matmul-size", type=int, default=4096)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parse_arguments(parser, argv, steps=1, skip_steps=1, matmul_size=512, batch_size=8)
    machine = machine_info()
    shape = encoder_shape()
    peak = run_isolated(
        "benchmarks.mfu:matmul_peak",
        {"size": args.matmul_size, "repeats": 5 if args.smoke else 10},
        "matmul-peak",
    ).result
    pairs_dir = stdlib_pairs_dir()
    rows, results = [], {}
    for precision in PRECISIONS:
        runs = []
        for repeat in range(args.repeats):
            name = f"mfu-{precision}-{repeat}"
            spec = train_spec(
                pairs_dir,
                name,
                precision=precision,
                max_steps=args.skip_steps + args.steps,
                batch_size=args.batch_size,
            )
            report = run_isolated("benchmarks.train_throughput:dualenc_train", spec, name).result
            batches, skip = report["batches"], args.skip_steps
            seconds = report["clock"][-1] - report["clock"][skip]
            model_flops = step_flops(
                shape, sum(batches["real_tokens"][skip:]), sum(batches["squared_real"][skip:])
            )
            hardware_flops = step_flops(
                shape, sum(batches["computed_tokens"][skip:]), sum(batches["squared_computed"][skip:])
            )
            runs.append(
                {
                    "seconds": seconds,
                    "pairs_per_sec": sum(batches["pairs"][skip:]) / seconds,
                    "model_flops_per_sec": model_flops / seconds,
                    "hardware_flops_per_sec": hardware_flops / seconds,
                    "real_tokens": sum(batches["real_tokens"][skip:]),
                    "computed_tokens": sum(batches["computed_tokens"][skip:]),
                }
            )
        achieved = median([r["model_flops_per_sec"] for r in runs])
        hardware = median([r["hardware_flops_per_sec"] for r in runs])
        same_dtype_peak = peak["peaks"][precision]["best_flops_per_sec"]
        results[precision] = {
            "runs": runs,
            "model_flops_per_sec": achieved,
            "mfu": achieved / same_dtype_peak,
            "hfu": hardware / same_dtype_peak,
            "mfu_vs_fp32_peak": achieved / peak["peaks"]["fp32"]["best_flops_per_sec"],
        }
        rows.append(
            [
                precision,
                median([r["pairs_per_sec"] for r in runs]),
                achieved / 1e9,
                same_dtype_peak / 1e9,
                f"{100 * results[precision]['mfu']:.1f}%",
                f"{100 * results[precision]['hfu']:.1f}%",
                f"{100 * results[precision]['mfu_vs_fp32_peak']:.1f}%",
            ]
        )
    print_table(
        f"dualenc training MFU: all-MiniLM-L6-v2, batch {args.batch_size}, max_seq_len {MAX_SEQ_LEN}, "
        f"{args.steps} timed steps",
        [
            "precision",
            "pairs/s",
            "model GFLOP/s",
            "matmul peak GFLOP/s",
            "MFU",
            "HFU (padded)",
            "MFU vs fp32 peak",
        ],
        rows,
        smoke=args.smoke,
    )
    print(f"FLOPs per step = {FORMULA}")
    print(
        f"N = {shape['non_embedding_params']:,} non-embedding parameters, n_layers = {shape['n_layers']}, "
        f"d_model = {shape['d_model']}; peak: best {args.matmul_size}^2 matmul on {peak['threads']} threads"
    )
    payload = {
        "settings": {
            "formula": FORMULA,
            "mfu": "model FLOPs (real tokens) / wall time of the timed steps / matmul peak of the same dtype",
            "hfu": "the same with every sequence padded to its batch's longest, as computed",
            "timed_steps": args.steps,
            "skipped_steps": args.skip_steps,
            "repeats": args.repeats,
            "batch_size": args.batch_size,
        },
        "encoder": shape,
        "matmul_peak": peak,
        "results": results,
    }
    write_results("mfu", args, payload, machine)
    return payload


if __name__ == "__main__":
    main()

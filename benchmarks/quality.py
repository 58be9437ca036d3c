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

    python -m benchmarks.quality [--steps 300] [--miner-negatives 4] [--smoke]
"""

from __future__ import annotations

from pathlib import Path

from benchmarks.common import (
    COSQA_DIR,
    MAX_SEQ_LEN,
    argument_parser,
    eval_sets,
    evaluate,
    machine_info,
    model_path,
    parse_arguments,
    peer_encoder,
    print_table,
    run_isolated,
    smoke_pairs_dir,
    stdlib_pairs_dir,
    write_results,
)
from benchmarks.train_throughput import train_spec


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


def main(argv: list[str] | None = None) -> dict:
    parser = argument_parser(__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--miner-negatives", type=int, default=4, help="hard negatives per query for the faiss miner run"
    )
    parser.add_argument("--eval-limit", type=int, default=None, help="score only this many queries per set")
    args = parse_arguments(parser, argv, steps=2, eval_limit=20, batch_size=8)
    machine = machine_info()
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

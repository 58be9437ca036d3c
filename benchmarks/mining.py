"""Hard-negative mining: dualenc's faiss miner against sentence_transformers.util.mine_hard_negatives.

Both mine the same N (query, code) pairs with the same all-MiniLM-L6-v2 at max_seq_len 128,
4 negatives per query from ranks 10-50 (the best other codes skipped as likely unlabelled
positives), sampled at random in that window, with exact FAISS inner-product search
(dualenc: its default up to 100k codes; peer: use_faiss=True, an IndexFlatIP). dualenc encodes
at most 256 texts a batch, fewer on the CPU (its 1024-token budget); the peer runs at each of
``--peer-batch-sizes`` (its default 32, and 256), and the ratio is against its fastest.
Timed for both: texts in, negatives out (dualenc's tokenization included, as the peer
tokenizes inside its encode); loading the model is not.

Overlap: per query, Jaccard of the two negative sets (as code texts), averaged. Random
sampling from the same 40-candidate window would give a low overlap even with identical
rankings, so the expected Jaccard of two independent random draws is printed next to it,
and a second, deterministic pass compares the windows themselves: ranks 10-13 (the peer's
sampling_strategy="top" after range_min 10; dualenc's window 10-14).

    python -m benchmarks.mining [--pairs 20000] [--peer-batch-sizes 32,256] [--no-top-check] [--smoke]
"""

from __future__ import annotations

import math
import random
import shutil
import time
from pathlib import Path

import numpy as np

from benchmarks.common import (
    MAX_SEQ_LEN,
    TMP_DIR,
    argument_parser,
    code_pairs,
    machine_info,
    median,
    model_path,
    parse_arguments,
    print_table,
    read_jsonl,
    run_isolated,
    write_jsonl,
    write_results,
)

NUM_NEGATIVES = 4
RANGE_MIN, RANGE_MAX = 10, 50
ENCODE_BATCH = 256
# the deterministic pass: the NUM_NEGATIVES best candidates after RANGE_MIN
TOP_WINDOW_MAX = RANGE_MIN + NUM_NEGATIVES


# --- workers -----------------------------------------------------------------------------


def dualenc_mine(spec: dict) -> dict:
    """Worker: tokenize the corpus into a fresh cache and mine with dualenc's faiss miner."""
    from dualenc.core.config import DataConfig
    from dualenc.core.data.pairset import load_pair_set
    from dualenc.plugins.encoders.hf import HFOptions
    from dualenc.plugins.miners.faiss import FaissMinerOptions
    from dualenc.registry.catalog import load_catalog

    catalog = load_catalog()
    encoder = catalog.get("encoder", "hf").create(HFOptions(max_seq_len=MAX_SEQ_LEN))
    work_dir = Path(spec["work_dir"])
    passes = {}
    for name, range_max in spec["windows"].items():
        shutil.rmtree(work_dir, ignore_errors=True)  # a fresh token cache: tokenizing is timed
        started = time.perf_counter()
        pairs = load_pair_set(spec["corpus"], DataConfig(cache_dir=str(work_dir / "cache")), encoder)
        tokenized = time.perf_counter()
        options = FaissMinerOptions(
            num_negatives=NUM_NEGATIVES,
            range_min=RANGE_MIN,
            range_max=range_max,
            refresh_every=0,
            batch_size=ENCODE_BATCH,
        )
        miner = catalog.get("miner", "faiss").create(options)
        metrics = miner.mine(encoder, pairs, 0, work_dir / "run")
        finished = time.perf_counter()
        passes[name] = {
            "seconds": finished - started,
            "tokenize_seconds": tokenized - started,
            "mine_seconds": finished - tokenized,
            "encode_seconds": metrics["mining/encode_seconds"],
            "search_seconds": metrics["mining/search_seconds"],
            "negatives": miner.negatives(np.arange(len(pairs))).tolist(),
        }
    shutil.rmtree(work_dir, ignore_errors=True)
    return {"tool": "dualenc", "passes": passes}


def peer_mine(spec: dict) -> dict:
    """Worker: sentence_transformers.util.mine_hard_negatives on the same pairs."""
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.util import mine_hard_negatives

    pairs = read_jsonl(Path(spec["corpus"]))
    index_of_code = {pair["code"]: i for i, pair in enumerate(pairs)}  # codes are distinct
    model = SentenceTransformer(str(model_path()), device="cpu")
    model.max_seq_length = MAX_SEQ_LEN
    passes = {}
    for name, strategy in spec["strategies"].items():
        random.seed(0)  # its random sampling draws from Python's random module
        started = time.perf_counter()
        dataset = Dataset.from_dict(
            {"query": [p["query"] for p in pairs], "code": [p["code"] for p in pairs]}
        )
        mined = mine_hard_negatives(
            dataset,
            model,
            anchor_column_name="query",
            positive_column_name="code",
            range_min=RANGE_MIN,
            range_max=RANGE_MAX,
            num_negatives=NUM_NEGATIVES,
            sampling_strategy=strategy,
            use_faiss=True,
            batch_size=spec["batch_size"],
            output_format="n-tuple",
            verbose=False,
        )
        finished = time.perf_counter()
        # n-tuple rows exist only for pairs that got all their negatives: the rest stay None
        negatives: list[list[int] | None] = [None] * len(pairs)
        columns = [f"negative_{i}" for i in range(1, NUM_NEGATIVES + 1)]
        for row in mined:
            negatives[index_of_code[row["code"]]] = [index_of_code[row[c]] for c in columns]
        passes[name] = {"seconds": finished - started, "negatives": negatives}
    return {"tool": "sentence-transformers", "passes": passes}


# --- comparison --------------------------------------------------------------------------


def expected_random_jaccard(window: int, k: int) -> float:
    """E[Jaccard] of two independent uniform k-subsets of the same ``window`` candidates."""
    total = math.comb(window, k)
    return sum(
        math.comb(k, shared) * math.comb(window - k, k - shared) / total * shared / (2 * k - shared)
        for shared in range(k + 1)
    )


def overlap(dualenc_negatives: list[list[int]], peer_negatives: list[list[int] | None]) -> dict:
    """Jaccard per pair of the two negative sets, averaged over pairs both tools filled."""
    scores = []
    for ours, theirs in zip(dualenc_negatives, peer_negatives, strict=True):
        ours = {i for i in ours if i >= 0}
        if theirs is None or not ours:
            continue
        theirs = set(theirs)
        scores.append(len(ours & theirs) / len(ours | theirs))
    return {
        "mean_jaccard": float(np.mean(scores)) if scores else None,
        "pairs_compared": len(scores),
        "identical_sets": int(sum(s == 1.0 for s in scores)),
        "dualenc_pairs_short": int(sum(sum(i < 0 for i in row) > 0 for row in dualenc_negatives)),
        "peer_pairs_without_row": int(sum(row is None for row in peer_negatives)),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argument_parser(__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per tool, alternating")
    parser.add_argument(
        "--peer-batch-sizes", default="32,256", help="the peer's encoding batch sizes; its fastest counts"
    )
    parser.add_argument("--no-top-check", action="store_true", help="skip the deterministic ranks 10-13 pass")
    args = parse_arguments(parser, argv, pairs=100)
    machine = machine_info()
    pairs, provenance = code_pairs(args.pairs)
    corpus = write_jsonl(TMP_DIR / f"mining-corpus-{args.pairs}.jsonl", pairs)
    print(f"corpus: {provenance}")

    peer_batch_sizes = [int(size) for size in args.peer_batch_sizes.split(",")]
    peer_tools = {f"sentence-transformers (batch {size})": size for size in peer_batch_sizes}
    runs = {"dualenc": []} | {tool: [] for tool in peer_tools}
    for repeat in range(args.repeats):
        top_check = repeat == 0 and not args.no_top_check  # deterministic: once is enough
        dualenc_spec = {
            "corpus": str(corpus),
            "work_dir": str(TMP_DIR / "mining-work"),
            "windows": {"random": RANGE_MAX} | ({"top": TOP_WINDOW_MAX} if top_check else {}),
        }
        workers = [("dualenc", "dualenc_mine", dualenc_spec)]
        for index, (tool, size) in enumerate(peer_tools.items()):
            strategies = {"random": "random"} | ({"top": "top"} if top_check and index == 0 else {})
            peer_spec = {"corpus": str(corpus), "strategies": strategies, "batch_size": size}
            workers.append((tool, "peer_mine", peer_spec))
        for tool, function, spec in workers if repeat % 2 == 0 else workers[::-1]:
            name = f"mine-{tool}-{repeat}".replace(" ", "-").replace("(", "").replace(")", "")
            runs[tool].append(run_isolated(f"benchmarks.mining:{function}", spec, name))

    timing = {
        tool: {
            "median_seconds": median([r.result["passes"]["random"]["seconds"] for r in tool_runs]),
            "median_peak_rss_mb": median([r.peak_rss_mb for r in tool_runs]),
            "runs": [
                {k: v for k, v in r.result["passes"]["random"].items() if k != "negatives"}
                | {"peak_rss_mb": r.peak_rss_mb}
                for r in tool_runs
            ],
        }
        for tool, tool_runs in runs.items()
    }
    fastest_peer = min(peer_tools, key=lambda tool: timing[tool]["median_seconds"])
    ratio = timing[fastest_peer]["median_seconds"] / timing["dualenc"]["median_seconds"]
    first = {tool: tool_runs[0].result["passes"] for tool, tool_runs in runs.items()}
    first_peer = next(iter(peer_tools))  # the one that also ran the deterministic pass
    agreement = {
        "random": overlap(first["dualenc"]["random"]["negatives"], first[first_peer]["random"]["negatives"])
    }
    agreement["random"]["expected_if_same_window"] = expected_random_jaccard(
        RANGE_MAX - RANGE_MIN, NUM_NEGATIVES
    )
    if not args.no_top_check:
        agreement["top"] = overlap(
            first["dualenc"]["top"]["negatives"], first[first_peer]["top"]["negatives"]
        )

    print_table(
        f"Hard-negative mining of {len(pairs)} pairs, 4 negatives from ranks {RANGE_MIN}-{RANGE_MAX}",
        ["tool", "seconds (median)", "pairs/s", "peak RSS MB"],
        [
            [tool, t["median_seconds"], len(pairs) / t["median_seconds"], t["median_peak_rss_mb"]]
            for tool, t in timing.items()
        ],
        smoke=args.smoke,
    )
    print(f"{fastest_peer}, its fastest, takes {ratio:.2f}x dualenc's time (above 1: dualenc is faster)")
    print(
        "dualenc's time: tokenize {tokenize_seconds:.1f}s, encode {encode_seconds:.1f}s, "
        "index + search {search_seconds:.1f}s".format(**timing["dualenc"]["runs"][0])
    )
    print_table(
        "Overlap of the mined sets (Jaccard per query, averaged)",
        [
            "pass",
            "mean Jaccard",
            "pairs compared",
            "identical sets",
            "random draws from one window would give",
        ],
        [
            [
                "ranks 10-50, random",
                agreement["random"]["mean_jaccard"],
                agreement["random"]["pairs_compared"],
                agreement["random"]["identical_sets"],
                agreement["random"]["expected_if_same_window"],
            ],
        ]
        + (
            [
                [
                    "ranks 10-13 (deterministic)",
                    agreement["top"]["mean_jaccard"],
                    agreement["top"]["pairs_compared"],
                    agreement["top"]["identical_sets"],
                    1.0,
                ]
            ]
            if "top" in agreement
            else []
        ),
        smoke=args.smoke,
    )
    payload = {
        "settings": {
            "pairs": len(pairs),
            "corpus": provenance,
            "num_negatives": NUM_NEGATIVES,
            "range_min": RANGE_MIN,
            "range_max": RANGE_MAX,
            "max_seq_len": MAX_SEQ_LEN,
            "dualenc_encode_batch": f"at most {ENCODE_BATCH} texts, and on the CPU at most 1024 tokens",
            "peer_encode_batch_sizes": peer_batch_sizes,
            "dualenc": "FaissMiner (exact inner product up to 100k codes), fresh token cache per pass",
            "peer": "mine_hard_negatives(range_min=10, range_max=50, num_negatives=4, "
            "sampling_strategy='random', use_faiss=True, batch_size=<each of peer_encode_batch_sizes>, "
            "output_format='n-tuple')",
            "timed": "texts in, negatives out; model loading excluded for both",
            "repeats": args.repeats,
        },
        "timing": timing,
        "fastest_peer": fastest_peer,
        "peer_seconds_over_dualenc_seconds": ratio,
        "agreement": agreement,
    }
    write_results("mining", args, payload, machine)
    return payload


if __name__ == "__main__":
    main()

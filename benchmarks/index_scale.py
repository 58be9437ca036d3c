"""Index scale: a million vectors, a build's memory, and encoding across processes.

Three parts (``--parts``):

- ``rows``: search at 100k and 1M vectors. Encoding a million functions here would take
  hours, so, as in ``index_bench``, the vectors are SYNTHETIC: ``--real`` real code vectors
  (all-MiniLM-L6-v2, zero-shot) and noisy copies of them (cosine ~0.8 with their original),
  built through ``build_index`` with a stand-in encoder that hands out the precomputed
  vectors. The queries are real: held-out stdlib docstring summaries, half of them given as
  ``--tune-queries``, recall measured on the other half against exact fp32 search over
  every vector. Dense search (the lexical part is left out: its build and hybrid latency at
  1M are another matter). Per row: the index dualenc chose (default thresholds), build
  seconds (no encoding), index bytes per vector in memory and on disk, search p50/p99 at k=10
  one query at a time (``Retriever.search_vectors``), recall@10.
- ``memory``: the peak RSS (the process's own VmHWM) of a real ``dualenc index build`` over
  ``--memory-sizes`` generated Python functions, encoded by a small from-scratch transformer
  (the ``transformer`` plugin: 1 layer, d_model 64, its own BPE) so that a million encode in
  minutes, with and without the lexical part. Beside it, what serving that index holds: the
  size of its files and the peak RSS of one ``dualenc search`` over it, so that a build's
  growth can be told apart from the index's own.
- ``scaling``: ``torchrun --nproc-per-node 1`` and ``2`` of ``dualenc index build`` over
  ``--scaling-codes`` real functions with the zero-shot MiniLM: encoding codes/s and wall
  seconds, and the projected hours for 1M and 10M functions.

    python -m benchmarks.index_scale [--parts rows,memory,scaling] [--sizes 100000,1000000]
        [--memory-sizes 100000,1000000] [--scaling-codes 1500] [--smoke]
"""

from __future__ import annotations

import json
import random
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.common import (
    MAX_SEQ_LEN,
    TMP_DIR,
    argument_parser,
    child_env,
    code_pairs,
    machine_info,
    parse_arguments,
    print_table,
    read_jsonl,
    stdlib_pairs_dir,
    write_jsonl,
    write_results,
)
from benchmarks.index_bench import (
    K,
    PrecomputedVectors,
    latencies_ms,
    synthetic_vectors,
    zero_shot_checkpoint,
)

WORK_DIR = TMP_DIR / "index-scale"
VERBS = ("get", "set", "load", "save", "parse", "build", "read", "write", "merge", "split", "find", "sort")
NOUNS = ("file", "path", "config", "record", "token", "index", "node", "graph", "user", "cache", "row")


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


# --- rows: search at scale ---------------------------------------------------------------


def real_vectors(encoder, count: int) -> tuple[list[str], np.ndarray, str]:
    """``count`` real codes and their vectors, cached in WORK_DIR between runs."""
    from dualenc.core.encode import encode_texts

    pairs, provenance = code_pairs(count)
    codes = [pair["code"] for pair in pairs]
    cache = WORK_DIR / f"real-{count}.npy"
    if cache.exists():
        vectors = np.load(cache, allow_pickle=False)
        if len(vectors) == len(codes):
            return codes, vectors, provenance
    vectors = encode_texts(encoder, codes, "code", 128)
    np.save(cache, vectors, allow_pickle=False)
    return codes, vectors, provenance


def measure_row(size: int, codes, real, checkpoint, encoder, tuning, queries, timed: int, keep: bool) -> dict:
    from dualenc import Retriever
    from dualenc.core.index.build import build_index
    from dualenc.core.index.options import IndexOptions

    vectors, sources = synthetic_vectors(real, size)
    texts = [
        codes[s] if i < len(codes) else f"{codes[s]}\n# synthetic copy {i}" for i, s in enumerate(sources)
    ]
    corpus = write_jsonl(
        WORK_DIR / f"rows-{size}.jsonl", [{"id": str(i), "code": t} for i, t in enumerate(texts)]
    )
    tune_file = write_jsonl(WORK_DIR / "tune-queries.jsonl", [{"query": text} for text in tuning])
    stand_in = PrecomputedVectors(
        texts + list(tuning), np.concatenate([vectors, np.stack(list(tuning.values()))])
    )
    index_dir = WORK_DIR / f"rows-{size}"
    shutil.rmtree(index_dir, ignore_errors=True)
    options = IndexOptions(tune_queries=str(tune_file), lexical=False)
    report = build_index(corpus, index_dir, checkpoint, encoder=stand_in, options=options, progress=False)
    del stand_in
    query_texts, query_vectors = list(queries), np.stack(list(queries.values()))
    exact_scores = query_vectors @ vectors.T
    ids = np.arange(1, size + 1)  # a fresh build numbers the records from 1 in corpus order
    truth = [set(ids[np.argsort(-row)[:K]].tolist()) for row in exact_scores]
    del vectors, exact_scores
    with Retriever.load(index_dir, checkpoint, encoder=encoder) as retriever:
        index, manifest = retriever.index, retriever.manifest
        timed_range = range(min(timed, len(query_texts)))

        def search(i):
            return retriever.search_vectors(query_vectors[i][None, :], k=K)

        # the first pass meets re-rank rows not yet in this process's memory map; the second
        # pass, the same queries again, finds them mapped
        first = latencies_ms({"search": search}, timed_range)["search"]
        functions = {"search": search}
        if hasattr(index, "ivfpq"):
            functions["shortlist_only"] = lambda i: index.ivfpq.search(
                query_vectors[i][None, :], K * index.rerank_factor
            )
        latency = latencies_ms(functions, timed_range)
        recall = _recall(retriever, query_vectors, truth)
        settings = []
        for tried in manifest["index"].get("tuning", []):  # every shortlist size the build tuned
            chosen = (index.rerank_factor, index.nprobe)
            index.rerank_factor, index.nprobe = tried["rerank_factor"], tried["nprobe"]
            latencies_ms({"search": search}, timed_range)  # maps this setting's rows first
            setting_latency = latencies_ms({"search": search}, timed_range)["search"]
            settings.append(
                {
                    **tried,
                    "latency_ms": setting_latency,
                    "recall_at_10": _recall(retriever, query_vectors, truth),
                }
            )
            index.rerank_factor, index.nprobe = chosen
    if not keep:
        shutil.rmtree(index_dir, ignore_errors=True)
    corpus.unlink()
    return {
        "count": size,
        "index": manifest["index"]["faiss"],
        "params": manifest["index"]["params"],
        "bytes_per_vector": manifest["index"]["bytes_per_vector"],
        "build_seconds": report.seconds,
        "latency_ms": latency["search"],
        "latency_ms_first_pass": first,
        "shortlist_only_ms": latency.get("shortlist_only"),
        "recall_at_10": recall,
        "recall_at_build": manifest["recall"]["value"],
        "recall_queries": len(query_texts),
        "settings": settings,
    }


def _recall(retriever, query_vectors: np.ndarray, truth: list[set[int]]) -> float:
    found = [[int(hit.id) + 1 for hit in hits] for hits in retriever.search_vectors(query_vectors, k=K)]
    return sum(len(t & set(f)) for t, f in zip(truth, found, strict=True)) / (K * len(found))


def generated_functions(count: int, seed: int = 0):
    """``count`` distinct Python functions of 3 to 14 lines, from templates."""
    rng = random.Random(seed)
    for i in range(count):
        verb, noun, other = rng.choice(VERBS), rng.choice(NOUNS), rng.choice(NOUNS)
        args = ", ".join(rng.sample(NOUNS, rng.randint(1, 3)))
        body = [
            f"    {other}_{j} = {rng.choice(NOUNS)}.{rng.choice(VERBS)}_{other}({j})"
            for j in range(rng.randint(1, 12))
        ]
        yield {
            "code": f"def {verb}_{noun}_{i}({args}):\n"
            f'    """{verb.capitalize()} the {noun} of a {other}."""\n'
            + "\n".join(body)
            + f"\n    return {other}_0\n",
            "path": f"gen/m{i // 500}.py",
            "symbol": f"{verb}_{noun}_{i}",
        }


def small_checkpoint(directory: Path) -> Path:
    """A from-scratch transformer (1 layer, d_model 64) with a BPE trained on generated code."""
    from dualenc.core.checkpoint import save_encoder
    from dualenc.plugins.encoders.transformer import TransformerEncoder, TransformerOptions

    if (directory / "encoder.json").exists():
        return directory
    options = TransformerOptions(
        vocab_size=2000, d_model=64, n_layers=1, n_heads=2, max_seq_len=64, dropout=0.0
    )
    encoder = TransformerEncoder(options)
    encoder.prepare([record["code"] for record in generated_functions(5000, seed=1)])
    save_encoder(encoder, "transformer", options, directory)
    return directory


# runs the dualenc CLI, then writes the process's VmHWM (its peak RSS; reset by exec, unlike
# ru_maxrss, which a child forked from a large parent starts from) to stderr
_CLI_WITH_PEAK = (
    "import atexit, sys\n"
    "def report():\n"
    "    status = open('/proc/self/status').read()\n"
    "    print('VmHWM_kB', status.split('VmHWM:')[1].split()[0], file=sys.stderr)\n"
    "atexit.register(report)\n"
    "sys.argv = ['dualenc', *sys.argv[1:]]\n"
    "from dualenc.cli import main\n"
    "main()\n"
)


def peak_rss_of(arguments: list[str]) -> tuple[float, float, str]:
    """(peak RSS MB, seconds, stdout) of ``dualenc ARGUMENTS`` run to its end."""
    seconds, done = run_to_end([sys.executable, "-c", _CLI_WITH_PEAK, *arguments])
    peak_kb = int(re.search(r"VmHWM_kB (\d+)", done.stderr).group(1))
    return peak_kb / 1024, seconds, done.stdout


def run_to_end(command: list[str]) -> tuple[float, subprocess.CompletedProcess]:
    """(seconds, the finished process) of ``command``; a failure stops the benchmark."""
    started = time.perf_counter()
    done = subprocess.run(command, env=child_env(), capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(command[:6])}... exited {done.returncode}: {done.stderr[-2000:]}")
    return time.perf_counter() - started, done


def measure_memory(checkpoint: Path, size: int, lexical: bool) -> dict:
    corpus = WORK_DIR / f"generated-{size}.jsonl"
    if not corpus.exists():
        write_jsonl(corpus, list(generated_functions(size)))
    out = WORK_DIR / f"memory-{size}"
    shutil.rmtree(out, ignore_errors=True)
    command = ["index", "build", "--encoder-checkpoint", str(checkpoint)]
    command += ["--code-corpus", str(corpus), "--output-dir", str(out), "--batch-size", "256"]
    command += [] if lexical else ["--no-lexical"]
    peak, seconds, stdout = peak_rss_of(command)
    manifest = json.loads((out / "manifest.json").read_text())
    in_memory = manifest["index"]["bytes_per_vector"]["in_memory"] * manifest["count"]
    lexical_bytes = (out / "lexical.npz").stat().st_size if lexical else 0
    rate = re.search(r"\(([0-9.]+) codes/s encoding\)", stdout)
    # what serving the same index holds: a search process's peak, loading it (mapped files read)
    serve_peak, _, _ = peak_rss_of(
        ["search", "--index", str(out), "--top-k", "10", "open a file and read lines"]
    )
    result = {
        "count": manifest["count"],
        "lexical": lexical,
        "index": manifest["index"]["faiss"],
        "seconds": seconds,
        "peak_rss_mb": peak,
        "search_peak_rss_mb": serve_peak,
        "index_mb": (in_memory + lexical_bytes) / 2**20,
        "codes_per_sec_encoding": float(rate.group(1)) if rate else None,
        "corpus_mb": corpus.stat().st_size / 2**20,
        "meta_sqlite_mb": (out / "meta.sqlite").stat().st_size / 2**20,
    }
    shutil.rmtree(out, ignore_errors=True)
    return result


# --- scaling: encoding across processes --------------------------------------------------


def measure_scaling(checkpoint: Path, codes: int, processes: int) -> dict:
    pairs, _ = code_pairs(codes, seed=1)
    corpus = write_jsonl(
        WORK_DIR / f"scaling-{codes}.jsonl", [{"id": str(i), "code": p["code"]} for i, p in enumerate(pairs)]
    )
    out = WORK_DIR / f"scaling-{processes}"
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
    command += ["-m", "dualenc", "index", "build", "--encoder-checkpoint", str(checkpoint)]
    command += ["--code-corpus", str(corpus), "--output-dir", str(out), "--no-lexical", "--chunk-size", "128"]
    seconds, done = run_to_end(command)
    rate = float(re.search(r"\(([0-9.]+) codes/s encoding\)", done.stdout).group(1))
    shutil.rmtree(out, ignore_errors=True)
    return {"processes": processes, "codes": codes, "seconds": seconds, "codes_per_sec": rate}


def main(argv: list[str] | None = None) -> dict:
    parser = argument_parser(__doc__.splitlines()[0])
    parser.add_argument("--parts", default="rows,memory,scaling")
    parser.add_argument(
        "--real", type=int, default=10_000, help="real code vectors behind the synthetic ones"
    )
    parser.add_argument("--sizes", default="100000,1000000", help="vectors per row")
    parser.add_argument(
        "--memory-sizes", default="100000,1000000", help="generated functions per memory build"
    )
    parser.add_argument(
        "--memory-lexical", default="off,on", help="memory builds without and/or with the lexical part"
    )
    parser.add_argument("--scaling-codes", type=int, default=1500)
    parser.add_argument("--queries", type=int, default=200, help="queries timed one at a time")
    parser.add_argument("--keep", action="store_true", help="keep the rows' index folders")
    args = parse_arguments(
        parser, argv, real=300, sizes="2000,6000", memory_sizes="3000", scaling_codes=64, queries=10
    )
    from dualenc.core.encode import encode_texts
    from dualenc.plugins.encoders.hf import HFEncoder, HFOptions

    parts = {part.strip() for part in args.parts.split(",")}
    machine = machine_info()
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    payload: dict = {"settings": {}, "rows": [], "memory": [], "scaling": []}
    encoder = HFEncoder(HFOptions(max_seq_len=MAX_SEQ_LEN)).eval()
    checkpoint = zero_shot_checkpoint(encoder)

    if "rows" in parts:
        codes, real, provenance = real_vectors(encoder, args.real)
        val = list(dict.fromkeys(p["query"] for p in read_jsonl(stdlib_pairs_dir() / "val.jsonl")))
        val = val[: 4 * args.queries] if args.smoke else val
        vectors = dict(zip(val, encode_texts(encoder, val, "query", 128), strict=True))
        tuning = {text: vectors[text] for text in val[0::2]}
        queries = {text: vectors[text] for text in val[1::2]}
        for size in _ints(args.sizes):
            row = measure_row(
                size, codes, real, checkpoint, encoder, tuning, queries, args.queries, args.keep
            )
            print(json.dumps(row))
            payload["rows"].append(row)
        payload["settings"]["rows"] = (
            f"SYNTHETIC vectors: {args.real} real code vectors ({provenance}) and noisy copies; "
            f"{len(tuning)} real queries tune, {len(queries)} others measure recall against exact fp32 search"
        )
        print_table(
            f"Dense search at scale, k={K}, one query at a time (synthetic vectors, real queries)",
            [
                "vectors",
                "faiss index",
                "params",
                "build s",
                "B/vector in memory",
                "B/vector on disk",
                "p50 / p99 ms",
                "recall@10",
                "recall@10 at build",
            ],
            [
                [
                    f"{r['count']:,}",
                    r["index"],
                    r["params"],
                    round(r["build_seconds"], 1),
                    r["bytes_per_vector"]["in_memory"],
                    r["bytes_per_vector"]["on_disk"],
                    "{p50:.2f} / {p99:.2f}".format(**r["latency_ms"]),
                    round(r["recall_at_10"], 4),
                    r["recall_at_build"],
                ]
                for r in payload["rows"]
            ],
            smoke=args.smoke,
        )

    if "memory" in parts:
        small = small_checkpoint(WORK_DIR / "small-transformer")
        for size in _ints(args.memory_sizes):
            for lexical in [part.strip() == "on" for part in args.memory_lexical.split(",")]:
                result = measure_memory(small, size, lexical)
                print(json.dumps(result))
                payload["memory"].append(result)
        payload["settings"]["memory"] = "dualenc index build processes; a transformer of 1 layer, d_model 64"
        print_table(
            "Peak RSS of dualenc index build (generated functions)",
            [
                "records",
                "lexical",
                "faiss index",
                "seconds",
                "peak RSS MB",
                "index MB",
                "search peak MB",
                "build - search MB",
            ],
            [
                [
                    f"{r['count']:,}",
                    r["lexical"],
                    r["index"],
                    round(r["seconds"], 1),
                    round(r["peak_rss_mb"]),
                    round(r["index_mb"]),
                    round(r["search_peak_rss_mb"]),
                    round(r["peak_rss_mb"] - r["search_peak_rss_mb"]),
                ]
                for r in payload["memory"]
            ],
            smoke=args.smoke,
        )

    if "scaling" in parts:
        for processes in (1, 2):
            result = measure_scaling(checkpoint, args.scaling_codes, processes)
            print(json.dumps(result))
            payload["scaling"].append(result)
        print_table(
            "Encoding across processes (torchrun, all-MiniLM-L6-v2, this machine)",
            ["processes", "codes", "wall s", "codes/s encoding", "hours for 1M", "hours for 10M"],
            [
                [
                    r["processes"],
                    r["codes"],
                    round(r["seconds"], 1),
                    round(r["codes_per_sec"], 1),
                    round(1e6 / r["codes_per_sec"] / 3600, 1),
                    round(1e7 / r["codes_per_sec"] / 3600, 1),
                ]
                for r in payload["scaling"]
            ],
            smoke=args.smoke,
        )
    shutil.rmtree(WORK_DIR / "rows-tmp", ignore_errors=True)
    write_results("index_scale", args, payload, machine)
    return payload


if __name__ == "__main__":
    main()

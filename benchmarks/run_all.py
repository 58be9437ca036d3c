"""Run every benchmark, quickest first; each prints its table and writes results/<name>.json.

    python -m benchmarks.run_all            # the full set (hours on a 2-core CPU: quality is the slowest)
    python -m benchmarks.run_all --smoke    # tiny sizes: checks that everything runs, numbers mean nothing
    python -m benchmarks.run_all --only mining,index_bench

A benchmark that fails is reported and the rest still run; the exit status is 1 if any failed.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
import traceback

BENCHMARKS = ("index_bench", "mining", "train_throughput", "mfu", "quality")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument(
        "--only", default=",".join(BENCHMARKS), help=f"comma-separated subset of {BENCHMARKS}"
    )
    args = parser.parse_args(argv)
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    failed, seconds = [], {}
    for name in chosen:
        print(f"\n=== {name}{' --smoke' if args.smoke else ''} ===", flush=True)
        started = time.perf_counter()
        try:
            importlib.import_module(f"benchmarks.{name}").main(["--smoke"] if args.smoke else [])
        except Exception:  # noqa: BLE001 - one failure should not stop the others
            traceback.print_exc()
            failed.append(name)
        seconds[name] = time.perf_counter() - started
        sys.stdout.flush()
    print(
        "\n"
        + "\n".join(f"{name}: {s:.0f}s{' FAILED' if name in failed else ''}" for name, s in seconds.items())
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""Which device and precision a command runs on."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from dualenc.errors import DualencError


def usable_devices() -> list[str]:
    """The device names this torch can run on here: auto, cpu, cuda and cuda:N per GPU, mps."""
    names = ["auto", "cpu"]
    if torch.cuda.is_available():
        names += ["cuda", *(f"cuda:{index}" for index in range(torch.cuda.device_count()))]
    if torch.backends.mps.is_available():
        names.append("mps")
    return names


def device_problem(name: str) -> str | None:
    """Why this torch cannot run on device ``name`` here, or None when it can."""
    usable = usable_devices()
    if name in usable:
        return None
    choose = f"choose one of: {', '.join(usable)}"
    try:
        device = torch.device(name)
    except RuntimeError:
        return f"unknown device {name!r}; {choose}"
    if device.type == "cpu":
        return None
    if device.type == "cuda":
        if torch.version.cuda is None:
            return f"cannot use {name!r}: this torch ({torch.__version__}) was built without CUDA; {choose}"
        if not torch.cuda.is_available():
            return f"cannot use {name!r}: no CUDA device is visible; {choose}"
        return f"cannot use {name!r}: there are {torch.cuda.device_count()} CUDA device(s); {choose}"
    return f"cannot use {name!r} here; {choose}"


def resolve_device(name: str = "auto") -> torch.device:
    """``"auto"``: the current CUDA device when there is one, else the CPU; otherwise ``name``
    as torch spells devices (``"cpu"``, ``"cuda:1"``), refused unless this torch can use it."""
    if name == "auto":
        return (
            torch.device("cuda", torch.cuda.current_device())
            if torch.cuda.is_available()
            else torch.device("cpu")
        )
    problem = device_problem(name)
    if problem is not None:
        raise DualencError(f"device: {problem}")
    return torch.device(name)


# the flags that mean bf16 matrix multiplies run in hardware: without them torch emulates
# bf16 (measured 17-21x slower than fp32 on an AVX2-only EPYC), so no probe is worth its time
NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")
# bf16 must beat fp32 by this factor: a smaller gain is within a busy machine's noise, and
# bf16 costs accuracy
BF16_MARGIN = 1.1
# the probe's stand-in: a feed-forward block over 32 pairs x 32 tokens at the model's width
PROBE_TOKENS = 1024
PROBE_REPEATS = 3
PROBE_BUDGET_S = 2.0


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The CPU's feature flags: the first ``flags`` line of ``cpuinfo`` (/proc/cpuinfo's text,
    read when None; empty where there is none, as on macOS)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return set(value.split())
    return set()


def standin_pass(width: int, tokens: int = PROBE_TOKENS) -> Callable[[str], float]:
    """A function that runs one forward and backward of a feed-forward block at ``width``
    (linear to 4x, GELU, linear back, residual, layer norm) in ``"fp32"`` or under ``"bf16"``
    autocast, as training does, and returns its seconds. Its own generator leaves torch's
    RNG, and so the run's dropout, untouched."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(tokens, width, generator=generator)
    w_in = (torch.randn(4 * width, width, generator=generator) * 0.02).requires_grad_()
    w_out = (torch.randn(width, 4 * width, generator=generator) * 0.02).requires_grad_()

    def run(precision: str) -> float:
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            hidden = F.gelu(F.linear(x, w_in))
            out = F.layer_norm(F.linear(hidden, w_out) + x, (width,))
        out.float().square().mean().backward()
        w_in.grad = w_out.grad = None
        return time.perf_counter() - start

    return run


def probe_bf16(width: int, run: Callable[[str], float] | None = None) -> float:
    """How many times faster ``run`` (default: ``standin_pass(width)``) goes under bf16 than
    fp32: the best of up to PROBE_REPEATS timings each after one warm-up of each, alternating
    fp32 and bf16 so that a change in the machine's load hits both, stopped once
    PROBE_BUDGET_S of timed work is spent."""
    run = run or standin_pass(width)
    run("fp32"), run("bf16")  # first calls allocate and pick kernels
    best = {"fp32": math.inf, "bf16": math.inf}
    spent = 0.0
    for _ in range(PROBE_REPEATS):
        for precision in best:
            seconds = run(precision)
            best[precision] = min(best[precision], seconds)
            spent += seconds
        if spent >= PROBE_BUDGET_S:
            break
    return best["fp32"] / best["bf16"]


def pick_precision(
    name: str,
    device: torch.device,
    width: int,
    cpuinfo: str | None = None,
    probe: Callable[[int], float] = probe_bf16,
) -> tuple[str, str]:
    """The precision to train in and why, for the log. ``"fp32"``/``"bf16"`` as given;
    ``"auto"``: bf16 on GPUs that support it; on a CPU, bf16 only where its flags (from
    ``cpuinfo``, /proc/cpuinfo's text) say it multiplies bf16 natively and ``probe(width)``
    measures bf16 at least BF16_MARGIN times faster than fp32. The probe decides because
    flags are not enough: with AVX512-BF16 and no AMX, bf16 training measured 0.72x fp32 on an
    Intel Xeon and 2.1-2.3x on an AMD EPYC."""
    if name != "auto":
        return name, "set in train.precision"
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return "bf16", "auto: this GPU supports bf16"
        return "fp32", "auto: this GPU has no bf16"
    if device.type != "cpu":
        return "fp32", f"auto: bf16 is chosen on CUDA and CPUs only, not {device.type}"
    if not set(NATIVE_BF16_FLAGS) & cpu_flags(cpuinfo):
        return "fp32", f"auto: this CPU has no native bf16, no {' or '.join(NATIVE_BF16_FLAGS)} flag"
    speedup = probe(width)
    if speedup >= BF16_MARGIN:
        return "bf16", f"auto: probe bf16 {speedup:.2f}x fp32"
    return "fp32", f"auto: probe bf16 {speedup:.2f}x fp32, under the {BF16_MARGIN:.2f}x it needs"

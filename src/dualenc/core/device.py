"""Which device and precision a command runs on."""

from __future__ import annotations

import torch

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


def pick_precision(name: str, device: torch.device) -> str:
    """ "auto": bf16 on GPUs that support it. On CPUs fp32: measured here, bf16 autocast ran
    slower than fp32 on an AVX512-BF16 CPU without AMX, and no default may depend on AMX."""
    if name != "auto":
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "fp32"

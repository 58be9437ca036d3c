"""Which device and precision a command runs on."""

from __future__ import annotations

import torch

from dualenc.errors import DualencError


def resolve_device(name: str = "auto") -> torch.device:
    """``"auto"``: the current CUDA device when there is one, else the CPU; otherwise ``name``
    as torch spells devices (``"cpu"``, ``"cuda:1"``)."""
    if name == "auto":
        return (
            torch.device("cuda", torch.cuda.current_device())
            if torch.cuda.is_available()
            else torch.device("cpu")
        )
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise DualencError(f"device {name!r}: {exc}") from None


def pick_precision(name: str, device: torch.device) -> str:
    """ "auto": bf16 on GPUs that support it. On CPUs fp32: measured here, bf16 autocast ran
    slower than fp32 on an AVX512-BF16 CPU without AMX, and no default may depend on AMX."""
    if name != "auto":
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "fp32"

"""``train.compile``: the training step's encoder compiled by ``torch.compile``.

Only the training step calls the compiled module; evaluation, mining and checkpoints use the
encoder itself, which shares its parameters: saved weights keep their own names (a compiled
module's ``state_dict`` would prefix them with ``_orig_mod.``).

Dynamic shapes: length groups give a new [batch, length] shape almost every call, and a
graph specialised to each shape would recompile until torch's cache limit, then fall back to
eager. Only those two dimensions are marked dynamic: ``dynamic=True`` also makes every float
attribute of the model (dropout rates, norm epsilons) symbolic, which restarted the tracing
and doubled the compile time of the one-layer test model. A group of one sequence is still
compiled once more (torch specialises sizes 0 and 1).

``fallback_random``: dropout masks come from torch's own RNG calls, in eager order, so a
compiled run draws what an uncompiled one draws; GradCache's re-encoding and an exact resume
(both restore torch's RNG state) rely on that, and inductor's own RNG would not honour it.
"""

from __future__ import annotations

import torch

from dualenc.errors import DualencError

OPTIONS = {"fallback_random": True}


class CompiledEncoder:
    """Calls ``torch.compile(encoder)``; a failure to compile (no C++ compiler, an inductor
    error) is a DualencError naming ``train.compile``, at whichever call compiles."""

    def __init__(self, encoder: torch.nn.Module):
        try:
            self.compiled = torch.compile(encoder, options=OPTIONS)
        except RuntimeError as exc:  # e.g. a Python version torch.compile does not support
            raise refusal(exc) from exc
        # torch.compile specialises on the side string and would compile the model once per
        # side; where both sides go through one tower they are one function, and one graph
        # (compiled for "query") serves both
        self.one_side = "query" if getattr(encoder, "shared_tower", False) else None

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, side: str) -> torch.Tensor:
        for tensor in (input_ids, attention_mask):
            torch._dynamo.maybe_mark_dynamic(tensor, 0)  # the group's sequences
            torch._dynamo.maybe_mark_dynamic(tensor, 1)  # their padded length
        try:
            return self.compiled(input_ids, attention_mask, self.one_side or side)
        except torch._dynamo.exc.BackendCompilerFailed as exc:
            raise refusal(exc) from exc


def refusal(exc: Exception) -> DualencError:
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return DualencError(
        f"train.compile: torch.compile cannot compile the encoder here ({first_line}); "
        "set train.compile: false"
    )

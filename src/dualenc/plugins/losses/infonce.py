"""``infonce``: cross-entropy over in-batch (and mined) negatives, false negatives masked.

scores[i, j] = query_i . candidate_j / temperature; the target of row i is its positive.
A candidate that is a clone of query i's positive (same normalised-code key) or another
positive of the same query (same query key) is removed from row i's softmax: it is not a
negative, and pushing it away would teach the model to separate equivalent code.
"""

from __future__ import annotations

import math

import attrs
import torch
import torch.nn.functional as F

from dualenc import ContrastiveBatch, Register, greater_than, hookimpl


@attrs.frozen
class InfoNCEOptions:
    temperature: float = attrs.field(default=0.07, validator=greater_than(0))
    # learn the temperature (as a log-scale), clamped to [min_temperature, max_temperature]
    learnable_temperature: bool = False
    min_temperature: float = attrs.field(default=0.01, validator=greater_than(0))
    max_temperature: float = attrs.field(default=1.0, validator=greater_than(0))
    # add the code -> query direction over the in-batch queries
    symmetric: bool = False
    mask_false_negatives: bool = True


class InfoNCE(torch.nn.Module):
    def __init__(self, options: InfoNCEOptions):
        super().__init__()
        self.options = options
        log_t = torch.tensor(math.log(options.temperature))
        if options.learnable_temperature:
            self.log_temperature = torch.nn.Parameter(log_t)
        else:
            self.register_buffer("log_temperature", log_t, persistent=False)

    @property
    def temperature(self) -> torch.Tensor:
        low, high = math.log(self.options.min_temperature), math.log(self.options.max_temperature)
        return self.log_temperature.clamp(low, high).exp()

    def forward(self, batch: ContrastiveBatch) -> torch.Tensor:
        scores = (batch.query.float() @ batch.candidates.float().T) / self.temperature
        if self.options.mask_false_negatives:
            scores = scores.masked_fill(batch.false_negative_mask(), float("-inf"))
        loss = F.cross_entropy(scores, batch.positive)
        if self.options.symmetric:
            # code -> query: each positive code against the batch's queries
            positives = batch.candidates[batch.positive].float()
            reverse = (positives @ batch.query.float().T) / self.temperature
            if self.options.mask_false_negatives:
                rows = batch.false_negative_mask()[:, batch.positive]
                reverse = reverse.masked_fill(rows.T, float("-inf"))
            target = torch.arange(len(batch.positive), device=reverse.device)
            loss = (loss + F.cross_entropy(reverse, target)) / 2
        return loss


@hookimpl
def register_losses(register: Register):
    register(
        "infonce",
        InfoNCE,
        options=InfoNCEOptions,
        description="InfoNCE over in-batch and mined negatives, with false-negative masking.",
    )

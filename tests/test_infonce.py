"""InfoNCE against hand-computed values, with false-negative masking."""

import math

import pytest
import torch

from dualenc.plugins.losses.infonce import InfoNCE, InfoNCEOptions
from dualenc.registry.kinds import ContrastiveBatch


def unit(*xs):
    v = torch.tensor(xs, dtype=torch.float32)
    return v / v.norm()


def make_batch(query, candidates, code_keys, query_keys):
    return ContrastiveBatch(
        query=torch.stack(query),
        candidates=torch.stack(candidates),
        positive=torch.arange(len(query)),
        candidate_code_key=torch.tensor(code_keys),
        candidate_query_key=torch.tensor(query_keys),
    )


def test_two_pairs_by_hand():
    q = [unit(1, 0), unit(0, 1)]
    c = [unit(1, 1), unit(0, 1)]
    batch = make_batch(q, c, [10, 11], [20, 21])
    t = 0.5
    s = 1 / math.sqrt(2)
    # row 0 scores: [s, 0] / t, target 0; row 1 scores: [s, 1] / t, target 1
    row0 = -math.log(math.exp(s / t) / (math.exp(s / t) + math.exp(0)))
    row1 = -math.log(math.exp(1 / t) / (math.exp(s / t) + math.exp(1 / t)))
    loss = InfoNCE(InfoNCEOptions(temperature=t))(batch)
    assert loss.item() == pytest.approx((row0 + row1) / 2, abs=1e-6)


def test_clone_and_same_query_candidates_are_masked():
    q = [unit(1, 0), unit(0, 1), unit(1, 1)]
    c = [unit(1, 0), unit(1, 0.1), unit(1, 1), unit(1, 0.2)]  # the 4th is a mined negative
    # candidate 1 is a clone of query 0's positive (same code key 10);
    # candidate 3 belongs to a pair with the same query as query 2 (query key 22)
    batch = make_batch(q[:3], c, [10, 10, 12, 13], [20, 21, 22, 22])
    mask = batch.false_negative_mask()
    assert mask.tolist() == [
        [False, True, False, False],
        [True, False, False, False],
        [False, False, False, True],
    ]
    t = 0.1
    scores = (batch.query @ batch.candidates.T) / t
    expected = 0.0
    for i, allowed in enumerate([[0, 2, 3], [1, 2, 3], [0, 1, 2]]):
        row = scores[i, allowed]
        expected += -(scores[i, i] - torch.logsumexp(row, 0)).item()
    loss = InfoNCE(InfoNCEOptions(temperature=t))(batch)
    assert loss.item() == pytest.approx(expected / 3, rel=1e-5)
    unmasked = InfoNCE(InfoNCEOptions(temperature=t, mask_false_negatives=False))(batch)
    assert unmasked.item() > loss.item()


def test_symmetric_adds_the_code_to_query_direction():
    q = [unit(1, 0), unit(0.3, 1)]
    c = [unit(1, 0.2), unit(0, 1)]
    batch = make_batch(q, c, [1, 2], [3, 4])
    t = 0.07
    forward = InfoNCE(InfoNCEOptions(temperature=t))(batch)
    reverse_scores = (batch.candidates @ batch.query.T) / t
    reverse = torch.nn.functional.cross_entropy(reverse_scores, torch.arange(2))
    both = InfoNCE(InfoNCEOptions(temperature=t, symmetric=True))(batch)
    assert both.item() == pytest.approx((forward.item() + reverse.item()) / 2, rel=1e-6)


def test_learnable_temperature_is_clamped_and_trains():
    loss_fn = InfoNCE(InfoNCEOptions(temperature=0.07, learnable_temperature=True, min_temperature=0.05))
    assert [n for n, _ in loss_fn.named_parameters()] == ["log_temperature"]
    with torch.no_grad():
        loss_fn.log_temperature.fill_(math.log(0.001))
    assert loss_fn.temperature.item() == pytest.approx(0.05)

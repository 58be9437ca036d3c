"""dualenc.dropout: torch's dropout distribution, drawn cheaply on the CPU."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may download

import pytest
import torch
import torch.nn.functional as F

from dualenc import dropout
from dualenc.plugins.encoders.hf import ATTENTION_IMPLEMENTATION, HFEncoder, HFOptions
from dualenc.plugins.encoders.transformer import TransformerEncoder, TransformerOptions


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_drop_rate_is_p_to_16_bits(p):
    torch.manual_seed(0)
    count = 2_000_000
    dropped = 1 - dropout.keep_mask(torch.Size([count]), p).double().mean().item()
    exact = round(p * 65536) / 65536
    assert abs(exact - p) < 8e-6
    sigma = (exact * (1 - exact) / count) ** 0.5
    assert abs(dropped - exact) < 5 * sigma


def test_the_16_bit_uniforms_are_independent_of_their_neighbours():
    """Two uniforms come from one 32-bit draw: neighbours must not drop together more often."""
    torch.manual_seed(1)
    keep = dropout.keep_mask(torch.Size([1_000_000]), 0.5).double()
    both = (keep[0::2] * keep[1::2]).mean().item()
    assert abs(both - 0.25) < 5 * (0.25 * 0.75 / 500_000) ** 0.5


def test_kept_values_are_scaled_dropped_are_zero_and_the_gradient_follows():
    torch.manual_seed(2)
    x = (torch.rand(64, 300) + 0.5).requires_grad_()
    y = dropout.dropout(x, 0.2)
    kept = y != 0
    assert 0.75 < kept.double().mean().item() < 0.85
    torch.testing.assert_close(y[kept], x[kept] / 0.8)
    grad = torch.randn_like(x)
    y.backward(grad)
    torch.testing.assert_close(x.grad, torch.where(kept, grad / 0.8, 0))


def test_the_expectation_is_the_input():
    torch.manual_seed(3)
    x = torch.randn(1000)
    mean = torch.stack([dropout.dropout(x, 0.3) for _ in range(400)]).mean(0)
    # each element: mean of 400 draws of x/0.7 kept with prob 0.7; sd = |x| sqrt(0.3/0.7/400)
    assert ((mean - x).abs() <= 5 * x.abs() * (0.3 / 0.7 / 400) ** 0.5 + 1e-6).all()


def test_draws_replay_from_the_rng_state_and_the_seed():
    x = torch.randn(32, 40)
    torch.manual_seed(4)
    first = dropout.dropout(x, 0.1)
    state = torch.get_rng_state()
    second = dropout.dropout(x, 0.1)
    torch.set_rng_state(state)
    assert torch.equal(dropout.dropout(x, 0.1), second)
    torch.manual_seed(4)
    assert torch.equal(dropout.dropout(x, 0.1), first)
    assert not torch.equal(first, second)


def test_identity_when_not_training_or_p_zero_and_zeros_at_p_one():
    x = torch.randn(8, 8)
    assert dropout.dropout(x, 0.5, training=False) is x
    assert dropout.dropout(x, 0.0) is x
    assert torch.equal(dropout.dropout(x, 1.0), torch.zeros_like(x))
    with pytest.raises(ValueError, match="dropout probability"):
        dropout.Dropout(1.5)


@pytest.mark.parametrize("boolean_mask", [True, False])
def test_attention_with_dropout_equals_the_formula_with_the_same_draws(boolean_mask):
    torch.manual_seed(5)
    q, k, v = (torch.randn(3, 4, 10, 8) for _ in range(3))
    attend = torch.ones(3, 1, 1, 10, dtype=torch.bool)
    attend[1, ..., 6:] = False
    mask = attend if boolean_mask else torch.zeros(attend.shape).masked_fill(~attend, float("-inf"))
    # no dropout: torch's own kernel
    assert torch.equal(
        dropout.attention(q, k, v, mask, 0.0), F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    )
    state = torch.get_rng_state()
    out = dropout.attention(q, k, v, mask, 0.25)
    torch.set_rng_state(state)
    keep = dropout.keep_mask(torch.Size([3, 4, 10, 10]), 0.25)
    weights = torch.softmax((q @ k.transpose(-2, -1) / 8**0.5).masked_fill(~attend, float("-inf")), dim=-1)
    torch.testing.assert_close(out, (weights * keep / 0.75) @ v)
    assert (weights[1, ..., 6:] == 0).all()


def test_replace_dropout_swaps_every_torch_dropout():
    model = torch.nn.Sequential(
        torch.nn.Linear(4, 4), torch.nn.Dropout(0.3), torch.nn.Sequential(torch.nn.Dropout())
    )
    assert dropout.replace_dropout(model) == 2
    assert [m.p for m in model.modules() if isinstance(m, dropout.Dropout)] == [0.3, 0.5]
    assert not any(type(m) is torch.nn.Dropout for m in model.modules())


def test_the_transformer_encoder_uses_it_and_replays():
    encoder = TransformerEncoder(TransformerOptions(vocab_size=300, d_model=32, n_layers=2, n_heads=4))
    assert not any(type(m) is torch.nn.Dropout for m in encoder.modules())
    ids = torch.randint(5, 300, (4, 12))
    mask = torch.ones_like(ids)
    encoder.train()
    state = torch.get_rng_state()
    first = encoder(ids, mask, "code")
    torch.set_rng_state(state)
    assert torch.equal(encoder(ids, mask, "code"), first)
    assert not torch.allclose(encoder(ids, mask, "code"), first)


@pytest.fixture(scope="module")
def minilm():
    return HFEncoder(HFOptions())


def set_dropout(model, hidden: float, attention: float):
    for name, module in model.named_modules():
        if isinstance(module, dropout.Dropout):
            # BERT's attention modules keep their rate on a Dropout they do not call themselves
            module.p = attention if name.endswith("attention.self.dropout") else hidden


def test_hf_attention_dropout_runs_through_dualenc_and_is_off_in_eval(minilm):
    model = minilm.model
    assert model.config._attn_implementation == ATTENTION_IMPLEMENTATION
    assert not any(type(m) is torch.nn.Dropout for m in model.modules())
    ids = torch.tensor([[101, 2424, 1037, 5371, 102, 0, 0], [101, 2424, 1037, 5371, 2005, 2009, 102]])
    mask = (ids != 0).long()
    minilm.eval()
    with torch.no_grad():
        evaluated = minilm(ids, mask, "query")
        minilm.train()
        try:
            set_dropout(model, hidden=0.0, attention=0.0)
            torch.testing.assert_close(minilm(ids, mask, "query"), evaluated)
            set_dropout(model, hidden=0.0, attention=0.1)  # attention dropout alone still acts
            state = torch.get_rng_state()
            dropped = minilm(ids, mask, "query")
            assert (dropped - evaluated).abs().max() > 1e-3
            torch.set_rng_state(state)
            assert torch.equal(minilm(ids, mask, "query"), dropped)
        finally:
            set_dropout(model, hidden=0.1, attention=0.1)
            minilm.eval()

"""``dualenc merge``: WiSE-FT interpolation of a fine-tuned checkpoint with its base model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from fakes import write_tiny_bert

from dualenc.cli import cli
from dualenc.core.checkpoint import load_encoder, save_encoder
from dualenc.core.encode import encode_texts
from dualenc.core.merge import interpolate_state, merge_checkpoint
from dualenc.errors import DualencError
from dualenc.plugins.encoders.hf import HFEncoder, HFOptions
from dualenc.plugins.encoders.transformer import TransformerEncoder, TransformerOptions

TEXTS = ["read a json file", "def add(a, b):\n    return a + b\n", "sort the list"]


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """A tiny BERT base and a checkpoint of it whose weights moved (as fine-tuning moves them)."""
    root = tmp_path_factory.mktemp("merge")
    base = write_tiny_bert(root / "base", TEXTS)
    options = HFOptions(model_path=base, max_seq_len=32)
    encoder = HFEncoder(options)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in encoder.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    save_encoder(encoder, "hf", options, root / "tuned")
    return {"root": root, "base": base, "checkpoint": root / "tuned", "options": options}


def state(directory):
    encoder, _, _ = load_encoder(directory)
    return {name: tensor.clone() for name, tensor in encoder.state_dict().items()}


def test_merged_weights_are_the_interpolation_of_checkpoint_and_base(tuned, tmp_path):
    result = CliRunner().invoke(
        cli, ["merge", str(tuned["checkpoint"]), "--weight", "0.3", "--out", str(tmp_path / "m")]
    )
    assert result.exit_code == 0, result.output
    merged, fine = state(tmp_path / "m"), state(tuned["checkpoint"])
    base = HFEncoder(tuned["options"]).state_dict()
    moved = 0
    for name, tensor in merged.items():
        if tensor.is_floating_point():
            expected = 0.3 * fine[name] + 0.7 * base[name]
            torch.testing.assert_close(tensor, expected, rtol=0, atol=1e-6)
            moved += not torch.equal(fine[name], base[name])
        else:
            assert torch.equal(tensor, fine[name])
    assert moved > 10
    record = json.loads((tmp_path / "m" / "merge.json").read_text())
    assert (record["weight"], record["base"]) == (0.3, tuned["base"])
    assert not (tmp_path / "m" / "trainer_state.json").exists()


def test_weight_one_and_zero_encode_as_the_checkpoint_and_the_base(tuned, tmp_path):
    merge_checkpoint(tuned["checkpoint"], tmp_path / "one", weight=1.0)
    merge_checkpoint(tuned["checkpoint"], tmp_path / "zero", weight=0.0)
    one, _, _ = load_encoder(tmp_path / "one")
    zero, _, _ = load_encoder(tmp_path / "zero")
    fine, _, _ = load_encoder(tuned["checkpoint"])
    for side in ("query", "code"):
        np.testing.assert_array_equal(encode_texts(one, TEXTS, side), encode_texts(fine, TEXTS, side))
        np.testing.assert_allclose(
            encode_texts(zero, TEXTS, side), encode_texts(HFEncoder(tuned["options"]), TEXTS, side), atol=1e-6
        )


def test_an_explicit_base_checkpoint_and_its_mismatches(tuned, tmp_path):
    merge_checkpoint(tuned["checkpoint"], tmp_path / "self", weight=0.5, base=tuned["checkpoint"])
    merged, fine = state(tmp_path / "self"), state(tuned["checkpoint"])
    assert all(torch.allclose(merged[name], fine[name]) for name in fine)

    scratch = TransformerOptions(vocab_size=300, d_model=16, n_layers=1, n_heads=2, max_seq_len=16)
    encoder = TransformerEncoder(scratch)
    encoder.prepare(TEXTS)
    save_encoder(encoder, "transformer", scratch, tmp_path / "scratch")
    with pytest.raises(DualencError, match="'transformer' encoder; .* is 'hf'"):
        merge_checkpoint(tuned["checkpoint"], tmp_path / "x", base=tmp_path / "scratch")
    with pytest.raises(DualencError, match="not built from a pretrained model; give --base"):
        merge_checkpoint(tmp_path / "scratch", tmp_path / "y")
    with pytest.raises(DualencError, match="'w' is \\(2,\\) here and \\(3,\\) in the base"):
        interpolate_state({"w": torch.zeros(2)}, {"w": torch.zeros(3)}, 0.5, "ckpt")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_cli_errors_exit_2_without_a_traceback(tuned, tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("x")
    result = CliRunner().invoke(cli, ["merge", str(tuned["checkpoint"]), "--out", str(tmp_path / "taken")])
    assert result.exit_code == 2 and "already exists" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(cli, ["merge", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "checkpoint directory not found" in result.output
    result = CliRunner().invoke(
        cli, ["merge", str(tuned["checkpoint"]), "--weight", "1.5", "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 2 and "--weight" in result.output

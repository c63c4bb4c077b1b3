"""The dispatch rule shared by every op: which backend runs, and the errors that name the fix."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from layerwise_kernels import rms_norm, rms_norm_naive, triton_available
from layerwise_kernels._backend import resolve_backend


def _run_python(code: str, **env_changes: str | None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    for key, value in env_changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True
    )


def test_auto_and_torch_pick_torch_for_cpu_tensors(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # even with the interpreter on, auto stays on torch
    x = torch.randn(2, 4)
    assert resolve_backend("auto", x, torch.ones(4)) == "torch"
    assert resolve_backend("torch", x) == "torch"
    assert resolve_backend("auto", x.to("meta")) == "torch"


def test_auto_on_cpu_runs_the_reference(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    x, weight = torch.randn(3, 10), torch.rand(10)
    assert torch.equal(rms_norm(x, weight, scale=0.3), rms_norm_naive(x, weight, scale=0.3))


def test_triton_on_cpu_under_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert resolve_backend("triton", torch.randn(2, 4)) == "triton"


def test_triton_on_cpu_without_the_interpreter_is_refused(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        resolve_backend("triton", torch.randn(2, 4))
    with pytest.raises(RuntimeError, match="backend='torch'"):
        resolve_backend("triton", torch.randn(2, 4).to("meta"))


def test_unknown_backend_and_mixed_devices_are_refused():
    with pytest.raises(ValueError, match=r"one of \('auto', 'torch', 'triton'\), got 'cuda'"):
        resolve_backend("cuda", torch.randn(2))
    with pytest.raises(ValueError, match="one device, got cpu, meta"):
        resolve_backend("auto", torch.randn(2), torch.randn(2, device="meta"))


def test_rms_norm_triton_without_interpreter_raises_a_clear_error():
    # A fresh process in which the kernels would be GPU kernels: a CPU call must say what to set,
    # instead of Triton's "0 active drivers".
    proc = _run_python(
        """
        import os
        import torch
        from layerwise_kernels import rms_norm
        try:
            rms_norm(torch.randn(2, 8), torch.ones(8), backend="triton")
        except RuntimeError as err:
            print("RuntimeError:", err)
        # Setting the variable once the kernels exist as GPU kernels is too late, and said so.
        import layerwise_kernels.rms_norm._triton
        os.environ["TRITON_INTERPRET"] = "1"
        try:
            rms_norm(torch.randn(2, 8), torch.ones(8), backend="triton")
        except RuntimeError as err:
            print("RuntimeError:", err)
        """,
        TRITON_INTERPRET=None,
        CUDA_VISIBLE_DEVICES="",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    too_early, too_late = proc.stdout.strip().split("\n")
    for message in (too_early, too_late):
        assert message.startswith("RuntimeError:")
        assert "TRITON_INTERPRET=1" in message and "backend='torch'" in message
    assert "before the first Triton call" in too_late and "compiled for the GPU" in too_late


def test_import_does_not_need_triton():
    # `import triton` made to fail, as on an install without the [triton] extra: the package
    # imports, auto runs the reference, and backend="triton" names the extra to install.
    proc = _run_python(
        """
        import sys
        sys.modules["triton"] = None  # any `import triton` now raises ImportError
        import torch
        import layerwise_kernels
        from layerwise_kernels import rms_norm, rms_norm_naive, triton_available

        x, w = torch.randn(3, 16), torch.rand(16)
        assert torch.equal(rms_norm(x, w), rms_norm_naive(x, w))
        assert not triton_available()
        try:
            rms_norm(x, w, backend="triton")
        except ImportError as err:
            print("ImportError:", err)
        """,
        TRITON_INTERPRET="1",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "pip install 'layerwise-kernels[triton]'" in proc.stdout


def test_import_and_cpu_use_do_not_import_triton():
    proc = _run_python(
        """
        import sys
        import torch
        from layerwise_kernels import rms_norm
        rms_norm(torch.randn(2, 8), torch.ones(8))
        print("triton" in sys.modules)
        """
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "False"


def test_triton_available_here():
    # triton is in the test extra (Linux): the Triton tests in test_rms_norm.py rely on it.
    assert triton_available()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_auto_picks_triton_for_cuda_tensors():
    x = torch.randn(2, 8, device="cuda")
    assert resolve_backend("auto", x, torch.ones(8, device="cuda")) == "triton"
    assert resolve_backend("triton", x) == "triton"

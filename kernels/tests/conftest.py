"""Without a GPU the Triton kernels run on CPU tensors through the Triton interpreter.

TRITON_INTERPRET must be set before the kernels are defined, i.e. before layerwise_kernels' Triton
module is first imported; conftest runs before every test module. On a CUDA machine (`nox -s gpu`)
it stays unset so that the compiled kernels are what gets tested.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


import subprocess
import sys
import textwrap

import pytest

_HOPPER_PREAMBLE = '''
import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource


def compile_sm90(kernel, signature, constexprs, num_warps):
    """Compile `kernel` to a cubin for an H100 (sm_90): no GPU needed, only ptxas."""
    given = {**signature, **dict.fromkeys(constexprs, "constexpr")}
    missing = [name for name in kernel.arg_names if name not in given]
    assert not missing, f"no type for {missing}"
    signature = {name: given[name] for name in kernel.arg_names}  # the kernel's argument order
    src = ASTSource(kernel, signature, constexprs=constexprs)
    out = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps})
    assert len(out.asm["cubin"]) > 0
'''


@pytest.fixture
def compiles_for_hopper():
    """`compiles_for_hopper(code)`: run `code` (which calls `compile_sm90(kernel, signature,
    constexprs, num_warps)`) in a process without TRITON_INTERPRET; fail with ptxas's message.

    The interpreter does not check what the GPU compiler checks (types, loop bounds, casts), and
    no GPU is needed to compile to a cubin: this catches kernels that would not build on a GPU.
    """

    def check(code: str) -> None:
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        script = _HOPPER_PREAMBLE + textwrap.dedent(code) + '\nprint("compiled")\n'
        proc = subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert proc.stdout.strip().endswith("compiled")

    return check

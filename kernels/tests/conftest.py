"""Without a GPU the Triton kernels run on CPU tensors through the Triton interpreter.

TRITON_INTERPRET must be set before the kernels are defined, i.e. before layerwise_kernels' Triton
module is first imported; conftest runs before every test module. On a CUDA machine (`nox -s gpu`)
it stays unset so that the compiled kernels are what gets tested.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

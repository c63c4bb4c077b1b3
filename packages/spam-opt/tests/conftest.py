"""Offline, and Triton kernels through the interpreter when there is no GPU.

TRITON_INTERPRET must be set before the kernels are defined, i.e. before layerwise_kernels' Triton
modules are first imported; conftest runs before every test module. On a CUDA machine (`nox -s gpu`)
it stays unset so that the compiled kernels are what the fused-path tests run.
"""

import os

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

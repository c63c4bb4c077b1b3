"""Offline Hugging Face libraries; without a GPU the Triton dispatch path runs in the interpreter.

TRITON_INTERPRET must be set before layerwise_kernels' Triton module is first imported.
"""

import os

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

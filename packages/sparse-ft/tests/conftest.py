import os

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# The sparse-delta gradient calls layerwise_kernels.sddmm; without a GPU its Triton path runs in the
# interpreter, which must be switched on before the kernel module is first imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

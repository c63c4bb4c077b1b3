"""layerwise_kernels: fused ops with a pure-torch reference and a Triton kernel behind each.

Every op takes `backend="auto" | "torch" | "triton"`; "auto" runs Triton on CUDA tensors when triton
is installed and the torch reference everywhere else. Triton is imported only when it runs.
"""

from layerwise_kernels.__about__ import __version__
from layerwise_kernels._backend import triton_available
from layerwise_kernels.rms_norm import rms_norm, rms_norm_naive

__all__ = ["__version__", "rms_norm", "rms_norm_naive", "triton_available"]

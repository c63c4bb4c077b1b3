"""layerwise_kernels: fused ops with a pure-torch reference and a Triton kernel behind each.

Every op takes `backend="auto" | "torch" | "triton"`; "auto" runs Triton on CUDA tensors when triton
is installed and the torch reference everywhere else (grouped_mm also has "grouped_mm", torch's own
grouped GEMM, which its "auto" takes first where torch supports the inputs). Triton is imported
only when it runs.
"""

from layerwise_kernels.__about__ import __version__
from layerwise_kernels._backend import triton_available
from layerwise_kernels.fake_quant import (
    FAKE_QUANT_MODES,
    FakeQuantLinear,
    apply_fake_quant,
    fake_quant,
    fake_quant_naive,
)
from layerwise_kernels.grouped_mm import (
    GROUPED_MM_BACKENDS,
    grouped_mm,
    grouped_mm_naive,
    native_grouped_mm_supports,
    resolve_grouped_mm_backend,
)
from layerwise_kernels.rms_norm import rms_norm, rms_norm_naive
from layerwise_kernels.sddmm import sddmm, sddmm_naive
from layerwise_kernels.spam_step import (
    per_tensor_abs_max,
    per_tensor_clipped_sq_norm,
    spam_step_,
    stable_spam_step_,
)
from layerwise_kernels.top2_confidence import Top2Confidence, top2_confidence, top2_confidence_naive

__all__ = [
    "FAKE_QUANT_MODES",
    "GROUPED_MM_BACKENDS",
    "FakeQuantLinear",
    "Top2Confidence",
    "__version__",
    "apply_fake_quant",
    "fake_quant",
    "fake_quant_naive",
    "grouped_mm",
    "grouped_mm_naive",
    "native_grouped_mm_supports",
    "per_tensor_abs_max",
    "per_tensor_clipped_sq_norm",
    "resolve_grouped_mm_backend",
    "rms_norm",
    "rms_norm_naive",
    "sddmm",
    "sddmm_naive",
    "spam_step_",
    "stable_spam_step_",
    "top2_confidence",
    "top2_confidence_naive",
    "triton_available",
]

"""layerwise_kernels: fused ops with a pure-torch reference and a Triton kernel behind each.

Every op takes `backend="auto" | "torch" | "triton"`; "auto" runs Triton on CUDA tensors when triton
is installed and the torch reference everywhere else (grouped_mm also has "grouped_mm", torch's own
grouped GEMM, which its "auto" takes first where torch supports the inputs; sparse24_mm has torch's
semi-structured sparse GEMM backends, "cusparselt" and "cutlass"). Triton is imported only when it
runs.

Ops: rms_norm, sddmm, grouped_mm, top2_confidence, spam_step_ / stable_spam_step_, fake_quant,
and sparse24 (ELAS 2:4 activation sparsity: mask_24, sparsify_24, relu2_sparsify_24,
compress_24 / decompress_24, sparse24_mm).
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
from layerwise_kernels.sparse24 import (
    SPARSE24_MM_BACKENDS,
    Relu2Sparse24,
    Sparse24Stats,
    compress_24,
    decompress_24,
    mask_24,
    mask_24_naive,
    relu2_sparsify_24,
    relu2_sparsify_24_naive,
    semi_structured_supported,
    sparse24_mm,
    sparse24_stats,
    sparsify_24,
    sparsify_24_naive,
)
from layerwise_kernels.top2_confidence import Top2Confidence, top2_confidence, top2_confidence_naive

__all__ = [
    "FAKE_QUANT_MODES",
    "GROUPED_MM_BACKENDS",
    "SPARSE24_MM_BACKENDS",
    "FakeQuantLinear",
    "Relu2Sparse24",
    "Sparse24Stats",
    "Top2Confidence",
    "__version__",
    "apply_fake_quant",
    "compress_24",
    "decompress_24",
    "fake_quant",
    "fake_quant_naive",
    "grouped_mm",
    "grouped_mm_naive",
    "mask_24",
    "mask_24_naive",
    "native_grouped_mm_supports",
    "per_tensor_abs_max",
    "per_tensor_clipped_sq_norm",
    "relu2_sparsify_24",
    "relu2_sparsify_24_naive",
    "resolve_grouped_mm_backend",
    "rms_norm",
    "rms_norm_naive",
    "sddmm",
    "sddmm_naive",
    "semi_structured_supported",
    "spam_step_",
    "sparse24_mm",
    "sparse24_stats",
    "sparsify_24",
    "sparsify_24_naive",
    "stable_spam_step_",
    "top2_confidence",
    "top2_confidence_naive",
    "triton_available",
]

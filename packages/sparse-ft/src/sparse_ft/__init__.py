"""sparse-ft: sparse fine-tuning with LoRA-level memory (LIFT, SEFT) and the pruning it builds on.

    model = sparse_ft.get_sparse_model(model, sparse_ft.LiftConfig(lora_rank=16, filter_rank=8))
    ...train model.trainable_parameters(); call model.after_optimizer_step(opt) after each step...
    model.save_pretrained("adapter"); merged = model.merge_and_unload()

    sparse_ft.prune(model, "wanda", 0.5, allocation="owl", calibration=token_ids)
    sparse_ft.PruneConfig(method="wanda", allocation="owl").apply(model, token_ids)  # as a config
    sparse_ft.quantize(model, "gptq", bits=3, group_size=128, calibration=token_ids)  # GPTQ / RTN

LIFT (arXiv 2506.00772): W' = U_r S_r V_r^T, train the top-k |W'| entries. SEFT (arXiv 2505.24037):
drop / grow / sensitivity re-prune on a pruned model. Wanda (2306.11695): |W| * ||X||. SparseGPT
(2301.00774): OBS reconstruction. OWL (2310.05175): outlier-weighted layer-wise sparsity. GPTQ
(2210.17323): OBQ column updates onto a min-max grid; RTN on the same grid.
"""

from sparse_ft.__about__ import __version__
from sparse_ft.calibration import (
    BlockInputs,
    capture_block_inputs,
    packed_calibration,
    run_block,
)
from sparse_ft.config import LiftConfig, PruneConfig, QuantizeConfig, SeftConfig
from sparse_ft.dst import (
    DSTConfig,
    DynamicSparsity,
    cosine_prune_fraction,
    drop_and_grow,
    erk_densities,
    prune_and_regrow,
    soft_magnitude_keep,
    uniform_densities,
)
from sparse_ft.elas import (
    ELASConfig,
    ElasLlamaConfig,
    ElasLlamaForCausalLM,
    ReLU2MLPConfig,
    apply_elas,
    merge_elas,
)  # registers model type "elas_llama"
from sparse_ft.elas_ffn import (
    ELASFFN,
    Relu2Sparse24Matmul,
    elas_stats,
    relu2_sparse24_matmul,
    set_elas_step,
)
from sparse_ft.gptq import GPTQHessian, QuantizedWeight, gptq_quantize, rtn_quantize
from sparse_ft.lift import lift_initial_indices, lift_refresh, lift_refresh_due
from sparse_ft.loro import LOROAdamW, LOROConfig, loro_param_groups
from sparse_ft.low_rank import LowRankConfig, LowRankLinear
from sparse_ft.magnitude import lowest_fraction_mask, magnitude_prune_mask
from sparse_ft.multi_head import (
    HeadsConfig,
    MultiHeadConfig,
    MultiHeadForCausalLM,
    MultiHeadOutput,
    combine_logits,
    head_disagreement,
)  # registers model type "multi_head_llama"
from sparse_ft.nm_sparsity import is_nm_sparse, nm_prune_mask, parse_nm
from sparse_ft.owl import owl_outlier_ratio, owl_sparsities
from sparse_ft.principal_weight_mask import (
    lift_budget,
    low_rank_approximation,
    principal_weight_indices,
    principal_weight_mask,
)
from sparse_ft.pruning import METHODS, PruneResult, prune
from sparse_ft.quant_grid import QuantGrid, fit_grid, grid_quantize
from sparse_ft.quantization import (
    QUANTIZATION_METHODS,
    QuantizeResult,
    load_quantized,
    quantize,
    save_quantized,
)
from sparse_ft.seft import seft_budget, sensitivity
from sparse_ft.shira import to_shira
from sparse_ft.sparse_delta import SparseDeltaLinear, effective_weight, remap_optimizer_state
from sparse_ft.sparse_model import SparseFTModel, get_sparse_model, target_linear_names
from sparse_ft.sparsegpt import HessianStatistics, sparsegpt_prune
from sparse_ft.sparsity_allocation import ALLOCATIONS, layer_sparsities
from sparse_ft.wanda import InputNormStatistics, wanda_prune_mask, wanda_scores


def __getattr__(name: str):
    # the Trainer callback imports transformers' Trainer machinery: load it on first use
    if name == "SparseFTCallback":
        from sparse_ft.trainer_callback import SparseFTCallback

        return SparseFTCallback
    raise AttributeError(f"module 'sparse_ft' has no attribute {name!r}")


__all__ = [
    "ALLOCATIONS",
    "ELASFFN",
    "METHODS",
    "QUANTIZATION_METHODS",
    "BlockInputs",
    "DSTConfig",
    "DynamicSparsity",
    "ELASConfig",
    "ElasLlamaConfig",
    "ElasLlamaForCausalLM",
    "GPTQHessian",
    "HeadsConfig",
    "HessianStatistics",
    "InputNormStatistics",
    "LOROAdamW",
    "LOROConfig",
    "LiftConfig",
    "LowRankConfig",
    "LowRankLinear",
    "MultiHeadConfig",
    "MultiHeadForCausalLM",
    "MultiHeadOutput",
    "PruneConfig",
    "PruneResult",
    "QuantGrid",
    "QuantizeConfig",
    "QuantizeResult",
    "QuantizedWeight",
    "ReLU2MLPConfig",
    "Relu2Sparse24Matmul",
    "SeftConfig",
    "SparseDeltaLinear",
    "SparseFTCallback",
    "SparseFTModel",
    "__version__",
    "apply_elas",
    "capture_block_inputs",
    "combine_logits",
    "cosine_prune_fraction",
    "drop_and_grow",
    "effective_weight",
    "elas_stats",
    "erk_densities",
    "fit_grid",
    "get_sparse_model",
    "gptq_quantize",
    "grid_quantize",
    "head_disagreement",
    "is_nm_sparse",
    "layer_sparsities",
    "lift_budget",
    "lift_initial_indices",
    "lift_refresh",
    "lift_refresh_due",
    "load_quantized",
    "loro_param_groups",
    "low_rank_approximation",
    "lowest_fraction_mask",
    "magnitude_prune_mask",
    "merge_elas",
    "nm_prune_mask",
    "owl_outlier_ratio",
    "owl_sparsities",
    "packed_calibration",
    "parse_nm",
    "principal_weight_indices",
    "principal_weight_mask",
    "prune",
    "prune_and_regrow",
    "quantize",
    "relu2_sparse24_matmul",
    "remap_optimizer_state",
    "rtn_quantize",
    "run_block",
    "save_quantized",
    "seft_budget",
    "sensitivity",
    "set_elas_step",
    "soft_magnitude_keep",
    "sparsegpt_prune",
    "target_linear_names",
    "to_shira",
    "uniform_densities",
    "wanda_prune_mask",
    "wanda_scores",
]

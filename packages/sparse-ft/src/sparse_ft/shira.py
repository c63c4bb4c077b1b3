"""Export a static sparse delta to PEFT's SHiRA adapter (Bhardwaj et al., "Sparse High Rank
Adapters", arXiv 2406.13175; `peft.ShiraConfig`, peft >= 0.17).

SHiRA is a fixed sparse delta of exactly r * (m + n) entries per matrix, chosen by a `mask_fn`;
its trainable `shira_weight` holds the values in row-major order of the mask (`torch.where`), the
order of our sorted flat indices. A LIFT delta whose frozen weights never changed (no mask refresh
folded anything) is therefore a SHiRA adapter with r = lora_rank.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["to_shira"]


def to_shira(sparse_model, adapter_name: str = "default"):
    """Turn a `SparseFTModel` into a `peft.PeftModel` with an equivalent SHiRA adapter.

    The wrapper is consumed: its Linear layers are put back (unmerged) and PEFT wraps the model.
    Raises when the delta is not a static r * (m + n) sparse delta on unchanged base weights.
    """
    try:
        from peft import ShiraConfig, get_peft_model
    except ImportError:
        raise ImportError(
            "to_shira needs peft with SHiRA (peft >= 0.17): pip install 'sparse-ft[peft]'"
        ) from None
    config = sparse_model.peft_config
    rank = getattr(config, "lora_rank", None) or getattr(config, "budget_rank", None)
    modules = sparse_model.sparse_modules()
    masks: dict[int, torch.Tensor] = {}
    for name, module in modules.items():
        m, n = module.base_layer.weight.shape
        if module.touched_indices.numel():
            raise ValueError(
                f"{name}: {module.touched_indices.numel()} entries of the frozen weight changed "
                "(mask refreshes or pruning folded deltas into it), which SHiRA cannot express: "
                "save with save_pretrained() or merge_and_unload() instead, or train LIFT with "
                "update_interval=None"
            )
        if module.k != rank * (m + n):
            raise ValueError(
                f"{name}: {module.k} entries, but SHiRA holds exactly r * (m + n) = "
                f"{rank * (m + n)} for r = {rank}: the budget was capped by the matrix size"
            )
        mask = torch.zeros(
            m * n, dtype=module.base_layer.weight.dtype, device=module.indices.device
        )
        mask[module.indices] = 1
        masks[id(module.base_layer)] = mask.view(m, n)

    values = {name: module.values.detach().clone() for name, module in modules.items()}
    for name, module in modules.items():
        sparse_model._replace(name, module.base_layer)
    base: nn.Module = sparse_model.base_model
    for p in sparse_model._frozen_by_us:
        p.requires_grad_(True)

    def mask_fn(base_layer: nn.Module, r: int, **kwargs) -> torch.Tensor:
        return masks[id(base_layer)]

    shira_config = ShiraConfig(r=rank, target_modules=list(modules), inference_mode=True)
    shira_config.mask_fn = mask_fn
    peft_model = get_peft_model(base, shira_config, adapter_name=adapter_name)
    with torch.no_grad():
        for name, value in values.items():
            layer = peft_model.base_model.model.get_submodule(name)
            weight = layer.shira_weight[adapter_name]
            weight.copy_(value.to(weight.dtype))
    return peft_model

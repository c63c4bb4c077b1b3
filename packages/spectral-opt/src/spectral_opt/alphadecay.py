"""AlphaDecay: module-wise weight decay from the heavy-tailedness of each module's ESD.

He et al., "AlphaDecay: Module-wise Weight Decay for Heavy-Tailed Balancing in LLMs",
arXiv 2506.14562. Every `interval` steps the Hill exponent alpha_i of each tuned module's ESD is
estimated (`module_alphas`) and its weight decay set to

    wd_i = interp(alpha_i, [alpha_min, alpha_max], [r_min * wd, r_max * wd]),   (r_min, r_max) = (0.6666, 3)

so the most heavy-tailed module (lowest alpha: the most learned structure) decays least and the
least heavy-tailed one most, pulling the modules' spectra towards balance.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from spectral_opt._controller import SpectralController
from spectral_opt.module_alphas import Patterns
from spectral_opt.temperature_balance import tb_linear_map

__all__ = ["AlphaDecay"]


class AlphaDecay(SpectralController):
    """Set each module's `weight_decay` from its ESD alpha; works with any torch optimizer.

    Build the optimizer with one param group per module (`spectral_opt.module_param_groups(model,
    weight_decay=wd)`; shared groups, e.g. `layerwise_core.decay_param_groups(model, wd)`, are
    split, see `spectral_opt._controller`), then call `.step()` once per training step, before
    `optimizer.step()`. `skipped` lists the candidate modules left untuned and why.
    Alphas are recomputed at step 0 and whenever (step + 1) % interval == 0, as in the official
    code. Tuned modules: every `module_types` module in `named_modules` order (minus the first and
    the last with `exclude_first_last`, i.e. layers.0.self_attn.q_proj and lm_head of a Llama)
    with min(m, n) >= `min_eigs`; other groups (embeddings, norms, excluded modules) keep the
    weight decay they were built with. The optimizer decides what weight decay means: decoupled
    with AdamW (the paper's 0.1 / 0.05 / 0.01), coupled L2 with Adam (1e-5 / 5e-6 / 1e-6).

    Args:
        optimizer: any `torch.optim.Optimizer` whose param groups have `weight_decay`.
        model: the model whose modules the groups hold (FSDP2-sharded or not).
        weight_decay: the base weight decay wd of the map.
        ratio: (r_min, r_max): the lowest alpha gets r_min * wd, the highest r_max * wd.
        interval: recompute period in optimizer steps.
        exclude_first_last: leave the first and the last module untuned.
        module_types, include, exclude: which modules are candidates (`spectral_modules`).
        min_eigs: modules with fewer eigenvalues are left untuned.
        fit, xmin_pos, reference_quirks: the power-law fit (`hill_alpha`).
        dtype: precision of the ESD (float32; float64 on request).
        scheduler: the LR scheduler already driving the optimizer, if any; needed only when
            shared param groups are split (the new groups must follow its schedule).
    """

    hyperparameter = "weight_decay"

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        model: nn.Module,
        weight_decay: float,
        ratio: tuple[float, float] = (0.6666, 3.0),
        interval: int = 500,
        exclude_first_last: bool = True,
        *,
        module_types: tuple[type[nn.Module], ...] = (nn.Linear,),
        include: Patterns = None,
        exclude: Patterns = None,
        min_eigs: int = 50,
        fit: str = "median",
        dtype: torch.dtype = torch.float32,
        xmin_pos: float = 2.0,
        reference_quirks: bool = False,
        scheduler: Any = None,
    ) -> None:
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        if not 0 <= ratio[0] <= ratio[1]:
            raise ValueError(f"ratio must be (r_min, r_max) with 0 <= r_min <= r_max, got {ratio}")
        self.weight_decay = float(weight_decay)
        self.ratio = (float(ratio[0]), float(ratio[1]))
        super().__init__(
            optimizer,
            model,
            interval=interval,
            module_types=module_types,
            include=include,
            exclude=exclude,
            exclude_first_last=exclude_first_last,
            pinned=(),
            min_eigs=min_eigs,
            fit=fit,
            dtype=dtype,
            xmin_pos=xmin_pos,
            reference_quirks=reference_quirks,
            scheduler=scheduler,
        )

    def _advance(self, t: int) -> bool:
        if not self.is_update_step(t):
            return False
        self.values = tb_linear_map(self._record(t), self.weight_decay, self.ratio)
        self._apply()
        return True

    def _apply(self) -> None:
        for name, value in self.values.items():
            self.optimizer.param_groups[self.group_of[name]]["weight_decay"] = value

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._apply()

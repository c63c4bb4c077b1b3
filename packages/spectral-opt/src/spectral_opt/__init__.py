"""spectral-opt: heavy-tail (HT-SR) guided optimisation for any torch model and optimizer.

- `esd(W)`: eigenvalues of W^T W (squared singular values), `hill_alpha(eigs)`: the power-law
  exponent of the ESD tail, alpha = 1 + n / (sum_{j>=i} ln lambda_j - n ln lambda_i) (TempBalance);
  `module_alphas(model)`: every matrix at once, batched by shape, FSDP2-aware; `.skipped` of the
  result says which matrices got no alpha and why.
- `AlphaDecay` (arXiv 2506.14562): wd_i = interp(alpha_i, [alpha_min, alpha_max], [0.6666 wd, 3 wd]).
- `LayerwiseLR` (LLR, "One LR Doesn't Fit All"): lr_i = interp(alpha_i, ..., [1 lr, 5 lr]).

    optimizer = torch.optim.AdamW(spectral_opt.module_param_groups(model, weight_decay=0.1), lr=1e-3)
    decay = spectral_opt.AlphaDecay(optimizer, model, weight_decay=0.1)
    for batch in data: loss.backward(); decay.step(); optimizer.step()

Configs with the papers' defaults: `AlphaDecayConfig().build(optimizer, model)`,
`LayerwiseLRConfig().build(optimizer, model, total_steps=...)`; `.param_groups(model, wd)`.
Plots: `spectral_opt.plots` (`[plot]` extra); HF Trainer: `spectral_opt.integrations.SpectralCallback`.
"""

from layerwise_core import module_param_groups
from spectral_opt.__about__ import __version__
from spectral_opt.alphadecay import AlphaDecay
from spectral_opt.config import AlphaDecayConfig, LayerwiseLRConfig
from spectral_opt.esd import batched_esd, esd
from spectral_opt.hill_alpha import FITS, PowerLawFit, fit_power_law, hill_alpha
from spectral_opt.layerwise_lr import LayerwiseLR
from spectral_opt.module_alphas import (
    ModuleAlphas,
    alphas_of_modules,
    module_alphas,
    spectral_modules,
    weight_alphas,
)
from spectral_opt.temperature_balance import tb_linear_map

__all__ = [
    "FITS",
    "AlphaDecay",
    "AlphaDecayConfig",
    "LayerwiseLR",
    "LayerwiseLRConfig",
    "ModuleAlphas",
    "PowerLawFit",
    "__version__",
    "alphas_of_modules",
    "batched_esd",
    "esd",
    "fit_power_law",
    "hill_alpha",
    "module_alphas",
    "module_param_groups",
    "spectral_modules",
    "tb_linear_map",
    "weight_alphas",
]

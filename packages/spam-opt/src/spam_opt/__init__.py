"""spam-opt: SPAM and Stable-SPAM, spike-aware Adam variants for stable (and 4-bit) LLM training.

- `SPAM` (Huang et al., ICLR 2025): Adam + spike-aware clipping + periodic momentum reset with a
  cosine warm-up after each reset; optional sparse momentum (`density < 1` param groups).
- `StableSPAM` (Huang et al., arXiv:2502.17055): Adam + AdaClip (adaptive spike clipping) + AdaGN
  (adaptive gradient-norm scaling) + momentum reset, with a cosine schedule on beta1.

Both are `torch.optim.Optimizer`s with single-tensor, foreach (default) and fused Triton (CUDA) paths,
every counter in `state_dict`, FSDP2-correct statistics, and `reference_quirks=True` for bit-for-bit
reproduction of the official code. As in torch.optim, the functional steps live in their modules:
`spam_opt.spam.spam` and `spam_opt.stable_spam.stable_spam`, each with its update rule in its docstring.
`SPAMConfig` / `StableSPAMConfig` hold every hyper-parameter with the paper's default and build the
optimizers from param groups (`.build(param_groups, total_steps=...)`).
"""

from spam_opt.__about__ import __version__
from spam_opt.config import SPAMConfig, StableSPAMConfig, sparse_momentum_groups
from spam_opt.spam import SPAM, spam_warmup_scale
from spam_opt.stable_spam import StableSPAM, stable_spam_scale

__all__ = [
    "SPAM",
    "SPAMConfig",
    "StableSPAM",
    "StableSPAMConfig",
    "__version__",
    "spam_warmup_scale",
    "sparse_momentum_groups",
    "stable_spam_scale",
]

"""ln-scaling: LayerNorm Scaling ("The Curse of Depth in LLMs", arXiv 2502.05795) and Mix-LN
(arXiv 2412.13795) for any Hugging Face decoder, without forking its modeling file.

    model = ln_scaling.apply_layernorm_scaling(model)     # h = x + Attn(Norm(x) / sqrt(l)) ...
    # or by name: ln_scaling.NormConfig(scheme="mix_ln+lns").apply(model) (pre_ln|lns|mix_ln|...)
    model.save_pretrained(path); again = ln_scaling.from_pretrained(path)

Importing ln_scaling registers model type "ln_scaling" (the type such a model is saved as) with
`AutoConfig`, so `AutoModelForCausalLM.from_pretrained(path)` also restores the scheme.
"""

from ln_scaling.__about__ import __version__
from ln_scaling.config import SCHEMES, NormConfig, NormScheme
from ln_scaling.initialisation import REFERENCE_EMBEDDING_STD, init_weights
from ln_scaling.layernorm_scaling import (
    apply_layernorm_scaling,
    is_layernorm_scaled,
    layernorm_scale,
    rebind_layernorm_scaling,
    remove_layernorm_scaling,
)
from ln_scaling.mix_ln import apply_mix_ln, post_ln_layer_count
from ln_scaling.pretrained import apply_norm_scheme, from_pretrained, norm_scheme
from ln_scaling.residual_variance import residual_variance
from ln_scaling.scheme_config import LNScalingConfig  # registers model type "ln_scaling"

__all__ = [
    "REFERENCE_EMBEDDING_STD",
    "SCHEMES",
    "LNScalingConfig",
    "NormConfig",
    "NormScheme",
    "__version__",
    "apply_layernorm_scaling",
    "apply_mix_ln",
    "apply_norm_scheme",
    "from_pretrained",
    "init_weights",
    "is_layernorm_scaled",
    "layernorm_scale",
    "norm_scheme",
    "post_ln_layer_count",
    "rebind_layernorm_scaling",
    "remove_layernorm_scaling",
    "residual_variance",
]

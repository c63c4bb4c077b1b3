"""`NormConfig`: the normalisation scheme of a decoder as a config, `.apply(model)` makes it.

    ln_scaling.NormConfig(scheme="mix_ln+lns", post_ln_fraction=0.25).apply(model)
    NormConfig.model_validate("lns") == NormConfig(scheme="lns")        # a bare string is the scheme

With l = layer index + 1 and k = floor(post_ln_fraction * L) (`post_ln_layer_count`):

    pre_ln      h = x + Attn(Norm_in(x));              out = h + MLP(Norm_post(h))    (unchanged)
    lns         h = x + Attn(Norm_in(x) / sqrt(l));    out = h + MLP(Norm_post(h) / sqrt(l))
    mix_ln      blocks l <= k:  h = Norm_a(x + Attn(x));  out = Norm_f(h + MLP(h));  the rest pre_ln
    mix_ln+lns  blocks l <= k as in mix_ln; blocks l > k as in lns, with the same l = layer index + 1

LayerNorm Scaling: arXiv 2502.05795; Mix-LN: arXiv 2412.13795. "mix_ln+lns" is a composition of
the two that neither paper trains: the Mix-LN layout first, then LNS's 1/sqrt(l) on the pre-norms
of the Pre-LN blocks only (Post-LN blocks have no pre-norm), l counted over all blocks, as LNS
defines it (the first Pre-LN block of a 12-layer, k = 3 model is scaled by 1/sqrt(4), not 1). The
official code's nearest variant, NORM_TYPE=scale_post_pre (lmsdss/LayerNorm-Scaling), is different:
the Mix-LN layout with a depth-scaled *initialisation* (std / sqrt(2 L)) of the Pre-LN blocks'
o_proj and down_proj, no scaling of the forward. Every scheme is recorded in the model config, so
`save_pretrained` + `ln_scaling.from_pretrained` (or the Auto classes) restore it.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from pydantic import Field, model_validator
from torch import nn

from layerwise_core import LayerwiseConfig
from ln_scaling.layernorm_scaling import apply_layernorm_scaling
from ln_scaling.mix_ln import apply_mix_ln

__all__ = ["SCHEMES", "NormConfig", "NormScheme"]

NormScheme = Literal["pre_ln", "lns", "mix_ln", "mix_ln+lns"]
SCHEMES: tuple[str, ...] = get_args(NormScheme)


class NormConfig(LayerwiseConfig):
    """The normalisation of the decoder blocks (see the module docstring for the equations)."""

    # pre_ln: the model as built; lns: LayerNorm Scaling; mix_ln: Mix-LN; mix_ln+lns: both
    scheme: NormScheme = "pre_ln"
    # Mix-LN: the leading share of blocks made Post-LN, floor(fraction * L) (the paper: 0.25)
    post_ln_fraction: float = Field(0.25, ge=0.0, le=1.0)

    @model_validator(mode="before")
    @classmethod
    def _scheme_shorthand(cls, data: Any) -> Any:
        # `norm: lns` in a YAML file means {scheme: lns}
        return {"scheme": data} if isinstance(data, str) else data

    def apply(self, model: nn.Module) -> nn.Module:
        """Apply the scheme to `model` in place and return it: Mix-LN first (`apply_mix_ln`), then
        LayerNorm scaling (`apply_layernorm_scaling`), which skips Mix-LN's Post-LN blocks."""
        if self.scheme.startswith("mix_ln"):
            apply_mix_ln(model, self.post_ln_fraction)
        if self.scheme.endswith("lns"):
            apply_layernorm_scaling(model)
        return model

"""Mix-LN: Li et al., "Mix-LN: Unleashing the Power of Deeper Layers by Combining Pre-LN and
Post-LN", arXiv 2412.13795.

The first floor(alpha * L) blocks (0-based index < that number) become Post-LN, the rest stay Pre-LN::

    Post-LN block:  h = Norm_a(x + Attn(x));   out = Norm_f(h + MLP(h))      # no input norm
    Pre-LN block:   h = x + Attn(Norm_in(x));  out = h + MLP(Norm_post(h))

Norm_a is the block's existing `post_attention_layernorm`; Norm_f is a new norm of the same class,
`post_feedforward_layernorm`, initialised to ones and registered (so it is trained and saved). The
unused input norm of a Post-LN block is removed (an unused parameter would break DDP).
alpha = 0.25 in the paper (3 of 12 layers, 6 of 24).
"""

from __future__ import annotations

import copy
import math
import types

import torch
from torch import nn

from layerwise_core import find_decoder
from ln_scaling.scheme_config import MIX_LN_CONFIG_KEY as CONFIG_KEY
from ln_scaling.scheme_config import record_scheme

__all__ = ["apply_mix_ln", "post_ln_layer_count"]

# families whose decoder-layer forward (transformers 5) is Llama's: attn(hidden_states=..., **kw)
SUPPORTED = ("llama", "mistral", "qwen2", "qwen3", "mixtral", "qwen2_moe", "qwen3_moe")


def post_ln_layer_count(num_layers: int, post_ln_fraction: float) -> int:
    """floor(alpha * L) Post-LN blocks."""
    if not 0.0 <= post_ln_fraction <= 1.0:
        raise ValueError(f"post_ln_fraction must be in [0, 1], got {post_ln_fraction}")
    return math.floor(post_ln_fraction * num_layers + 1e-9)


def _post_ln_forward(
    self: nn.Module,
    hidden_states: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    past_key_values=None,
    use_cache: bool | None = False,
    position_embeddings=None,
    **kwargs,
) -> torch.Tensor:
    # input_layernorm is the identity here; calling it keeps its forward hooks (e.g. depth-probe's
    # capture of the attention input) working on Post-LN blocks
    attn_out, _ = self.self_attn(
        hidden_states=self.input_layernorm(hidden_states),
        attention_mask=attention_mask,
        position_ids=position_ids,
        past_key_values=past_key_values,
        use_cache=use_cache,
        position_embeddings=position_embeddings,
        **kwargs,
    )
    hidden_states = self.post_attention_layernorm(hidden_states + attn_out)
    mlp_out = self.mlp(hidden_states)
    if isinstance(mlp_out, tuple):  # MoE blocks of older transformers return (out, router_logits)
        mlp_out = mlp_out[0]
    return self.post_feedforward_layernorm(hidden_states + mlp_out)


def apply_mix_ln(
    model: nn.Module, post_ln_fraction: float = 0.25, *, num_post_ln: int | None = None
) -> nn.Module:
    """Turn the first floor(post_ln_fraction * L) blocks into Post-LN blocks, in place; returns `model`.

    Pass `num_post_ln` to choose the count directly (the paper's 7B run used 2). The count is
    recorded in `model.config.mix_ln_post_layers`, and `save_pretrained` writes model type
    "ln_scaling", so the Auto classes restore it once `ln_scaling` is imported.
    Apply Mix-LN before LayerNorm scaling if you combine them (LNS then scales the Pre-LN blocks).
    """
    if getattr(getattr(model, "config", None), CONFIG_KEY, None) is not None:
        raise ValueError("Mix-LN is already applied to this model")
    if any(hasattr(m, "_lns_scale") for m in model.modules()):
        raise ValueError(
            "apply_mix_ln after LayerNorm scaling is not supported: apply Mix-LN first, then "
            "apply_layernorm_scaling (call ln_scaling.remove_layernorm_scaling(model) now)"
        )
    num_layers = len(find_decoder(model))
    count = (
        post_ln_layer_count(num_layers, post_ln_fraction) if num_post_ln is None else num_post_ln
    )
    make_post_ln_blocks(model, count)
    config = getattr(model, "config", None)
    if config is not None:
        setattr(config, CONFIG_KEY, count)
        record_scheme(config)
    return model


def make_post_ln_blocks(model: nn.Module, count: int) -> None:
    """Turn the first `count` blocks into Post-LN blocks, in place, without touching the config
    (also used to rebuild a saved Mix-LN model before its weights load)."""
    dmap = find_decoder(model)
    if dmap.family not in SUPPORTED:
        raise ValueError(
            f"apply_mix_ln supports decoder layers with Llama's forward ({', '.join(SUPPORTED)}); "
            f"got {dmap.family!r}"
        )
    if not 0 <= count <= len(dmap):
        raise ValueError(f"num_post_ln must be in [0, {len(dmap)}], got {count}")
    for layer in list(dmap)[:count]:
        block = layer.block
        extra = copy.deepcopy(block.post_attention_layernorm)
        with torch.no_grad():
            extra.weight.fill_(1.0)
        block.post_feedforward_layernorm = extra
        block.input_layernorm = nn.Identity()
        block.forward = types.MethodType(_post_ln_forward, block)
        block._mix_ln_post = True

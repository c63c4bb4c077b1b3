"""LayerNorm Scaling (LNS): Sun et al., "The Curse of Depth in Large Language Models", arXiv 2502.05795.

With l = layer_index + 1 (1-based), every pre-norm decoder block becomes::

    h   = x + Attn( Norm_attn(x) * 1/sqrt(l) )
    out = h + MLP ( Norm_mlp(h)  * 1/sqrt(l) )

The final norm and the embeddings are untouched. The scale stays a separate Python constant: folding
it into the norm weight gives the same forward but different dynamics under Adam and weight decay,
and a buffer would be erased by `to_empty()` during meta-device init (OLMo-core PR #698).
"""

from __future__ import annotations

import math
import types

import torch
from torch import nn

from layerwise_core import DecoderMap, find_decoder
from layerwise_kernels import rms_norm
from ln_scaling.scheme_config import LNS_CONFIG_KEY as CONFIG_KEY
from ln_scaling.scheme_config import record_scheme

__all__ = [
    "apply_layernorm_scaling",
    "is_layernorm_scaled",
    "layernorm_scale",
    "remove_layernorm_scaling",
]

# RMSNorm classes whose forward is HF LlamaRMSNorm's: w * (x * rsqrt(mean(x^2) + eps)).to(dtype)
_LLAMA_STYLE_RMSNORMS = {
    "LlamaRMSNorm",
    "MistralRMSNorm",
    "Qwen2RMSNorm",
    "Qwen3RMSNorm",
    "MixtralRMSNorm",
    "Qwen2MoeRMSNorm",
    "Qwen3MoeRMSNorm",
    "Phi3RMSNorm",
    "LayerwiseRMSNorm",
}
# Gemma's RMSNorm multiplies by (1 + w) in fp32
_GEMMA_STYLE_RMSNORMS = {"GemmaRMSNorm", "Gemma2RMSNorm", "Gemma3RMSNorm"}


def layernorm_scale(layer_index: int) -> float:
    """1/sqrt(l) for the 0-based `layer_index` (l = layer_index + 1)."""
    if layer_index < 0:
        raise ValueError(f"layer_index must be >= 0, got {layer_index}")
    return 1.0 / math.sqrt(layer_index + 1)


def _fused_rms_forward(self: nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
    # One fused op: normalise, multiply by (offset + weight) and by the LNS constant.
    return rms_norm(
        hidden_states, self.weight, self._lns_eps, self._lns_scale, offset=self._lns_offset
    )


def _generic_forward(self: nn.Module, *args, **kwargs):
    return self._lns_inner_forward(*args, **kwargs) * self._lns_scale


def _scale_norm(norm: nn.Module, scale: float) -> str:
    """Patch one norm module in place (Liger-style bound forward). Returns the path used."""
    name = type(norm).__name__
    patched_forward = "forward" in norm.__dict__
    if name in _LLAMA_STYLE_RMSNORMS and not patched_forward:
        norm._lns_eps, norm._lns_offset = float(norm.variance_epsilon), 0.0
        norm.forward = types.MethodType(_fused_rms_forward, norm)
        kind = "fused"
    elif name in _GEMMA_STYLE_RMSNORMS and not patched_forward:
        norm._lns_eps, norm._lns_offset = float(norm.eps), 1.0
        norm.forward = types.MethodType(_fused_rms_forward, norm)
        kind = "fused"
    else:  # LayerNorm, nn.RMSNorm, or a norm someone else already patched: scale its output
        norm._lns_inner_forward = norm.forward
        norm.forward = types.MethodType(_generic_forward, norm)
        kind = "generic"
    norm._lns_scale = float(scale)
    return kind


def _unscale_norm(norm: nn.Module) -> None:
    inner = norm.__dict__.pop("_lns_inner_forward", None)
    del norm.forward
    # restore a forward that someone else had bound on the instance before us
    if inner is not None and getattr(inner, "__func__", None) is not type(norm).forward:
        norm.forward = inner
    for attr in ("_lns_scale", "_lns_eps", "_lns_offset"):
        norm.__dict__.pop(attr, None)


def rebind_layernorm_scaling(model: nn.Module) -> int:
    """Bind the LNS forward again on scaled norms that lost it; returns how many were rebound.

    transformers >= 5.25 "kernelizes" a model after `from_pretrained`: norms declared with a hub
    kernel (LlamaRMSNorm, ...) get the hub kernel's forward or, on CPU, the class forward back,
    which silently drops the 1/sqrt(l) scale. A norm whose class forward came back gets its LNS
    forward again; a norm given another forward (a hub kernel) has that forward's output scaled.
    """
    ours = (_fused_rms_forward, _generic_forward)
    count = 0
    for norm in model.modules():
        if not hasattr(norm, "_lns_scale"):
            continue
        bound = norm.__dict__.get("forward")
        if bound is not None and getattr(bound, "__func__", None) in ours:
            continue
        if bound is not None:  # someone else's forward (a hub kernel): scale its output
            norm._lns_inner_forward = bound
            norm.forward = types.MethodType(_generic_forward, norm)
        elif "_lns_inner_forward" in norm.__dict__:
            norm.forward = types.MethodType(_generic_forward, norm)
        else:
            norm.forward = types.MethodType(_fused_rms_forward, norm)
        count += 1
    return count


def is_layernorm_scaled(model: nn.Module) -> bool:
    return any(hasattr(m, "_lns_scale") for m in model.modules())


def apply_layernorm_scaling(model: nn.Module, decoder_map: DecoderMap | None = None) -> nn.Module:
    """Scale the output of both pre-norms of block l by 1/sqrt(l), in place; returns `model`.

    Works on every family `layerwise_core.find_decoder` supports that has pre-norms (Llama,
    Mistral, Qwen2/3, Gemma/2/3, Phi3, GPT-2, GPT-NeoX, Mixtral, Qwen2/3-MoE, LLaDA-style).
    HF-style RMSNorms use the fused `layerwise_kernels.rms_norm(x, w, eps, scale)` op (Triton on
    CUDA); other norms get their output multiplied by the constant. State-dict keys are unchanged;
    the scheme is recorded in `model.config.layernorm_scaling`, and `save_pretrained` writes model
    type "ln_scaling", so the Auto classes reload it scaled once `ln_scaling` is imported.
    Blocks turned into Post-LN by `apply_mix_ln` have no pre-norm and are left as they are.

    Raises:
        ValueError: if the model is already scaled, or has no pre-norms (e.g. OLMo2, post-norm).
    """
    if is_layernorm_scaled(model):
        raise ValueError(
            "LayerNorm scaling is already applied to this model; call "
            "ln_scaling.remove_layernorm_scaling(model) first to re-apply it"
        )
    dmap = decoder_map or find_decoder(model)
    if all(layer.attn_norm is None and layer.mlp_norm is None for layer in dmap):
        raise ValueError(
            f"LayerNorm scaling scales pre-norms, and {dmap.family!r} blocks have none "
            "(it normalises sublayer outputs); pass find_decoder(..., attn_norm=..., mlp_norm=...) "
            "naming the norms to scale"
        )
    for layer in dmap:
        if getattr(layer.block, "_mix_ln_post", False):
            continue
        scale = layernorm_scale(layer.index)
        for norm in {id(n): n for n in (layer.attn_norm, layer.mlp_norm) if n is not None}.values():
            _scale_norm(norm, scale)
    config = getattr(model, "config", None)
    if config is not None:
        setattr(config, CONFIG_KEY, True)
        record_scheme(config)
    return model


def remove_layernorm_scaling(model: nn.Module) -> nn.Module:
    """Undo `apply_layernorm_scaling` in place; returns `model`."""
    if not is_layernorm_scaled(model):
        raise ValueError("remove_layernorm_scaling: LayerNorm scaling is not applied to this model")
    for module in model.modules():
        if hasattr(module, "_lns_scale"):
            _unscale_norm(module)
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, CONFIG_KEY):
        delattr(config, CONFIG_KEY)
        record_scheme(config)
    return model

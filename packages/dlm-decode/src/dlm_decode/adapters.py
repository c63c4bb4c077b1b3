"""One interface over masked diffusion LMs: logits for every position, bidirectional attention.

A masked diffusion LM (MDM) predicts, at every position of a partly masked sequence x, a
distribution over the clean token. Two conventions exist:

- LLaDA-style (Nie et al., arXiv:2502.09992): the output at position i scores token i
  (`logit_shift = 0`).
- Dream-style (Ye et al., "Dream 7B", arXiv:2508.15487): the network keeps the next-token head of
  the autoregressive model it starts from, so the output at position i scores token i + 1 and the
  sampler shifts it right by one (`logit_shift = 1`):

      aligned[:, 0] = raw[:, 0],   aligned[:, i] = raw[:, i - 1]   (i >= 1)

`MaskedDiffusionLM.logits(x, attention_mask)` always returns *aligned* logits, so every sampler
reads "position i scores token i". Prompts of a batch are left-padded; `attention_mask` (B, L) marks
real tokens with 1. Padding keys are masked out and position ids count real tokens only, so a
left-padded row sees the positions it would see alone.

Call styles: "hf" (a transformers class whose backbone takes a 4-D mask and a KV cache: Llama/Qwen2
test models and the native `dlm_decode.models` LLaDA/Dream classes), "llada" / "dream" (the released
remote code, loaded with `trust_remote_code=True`), "diffusion_gemma" (transformers'
`DiffusionGemmaForBlockDiffusion`: block-causal, uniform-noise; see `dlm_decode.diffusion_gemma`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = [
    "DREAM_SPECIAL_IDS",
    "LLADA_SPECIAL_IDS",
    "MaskedDiffusionLM",
    "align_logits",
    "as_masked_diffusion_lm",
    "is_native",
    "load_masked_diffusion_lm",
    "position_ids_from_mask",
]

# Special ids of the released checkpoints (GSAI-ML/LLaDA-8B-*, Dream-org/Dream-v0-*-7B).
LLADA_SPECIAL_IDS = {"mask": 126336, "eos": 126081, "eot": 126348, "bos": 126080}
DREAM_SPECIAL_IDS = {"mask": 151666, "eos": 151643, "eot": 151645}
_KNOWN = {"llada": (LLADA_SPECIAL_IDS, 0), "Dream": (DREAM_SPECIAL_IDS, 1)}
_REMOTE_STYLE = {"llada": "llada", "Dream": "dream"}  # the released remote code's call styles
_NATIVE_MODULE = "dlm_decode.models."


def is_native(model: nn.Module) -> bool:
    """True for the native classes of `dlm_decode.models` (transformers-style backbones that take a
    4-D mask and a KV cache, call style "hf"), False for the released remote code of the same model
    types. A class says so with `_dlm_native = True`, or by living in `dlm_decode.models`."""
    flag = getattr(type(model), "_dlm_native", None)
    if flag is not None:
        return bool(flag)
    return type(model).__module__.startswith(_NATIVE_MODULE)


def align_logits(raw: torch.Tensor, logit_shift: int) -> torch.Tensor:
    """Logits where position i scores token i: Dream's `cat([raw[:, :1], raw[:, :-1]], 1)` for a
    shift of 1, `raw` itself for a shift of 0."""
    if logit_shift == 0:
        return raw
    if logit_shift == 1:
        return torch.cat([raw[:, :1], raw[:, :-1]], dim=1)
    raise ValueError(f"logit_shift must be 0 (LLaDA-style) or 1 (Dream-style), got {logit_shift}")


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that count real tokens only: cumsum(mask) - 1, with padding set to 0."""
    mask = attention_mask.long()
    return (mask.cumsum(-1) - 1).clamp_(min=0).masked_fill_(mask == 0, 0)


def _has_padding(attention_mask: torch.Tensor | None) -> bool:
    return attention_mask is not None and bool((attention_mask == 0).any())


@dataclass
class MaskedDiffusionLM:
    """A masked diffusion LM and the few facts a sampler needs about it.

    Build one with `as_masked_diffusion_lm(model)`; fields are public so that unusual checkpoints
    can be described by hand.
    """

    model: nn.Module
    mask_token_id: int  # id of [MASK]
    logit_shift: int = 0  # 0: LLaDA-style, 1: Dream-style (output i scores token i + 1)
    call_style: str = "hf"  # "hf", "llada" / "dream" (remote code), "diffusion_gemma"
    eos_token_id: int | None = None  # end of text (LLaDA 126081, Dream 151643)
    eot_token_id: int | None = None  # end of turn (LLaDA 126348, Dream <|im_end|> 151645)
    # Block-causal models (DiffusionGemma): the model's block (canvas) length; blocks are aligned to
    # the end of the sequence, so gen_length must be a multiple of it. None: fully bidirectional.
    block_size: int | None = None
    # DiffusionGemma has no [MASK]: masked positions are fed as uniform-noise tokens drawn with this
    # seed (fixed per absolute position); None draws fresh noise from torch's RNG at every call.
    noise_seed: int | None = 0

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def supports_kv_cache(self) -> bool:
        """True for transformers decoders whose backbone takes a KV cache and a 4-D mask
        (Llama/Qwen2 families, the tiny test models, the native LLaDA/Dream): what Fast-dLLM's
        caches and Elastic-Cache's layer-by-layer runner need. False for DiffusionGemma, whose
        encoder/decoder pair takes Fast-dLLM's caches through `dlm_decode.diffusion_gemma`."""
        return (
            self.call_style == "hf"
            and hasattr(self.model, "get_decoder")
            and self.model.get_output_embeddings() is not None
        )

    def raw_logits(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None):
        """The model's own output logits (not aligned) for token ids x (B, L)."""
        padded = _has_padding(attention_mask)
        if self.call_style == "diffusion_gemma":
            from dlm_decode.diffusion_gemma import block_causal_logits

            return block_causal_logits(self, x, attention_mask if padded else None)
        if self.call_style == "dream":
            # Dream's remote code takes (input_ids, attention_mask, position_ids) positionally and
            # either the string "full" or a 4-D bool mask (query AND key are real tokens).
            if not padded:
                return self.model(x, "full", None).logits
            keys = attention_mask.bool()
            mask4d = keys[:, None, None, :] & keys[:, None, :, None]
            tok_idx = (attention_mask.long().cumsum(-1) - 1).masked_fill_(attention_mask == 0, 1)
            return self.model(x, mask4d, tok_idx).logits
        if self.call_style == "llada":
            # LLaDA's remote code under transformers 5 needs both flags passed explicitly.
            kwargs: dict[str, Any] = {"use_cache": False, "return_dict": True}
            if attention_mask is not None:
                kwargs["attention_mask"] = attention_mask
            return self.model(x, **kwargs).logits
        kwargs = {}
        if attention_mask is not None:
            kwargs["attention_mask"] = attention_mask
            if padded:
                kwargs["position_ids"] = position_ids_from_mask(attention_mask)
        return self.model(input_ids=x, **kwargs).logits

    def logits(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Aligned logits (B, L, V): position i scores token i, whatever the model's convention."""
        return align_logits(self.raw_logits(x, attention_mask), self.logit_shift)


def _config_int(config: Any, name: str) -> int | None:
    value = getattr(config, name, None)
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    return int(value) if isinstance(value, int) else None


def as_masked_diffusion_lm(
    model: nn.Module | MaskedDiffusionLM,
    *,
    mask_token_id: int | None = None,
    logit_shift: int | None = None,
    eos_token_id: int | None = None,
    eot_token_id: int | None = None,
) -> MaskedDiffusionLM:
    """Describe `model` for the samplers; explicit arguments win over what the config says.

    Read from the config: `mask_token_id`, `logit_shift` (the tiny models of layerwise_core, the
    native `dlm_decode.models` classes and any checkpoint that stores them), else the released
    LLaDA (`model_type == "llada"`: mask 126336, no shift) and Dream (`"Dream"`: mask 151666,
    shift 1) conventions. The native LLaDA/Dream classes get call style "hf" (their backbones take
    the KV caches); the released remote code of the same model types keeps "llada" / "dream".
    transformers' DiffusionGemma (`model_type == "diffusion_gemma"`) is described by
    `dlm_decode.diffusion_gemma.describe` (no [MASK]: a sentinel id past the vocabulary).
    """
    if isinstance(model, MaskedDiffusionLM):
        return model
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type == "diffusion_gemma":
        from dlm_decode.diffusion_gemma import describe

        return describe(
            model,
            mask_token_id=mask_token_id,
            logit_shift=logit_shift,
            eos_token_id=eos_token_id,
            eot_token_id=eot_token_id,
        )
    native = is_native(model)
    known_ids, known_shift = _KNOWN.get(model_type, ({}, None))
    mask = mask_token_id
    if mask is None:
        mask = _config_int(config, "mask_token_id")
    if mask is None:
        mask = known_ids.get("mask")
    if mask is None:
        raise ValueError(
            f"cannot tell the [MASK] id of a model of type {model_type!r}: pass "
            "mask_token_id=... (LLaDA uses 126336, Dream 151666) or set config.mask_token_id"
        )
    shift = logit_shift
    if shift is None:
        shift = getattr(config, "logit_shift", None)
    if shift is None:
        shift = known_shift
    if shift is None:
        raise ValueError(
            f"cannot tell whether a model of type {model_type!r} shifts its logits: pass "
            "logit_shift=0 (LLaDA-style, output i scores token i) or logit_shift=1 (Dream-style, "
            "output i scores token i + 1), or set config.logit_shift"
        )
    eos, eot = eos_token_id, eot_token_id
    if native:  # a native config states its own ids; the released ones fill what it leaves out
        if eos is None:
            eos = _config_int(config, "eos_token_id")
        if eot is None:
            eot = _config_int(config, "eot_token_id")
    if eos is None:
        eos = known_ids.get("eos", _config_int(config, "eos_token_id"))
    if eot is None:
        eot = known_ids.get("eot")
    style = "hf" if native else _REMOTE_STYLE.get(model_type, "hf")
    align_logits(torch.zeros(1, 1, 1), int(shift))  # validates the shift
    return MaskedDiffusionLM(model, int(mask), int(shift), style, eos, eot)


def load_masked_diffusion_lm(
    name_or_path: str,
    *,
    trust_remote_code: bool = False,
    dtype: torch.dtype | str | None = None,
    device: str | torch.device | None = None,
    **adapter_kwargs: Any,
) -> MaskedDiffusionLM:
    """Load a masked diffusion LM with transformers' `AutoModel` and describe it.

    LLaDA and Dream checkpoints load into the native `dlm_decode.models` classes (registered with
    the Auto classes under "llada" / "Dream"; no remote code). `trust_remote_code=True` runs the
    checkpoint's own modeling files instead (they target transformers 4.x, see the README).
    DiffusionGemma checkpoints load as `DiffusionGemmaForBlockDiffusion` (AutoModel alone would give
    the head-less `DiffusionGemmaModel`). The bidirectional Llama of layerwise_core is registered
    with AutoConfig/AutoModel before loading.
    """
    from transformers import AutoConfig, AutoModel

    import dlm_decode.models.dream
    import dlm_decode.models.llada  # noqa: F401  (register "llada" / "Dream" with the Auto classes)
    from layerwise_core import tiny_models

    _ = tiny_models.BidirectionalLlamaConfig  # registers layerwise's bidirectional Llama
    loader: Any = AutoModel
    config = AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    if getattr(config, "model_type", None) == "diffusion_gemma":
        from transformers import DiffusionGemmaForBlockDiffusion

        loader = DiffusionGemmaForBlockDiffusion
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if dtype is not None:
        kwargs["dtype"] = dtype
    model = loader.from_pretrained(name_or_path, **kwargs)
    if device is not None:
        model = model.to(device)
    return as_masked_diffusion_lm(model.eval(), **adapter_kwargs)

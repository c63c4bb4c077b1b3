"""A masked-diffusion LM with Llama blocks: the model `layerwise pretrain objective=mdm` trains and
the LLaDA- / Dream-like test models of `layerwise_core.tiny_models` are made of.

Attention is bidirectional (a 4-D all-True, key-padding aware mask), so the logits at position i
see every token; `config.logit_shift` says whether they score token i (0, LLaDA) or i+1 (1, Dream).

Importing this module registers model type "layerwise_bidirectional_llama" with `AutoConfig`,
`AutoModel` and `AutoModelForMaskedLM`, so a saved model reloads in a fresh process with its
attention intact:

    import layerwise_core.bidirectional_llama  # or layerwise_core.load_pretrained(path)
    model = AutoModelForMaskedLM.from_pretrained(path)

Needs transformers (the `hf` extra of layerwise-core).
"""

from __future__ import annotations

import torch
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForMaskedLM,
    LlamaConfig,
    LlamaForCausalLM,
)

from layerwise_core.hf_cache import additive_mask

__all__ = ["MODEL_TYPE", "BidirectionalLlamaConfig", "BidirectionalLlamaForMaskedDiffusion"]

MODEL_TYPE = "layerwise_bidirectional_llama"


class BidirectionalLlamaConfig(LlamaConfig):
    """Llama config + the two facts a masked-diffusion sampler needs."""

    model_type = MODEL_TYPE

    def __init__(self, mask_token_id: int | None = None, logit_shift: int = 0, **kwargs):
        self.mask_token_id = mask_token_id  # id of the [MASK] token
        self.logit_shift = logit_shift  # 0: LLaDA-like, 1: Dream-like (position i scores i+1)
        super().__init__(**kwargs)


class BidirectionalLlamaForMaskedDiffusion(LlamaForCausalLM):
    """Llama with full (bidirectional) attention; padding keys are masked out."""

    config_class = BidirectionalLlamaConfig

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None, **kwargs):
        ref = input_ids if input_ids is not None else inputs_embeds
        batch, length = ref.shape[0], ref.shape[1]
        if attention_mask is None or attention_mask.dim() == 2:
            keys = (
                torch.ones(batch, length, dtype=torch.bool, device=ref.device)
                if attention_mask is None
                else attention_mask.bool()
            )
            attention_mask = keys[:, None, None, :].expand(batch, 1, length, length)
        if attention_mask.dtype == torch.bool and self.config._attn_implementation == "eager":
            # transformers' eager attention adds the mask to the scores: a bool mask would add
            # 1 / 0 instead of masking padding keys out, so it becomes 0 / finfo.min here.
            attention_mask = additive_mask(attention_mask, self.model.embed_tokens.weight.dtype)
        kwargs.pop("use_cache", None)
        return super().forward(
            input_ids=input_ids,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            use_cache=False,
            **kwargs,
        )


AutoConfig.register(MODEL_TYPE, BidirectionalLlamaConfig, exist_ok=True)
AutoModel.register(BidirectionalLlamaConfig, BidirectionalLlamaForMaskedDiffusion, exist_ok=True)
AutoModelForMaskedLM.register(
    BidirectionalLlamaConfig, BidirectionalLlamaForMaskedDiffusion, exist_ok=True
)

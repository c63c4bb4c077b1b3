"""Dream as a native transformers model: no `trust_remote_code`, loadable by `AutoModel` and
`AutoModelForCausalLM`.

Dream 7B (Ye et al., arXiv:2508.15487; checkpoints `Dream-org/Dream-v0-{Base,Instruct}-7B`) is a
Qwen2.5-7B turned into a masked diffusion LM: the same weights and parameter names, attention made
bidirectional, and the next-token head kept, so the logits at position i score token i + 1
(`config.logit_shift = 1`; `dlm_decode.adapters.align_logits` shifts them back). The released
code is remote code written for transformers 4.x (`configuration_dream.py`, `modeling_dream.py` on
the hub); it does not load with `AutoModelForCausalLM` (DreamLM/Dream#39). This module rebuilds it
from transformers' own Qwen2 modules:

- `DreamConfig`: model type "Dream", the Qwen2 keys of the released `config.json` (`rope_theta`,
  `rope_scaling` included) plus `mask_token_id` (151666) and `logit_shift` (1).
- `DreamBaseModel`: `Qwen2Model` whose attention is not causal. Its `forward` takes the same masks
  as the released one: none or the string "full" (every token sees every token), a 2-D padding
  mask (B, L) (1 = real token; turned into a 4-D mask where query AND key are real, and, when no
  `position_ids` are given, positions that count real tokens only), or a 4-D mask (B, 1, Q, K)
  (bool: True = attend; float: additive). `position_ids` are the released `tok_idx`. A cache with
  `update(k, v, layer_idx, ...)` is used as given (Fast-dLLM's block caches; `dlm_decode.kv_cache`).
- `DreamModel`: the released class name; `model` (a `DreamBaseModel`) + `lm_head`, with the
  checkpoint's parameter names (`model.embed_tokens`, `model.layers.{i}.self_attn.{q,k,v,o}_proj`
  (q/k/v with bias), `model.layers.{i}.mlp.{gate,up,down}_proj`, `input_layernorm`,
  `post_attention_layernorm`, `model.norm`, `lm_head`). It takes the released positional order
  `model(input_ids, attention_mask, position_ids)`.

Importing the module registers "Dream" with `AutoConfig`, `AutoModel`, `AutoModelForCausalLM` and
`AutoModelForMaskedLM`. A released checkpoint folder then loads without remote code (its `auto_map`
is ignored because the model type is known):

    import dlm_decode.models.dream  # or: import dlm_decode
    model = AutoModel.from_pretrained("Dream-org/Dream-v0-Instruct-7B", dtype=torch.bfloat16)
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    Qwen2Config,
)
from transformers.cache_utils import Cache
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.models.qwen2.modeling_qwen2 import (
    Qwen2DecoderLayer,
    Qwen2Model,
    Qwen2PreTrainedModel,
)
from transformers.utils.generic import can_return_tuple
from transformers.utils.output_capturing import capture_outputs

from dlm_decode.adapters import position_ids_from_mask
from layerwise_core.hf_cache import additive_mask, cache_keyword

__all__ = ["MODEL_TYPE", "DreamBaseModel", "DreamConfig", "DreamModel", "bidirectional_mask"]

MODEL_TYPE = "Dream"  # the released config.json's model_type (capital D)


@strict
class DreamConfig(Qwen2Config):
    """The released Dream configuration: Qwen2's keys, no KV cache by default, and the two facts a
    masked-diffusion sampler needs.

    `mask_token_id`: id of [MASK] (151666 in the released tokenizer). `logit_shift`: 1, the logits
    at position i score token i + 1. `pad_token_id` defaults to the released 151643. `rope_theta`
    and `rope_scaling` of a released `config.json` are read into `rope_parameters` (transformers 5)
    and `rope_theta` is written back on save, so the released remote code can read the folder too.
    """

    model_type = MODEL_TYPE
    use_cache: bool = False  # a diffusion model keeps no cache between calls
    pad_token_id: int | None = 151643
    mask_token_id: int | None = 151666
    logit_shift: int = 1

    def to_dict(self) -> dict[str, Any]:
        """The config as a dict, with the released `rope_theta` beside `rope_parameters`."""
        out = super().to_dict()
        rope = out.get("rope_parameters") or {}
        if rope.get("rope_type", "default") == "default" and "rope_theta" in rope:
            out["rope_theta"] = rope["rope_theta"]
        return out


def bidirectional_mask(
    attention_mask: torch.Tensor | str | None,
    query_length: int,
    key_length: int,
    dtype: torch.dtype,
    additive: bool,
) -> torch.Tensor | None:
    """The 4-D mask the attention layers get, from any mask the released Dream forward accepts.

    None or "full": None (full bidirectional attention). A 2-D padding mask (B, L): None when it has
    no padding, else the bool mask `key & query` (B, 1, L, L) (only `key` when the queries are
    fewer than the keys, as in a cached pass). A 4-D mask (B, 1, Q or 1, K): as given.
    `additive=True` (eager attention) turns a bool mask into 0 / dtype-min; SDPA takes the bool
    mask itself. Without a cache the keys are the queries; with one, the mask says how many.
    """
    if attention_mask is None or isinstance(attention_mask, str):
        if attention_mask not in (None, "full"):
            raise ValueError(
                f'attention_mask must be None, "full", a 2-D padding mask (B, L) or a 4-D mask '
                f"(B, 1, Q, K); got the string {attention_mask!r}"
            )
        return None
    if attention_mask.dim() == 2:
        if attention_mask.shape[-1] != key_length:
            raise ValueError(
                f"the 2-D attention_mask covers {attention_mask.shape[-1]} tokens but the keys are "
                f"{key_length}: pass one mask entry per token (1 = real, 0 = padding)"
            )
        keys = attention_mask.bool()
        if bool(keys.all()):
            return None
        mask = keys[:, None, None, :]
        if query_length == key_length:
            mask = mask & keys[:, None, :, None]
        else:
            mask = mask.expand(-1, 1, query_length, -1)
    elif attention_mask.dim() == 4:
        if (
            attention_mask.shape[-2] not in (1, query_length)
            or attention_mask.shape[-1] != key_length
        ):
            raise ValueError(
                f"the 4-D attention_mask is {tuple(attention_mask.shape)} but the attention is "
                f"{query_length} queries x {key_length} keys: pass (B, 1, {query_length}, "
                f"{key_length})"
            )
        mask = attention_mask
    else:
        raise ValueError(
            f"attention_mask must be 2-D (B, L) padding or 4-D (B, 1, Q, K); got shape "
            f"{tuple(attention_mask.shape)}"
        )
    if additive and mask.dtype == torch.bool:
        return additive_mask(mask, dtype)
    return mask


class DreamPreTrainedModel(Qwen2PreTrainedModel):
    """Qwen2's pretrained-model base with the Dream config; SDPA and eager attention."""

    config_class = DreamConfig
    config: DreamConfig
    _supports_flash_attn = False  # the masks are 4-D and bidirectional
    _supports_flex_attn = False
    _can_compile_fullgraph = False  # the mask is built from data (padding or not)


class DreamBaseModel(DreamPreTrainedModel, Qwen2Model):
    """Qwen2 decoder with bidirectional attention (the released `DreamBaseModel`).

    Same submodules as `Qwen2Model` (`embed_tokens`, `layers`, `norm`, `rotary_emb`) and the same
    call (`input_ids`, `attention_mask`, `position_ids`, `past_key_values`, `use_cache`), so code
    written for transformers' Llama/Qwen2 backbones (Fast-dLLM caches, layer hooks) runs unchanged.
    """

    def __init__(self, config: DreamConfig):
        Qwen2Model.__init__(self, config)
        for layer in self.layers:
            layer.self_attn.is_causal = False
        # the layers' name for the cache (`cache` from transformers 5.25, `past_key_values` before)
        self._layer_cache_keyword = cache_keyword(Qwen2DecoderLayer.forward)

    @capture_outputs
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | str | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs: Any,
    ) -> BaseModelOutputWithPast:
        """Last hidden states (B, L, H) after the final norm.

        `past_key_values`: a cache whose `update(k, v, layer_idx, ...)` returns the keys/values to
        attend to (keys after RoPE, (B, n_kv_heads, T, head_dim)); it is used as given and never
        created here (`use_cache` without a cache does nothing: a diffusion step re-reads every
        token). Keys then may outnumber queries; pass a 4-D mask (B, 1, Q, K) for them.
        """
        if (input_ids is None) ^ (inputs_embeds is not None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        kwargs.pop("cache_position", None)  # positions come from position_ids only
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        length = inputs_embeds.shape[1]
        # keys: the queries themselves, or (with a cache) whatever the mask covers
        key_length = length
        if past_key_values is not None and isinstance(attention_mask, torch.Tensor):
            key_length = attention_mask.shape[-1]
        if position_ids is None:
            if isinstance(attention_mask, torch.Tensor) and attention_mask.dim() == 2:
                position_ids = position_ids_from_mask(attention_mask)[:, -length:]
            else:
                position_ids = torch.arange(length, device=inputs_embeds.device)[None]
        mask = bidirectional_mask(
            attention_mask,
            length,
            key_length,
            inputs_embeds.dtype,
            additive=self.config._attn_implementation == "eager",
        )
        hidden_states = inputs_embeds
        position_embeddings = self.rotary_emb(hidden_states, position_ids)
        for layer in self.layers[: self.config.num_hidden_layers]:
            hidden_states = layer(
                hidden_states,
                attention_mask=mask,
                position_embeddings=position_embeddings,
                position_ids=position_ids,
                use_cache=use_cache,
                **{self._layer_cache_keyword: past_key_values},
                **kwargs,
            )
        hidden_states = self.norm(hidden_states)
        return BaseModelOutputWithPast(
            last_hidden_state=hidden_states,
            past_key_values=past_key_values if use_cache else None,
        )


class DreamModel(DreamPreTrainedModel):
    """Dream masked diffusion LM: `DreamBaseModel` + `lm_head` (the released class and names).

    The logits are the raw next-token logits: position i scores token i + 1
    (`config.logit_shift == 1`); `dlm_decode.adapters.align_logits(logits, 1)` aligns them.
    """

    _tied_weights_keys: ClassVar[dict[str, str]] = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: DreamConfig):
        super().__init__(config)
        self.model = DreamBaseModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, new_embeddings: nn.Linear) -> None:
        self.lm_head = new_embeddings

    def get_decoder(self) -> DreamBaseModel:
        return self.model

    def set_decoder(self, decoder: DreamBaseModel) -> None:
        self.model = decoder

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | str | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        """Raw (shifted) logits (B, L, V) for `input_ids`; positional order as released:
        `model(input_ids, attention_mask, position_ids)`.

        `labels` (B, L), -100 where not scored, give the next-token cross-entropy transformers
        computes for causal LMs, which matches the shifted head (output i scores token i + 1).
        The released `num_logits_to_keep` is accepted for `logits_to_keep`.
        """
        logits_to_keep = kwargs.pop("num_logits_to_keep", logits_to_keep)
        for patched in ("dual_cache", "replace_position"):  # Fast-dLLM's patched Dream only
            if kwargs.pop(patched, None):
                raise ValueError(
                    f"{patched} belongs to Fast-dLLM's patched Dream: decode with dlm_decode's "
                    "FastDLLM strategy (cache='dual') instead"
                )
        outputs: BaseModelOutputWithPast = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        hidden_states = outputs.last_hidden_state[:, keep, :]  # 0: every position
        logits = self.lm_head(hidden_states)
        loss = None
        if labels is not None:
            loss = self.loss_function(
                logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs
            )
        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            past_key_values=outputs.past_key_values,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )


AutoConfig.register(MODEL_TYPE, DreamConfig, exist_ok=True)
AutoModel.register(DreamConfig, DreamModel, exist_ok=True)
AutoModelForCausalLM.register(DreamConfig, DreamModel, exist_ok=True)
AutoModelForMaskedLM.register(DreamConfig, DreamModel, exist_ok=True)

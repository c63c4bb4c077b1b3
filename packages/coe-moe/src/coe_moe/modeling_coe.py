"""CoE decoder: a Llama model whose MLP is a Chain-of-Experts layer; only the differences are here.

From Llama (transformers) unchanged: grouped-query attention with RoPE (`LlamaAttention`,
`LlamaRotaryEmbedding`), `LlamaRMSNorm`, the causal mask, the KV cache, the LM loss. What differs
(Wang et al., "Chain-of-Experts", arXiv 2506.18945):

    h   = x + Attn(RMSNorm_in(x))                   as in Llama
    out = CoE(RMSNorm_post(h))   (+ h only with outer_residual)        Llama: h + MLP(RMSNorm_post(h))

and the loss: in training mode the sequence-level load-balancing loss of every router call
(layers x iterations), times `aux_loss_coef`, is added to the LM loss.

The KV cache: transformers 5.25 renamed the argument `past_key_values` to `cache` in its models,
attention modules, mask functions and outputs. The CoE models take either name, and hand the cache
to each transformers callable under the name that callable takes (`cache_keyword`), so cached
generation is the same on both sides of the rename.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn
from transformers import GenerationConfig, GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache
from transformers.masking_utils import create_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import MoeCausalLMOutputWithPast, MoeModelOutputWithPast
from transformers.models.llama.modeling_llama import (
    LlamaAttention,
    LlamaRMSNorm,
    LlamaRotaryEmbedding,
)
from transformers.utils import can_return_tuple

from coe_moe.chain_of_experts import CoEExperts, CoELayer
from coe_moe.configuration_coe import CoEConfig
from coe_moe.routing import CoERouter, load_balancing_loss
from layerwise_core.hf_cache import cache_keyword

__all__ = ["CoEDecoderLayer", "CoEForCausalLM", "CoEModel", "CoEPreTrainedModel"]

# The name under which the installed transformers' callables take / return the KV cache.
_LAYER_CACHE = cache_keyword(LlamaAttention.forward)  # also what gradient checkpointing clears
_MASK_CACHE = cache_keyword(create_causal_mask)
_MODEL_OUTPUT_CACHE = cache_keyword(MoeModelOutputWithPast)
_LM_OUTPUT_CACHE = cache_keyword(MoeCausalLMOutputWithPast)


def _one_cache(cache: Cache | None, past_key_values: Cache | None) -> Cache | None:
    """The KV cache, passed as `cache` (transformers >= 5.25's name) or `past_key_values`."""
    if cache is not None and past_key_values is not None and cache is not past_key_values:
        raise ValueError(
            "two KV caches were passed: give it once, as `cache` (transformers >= 5.25) or as "
            "`past_key_values` (older transformers)"
        )
    return cache if cache is not None else past_key_values


class CoEDecoderLayer(GradientCheckpointingLayer):
    """Llama block with `mlp` = `CoELayer` and the residual around it only if `outer_residual`."""

    def __init__(self, config: CoEConfig, layer_idx: int) -> None:
        super().__init__()
        self.self_attn = LlamaAttention(config=config, layer_idx=layer_idx)
        self.mlp = CoELayer.from_config(config)
        self.input_layernorm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.outer_residual = config.outer_residual

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        output_router_logits: bool = False,
        **kwargs,
    ) -> torch.Tensor | tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """`kwargs` (position_ids, use_cache, the KV cache under the installed transformers' name)
        go to `LlamaAttention` as they are."""
        residual = hidden_states
        hidden_states, _ = self.self_attn(
            hidden_states=self.input_layernorm(hidden_states),
            attention_mask=attention_mask,
            position_embeddings=position_embeddings,
            **kwargs,
        )
        h = residual + hidden_states
        out, router_logits = self.mlp(self.post_attention_layernorm(h), output_router_logits=True)
        if self.outer_residual:
            out = h + out
        return (out, router_logits) if output_router_logits else out


class CoEPreTrainedModel(PreTrainedModel):
    config_class = CoEConfig
    config: CoEConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules: ClassVar[list[str]] = ["CoEDecoderLayer"]
    _skip_keys_device_placement: ClassVar[list[str]] = ["cache", "past_key_values"]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = False  # token counts per expert are data-dependent

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Llama's init (N(0, initializer_range) matrices, unit norms) plus experts and routers."""
        super()._init_weights(module)
        std = self.config.initializer_range
        if isinstance(module, CoEExperts):
            init.normal_(module.gate_up_proj, mean=0.0, std=std)
            init.normal_(module.down_proj, mean=0.0, std=std)
        elif isinstance(module, CoERouter):
            init.normal_(module.weight, mean=0.0, std=std)


class CoEModel(CoEPreTrainedModel):
    """Embeddings, `num_hidden_layers` CoE decoder blocks, final RMSNorm (LlamaModel's layout)."""

    def __init__(self, config: CoEConfig) -> None:
        super().__init__(config)
        self.padding_idx = config.pad_token_id
        self.vocab_size = config.vocab_size
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList(
            CoEDecoderLayer(config, layer_idx) for layer_idx in range(config.num_hidden_layers)
        )
        self.norm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = LlamaRotaryEmbedding(config=config)
        self.gradient_checkpointing = False
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        output_router_logits: bool | None = None,
        past_key_values: Cache | None = None,
        **kwargs,
    ) -> MoeModelOutputWithPast:
        """As `LlamaModel.forward`; `router_logits` holds layers x iterations tensors [B*T, E]
        (layer-major) when `output_router_logits`. The KV cache comes as `cache` or as
        `past_key_values` (the name generate() of transformers < 5.25 uses)."""
        cache = _one_cache(cache, past_key_values)
        if (input_ids is None) ^ (inputs_embeds is not None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        if output_router_logits is None:
            output_router_logits = self.config.output_router_logits
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        if use_cache is None:
            use_cache = self.config.use_cache
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        if position_ids is None:
            past_seen = cache.get_seq_length() if cache is not None else 0
            position_ids = torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device)
            position_ids = (position_ids + past_seen).unsqueeze(0)

        causal_mask = create_causal_mask(
            config=self.config,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            **{_MASK_CACHE: cache},
        )
        hidden_states = inputs_embeds
        position_embeddings = self.rotary_emb(hidden_states, position_ids=position_ids)
        all_hidden = [hidden_states] if output_hidden_states else None
        all_router_logits: list[torch.Tensor] = []
        for decoder_layer in self.layers[: self.config.num_hidden_layers]:
            out = decoder_layer(
                hidden_states,
                attention_mask=causal_mask,
                position_embeddings=position_embeddings,
                position_ids=position_ids,
                use_cache=use_cache,
                output_router_logits=output_router_logits,
                **{_LAYER_CACHE: cache},
                **kwargs,
            )
            if output_router_logits:
                hidden_states, router_logits = out
                all_router_logits.extend(router_logits)
            else:
                hidden_states = out
            if all_hidden is not None:
                all_hidden.append(hidden_states)
        hidden_states = self.norm(hidden_states)
        if all_hidden is not None:
            all_hidden[-1] = hidden_states  # transformers' convention: the last one is normed
        return MoeModelOutputWithPast(
            last_hidden_state=hidden_states,
            **{_MODEL_OUTPUT_CACHE: cache if use_cache else None},
            hidden_states=tuple(all_hidden) if all_hidden is not None else None,
            router_logits=tuple(all_router_logits) if output_router_logits else None,
        )


class CoEGenerationConfig(GenerationConfig):
    """The generation config of a CoE model: built from the model config without `top_k`.

    transformers copies model-config fields named like generation options into the generation
    config; the number of experts per token, `top_k`, must not become a sampling top-k.
    """

    @classmethod
    def from_model_config(cls, model_config) -> GenerationConfig:
        config_dict = model_config if isinstance(model_config, dict) else model_config.to_dict()
        config_dict = {k: v for k, v in config_dict.items() if k != "top_k"}
        return GenerationConfig.from_model_config(config_dict)


class CoEForCausalLM(CoEPreTrainedModel, GenerationMixin):
    """`CoEModel` + LM head. In training mode the loss is LM loss + alpha * sum of the
    sequence-level load-balancing losses of all router calls (`aux_loss` in the output)."""

    generation_config_class = CoEGenerationConfig
    _tied_weights_keys: ClassVar[dict[str, str]] = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: CoEConfig) -> None:
        super().__init__(config)
        self.model = CoEModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_router_logits: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        past_key_values: Cache | None = None,
        **kwargs,
    ) -> MoeCausalLMOutputWithPast:
        """As `LlamaForCausalLM.forward`, plus `aux_loss` and `router_logits`.

        Router logits (and with them `aux_loss`) are computed when `output_router_logits` is True,
        or when it is None and the model is in training mode with aux_loss_coef > 0 (or
        config.output_router_logits is set). `aux_loss` is added to `loss` in training mode only,
        so an eval-mode loss is the plain LM loss. The KV cache comes as `cache` or as
        `past_key_values` (the name generate() of transformers < 5.25 uses).
        """
        if output_router_logits is None:
            output_router_logits = self.config.output_router_logits or (
                self.training and self.config.aux_loss_coef > 0
            )
        outputs: MoeModelOutputWithPast = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=_one_cache(cache, past_key_values),
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_router_logits=output_router_logits,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden_states[:, keep, :])

        loss = None
        if labels is not None:
            loss = self.loss_function(
                logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs
            )
        aux_loss = None
        if output_router_logits:
            batch_size = hidden_states.shape[0]
            aux_loss = self.config.aux_loss_coef * sum(
                load_balancing_loss(logits_t, self.config.top_k, batch_size)
                for logits_t in outputs.router_logits
            )
            if loss is not None and self.training:
                loss = loss + aux_loss.to(loss.device)
        return MoeCausalLMOutputWithPast(
            loss=loss,
            aux_loss=aux_loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            router_logits=outputs.router_logits,
            **{_LM_OUTPUT_CACHE: outputs.get(_MODEL_OUTPUT_CACHE)},
        )

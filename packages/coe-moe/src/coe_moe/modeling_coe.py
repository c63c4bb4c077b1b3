"""CoE decoder: transformers' Mixtral model with a Chain-of-Experts MLP; only the differences are here.

Wang et al., "Chain-of-Experts", arXiv 2506.18945. Inherited from transformers unchanged: Llama's
grouped-query attention with RoPE (`LlamaAttention`, `LlamaRotaryEmbedding`) and `LlamaRMSNorm`;
`MixtralModel.forward` (embeddings, causal mask, KV cache, the decoder loop, the final norm, router
logits and hidden states recorded by hooks through `_can_record_outputs`); Mixtral's pre-trained
base (init, gradient checkpointing, attention backends). What differs:

    block    h = x + Attn(RMSNorm_in(x));  out = CoE(RMSNorm_post(h))  (+ h only with outer_residual)
             (Mixtral: out = h + MoE(RMSNorm_post(h)))
    routers  C per layer, one per iteration: `router_logits` holds layers x C tensors [B*T, E]
    loss     alpha * the sequence-level balance loss of every router call (DeepSeek-V2's seq_aux),
             added in training mode only (Mixtral: a batch-level Switch loss, added with labels)

The KV cache: transformers 5.25 renamed the argument `past_key_values` to `cache`. The CoE models
take either name and hand the cache to Mixtral's forward under the name it takes (`cache_keyword`),
so cached generation is the same on both sides of the rename.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn
from transformers import AutoModel, AutoModelForCausalLM, GenerationConfig
from transformers import initialization as init
from transformers.cache_utils import Cache
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import MoeCausalLMOutputWithPast, MoeModelOutputWithPast
from transformers.models.llama.modeling_llama import (
    LlamaAttention,
    LlamaDecoderLayer,
    LlamaRMSNorm,
    LlamaRotaryEmbedding,
)
from transformers.models.mixtral.modeling_mixtral import (
    MixtralForCausalLM,
    MixtralModel,
    MixtralPreTrainedModel,
)
from transformers.utils import can_return_tuple
from transformers.utils.output_capturing import OutputRecorder

from coe_moe.chain_of_experts import CoEExperts, CoELayer
from coe_moe.configuration_coe import CoEConfig
from coe_moe.routing import CoERouter, load_balancing_loss, router_z_loss
from layerwise_core.hf_cache import cache_keyword

__all__ = ["CoEDecoderLayer", "CoEForCausalLM", "CoEModel", "CoEPreTrainedModel"]

# The name under which the installed transformers takes / returns the KV cache.
_MODEL_CACHE = cache_keyword(MixtralModel.forward)
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


class CoEDecoderLayer(LlamaDecoderLayer):
    """Llama block with `mlp` = `CoELayer` and the residual around it only if `outer_residual`."""

    def __init__(self, config: CoEConfig, layer_idx: int) -> None:
        GradientCheckpointingLayer.__init__(self)  # not Llama's: it would build a dense MLP
        self.hidden_size = config.hidden_size
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
        **kwargs,
    ) -> torch.Tensor:
        """`kwargs` (position_ids, use_cache, the KV cache) go to `LlamaAttention` as they are."""
        residual = hidden_states
        hidden_states, _ = self.self_attn(
            hidden_states=self.input_layernorm(hidden_states),
            attention_mask=attention_mask,
            position_embeddings=position_embeddings,
            **kwargs,
        )
        h = residual + hidden_states
        out = self.mlp(self.post_attention_layernorm(h))  # Llama: h + mlp(...)
        return h + out if self.outer_residual else out


class CoEPreTrainedModel(MixtralPreTrainedModel):
    """Mixtral's base with CoE's experts and routers: N(0, initializer_range) like every matrix."""

    config_class = CoEConfig
    config: CoEConfig
    _no_split_modules: ClassVar[list[str]] = ["CoEDecoderLayer"]
    _skip_keys_device_placement: ClassVar[list[str]] = ["cache", "past_key_values"]
    _can_compile_fullgraph = False  # token counts per expert are data-dependent
    _can_record_outputs: ClassVar[dict] = {
        "router_logits": OutputRecorder(CoERouter, index=0),  # every call: C per layer, in order
        "hidden_states": CoEDecoderLayer,
        "attentions": LlamaAttention,
    }

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        std = self.config.initializer_range
        if isinstance(module, CoEExperts):
            init.normal_(module.gate_up_proj, mean=0.0, std=std)
            init.normal_(module.down_proj, mean=0.0, std=std)
        elif isinstance(module, CoERouter):
            init.normal_(module.weight, mean=0.0, std=std)


class CoEModel(CoEPreTrainedModel, MixtralModel):
    """`MixtralModel` with CoE decoder blocks (and Llama's norm and rotary embedding)."""

    def __init__(self, config: CoEConfig) -> None:
        CoEPreTrainedModel.__init__(self, config)  # not Mixtral's: it would build Mixtral blocks
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

    def forward(
        self, *args, cache: Cache | None = None, past_key_values: Cache | None = None, **kwargs
    ) -> MoeModelOutputWithPast:
        """`MixtralModel.forward` (same arguments), the KV cache given as `cache` or
        `past_key_values` whichever transformers is installed.

        `output_router_logits=True` (or config.output_router_logits) records the logits of every
        router call: layers x iterations tensors [B*T, E], layer-major.
        """
        cache = _one_cache(cache, past_key_values)
        if cache is not None:
            kwargs[_MODEL_CACHE] = cache
        return super().forward(*args, **kwargs)


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


class CoEForCausalLM(CoEPreTrainedModel, MixtralForCausalLM):
    """`CoEModel` + LM head. In training mode the loss is LM loss + alpha * sum of the
    sequence-level load-balancing losses of all router calls (`aux_loss` in the output)."""

    generation_config_class = CoEGenerationConfig

    def __init__(self, config: CoEConfig) -> None:
        CoEPreTrainedModel.__init__(self, config)  # not Mixtral's: it would build a MixtralModel
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
        """`MixtralForCausalLM.forward` with CoE's balance loss in place of Mixtral's.

        Router logits (and with them `aux_loss`) are computed when `output_router_logits` is True,
        or when it is None and the model is in training mode with aux_loss_coef > 0 or
        router_z_loss_coef > 0 (or config.output_router_logits is set). `aux_loss` =
        aux_loss_coef * the balance losses (per sequence, or over the batch with
        balance_scope="batch") + router_z_loss_coef * the router z-losses, each summed over
        router calls; it is added to `loss` in training mode only, so an eval-mode loss is the
        plain LM loss.
        """
        config = self.config
        if output_router_logits is None:
            output_router_logits = config.output_router_logits or (
                self.training and (config.aux_loss_coef > 0 or config.router_z_loss_coef > 0)
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
            # the batch-level (Switch / OLMoE) loss is the sequence-level one over one "sequence"
            groups = 1 if config.balance_scope == "batch" else hidden_states.shape[0]
            aux_loss = config.aux_loss_coef * sum(
                load_balancing_loss(logits_t, config.top_k, groups)
                for logits_t in outputs.router_logits
            )
            if config.router_z_loss_coef > 0:
                aux_loss = aux_loss + config.router_z_loss_coef * sum(
                    router_z_loss(logits_t) for logits_t in outputs.router_logits
                )
            if loss is not None and self.training:
                loss = loss + aux_loss.to(loss.device)
        return MoeCausalLMOutputWithPast(
            loss=loss,
            aux_loss=aux_loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            router_logits=outputs.router_logits,
            **{_LM_OUTPUT_CACHE: outputs.get(_MODEL_OUTPUT_CACHE)},
        )


AutoModel.register(CoEConfig, CoEModel, exist_ok=True)
AutoModelForCausalLM.register(CoEConfig, CoEForCausalLM, exist_ok=True)

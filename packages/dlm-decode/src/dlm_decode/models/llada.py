"""LLaDA, native to transformers: the released checkpoints load without `trust_remote_code`.

Nie et al., "Large Language Diffusion Models", arXiv:2502.09992. LLaDA-8B is a Llama-3-sized
Transformer *without* the causal mask, trained as a masked diffusion model: the output at position
i scores the clean token at position i (no logit shift). The released code (GSAI-ML/LLaDA-8B-*,
`modeling_llada.py`, OLMo-derived) differs from `LlamaForCausalLM` only in

- attention: bidirectional (`is_causal=False`); a padding mask hides padding keys;
- names: `model.transformer.{wte, blocks.i.{attn_norm, q_proj, k_proj, v_proj, attn_out, ff_norm,
  ff_proj, up_proj, ff_out}, ln_f, ff_out}` and the OLMo config keys (`d_model`, `n_heads`, ...);
- the MLP `ff_out(act(ff_proj(n)) * up_proj(n))`: `ff_proj` is Llama's gate, `up_proj` its up;
- RoPE (rotate-half layout, head_dim = d_model / n_heads) applied to q and k in fp32 when
  `rope_full_precision` (the released default), then cast back;
- the vocabulary padded to `embedding_size` rows (logits have `embedding_size` columns), and
  the output head tied to `wte` when `weight_tying`.

Everything else (RMSNorm in fp32 with `rms_norm_eps`, GQA when `n_kv_heads < n_heads`, the
1/sqrt(head_dim) scale) is Llama's. The backbone (`LLaDAModelLM.get_decoder()`) behaves like a
transformers 5.23 Llama backbone (`layers`, `rotary_emb`, `norm`, `embed_tokens`, a 4-D boolean
mask, a cache whose `update` gets post-RoPE keys), so `dlm_decode.kv_cache` works on it unchanged.

Importing this module registers model type "llada" with `AutoConfig`, `AutoModel`,
`AutoModelForCausalLM` and `AutoModelForMaskedLM`. A checkpoint folder whose config.json still
names the remote code in `auto_map` loads with the native classes when `trust_remote_code` is not
set (transformers prefers a registered local class).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    PreTrainedConfig,
    PreTrainedModel,
)
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

__all__ = ["LLaDAConfig", "LLaDAModel", "LLaDAModelLM"]

_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "silu": F.silu,
    "gelu": F.gelu,
    "relu": F.relu,
}


@strict
class LLaDAConfig(PreTrainedConfig):
    r"""Configuration of `LLaDAModelLM`: the keys of the released config.json, as they are.

    Defaults are GSAI-ML/LLaDA-8B-Instruct's config.json (keys it leaves out take the released
    `ModelConfig` defaults). Only what a forward pass reads is listed; the training-only keys
    (`init_*`, `precision`, `flash_attention`, `alibi_bias_max`, ...) are kept so that a saved
    config.json has the released keys.

    Args:
        d_model: hidden size.
        n_heads: query heads; head_dim = d_model // n_heads.
        n_kv_heads: key/value heads (GQA when < n_heads); None: n_heads (or 1 with
            `multi_query_attention`).
        n_layers: transformer blocks.
        mlp_ratio: MLP width = mlp_ratio * d_model when `mlp_hidden_size` is None.
        mlp_hidden_size: MLP width of `ff_proj` / `up_proj`.
        activation_type: activation applied to `ff_proj` ("silu" in LLaDA-8B; "gelu", "relu").
        block_type: "llama" (the only block of the released checkpoints).
        block_group_size: 1 (state-dict names of grouped blocks differ).
        alibi / rope: position encoding; LLaDA uses RoPE (rope=True, alibi=False).
        rope_full_precision: rotate q and k in fp32 whatever the activation dtype.
        rope_theta: RoPE base (500000 in LLaDA-8B).
        attention_dropout / residual_dropout / embedding_dropout: dropout in training mode.
        multi_query_attention: one key/value head (legacy switch beside `n_kv_heads`).
        attention_layer_norm: QK-norm (not in the released checkpoints; unsupported).
        input_emb_norm: scale the embeddings by sqrt(d_model).
        layer_norm_type: "rms" (the released checkpoints).
        layer_norm_with_affine: norms have a weight.
        rms_norm_eps: epsilon of every RMSNorm.
        max_sequence_length: longest sequence the model was trained for.
        include_bias: biases in every linear layer; include_qkv_bias: in q/k/v only.
        bias_for_layer_norm: biases in the norms; None: `include_bias`.
        scale_logits: multiply the logits by 1 / sqrt(d_model).
        vocab_size: tokens of the tokenizer.
        embedding_size: rows of `wte` (and logit columns), >= vocab_size; None: vocab_size.
        weight_tying: the output head is `wte` (no `model.transformer.ff_out` in the checkpoint).
        eos_token_id / pad_token_id / mask_token_id: special ids (LLaDA: 126081 / 126081 / 126336).
    """

    model_type = "llada"
    keys_to_ignore_at_inference: ClassVar[list[str]] = ["past_key_values"]
    # transformers' names for the OLMo keys (read and written through to the released keys)
    attribute_map: ClassVar[dict[str, str]] = {
        "hidden_size": "d_model",
        "num_attention_heads": "n_heads",
        "num_hidden_layers": "n_layers",
        "max_position_embeddings": "max_sequence_length",
        "tie_word_embeddings": "weight_tying",
    }
    logit_shift: ClassVar[int] = 0  # output i scores token i (what the samplers read)

    d_model: int = 4096
    n_heads: int = 32
    n_kv_heads: int | None = 32
    n_layers: int = 32
    mlp_ratio: int = 4
    mlp_hidden_size: int | None = 12288
    activation_type: str = "silu"
    block_type: str = "llama"
    block_group_size: int = 1
    alibi: bool = False
    alibi_bias_max: float = 8.0
    rope: bool = True
    rope_full_precision: bool = True
    flash_attention: bool = False
    attention_dropout: float = 0.0
    multi_query_attention: bool | None = None
    attention_layer_norm: bool = False
    residual_dropout: float = 0.0
    embedding_dropout: float = 0.0
    input_emb_norm: bool = False
    layer_norm_type: str = "rms"
    layer_norm_with_affine: bool = True
    rms_norm_eps: float = 1e-5
    attention_layer_norm_with_affine: bool = True
    max_sequence_length: int = 4096
    train_max_sequence_length: int = 1024
    rope_theta: float = 500000.0
    include_qkv_bias: bool | None = False
    include_bias: bool = False
    bias_for_layer_norm: bool | None = False
    scale_logits: bool = False
    vocab_size: int = 126464
    embedding_size: int | None = 126464
    weight_tying: bool = False
    eos_token_id: int | None = 126081
    pad_token_id: int | None = 126081
    mask_token_id: int | None = 126336
    init_device: str | None = "meta"
    init_fn: str = "mitchell"
    init_std: float = 0.02
    init_cutoff_factor: float | None = None
    precision: str | None = "amp_bf16"
    use_cache: bool = False

    @property
    def num_key_value_heads(self) -> int:
        """Key/value heads, as the released `effective_n_kv_heads`."""
        if self.n_kv_heads is None:
            return 1 if self.multi_query_attention else self.n_heads
        if self.multi_query_attention is not None and self.n_kv_heads != (
            1 if self.multi_query_attention else self.n_heads
        ):
            raise ValueError(
                "set either n_kv_heads or multi_query_attention, not both: "
                f"n_kv_heads={self.n_kv_heads}, multi_query_attention={self.multi_query_attention}"
            )
        return self.n_kv_heads

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def intermediate_size(self) -> int:
        """Width of `ff_proj` / `up_proj`."""
        return self.mlp_hidden_size or self.mlp_ratio * self.d_model

    @property
    def padded_vocab_size(self) -> int:
        """Rows of `wte` and columns of the logits."""
        return self.embedding_size or self.vocab_size


def _check_supported(config: LLaDAConfig) -> None:
    """Refuse the OLMo options that no released LLaDA checkpoint uses (each names the fix)."""
    if not config.rope or config.alibi:
        raise ValueError("LLaDA uses RoPE: set rope=True and alibi=False in the config")
    if config.block_type != "llama":
        raise ValueError(
            f"block_type {config.block_type!r} is not LLaDA's: set block_type='llama' "
            "(the block of every released checkpoint)"
        )
    if config.block_group_size != 1:
        raise ValueError("block_group_size must be 1 (grouped blocks have other state-dict names)")
    if config.attention_layer_norm:
        raise ValueError("QK-norm (attention_layer_norm=True) is not in LLaDA: set it to False")
    if config.layer_norm_type != "rms":
        raise ValueError(
            f"layer_norm_type {config.layer_norm_type!r} is not LLaDA's: set layer_norm_type='rms'"
        )
    if config.activation_type not in _ACTIVATIONS:
        raise ValueError(
            f"activation_type {config.activation_type!r} does not fit the llama block "
            f"(act(ff_proj(x)) * up_proj(x)): use one of {sorted(_ACTIVATIONS)} (LLaDA: 'silu')"
        )
    if config.d_model % config.n_heads or config.n_heads % config.num_key_value_heads:
        raise ValueError(
            f"d_model ({config.d_model}) must be a multiple of n_heads ({config.n_heads}) and "
            f"n_heads a multiple of the key/value heads ({config.num_key_value_heads})"
        )
    if config.padded_vocab_size < config.vocab_size:
        raise ValueError(
            f"embedding_size ({config.embedding_size}) must be at least vocab_size "
            f"({config.vocab_size})"
        )


class LLaDARMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) computed in fp32, cast back, then times the weight (+ bias)."""

    def __init__(self, size: int, eps: float, affine: bool, bias: bool):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(size)) if affine else None
        self.bias = nn.Parameter(torch.zeros(size)) if affine and bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x32 = x.float()
        x = (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).to(dtype)
        if self.weight is None:
            return x
        x = self.weight * x
        return x if self.bias is None else x + self.bias


def _norm(config: LLaDAConfig) -> LLaDARMSNorm:
    bias = config.include_bias if config.bias_for_layer_norm is None else config.bias_for_layer_norm
    return LLaDARMSNorm(
        config.d_model, config.rms_norm_eps, config.layer_norm_with_affine, bool(bias)
    )


class LLaDARotaryEmbedding(nn.Module):
    """cos/sin of position * theta^(-2j/head_dim), concatenated twice (rotate-half layout).

    No buffer: the released code caches the table; it is recomputed here (head_dim/2 numbers),
    which keeps the module free of state that loading would have to restore. With
    `rope_full_precision` the tables stay fp32 and the layers rotate q, k in fp32.
    """

    def __init__(self, config: LLaDAConfig):
        super().__init__()
        self.head_dim = config.head_dim
        self.theta = float(config.rope_theta)
        self.full_precision = config.rope_full_precision

    @torch.no_grad()
    def forward(
        self, x: torch.Tensor, position_ids: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        exponent = torch.arange(0, self.head_dim, 2, device=x.device, dtype=torch.float)
        inv_freq = 1.0 / (self.theta ** (exponent / self.head_dim))
        freqs = position_ids[..., None].float() * inv_freq
        angles = torch.cat((freqs, freqs), dim=-1)
        cos, sin = angles.cos(), angles.sin()
        if self.full_precision:
            return cos, sin
        return cos.to(x.dtype), sin.to(x.dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _apply_rope(t: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate t (B, H, T, D) in the dtype of the tables (fp32 under rope_full_precision)."""
    rotated = t.to(cos.dtype)
    cos, sin = cos[:, None], sin[:, None]
    return (rotated * cos + _rotate_half(rotated) * sin).to(t.dtype)


def _eager_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(q k^T * scaling + mask) v, with a boolean mask (True = attend) or an additive one."""
    groups = module.num_key_value_groups
    key = key.repeat_interleave(groups, dim=1)
    value = value.repeat_interleave(groups, dim=1)
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + attention_mask
    weights = F.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = F.dropout(weights, p=dropout, training=module.training)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


class LLaDALlamaBlock(nn.Module):
    """x + attn_out(Attn(attn_norm(x))), then + ff_out(act(ff_proj(n)) * up_proj(n)), n = ff_norm.

    Attention is a method of the block, as in the released code (so the checkpoint's names hold);
    the call signature is Llama's decoder layer's.
    """

    is_causal = False  # read by transformers' attention functions: never a causal mask

    def __init__(self, config: LLaDAConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.n_heads = config.n_heads
        self.n_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.num_key_value_groups = self.n_heads // self.n_kv_heads
        self.scaling = self.head_dim**-0.5
        self.act = _ACTIVATIONS[config.activation_type]
        d, ffn, bias = config.d_model, config.intermediate_size, config.include_bias
        qkv_bias = bool(config.include_bias or config.include_qkv_bias)
        self.attn_norm = _norm(config)
        self.q_proj = nn.Linear(d, self.n_heads * self.head_dim, bias=qkv_bias)
        self.k_proj = nn.Linear(d, self.n_kv_heads * self.head_dim, bias=qkv_bias)
        self.v_proj = nn.Linear(d, self.n_kv_heads * self.head_dim, bias=qkv_bias)
        self.attn_out = nn.Linear(d, d, bias=bias)
        self.ff_norm = _norm(config)
        self.ff_proj = nn.Linear(d, ffn, bias=bias)  # Llama's gate_proj (the activated one)
        self.up_proj = nn.Linear(d, ffn, bias=bias)
        self.ff_out = nn.Linear(ffn, d, bias=bias)  # Llama's down_proj
        self.dropout = nn.Dropout(config.residual_dropout)

    def attention(
        self,
        x: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None,
        past_key_values: Any = None,
    ) -> torch.Tensor:
        batch, length, _ = x.shape
        q = self.q_proj(x).view(batch, length, -1, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(batch, length, -1, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(batch, length, -1, self.head_dim).transpose(1, 2)
        cos, sin = position_embeddings
        q, k = _apply_rope(q, cos, sin), _apply_rope(k, cos, sin)
        if past_key_values is not None:
            k, v = past_key_values.update(k, v, self.layer_idx)
        implementation = self.config._attn_implementation or "sdpa"
        attend = (
            _eager_attention
            if implementation == "eager"
            else ALL_ATTENTION_FUNCTIONS[implementation]
        )
        out, _ = attend(
            self,
            q,
            k,
            v,
            attention_mask,
            dropout=self.config.attention_dropout if self.training else 0.0,
            scaling=self.scaling,
            is_causal=False,
        )
        return self.attn_out(out.reshape(batch, length, -1))

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: Any = None,
        use_cache: bool | None = False,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        if position_embeddings is None:
            raise ValueError(
                "a LLaDA block needs position_embeddings=(cos, sin): compute them with "
                "backbone.rotary_emb(hidden_states, position_ids)"
            )
        x = hidden_states
        att = self.attention(
            self.attn_norm(x), position_embeddings, attention_mask, past_key_values
        )
        x = x + self.dropout(att)
        n = self.ff_norm(x)
        return x + self.dropout(self.ff_out(self.act(self.ff_proj(n)) * self.up_proj(n)))


def bidirectional_mask(
    attention_mask: torch.Tensor | None, batch: int, length: int, device: torch.device
) -> torch.Tensor | None:
    """A (B, 1, L, L) boolean mask (True = attend) from a (B, L) padding mask; 4-D passes through.

    Every query attends to every real key. Padding queries attend too (their outputs are never
    read), which gives real tokens exactly what a query-AND-key mask gives and keeps padding rows
    finite (an all-masked row would be NaN and spread through the next layer's values).
    """
    if attention_mask is None or attention_mask.dim() == 4:
        return attention_mask
    if attention_mask.dim() != 2:
        raise ValueError(
            f"attention_mask must be (batch, length) or (batch, 1, query, key), got shape "
            f"{tuple(attention_mask.shape)}"
        )
    if bool(attention_mask.bool().all()):
        return None  # nothing to hide: plain bidirectional attention
    keys = attention_mask.to(device=device, dtype=torch.bool)
    return keys[:, None, None, :].expand(batch, 1, length, attention_mask.shape[-1])


class LLaDAModel(nn.Module):
    """The backbone: `transformer.{wte, blocks, ln_f[, ff_out]}`, with Llama's interface.

    `layers`, `norm` and `embed_tokens` are the released modules under Llama's names.
    `transformer.ff_out` (the output head) lives here as in the checkpoint, but `forward` stops at
    `ln_f`: `LLaDAModelLM` applies the head.
    """

    def __init__(self, config: LLaDAConfig):
        super().__init__()
        _check_supported(config)
        self.config = config
        modules: dict[str, nn.Module] = {
            "wte": nn.Embedding(config.padded_vocab_size, config.d_model),
            "emb_drop": nn.Dropout(config.embedding_dropout),
            "ln_f": _norm(config),
            "blocks": nn.ModuleList(LLaDALlamaBlock(config, i) for i in range(config.n_layers)),
        }
        # tied: the same Linear, its weight shared with wte by PreTrainedModel (not saved twice)
        modules["ff_out"] = nn.Linear(
            config.d_model,
            config.padded_vocab_size,
            bias=config.include_bias and not config.weight_tying,
        )
        self.transformer = nn.ModuleDict(modules)
        self.rotary_emb = LLaDARotaryEmbedding(config)

    @property
    def layers(self) -> nn.ModuleList:
        return self.transformer.blocks

    @property
    def norm(self) -> nn.Module:
        return self.transformer.ln_f

    @property
    def embed_tokens(self) -> nn.Embedding:
        return self.transformer.wte

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: Any = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        **kwargs: Any,
    ) -> BaseModelOutputWithPast:
        """Hidden states after `ln_f`.

        attention_mask: None (full bidirectional attention), (B, L) with 1 for real tokens, or a
        4-D boolean/additive mask (B, 1, Q, K). position_ids default to 0..L-1, as the released
        code, also under padding: pass `cumsum(mask) - 1` to give a left-padded row the positions
        it has alone (`dlm_decode.adapters` does).
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        x = self.transformer.wte(input_ids) if inputs_embeds is None else inputs_embeds
        if self.config.input_emb_norm:
            x = x * self.config.d_model**0.5
        x = self.transformer.emb_drop(x)
        batch, length = x.shape[:2]
        if position_ids is None:
            position_ids = torch.arange(length, device=x.device)[None].expand(batch, -1)
        mask = bidirectional_mask(attention_mask, batch, length, x.device)
        position_embeddings = self.rotary_emb(x, position_ids)
        hidden_states: list[torch.Tensor] = []
        for block in self.transformer.blocks:
            if output_hidden_states:
                hidden_states.append(x)
            x = block(
                x,
                attention_mask=mask,
                position_ids=position_ids,
                past_key_values=past_key_values,
                use_cache=use_cache,
                position_embeddings=position_embeddings,
            )
        x = self.transformer.ln_f(x)
        if output_hidden_states:
            hidden_states.append(x)
        return BaseModelOutputWithPast(
            last_hidden_state=x,
            past_key_values=past_key_values,
            hidden_states=tuple(hidden_states) if output_hidden_states else None,
        )


class LLaDAModelLM(PreTrainedModel):
    """LLaDA with its output head: logits (B, L, embedding_size), position i scores token i."""

    config_class = LLaDAConfig
    config: LLaDAConfig
    base_model_prefix = "model"
    _no_split_modules: ClassVar[list[str]] = ["LLaDALlamaBlock"]
    _tied_weights_keys: ClassVar[dict[str, str]] = {
        "model.transformer.ff_out.weight": "model.transformer.wte.weight"
    }
    _supports_sdpa = True
    _supports_attention_backend = True

    def __init__(self, config: LLaDAConfig):
        super().__init__(config)
        self.model = LLaDAModel(config)
        self.post_init()

    def get_decoder(self) -> LLaDAModel:
        return self.model

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.transformer.wte

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.transformer.wte = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.model.transformer.ff_out

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.model.transformer.ff_out = value

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: Any = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast | tuple:
        """Logits of every position (no shift); see `LLaDAModel.forward` for the arguments.

        `labels` are not taken: the masked-diffusion loss needs the noise level of each sequence,
        which a forward pass does not have (the released code ignores them too).
        """
        if kwargs.pop("labels", None) is not None:
            raise ValueError(
                "LLaDA has no built-in loss (it needs the masking ratio t of each sequence): "
                "compute the masked-diffusion loss from the returned logits"
            )
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_hidden_states=output_hidden_states,
        )
        logits = self.model.transformer.ff_out(out.last_hidden_state)
        if self.config.scale_logits:
            logits = logits * self.config.d_model**-0.5
        if return_dict is False:
            return (logits,)
        return CausalLMOutputWithPast(
            logits=logits, past_key_values=out.past_key_values, hidden_states=out.hidden_states
        )


AutoConfig.register(LLaDAConfig.model_type, LLaDAConfig, exist_ok=True)
AutoModel.register(LLaDAConfig, LLaDAModelLM, exist_ok=True)
AutoModelForCausalLM.register(LLaDAConfig, LLaDAModelLM, exist_ok=True)
AutoModelForMaskedLM.register(LLaDAConfig, LLaDAModelLM, exist_ok=True)

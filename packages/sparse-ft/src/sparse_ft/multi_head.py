"""Multi-head Llama of NeuroTrails (arXiv 2505.17909): a shared backbone feeding K heads, each a
copy of the last blocks with its own final norm and untied output layer (TreeNet when dense,
NeuroTrails under dynamic sparse training), and the dense K-model ensemble built by the same code.

With L decoder blocks, b = blocks_in_head (official default round(2L/3): 8 of 12, 16 of 24) and
s = L - b shared blocks, head k computes

    h   = blocks_{0..s-1}(embed(x))                     (shared; no final norm)
    z_k = lm_head_k(norm_k(blocks^k_{s..L-1}(h)))       (reference_quirks: norm_k(norm_k(.)))

with the positions of every head restarting at 0 (the official heads take h as `inputs_embeds`).
Training loss (spec section 6): sum_k CE(z_k, y), not the mean. Prediction: the mean of the
logits, z = (1/K) sum_k z_k (`combine="logits"`, the official evaluation), or the log of the mean
of the heads' probabilities (`combine="probs"`). `ensemble=True`: K independent full Llamas
(own embedding, all L blocks, norm and lm_head), same loss and combination.

    model = MultiHeadForCausalLM(MultiHeadConfig(**llama_fields, num_output_heads=3))
    out = model(input_ids, labels=input_ids)   # out.loss (sum of head CEs), out.logits (combined),
                                               # out.head_logits (K tensors), out.head_losses [K]
    model.save_pretrained(path); AutoModelForCausalLM.from_pretrained(path)  # after the import
    single = model.export_head(1)              # a LlamaForCausalLM computing head 1 exactly

Parameter names: model.embed_tokens, model.layers.{0..s-1} (the backbone; none in the ensemble),
heads.{k}.layers.{j} (block s + j of head k), heads.{k}.norm, heads.{k}.lm_head, and in the
ensemble heads.{k}.embed_tokens. `import sparse_ft.multi_head` registers model type
"multi_head_llama" with `AutoConfig` / `AutoModelForCausalLM`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator, model_validator
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM
from transformers.masking_utils import create_causal_mask
from transformers.modeling_outputs import ModelOutput
from transformers.models.llama.modeling_llama import (
    LlamaDecoderLayer,
    LlamaPreTrainedModel,
    LlamaRMSNorm,
    LlamaRotaryEmbedding,
)

from layerwise_core import LayerwiseConfig, UsageError

__all__ = [
    "COMBINE_MODES",
    "MODEL_TYPE",
    "HeadsConfig",
    "MultiHeadConfig",
    "MultiHeadForCausalLM",
    "MultiHeadOutput",
    "combine_logits",
    "default_blocks_in_head",
    "head_disagreement",
]

MODEL_TYPE = "multi_head_llama"
COMBINE_MODES = ("logits", "probs")
# the fields MultiHeadConfig adds to LlamaConfig (dropped again by export_head)
_HEAD_FIELDS = ("num_output_heads", "blocks_in_head", "ensemble", "combine", "reference_quirks")
_NOT_COPIED = ("model_type", "architectures", "transformers_version")


def default_blocks_in_head(num_layers: int) -> int:
    """The official split, b = round(2 L / 3): 8 of 12 blocks (130M), 16 of 24 (350M)."""
    return round(2 * num_layers / 3)


class MultiHeadConfig(LlamaConfig):
    """`LlamaConfig` (every field, flat) of a multi-head Llama, plus:

    num_output_heads: K, the number of heads (>= 1).
    blocks_in_head: b, each head owns a copy of the last b of the L blocks; None: round(2L/3).
        Needs 1 <= b < L (b = L or b = 0 raise, as in the official code); ignored (all L) in
        the ensemble.
    ensemble: True builds K independent full Llamas (the dense full-ensemble baseline).
    combine: "logits" (mean of logits, official) or "probs" (log of the mean softmax).
    reference_quirks: True applies each head's final norm twice, as the official heads do (the
        head's inner model normalises, then the wrapper applies the same norm again); no effect
        on the ensemble, whose members are plain Llamas in the official code too.
    """

    model_type = MODEL_TYPE

    def __init__(
        self,
        num_output_heads: int = 3,
        blocks_in_head: int | None = None,
        ensemble: bool = False,
        combine: str = "logits",
        reference_quirks: bool = False,
        **kwargs: Any,
    ) -> None:
        self.num_output_heads = num_output_heads
        self.blocks_in_head = blocks_in_head
        self.ensemble = ensemble
        self.combine = combine
        self.reference_quirks = reference_quirks
        super().__init__(**kwargs)
        self._check_heads()

    def _check_heads(self) -> None:
        if not isinstance(self.num_output_heads, int) or self.num_output_heads < 1:
            raise UsageError(f"num_output_heads must be an int >= 1, got {self.num_output_heads!r}")
        if self.combine not in COMBINE_MODES:
            raise UsageError(f"combine must be one of {COMBINE_MODES}, got {self.combine!r}")
        if self.tie_word_embeddings:
            raise UsageError(
                "a multi-head Llama has one untied lm_head per head: build it with "
                "tie_word_embeddings=False"
            )
        layers = self.num_hidden_layers
        if not self.ensemble and not 1 <= self.head_blocks < layers:
            raise UsageError(
                f"blocks_in_head={self.head_blocks} for {layers} blocks leaves "
                f"{layers - self.head_blocks} shared: use 1 <= blocks_in_head < {layers} (the "
                "official split is round(2L/3)), or ensemble=True for K full models"
            )

    @property
    def head_blocks(self) -> int:
        """b: the blocks each head owns (L in the ensemble)."""
        if self.ensemble:
            return self.num_hidden_layers
        if self.blocks_in_head is None:
            return default_blocks_in_head(self.num_hidden_layers)
        return self.blocks_in_head

    @property
    def shared_blocks(self) -> int:
        """s = L - b: the blocks of the shared backbone (0 in the ensemble)."""
        return self.num_hidden_layers - self.head_blocks

    @classmethod
    def from_llama(cls, config: LlamaConfig, **heads: Any) -> MultiHeadConfig:
        """The multi-head config with every field of the plain `LlamaConfig` `config` and the
        head fields `heads` (num_output_heads, blocks_in_head, ensemble, combine,
        reference_quirks)."""
        if type(config) is not LlamaConfig:
            raise UsageError(
                f"a multi-head model is built from a plain LlamaConfig, got "
                f"{type(config).__name__}: ELAS, MoE/CoE, norm schemes and masked diffusion are "
                "not supported with heads"
            )
        fields = {k: v for k, v in config.to_dict().items() if k not in _NOT_COPIED}
        built = cls(**fields, **heads)
        built._attn_implementation = config._attn_implementation
        return built

    def llama_config(self) -> LlamaConfig:
        """The `LlamaConfig` of one head as a single model (all L blocks)."""
        skip = set(_HEAD_FIELDS) | set(_NOT_COPIED)
        config = LlamaConfig(**{k: v for k, v in self.to_dict().items() if k not in skip})
        config._attn_implementation = self._attn_implementation
        return config


@dataclass
class MultiHeadOutput(ModelOutput):
    """loss: sum over heads of each head's next-token CE (with labels); logits: the combined
    prediction [B, T, V]; head_logits: K tensors [B, T, V]; head_losses: [K] (with labels)."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    head_logits: tuple[torch.Tensor, ...] | None = None
    head_losses: torch.Tensor | None = None


def combine_logits(head_logits: Sequence[torch.Tensor], mode: str = "logits") -> torch.Tensor:
    """The ensemble prediction of K heads (NeuroTrails section on inference):

    "logits": z = (1/K) sum_k z_k  (the official evaluation; softmax / CE taken after)
    "probs":  z = log((1/K) sum_k softmax(z_k)) = logsumexp_k log_softmax(z_k) - log K, log-
              probabilities (computed in float32, returned in the heads' dtype)
    """
    if len(head_logits) == 0:
        raise ValueError("combine_logits needs at least one head's logits")
    stacked = torch.stack(tuple(head_logits))
    if mode == "logits":
        return stacked.mean(dim=0)
    if mode == "probs":
        log_probs = torch.log_softmax(stacked.float(), dim=-1)
        combined = torch.logsumexp(log_probs, dim=0) - math.log(len(head_logits))
        return combined.to(stacked.dtype)
    raise ValueError(f"combine mode must be one of {COMBINE_MODES}, got {mode!r}")


@torch.no_grad()
def head_disagreement(
    head_logits: Sequence[torch.Tensor], mask: torch.Tensor | None = None
) -> float:
    """Prediction diversity between heads: the mean over pairs i != j of
    D_ij = 1 - mean_t[argmax z_i(t) = argmax z_j(t)] (top-1 disagreement), over the positions
    where `mask` (shape [..., T], optional) is true. The official script averages the full K x K
    matrix, zero diagonal included: that is this value times (K - 1) / K."""
    if len(head_logits) < 2:
        raise ValueError(f"head_disagreement needs >= 2 heads, got {len(head_logits)}")
    predictions = [z.argmax(dim=-1) for z in head_logits]
    keep = None if mask is None else mask.bool()
    total, pairs = 0.0, 0
    for i in range(len(predictions)):
        for j in range(i + 1, len(predictions)):
            differ = predictions[i] != predictions[j]
            differ = differ[keep] if keep is not None else differ
            total += differ.float().mean().item()
            pairs += 1
    return total / pairs


class _Backbone(nn.Module):
    """The shared part: token embedding and blocks 0..s-1 (no final norm)."""

    def __init__(self, config: MultiHeadConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.layers = nn.ModuleList(
            [LlamaDecoderLayer(config, i) for i in range(config.shared_blocks)]
        )


class _Head(nn.Module):
    """Head k: its own copy of blocks s..L-1, final RMSNorm and lm_head (ensemble: and its own
    embedding, all L blocks)."""

    def __init__(self, config: MultiHeadConfig) -> None:
        super().__init__()
        if config.ensemble:
            self.embed_tokens = nn.Embedding(
                config.vocab_size, config.hidden_size, config.pad_token_id
            )
        first = config.shared_blocks
        self.layers = nn.ModuleList(
            [LlamaDecoderLayer(config, i) for i in range(first, config.num_hidden_layers)]
        )
        self.norm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)


def _run_blocks(layers: nn.ModuleList, hidden: torch.Tensor, **shared: Any) -> torch.Tensor:
    for layer in layers:
        hidden = layer(hidden, **shared)
    return hidden


class MultiHeadForCausalLM(LlamaPreTrainedModel):
    """K causal-LM heads on a shared Llama backbone (or K full Llamas, `config.ensemble`), built
    from transformers' own Llama decoder blocks; see the module docstring for the maths and the
    parameter names. Every head is initialised independently (`_init_weights`, as Llama's)."""

    config_class = MultiHeadConfig
    config: MultiHeadConfig

    def __init__(self, config: MultiHeadConfig) -> None:
        super().__init__(config)
        if not config.ensemble:
            self.model = _Backbone(config)
        self.heads = nn.ModuleList([_Head(config) for _ in range(config.num_output_heads)])
        self.rotary_emb = LlamaRotaryEmbedding(config=config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        """The shared embedding (ensemble: the first member's)."""
        return self.heads[0].embed_tokens if self.config.ensemble else self.model.embed_tokens

    def get_output_embeddings(self) -> None:
        """None: each head has its own untied lm_head (nothing for transformers to tie)."""
        return None

    def decoder_layers(self) -> list[nn.Module]:
        """Every decoder block, backbone first, then head 0's, head 1's, ...: the units that
        FSDP2 sharding, activation checkpointing and compilation wrap."""
        backbone = [] if self.config.ensemble else list(self.model.layers)
        return backbone + [layer for head in self.heads for layer in head.layers]

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = False,
        past_key_values: Any = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> MultiHeadOutput:
        """Head logits, their combination (`config.combine`) and, with `labels` (HF convention:
        shifted inside, -100 ignored), loss = sum_k CE(z_k) and the per-head losses.
        `attention_mask` [B, T] marks padding (0) as in LlamaForCausalLM; positions are 0..T-1 in
        the backbone and again in every head. No KV cache (`export_head` gives a model that
        generates)."""
        if use_cache or past_key_values is not None:
            raise UsageError(
                "MultiHeadForCausalLM has no KV cache: call it with use_cache=False (export_head(k) "
                "gives a LlamaForCausalLM that generates)"
            )
        config = self.config
        positions = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
        if config.ensemble:
            streams = [head.embed_tokens(input_ids) for head in self.heads]
        else:
            embedded = self.model.embed_tokens(input_ids)
            streams = None
        reference = embedded if streams is None else streams[0]
        shared = {
            "attention_mask": create_causal_mask(
                config=config,
                inputs_embeds=reference,
                attention_mask=attention_mask,
                past_key_values=None,
                position_ids=positions,
            ),
            "position_embeddings": self.rotary_emb(reference, position_ids=positions),
            "position_ids": positions,
            **kwargs,
        }
        if streams is None:
            hidden = _run_blocks(self.model.layers, embedded, **shared)
            streams = [hidden] * len(self.heads)
        head_logits = []
        for head, stream in zip(self.heads, streams, strict=True):
            out = head.norm(_run_blocks(head.layers, stream, **shared))
            if config.reference_quirks and not config.ensemble:
                out = head.norm(out)  # the official wrapper re-applies the inner model's norm
            head_logits.append(head.lm_head(out))
        head_logits = tuple(head_logits)
        loss = head_losses = None
        if labels is not None:
            head_losses = torch.stack([_next_token_loss(z, labels) for z in head_logits])
            loss = head_losses.sum()
        return MultiHeadOutput(
            loss=loss,
            logits=combine_logits(head_logits, config.combine),
            head_logits=head_logits,
            head_losses=head_losses,
        )

    @torch.no_grad()
    def export_head(self, k: int) -> LlamaForCausalLM:
        """A `LlamaForCausalLM` (plain `LlamaConfig`, all L blocks) computing head k exactly:
        embedding and blocks 0..s-1 from the backbone (ensemble: member k's), blocks s..L-1, norm
        and lm_head from head k; copies on this model's device and dtype."""
        config = self.config
        if not 0 <= k < len(self.heads):
            raise UsageError(
                f"head {k} does not exist: the model has heads 0..{len(self.heads) - 1}"
            )
        if config.reference_quirks and not config.ensemble:
            raise UsageError(
                "export_head: with reference_quirks the head applies its final norm twice, which "
                "no LlamaForCausalLM computes: export from a model with reference_quirks=False"
            )
        head = self.heads[k]
        state = {
            f"model.layers.{config.shared_blocks + j}.{name}": value
            for j, layer in enumerate(head.layers)
            for name, value in layer.state_dict().items()
        }
        if config.ensemble:
            state["model.embed_tokens.weight"] = head.embed_tokens.weight
        else:
            state["model.embed_tokens.weight"] = self.model.embed_tokens.weight
            for i, layer in enumerate(self.model.layers):
                for name, value in layer.state_dict().items():
                    state[f"model.layers.{i}.{name}"] = value
        state["model.norm.weight"] = head.norm.weight
        state["lm_head.weight"] = head.lm_head.weight
        weight = head.lm_head.weight
        with torch.device(weight.device):
            single = LlamaForCausalLM(config.llama_config()).to(weight.dtype)
        single.load_state_dict(state, strict=True)
        single.train(self.training)
        return single


def _next_token_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy (float32) of logits[:, t] against labels[:, t + 1], -100
    ignored: transformers' causal-LM loss."""
    vocab = logits.shape[-1]
    return F.cross_entropy(
        logits[:, :-1].reshape(-1, vocab).float(),
        labels[:, 1:].reshape(-1).to(logits.device),
        ignore_index=-100,
    )


class HeadsConfig(LayerwiseConfig):
    """`model.heads` of `layerwise pretrain`: how many heads and where the split is.
    `HeadsConfig.model_validate(3)` is `HeadsConfig(count=3)` (the other fields at their defaults:
    `model.heads=1` over a mapping replaces it whole). With count 1 (one plain model) the other
    fields must keep their defaults; a value there is refused rather than ignored."""

    count: int = Field(1, ge=1)  # K; 1: one plain model (the switch is off)
    # b: blocks per head; None: round(2L/3); "all": the dense full ensemble (K whole models)
    blocks_in_head: int | Literal["all"] | None = None
    combine: Literal["logits", "probs"] = "logits"  # the prediction: mean logits or mean probs
    reference_quirks: bool = False  # the official double final norm in each head

    @model_validator(mode="before")
    @classmethod
    def _count_shorthand(cls, data: Any) -> Any:
        # `heads: 3` in a YAML file means {count: 3}
        if isinstance(data, bool):
            raise ValueError("heads takes a count (e.g. 3) or a mapping, not a boolean")
        return {"count": data} if isinstance(data, int) else data

    @field_validator("blocks_in_head")
    @classmethod
    def _positive_blocks(cls, value: int | str | None) -> int | str | None:
        if isinstance(value, int) and value < 1:
            raise ValueError(
                f"blocks_in_head must be >= 1 (and below the number of blocks), got {value}: "
                'use "all" for the full ensemble'
            )
        return value

    @model_validator(mode="after")
    def _one_head_takes_no_head_fields(self) -> HeadsConfig:
        # count 1 builds the plain model: the head fields would be ignored silently
        if self.count == 1:
            given = {
                "blocks_in_head": self.blocks_in_head is not None,
                "combine": self.combine != "logits",
                "reference_quirks": self.reference_quirks,
            }
            if any(given.values()):
                raise ValueError(
                    f"model.heads.count=1 builds one plain model, which ignores "
                    f"{', '.join(k for k, v in given.items() if v)}: set model.heads.count > 1, "
                    "or drop blocks_in_head/combine/reference_quirks"
                )
        return self

    @property
    def enabled(self) -> bool:
        """True when the model has several heads."""
        return self.count > 1

    @property
    def ensemble(self) -> bool:
        """True for the dense full ensemble (blocks_in_head "all")."""
        return self.blocks_in_head == "all"

    def multi_head_config(self, llama_config: LlamaConfig) -> MultiHeadConfig:
        """The `MultiHeadConfig` of these heads on `llama_config` (a plain `LlamaConfig`)."""
        return MultiHeadConfig.from_llama(
            llama_config,
            num_output_heads=self.count,
            blocks_in_head=None if self.ensemble else self.blocks_in_head,
            ensemble=self.ensemble,
            combine=self.combine,
            reference_quirks=self.reference_quirks,
        )

    def build(self, llama_config: LlamaConfig) -> MultiHeadForCausalLM:
        """`MultiHeadForCausalLM(self.multi_head_config(llama_config))`, on torch's default device
        (inside `with torch.device("meta")`: unmaterialised, like the rest of build_model)."""
        return MultiHeadForCausalLM(self.multi_head_config(llama_config))


AutoConfig.register(MODEL_TYPE, MultiHeadConfig, exist_ok=True)
AutoModelForCausalLM.register(MultiHeadConfig, MultiHeadForCausalLM, exist_ok=True)

"""Tiny real Hugging Face models built from config (no weights from a hub): the test beds.

- `tiny_llama`, `tiny_qwen2`, `tiny_mixtral`: causal LMs of the real transformers classes.
- `tiny_bidirectional`: LLaDA-like masked-diffusion LM: a Llama whose attention is made
  bidirectional by a 4-D all-True (key-padding aware) mask; logits at position i score token i
  (the classes live in `layerwise_core.bidirectional_llama`, which registers them with Auto).
- `tiny_shifted_bidirectional`: Dream-like: the same network, but trained/decoded with logits
  shifted by one (the output at position i scores token i+1, as in the AR model Dream starts from);
  `config.logit_shift == 1` tells samplers to shift.
- `tiny_llada_style`: a small bidirectional model laid out like LLaDA's own code
  (`model.transformer.blocks[i].attn_norm/ff_norm`), for introspection of that layout.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from layerwise_core.presets import init_normal_

__all__ = [
    "BidirectionalLlamaConfig",  # noqa: F822 - built lazily by __getattr__
    "BidirectionalLlamaForMaskedDiffusion",  # noqa: F822
    "tiny_bidirectional",
    "tiny_llada_style",
    "tiny_llama",
    "tiny_mixtral",
    "tiny_qwen2",
    "tiny_shifted_bidirectional",
]

_TINY: dict[str, Any] = dict(
    vocab_size=128,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    rms_norm_eps=1e-6,
    initializer_range=0.02,
    tie_word_embeddings=False,
    bos_token_id=None,
    eos_token_id=None,
    pad_token_id=None,
)


def _transformers(factory: str):
    """transformers, or an ImportError that names the extra to install."""
    try:
        import transformers
    except ImportError as error:
        raise ImportError(
            f"layerwise_core.{factory} builds a real Hugging Face model and needs transformers: "
            "pip install 'layerwise-core[hf]'"
        ) from error
    return transformers


def _build(model_cls, config, seed: int):
    torch.manual_seed(seed)
    model = model_cls(config)
    init_normal_(model, config.initializer_range)
    return model.eval()


def tiny_llama(seed: int = 0, **overrides: Any):
    """A `LlamaForCausalLM` with hidden 32, 2 layers, 4 heads (2 KV heads), vocab 128."""
    hf = _transformers("tiny_llama")
    return _build(hf.LlamaForCausalLM, hf.LlamaConfig(**{**_TINY, **overrides}), seed)


def tiny_qwen2(seed: int = 0, **overrides: Any):
    """A `Qwen2ForCausalLM` (QKV biases) of the same tiny size."""
    hf = _transformers("tiny_qwen2")
    return _build(hf.Qwen2ForCausalLM, hf.Qwen2Config(**{**_TINY, **overrides}), seed)


def tiny_mixtral(seed: int = 0, **overrides: Any):
    """A `MixtralForCausalLM` with 4 experts, top-2 routing."""
    hf = _transformers("tiny_mixtral")
    fields = {**_TINY, "num_local_experts": 4, "num_experts_per_tok": 2, **overrides}
    return _build(hf.MixtralForCausalLM, hf.MixtralConfig(**fields), seed)


def __getattr__(name: str):
    # The classes subclass transformers' (an extra): imported from their module on first use.
    if name in ("BidirectionalLlamaConfig", "BidirectionalLlamaForMaskedDiffusion"):
        config_cls, model_cls = _registered_bidirectional(name)
        return config_cls if name == "BidirectionalLlamaConfig" else model_cls
    raise AttributeError(name)


def _registered_bidirectional(factory: str = "tiny_bidirectional"):
    """The masked-diffusion Llama classes; importing their module registers them with Auto."""
    _transformers(factory)
    from layerwise_core import bidirectional_llama

    return (
        bidirectional_llama.BidirectionalLlamaConfig,
        bidirectional_llama.BidirectionalLlamaForMaskedDiffusion,
    )


def tiny_bidirectional(seed: int = 0, mask_token_id: int | None = None, **overrides: Any):
    """LLaDA-like tiny masked-diffusion LM (bidirectional, no logit shift). Mask id = vocab - 1."""
    config_cls, model_cls = _registered_bidirectional()
    fields = {**_TINY, **overrides}
    mask = fields["vocab_size"] - 1 if mask_token_id is None else mask_token_id
    return _build(model_cls, config_cls(mask_token_id=mask, logit_shift=0, **fields), seed)


def tiny_shifted_bidirectional(seed: int = 0, mask_token_id: int | None = None, **overrides: Any):
    """Dream-like tiny masked-diffusion LM: bidirectional, logits shifted by one (`logit_shift=1`)."""
    config_cls, model_cls = _registered_bidirectional("tiny_shifted_bidirectional")
    fields = {**_TINY, **overrides}
    mask = fields["vocab_size"] - 1 if mask_token_id is None else mask_token_id
    return _build(model_cls, config_cls(mask_token_id=mask, logit_shift=1, **fields), seed)


class _LLaDAStyleBlock(nn.Module):
    """x + attn_out(Attn(attn_norm(x))); then + ff_out(silu(ff_proj(n)) * up_proj(n)), n = ff_norm."""

    def __init__(self, hidden: int, heads: int, ffn: int, eps: float):
        super().__init__()
        self.heads = heads
        self.attn_norm = nn.RMSNorm(hidden, eps=eps)
        self.q_proj = nn.Linear(hidden, hidden, bias=False)
        self.k_proj = nn.Linear(hidden, hidden, bias=False)
        self.v_proj = nn.Linear(hidden, hidden, bias=False)
        self.attn_out = nn.Linear(hidden, hidden, bias=False)
        self.ff_norm = nn.RMSNorm(hidden, eps=eps)
        self.ff_proj = nn.Linear(hidden, ffn, bias=False)
        self.up_proj = nn.Linear(hidden, ffn, bias=False)
        self.ff_out = nn.Linear(ffn, hidden, bias=False)

    def attention(self, x: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = (
            p(x).view(b, t, self.heads, d // self.heads).transpose(1, 2)
            for p in (self.q_proj, self.k_proj, self.v_proj)
        )
        mask = None if key_mask is None else key_mask[:, None, None, :].bool()
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=False)
        return self.attn_out(out.transpose(1, 2).reshape(b, t, d))

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attention(self.attn_norm(x), key_mask)
        n = self.ff_norm(x)
        return x + self.ff_out(F.silu(self.ff_proj(n)) * self.up_proj(n))


class _LLaDAStyleConfig:
    model_type = "llada"

    def __init__(
        self,
        vocab_size: int,
        hidden_size: int,
        num_hidden_layers: int,
        num_attention_heads: int,
        intermediate_size: int,
        mask_token_id: int,
    ):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.n_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.mask_token_id = mask_token_id
        self.logit_shift = 0


class _LLaDAStyleModel(nn.Module):
    def __init__(self, config: _LLaDAStyleConfig):
        super().__init__()
        d = config.hidden_size
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.vocab_size, d),
                blocks=nn.ModuleList(
                    _LLaDAStyleBlock(d, config.num_attention_heads, config.intermediate_size, 1e-5)
                    for _ in range(config.num_hidden_layers)
                ),
                ln_f=nn.RMSNorm(d, eps=1e-5),
                ff_out=nn.Linear(d, config.vocab_size, bias=False),
            )
        )


class _LLaDAStyleLM(nn.Module):
    """Returns an object with `.logits` like a HF model; no positional encoding (test bed only)."""

    def __init__(self, config: _LLaDAStyleConfig):
        super().__init__()
        self.config = config
        self.model = _LLaDAStyleModel(config)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
        tr = self.model.transformer
        x = tr.wte(input_ids)
        for block in tr.blocks:
            x = block(x, attention_mask)
        return SimpleNamespace(logits=tr.ff_out(tr.ln_f(x)))


def tiny_llada_style(
    seed: int = 0,
    vocab_size: int = 128,
    hidden_size: int = 32,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    intermediate_size: int = 64,
) -> nn.Module:
    """A tiny bidirectional LM with LLaDA's module layout (`model.transformer.blocks`, `attn_norm`)."""
    config = _LLaDAStyleConfig(
        vocab_size,
        hidden_size,
        num_hidden_layers,
        num_attention_heads,
        intermediate_size,
        mask_token_id=vocab_size - 1,
    )
    torch.manual_seed(seed)
    return init_normal_(_LLaDAStyleLM(config)).eval()

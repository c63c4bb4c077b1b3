"""Named LLaMA sizes of the papers (GaLore / SPAM / Curse-of-Depth / Mix-LN configs) and their init.

    config = llama_config("llama-130m", vocab_size=32000)   # hidden 768, 12 layers, ffn 2048
    model = LlamaForCausalLM(config); init_normal_(model, std=0.02)

All sizes: RMSNorm eps 1e-6, init std 0.02, untied embeddings, SwiGLU MLP, RoPE.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = [
    "LLAMA_PRESETS",
    "LlamaPreset",
    "check_config_fields",
    "init_normal_",
    "llama_config",
    "llama_param_count",
]


@dataclass(frozen=True)
class LlamaPreset:
    hidden_size: int  # model width d
    num_hidden_layers: int  # decoder blocks L
    num_attention_heads: int  # heads (no GQA in the papers' configs)
    intermediate_size: int  # SwiGLU hidden width
    lr: float | None = None  # peak learning rate used in the papers (Adam, batch 512 x 256 tokens)
    steps: int | None = None  # training steps in the papers
    warmup_steps: int | None = None  # linear warm-up steps in the papers


# specs/ln-scaling.md, "Training setup of the papers"
LLAMA_PRESETS: dict[str, LlamaPreset] = {
    "llama-tiny": LlamaPreset(64, 2, 4, 176),
    "llama-60m": LlamaPreset(512, 8, 8, 1376, 1e-3, 10_000, 1_000),
    "llama-71m": LlamaPreset(512, 12, 8, 1368, 1e-3, 10_000, 1_000),  # Mix-LN's 71M
    "llama-130m": LlamaPreset(768, 12, 12, 2048, 1e-3, 20_000, 2_000),
    "llama-250m": LlamaPreset(768, 24, 16, 2560, 1e-3, 40_000, 4_000),
    "llama-350m": LlamaPreset(1024, 24, 16, 2736, 5e-4, 60_000, 6_000),
    "llama-1b": LlamaPreset(2048, 24, 32, 5461, 5e-4, 100_000, 1_000),
    "llama-7b": LlamaPreset(4096, 32, 32, 11008),
}


def _declared_fields(config_class: type) -> set[str]:
    if dataclasses.is_dataclass(config_class):  # transformers >= 5: configs are dataclasses
        return {f.name for f in dataclasses.fields(config_class)}
    params = inspect.signature(config_class.__init__).parameters
    named = {n for n, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    return (named - {"self"}) | {n for n in vars(config_class()) if not n.startswith("_")}


def check_config_fields(config_class: type, fields: Mapping[str, Any], where: str = "") -> None:
    """Refuse keys of `fields` that the transformers config class `config_class` would keep as
    unused attributes: a typo (`num_hiden_layers`) otherwise builds the default model silently.

    A key counts as known when the class declares it or consumes it (legacy names such as
    `rope_theta`, `attn_implementation`). `where` prefixes the key in the message
    (`"model.overrides."`), which names the closest declared field.
    """
    declared = _declared_fields(config_class)
    for key, value in fields.items():
        if key in declared:
            continue
        try:
            stored = key in vars(config_class(**{key: value}))
        except Exception:  # a consumed key with a bad value: it is known
            continue
        if stored:
            close = difflib.get_close_matches(key, sorted(declared), n=1)
            hint = f" (did you mean '{where}{close[0]}'?)" if close else ""
            raise ValueError(
                f"unknown field '{where}{key}'{hint}: {config_class.__name__} has no such field; "
                f"its fields are {sorted(declared)}"
            )


def llama_config(name: str, vocab_size: int = 32000, **overrides: Any):
    """A `transformers.LlamaConfig` for a named size; `overrides` replace any config field (an
    unknown field is an error naming the closest one: `check_config_fields`)."""
    try:
        preset = LLAMA_PRESETS[name]
    except KeyError:
        raise ValueError(
            f"unknown LLaMA preset {name!r}; choose one of {list(LLAMA_PRESETS)}"
        ) from None
    from transformers import LlamaConfig

    fields: dict[str, Any] = dict(
        vocab_size=vocab_size,
        hidden_size=preset.hidden_size,
        num_hidden_layers=preset.num_hidden_layers,
        num_attention_heads=preset.num_attention_heads,
        num_key_value_heads=preset.num_attention_heads,
        intermediate_size=preset.intermediate_size,
        max_position_embeddings=2048,
        rms_norm_eps=1e-6,
        initializer_range=0.02,
        tie_word_embeddings=False,
        hidden_act="silu",
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    check_config_fields(LlamaConfig, overrides)
    fields.update(overrides)
    return LlamaConfig(**fields)


def llama_param_count(
    hidden: int, layers: int, ffn: int, vocab: int, kv_hidden: int | None = None, tied: bool = False
) -> int:
    """Parameters of a LLaMA model, derived by hand: embeddings + per-block (attn + SwiGLU + 2 norms) + final norm."""
    kv = hidden if kv_hidden is None else kv_hidden
    attn = 2 * hidden * hidden + 2 * hidden * kv  # q, o and k, v projections, no biases
    mlp = 3 * hidden * ffn  # gate, up, down
    block = attn + mlp + 2 * hidden
    embed = vocab * hidden * (1 if tied else 2)
    return embed + layers * block + hidden


@torch.no_grad()
def init_normal_(model: nn.Module, std: float = 0.02) -> nn.Module:
    """The papers' init: every Linear/Embedding weight ~ N(0, std), biases 0, norms untouched.

    No depth-scaled output init (the Curse-of-Depth paper uses none with LayerNorm Scaling).
    """
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.normal_(0.0, std)
            if getattr(module, "bias", None) is not None:
                module.bias.zero_()
    return model

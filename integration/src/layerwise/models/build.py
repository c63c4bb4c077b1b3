"""`build_model`: the model of a run, a Hugging Face `LlamaForCausalLM` of a named size (or its
masked-diffusion / MoE / CoE variant) initialised as in the papers, with its norm scheme and
simulated quantisation; `init_model_weights`: the initial weights of a model built on the meta
device, materialised whole or as this process's FSDP2 shards.

The model is always constructed on the meta device (no memory, no draw from the global RNG), then
materialised: every parameter's initial value is a function of (seed, parameter name) alone,

    N(0, init_std)  every Linear / Embedding weight, CoE's experts and routers
    Xavier normal   ELAS's low-rank factors (sparse_ft.LowRankLinear weight_in [in, r],
                    weight_out [out, r]): N(0, std sqrt(2 / (in + r)), resp. (out + r)), as
                    LowRankLinear.reset_parameters draws them
    ones            norm weights (RMSNorm, Mix-LN's Post-LN norms); zeros: biases

each N(0, init_std) drawn on the CPU from its own generator, seeded by a hash of (seed, name), one
parameter at a time. So a model sharded before it is materialised (FSDP2: each process copies its
rows of each drawn parameter, holding one full parameter at most) has exactly the weights of the
same model materialised whole, whatever the number of processes, device or construction order.
Buffers (RoPE's inverse frequencies) are recomputed from the config; ELAS's warm-up step
(`elas_step`) starts at 0.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator

import torch
from torch import nn
from transformers import LlamaForCausalLM
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from coe_moe.chain_of_experts import CoEExperts
from coe_moe.routing import CoERouter
from layerwise.models.config import ModelConfig
from layerwise_core import UsageError, is_dtensor, llama_config, local_part
from layerwise_core.bidirectional_llama import (
    BidirectionalLlamaConfig,
    BidirectionalLlamaForMaskedDiffusion,
)
from sparse_ft import ELASFFN, ELASConfig, LowRankLinear, ReLU2MLPConfig

__all__ = ["build_model", "init_model_weights", "initial_value"]


def build_model(
    cfg: ModelConfig,
    vocab_size: int,
    block_size: int,
    eos_token_id: int | None = None,
    *,
    objective: str = "ntp",
    mask_token_id: int | None = None,
    seed: int = 0,
    device: torch.device | str | None = None,
):
    """`LlamaForCausalLM(llama_config(preset, vocab_size, **overrides))` with N(0, init_std) weights
    (the bidirectional masked-diffusion Llama for `objective="mdm"`, the MoE / CoE model of
    `cfg.mlp`, the multi-head `sparse_ft.MultiHeadForCausalLM` of `cfg.heads` with count > 1:
    each head's copy of the last blocks, norm and LM head drawn from its own parameter names,
    so the heads start independent), then ELAS (`sparse_ft.ELASConfig(low_rank=cfg.low_rank, mlp=cfg.mlp).apply`
    when `cfg.mlp` is relu2 or `cfg.low_rank` has a rank; saved as model type "elas_llama"), the
    norm scheme of `cfg.norm` (`ln_scaling.NormConfig.apply`; saved as model type "ln_scaling",
    so the Auto classes reload the model once `ln_scaling` is imported) and the simulated
    quantisation of `cfg.quant`.

    The initial weights are those of `init_model_weights(model, cfg.init_std, seed)`: a function
    of `seed` and the parameter names, not of the global torch RNG (which is left untouched).
    `device`: where the model is materialised (default: torch's default device, the CPU); "meta"
    (or the default inside a `with torch.device("meta")` block) returns it unmaterialised, to be
    sharded first and then materialised by `init_model_weights`.
    """
    target = torch.get_default_device() if device is None else torch.device(device)
    with torch.device("meta"):
        model = _construct(cfg, vocab_size, block_size, eos_token_id, objective, mask_token_id)
    if target.type != "meta":
        init_model_weights(model, cfg.init_std, seed, target)
    return model


def _construct(cfg, vocab_size, block_size, eos_token_id, objective, mask_token_id):
    """The model of `build_model`, with the values its constructors give (on the meta device:
    none)."""
    fields = dict(cfg.overrides)
    if cfg.n_kv_heads is not None:  # grouped-query attention (validated: divides the heads)
        fields["num_key_value_heads"] = cfg.n_kv_heads
    fields.setdefault("max_position_embeddings", max(block_size, 128))
    if eos_token_id is not None:
        fields.setdefault("eos_token_id", eos_token_id)
    config = llama_config(cfg.preset, vocab_size=vocab_size, **fields)
    if config.max_position_embeddings < block_size:
        raise UsageError(
            f"train.block_size {block_size} exceeds model max_position_embeddings "
            f"{config.max_position_embeddings}: raise model.overrides.max_position_embeddings"
        )
    if objective == "mdm" and cfg.heads.enabled:
        raise UsageError(
            f"model.heads={cfg.heads.count} builds a causal multi-head Llama, and objective=mdm "
            "trains a bidirectional one: use objective=ntp with model.heads, or model.heads=1"
        )
    if objective == "mdm":
        # a masked-diffusion LM: the same Llama with bidirectional attention and a [MASK] id
        # (the tokenizer's, or one extra id past its vocabulary)
        if mask_token_id is None:
            mask_token_id = vocab_size
            config = llama_config(cfg.preset, vocab_size=vocab_size + 1, **fields)
        kept = {
            k: v
            for k, v in config.to_dict().items()
            if k not in ("model_type", "architectures", "transformers_version")
        }
        model = BidirectionalLlamaForMaskedDiffusion(
            BidirectionalLlamaConfig(mask_token_id=mask_token_id, logit_shift=0, **kept)
        )
    elif cfg.heads.enabled:  # NeuroTrails / TreeNet / full ensemble: sparse_ft.MultiHeadForCausalLM
        # (ModelConfig refuses other MLPs, norm schemes and low_rank with it)
        model = cfg.heads.build(config)
    elif cfg.mlp.name in ("moe", "coe"):  # coe_moe.MoEMLPConfig / CoEMLPConfig
        model = cfg.mlp.build(config, init_std=cfg.init_std)
    else:
        model = LlamaForCausalLM(config)
    if cfg.elas:  # on the meta device: the factors and the FFN are materialised with the rest
        _elas_config(cfg).apply(model)
    if cfg.norm.scheme != "pre_ln":  # Mix-LN's new Post-LN norms start at ones
        cfg.norm.apply(model)
    return cfg.quant.apply(model)


def _elas_config(cfg: ModelConfig) -> ELASConfig:
    """The `sparse_ft.ELASConfig` of `model.low_rank` and `model.mlp` (None: SwiGLU kept, low-rank
    if `low_rank.mlp`), as the package's own classes (the model's config records its dump)."""
    mlp = None
    if cfg.mlp.name == "relu2":
        mlp = ReLU2MLPConfig.model_validate(cfg.mlp.model_dump(exclude={"name"}))
    return ELASConfig(low_rank=cfg.low_rank, mlp=mlp)


def _init_rule(module: nn.Module, name: str) -> str:
    """How parameter `name` of `module` starts: "normal" (N(0, init_std)), "xavier_normal",
    "ones" or "zeros"."""
    kind = type(module).__name__
    if isinstance(module, (nn.Linear, nn.Embedding)):  # FakeQuantLinear included
        return "normal" if name == "weight" else "zeros"  # the papers' init (init_normal_)
    if isinstance(module, LowRankLinear):  # LORO / ELAS: both factors Xavier normal
        return "xavier_normal" if name in ("weight_in", "weight_out") else "zeros"
    if isinstance(module, (CoEExperts, CoERouter)):  # CoEPreTrainedModel._init_weights
        return "normal"
    if isinstance(module, (nn.LayerNorm, nn.RMSNorm)) or (
        ("RMSNorm" in kind or "LayerNorm" in kind) and not kind.startswith("Gemma")
    ):
        return "ones" if name == "weight" else "zeros"
    raise TypeError(
        f"init_model_weights: no initialisation rule for parameter {name!r} of {kind}: add one "
        "to layerwise.models.build._init_rule"
    )


def _parameter_seed(seed: int, name: str) -> int:
    """A 63-bit generator seed from (seed, parameter name), the same in every process (unlike
    Python's salted `hash`)."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def initial_value(
    rule: str, name: str, shape: torch.Size, dtype: torch.dtype, init_std: float, seed: int
) -> torch.Tensor:
    """The full initial value of parameter `name` on the CPU: N(0, init_std) from a generator
    seeded by (seed, name) for `rule="normal"`; Xavier normal for `rule="xavier_normal"`
    (N(0, 2 / (fan_in + fan_out)), torch.nn.init.xavier_normal_'s std with gain 1: for a factor
    [a, r] that is 2 / (a + r) whichever side is the fan-in), from the same generator; else ones
    or zeros."""
    if rule == "ones":
        return torch.ones(shape, dtype=dtype, device="cpu")
    if rule == "zeros":
        return torch.zeros(shape, dtype=dtype, device="cpu")
    std = init_std
    if rule == "xavier_normal":
        fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(torch.empty(shape, device="meta"))
        std = math.sqrt(2.0 / float(fan_in + fan_out))
    elif rule != "normal":
        raise ValueError(f"unknown initialisation rule {rule!r}")
    generator = torch.Generator(device="cpu").manual_seed(_parameter_seed(seed, name))
    return torch.empty(shape, dtype=dtype, device="cpu").normal_(0.0, std, generator=generator)


def _named_parameters(model: nn.Module) -> Iterator[tuple[str, nn.Module, str, nn.Parameter]]:
    """(qualified name, module, local name, parameter), each parameter once under its first name
    (`model.named_parameters()`'s names: a tied weight is initialised once)."""
    seen: set[int] = set()
    for prefix, module in model.named_modules():
        for name, param in module.named_parameters(recurse=False):
            if id(param) not in seen:
                seen.add(id(param))
                yield (f"{prefix}.{name}" if prefix else name), module, name, param


def _recompute_buffers(model: nn.Module) -> None:
    """Buffers after `to_empty`: RoPE's inverse frequencies from the config, as the rotary
    embedding's constructor computes them; ELAS's warm-up step `elas_step` zero (no update
    done); any other buffer is refused (its value is unknown)."""
    for prefix, module in model.named_modules():
        names = [name for name, _ in module.named_buffers(recurse=False)]
        if not names:
            continue
        if sorted(names) == ["inv_freq", "original_inv_freq"] and hasattr(module, "rope_type"):
            if module.rope_type == "default":
                rope_fn = module.compute_default_rope_parameters
            else:
                rope_fn = ROPE_INIT_FUNCTIONS[module.rope_type]
            with torch.device("cpu"):
                inv_freq, _ = rope_fn(module.config)
            module.inv_freq.copy_(inv_freq)
            module.original_inv_freq.copy_(inv_freq)
            continue
        if names == ["elas_step"] and isinstance(module, ELASFFN):  # no update done yet
            module.set_step(0)  # the buffer and its host copy
            continue
        raise TypeError(
            f"init_model_weights: cannot recompute the buffers {names} of {prefix or 'the model'} "
            f"({type(module).__name__}) after a meta-device build: add them to "
            "layerwise.models.build._recompute_buffers"
        )


@torch.no_grad()
def init_model_weights(
    model: nn.Module, init_std: float, seed: int, device: torch.device | str = "cpu"
) -> nn.Module:
    """Materialise `model`, built on the meta device (`build_model(..., device="meta")`) and
    possibly sharded since (FSDP2's `fully_shard`), on `device`, with its initial weights; in
    place, returns it.

    Each parameter's full value (`initial_value`: N(0, init_std) from a generator seeded by
    (seed, name), ones or zeros, see `_init_rule`) is made on the CPU, one parameter at a time, and
    this process's part of it (a DTensor's local shard) is copied to `device`: the weights equal
    those of the model materialised whole, bit for bit, and a process holds its shards plus one
    full parameter at most. RoPE buffers are recomputed.
    """
    model.to_empty(device=device)
    tie = getattr(model, "tie_weights", None)
    if callable(tie) and getattr(getattr(model, "config", None), "tie_word_embeddings", False):
        tie()  # to_empty gave the embedding and the LM head separate tensors
    for name, module, local, param in _named_parameters(model):
        rule = _init_rule(module, local)
        full = initial_value(rule, name, param.shape, param.dtype, init_std, seed)
        target = param.to_local() if is_dtensor(param) else param
        target.copy_(local_part(full, param))
    _recompute_buffers(model)
    return model

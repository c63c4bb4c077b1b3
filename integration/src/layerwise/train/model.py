"""The model of a run: a Hugging Face `LlamaForCausalLM` of a named size, initialised as in the papers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from layerwise.train.config import ModelConfig
from layerwise_core import (
    UsageError,
    check_tokenizer_fits,
    init_normal_,
    llama_config,
    load_tokenizer_folder,
    require_model_folder,
)

__all__ = ["build_model", "load_model_and_tokenizer", "load_saved_model", "load_trained_model"]


def build_model(
    cfg: ModelConfig,
    vocab_size: int,
    block_size: int,
    eos_token_id: int | None = None,
    *,
    objective: str = "ntp",
    mask_token_id: int | None = None,
):
    """`LlamaForCausalLM(llama_config(preset, vocab_size, **overrides))` with N(0, init_std) weights,
    then the norm scheme of `cfg.norm` (`ln_scaling.apply_norm_scheme`; saved as model type
    "ln_scaling", so the Auto classes reload the model exactly once `ln_scaling` is imported).

    Draws from the global torch RNG: seed it first (`layerwise_core.set_seed`).
    """
    from transformers import LlamaForCausalLM

    fields = dict(cfg.overrides)
    fields.setdefault("max_position_embeddings", max(block_size, 128))
    if eos_token_id is not None:
        fields.setdefault("eos_token_id", eos_token_id)
    config = llama_config(cfg.preset, vocab_size=vocab_size, **fields)
    if config.max_position_embeddings < block_size:
        raise UsageError(
            f"train.block_size {block_size} exceeds model max_position_embeddings "
            f"{config.max_position_embeddings}: raise model.overrides.max_position_embeddings"
        )
    if objective == "mdm":
        # a masked-diffusion LM: the same Llama with bidirectional attention and a [MASK] id
        # (the tokenizer's, or one extra id past its vocabulary)
        from layerwise_core.bidirectional_llama import (
            BidirectionalLlamaConfig,
            BidirectionalLlamaForMaskedDiffusion,
        )

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
    elif cfg.mlp != "dense":
        model = _build_moe_model(cfg, config)
    else:
        model = LlamaForCausalLM(config)
    init_normal_(model, cfg.init_std)
    if cfg.norm != "pre_ln":
        # after the init: Mix-LN's new Post-LN norms start at ones, LNS adds no parameters
        from ln_scaling import apply_norm_scheme

        apply_norm_scheme(model, cfg.norm, post_ln_fraction=cfg.post_ln_fraction)
    _apply_quant(model, cfg)
    return model


def _apply_quant(model, cfg: ModelConfig) -> None:
    """Simulated low-precision training (`model.quant`): fake-quantised Linear layers."""
    if cfg.quant != "none":
        from layerwise_kernels import apply_fake_quant

        apply_fake_quant(
            model,
            cfg.quant,
            weight_group_size=cfg.quant_weight_group_size,
            act_group_size=cfg.quant_act_group_size,
        )


def _build_moe_model(cfg: ModelConfig, llama):
    """A `CoEForCausalLM` with the preset's attention, norms and embeddings and an MoE MLP:
    `mlp: moe` is C = 1 (a standard top-k MoE), `mlp: coe` Chain-of-Experts (coe-moe)."""
    from coe_moe import CoEConfig, CoEForCausalLM

    config = CoEConfig(
        vocab_size=llama.vocab_size,
        hidden_size=llama.hidden_size,
        num_hidden_layers=llama.num_hidden_layers,
        num_attention_heads=llama.num_attention_heads,
        num_key_value_heads=llama.num_key_value_heads,
        max_position_embeddings=llama.max_position_embeddings,
        rms_norm_eps=llama.rms_norm_eps,
        rope_parameters=llama.rope_parameters,
        tie_word_embeddings=llama.tie_word_embeddings,
        initializer_range=cfg.init_std,
        eos_token_id=llama.eos_token_id,
        moe_intermediate_size=cfg.moe_intermediate_size or llama.intermediate_size // 4,
        num_experts=cfg.num_experts,
        num_shared_experts=cfg.num_shared_experts,
        top_k=cfg.top_k,
        num_iterations=1 if cfg.mlp == "moe" else cfg.num_iterations,
        aux_loss_coef=cfg.aux_loss_coef,
    )
    return CoEForCausalLM(config)


def load_trained_model(folder, cfg: ModelConfig):
    """Reload a run's saved `final/` model as it was trained: its architecture and norm scheme
    through the Auto classes (`ln_scaling.from_pretrained`) and the fake quantisation of
    `cfg.quant`, which the saved weights do not record."""
    from ln_scaling import from_pretrained

    model = from_pretrained(folder)
    _apply_quant(model, cfg)
    return model


def _run_config(folder: Path):
    """The PretrainConfig of the layerwise run that wrote `folder` (its `final/`), else None."""
    run = folder.parent
    if folder.name != "final" or not (run / "config.yaml").is_file():
        return None
    if not (run / "metrics.jsonl").is_file():
        return None
    from layerwise.train.config import PretrainConfig

    return PretrainConfig.from_yaml(run / "config.yaml")


def load_saved_model(path: str | Path, what: str = "model") -> nn.Module:
    """A saved model in eval mode, as it was trained.

    - a layerwise run's `RUN/final`: `load_trained_model` with the run's `model` config (adds the
      fake quantisation of `model.quant`);
    - any other folder: `ln_scaling.from_pretrained`, the Auto route after importing the package
      its model type needs (LNS / Mix-LN, CoE, masked-diffusion models), which also reads
      checkpoints saved by pre-release ln-scaling.
    """
    # not a saved model folder (nothing there, no config.json, a hub id): a MissingPathError
    # naming `what` ("--model") and the fix
    folder = require_model_folder(path, what)
    run_cfg = _run_config(folder)
    if run_cfg is not None:
        return load_trained_model(folder, run_cfg.model).eval()
    from ln_scaling import from_pretrained

    return from_pretrained(folder).eval()


def load_model_and_tokenizer(
    model_path: str | Path, tokenizer_path: str | Path | None = None
) -> tuple[nn.Module, Any]:
    """`load_saved_model(model_path)` and its tokenizer (`tokenizer_path`, default the model's
    folder), every input checked before the weights load: the model folder (a hub id is refused
    with how to download it), the tokenizer folder, and a tokenizer no larger than the model's
    vocabulary. Errors are `UsageError`s naming `--model` / `--tokenizer` and the fix."""
    folder = require_model_folder(model_path, "--model")
    if tokenizer_path is None:
        tokenizer = load_tokenizer_folder(
            folder, "--model", "save the tokenizer there, or pass --tokenizer FOLDER"
        )
        name = "the tokenizer in the --model folder"
    else:
        tokenizer = load_tokenizer_folder(tokenizer_path, "--tokenizer")
        name = f"--tokenizer {str(tokenizer_path)!r}"
    check_tokenizer_fits(
        tokenizer,
        folder,  # its config.json: checked before the weights load
        tokenizer_name=name,
        fix="pass the tokenizer the model was trained with (--tokenizer; default: the model's)",
    )
    return load_saved_model(folder, "--model"), tokenizer

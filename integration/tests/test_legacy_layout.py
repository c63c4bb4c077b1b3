"""The config layout before the package-owned configs still reads (`layerwise.legacy_layout`): every
old key lands on its new place with a FutureWarning naming both, the old integration defaults fill
what an old file left out (so it describes the same run), and an old run folder resumes."""

from __future__ import annotations

import warnings

import pytest
import yaml

from layerwise.eval.decode import DecodeConfig
from layerwise.finetune import FinetuneConfig
from layerwise.models import ModelConfig
from layerwise.train import PretrainConfig, latest_checkpoint, pretrain
from layerwise.train.config import resume_changes

# what `PretrainConfig().to_yaml()` wrote before (data and train omitted: unchanged), with a
# run's values in place of a few defaults
OLD_DUMP = """
model:
  preset: llama-tiny
  overrides: {}
  norm: mix_ln
  post_ln_fraction: 0.5
  quant: int4
  quant_weight_group_size: 32
  quant_act_group_size: null
  mlp: dense
  num_experts: 63
  num_shared_experts: 1
  moe_intermediate_size: null
  top_k: 8
  num_iterations: 2
  aux_loss_coef: 0.001
  init_std: 0.02
optim:
  lr: 0.003
  betas: [0.9, 0.95]
  weight_decay: 0.1
  eps: 1.0e-08
  warmup_steps: 50
  min_lr_ratio: 0.1
  grad_clip: 0.5
train:
  steps: 100
objective: meap
mask_ratio: 0.2
mask_mode: per_sequence
optimizer: stable_spam
spam:
  warmup_steps: 150
  threshold: 5000.0
  reset_interval: 500
  clip_delay: 20
  density: 1.0
  reference_quirks: false
stable_spam:
  gamma1: 0.85
  gamma2: 0.9
  gamma3: 0.999
  total_steps: null
  eta_min: 0.5
  reset_interval: 1000
  reference_quirks: false
spectral: llr
spectral_options:
  interval: 50
  ratio: null
  active_fraction: 0.2
  ramp_steps: 50
  exclude_first_last: true
  min_eigs: 50
"""

NEW_LAYOUT = {
    "model": {
        "preset": "llama-tiny",
        "norm": {"scheme": "mix_ln", "post_ln_fraction": 0.5},
        "quant": {"format": "int4", "weight_group_size": 32},
        "mlp": "dense",
    },
    "objective": {"name": "meap", "mask_ratio": 0.2, "mask_mode": "per_sequence"},
    "optimizer": {
        "name": "stable_spam",
        "lr": 3e-3,
        "betas": [0.9, 0.95],
        "weight_decay": 0.1,
        "eps": 1e-8,
        "gamma1": 0.85,
    },
    "spectral": {"name": "llr", "interval": 50},
    "schedule": {"warmup_steps": 50},
    "train": {"steps": 100, "grad_clip": 0.5},
}


def test_an_old_dump_migrates_to_the_same_config_with_one_warning():
    with pytest.warns(FutureWarning) as caught:
        old = PretrainConfig.from_dict(yaml.safe_load(OLD_DUMP))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the new layout: no warning
        new = PretrainConfig.from_dict(NEW_LAYOUT)
    assert old == new
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and messages[0].startswith("PretrainConfig: old config keys")
    for move in (
        "optim.lr -> optimizer.lr",
        "optim.warmup_steps -> schedule.warmup_steps",
        "optim.grad_clip -> train.grad_clip",
        "stable_spam.gamma1 -> optimizer.gamma1",
        "spam -> (dropped: optimizer is stable_spam)",
        "spectral_options.interval -> spectral.interval",
        "spectral_options.exclude_first_last -> (dropped: not used by spectral=llr)",
        "mask_ratio -> objective.mask_ratio",
        "model.post_ln_fraction -> model.norm.post_ln_fraction",
        "model.quant_weight_group_size -> model.quant.weight_group_size",
        "model.top_k -> (dropped: model.mlp is dense)",
    ):
        assert move in messages[0], move
    assert "PretrainConfig().to_yaml()" in messages[0]


def test_an_old_file_keeps_the_old_defaults_it_relied_on():
    """The old integration's AdamW was (0.9, 0.95) with decay 0.1, CoE took top_k 8; the packages'
    defaults differ, so a migrated old file gets the old values (and the warning says so)."""
    with pytest.warns(FutureWarning, match=r"the old defaults filled in: .*optimizer.betas"):
        cfg = PretrainConfig.from_dict({"optim": {"lr": 1e-2}, "model": {"mlp": "coe"}})
    assert (cfg.optimizer.name, cfg.optimizer.lr, cfg.optimizer.betas) == (
        "adamw",
        1e-2,
        (0.9, 0.95),
    )
    assert cfg.optimizer.weight_decay == 0.1
    assert (cfg.model.mlp.name, cfg.model.mlp.top_k, cfg.model.mlp.num_iterations) == ("coe", 8, 2)
    new = PretrainConfig.from_dict({"model": {"mlp": "coe"}})  # the new layout: the paper's K = 4
    assert (new.model.mlp.top_k, new.optimizer.betas) == (4, (0.9, 0.999))


def test_an_old_override_on_a_new_file_is_the_later_word():
    with pytest.warns(FutureWarning, match=r"schedule.warmup_steps \(replacing its value 50\)"):
        cfg = PretrainConfig.from_dict(NEW_LAYOUT, ["optim.warmup_steps=7", "optim.lr=1e-2"])
    assert (cfg.schedule.warmup_steps, cfg.optimizer.lr, cfg.optimizer.gamma1) == (7, 1e-2, 0.85)


def test_an_old_model_section_alone_migrates():
    """A run's final/ folder is reloaded from its `model:` section only (layerwise.models)."""
    with pytest.warns(FutureWarning, match="ModelConfig: old config keys"):
        model = ModelConfig.from_dict(
            {"mlp": "moe", "num_experts": 4, "top_k": 2, "num_iterations": 3, "quant": "int8"}
        )
    assert (model.mlp.name, model.mlp.num_experts, model.mlp.top_k) == ("moe", 4, 2)
    assert model.mlp.num_iterations == 1  # a top-k MoE: the old key was ignored, it still is
    assert model.quant.format == "int8"


def test_old_finetune_and_decode_layouts_migrate():
    old = {
        "finetune": {
            "method": "lift",
            "lift": {"filter_rank": 16},
            "seft": {"budget_rank": 4},
            "prune": {"method": "wanda"},
        },
        "optim": {"lr": 1e-4, "warmup_ratio": 0.1, "grad_clip": None},
    }
    with pytest.warns(FutureWarning, match="FinetuneConfig: old config keys") as caught:
        cfg = FinetuneConfig.from_dict(old)
    assert "finetune.seft -> (dropped: the method is lift)" in str(caught[0].message)
    # LIFT's old integration defaults (rank 8 / filter 32, static masks), not the paper's
    assert (cfg.method.name, cfg.method.lora_rank, cfg.method.filter_rank) == ("lift", 8, 16)
    assert cfg.method.update_interval is None
    assert (cfg.prune.method, cfg.prune.calibration_sequences) == ("wanda", 32)
    assert (cfg.optimizer.lr, cfg.optimizer.eps, cfg.optimizer.weight_decay) == (1e-4, 1e-6, 0.0)
    assert (cfg.schedule.warmup_ratio, cfg.train.grad_clip) == (0.1, None)
    seft = FinetuneConfig.from_dict({"finetune": {"method": "seft"}, "train": {"seed": 5}})
    assert seft.method.seed == 5  # the old SEFT drew its support from train.seed
    lora = FinetuneConfig.from_dict({"finetune": {"method": "lora", "lora": {"alpha": 32}}})
    assert (lora.method.r, lora.method.lora_alpha) == (8, 32.0)

    with pytest.warns(FutureWarning, match=r"options.steps -> decode.steps"):
        decode = DecodeConfig.from_dict({"decode": "prophet", "options": {"steps": 16}})
    assert (decode.decode.name, decode.decode.steps) == ("prophet", 16)
    assert decode == DecodeConfig.from_dict({}, ["decode=prophet", "decode.steps=16"])


def _old_layout(new: dict) -> dict:
    """The config.yaml an old layerwise wrote for a default-choice run `new` (AdamW, ntp, Pre-LN,
    dense, no quantisation, no spectral controller)."""
    old = {k: v for k, v in new.items() if k in ("data", "train")}
    old["train"] = {k: v for k, v in new["train"].items() if k != "grad_clip"}
    model = dict(new["model"])
    model.update(norm="pre_ln", post_ln_fraction=0.25, quant="none", mlp="dense")
    model.update(quant_weight_group_size=None, quant_act_group_size=None, num_experts=63)
    optimizer = {k: v for k, v in new["optimizer"].items() if k != "name"}
    old.update(
        model=model,
        optim={**optimizer, **new["schedule"], "grad_clip": new["train"]["grad_clip"]},
        objective="ntp",
        mask_ratio=0.15,
        mask_mode="reference",
        optimizer="adamw",
        spam={"density": 1.0},
        spectral="none",
        spectral_options={"interval": None, "min_eigs": 50},
    )
    return old


def test_an_old_run_folder_resumes(small_data, tmp_path, tiny_run):
    run = tmp_path / "run"
    cfg = tiny_run(run, "train.steps=3", "train.save_every=1")
    pretrain(cfg, data=small_data, stop_at=2)
    checkpoint = latest_checkpoint(run / "checkpoints")
    old = _old_layout(cfg.to_dict())
    (checkpoint / "config.yaml").write_text(yaml.safe_dump(old))  # as an old layerwise wrote it
    with pytest.warns(FutureWarning):
        assert resume_changes(PretrainConfig.from_dict(old), cfg) == ({}, {})
    with pytest.warns(FutureWarning, match="PretrainConfig: old config keys"):
        result = pretrain(cfg.with_overrides(["train.resume=true"]), data=small_data)
    assert result.step == 3

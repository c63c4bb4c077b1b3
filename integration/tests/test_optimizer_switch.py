"""`optimizer: adamw | spam | stable_spam` and `model.quant`: the right optimizer with the configured
hyperparameters, and a SPAM / Stable-SPAM run in simulated INT4 resumes bit for bit (every
optimizer counter and the sparse-momentum masks survive the checkpoint)."""

from __future__ import annotations

import pytest
import torch

from layerwise.train import pretrain, read_model_state
from layerwise.train.model import build_model
from layerwise.train.optimizers import build_optimizer
from layerwise_kernels import FakeQuantLinear
from spam_opt import SPAM, StableSPAM


def test_builder_passes_the_configuration(tiny_run, tmp_path):
    cfg = tiny_run(
        tmp_path,
        "optimizer.name=spam",
        "optimizer.density=0.5",
        "optimizer.reset_interval=7",
        "optimizer.weight_decay=0.1",
        "model.quant=int4",
    )
    model = build_model(cfg.model, vocab_size=100, block_size=64)
    assert isinstance(model.model.layers[0].self_attn.q_proj, FakeQuantLinear)
    assert not isinstance(model.lm_head, FakeQuantLinear)
    opt = build_optimizer(cfg, model)
    assert isinstance(opt, SPAM)
    names = {n: g for g in opt.param_groups for n in g["param_names"]}
    assert names["model.layers.0.mlp.up_proj.weight"].get("density") == 0.5
    assert names["model.embed_tokens.weight"].get("density", 1.0) == 1.0  # dense: not attn/MLP
    assert names["model.norm.weight"]["weight_decay"] == 0.0
    assert all(g["reset_interval"] == 7 for g in opt.param_groups)
    assert sorted(names) == sorted(n for n, _ in model.named_parameters())
    cfg = tiny_run(
        tmp_path, "optimizer.name=stable_spam", "optimizer.gamma1=0.85", "train.steps=10"
    )
    opt = build_optimizer(cfg, build_model(cfg.model, vocab_size=100, block_size=64))
    assert isinstance(opt, StableSPAM)
    assert opt.param_groups[0]["gamma1"] == 0.85 and opt.param_groups[0]["total_steps"] == 10


@pytest.mark.parametrize(
    "choice",
    [
        (
            "optimizer.name=spam",
            "optimizer.density=0.5",
            "optimizer.reset_interval=4",
            "optimizer.warmup_steps=2",
            "optimizer.clip_delay=2",
        ),
        ("optimizer.name=stable_spam", "optimizer.reset_interval=4"),
    ],
)
def test_spam_int4_run_resumes_bitwise(small_data, tmp_path, tiny_run, choice):
    common = (
        *choice,
        "model.quant=int4",
        "train.steps=8",
        "train.save_every=3",
        "train.grad_clip=null",
    )
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    pretrain(tiny_run(straight, *common), data=small_data)
    pretrain(tiny_run(resumed, *common), stop_at=3, data=small_data)
    torch.manual_seed(123)  # disturb the global RNG between the invocations
    pretrain(tiny_run(resumed, *common, "train.resume=true"), data=small_data)
    expected = read_model_state(straight / "checkpoints" / "step_8")
    got = read_model_state(resumed / "checkpoints" / "step_8")
    for name, value in expected.items():
        assert torch.equal(value, got[name]), name

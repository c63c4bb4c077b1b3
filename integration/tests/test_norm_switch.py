"""`model.norm: pre_ln | lns | mix_ln` builds the ln-scaling model, trains it, and the saved final
model reloads exactly with `ln_scaling.from_pretrained` (a cross-package test)."""

import pytest
import torch

from layerwise.train import pretrain
from layerwise.train.model import build_model
from ln_scaling import from_pretrained, is_layernorm_scaled, norm_scheme


@pytest.mark.parametrize("norm", ["pre_ln", "lns", "mix_ln"])
def test_norm_switch_builds_the_scheme(tiny_run, tmp_path, norm):
    cfg = tiny_run(
        tmp_path,
        f"model.norm={norm}",
        "model.preset=llama-60m",
        "model.overrides.num_hidden_layers=4",
        "model.overrides.hidden_size=32",
        "model.overrides.intermediate_size=64",
        "model.overrides.num_attention_heads=4",
        "model.overrides.num_key_value_heads=4",
    ).model
    model = build_model(cfg, vocab_size=100, block_size=64)
    assert norm_scheme(model.config) == norm
    assert is_layernorm_scaled(model) == (norm == "lns")
    post = [hasattr(layer, "post_feedforward_layernorm") for layer in model.model.layers]
    assert post == ([True, False, False, False] if norm == "mix_ln" else [False] * 4)


def test_trained_lns_model_reloads_exactly(small_data, tmp_path, tiny_run):
    cfg = tiny_run(
        tmp_path / "run",
        "model.norm=mix_ln",
        "model.norm.post_ln_fraction=0.5",
        "train.steps=3",
        "schedule.warmup_steps=1",
    )
    pretrain(cfg, data=small_data)
    model = from_pretrained(tmp_path / "run" / "final").eval()
    assert norm_scheme(model.config) == "mix_ln"
    # the trained Post-LN norms moved away from their init of ones and were reloaded
    assert not torch.equal(
        model.model.layers[0].post_feedforward_layernorm.weight,
        torch.ones_like(model.model.layers[0].post_feedforward_layernorm.weight),
    )
    from safetensors.torch import load_file

    saved = load_file(tmp_path / "run" / "final" / "model.safetensors")
    for name, tensor in model.state_dict().items():
        if name in saved:
            assert torch.equal(saved[name], tensor), name

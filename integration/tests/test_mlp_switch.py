"""`model.mlp: moe | coe` trains a coe-moe model with its load-balancing loss and reloads as trained."""

import pytest
import torch

from coe_moe import CoEForCausalLM
from layerwise.train import pretrain
from layerwise.train.model import build_model, load_trained_model
from layerwise.train.pretrain import _train_loss


@pytest.mark.parametrize("mlp,iterations", [("moe", 1), ("coe", 2)])
def test_mlp_switch_trains_and_reloads(small_data, tmp_path, tiny_run, mlp, iterations):
    cfg = tiny_run(
        tmp_path / mlp,
        f"model.mlp={mlp}",
        "model.mlp.num_experts=4",
        "model.mlp.top_k=2",
        "model.mlp.moe_intermediate_size=16",
        "train.steps=3",
        "schedule.warmup_steps=1",
    )
    model = build_model(cfg.model, len(small_data.tokenizer), 64)
    assert isinstance(model, CoEForCausalLM) and model.config.num_iterations == iterations
    blocks = small_data.train.gather(torch.arange(2))
    model.train()
    out = model(input_ids=blocks[:, :-1])
    # the training loss carries the balance loss: LM cross-entropy + aux (alpha * sum of losses)
    lm = torch.nn.functional.cross_entropy(
        out.logits.reshape(-1, out.logits.size(-1)), blocks[:, 1:].reshape(-1)
    )
    torch.testing.assert_close(_train_loss(model, blocks), lm + out.aux_loss)
    assert out.aux_loss > 0
    pretrain(cfg, data=small_data)
    again = load_trained_model(tmp_path / mlp / "final", cfg.model).eval()
    assert isinstance(again, CoEForCausalLM)
    with pytest.raises(ValueError, match="top_k"):
        tiny_run(tmp_path, f"model.mlp={mlp}", "model.mlp.num_experts=2", "model.mlp.top_k=4")

"""PEFT-style API: save/load round trips are bit-exact (LIFT after refreshes, SEFT after re-pruning),
merge equals the adapted forward, checkpoint/resume continues the same run, targets, errors."""

import pytest
import torch

from layerwise_core import tiny_llama
from sparse_ft import (
    LiftConfig,
    SeftConfig,
    SparseFTModel,
    get_sparse_model,
    prune,
    target_linear_names,
)


def _steps(model, opt, start, stop):
    for step in range(start, stop):
        ids = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(step))
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
        model.after_optimizer_step(opt)


def _trained(method, tmp_path):
    if method == "lift":
        base = lambda: tiny_llama(seed=1)  # noqa: E731
        config = LiftConfig(lora_rank=2, filter_rank=3, update_interval=2)
    else:
        calib = torch.randint(0, 128, (4, 16), generator=torch.Generator().manual_seed(0))

        def base():
            model = tiny_llama(seed=1)
            prune(model, "wanda", 0.5, calibration=calib)
            return model

        config = SeftConfig(budget_rank=2, update_interval=2, drop_fraction=0.3)
    sparse = get_sparse_model(base(), config)
    opt = torch.optim.AdamW(sparse.trainable_parameters(), lr=3e-2)
    _steps(sparse, opt, 0, 5)
    return sparse, base


@pytest.mark.parametrize("method", ["lift", "seft"])
def test_save_load_round_trip_is_exact(method, tmp_path):
    sparse, base = _trained(method, tmp_path)
    assert sparse.delta_stats()["touched"] > 0  # the frozen weights changed: refreshes / pruning
    sparse.save_pretrained(tmp_path / "adapter")
    loaded = SparseFTModel.from_pretrained(base(), tmp_path / "adapter")
    assert loaded.peft_config == sparse.peft_config
    ids = torch.randint(0, 128, (3, 9), generator=torch.Generator().manual_seed(42))
    assert torch.equal(sparse(input_ids=ids).logits, loaded(input_ids=ids).logits)
    want = sparse(input_ids=ids).logits
    merged = loaded.merge_and_unload()
    torch.testing.assert_close(merged(input_ids=ids).logits, want, rtol=0, atol=0)
    reference = sparse.merge_and_unload()
    for (name, p), (_, q) in zip(merged.named_parameters(), reference.named_parameters()):
        assert torch.equal(p, q), name


def test_checkpoint_resume_continues_the_same_run():
    config = LiftConfig(lora_rank=2, filter_rank=3, update_interval=2)
    straight = get_sparse_model(tiny_llama(seed=2), config)
    opt = torch.optim.AdamW(straight.trainable_parameters(), lr=3e-2)
    _steps(straight, opt, 0, 6)

    first = get_sparse_model(tiny_llama(seed=2), config)
    opt1 = torch.optim.AdamW(first.trainable_parameters(), lr=3e-2)
    _steps(first, opt1, 0, 3)
    model_state, opt_state = first.state_dict(), opt1.state_dict()
    resumed = get_sparse_model(tiny_llama(seed=2), config)
    resumed.load_state_dict(model_state)
    opt2 = torch.optim.AdamW(resumed.trainable_parameters(), lr=3e-2)
    opt2.load_state_dict(opt_state)
    _steps(resumed, opt2, 3, 6)
    for (name, p), (_, q) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(p, q), name


def test_target_modules_and_errors():
    model = tiny_llama()
    assert len(target_linear_names(model)) == 14  # 7 Linear per block, 2 blocks, no lm_head
    assert target_linear_names(model, ["q_proj", "v_proj"]) == [
        "model.layers.0.self_attn.q_proj",
        "model.layers.0.self_attn.v_proj",
        "model.layers.1.self_attn.q_proj",
        "model.layers.1.self_attn.v_proj",
    ]
    assert target_linear_names(model, r".*\.1\.mlp\.down_proj") == ["model.layers.1.mlp.down_proj"]
    with pytest.raises(ValueError, match="matches no nn.Linear"):
        target_linear_names(model, ["nope"])
    sparse = get_sparse_model(
        model, LiftConfig(lora_rank=1, filter_rank=1, target_modules=["o_proj"])
    )
    assert [p.requires_grad for p in sparse.parameters()].count(True) == 2
    with pytest.raises(ValueError, match="merge_and_unload"):
        get_sparse_model(sparse.base_model, LiftConfig())
    with pytest.raises(FileNotFoundError, match="save_pretrained"):
        SparseFTModel.from_pretrained(tiny_llama(), "/nonexistent")
    generated = sparse.generate(
        torch.zeros(1, 3, dtype=torch.long), max_new_tokens=2, do_sample=False
    )
    assert generated.shape == (1, 5)

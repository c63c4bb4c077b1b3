"""AdamWConfig: torch.optim.AdamW's defaults, the optimizer it builds, the betas it refuses."""

import inspect

import pytest
import torch

from layerwise_core import AdamWConfig, ConfigError, decay_param_groups


def test_defaults_are_torch_adamw_defaults():
    signature = inspect.signature(torch.optim.AdamW).parameters
    cfg = AdamWConfig()
    for field in AdamWConfig.model_fields:
        assert getattr(cfg, field) == signature[field].default, field


def test_build_takes_the_same_steps_as_torch_adamw_made_by_hand():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 3), torch.nn.LayerNorm(3))
    twin = torch.nn.Sequential(torch.nn.Linear(5, 3), torch.nn.LayerNorm(3))
    twin.load_state_dict(model.state_dict())
    cfg = AdamWConfig(lr=3e-2, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.1)
    ours = cfg.build(decay_param_groups(model, cfg.weight_decay))
    reference = torch.optim.AdamW(
        [
            {"params": [twin[0].weight], "weight_decay": 0.1},
            {"params": [twin[0].bias, *twin[1].parameters()], "weight_decay": 0.0},
        ],
        lr=3e-2,
        betas=(0.8, 0.95),
        eps=1e-6,
    )
    x = torch.randn(7, 5)
    for _ in range(3):
        for net, opt in ((model, ours), (twin, reference)):
            opt.zero_grad()
            net(x).pow(2).sum().backward()
            opt.step()
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert [g["weight_decay"] for g in ours.param_groups] == [0.1, 0.0]  # norms not decayed


@pytest.mark.parametrize("betas", ["[1.0, 0.9]", "[0.9, -0.1]"])
def test_betas_outside_zero_one_are_refused_with_the_fix(betas):
    with pytest.raises(ConfigError, match=r"field 'betas': Adam's betas .* use e.g. \[0.9, 0.95\]"):
        AdamWConfig.from_dict({}, [f"betas={betas}"])
    with pytest.raises(ConfigError, match="field 'lr'"):
        AdamWConfig.from_dict({"lr": float("nan")})

"""AlphaDecay: the map's endpoints and direction, exclusions, recompute schedule, any optimizer,
state round trip."""

import copy

import pytest
import torch
from torch import nn

from layerwise_core import module_param_groups, tiny_llama
from spectral_opt import AlphaDecay, hill_alpha

SIZE = dict(hidden_size=64, intermediate_size=128, vocab_size=96)
WD = 0.1


def svd_alpha(weight):
    return hill_alpha(torch.linalg.svdvals(weight.detach().double()).pow(2)).item()


def make(optimizer_cls=torch.optim.AdamW, seed=0, **kwargs):
    model = tiny_llama(seed=seed, **SIZE)
    optimizer = optimizer_cls(module_param_groups(model, weight_decay=WD), lr=1e-3)
    return model, optimizer, AlphaDecay(optimizer, model, WD, **kwargs)


def wd_of(optimizer):
    return {g["module_name"]: g["weight_decay"] for g in optimizer.param_groups}


@torch.no_grad()
def heavy_tail(module: nn.Linear, strength: float) -> None:
    """Add a few strong rank-one directions: a heavier ESD tail (lower alpha)."""
    g = torch.Generator().manual_seed(int(strength * 100))
    for _ in range(3):
        u = torch.randn(module.weight.shape[0], 1, generator=g)
        v = torch.randn(1, module.weight.shape[1], generator=g)
        module.weight += strength * 0.02 * u @ v


def test_mapping_endpoints_and_direction():
    model, optimizer, decay = make()
    heavy_tail(model.model.layers[1].mlp.down_proj, 3.0)
    assert decay.step() is True
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    tuned = [n for n in linears[1:-1] if min(model.get_submodule(n).weight.shape) >= 50]
    assert decay.tuned_modules == tuned
    alphas = {n: svd_alpha(model.get_submodule(n).weight) for n in tuned}
    assert decay.alphas == pytest.approx(alphas, abs=1e-4)
    lo, hi = min(alphas, key=alphas.get), max(alphas, key=alphas.get)
    assert lo == "model.layers.1.mlp.down_proj"  # the heavy-tailed one
    wd = wd_of(optimizer)
    assert wd[lo] == pytest.approx(0.6666 * WD)  # heaviest tail -> weakest decay
    assert wd[hi] == pytest.approx(3.0 * WD)
    a_lo, a_hi = alphas[lo], alphas[hi]
    for name in tuned:  # linear in alpha in between, from the paper's formula
        expected = 0.6666 * WD + (alphas[name] - a_lo) / (a_hi - a_lo) * (3.0 - 0.6666) * WD
        assert wd[name] == pytest.approx(expected, abs=1e-5 * WD)


def test_first_last_excluded_and_untuned_groups_keep_base():
    _, optimizer, decay = make()
    decay.step()
    wd = wd_of(optimizer)
    assert "model.layers.0.self_attn.q_proj" not in decay.values
    assert "lm_head" not in decay.values
    assert wd["model.layers.0.self_attn.q_proj"] == WD and wd["lm_head"] == WD
    assert wd[None] == WD  # embeddings and norms
    assert wd["model.layers.0.self_attn.k_proj"] == WD  # N = 32 < min_eigs
    _, optimizer, decay = make(exclude_first_last=False)
    decay.step()
    assert {"model.layers.0.self_attn.q_proj", "lm_head"} <= set(decay.values)


def test_recompute_interval():
    model, optimizer, decay = make(interval=3)
    seen = []
    for t in range(10):
        heavy_tail(model.model.layers[t % 2].mlp.up_proj, 1.0 + t)  # the spectrum keeps moving
        before = wd_of(optimizer)
        updated = decay.step()
        seen.append(updated)
        assert (wd_of(optimizer) != before) == updated
    # step 0, then (step + 1) % 3 == 0
    assert [t for t, u in enumerate(seen) if u] == [0, 2, 5, 8]
    assert [t for t, _ in decay.history] == [0, 2, 5, 8]


@pytest.mark.parametrize("cls", [torch.optim.SGD, torch.optim.Adam, torch.optim.Adagrad])
def test_any_optimizer_with_weight_decay(cls):
    model, optimizer, decay = make(cls)
    decay.step()
    assert min(wd_of(optimizer).values()) == pytest.approx(0.6666 * WD)
    model(torch.randint(0, 96, (2, 8)), labels=torch.randint(0, 96, (2, 8))).loss.backward()
    optimizer.step()


def test_muon_on_linear_groups():
    model = tiny_llama(seed=0, **SIZE)
    groups = [g for g in module_param_groups(model, weight_decay=WD) if g["module_name"]]
    optimizer = torch.optim.Muon(groups, lr=1e-2)
    decay = AlphaDecay(optimizer, model, WD)
    decay.step()
    assert max(wd_of(optimizer).values()) == pytest.approx(3.0 * WD)


def test_errors_name_the_fix():
    model = tiny_llama(seed=0, **SIZE)
    rprop = torch.optim.Rprop(module_param_groups(model))
    with pytest.raises(ValueError, match="no 'weight_decay'"):
        AlphaDecay(rprop, model, WD)


def train_step(model, optimizer, decay, seed):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 96, (2, 12), generator=g)
    decay.step()
    model(ids, labels=ids).loss.backward()
    optimizer.step()
    optimizer.zero_grad()


def test_state_round_trip():
    model, optimizer, decay = make(interval=2)
    for t in range(3):
        train_step(model, optimizer, decay, t)
    state = copy.deepcopy(decay.state_dict())
    opt_state = copy.deepcopy(optimizer.state_dict())
    twin = copy.deepcopy(model)
    twin_opt = torch.optim.AdamW(module_param_groups(twin, weight_decay=WD), lr=1e-3)
    twin_opt.load_state_dict(opt_state)
    for g in twin_opt.param_groups:  # a fresh optimizer: the controller restores the decays
        g["weight_decay"] = WD
    twin_decay = AlphaDecay(twin_opt, twin, WD, interval=2)
    twin_decay.load_state_dict(state)
    assert wd_of(twin_opt) == wd_of(optimizer)
    assert twin_decay.state_dict() == decay.state_dict()
    for t in range(3, 7):
        train_step(model, optimizer, decay, t)
        train_step(twin, twin_opt, twin_decay, t)
        assert wd_of(twin_opt) == wd_of(optimizer)
    assert [t for t, _ in twin_decay.history] == [0, 1, 3, 5]
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)

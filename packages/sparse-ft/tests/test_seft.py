"""SEFT: target sparsity after every optimizer step (unstructured and 2:4), drop/grow and sensitivity
re-pruning vs direct computations on constructed gradients, Adam seeding."""

import pytest
import torch

from layerwise_core import tiny_llama
from sparse_ft import (
    SeftConfig,
    SparseDeltaLinear,
    drop_and_grow,
    get_sparse_model,
    is_nm_sparse,
    prune,
)
from sparse_ft.seft import GrowCollector, PruneCollector, apply_growth, apply_reprune


def _pruned_model(seed=0, pattern=None):
    model = tiny_llama(seed=seed)
    calib = torch.randint(0, 128, (4, 16), generator=torch.Generator().manual_seed(seed))
    prune(model, "wanda", None if pattern else 0.5, pattern=pattern, calibration=calib)
    return model


def _zeros(sparse):
    return [int((m.effective_weight() == 0).sum()) for m in sparse.sparse_modules().values()]


@pytest.mark.parametrize("pattern", [None, "2:4"])
def test_target_sparsity_holds_after_every_update(pattern):
    sparse = get_sparse_model(
        _pruned_model(pattern=pattern),
        SeftConfig(budget_rank=2, update_interval=3, drop_fraction=0.3, pattern=pattern),
    )
    target = sparse.min_zeros.tolist()
    zero_pattern = {n: m.weight == 0 for n, m in sparse.sparse_modules().items()}
    opt = torch.optim.AdamW(sparse.trainable_parameters(), lr=1e-2)
    events = []
    for step in range(10):
        ids = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(step))
        sparse(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
        events.append(sparse.after_optimizer_step(opt))
        assert all(z >= t for z, t in zip(_zeros(sparse), target)), step
        for name, module in sparse.sparse_modules().items():
            w = module.effective_weight()
            if "grown" not in events[-1]:  # grown entries start at 0 until their first step
                assert (w.reshape(-1)[module.indices] != 0).all()  # the support is unpruned
            if pattern:
                assert is_nm_sparse(w, 2, 4)
                assert torch.equal(w == 0, zero_pattern[name])  # growth stays in the pattern
    grown = [e for e in events if "grown" in e]
    assert len(grown) == 3
    if pattern is None:
        assert all(e["reactivated"] > 0 for e in grown)  # pruned weights do come back
        assert sum(e.get("pruned", 0) for e in events) == sum(e["reactivated"] for e in grown)
    else:
        assert all(e["reactivated"] == 0 for e in grown)
    assert sparse.num_trainable() == sum(m.k for m in sparse.sparse_modules().values())


def test_drop_and_grow_by_hand():
    indices = torch.tensor([1, 4, 6, 9])
    values = torch.tensor([0.5, -0.01, 0.2, 0.03])  # drop 4 and 9 (smallest |v|)
    candidates = torch.tensor([0, 2, 7, 8])
    scores = torch.tensor([0.1, 3.0, 2.0, 0.5])  # grow 2 and 7
    new, chosen = drop_and_grow(indices, values, candidates, scores, 2)
    assert new.tolist() == [1, 2, 6, 7]
    assert sorted(candidates[chosen].tolist()) == [2, 7]


def _module(seed=0):
    gen = torch.Generator().manual_seed(seed)
    linear = torch.nn.Linear(8, 6, bias=False)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(6, 8, generator=gen))
        linear.weight.view(-1)[torch.randperm(48, generator=gen)[:24]] = 0  # 50% pruned
    unpruned = (linear.weight.reshape(-1) != 0).nonzero().squeeze(1)
    module = SparseDeltaLinear(linear, unpruned[torch.randperm(24, generator=gen)[:8]])
    with torch.no_grad():
        module.values.copy_(torch.randn(8, generator=gen) * 0.1)
    return module, gen


def test_growth_takes_largest_gradient_outside_support_and_seeds_adam():
    module, gen = _module()
    grads = [torch.randn(6, 8, generator=gen) for _ in range(2)]  # two micro-batches
    collector = GrowCollector(module, n_candidates=48, exclude_pruned=False)
    for g in grads:
        collector(g)
    opt = torch.optim.Adam([module.values], betas=(0.8, 0.9))
    opt.state[module.values].update(
        step=torch.tensor(5.0), exp_avg=torch.ones(8), exp_avg_sq=torch.ones(8)
    )
    old = set(module.indices.tolist())
    old_values = dict(zip(module.indices.tolist(), module.values.tolist()))
    total = (grads[0] + grads[1]).reshape(-1)
    theta = module.base_layer.weight.reshape(-1).clone()
    counts = apply_growth(module, collector, drop_fraction=0.25, optimizer=opt)  # n = 2
    outside = [p for p in range(48) if p not in old]
    want_grown = sorted(sorted(outside, key=lambda p: -abs(total[p].item()))[:2])
    assert counts == (2, sum(int(theta[p] == 0) for p in want_grown))
    want_dropped = sorted(sorted(old, key=lambda p: abs(old_values[p]))[:2])
    new = module.indices.tolist()
    assert sorted(set(new) - old) == want_grown
    assert sorted(old - set(new)) == want_dropped
    state = opt.state[module.values]
    for i, pos in enumerate(new):
        if pos in want_grown:
            assert module.values[i] == 0
            torch.testing.assert_close(state["exp_avg"][i], 0.2 * total[pos])
            torch.testing.assert_close(state["exp_avg_sq"][i], 0.1 * total[pos] ** 2)
        else:
            assert state["exp_avg"][i] == 1
    # dropped deltas were folded into the weight
    for pos in want_dropped:
        torch.testing.assert_close(
            module.base_layer.weight.reshape(-1)[pos], theta[pos] + old_values[pos]
        )


@pytest.mark.parametrize("kind", ["sensitivity", "magnitude"])
def test_reprune_removes_lowest_sensitivity(kind):
    module, gen = _module(seed=1)
    # reactivate two pruned positions through the support, as growth + one step would
    pruned = (module.base_layer.weight.reshape(-1) == 0).nonzero().squeeze(1)[:2]
    new = torch.sort(torch.cat([module.indices[2:], pruned])).values
    module.set_support(new)
    with torch.no_grad():
        module.values[torch.searchsorted(module.indices, pruned)] = torch.tensor([0.02, -0.03])
    g = torch.randn(6, 8, generator=gen)
    collector = PruneCollector(module, n_prune=2, kind=kind)
    collector(g)
    theta = module.effective_weight().reshape(-1)
    score = (theta * g.reshape(-1)).abs() if kind == "sensitivity" else theta.abs()
    active = (theta != 0).nonzero().squeeze(1).tolist()
    want = sorted(sorted(active, key=lambda p: score[p].item())[:2])
    count = apply_reprune(module, collector, min_zeros=24, optimizer=None)
    after = module.effective_weight().reshape(-1)
    assert count == 2 and int((after == 0).sum()) == 24
    assert sorted(set(active) - set((after != 0).nonzero().squeeze(1).tolist())) == want
    assert module.k == 8 and (after[module.indices] != 0).all()


def test_config_errors():
    with pytest.raises(ValueError, match="update_interval"):
        SeftConfig(update_interval=1)
    with pytest.raises(ValueError, match="prune the model first"):
        get_sparse_model(tiny_llama(), SeftConfig(pattern="2:4"))

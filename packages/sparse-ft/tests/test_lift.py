"""LIFT end to end on a tiny Llama: only masked entries change, updates equal the official dense
masked-Adam rule, O(k) optimizer state and gradients, mask refresh, reference quirks."""

import pytest
import torch

from layerwise_core import tiny_llama
from sparse_ft import LiftConfig, get_sparse_model, lift_refresh_due, principal_weight_indices


def _batch(seed=0):
    return torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(seed))


def _train(model, steps, lr=1e-2, refresh=True):
    opt = torch.optim.AdamW(
        model.trainable_parameters(), lr=lr, betas=(0.9, 0.95), eps=1e-6, weight_decay=0.0
    )
    for step in range(steps):
        ids = _batch(step)
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
        if refresh:
            model.after_optimizer_step(opt)
    return opt


def test_only_masked_entries_change_and_everything_else_is_frozen():
    original = tiny_llama(seed=1)
    sparse = get_sparse_model(
        tiny_llama(seed=1), LiftConfig(lora_rank=2, filter_rank=4, update_interval=None)
    )
    masks = {n: m.indices.clone() for n, m in sparse.sparse_modules().items()}
    _train(sparse, 3)
    merged = sparse.merge_and_unload()
    for (name, p), (_, q) in zip(merged.named_parameters(), original.named_parameters()):
        module_name = name.removesuffix(".weight")
        changed = (p != q).reshape(-1).nonzero().squeeze(1)
        if module_name in masks:
            assert changed.numel() > 0
            assert set(changed.tolist()) <= set(masks[module_name].tolist()), name
        else:
            assert changed.numel() == 0, name  # embeddings, norms, lm_head


def test_updates_equal_the_official_dense_masked_adam():
    """The official SparseAdamW, written here on a dense model: dense gradient, g = grad[mask],
    moments of length k, p[mask] -= lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps).
    torch AdamW adds eps after the bias correction instead; with eps = 0 the two are the same map,
    so in fp64 the trajectories agree to rounding."""
    lr, betas, eps, steps = 1e-2, (0.9, 0.95), 0.0, 3
    sparse = get_sparse_model(
        tiny_llama(seed=2).double(), LiftConfig(lora_rank=2, filter_rank=4, update_interval=None)
    )
    masks = {n: m.indices.clone() for n, m in sparse.sparse_modules().items()}
    opt = torch.optim.AdamW(
        sparse.trainable_parameters(), lr=lr, betas=betas, eps=eps, weight_decay=0.0
    )
    for step in range(steps):
        ids = _batch(step)
        sparse(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()

    dense = tiny_llama(seed=2).double()
    params = {n: dense.get_submodule(n).weight for n in masks}
    state = {
        n: (torch.zeros(len(i)).double(), torch.zeros(len(i)).double()) for n, i in masks.items()
    }
    for step in range(1, steps + 1):
        ids = _batch(step - 1)
        dense.zero_grad()
        dense(input_ids=ids, labels=ids).loss.backward()
        with torch.no_grad():
            for name, w in params.items():
                g = w.grad.reshape(-1)[masks[name]]
                m, v = state[name]
                m.mul_(betas[0]).add_(g, alpha=1 - betas[0])
                v.mul_(betas[1]).addcmul_(g, g, value=1 - betas[1])
                step_size = lr * (1 - betas[1] ** step) ** 0.5 / (1 - betas[0] ** step)
                w.view(-1)[masks[name]] -= step_size * m / (v.sqrt() + eps)
    merged = sparse.merge_and_unload()
    for name in masks:
        torch.testing.assert_close(
            merged.get_submodule(name).weight, params[name], rtol=1e-12, atol=1e-14
        )


def test_optimizer_state_and_gradients_are_order_k():
    sparse = get_sparse_model(tiny_llama(seed=3), LiftConfig(lora_rank=1, filter_rank=2))
    opt = _train(sparse, 1, refresh=False)
    ids = _batch(9)
    sparse(input_ids=ids, labels=ids).loss.backward()
    k_total = sparse.num_trainable()
    grads = [p for p in sparse.parameters() if p.grad is not None]
    assert sum(p.grad.numel() for p in grads) == k_total
    assert all(p.grad.dim() == 1 for p in grads)
    state_numel = sum(t.numel() for s in opt.state.values() for t in s.values() if t.dim() > 0)
    assert state_numel == 2 * k_total  # exp_avg + exp_avg_sq, nothing dense
    adapted = sum(m.weight.numel() for m in sparse.sparse_modules().values())
    assert k_total < adapted / 3


def test_refresh_recomputes_masks_from_current_weights():
    config = LiftConfig(lora_rank=2, filter_rank=3, update_interval=2)
    sparse = get_sparse_model(tiny_llama(seed=4), config)
    opt = torch.optim.AdamW(sparse.trainable_parameters(), lr=5e-2)
    for step in range(2):
        ids = _batch(step)
        sparse(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
        if step == 1:
            before = {n: m.effective_weight() for n, m in sparse.sparse_modules().items()}
            moments = {
                n: (m.indices.clone(), opt.state[m.values]["exp_avg"].clone())
                for n, m in sparse.sparse_modules().items()
            }
        counts = sparse.after_optimizer_step(opt)
    assert counts["arrived"] > 0 and counts["kept"] > 0
    for name, module in sparse.sparse_modules().items():
        want = principal_weight_indices(before[name], 3, module.k)
        assert torch.equal(module.indices, want)
        assert torch.equal(module.effective_weight(), before[name])
        old_idx, old_m = moments[name]
        new_m = opt.state[module.values]["exp_avg"]
        for i, pos in enumerate(module.indices.tolist()):
            hit = (old_idx == pos).nonzero()
            assert new_m[i] == (old_m[hit[0, 0]] if hit.numel() else 0)


def test_reference_quirks_schedule_and_smallest_entries():
    paper = LiftConfig(update_interval=4)
    quirks = LiftConfig(update_interval=4, reference_quirks=True)
    assert [s for s in range(1, 13) if lift_refresh_due(s, paper)] == [4, 8, 12]
    assert [s for s in range(1, 13) if lift_refresh_due(s, quirks)] == [3, 7, 11]
    assert paper.select_largest and not quirks.select_largest
    model = tiny_llama(seed=5)
    weight = model.model.layers[0].self_attn.q_proj.weight.detach().clone()
    sparse = get_sparse_model(model, LiftConfig(lora_rank=1, filter_rank=2, reference_quirks=True))
    got = sparse.sparse_modules()["model.layers.0.self_attn.q_proj"].indices
    assert torch.equal(got, principal_weight_indices(weight, 2, 64, largest=False))
    with pytest.raises(ValueError, match="SMALLEST"):
        LiftConfig(reference_quirks=True, largest=True)


def test_gradient_accumulation_equals_the_full_batch():
    ids = torch.randint(0, 128, (4, 10), generator=torch.Generator().manual_seed(7))
    config = LiftConfig(lora_rank=1, filter_rank=2)
    whole = get_sparse_model(tiny_llama(seed=6), config)
    whole(input_ids=ids, labels=ids).loss.backward()
    parts = get_sparse_model(tiny_llama(seed=6), config)
    for half in ids.split(2):
        (parts(input_ids=half, labels=half).loss / 2).backward()
    for a, b in zip(whole.trainable_parameters(), parts.trainable_parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6)

"""The controllers work with any param groups: shared groups (decay_param_groups, one group for
everything) are split into one group per tuned module, with the same result as module groups;
`skipped` says which candidate modules are not tuned and why."""

import math

import pytest
import torch
from torch import nn

from layerwise_core import decay_param_groups, module_param_groups, tiny_llama
from spectral_opt import AlphaDecay, LayerwiseLR

SIZE = dict(hidden_size=64, intermediate_size=128, vocab_size=96)
WD, LR = 0.1, 1e-3


def holds(group, param):
    return any(p is param for p in group["params"])


def batch(seed):
    ids = torch.randint(0, 96, (2, 12), generator=torch.Generator().manual_seed(seed))
    return ids


def train(model, optimizer, controller, steps, scheduler=None):
    for t in range(steps):
        ids = batch(t)
        controller.step()
        model(ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if scheduler is not None:
            scheduler.step()


def test_alphadecay_on_decay_param_groups_equals_module_groups():
    ref_model = tiny_llama(seed=0, **SIZE)
    ref_opt = torch.optim.AdamW(module_param_groups(ref_model, weight_decay=WD), lr=LR)
    ref = AlphaDecay(ref_opt, ref_model, WD, interval=2)
    model = tiny_llama(seed=0, **SIZE)
    optimizer = torch.optim.AdamW(decay_param_groups(model, WD), lr=LR)
    decay = AlphaDecay(optimizer, model, WD, interval=2)
    assert decay.tuned_modules == ref.tuned_modules and decay.split_modules == decay.tuned_modules
    # one step: the models differ afterwards (norms decay under module groups, not here)
    train(ref_model, ref_opt, ref, 1)
    train(model, optimizer, decay, 1)
    assert decay.values == ref.values  # same alphas, same per-module decays
    for name in decay.tuned_modules:
        group = optimizer.param_groups[decay.group_of[name]]
        assert len(group["params"]) == 1 and holds(group, model.get_submodule(name).weight)
        assert (
            group["param_names"] == [f"{name}.weight"]
            and group["weight_decay"] == decay.values[name]
        )
        # identical hyper-parameters, identical updates of the tuned matrices
        torch.testing.assert_close(
            model.get_submodule(name).weight, ref_model.get_submodule(name).weight, rtol=0, atol=0
        )
    # what is not tuned keeps decay_param_groups' options: norms no decay, other matrices WD
    assert optimizer.param_groups[0]["weight_decay"] == WD
    assert holds(optimizer.param_groups[0], model.model.embed_tokens.weight)
    assert optimizer.param_groups[1]["weight_decay"] == 0.0
    assert holds(optimizer.param_groups[1], model.model.norm.weight)


def warmup_cosine(step, warmup=3, total=20, floor=0.1):
    if step < warmup:
        return (step + 1) / warmup
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))


def test_llr_splits_groups_and_the_new_groups_follow_the_schedule():
    types = (nn.Linear, nn.Embedding)
    ref_model = tiny_llama(seed=0, **SIZE)
    ref_opt = torch.optim.AdamW(module_param_groups(ref_model, module_types=types), lr=LR)
    ref_sched = torch.optim.lr_scheduler.LambdaLR(ref_opt, warmup_cosine)
    ref = LayerwiseLR(ref_opt, ref_model, LR, interval=3, total_steps=20, ramp_steps=2,
                      scheduler=ref_sched)  # fmt: skip
    model = tiny_llama(seed=0, **SIZE)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR)  # ONE group for everything
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine)
    llr = LayerwiseLR(optimizer, model, LR, interval=3, total_steps=20, ramp_steps=2,
                      scheduler=scheduler)  # fmt: skip
    assert llr.pinned_modules == ["model.embed_tokens", "lm_head"]
    assert len(scheduler.base_lrs) == len(optimizer.param_groups) == 1 + len(llr.group_of)
    for t in range(6):
        train(ref_model, ref_opt, ref, 1, ref_sched)
        train(model, optimizer, llr, 1, scheduler)
        for name in llr.group_of:  # the same peak, scaled by the same schedule
            got = optimizer.param_groups[llr.group_of[name]]["lr"]
            want = ref_opt.param_groups[ref.group_of[name]]["lr"]
            assert got == pytest.approx(want, rel=1e-12), (t, name)
            assert got == pytest.approx(llr.peaks[name] * warmup_cosine(t + 1), rel=1e-12)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(LR * warmup_cosine(6))  # the rest


def test_split_after_a_scheduler_needs_the_scheduler():
    model = tiny_llama(seed=0, **SIZE)
    optimizer = torch.optim.AdamW(decay_param_groups(model, WD), lr=LR)
    torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine)
    with pytest.raises(ValueError, match=r"pass it \(scheduler=scheduler\)"):
        AlphaDecay(optimizer, model, WD)


def test_skipped_modules_and_reasons():
    model = tiny_llama(seed=0, **SIZE)
    model.model.layers[1].mlp.up_proj.weight.requires_grad_(False)
    optimizer = torch.optim.AdamW(module_param_groups(model, weight_decay=WD), lr=LR)
    decay = AlphaDecay(optimizer, model, WD)
    skipped = decay.skipped
    assert skipped["model.layers.0.self_attn.q_proj"].startswith("the first or last module")
    assert skipped["lm_head"].startswith("the first or last module")
    assert skipped["model.layers.0.self_attn.k_proj"].startswith("min(m, n) = 32 < min_eigs = 50")
    assert skipped["model.layers.1.mlp.up_proj"].startswith("its weight is in no param group")
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    assert sorted(decay.tuned_modules + list(skipped)) == sorted(linears)  # nothing silent
    with pytest.warns(UserWarning, match="AlphaDecay tunes no module"):
        AlphaDecay(optimizer, model, WD, min_eigs=1000)

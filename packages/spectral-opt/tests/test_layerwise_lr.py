"""LayerwiseLR (LLR): endpoints and direction, pinned embed/head, ramp, composition with an LR
schedule, freezing after the active fraction, state round trip."""

import copy
import math

import pytest
import torch
from torch import nn

from layerwise_core import module_param_groups, tiny_llama
from spectral_opt import LayerwiseLR, hill_alpha

SIZE = dict(hidden_size=64, intermediate_size=128, vocab_size=96)
LR = 1e-3
TYPES = (nn.Linear, nn.Embedding)


def svd_alpha(weight):
    return hill_alpha(torch.linalg.svdvals(weight.detach().double()).pow(2)).item()


def build(seed=0):
    model = tiny_llama(seed=seed, **SIZE)
    groups = module_param_groups(model, module_types=TYPES, weight_decay=0.1)
    return model, torch.optim.AdamW(groups, lr=LR)


def lr_of(optimizer):
    return {g["module_name"]: g["lr"] for g in optimizer.param_groups}


def warmup_cosine(step, warmup=3, total=40, floor=0.1):
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / (total - warmup)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


@torch.no_grad()
def perturb(model, seed):
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        if p.dim() == 2:
            u = torch.randn(p.shape[0], 1, generator=g)
            p += (seed % 3) * 0.03 * u @ torch.randn(1, p.shape[1], generator=g)


def test_endpoints_direction_and_pinned_modules():
    model, optimizer = build()
    # float64 ESD, like the float64 SVD reference: this test checks the map (endpoints, linear
    # interpolation). The default float32 ESD (Gram + eigvalsh in float32) differs from the
    # reference by ~2e-6 in alpha here (test_module_alphas bounds it at 1e-4), and the map scales
    # alpha errors by 4 LR / (alpha_max - alpha_min) = 5.4 LR: ~1.1e-5 LR, a float32 effect, not
    # a mapping error. In float64 both paths agree to ~1e-14 LR.
    llr = LayerwiseLR(optimizer, model, LR, total_steps=100, ramp_steps=0, dtype=torch.float64)
    llr.step()
    assert llr.pinned_modules == ["model.embed_tokens", "lm_head"]
    tuned = [
        n
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear) and n != "lm_head" and min(m.weight.shape) >= 50
    ]
    assert llr.tuned_modules == tuned  # the reference keeps the first Linear
    alphas = {n: svd_alpha(model.get_submodule(n).weight) for n in tuned}
    lo, hi = min(alphas, key=alphas.get), max(alphas, key=alphas.get)
    lrs = lr_of(optimizer)
    assert lrs[lo] == pytest.approx(1.0 * LR)  # heaviest tail -> r_min * lr
    assert lrs[hi] == pytest.approx(5.0 * LR)  # lightest tail -> r_max * lr
    for name in tuned:
        expected = LR + (alphas[name] - alphas[lo]) / (alphas[hi] - alphas[lo]) * 4.0 * LR
        assert lrs[name] == pytest.approx(expected, abs=1e-9 * LR)
    assert lrs["model.embed_tokens"] == lrs["lm_head"] == pytest.approx(5.0 * LR)  # alpha_max
    assert lrs[None] == LR  # norms keep the base LR
    assert lrs["model.layers.0.self_attn.k_proj"] == LR  # N = 32 < min_eigs: untuned

    model, optimizer = build()
    LayerwiseLR(optimizer, model, LR, total_steps=100, ramp_steps=0, embed_lr=2e-3).step()
    assert lr_of(optimizer)["model.embed_tokens"] == lr_of(optimizer)["lm_head"] == 2e-3


def test_linear_ramp_to_new_peaks():
    model, optimizer = build()
    llr = LayerwiseLR(optimizer, model, LR, total_steps=100, ramp_steps=4)
    targets = None
    for t in range(6):
        llr.step()
        targets = targets or dict(llr.values)
        k = min(t + 1, 4)
        for name, target in targets.items():
            assert lr_of(optimizer)[name] == pytest.approx(LR + (target - LR) * k / 4), (t, name)


def test_composes_with_lr_schedule():
    model, optimizer = build()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine)
    llr = LayerwiseLR(
        optimizer, model, LR, interval=5, total_steps=40, ramp_steps=0, scheduler=scheduler
    )
    for t in range(20):
        perturb(model, t)
        llr.step()
        lrs = lr_of(optimizer)
        for name, peak in llr.peaks.items():
            # the controller sets the peak, the schedule scales it
            assert lrs[name] == pytest.approx(peak * warmup_cosine(t), rel=1e-12), (t, name)
            assert scheduler.base_lrs[llr.group_of[name]] == peak
        assert lrs[None] == pytest.approx(LR * warmup_cosine(t), rel=1e-12)
        optimizer.step()
        scheduler.step()


def test_freezes_after_active_fraction():
    model, optimizer = build()
    llr = LayerwiseLR(
        optimizer, model, LR, interval=5, active_fraction=0.2, total_steps=50, ramp_steps=3
    )
    peaks = []
    for t in range(30):
        perturb(model, t)  # the spectra keep changing
        llr.step()
        peaks.append(dict(llr.peaks))
    # recomputes at step 0 and (step + 1) % 5 == 0 while step + 1 <= 0.2 * 50
    assert [t for t, _ in llr.history] == [0, 4, 9]
    assert llr.frozen() and llr.last_update_step == 9
    assert peaks[11] != peaks[9]  # the last ramp (steps 9..11) completes
    assert all(p == peaks[11] for p in peaks[11:])


def test_scheduler_must_be_passed():
    model, optimizer = build()
    torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine)
    with pytest.raises(ValueError, match="scheduler=scheduler"):
        LayerwiseLR(optimizer, model, LR, total_steps=40)
    with pytest.raises(ValueError, match="total_steps"):
        LayerwiseLR(optimizer, model, LR)


def run(model, optimizer, scheduler, llr, steps):
    for t in steps:
        g = torch.Generator().manual_seed(t)
        ids = torch.randint(0, 96, (2, 12), generator=g)
        llr.step()
        model(ids, labels=ids).loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()


def test_state_round_trip_with_schedule():
    options = dict(interval=3, total_steps=40, active_fraction=0.5, ramp_steps=4)
    model, optimizer = build()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine)
    llr = LayerwiseLR(optimizer, model, LR, scheduler=scheduler, **options)
    run(model, optimizer, scheduler, llr, range(4))  # stops inside a ramp
    twin = copy.deepcopy(model)
    twin_opt = torch.optim.AdamW(
        module_param_groups(twin, module_types=TYPES, weight_decay=0.1), lr=LR
    )
    twin_sched = torch.optim.lr_scheduler.LambdaLR(twin_opt, warmup_cosine)
    twin_llr = LayerwiseLR(twin_opt, twin, LR, scheduler=twin_sched, **options)
    twin_opt.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    twin_sched.load_state_dict(copy.deepcopy(scheduler.state_dict()))
    twin_llr.load_state_dict(copy.deepcopy(llr.state_dict()))
    assert twin_llr.state_dict() == llr.state_dict()
    for t in range(4, 12):
        run(model, optimizer, scheduler, llr, [t])
        run(twin, twin_opt, twin_sched, twin_llr, [t])
        assert lr_of(twin_opt) == lr_of(optimizer)
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)

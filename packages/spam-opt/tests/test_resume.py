"""Stopping at any step and resuming from state_dict gives the uninterrupted trajectory, bit for bit.

Stops are placed around the momentum resets (interval 5): right before one, on it, right after it,
inside the warm-up that follows and later. The checkpoint goes through torch.save / torch.load into
fresh parameters and a fresh optimizer, as a training script would do it.
"""

import io
from pathlib import Path

import pytest
import torch

from spam_opt import SPAM, StableSPAM

STEPS = 13
STOPS = [3, 4, 5, 6, 8, 11]
CONFIGS = {
    "spam": (
        SPAM,
        dict(warmup_steps=3, reset_interval=5, clip_delay=2, threshold=3.0),
        torch.float32,
    ),
    "spam_sparse": (
        SPAM,
        dict(warmup_steps=3, reset_interval=5, clip_delay=2, threshold=3.0, density=0.5),
        torch.float32,
    ),
    "stable_spam": (StableSPAM, dict(total_steps=9, reset_interval=5), torch.float32),
    "stable_spam_bf16": (StableSPAM, dict(total_steps=9, reset_interval=5), torch.bfloat16),
}


def _make(name, values, reference_quirks):
    cls, hyper, _ = CONFIGS[name]
    hyper = dict(hyper)
    density = hyper.pop("density", None)
    params = [torch.nn.Parameter(v.clone()) for v in values]
    groups = [{"params": params[:2]}, {"params": params[2:], "lr": 2e-3}]
    if density is not None:
        groups[0]["density"] = density
    return params, cls(
        groups, lr=1e-2, weight_decay=0.05, reference_quirks=reference_quirks, **hyper
    )


def _initial(name):
    dtype = CONFIGS[name][2]
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(s, generator=gen).to(dtype) for s in [(6, 9), (4, 4), (11,), (3,)]]


def _step(params, opt, step):
    gen = torch.Generator().manual_seed(100 + step)
    for p in params:
        g = torch.randn(p.shape, generator=gen)
        if step in (6, 9):
            g.view(-1)[0] *= 200.0
        p.grad = g.to(p.dtype)
    opt.step()


@pytest.mark.parametrize("reference_quirks", [False, True], ids=["paper", "quirks"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_resume_equals_uninterrupted(name, reference_quirks):
    torch.manual_seed(7)
    params, opt = _make(name, _initial(name), reference_quirks)
    snapshots = {}
    for step in range(STEPS):
        if step in STOPS:
            buf = io.BytesIO()
            torch.save(
                {
                    "params": [p.detach().clone() for p in params],
                    "optimizer": opt.state_dict(),
                    "rng": torch.get_rng_state(),  # sparse-momentum masks are drawn from it
                },
                buf,
            )
            snapshots[step] = buf.getvalue()
        _step(params, opt, step)
    uninterrupted = [p.detach().clone() for p in params]
    final_state = opt.state_dict()

    for stop, blob in snapshots.items():
        # weights_only=True: SPAM / Stable-SPAM state (masks, EMAs, steps) needs no pickled object
        checkpoint = torch.load(io.BytesIO(blob), weights_only=True)
        torch.manual_seed(12345)  # whatever the new process would draw at construction
        resumed, opt2 = _make(name, checkpoint["params"], reference_quirks)
        opt2.load_state_dict(checkpoint["optimizer"])
        torch.set_rng_state(checkpoint["rng"])
        for step in range(stop, STEPS):
            _step(resumed, opt2, step)
        for got, want in zip(resumed, uninterrupted):
            assert torch.equal(got.detach(), want), f"stopped at step {stop}"
        resumed_state = opt2.state_dict()
        assert resumed_state["param_groups"] == final_state["param_groups"]
        for key, want in final_state["state"].items():
            for field, value in want.items():
                got = resumed_state["state"][key][field]
                assert got.dtype == value.dtype and torch.equal(got, value), (stop, field)


def test_counters_are_in_the_state_dict():
    p = torch.nn.Parameter(torch.ones(3))
    opt = SPAM([p], warmup_steps=2, reset_interval=4)
    for _ in range(3):
        p.grad = torch.ones(3)
        opt.step()
    sd = opt.state_dict()
    assert sd["param_groups"][0]["global_step"] == 3
    assert sd["param_groups"][0]["warmup_step"] == 0  # the next step is the reset step
    assert sd["state"][0]["step"].item() == 3

    q = torch.nn.Parameter(torch.ones(3))
    opt = StableSPAM([q])
    q.grad = torch.ones(3)
    opt.step()
    sd = opt.state_dict()
    assert sd["param_groups"][0]["global_step"] == 1
    keys = {"step", "stats_step", "clip_max_ema", "norm_ema", "norm_sq_ema"}
    assert keys <= sd["state"][0].keys()


V0_STATE_DICTS = Path(__file__).parent / "data" / "v0_state_dicts.pt"


@pytest.mark.parametrize("case", ["spam", "spam_sparse", "stable_spam"])
@pytest.mark.parametrize("mode", ["paper", "quirks"])
def test_state_dicts_of_the_first_version_still_load(case, mode):
    # Checkpoints written by the first version of the optimizers (tests/data/make_v0_state_dicts.py,
    # run at commit cf6e420): loading one into today's optimizer and replaying the recorded gradients
    # must land on the parameters that version reached, bit for bit.
    saved = torch.load(V0_STATE_DICTS, weights_only=True)[f"{case}-{mode}"]
    cls = {"SPAM": SPAM, "StableSPAM": StableSPAM}[saved["cls"]]
    params = [torch.nn.Parameter(p.clone()) for p in saved["params"]]
    groups = [{"params": params[:2]}, {"params": params[2:], "lr": 2e-3}]
    if saved["density"] is not None:
        groups[0]["density"] = saved["density"]
    torch.manual_seed(12345)  # whatever the new process would draw at construction
    opt = cls(groups, **saved["kwargs"])
    opt.load_state_dict(saved["state_dict"])
    torch.set_rng_state(saved["rng"])
    for flat in saved["grads"]:
        for p, g in zip(params, flat.split([p.numel() for p in params])):
            p.grad = g.view(p.shape).clone()
        opt.step()
    for got, want in zip(params, saved["final"]):
        assert torch.equal(got.detach(), want)

"""LOROAdamW: lazy steps vs hand-written Adam with the rank/hidden scaler, exact steps vs a naive fp64
tangent projection + truncated-SVD retraction, state resets, resume, param groups, the restart
schedule factor, config defaults, and FSDP2 (2 gloo processes) == one process."""

import copy
import inspect
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from layerwise_core.testing import run_torchrun
from sparse_ft import LOROAdamW, LOROConfig, LowRankLinear, loro_param_groups
from sparse_ft.loro import loro_exact_update

WORKER = Path(__file__).with_name("_loro_fsdp_worker.py")
F64 = torch.float64


class _Tiny(nn.Module):
    """Two low-rank layers, a norm and an embedding-like matrix; `config.hidden_size` = 16."""

    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.config = SimpleNamespace(hidden_size=16)
        self.up = LowRankLinear(10, 12, 3, dtype=F64)
        self.down = LowRankLinear(12, 5, 2, bias=True, dtype=F64)
        self.norm = nn.LayerNorm(10, dtype=F64)
        self.table = nn.Parameter(torch.randn(4, 10, dtype=F64))

    def forward(self, x):
        return self.down(torch.tanh(self.up(self.norm(x + self.table.sum(0)))))


def _grads(model, step):
    gen = torch.Generator().manual_seed(100 + step)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype)


def _truncated(w, rank):
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    return (u[:, :rank] * s[:rank]) @ vh[:rank], s[:rank]


def _check_balanced_product(new_out, new_in, expected_w, expected_s):
    torch.testing.assert_close(new_out @ new_in.T, expected_w, rtol=0, atol=1e-10)
    torch.testing.assert_close(new_in.T @ new_in, torch.diag(expected_s), rtol=0, atol=1e-10)
    torch.testing.assert_close(new_out.T @ new_out, torch.diag(expected_s), rtol=0, atol=1e-10)


def test_param_groups():
    model = _Tiny()
    groups = loro_param_groups(model, weight_decay=0.1)
    pairs = [g for g in groups if g.get("loro_pair")]
    assert [g["param_names"] for g in pairs] == [
        ["up.weight_in", "up.weight_out"],
        ["down.weight_in", "down.weight_out"],
    ]
    assert [(g["rank"], g["hidden"], g["weight_decay"]) for g in pairs] == [
        (3, 16, 0.1),
        (2, 16, 0.1),
    ]
    assert pairs[0]["params"][0] is model.up.weight_in
    rest = {
        n: g["weight_decay"] for g in groups if not g.get("loro_pair") for n in g["param_names"]
    }
    assert rest == {"table": 0.1, "down.bias": 0.0, "norm.weight": 0.0, "norm.bias": 0.0}
    every = [id(p) for g in groups for p in g["params"]]
    assert sorted(every) == sorted(id(p) for p in model.parameters())  # each once
    with pytest.raises(ValueError, match="no trainable LowRankLinear"):
        loro_param_groups(nn.Linear(3, 3), 0.0)
    with pytest.raises(ValueError, match="rank <= min"):
        loro_param_groups(LowRankLinear(4, 3, 5), 0.0)


@pytest.mark.parametrize("reference_quirks", [False, True])
def test_lazy_steps_equal_hand_written_adam(reference_quirks):
    model = _Tiny()
    lr, (b1, b2), eps, wd = 0.05, (0.8, 0.9), 1e-6, 0.2
    opt = LOROAdamW(
        loro_param_groups(model, wd),
        lr=lr,
        betas=(b1, b2),
        eps=eps,
        exact_every=None,
        reference_quirks=reference_quirks,
    )
    pairs = {id(p): g for g in opt.param_groups if g["loro_pair"] for p in g["params"]}
    expected = {n: p.detach().clone() for n, p in model.named_parameters()}
    m = {n: torch.zeros_like(p) for n, p in expected.items()}
    v = {n: torch.zeros_like(p) for n, p in expected.items()}
    decays = {n: g["weight_decay"] for g in opt.param_groups for n in g["param_names"]}
    for t in range(1, 4):
        _grads(model, t)
        for n, p in model.named_parameters():
            m[n] = b1 * m[n] + (1 - b1) * p.grad
            v[n] = b2 * v[n] + (1 - b2) * p.grad**2
            eta = lr * (1 - b2**t) ** 0.5 / (1 - b1**t)
            scale = 1.0
            decay_rate = lr
            if id(p) in pairs:
                scale = pairs[id(p)]["rank"] / 16  # rank / model hidden size
                decay_rate = eta if reference_quirks else lr
            expected[n] = expected[n] - eta * scale * m[n] / (v[n].sqrt() + eps)
            expected[n] = expected[n] - decay_rate * decays[n] * expected[n]
        opt.step()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), expected[n], rtol=1e-13, atol=1e-13, msg=n)


def test_lazy_scaler_without_hidden_and_fixed_scaler():
    # without a model config: each factor's row count (the reference's fallback); lr_scaler > 0: itself
    layer = LowRankLinear(10, 6, 2, dtype=F64)
    for scaler, expected in ((-1.0, {"weight_in": 2 / 10, "weight_out": 2 / 6}), (0.5, None)):
        net = copy.deepcopy(layer)
        before = {n: p.detach().clone() for n, p in net.named_parameters()}
        opt = LOROAdamW(loro_param_groups(net, 0.0), lr=0.1, exact_every=None, lr_scaler=scaler)
        _grads(net, 0)
        opt.step()
        for n, p in net.named_parameters():
            step = (before[n] - p.detach()).abs()
            # first step: eta * |u| = lr |g| / (|g| + eps / sqrt(1 - b2)) (eps not bias-corrected)
            g = p.grad.abs()
            want = 0.1 * (expected[n] if expected else scaler) * g / (g + 1e-6 / 0.001**0.5)
            torch.testing.assert_close(step, want, rtol=1e-12, atol=1e-15)


def test_exact_update_is_tangent_projection_and_truncated_svd():
    gen = torch.Generator().manual_seed(0)
    out, inp, rank, lr = 9, 7, 3, 0.3
    b = torch.randn(out, rank, generator=gen, dtype=F64)
    a = torch.randn(inp, rank, generator=gen, dtype=F64)
    g = torch.randn(out, inp, generator=gen, dtype=F64)
    new_out, new_in = loro_exact_update(b, a, g @ a, g.T @ b, lr)
    # naive: project G onto the tangent space at W = B A^T (U, V from an SVD), retract by SVD
    w = b @ a.T
    u, _, vh = torch.linalg.svd(w, full_matrices=False)
    pu, pv = u[:, :rank] @ u[:, :rank].T, vh[:rank].T @ vh[:rank]
    projected = pu @ g + g @ pv - pu @ g @ pv
    expected_w, expected_s = _truncated(w - lr * projected, rank)
    assert (expected_w - w).abs().max() > 0.1  # the step moves W
    assert (expected_w - (w - lr * g)).abs().max() > 0.1  # and is not the Euclidean step
    _check_balanced_product(new_out, new_in, expected_w, expected_s)


def _naive_exact(b, a, upd_b, upd_a, lr):
    """The tangent vector LORO builds from two preconditioned factor updates (U^T G from upd_a,
    G V from upd_b), dense fp64, then the rank-r truncated SVD of W - lr * xi."""
    rank = b.shape[1]
    w = b @ a.T
    u = torch.linalg.svd(w, full_matrices=False)[0][:, :rank]
    left = b @ torch.linalg.inv(b.T @ b) @ upd_a.T  # U U^T G
    right = upd_b @ torch.linalg.inv(a.T @ a) @ a.T  # G V V^T
    xi = left + right - u @ u.T @ right
    return _truncated(w - lr * xi, rank)


@pytest.mark.parametrize("quirks", [False, True])
def test_exact_optimizer_step_equals_naive_reference(quirks):
    model = _Tiny()
    lr, (b1, b2), eps = 0.05, (0.9, 0.999), 1e-6
    groups = loro_param_groups(model, weight_decay=0.3)  # no decay at exact steps
    opt = LOROAdamW(groups, lr=lr, eps=eps, exact_every=2, reference_quirks=quirks)
    _grads(model, 1)
    opt.step()  # lazy: builds moments
    assert not torch.allclose(
        model.up.weight_in.T @ model.up.weight_in, model.up.weight_out.T @ model.up.weight_out
    )
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    moments = {
        n: (opt.state[p]["exp_avg"].clone(), opt.state[p]["exp_avg_sq"].clone())
        for n, p in model.named_parameters()
    }
    _grads(model, 2)
    updates = {}
    for n, p in model.named_parameters():
        m0, v0 = moments[n]
        m1, v1 = b1 * m0 + (1 - b1) * p.grad, b2 * v0 + (1 - b2) * p.grad**2
        updates[n] = m1 / (v1.sqrt() + eps)
    eta = lr * (1 - b2**2) ** 0.5 / (1 - b1**2)
    opt.step()  # exact
    for name in ("up", "down"):
        b, a = before[f"{name}.weight_out"], before[f"{name}.weight_in"]
        upd_b, upd_a = updates[f"{name}.weight_out"], updates[f"{name}.weight_in"]
        expected_w, expected_s = _naive_exact(b, a, upd_b, upd_a, eta)
        layer = getattr(model, name)
        _check_balanced_product(
            layer.weight_out.detach(), layer.weight_in.detach(), expected_w, expected_s
        )
    # non-factor parameters: plain Adam (+ decay) in the same step
    expected = before["table"] - eta * updates["table"]
    expected = expected - lr * 0.3 * expected
    torch.testing.assert_close(model.table.detach(), expected, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("reset", ["all", "low_rank", "none"])
def test_adam_states_reset_after_exact_steps(reset):
    model = _Tiny()
    opt = LOROAdamW(loro_param_groups(model, 0.0), exact_every=3, reset_states=reset)
    assert [opt.is_exact_step(s) for s in range(7)] == [False, False, True] * 2 + [False]
    factor, other = model.up.weight_in, model.table
    for step in range(3):
        _grads(model, step)
        opt.step()
        if step < 2:
            assert opt.state[factor]["step"].item() == step + 1
            assert opt.state[factor]["exp_avg"].abs().sum() > 0
    reset_factor = reset != "none"
    reset_other = reset == "all"
    assert (opt.state[factor]["step"].item() == 0) == reset_factor
    assert (opt.state[factor]["exp_avg"].abs().sum() == 0).item() == reset_factor
    assert (opt.state[factor]["exp_avg_sq"].abs().sum() == 0).item() == reset_factor
    assert (opt.state[other]["step"].item() == 0) == reset_other
    assert (opt.state[other]["exp_avg"].abs().sum() == 0).item() == reset_other
    assert opt.steps_taken == 3


def _train(model, opt, steps, start=0):
    for step in range(start, start + steps):
        gen = torch.Generator().manual_seed(step)
        x = torch.randn(6, 10, generator=gen, dtype=F64)
        model(x).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()


def test_state_dict_resume_is_bitwise():
    cfg = LOROConfig(lr=0.02, exact_every=3, weight_decay=0.01)
    model = _Tiny()
    opt = cfg.build(cfg.param_groups(model))
    _train(model, opt, 7)

    resumed = _Tiny()
    first = cfg.build(cfg.param_groups(resumed))
    _train(resumed, first, 4)
    saved_model = copy.deepcopy(resumed.state_dict())
    saved_opt = copy.deepcopy(first.state_dict())
    fresh = _Tiny(seed=5)
    fresh.load_state_dict(saved_model)
    second = cfg.build(cfg.param_groups(fresh))
    second.load_state_dict(saved_opt)
    assert second.steps_taken == 4
    _train(fresh, second, 3, start=4)  # includes the exact step with index 5
    for (n, p), q in zip(model.named_parameters(), fresh.parameters()):
        assert torch.equal(p, q), n


def test_config_defaults_equal_constructor_defaults():
    signature = inspect.signature(LOROAdamW.__init__).parameters
    shared = [n for n in LOROConfig.model_fields if n in signature]
    assert set(shared) == {
        "lr", "betas", "eps", "weight_decay", "exact_every", "lr_scaler", "reset_states",
        "reference_quirks",
    }  # fmt: skip
    cfg = LOROConfig()
    for name in shared:
        value = tuple(getattr(cfg, name)) if name == "betas" else getattr(cfg, name)
        assert value == signature[name].default, name
    # the released 60M script: lr 0.01, --loro_freq 500, --loro_lr_scaler -1, wd 0, eps 1e-6
    assert (cfg.lr, cfg.exact_every, cfg.lr_scaler, cfg.weight_decay, cfg.eps) == (
        0.01,
        500,
        -1.0,
        0.0,
        1e-6,
    )
    assert (cfg.restart_warmup_steps, cfg.reset_states) == (5, "all")
    built = cfg.build(cfg.param_groups(_Tiny()))
    assert (built.exact_every, built.defaults["eps"], built.defaults["lr"]) == (500, 1e-6, 0.01)


def test_schedule_factor_by_hand():
    cfg = LOROConfig(exact_every=10, restart_warmup_steps=4)
    got = [cfg.schedule_factor(s) for s in range(26)]
    # exact steps at indices 9 and 19 (1-based 10, 20); re-warm-up on the 4 updates after each
    want = [1.0] * 10 + [0.0, 0.25, 0.5, 0.75] + [1.0] * 6 + [0.0, 0.25, 0.5, 0.75] + [1.0] * 2
    assert got == want
    assert all(LOROConfig(exact_every=None).schedule_factor(s) == 1.0 for s in range(30))
    assert LOROConfig(exact_every=10, restart_warmup_steps=0).schedule_factor(10) == 1.0
    assert LOROConfig(exact_every=10, reset_states="none").schedule_factor(10) == 1.0


def test_bad_arguments_name_the_fix():
    groups = loro_param_groups(_Tiny(), 0.0)
    with pytest.raises(ValueError, match="exact_every"):
        LOROAdamW(groups, exact_every=0)
    with pytest.raises(ValueError, match="lr_scaler"):
        LOROAdamW(groups, lr_scaler=0.0)
    with pytest.raises(ValueError, match="loro_param_groups"):
        LOROAdamW([{"params": [nn.Parameter(torch.ones(3, 2))], "loro_pair": True}])


@pytest.mark.distributed
def test_fsdp2_two_processes_equal_one_process(tmp_path):
    out = tmp_path / "result.json"
    run_torchrun(WORKER, out, timeout=600)
    result = json.loads(out.read_text())
    assert result["sharded"] == [True, True]  # the factors were DTensors
    assert result["moved"] > 1e-3
    assert result["difference"] <= 1e-12, result

"""Dynamic sparse training (sparse_ft.dst) against the NeuroTrails spec's hand-computed cases
(shared/specs/neurotrails.md section 10, items 1-5 and 9): ERK densities, the cosine prune
fraction, a prune / regrow step on a 4x4 tensor, per-layer density after every update, the
soft-magnitude sampler, mask persistence and exact resume; both quirk modes; 2-process DDP / FSDP2
== 1 process."""

import io
import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from layerwise_core import tiny_llama
from layerwise_core.testing import run_torchrun
from sparse_ft.dst import (
    DSTConfig,
    DynamicSparsity,
    cosine_prune_fraction,
    erk_densities,
    prune_and_regrow,
    soft_magnitude_keep,
    uniform_densities,
)

WORKER = Path(__file__).with_name("_dst_ddp_worker.py")
SHAPES = [(64, 64), (256, 64), (64, 256), (1000, 64)]
SIZES = [math.prod(s) for s in SHAPES]


# -- 1. ERK ---------------------------------------------------------------------------------------


def test_erk_densities_by_hand():
    # r = 128/4096, 320/16384 (twice), 1064/64000; eps = 0.5 * 100864 / 1832 = 27.528
    densities = erk_densities(SHAPES, 0.5)
    assert densities == pytest.approx([0.8603, 0.5377, 0.5377, 0.4577], abs=1e-4)
    assert densities[0] / (128 / 4096) == pytest.approx(27.528, abs=1e-3)
    nnz = sum(d * n for d, n in zip(densities, SIZES))
    assert nnz / sum(SIZES) == pytest.approx(0.5, abs=1e-6)


def test_erk_saturated_tensor_becomes_dense_and_total_holds():
    # d = 0.7: eps * 1/32 > 1, so 64x64 is dense; eps = (0.7 * 100864 - 4096) / 1704 = 39.0310
    densities = erk_densities(SHAPES, 0.7)
    assert densities[0] == 1.0
    assert densities[1:] == pytest.approx([0.76232, 0.76232, 0.64889], abs=1e-5)
    assert sum(d * n for d, n in zip(densities, SIZES)) / sum(SIZES) == pytest.approx(0.7, abs=1e-9)


def test_erk_tensors_tied_at_the_max_turn_dense_together():
    # d = 0.95 on the last three: eps * 320/16384 = 1.054 > 1: both 256x64 and 64x256 go dense;
    # then eps = (0.95 * 96768 - 32768) / 1064 and 1000x64 gets 59161.6 / 64000 = 0.924400
    densities = erk_densities(SHAPES[1:], 0.95)
    assert densities[:2] == [1.0, 1.0]
    assert densities[2] == pytest.approx(0.9244, abs=1e-6)
    assert erk_densities(SHAPES, 1.0) == [1.0] * 4
    # a tensor forced dense counts in the total; the rest share what is left
    forced = erk_densities(SHAPES, 0.5, dense=[1])
    assert forced[1] == 1.0 and forced[0] < 1.0
    assert sum(d * n for d, n in zip(forced, SIZES)) == pytest.approx(0.5 * sum(SIZES))
    with pytest.raises(ValueError, match="forced dense"):
        erk_densities(SHAPES, 0.5, dense=[3])  # 64000 of 100864 weights > half
    assert uniform_densities(SHAPES, 0.3) == [0.3] * 4


# -- 2. cosine prune fraction ---------------------------------------------------------------------


def test_cosine_prune_fraction_by_hand():
    values = [cosine_prune_fraction(t, 1000, 0.5, 0.005) for t in (0, 250, 500, 750, 1000)]
    assert values == pytest.approx([0.5, 0.42751, 0.2525, 0.07749, 0.005], abs=1e-5)
    assert cosine_prune_fraction(1500, 1000) == pytest.approx(0.005)  # clamped past the end


# -- 3. prune + regrow on a 4x4 tensor ------------------------------------------------------------

# positions 0..7 active; the 4 smallest |w| are at 6 (0.02), 3 (0.05), 1 (0.1), 5 (0.3)
W44 = torch.tensor([0.9, -0.1, 0.5, 0.05, -0.7, 0.3, 0.02, 0.8] + [0.0] * 8).reshape(4, 4)
M44 = (torch.arange(16) < 8).reshape(4, 4)
# largest |g| outside the kept set {0, 2, 4, 7}: 3 (just pruned), 9, 12, 15
G44 = torch.tensor(
    [9.0, 0.1, 9.0, 5.0, 9.0, 0.2, 0.3, 9.0, 0.1, 4.0, 0.2, 0.1, -3.0, 0.1, 0.2, 2.0]
).reshape(4, 4)
EXPECTED44 = {0, 2, 3, 4, 7, 9, 12, 15}


def test_hard_prune_and_gradient_regrow_by_hand():
    for quirks in (False, True):
        new, grown = prune_and_regrow(
            W44, M44, G44, target=8, fraction=0.5, prune="magnitude", reference_quirks=quirks
        )
        assert set(new.reshape(-1).nonzero().squeeze(1).tolist()) == EXPECTED44
        assert set(grown.reshape(-1).nonzero().squeeze(1).tolist()) == {3, 9, 12, 15}


def _hand_set_engine(quirks: bool):
    """A DynamicSparsity over one 4x4 Linear at uniform density 0.5 (target 8), p fixed at 0.5,
    holding M44 / W44 / G44 and an Adam state of ones."""
    model = nn.Sequential(nn.Linear(4, 4, bias=False))
    cfg = DSTConfig(
        density=0.5,
        init="uniform",
        prune="magnitude",
        prune_fraction=0.5,
        final_prune_fraction=0.5,
        reference_quirks=quirks,
    )
    engine = DynamicSparsity(model, cfg, total_steps=10)
    weight = model[0].weight
    engine.masks["0.weight"] = M44.clone()
    engine.targets["0.weight"] = 8  # quirks: the Bernoulli draw's count would be the target
    with torch.no_grad():
        weight.copy_(W44)
    weight.grad = G44.clone()
    opt = torch.optim.Adam(model.parameters())
    opt.state[weight] = {
        "step": torch.tensor(3.0),
        "exp_avg": torch.ones(4, 4),
        "exp_avg_sq": torch.ones(4, 4),
    }
    return engine, weight, opt


def test_update_values_and_moments_in_both_modes():
    clean = DynamicSparsity(nn.Linear(4, 4), DSTConfig(density=0.5, init="uniform"), 10)
    assert clean.targets == {"weight": 8} and int(clean.masks["weight"].sum()) == 8
    for quirks in (False, True):
        engine, weight, opt = _hand_set_engine(quirks)
        record = engine.update(opt)
        flat = weight.detach().reshape(-1)
        mask = engine.masks["0.weight"].reshape(-1)
        assert set(mask.nonzero().squeeze(1).tolist()) == EXPECTED44
        assert int(mask.sum()) == 8  # nnz unchanged
        assert flat[[0, 2, 4, 7]].tolist() == pytest.approx([0.9, 0.5, -0.7, 0.8])  # kept
        assert flat[[9, 12, 15]].tolist() == [0.0, 0.0, 0.0]  # newly grown start at 0
        assert flat[~mask].abs().sum() == 0  # masked weights are exactly 0
        moments = opt.state[weight]["exp_avg"].reshape(-1)
        if quirks:  # the just-pruned position 3 comes back with its value and its moments
            assert flat[3].item() == pytest.approx(0.05)
            assert moments.tolist() == [1.0] * 16
        else:  # clean: a grown entry restarts at 0 with zeroed moments
            assert flat[3].item() == 0.0
            assert moments[[3, 9, 12, 15]].tolist() == [0.0] * 4
            assert moments.sum().item() == 12.0
        assert record["prune_fraction"] == 0.5
        assert record["changed/0.weight"] == 6  # 1, 5, 6 left; 9, 12, 15 joined (3 stayed)
        assert record["density/0.weight"] == 0.5


def test_hard_prune_ties_drop_more_under_quirks():
    w = torch.tensor([[0.4, 0.1, 0.1, 0.1], [0.3, 0.0, 0.0, 0.0]])
    m = torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0]], dtype=torch.bool)
    g = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, 3.0, 2.0, 1.0]])
    # n = 5, p = 0.4: drop ceil(2) = 2; clean drops exactly 2 of the three 0.1 entries
    clean, _ = prune_and_regrow(w, m, g, target=5, fraction=0.4)
    assert int(clean.sum()) == 5 and clean[0, 0] and clean[1, 0] and clean[1, 1]
    # official `|w| > threshold` drops all three tied entries; regrowth still refills to 5
    quirk, grown = prune_and_regrow(w, m, g, target=5, fraction=0.4, reference_quirks=True)
    assert quirk.reshape(-1).nonzero().squeeze(1).tolist() == [0, 4, 5, 6, 7]
    assert int(grown.sum()) == 3


def test_random_growth_refills_to_the_target_outside_the_kept_set():
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(6, 5, generator=gen)
    m = torch.rand(6, 5, generator=gen) < 0.5
    new, grown = prune_and_regrow(
        w * m, m, None, target=15, fraction=0.3, growth="random", generator=gen
    )
    assert int(new.sum()) == 15
    kept = new & ~grown
    assert (kept <= m).all()  # survivors were active
    # the kept set is the largest |w| of the active entries
    n = int(m.sum())
    assert int(kept.sum()) == n - math.ceil(0.3 * n)
    assert (w[kept].abs().min() >= (w * m)[m & ~kept].abs().max()).item()


# -- 4. per-layer density is held after every update ----------------------------------------------


@pytest.mark.parametrize("quirks", [False, True])
def test_density_exact_after_every_update_on_a_tiny_llama(quirks):
    torch.manual_seed(0)
    model = tiny_llama(seed=0, num_hidden_layers=1).train()
    cfg = DSTConfig(density=0.45, update_every=1, reference_quirks=quirks)
    engine = DynamicSparsity(model, cfg, total_steps=20, seed=1)
    # every Linear and the (untied) embedding and lm_head are masked; norms are not
    assert "model.embed_tokens.weight" in engine.names and "lm_head.weight" in engine.names
    assert len(engine.names) == 2 + 7
    assert not any("norm" in n for n in engine.names)
    N = {n: engine.params[n].numel() for n in engine.names}
    if quirks:  # Bernoulli init: the target is the official ceil((count / N) * N) in floats
        counts = {n: int(engine.masks[n].sum()) for n in engine.names}
        assert engine.targets == {n: math.ceil((counts[n] / N[n]) * N[n]) for n in engine.names}
        assert all(engine.targets[n] - counts[n] in (0, 1) for n in engine.names)
        assert engine.global_density() == pytest.approx(0.45, abs=0.01)
    else:  # exactly ceil(d_l N_l) from the ERK densities; the total is d N up to the ceilings
        assert engine.targets == {n: math.ceil(engine.densities[n] * N[n]) for n in engine.names}
        assert engine.global_density() * sum(N.values()) - 0.45 * sum(N.values()) <= len(N)
    assert all(engine.targets[n] == math.ceil(engine.densities[n] * N[n]) for n in engine.names)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    previous = {n: m.clone() for n, m in engine.masks.items()}
    for _ in range(20):
        x = torch.randint(0, 128, (2, 8), generator=gen)
        model(input_ids=x, labels=x).loss.backward()
        opt.step()
        record = engine.step(opt)
        opt.zero_grad()
        assert record is not None
        for n in engine.names:
            assert int(engine.masks[n].sum()) == engine.targets[n]
            assert engine.params[n].detach()[~engine.masks[n]].abs().max() == 0
        assert sum(record[f"changed/{n}"] for n in engine.names) > 0
        assert any(not torch.equal(previous[n], engine.masks[n]) for n in engine.names)
        previous = {n: m.clone() for n, m in engine.masks.items()}


def test_selection_dense_embeddings_include_and_off():
    model = tiny_llama(seed=0)
    cfg = DSTConfig(density=0.5, dense_embeddings=True)
    engine = DynamicSparsity(model, cfg, total_steps=10)
    assert "model.embed_tokens.weight" not in engine.names
    assert "lm_head.weight" not in engine.names
    assert len(engine.names) == 14
    only_mlp = DynamicSparsity(model, cfg, total_steps=10, include=lambda n, p: "mlp" in n)
    assert len(only_mlp.names) == 6
    dense = DynamicSparsity(model, DSTConfig(), total_steps=10)
    assert not DSTConfig().enabled and dense.names == [] and dense.step() is None


# -- 5. soft-magnitude sampler --------------------------------------------------------------------


def test_soft_magnitude_sampler_probability_and_zeros():
    gen = torch.Generator().manual_seed(0)
    scores = torch.tensor([1.0, 2.0, 0.0])
    kept_two = 0
    for _ in range(20000):
        chosen = soft_magnitude_keep(scores, 1, 3.0, gen)
        assert chosen.tolist() != [2]  # a zero score is never kept
        kept_two += chosen.item() == 1
    assert kept_two / 20000 == pytest.approx(8 / 9, abs=0.01)  # 2^3 / (1^3 + 2^3)
    # fewer nonzero scores than asked: all of them, and no zero
    assert sorted(
        soft_magnitude_keep(torch.tensor([0.0, 1.0, 0.0, 3.0]), 3, 3.0, gen).tolist()
    ) == [
        1,
        3,
    ]


def test_soft_prune_with_too_few_nonzero_weights():
    w = torch.tensor([[0.0, 0.5, 0.0, 0.0], [0.2, 0.0, 0.0, 0.0]])
    m = torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0]], dtype=torch.bool)  # 5 active, 2 nonzero
    g = torch.arange(8.0).reshape(2, 4)
    # keep ceil(5 * 0.8) = 4 > 2 nonzero: the official sampler leaves the mask unchanged
    quirk, grown = prune_and_regrow(
        w, m, g, target=5, fraction=0.2, prune="soft", reference_quirks=True
    )
    assert torch.equal(quirk, m) and not grown.any()
    # clean: keep the 2 nonzero entries, regrow 3 by |g| among the rest: 7, 6, 5
    clean, grown = prune_and_regrow(w, m, g, target=5, fraction=0.2, prune="soft")
    assert clean.reshape(-1).nonzero().squeeze(1).tolist() == [1, 4, 5, 6, 7]
    assert grown.reshape(-1).nonzero().squeeze(1).tolist() == [5, 6, 7]


# -- 9. mask persistence and exact resume ---------------------------------------------------------


def _train(model, engine, opt, steps, start):
    gen = torch.Generator().manual_seed(100 + start)
    for step in range(start, start + steps):
        gen.manual_seed(100 + step)
        x = torch.randint(0, 128, (2, 8), generator=gen)
        model(input_ids=x, labels=x).loss.backward()
        opt.step()
        engine.step(opt)
        opt.zero_grad()


@pytest.mark.parametrize("quirks", [False, True])
def test_state_dict_round_trip_and_resume_is_bitwise(quirks):
    cfg = DSTConfig(density=0.5, update_every=3, reference_quirks=quirks)
    model = tiny_llama(seed=0, num_hidden_layers=1).train()
    engine = DynamicSparsity(model, cfg, total_steps=12, seed=5)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    _train(model, engine, opt, 12, 0)  # uninterrupted

    model_a = tiny_llama(seed=0, num_hidden_layers=1).train()
    engine_a = DynamicSparsity(model_a, cfg, total_steps=12, seed=5)
    opt_a = torch.optim.Adam(model_a.parameters(), lr=1e-2)
    _train(model_a, engine_a, opt_a, 7, 0)
    buffer = io.BytesIO()
    torch.save(
        {"model": model_a.state_dict(), "opt": opt_a.state_dict(), "dst": engine_a.state_dict()},
        buffer,
    )
    buffer.seek(0)
    saved = torch.load(buffer)
    # other weights, other masks until loaded
    model_b = tiny_llama(seed=1, num_hidden_layers=1).train()
    engine_b = DynamicSparsity(model_b, cfg, total_steps=12, seed=9)
    assert any(not torch.equal(engine_b.masks[n], engine_a.masks[n]) for n in engine_a.names)
    model_b.load_state_dict(saved["model"])
    opt_b = torch.optim.Adam(model_b.parameters(), lr=1e-2)
    opt_b.load_state_dict(saved["opt"])
    engine_b.load_state_dict(saved["dst"])
    assert engine_b.step_count == 7 and engine_b.prune_fraction() == engine_a.prune_fraction()
    assert engine_b.densities == engine_a.densities and engine_b.targets == engine_a.targets
    assert all(torch.equal(engine_b.masks[n], engine_a.masks[n]) for n in engine_a.names)
    engine_b.seed = engine_a.seed  # the seed is a constructor argument of the run, not state
    _train(model_b, engine_b, opt_b, 5, 7)
    for n in engine.names:
        assert torch.equal(engine_b.masks[n], engine.masks[n])
    for (name, p), q in zip(model.named_parameters(), model_b.parameters()):
        assert torch.equal(p, q), name


def test_a_state_of_another_length_follows_the_new_length():
    """A resume that changed the run's length (train.steps 12 -> 30): the loaded state carries
    total_steps 12; p(t) then uses T = 30 from the loaded step on (as the LR cosine); masks,
    targets, densities and the step count load unchanged."""
    cfg = DSTConfig(density=0.5, update_every=3)
    model = tiny_llama(seed=0, num_hidden_layers=1).train()
    engine = DynamicSparsity(model, cfg, total_steps=12, seed=5)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    _train(model, engine, opt, 7, 0)
    state = engine.state_dict()
    assert state["total_steps"] == 12
    longer = DynamicSparsity(tiny_llama(seed=0, num_hidden_layers=1), cfg, total_steps=30, seed=5)
    longer.load_state_dict(state)
    assert (longer.total_steps, longer.loaded_total_steps, longer.step_count) == (30, 12, 7)
    for t in (7, 8, 20, 30):
        p = 0.005 + (0.5 - 0.005) * (1 + math.cos(math.pi * t / 30)) / 2
        assert longer.prune_fraction(t) == pytest.approx(p, abs=1e-15)
    assert longer.prune_fraction() == pytest.approx(cosine_prune_fraction(7, 30), abs=1e-15)
    assert longer.prune_fraction() > engine.prune_fraction()  # a longer decay: p jumps up
    assert longer.densities == engine.densities and longer.targets == engine.targets
    assert all(torch.equal(longer.masks[n], engine.masks[n]) for n in engine.names)
    # a state saved before total_steps was stored loads the same
    old = {k: v for k, v in state.items() if k != "total_steps"}
    again = DynamicSparsity(tiny_llama(seed=0, num_hidden_layers=1), cfg, total_steps=30, seed=5)
    again.load_state_dict(old)
    assert again.loaded_total_steps is None and again.prune_fraction() == longer.prune_fraction()


def test_skip_counts_the_step_and_changes_nothing_else():
    """An fp16 step the scaler skipped: skip() advances step_count (the update cadence and p(t)
    keep the run's step); masks stay, and an update due at the skipped step is not made."""
    cfg = DSTConfig(density=0.5, update_every=2)
    model = tiny_llama(seed=0, num_hidden_layers=1).train()
    engine = DynamicSparsity(model, cfg, total_steps=10, seed=5)
    masks = {n: m.clone() for n, m in engine.masks.items()}
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    engine.skip()
    engine.skip()  # step 2: an update was due
    assert engine.step_count == 2
    assert all(torch.equal(engine.masks[n], masks[n]) for n in engine.names)
    assert all(torch.equal(p, weights[n]) for n, p in model.named_parameters())
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    _train(model, engine, opt, 2, 2)  # steps 3, 4: the update at 4 reads p(4) of T = 10
    assert engine.step_count == 4
    assert any(not torch.equal(engine.masks[n], masks[n]) for n in engine.names)


def test_masked_weights_zero_after_every_step_and_static_mask():
    model = tiny_llama(seed=0).train()
    engine = DynamicSparsity(model, DSTConfig(density=0.3, update_every=None), total_steps=5)
    initial = {n: m.clone() for n, m in engine.masks.items()}
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    _train(model, engine, opt, 5, 0)
    for n in engine.names:
        assert torch.equal(engine.masks[n], initial[n])  # update_every=None: static mask
        assert engine.params[n].detach()[~engine.masks[n]].abs().max() == 0
        assert engine.params[n].detach()[engine.masks[n]].abs().min() > 0
    assert engine.step_count == 5


def test_load_state_dict_names_the_fix():
    model = tiny_llama(seed=0)
    engine = DynamicSparsity(model, DSTConfig(density=0.5), total_steps=5)
    other = DynamicSparsity(
        model, DSTConfig(density=0.5, dense_embeddings=True), total_steps=5
    ).state_dict()
    with pytest.raises(ValueError, match="build the model and DSTConfig"):
        engine.load_state_dict(other)
    with pytest.raises(ValueError, match="final_prune_fraction"):
        DSTConfig(density=0.5, prune_fraction=0.1, final_prune_fraction=0.2)


# -- distributed ----------------------------------------------------------------------------------


@pytest.mark.distributed
def test_ddp_and_fsdp2_two_processes_equal_one_process(tmp_path):
    out = tmp_path / "result.json"
    run_torchrun(WORKER, out, timeout=600)
    result = json.loads(out.read_text())
    assert set(result) == {"ddp/quirks=False", "fsdp2/quirks=False", "ddp/quirks=True"}
    for case, r in result.items():
        assert r["masks_equal"] and r["same_on_ranks"], case
        assert r["losses_equal"] and r["loss_difference"] == 0.0, case
        assert r["changed_from_init"], case  # the topology did move
    assert result["fsdp2/quirks=False"]["sharded"]  # the weights were DTensors

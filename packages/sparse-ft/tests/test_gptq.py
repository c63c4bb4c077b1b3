"""GPTQ and RTN: the lazy-batch GPTQ vs a plain column-by-column loop written here from the paper
(fp64), grids vs hand-computed levels, act-order + static groups vs the unpermuted grid, dead
inputs, the damping retry, the official group-refit quirk vs the paper's rule, GPTQ below RTN on a
tiny Llama calibrated on real text, exact save/load, true-sequential order, masked-DLM calibration."""

import codecs
import contextlib
import inspect
import io
import json

import pytest
import torch

from layerwise_core import masked_copies, tiny_bidirectional, tiny_llama
from sparse_ft import (
    GPTQHessian,
    QuantizeConfig,
    fit_grid,
    gptq_quantize,
    grid_quantize,
    load_quantized,
    quantize,
    rtn_quantize,
    save_quantized,
)

# ---------------------------------------------------------------- an independent reference


def _row_grid(w, bits, sym):
    """Min-max levels of each row, from spec C.9: returns (scale [rows, 1], zero [rows, 1])."""
    maxq = 2**bits - 1
    lo = w.min(1).values.clamp(max=0)
    hi = w.max(1).values.clamp(min=0)
    if sym:
        hi = torch.maximum(-lo, hi)
        lo = torch.where(lo < 0, -hi, lo)
    both_zero = (lo == 0) & (hi == 0)
    lo, hi = lo.masked_fill(both_zero, -1.0), hi.masked_fill(both_zero, 1.0)
    scale = (hi - lo) / maxq
    zero = torch.full_like(scale, (maxq + 1) // 2) if sym else torch.round(-lo / scale)
    return scale[:, None], zero[:, None]


def _nearest(col, scale, zero, bits):
    code = torch.clamp(torch.round(col / scale[:, 0]) + zero[:, 0], 0, 2**bits - 1)
    return scale[:, 0] * (code - zero[:, 0])


def loop_gptq(
    weight,
    hessian,
    bits,
    *,
    group_size=-1,
    sym=False,
    act_order=False,
    static=False,
    percdamp=0.01,
    stale_block=None,
    with_error=False,
):
    """GPTQ without lazy batches: after each column, W[:, j:] -= err U[j, j:] on the whole matrix.

    A dynamic group's grid is fitted on the current weights, or with `stale_block=B` on the weights
    as they were when the B-column block holding the group's first column began (the official rule).
    `with_error`: also return GPTQ's error sum_j ||err_j||^2 / 2.
    """
    w, h = weight.clone(), hessian.clone()
    cols = w.shape[1]
    dead = torch.diag(h) == 0
    h[dead, dead] = 1
    w[:, dead] = 0
    grids = {}
    if static:
        for k in range(0, cols, group_size):
            grids[k // group_size] = _row_grid(w[:, k : k + group_size], bits, sym)
    order = torch.argsort(torch.diag(h), descending=True) if act_order else torch.arange(cols)
    w, h = w[:, order], h[order][:, order]
    h = h + percdamp * torch.diag(h).mean() * torch.eye(cols, dtype=h.dtype)
    u = torch.linalg.cholesky(torch.linalg.inv(h)).T  # upper, u^T u = h^-1
    q = torch.zeros_like(w)
    snapshot = w.clone()
    grid = _row_grid(w, bits, sym)
    error = 0.0
    for j in range(cols):
        if stale_block and j % stale_block == 0:
            snapshot = w.clone()
        if group_size != -1:
            if static:
                grid = grids[int(order[j]) // group_size]
            elif j % group_size == 0:
                source = snapshot if stale_block else w
                grid = _row_grid(source[:, j : j + group_size], bits, sym)
        q[:, j] = _nearest(w[:, j], *grid, bits)
        err = (w[:, j] - q[:, j]) / u[j, j]
        w[:, j:] -= torch.outer(err, u[j, j:])
        error += (err**2).sum().item() / 2
    q = q[:, torch.argsort(order)]
    return (q, error) if with_error else q


def _layer(rows=24, cols=64, seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    mixing = torch.randn(cols, cols, generator=gen) * 0.3 + torch.eye(cols)
    x = (torch.randn(6, 40, cols, generator=gen) @ mixing) * torch.rand(cols, generator=gen) * 3
    weight = torch.randn(rows, cols, generator=gen)
    tokens = x.reshape(-1, cols).to(dtype)
    return weight.to(dtype), 2 * tokens.T @ tokens / x.shape[0], tokens


# ---------------------------------------------------------------- the algorithm


@pytest.mark.parametrize(
    ("act_order", "group_size", "static", "sym", "bits"),
    [
        (False, -1, False, False, 3),
        (True, -1, False, True, 4),
        (False, 16, False, True, 3),
        (True, 16, False, False, 2),
        (False, 16, True, False, 3),
        (True, 16, True, True, 4),
    ],
)
def test_gptq_equals_the_column_by_column_loop(act_order, group_size, static, sym, bits):
    weight, hessian, _ = _layer()
    kwargs = dict(group_size=group_size, sym=sym, act_order=act_order)
    got, packed = gptq_quantize(weight, hessian, bits, blocksize=24, static_groups=static, **kwargs)
    want = loop_gptq(weight, hessian, bits, static=static, **kwargs)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-10)
    assert torch.equal(packed.dequantize(), got)  # codes, scales, zeros, g_idx carry it all
    assert packed.codes.dtype == torch.uint8 and int(packed.codes.max()) <= 2**bits - 1


def test_gptq_layer_error_below_rtn_and_reported_error_matches():
    weight, hessian, tokens = _layer(rows=32, cols=64, seed=3)

    def output_error(w):
        return ((tokens @ (w - weight).T) ** 2).sum().item()

    for group_size in (-1, 16):
        gptq, packed = gptq_quantize(weight, hessian, 3, group_size=group_size, blocksize=16)
        rtn, _ = rtn_quantize(weight, 3, group_size=group_size)
        assert output_error(gptq) < 0.8 * output_error(rtn)
        _, error = loop_gptq(weight, hessian, 3, group_size=group_size, with_error=True)
        assert packed.error == pytest.approx(error, rel=1e-9)


def test_group_refit_quirk_only_when_a_group_starts_inside_a_block():
    weight, hessian, _ = _layer(seed=4)
    for group_size, blocksize in ((8, 32), (24, 32)):  # groups start inside blocks
        correct, _ = gptq_quantize(weight, hessian, 3, group_size=group_size, blocksize=blocksize)
        quirk, _ = gptq_quantize(
            weight, hessian, 3, group_size=group_size, blocksize=blocksize, reference_quirks=True
        )
        assert (correct - quirk).abs().max() > 1e-3
        want_correct = loop_gptq(weight, hessian, 3, group_size=group_size)
        want_quirk = loop_gptq(weight, hessian, 3, group_size=group_size, stale_block=blocksize)
        torch.testing.assert_close(correct, want_correct, rtol=0, atol=1e-10)
        torch.testing.assert_close(quirk, want_quirk, rtol=0, atol=1e-10)
    for group_size, blocksize in ((16, 16), (32, 16)):  # every group starts a block
        correct, _ = gptq_quantize(weight, hessian, 3, group_size=group_size, blocksize=blocksize)
        quirk, _ = gptq_quantize(
            weight, hessian, 3, group_size=group_size, blocksize=blocksize, reference_quirks=True
        )
        assert torch.equal(correct, quirk)


def test_hessian_running_normalisation_counts_sequences():
    _, _, tokens = _layer(cols=16, dtype=torch.float32)
    x = tokens.reshape(6, 40, 16)
    stats = GPTQHessian(16)
    for part in (x[:1], x[1:4], x[4:]):
        stats.add_batch(part)
    assert stats.sequences == 6
    torch.testing.assert_close(stats.hessian, 2 * tokens.T @ tokens / 6, rtol=1e-5, atol=1e-4)


# ---------------------------------------------------------------- grids


def test_three_bit_symmetric_levels_by_hand():
    w = torch.tensor([[-1.0, -0.3, 0.1, 0.9]])
    grid = fit_grid(w, 3, sym=True)
    scale = 2 * 1.0 / 7  # zero = 4: levels scale * {-4, ..., 3}
    assert grid.scale.item() == pytest.approx(scale) and grid.zero.item() == 4
    probe = torch.linspace(-1.3, 1.3, 201).unsqueeze(0)
    levels = scale * torch.arange(-4, 4, dtype=torch.float32)
    nearest = levels[(probe.T - levels).abs().argmin(1)]
    torch.testing.assert_close(grid_quantize(probe, grid)[0], nearest, rtol=0, atol=1e-6)
    assert grid_quantize(torch.tensor([[1.0]]), grid).item() == pytest.approx(6 / 7)


def test_asymmetric_levels_have_an_integer_zero_by_hand():
    w = torch.tensor([[-0.2, 0.1, 0.5], [0.3, 0.6, 0.9]])
    grid = fit_grid(w, 3, sym=False)
    # row 0: [xmin, xmax] = [-0.2, 0.5], scale 0.1, zero round(2) = 2: levels 0.1 * {-2, ..., 5}
    # row 1: no negatives, so xmin = 0: scale 0.9 / 7, zero 0: levels 0.9 / 7 * {0, ..., 7}
    torch.testing.assert_close(grid.scale[:, 0], torch.tensor([0.1, 0.9 / 7]))
    assert grid.zero[:, 0].tolist() == [2.0, 0.0]
    probe = torch.tensor([[-0.26, 0.04, 0.56], [-0.1, 0.2, 0.95]])
    want = torch.tensor([[-0.2, 0.0, 0.5], [0.0, 0.9 / 7 * 2, 0.9]])
    torch.testing.assert_close(grid_quantize(probe, grid), want, rtol=0, atol=1e-6)


def test_symmetric_grid_of_a_row_without_negatives_keeps_zero_as_the_official_code():
    # xmin = 0 is not mirrored: scale = xmax / 7, zero 4, so the top level is 3/7 xmax
    grid = fit_grid(torch.tensor([[0.2, 0.7], [0.0, 0.0]]), 3, sym=True)
    torch.testing.assert_close(grid.scale[:, 0], torch.tensor([0.1, 2 / 7]))  # all-zero: (-1, 1)
    assert grid_quantize(torch.tensor([[0.7], [0.0]]), grid)[:, 0].tolist() == pytest.approx(
        [0.3, 0.0]
    )


def test_rtn_rounds_each_group_to_its_own_grid():
    weight, _, _ = _layer(seed=8)
    got, packed = rtn_quantize(weight, 3, group_size=16, sym=True)
    for k in range(4):
        part = weight[:, 16 * k : 16 * k + 16]
        scale, zero = _row_grid(part, 3, True)
        want = torch.stack([_nearest(col, scale, zero, 3) for col in part.T], dim=1)
        assert torch.equal(got[:, 16 * k : 16 * k + 16], want)
    assert torch.equal(packed.dequantize(), got)


def test_mse_shrink_search_never_worse_than_min_max():
    w = torch.randn(16, 64, generator=torch.Generator().manual_seed(0))
    w[:, 0] *= 8  # an outlier per row: shrinking the range pays off
    for sym in (False, True):
        plain, shrunk = fit_grid(w, 3, sym=sym), fit_grid(w, 3, sym=sym, mse=True)
        e_plain = (grid_quantize(w, plain) - w).abs().pow(2.4).sum(1)
        e_shrunk = (grid_quantize(w, shrunk) - w).abs().pow(2.4).sum(1)
        assert (e_shrunk <= e_plain).all() and (e_shrunk < e_plain).any()
        assert (shrunk.scale <= plain.scale + 1e-7).all()


def test_act_order_with_static_groups_uses_the_unpermuted_grid():
    weight, hessian, _ = _layer(seed=5)
    _, ordered = gptq_quantize(
        weight, hessian, 3, group_size=16, act_order=True, static_groups=True
    )
    _, plain = gptq_quantize(weight, hessian, 3, group_size=16, static_groups=True)
    for k in range(4):
        grid = fit_grid(weight[:, 16 * k : 16 * k + 16], 3)
        torch.testing.assert_close(ordered.scales[:, k : k + 1], grid.scale, rtol=0, atol=0)
        assert torch.equal(ordered.zeros[:, k : k + 1].double(), grid.zero)
    assert torch.equal(ordered.scales, plain.scales) and torch.equal(ordered.zeros, plain.zeros)
    assert ordered.g_idx.tolist() == [j // 16 for j in range(64)]
    assert not torch.equal(ordered.codes, plain.codes)  # a different order, the same grid


def test_act_order_with_dynamic_groups_needs_a_column_group_index():
    weight, hessian, _ = _layer(seed=6)
    got, packed = gptq_quantize(weight, hessian, 3, group_size=16, act_order=True)
    perm = torch.argsort(torch.diag(hessian), descending=True)
    assert packed.g_idx[perm].tolist() == [k // 16 for k in range(64)]
    assert packed.g_idx.tolist() != [j // 16 for j in range(64)]
    assert torch.equal(packed.dequantize(), got)


def test_dead_inputs_are_zeroed_and_quirk_fits_the_row_grid_before():
    weight, hessian, _ = _layer(seed=7)
    hessian[5, :] = 0
    hessian[:, 5] = 0
    weight[:, 5] = 10.0  # the largest weight of every row sits on the dead input
    got, packed = gptq_quantize(weight, hessian, 4)
    assert (got[:, 5] == 0).all() and torch.isfinite(got).all()
    live = weight.clone()
    live[:, 5] = 0
    torch.testing.assert_close(packed.scales, fit_grid(live, 4).scale, rtol=0, atol=0)
    _, quirk = gptq_quantize(weight, hessian, 4, reference_quirks=True)
    torch.testing.assert_close(quirk.scales, fit_grid(weight, 4).scale, rtol=0, atol=0)
    torch.testing.assert_close(got, loop_gptq(weight, hessian, 4), rtol=0, atol=1e-10)


def test_damping_retry_with_ten_times_the_damping():
    # eigenvalues 1 +- 1.05: 1% damping leaves -0.04 (Cholesky fails), 10% gives +0.05
    hessian = torch.tensor([[1.0, 1.05], [1.05, 1.0]], dtype=torch.float64)
    weight = torch.tensor([[0.3, -0.7], [0.5, 0.2]], dtype=torch.float64)
    got, _ = gptq_quantize(weight, hessian, 3, percdamp=0.01)
    want, _ = gptq_quantize(weight, hessian, 3, percdamp=0.1, damp_retries=0)
    assert torch.equal(got, want)
    with pytest.raises(RuntimeError, match="raise percdamp or damp_retries"):
        gptq_quantize(weight, hessian, 3, percdamp=0.01, damp_retries=0)
    singular = torch.ones(2, 2, dtype=torch.float64)  # rank 1: no damping, no retry can help
    with pytest.raises(RuntimeError, match="raise percdamp"):
        gptq_quantize(weight, singular, 3, percdamp=0.0, damp_retries=3)
    assert torch.isfinite(gptq_quantize(weight, singular, 3)[0]).all()  # 1% damping suffices


# ---------------------------------------------------------------- models


def _real_text_ids(length):
    """Bytes of real English text shipped with Python (the Zen of Python, json's docstring)."""
    with contextlib.redirect_stdout(io.StringIO()):
        import this
    text = codecs.decode(this.s, "rot13") + "\n" + json.__doc__
    data = torch.tensor(list(text.encode()), dtype=torch.long)
    return data[: len(data) // length * length].view(-1, length)


def _hidden(model, ids):
    return model.model(input_ids=ids).last_hidden_state


def test_gptq_output_error_below_rtn_on_a_tiny_llama_with_real_text():
    ids = _real_text_ids(96)  # 38 windows
    calibration, held_out = ids[:24], ids[24:]
    dense = tiny_llama(seed=1, vocab_size=256, hidden_size=64, intermediate_size=128)
    with torch.no_grad():
        reference = _hidden(dense, held_out)
    for group_size in (-1, 16):
        errors = {}
        for method in ("gptq", "rtn"):
            model = tiny_llama(seed=1, vocab_size=256, hidden_size=64, intermediate_size=128)
            quantize(
                model, method, 3, group_size=group_size, calibration=calibration, batch_size=24
            )
            with torch.no_grad():
                errors[method] = (_hidden(model, held_out) - reference).pow(2).mean().item()
        assert errors["gptq"] < 0.7 * errors["rtn"], (group_size, errors)


def test_save_load_round_trip_is_exact(tmp_path):
    calibration = _real_text_ids(32)[:8]
    model = tiny_llama(seed=2, vocab_size=256)
    result = quantize(model, "gptq", 3, group_size=8, act_order=True, calibration=calibration)
    assert any(
        q.g_idx.tolist() != [j // 8 for j in range(q.g_idx.numel())] for q in result.layers.values()
    )
    save_quantized(result, tmp_path / "q")
    fresh = tiny_llama(seed=2, vocab_size=256)  # the dense model, as from its checkpoint
    loaded = load_quantized(fresh, tmp_path / "q")
    state, got = model.state_dict(), fresh.state_dict()
    assert all(torch.equal(state[k], got[k]) for k in state)
    assert loaded.errors == result.errors and (loaded.bits, loaded.group_size) == (3, 8)
    for name, q in loaded.layers.items():
        assert torch.equal(q.codes, result.layers[name].codes)


def test_true_sequential_order_seen_by_hooks():
    calibration = _real_text_ids(32)[:4]
    names = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

    def states_seen(true_sequential):
        model = tiny_llama(seed=3, vocab_size=256, num_hidden_layers=1)
        block = model.model.layers[0]
        mods = {n.split(".")[-1]: m for n, m in block.named_modules() if n.split(".")[-1] in names}
        before = {n: m.weight.clone() for n, m in mods.items()}
        log = []

        def hook(module, _args, name):
            changed = frozenset(n for n, m in mods.items() if not torch.equal(m.weight, before[n]))
            log.append((name, changed))

        for name, m in mods.items():
            m.register_forward_pre_hook(lambda mod, args, name=name: hook(mod, args, name))
        quantize(model, "gptq", 3, calibration=calibration, true_sequential=true_sequential)
        return {(name, changed) for name, changed in log}

    seen = states_seen(True)
    qkv, o, gate_up = {"q_proj", "k_proj", "v_proj"}, {"o_proj"}, {"gate_proj", "up_proj"}
    assert ("o_proj", frozenset(qkv)) in seen  # o's inputs after q, k, v are quantised
    assert ("gate_proj", frozenset(qkv | o)) in seen
    assert ("down_proj", frozenset(qkv | o | gate_up)) in seen
    assert not any(n == "down_proj" and c and "down_proj" not in c for n, c in states_seen(False))


def test_masked_diffusion_calibration_runs_masked_copies_through_the_bidirectional_model():
    calibration = _real_text_ids(32)[:3] % 127  # vocab 128, [MASK] = 127

    def run(masking):
        model = tiny_bidirectional(seed=4)
        seen = []
        model.model.embed_tokens.register_forward_hook(lambda m, a, o: seen.append(a[0].clone()))
        quantize(model, "gptq", 3, calibration=calibration, calibration_masking=masking, seed=7)
        return model, torch.cat(seen)

    masked_model, masked_ids = run("diffusion")
    plain_model, plain_ids = run("none")
    assert torch.equal(masked_ids, masked_copies(calibration, 127, 4, seed=7))  # 4 copies each
    assert torch.equal(plain_ids, calibration)
    assert (masked_ids == 127).any() and not (plain_ids == 127).any()
    w_masked = masked_model.model.layers[0].self_attn.q_proj.weight
    assert not torch.equal(w_masked, plain_model.model.layers[0].self_attn.q_proj.weight)


def test_config_defaults_are_quantize_defaults_and_apply_calls_it():
    signature = inspect.signature(quantize).parameters
    for name, field in QuantizeConfig.model_fields.items():
        if name in ("method", "calibration_sequences"):
            continue
        assert signature[name].default == field.default, name
    calibration = _real_text_ids(32)[:6]
    by_config = tiny_llama(seed=5, vocab_size=256)
    config = QuantizeConfig(method="gptq", bits=3, group_size=8, calibration_sequences=4)
    result = config.apply(by_config, calibration)
    direct = tiny_llama(seed=5, vocab_size=256)
    quantize(direct, "gptq", 3, group_size=8, calibration=calibration[:4])
    assert result is not None and result.method == "gptq"
    assert all(torch.equal(a, b) for a, b in zip(by_config.parameters(), direct.parameters()))
    assert QuantizeConfig().apply(by_config, calibration) is None


def test_arguments_errors_name_the_fix():
    model = tiny_llama()
    with pytest.raises(ValueError, match="needs calibration data"):
        quantize(model, "gptq", 3)
    with pytest.raises(ValueError, match="bits must be"):
        quantize(model, "rtn", 9)
    with pytest.raises(ValueError, match="set group_size"):
        QuantizeConfig(method="gptq", static_groups=True)
    with pytest.raises(ValueError, match="mask_token_id="):
        quantize(
            model,
            "gptq",
            3,
            calibration=torch.zeros(2, 8, dtype=torch.long),
            calibration_masking="diffusion",
        )

"""The Monte-Carlo ELBO on a model whose masked-position distribution is fixed (closed-form
expectation), its masking rules and stratification, a per-token loop on a real Dream-style model,
and the fixed-mask ELBO loss by hand."""

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from depth_probe import elbo_loglikelihood, fixed_mask_elbo
from layerwise_core import tiny_llama, tiny_shifted_bidirectional

VOCAB, MASK = 10, 9


class FixedLogits(nn.Module):
    """Position i always predicts the distribution softmax(table[i]), whatever the input: the ELBO's
    expectation is then -sum over the maskable target positions of CE_i. Records its inputs."""

    def __init__(self, length=16, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.table = nn.Parameter(torch.randn(length, VOCAB, generator=g, dtype=torch.float64))
        self.config = SimpleNamespace(logit_shift=0, mask_token_id=MASK)
        self.seen = []

    def forward(self, input_ids, attention_mask=None):
        self.seen.append((input_ids.clone(), attention_mask))
        batch, length = input_ids.shape
        return SimpleNamespace(logits=self.table[:length].expand(batch, length, VOCAB))

    def ce(self, tokens):
        return F.cross_entropy(self.table[: len(tokens)], torch.as_tensor(tokens), reduction="none")


PREFIX, TARGET = [1, 2, 3], [4, 5, 6, 7, 8]


def expected(model, prefix, target):
    ce = model.ce(prefix + target).detach()
    return -ce[len(prefix) : len(prefix) + len(target) - 1].sum().item()  # last target never masked


def test_eps_one_masks_every_target_but_the_last_exactly():
    model = FixedLogits()
    got = elbo_loglikelihood(model, [PREFIX], [TARGET], mc_num=8, group_size=4, eps=1.0)
    assert got.item() == pytest.approx(expected(model, PREFIX, TARGET), rel=1e-12)
    for ids, _ in model.seen:
        assert (ids[:, 3:7] == MASK).all()  # every target token but the last
        assert torch.equal(ids[:, :3], torch.tensor(PREFIX).expand(4, 3))  # prefix kept
        assert (ids[:, 7] == 8).all()  # last target kept


def test_monte_carlo_mean_matches_the_closed_form_expectation():
    model = FixedLogits(seed=1)
    eps, mc = 1e-3, 4096
    got = elbo_loglikelihood(model, [PREFIX], [TARGET], mc_num=mc, group_size=64, eps=eps)
    exact = expected(model, PREFIX, TARGET)
    # Var of one sample = sum_i CE_i^2 (E[1/p] - 1), E[1/p] = ln(1/eps) / (1 - eps)
    ce = model.ce(PREFIX + TARGET).detach()[3:7]
    sd = math.sqrt(float((ce**2).sum()) * (math.log(1 / eps) / (1 - eps) - 1) / mc)
    assert abs(got.item() - exact) < 5 * sd, (got.item(), exact, sd)
    assert abs(got.item() - exact) > 0  # an estimate, not the formula


def test_padded_requests_equal_single_requests_and_padding_is_never_masked():
    model = FixedLogits(seed=2)
    prefixes, targets = [PREFIX, [1]], [TARGET, [4, 5]]
    both = elbo_loglikelihood(
        model, prefixes, targets, mc_num=8, group_size=4, eps=1.0, requests_per_batch=2
    )
    assert both[0].item() == pytest.approx(expected(model, PREFIX, TARGET), rel=1e-12)
    assert both[1].item() == pytest.approx(expected(model, [1], [4, 5]), rel=1e-12)
    ids, mask = model.seen[-1]
    assert mask is not None and mask[4:, 3:].sum() == 0  # rows of request 2 are padded after 3
    assert (ids[4:, 1] == MASK).all() and (ids[4:, 2] == 5).all() and (ids[4:, 3:] != MASK).all()


def test_t_is_stratified_within_each_group():
    model = FixedLogits(length=2003)
    target = [1] * 2000
    elbo_loglikelihood(model, [[2, 3]], [target], mc_num=4, group_size=4, eps=0.0, seed=3)
    ids, _ = model.seen[0]
    rates = (ids[:, 2:-1] == MASK).double().mean(1).sort().values
    gaps = rates.diff()
    # stratified: t_k = (u + k/4) mod 1 -> sorted rates 1/4 apart (sampling noise ~0.01)
    assert ((gaps - 0.25).abs() < 0.05).all(), rates


def test_a_dream_style_model_matches_a_per_token_loop():
    model = tiny_shifted_bidirectional(num_hidden_layers=2).double()
    mask_id = model.config.mask_token_id
    prefix, target = [5, 6, 7], [8, 9, 10, 11]
    got = elbo_loglikelihood(model, [prefix], [target], mc_num=6, group_size=3, seed=4)
    # the same draws, then one row and one masked token at a time
    g = torch.Generator().manual_seed(4)
    seq = torch.tensor(prefix + target)
    total = 0.0
    for _ in range(2):
        u0 = torch.rand(1, generator=g, dtype=torch.float64)
        t = (u0 + torch.arange(3, dtype=torch.float64) / 3) % 1
        p = (1 - 1e-3) * t + 1e-3
        draws = torch.rand(3, 7, generator=g, dtype=torch.float64)
        for k in range(3):
            masked = [i for i in range(3, 6) if draws[k, i] < p[k]]
            noisy = seq.clone()
            noisy[masked] = mask_id
            logits = model(input_ids=noisy[None]).logits[0]
            for i in masked:  # Dream: the output at i - 1 scores token i
                total += F.cross_entropy(logits[i - 1], seq[i]).item() / p[k].item() / 3
    assert got.item() == pytest.approx(-total / 2, rel=1e-9)


def test_fixed_mask_elbo_by_hand_and_errors():
    model = FixedLogits(seed=5)
    ids = torch.tensor([[1, 2, 3, 4, 5, 6], [7, 8, 1, 2, 0, 0]])
    mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2])
    got = fixed_mask_elbo(model, ids, 0.5, mask, seed=7, batch_size=1)
    u = torch.rand(ids.shape, generator=torch.Generator().manual_seed(7))
    total = 0.0
    for b in range(2):
        for i in range(6):
            if mask[b, i] and u[b, i] < 0.5:
                total += model.ce(ids[b].tolist())[i].item()
    assert got == pytest.approx(total / 0.5 / 10, rel=1e-12)
    assert fixed_mask_elbo(model, ids, 0.5, mask, seed=7, batch_size=2) == pytest.approx(got)
    assert fixed_mask_elbo(model, ids, 1.0, mask) == pytest.approx(
        sum(model.ce(ids[b].tolist())[mask[b].bool()].sum().item() for b in range(2)) / 10
    )
    with pytest.raises(ValueError, match="masked-diffusion"):
        fixed_mask_elbo(tiny_llama(), ids, 0.5)
    with pytest.raises(ValueError, match="multiple"):
        elbo_loglikelihood(model, [PREFIX], [TARGET], mc_num=10, group_size=4)

"""Routing: greedy top-k without renormalisation, the sequence-level load-balancing loss and the
routing statistics, on constructed router probabilities whose results are worked out by hand."""

import math

import pytest
import torch

from coe_moe import CoERouter, load_balancing_loss, routing_stats, top_k_routing


def _logits(rows):
    """Logits whose softmax is exactly the given probability rows."""
    return torch.tensor(rows, dtype=torch.float64).log()


def test_top_k_weights_are_the_probabilities_not_renormalised():
    weights, experts = top_k_routing(_logits([[0.1, 0.5, 0.15, 0.25]]), 2)
    assert experts.tolist() == [[1, 3]]
    torch.testing.assert_close(weights, torch.tensor([[0.5, 0.25]], dtype=torch.float64))


def test_router_matches_its_equation():
    torch.manual_seed(0)
    router = CoERouter(hidden_size=5, num_experts=4, top_k=2).double()
    z = torch.randn(3, 5, dtype=torch.float64)
    logits, weights, experts = router(z)
    torch.testing.assert_close(logits, z @ router.weight.T)
    probs = torch.softmax(z @ router.weight.T, dim=-1)
    torch.testing.assert_close(weights, probs.gather(1, experts))
    assert (weights[:, 0] >= weights[:, 1]).all()


def test_load_balancing_loss_on_a_constructed_routing():
    # B = 2 sequences of T = 2 tokens, E = 4 experts, K = 2.
    # Sequence 0 selects {0,1} then {2,3}: f = 4/(2*2) * [1,1,1,1] = [1,1,1,1], P = [.25]*4 -> 1.
    # Sequence 1 selects {0,1} twice:      f = [2,2,0,0], P = [.55,.275,.125,.05] -> 1.1 + .55 = 1.65.
    # L = (1 + 1.65) / 2 = 1.325.
    logits = _logits(
        [
            [0.4, 0.3, 0.2, 0.1],
            [0.1, 0.2, 0.3, 0.4],
            [0.6, 0.25, 0.1, 0.05],
            [0.5, 0.3, 0.15, 0.05],
        ]
    )
    loss = load_balancing_loss(logits, top_k=2, batch_size=2)
    torch.testing.assert_close(loss, torch.tensor(1.325, dtype=torch.float64))
    # one sequence of 4 tokens: counts [3,3,1,1] -> f = 4/8 * counts, P = mean of the rows
    p = torch.tensor([0.4, 0.3, 0.2, 0.1]) + torch.tensor([0.1, 0.2, 0.3, 0.4])
    p = (p + torch.tensor([0.6, 0.25, 0.1, 0.05]) + torch.tensor([0.5, 0.3, 0.15, 0.05])) / 4
    want = sum(f * q for f, q in zip([1.5, 1.5, 0.5, 0.5], p.tolist()))
    torch.testing.assert_close(load_balancing_loss(logits, 2, 1).item(), want)


def test_load_balancing_loss_is_one_when_uniform():
    # uniform probabilities: P = 1/E whatever the selection; f sums to E -> L = 1
    logits = torch.zeros(12, 6)
    assert load_balancing_loss(logits, top_k=3, batch_size=3).item() == pytest.approx(1.0)


def test_load_balancing_loss_gradient_reaches_the_logits():
    logits = _logits([[0.4, 0.3, 0.2, 0.1], [0.1, 0.2, 0.3, 0.4]]).requires_grad_()
    load_balancing_loss(logits, 1, 1).backward()
    assert logits.grad.abs().sum() > 0


def test_load_balancing_loss_checks_the_batch_size():
    with pytest.raises(ValueError, match="not a multiple of batch_size 4"):
        load_balancing_loss(torch.zeros(6, 3), 1, 4)


ITER0 = [[0.4, 0.3, 0.2, 0.1], [0.1, 0.2, 0.3, 0.4], [0.6, 0.25, 0.1, 0.05]]  # {0,1} {2,3} {0,1}
ITER1 = [[0.4, 0.3, 0.2, 0.1], [0.5, 0.1, 0.1, 0.3], [0.1, 0.2, 0.3, 0.4]]  # {0,1} {0,3} {2,3}


def _entropy(rows):
    return sum(-sum(p * math.log(p) for p in row) for row in rows) / len(rows)


def test_routing_stats_on_a_constructed_routing():
    stats = routing_stats([_logits(ITER0), _logits(ITER1)], top_k=2)
    torch.testing.assert_close(
        stats.load, torch.tensor([[2, 2, 1, 1], [2, 1, 1, 2]], dtype=torch.float32) / 6
    )
    torch.testing.assert_close(
        stats.entropy, torch.tensor([_entropy(ITER0), _entropy(ITER1)], dtype=torch.float32)
    )
    # token 0 keeps {0,1}; token 1 goes {2,3} -> {0,3} (one shared); token 2 {0,1} -> {2,3}
    torch.testing.assert_close(stats.overlap, torch.tensor([[1.0, 0.5], [0.5, 1.0]]))
    torch.testing.assert_close(stats.changed, torch.tensor([[0.0, 2 / 3], [2 / 3, 0.0]]))
    assert stats.distinct_sets == 3
    assert stats.max_entropy == pytest.approx(math.log(4))


def test_routing_stats_mask_drops_tokens():
    stats = routing_stats(
        [_logits(ITER0), _logits(ITER1)], top_k=2, mask=torch.tensor([True, True, False])
    )
    torch.testing.assert_close(stats.changed, torch.tensor([[0.0, 0.5], [0.5, 0.0]]))
    assert stats.distinct_sets == 2

"""A training loop that never calls `after_optimizer_step` is reported: after more optimizer steps
than the refresh interval, LIFT / SEFT warn (the masks would silently stay stale)."""

import warnings

import pytest
import torch

from layerwise_core import tiny_llama
from sparse_ft import LiftConfig, SeftConfig, get_sparse_model, prune


def train(sparse, optimizer, steps, call_hook):
    for step in range(steps):
        ids = torch.randint(0, 128, (2, 8), generator=torch.Generator().manual_seed(step))
        sparse(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if call_hook:
            sparse.after_optimizer_step(optimizer)


@pytest.mark.parametrize("fused", [False, True])  # fused AdamW does not bump version counters
def test_lift_warns_after_interval_plus_one_steps_without_the_call(fused):
    sparse = get_sparse_model(
        tiny_llama(seed=0), LiftConfig(lora_rank=1, filter_rank=2, update_interval=3)
    )
    optimizer = torch.optim.AdamW(sparse.trainable_parameters(), lr=1e-3, fused=fused)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train(sparse, optimizer, 3, call_hook=False)  # 3 steps = the interval: not yet late
    with pytest.warns(UserWarning, match=r"4 optimizer steps without model.after_optimizer_step.*"
                      r"update_interval=3: the LIFT masks are never refreshed"):  # fmt: skip
        train(sparse, optimizer, 1, call_hook=False)
    sparse.after_optimizer_step(optimizer)  # the call resets the count
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train(sparse, optimizer, 3, call_hook=False)


def test_no_warning_when_called_for_a_static_mask_or_for_other_optimizers():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sparse = get_sparse_model(
            tiny_llama(seed=0), LiftConfig(lora_rank=1, filter_rank=2, update_interval=2)
        )
        train(sparse, torch.optim.SGD(sparse.trainable_parameters(), lr=1e-3), 8, call_hook=True)
        static = get_sparse_model(
            tiny_llama(seed=0), LiftConfig(lora_rank=1, filter_rank=2, update_interval=None)
        )
        train(static, torch.optim.SGD(static.trainable_parameters(), lr=1e-3), 4, call_hook=False)
        # an optimizer that does not hold the deltas is not counted
        sparse = get_sparse_model(
            tiny_llama(seed=0), LiftConfig(lora_rank=1, filter_rank=2, update_interval=2)
        )
        other = torch.nn.Parameter(torch.zeros(3))
        unrelated = torch.optim.SGD([other], lr=1e-3)
        for _ in range(5):
            other.grad = torch.ones(3)
            unrelated.step()


def test_seft_warns_too_and_a_merged_model_stops_counting():
    calib = torch.randint(0, 128, (4, 16), generator=torch.Generator().manual_seed(0))
    model = tiny_llama(seed=1)
    prune(model, "wanda", 0.5, calibration=calib)
    sparse = get_sparse_model(model, SeftConfig(budget_rank=1, update_interval=2))
    optimizer = torch.optim.AdamW(sparse.trainable_parameters(), lr=1e-3)
    with pytest.warns(UserWarning, match="update_interval=2: SEFT's drop / grow / re-prune never"):
        train(sparse, optimizer, 3, call_hook=False)
    sparse.merge_and_unload()  # removes the step hook
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for p in optimizer.param_groups[0]["params"]:
            p.grad = torch.zeros_like(p)
        for _ in range(4):
            optimizer.step()

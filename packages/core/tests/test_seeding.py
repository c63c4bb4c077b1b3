import random

import numpy as np
import torch

from layerwise_core import get_rng_state, set_rng_state, set_seed, torch_load_safe


def draw():
    return random.random(), float(np.random.rand()), torch.rand(3).tolist()


def test_set_seed_reproduces():
    set_seed(3)
    first = draw()
    set_seed(3)
    assert draw() == first
    set_seed(4)
    assert draw() != first


def test_rng_snapshot_restores_every_generator(tmp_path):
    set_seed(0)
    draw()
    random.gauss(0.0, 1.0)  # leaves a cached Gaussian in Python's state
    state = get_rng_state()
    expected = (*draw(), random.gauss(0.0, 1.0))
    torch.save(state, tmp_path / "rng.pt")
    draw()
    # weights_only=True: the snapshot is tensors and plain values, no pickled Python objects
    set_rng_state(torch_load_safe(tmp_path / "rng.pt"))
    assert (*draw(), random.gauss(0.0, 1.0)) == expected


def test_seeded_torch_rng_draws_by_its_seed_and_restores_the_global_state():
    from layerwise_core import seeded_torch_rng

    torch.manual_seed(123)
    before = torch.get_rng_state()
    with seeded_torch_rng(7):
        inside = torch.rand(4)
    assert torch.equal(torch.get_rng_state(), before)  # the caller's stream is untouched
    torch.manual_seed(999)  # another global state: the same draws inside
    with seeded_torch_rng(7):
        assert torch.equal(torch.rand(4), inside)
    torch.manual_seed(7)
    assert torch.equal(torch.rand(4), inside)  # exactly torch.manual_seed(seed)'s stream

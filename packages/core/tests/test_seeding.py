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

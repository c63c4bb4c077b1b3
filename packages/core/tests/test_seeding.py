import random

import numpy as np
import torch

from layerwise_core import get_rng_state, set_rng_state, set_seed


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
    state = get_rng_state()
    expected = draw()
    torch.save(state, tmp_path / "rng.pt")
    draw()
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=False))
    assert draw() == expected

"""N:M: masks vs the official per-group loop; pruned layers hold exactly N zeros per group of M."""

import pytest
import torch

from layerwise_core import tiny_llama
from sparse_ft import is_nm_sparse, nm_prune_mask, parse_nm, prune


def _reference_loop(scores, n, m):
    # the official code: for every column ii % m == 0, scatter the n lowest of scores[:, ii:ii+m]
    mask = torch.zeros_like(scores, dtype=torch.bool)
    for ii in range(0, scores.shape[1], m):
        lowest = torch.topk(scores[:, ii : ii + m], n, dim=1, largest=False)[1]
        mask.scatter_(1, ii + lowest, True)
    return mask


@pytest.mark.parametrize(("n", "m"), [(2, 4), (1, 4), (4, 8)])
def test_mask_matches_reference_loop(n, m):
    scores = torch.rand(5, 16, generator=torch.Generator().manual_seed(n * m))
    mask = nm_prune_mask(scores, n, m)
    assert torch.equal(mask, _reference_loop(scores, n, m))
    assert (mask.view(5, -1, m).sum(-1) == n).all()


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_pruned_model_is_exactly_two_four(method):
    model = tiny_llama(seed=1)
    calib = torch.randint(0, 128, (4, 16), generator=torch.Generator().manual_seed(0))
    result = prune(model, method, None, pattern="2:4", calibration=calib, blocksize=16)
    for name, keep in result.masks.items():
        weight = model.get_submodule(name).weight
        assert is_nm_sparse(weight, 2, 4), name
        assert (keep.view(keep.shape[0], -1, 4).sum(-1) == 2).all(), name
        assert torch.equal(weight != 0, keep) or method == "sparsegpt"
        assert ((weight == 0) | keep).all()  # everything outside the mask is zero


def test_parse_and_errors():
    assert parse_nm("2:4") == (2, 4)
    with pytest.raises(ValueError, match="0 < N < M"):
        parse_nm("4:2")
    with pytest.raises(ValueError, match="multiple of M"):
        nm_prune_mask(torch.rand(2, 6), 2, 4)
    with pytest.raises(ValueError, match="sparsity=None"):
        prune(tiny_llama(), "magnitude", 0.3, pattern="2:4")

"""Batched alphas of a model's matrices against one float64 SVD per matrix."""

import pytest
import torch
from torch import nn

from layerwise_core import tiny_llama
from spectral_opt import hill_alpha, module_alphas, spectral_modules, weight_alphas
from spectral_opt.module_alphas import _owners

SIZE = dict(hidden_size=64, intermediate_size=128, vocab_size=96)  # k/v: 32 x 64 (N < 50)


def svd_alpha(weight: torch.Tensor) -> float:
    """The reference path: squared singular values of a float64 SVD, then the median Hill fit."""
    return hill_alpha(torch.linalg.svdvals(weight.detach().double()).pow(2)).item()


@pytest.fixture(scope="module")
def model():
    return tiny_llama(seed=0, **SIZE)


def test_batched_equals_per_matrix_svd(model):
    got = module_alphas(model)
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    expected = {n: svd_alpha(m.weight) for n, m in linears if min(m.weight.shape) >= 50}
    assert list(got) == list(expected)  # named_modules order, k/v projections (N = 32) skipped
    assert not any(k in name for name in got for k in ("k_proj", "v_proj"))
    for name in expected:
        assert got[name] == pytest.approx(expected[name], abs=1e-4), name
    got64 = module_alphas(model, dtype=torch.float64)
    for name in expected:
        assert got64[name] == pytest.approx(expected[name], abs=1e-9), name


def test_shape_groups_and_chunks_do_not_change_results():
    torch.manual_seed(0)
    # wide and tall matrices of transposed shapes share a group; odd sizes
    weights = {
        "a": torch.randn(61, 123),
        "b": torch.randn(123, 61),
        "c": torch.randn(61, 123),
        "d": torch.randn(77, 77),
        "small": torch.randn(40, 300),
    }
    whole = weight_alphas(weights)
    assert list(whole) == ["a", "b", "c", "d"]  # "small" has N = 40 < min_eigs
    # chunking changes only which matrices share a batched eigvalsh call. In float32 that alone
    # moves alpha by ~1e-6 (LAPACK's batched and single paths round differently; 1.1e-6 for "b"
    # here), so the grouping logic is compared in float64, where it must not change anything.
    whole64 = weight_alphas(weights, dtype=torch.float64)
    one_by_one64 = weight_alphas(weights, dtype=torch.float64, chunk_bytes=1)
    for name in whole:
        assert whole[name] == pytest.approx(svd_alpha(weights[name]), abs=1e-4)
        assert one_by_one64[name] == pytest.approx(whole64[name], abs=1e-12)
    assert "small" in weight_alphas(weights, min_eigs=40)


def test_include_exclude_and_module_types(model):
    names = [n for n, _ in spectral_modules(model, include=r"mlp\.", exclude="down")]
    assert names == [
        "model.layers.0.mlp.gate_proj",
        "model.layers.0.mlp.up_proj",
        "model.layers.1.mlp.gate_proj",
        "model.layers.1.mlp.up_proj",
    ]
    with_embed = spectral_modules(model, module_types=(nn.Linear, nn.Embedding))
    assert with_embed[0][0] == "model.embed_tokens"
    alphas = module_alphas(model, include="embed", module_types=(nn.Embedding,))
    assert alphas["model.embed_tokens"] == pytest.approx(
        svd_alpha(model.model.embed_tokens.weight), abs=1e-4
    )


def test_meta_weights_are_refused():
    with pytest.raises(ValueError, match="materialise"):
        weight_alphas({"w": torch.empty(64, 64, device="meta")})


def test_work_split_over_processes_is_balanced():
    shapes = [(2048, 2048)] * 4 + [(5461, 2048)] * 3 + [(32000, 2048)]
    owner = _owners(shapes, 2)
    cost = [m * n * min(m, n) for m, n in shapes]
    load = [sum(c for c, o in zip(cost, owner) if o == r) for r in range(2)]
    assert set(owner) == {0, 1}
    # greedy longest-first is within the largest single job of a perfect split
    assert abs(load[0] - load[1]) <= max(cost)
    assert _owners(shapes, 2) == owner  # deterministic: every process agrees


def test_skipped_matrices_and_why(model):
    got = module_alphas(model)
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    assert sorted(list(got) + [n for n in got.skipped if n in linears]) == sorted(linears)
    for name in ("model.layers.0.self_attn.k_proj", "model.layers.1.self_attn.v_proj"):
        assert got.skipped[name].startswith("min(m, n) = 32 < min_eigs = 50")
    assert got.skipped["model.embed_tokens"].startswith("Embedding is not in module_types=(Linear)")
    assert list(got.skipped) == [n for n, _ in model.named_modules() if n in got.skipped]
    filtered = module_alphas(model, include=r"mlp\.", exclude="down")
    assert filtered.skipped["model.layers.0.self_attn.q_proj"].startswith("matches no include")
    assert filtered.skipped["model.layers.0.mlp.down_proj"].startswith("matches an exclude")


def test_non_finite_fits_are_skipped_with_the_reason():
    weights = {"zero": torch.zeros(64, 64), "random": torch.randn(64, 64)}
    got = weight_alphas(weights)
    assert list(got) == ["random"]
    assert got.skipped["zero"].startswith("the power-law fit is not finite (inf)")


def test_a_model_without_selected_matrices_warns():
    transformers = pytest.importorskip("transformers")

    class GPT2Like(nn.Module):  # GPT-2's projections are Conv1D, not nn.Linear
        def __init__(self):
            super().__init__()
            self.c_attn = transformers.pytorch_utils.Conv1D(192, 64)
            self.c_proj = transformers.pytorch_utils.Conv1D(64, 64)

    with pytest.warns(UserWarning, match="no module got an alpha.*Conv1D is not in module_types"):
        got = module_alphas(GPT2Like())
    assert not got and set(got.skipped) == {"c_attn", "c_proj"}
    conv1d = transformers.pytorch_utils.Conv1D
    assert set(module_alphas(GPT2Like(), module_types=(conv1d,))) == {"c_attn", "c_proj"}

"""OWL and the linear allocations vs hand-derived numbers; OWL inside `prune` vs ratios computed
directly from the dense model's Wanda scores."""

import pytest
import torch

from layerwise_core import find_decoder, tiny_llama
from sparse_ft import layer_sparsities, owl_outlier_ratio, owl_sparsities, prune, wanda_scores


def test_outlier_ratio_by_hand():
    # mean = (95 * 1 + 5 * 100) / 100 = 5.95; threshold 5 * 5.95 = 29.75: five outliers of 100
    scores = torch.cat([torch.ones(95), torch.full((5,), 100.0)])
    assert owl_outlier_ratio(scores) == pytest.approx(5.0)
    # a block of two matrices counts their entries together
    assert owl_outlier_ratio([scores[:50], scores[50:]]) == pytest.approx(5.0)


def test_allocation_equals_formula_by_hand():
    # D = [1, 2, 4]: D~ = (D - 1) / 3 * 0.16 = [0, 0.05333, 0.16], mean 0.07111;
    # keep = D~ - 0.07111 + 0.5; S_l = 1 - keep
    got = owl_sparsities([1.0, 2.0, 4.0], 0.5, owl_lambda=0.08)
    want = [0.5 + 0.071111111 - 0.0, 0.5 + 0.071111111 - 0.053333333, 0.5 + 0.071111111 - 0.16]
    assert got == pytest.approx(want, abs=1e-8)
    assert sum(got) / 3 == pytest.approx(0.5)
    # the official floor: a non-positive sparsity becomes 0.01
    assert owl_sparsities([0.0, 10.0], 0.1, owl_lambda=0.2)[1] == pytest.approx(0.01)
    assert owl_sparsities([3.0, 3.0], 0.5) == [0.5, 0.5]


def test_linear_allocations_by_hand():
    assert layer_sparsities("deeper_sparser", 3, 0.5, epsilon=0.1) == pytest.approx([0.4, 0.5, 0.6])
    assert layer_sparsities("earlier_sparser", 3, 0.5, epsilon=0.1) == pytest.approx(
        [0.6, 0.5, 0.4]
    )
    assert layer_sparsities("uniform", 2, 0.3) == [0.3, 0.3]


def _dense_ratios(model, calib, per_matrix):
    """Wanda scores of the DENSE model, from hooks on one plain forward pass."""
    dmap = find_decoder(model)
    sums, handles = {}, []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and name.startswith("model.layers."):

            def hook(_m, inp, _out, name=name):
                x = inp[0].reshape(-1, inp[0].shape[-1]).double()
                sums[name] = sums.get(name, 0) + (x**2).sum(0)

            handles.append(module.register_forward_hook(hook))
    with torch.no_grad():
        model(input_ids=calib)
    for h in handles:
        h.remove()
    ratios = []
    for i in range(len(dmap)):
        names = [n for n in sums if n.startswith(f"model.layers.{i}.")]
        scores = [
            wanda_scores(model.get_submodule(n).weight, (sums[n] / calib.shape[0]).float())
            for n in names
        ]
        ratios += (
            [owl_outlier_ratio(s, 3.0) for s in scores]
            if per_matrix
            else [owl_outlier_ratio(scores, 3.0)]
        )
    return ratios


@pytest.mark.parametrize("granularity", ["block", "matrix"])
def test_prune_with_owl_uses_dense_ratios(granularity):
    calib = torch.randint(0, 128, (4, 24), generator=torch.Generator().manual_seed(0))
    model = tiny_llama(seed=3, num_hidden_layers=3)
    ratios = _dense_ratios(model, calib, granularity == "matrix")
    result = prune(
        model,
        "wanda",
        0.5,
        allocation="owl",
        calibration=calib,
        owl_granularity=granularity,
        owl_lambda=0.2,
        owl_threshold=3.0,
    )
    want = owl_sparsities(ratios, 0.5, owl_lambda=0.2)
    got = list(result.targets.values())
    if granularity == "block":
        got = result.layer_sparsity
        assert list(result.outlier_ratios.values()) == pytest.approx(ratios, rel=1e-5)
    assert got == pytest.approx(want, rel=1e-5)
    # every row of every matrix lost int(n_in * target) weights
    for name, keep in result.masks.items():
        n_in = keep.shape[1]
        zeros = (~keep).sum(1)
        assert (zeros == int(n_in * result.targets[name])).all(), name


def test_lamda_is_a_deprecated_alias_of_owl_lambda():
    ratios = [1.0, 2.0, 4.0]
    with pytest.warns(FutureWarning, match="owl_sparsities: the argument `lamda`.*`owl_lambda`"):
        old = owl_sparsities(ratios, 0.5, lamda=0.2)
    assert old == owl_sparsities(ratios, 0.5, owl_lambda=0.2) != owl_sparsities(ratios, 0.5)
    with pytest.warns(FutureWarning, match="layer_sparsities: the argument `lamda`"):
        old = layer_sparsities("owl", 3, 0.5, outlier_ratios=ratios, lamda=0.2)
    assert old == layer_sparsities("owl", 3, 0.5, outlier_ratios=ratios, owl_lambda=0.2)

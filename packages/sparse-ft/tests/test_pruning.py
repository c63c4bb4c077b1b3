"""`prune`: sequential calibration vs an independent loop over full-model forwards, magnitude rules,
SparseGPT's true-sequential groups, argument errors."""

import pytest
import torch

from layerwise_core import tiny_llama, tiny_qwen2
from sparse_ft import magnitude_prune_mask, prune, wanda_prune_mask, wanda_scores


def _sequential_wanda_by_full_forwards(model, calib, sparsity):
    """Block i is pruned with statistics of a full forward of the model whose blocks < i are
    already pruned (HF's own forward: no captured block inputs, no replayed kwargs)."""
    layers = model.model.layers
    for i in range(len(layers)):
        sums, handles = {}, []
        for name, module in layers[i].named_modules():
            if isinstance(module, torch.nn.Linear):

                def hook(_m, inp, _out, name=name, sums=sums):
                    x = inp[0].reshape(-1, inp[0].shape[-1]).double()
                    sums[name] = sums.get(name, 0) + (x**2).sum(0)

                handles.append(module.register_forward_hook(hook))
        with torch.no_grad():
            model(input_ids=calib)
        for h in handles:
            h.remove()
        for name, norm_sq in sums.items():
            weight = layers[i].get_submodule(name).weight
            scores = wanda_scores(weight, (norm_sq / calib.shape[0]).float())
            weight.data[wanda_prune_mask(scores, sparsity)] = 0


@pytest.mark.parametrize("build", [tiny_llama, tiny_qwen2])
def test_wanda_is_sequential_like_the_reference(build):
    calib = torch.randint(0, 128, (6, 20), generator=torch.Generator().manual_seed(1))
    ours, ref = build(seed=4, num_hidden_layers=3), build(seed=4, num_hidden_layers=3)
    result = prune(ours, "wanda", 0.5, calibration=calib, batch_size=4)
    _sequential_wanda_by_full_forwards(ref, calib, 0.5)
    for (name, p), (_, q) in zip(ours.named_parameters(), ref.named_parameters()):
        assert torch.equal(p, q), name
    assert result.overall_sparsity == pytest.approx(0.5)
    # the second block's masks depend on the first block's pruning: a one-shot (non-sequential)
    # pass over the dense model would differ
    oneshot = build(seed=4, num_hidden_layers=3)
    dense = build(seed=4, num_hidden_layers=3)
    sums = {}

    def hook(_m, inp, _out):
        x = inp[0].reshape(-1, inp[0].shape[-1]).double()
        sums["x"] = (x**2).sum(0)

    h = dense.model.layers[2].mlp.down_proj.register_forward_hook(hook)
    with torch.no_grad():
        dense(input_ids=calib)
    h.remove()
    w = oneshot.model.layers[2].mlp.down_proj.weight
    mask = wanda_prune_mask(wanda_scores(w, (sums["x"] / 6).float()), 0.5)
    assert not torch.equal(~mask, result.masks["model.layers.2.mlp.down_proj"])


@pytest.mark.parametrize("quirks", [False, True])
def test_magnitude_is_per_matrix(quirks):
    model = tiny_llama(seed=5)
    before = {
        n: m.weight.detach().clone()
        for n, m in model.named_modules()
        if "layers" in n and isinstance(m, torch.nn.Linear)
    }
    result = prune(model, "magnitude", 0.3, reference_quirks=quirks)
    for name, weight in before.items():
        count = int(weight.numel() * 0.3) + quirks  # the official `<=` rule zeroes one more
        assert int((~result.masks[name]).sum()) == count
        want = weight.masked_fill(magnitude_prune_mask(weight, 0.3, reference_quirks=quirks), 0)
        assert torch.equal(model.get_submodule(name).weight, want)


def test_sparsegpt_true_sequential_groups_and_sparsity():
    calib = torch.randint(0, 128, (4, 16), generator=torch.Generator().manual_seed(2))
    model = tiny_llama(seed=6)
    from sparse_ft.calibration import block_linears, calibration_batches, capture_block_inputs
    from sparse_ft.pruning import _sequential_groups

    block = model.model.layers[0]
    inputs = capture_block_inputs(model, block, calibration_batches(calib, 4))
    groups = _sequential_groups(block, block_linears(block), inputs)
    assert groups == [
        ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
        ["self_attn.o_proj"],
        ["mlp.gate_proj", "mlp.up_proj"],
        ["mlp.down_proj"],
    ]
    result = prune(model, "sparsegpt", 0.5, calibration=calib, true_sequential=True, blocksize=16)
    for name, keep in result.masks.items():
        assert keep.float().mean().item() == pytest.approx(0.5)
        assert (model.get_submodule(name).weight[~keep] == 0).all()


def test_argument_errors_name_the_fix():
    model = tiny_llama()
    with pytest.raises(ValueError, match="calibration"):
        prune(model, "wanda", 0.5)
    with pytest.raises(ValueError, match="method"):
        prune(model, "movement", 0.5)
    with pytest.raises(ValueError, match="pattern=None"):
        prune(
            model,
            "wanda",
            None,
            pattern="2:4",
            allocation="owl",
            calibration=torch.zeros(1, 4, dtype=torch.long),
        )

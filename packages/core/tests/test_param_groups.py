import re

import torch

from layerwise_core import (
    decay_param_groups,
    layer_param_groups,
    module_param_groups,
    pattern_param_groups,
    tiny_llama,
)


def names(groups):
    return [n for g in groups for n in g["param_names"]]


def test_decay_only_on_matrices_and_groups_cover_everything_once():
    model = tiny_llama()
    model.model.layers[0].mlp.up_proj.weight.requires_grad_(False)
    groups = decay_param_groups(model, 0.1)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert sorted(names(groups)) == sorted(trainable)
    for group in groups:
        for name, p in zip(group["param_names"], group["params"]):
            assert (p.dim() >= 2) == (group["weight_decay"] == 0.1), name
    torch.optim.AdamW(groups, lr=1e-3)  # torch accepts the groups as they are


def test_pattern_module_and_layer_groups():
    model = tiny_llama(num_hidden_layers=3)
    all_names = sorted(n for n, _ in model.named_parameters())
    pat = pattern_param_groups(
        model, {r"self_attn|mlp": {"density": 0.5}}, default={"density": 1.0}
    )
    assert sorted(names(pat)) == all_names
    assert all(
        bool(re.search("self_attn|mlp", n)) == (g["density"] == 0.5)
        for g in pat
        for n in g["param_names"]
    )
    mod = module_param_groups(model)
    assert sorted(names(mod)) == all_names
    linear = [g for g in mod if g["module_name"]]
    assert len(linear) == 3 * 7 + 1  # q k v o gate up down per layer, plus lm_head
    lay = layer_param_groups(model)
    assert sorted(names(lay)) == all_names
    assert [g["layer_index"] for g in lay] == [0, 1, 2, None]
    assert all(n.startswith("model.layers.1.") for n in lay[1]["param_names"])

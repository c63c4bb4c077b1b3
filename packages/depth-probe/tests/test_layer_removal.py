import copy

import pytest
import torch

from depth_probe import remove_layers, skip_layers
from layerwise_core import tiny_bidirectional, tiny_llama, tiny_mixtral, tiny_qwen2

BUILDERS = {
    "llama": tiny_llama,
    "qwen2": tiny_qwen2,
    "mixtral": tiny_mixtral,
    "bidirectional": tiny_bidirectional,
}


def _fresh_smaller(model, removed):
    """A model built from scratch with fewer layers and the kept layers' weights copied in."""
    num = model.config.num_hidden_layers
    keep = [i for i in range(num) if i not in removed]
    config = copy.deepcopy(model.config)
    config.num_hidden_layers = len(keep)
    if getattr(config, "layer_types", None) is not None:
        config.layer_types = [config.layer_types[i] for i in keep]
    small = type(model)(config).eval()
    state = {}
    for key, value in model.state_dict().items():
        parts = key.split(".")
        if parts[:2] == ["model", "layers"]:
            old = int(parts[2])
            if old not in keep:
                continue
            parts[2] = str(keep.index(old))
        state[".".join(parts)] = value
    small.load_state_dict(state, strict=True)
    return small


@pytest.mark.parametrize("family", list(BUILDERS))
def test_logits_equal_a_freshly_built_smaller_model(family):
    model = BUILDERS[family](num_hidden_layers=5)
    ids = torch.randint(0, 120, (2, 7))
    mask = torch.tensor([[1] * 7, [1] * 5 + [0] * 2])
    expected_model = _fresh_smaller(model, [1, 3])
    remove_layers(model, [3, 1])
    assert len(model.model.layers) == 3
    assert model.config.num_hidden_layers == 3
    assert [b.self_attn.layer_idx for b in model.model.layers] == [0, 1, 2]
    with torch.no_grad():
        got = model(ids, attention_mask=mask).logits
        expected = expected_model(ids, attention_mask=mask).logits
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)


def test_per_layer_config_lists_follow_the_kept_layers():
    model = tiny_qwen2(num_hidden_layers=4)
    model.config.layer_types = [
        "full_attention",
        "sliding_attention",
        "full_attention",
        "sliding_attention",
    ]
    model.config.mlp_only_layers = [0, 2, 3]
    remove_layers(model, [2])
    assert model.config.layer_types == ["full_attention", "sliding_attention", "sliding_attention"]
    assert model.config.mlp_only_layers == [0, 2]


def _greedy_without_cache(model, ids, steps):
    out = ids
    with torch.no_grad():
        for _ in range(steps):
            logits = model(out, use_cache=False).logits
            out = torch.cat([out, logits[:, -1:].argmax(-1)], 1)
    return out


def test_generation_with_kv_cache_after_removal_matches_recomputation():
    model = tiny_llama(num_hidden_layers=5)
    remove_layers(model, [0, 2])  # removing layer 0 breaks a cache that is not renumbered
    ids = torch.randint(0, 128, (2, 4))
    with torch.no_grad():
        cached = model.generate(ids, max_new_tokens=6, do_sample=False, min_new_tokens=6)
    torch.testing.assert_close(cached, _greedy_without_cache(model, ids, 6))


def test_save_and_reload_of_a_pruned_model(tmp_path):
    model = tiny_qwen2(num_hidden_layers=4)
    ids = torch.randint(0, 128, (1, 6))
    remove_layers(model, [1])
    model.save_pretrained(tmp_path)
    reloaded = type(model).from_pretrained(tmp_path).eval()
    assert reloaded.config.num_hidden_layers == 3
    assert len(reloaded.config.layer_types) == 3
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, model(ids).logits)


def test_skip_layers_restores_the_model_exactly():
    model = tiny_qwen2(num_hidden_layers=4)
    ids = torch.randint(0, 128, (2, 5))
    blocks = list(model.model.layers)
    config_before = model.config.to_dict()
    state_before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        logits_before = model(ids).logits
    with skip_layers(model, [0, 2]) as pruned:
        assert pruned is model
        assert len(model.model.layers) == 2
        assert model.config.num_hidden_layers == 2
        assert [b.self_attn.layer_idx for b in model.model.layers] == [0, 1]
    assert list(model.model.layers) == blocks  # the same objects, in order
    assert [b.self_attn.layer_idx for b in blocks] == [0, 1, 2, 3]
    assert model.config.to_dict() == config_before
    state_after = model.state_dict()
    assert state_after.keys() == state_before.keys()
    for key, value in state_before.items():
        assert torch.equal(state_after[key], value)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, logits_before)


def test_skip_layers_restores_after_an_exception():
    model = tiny_llama(num_hidden_layers=3)
    blocks = list(model.model.layers)
    with pytest.raises(RuntimeError), skip_layers(model, [1]):
        raise RuntimeError("scorer failed")
    assert list(model.model.layers) == blocks
    assert model.config.num_hidden_layers == 3


def test_skipped_blocks_act_as_the_identity():
    model = tiny_llama(num_hidden_layers=4)
    ids = torch.randint(0, 128, (2, 6))

    def identity(module, args, kwargs, output):
        return args[0] if args else kwargs["hidden_states"]

    handles = [
        model.model.layers[i].register_forward_hook(identity, with_kwargs=True) for i in (1, 2)
    ]
    with torch.no_grad():
        expected = model(ids, use_cache=False).logits
    for handle in handles:
        handle.remove()
    with torch.no_grad(), skip_layers(model, [1, 2]):
        got = model(ids).logits
    torch.testing.assert_close(got, expected)


def test_errors_name_the_problem():
    model = tiny_llama(num_hidden_layers=2)
    with pytest.raises(ValueError, match="out of range"):
        remove_layers(model, [2])
    with pytest.raises(ValueError, match="cannot remove all"):
        remove_layers(model, [0, 1])
    assert len(model.model.layers) == 2


@pytest.mark.parametrize(
    ("indices", "message"),
    [
        (
            [1.7],
            "layer indices must be integers, got 1.7 (float); pass whole block numbers such as "
            "[1, 2]",
        ),
        ([True], "layer indices must be integers, got True (bool)"),
        ([torch.tensor(1.0)], "layer indices must be integers, got tensor(1.)"),
        ([torch.tensor(True)], "layer indices must be integers, got tensor(True)"),
        ([1, 1], "layer indices [1] are given twice; list each block once"),
        ([-1], "layer indices [-1] out of range for 3 blocks; valid indices are 0..2"),
        ([3], "layer indices [3] out of range for 3 blocks; valid indices are 0..2"),
        (1, "indices must be a list of block numbers, got 1; pass e.g. [3]"),
    ],
)
def test_bad_indices_are_refused_and_the_model_is_unchanged(indices, message):
    # before: int(1.7) == 1 removed block 1; True removed block 1; duplicates were merged silently
    model = tiny_llama(num_hidden_layers=3)
    blocks = list(model.model.layers)
    for call in (remove_layers, lambda m, i: skip_layers(m, i).__enter__()):
        with pytest.raises(ValueError) as info:
            call(model, indices)
        assert message in str(info.value)
        assert list(model.model.layers) == blocks and model.config.num_hidden_layers == 3


def test_integer_types_of_numpy_and_torch_are_block_numbers():
    import numpy as np

    for index in (np.int64(1), torch.tensor(1), 1):
        model = tiny_llama(num_hidden_layers=3)
        kept = [model.model.layers[0], model.model.layers[2]]
        remove_layers(model, [index])
        assert list(model.model.layers) == kept

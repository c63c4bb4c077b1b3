"""save_pretrained / ln_scaling.from_pretrained restores each scheme exactly (logits equal)."""

import pytest
import torch

from layerwise_core import tiny_llama, tiny_mixtral
from ln_scaling import apply_norm_scheme, from_pretrained, is_layernorm_scaled, norm_scheme


@pytest.mark.parametrize("scheme", ["pre_ln", "lns", "mix_ln", "mix_ln+lns"])
@pytest.mark.parametrize("factory", [tiny_llama, tiny_mixtral])
def test_round_trip(tmp_path, scheme, factory):
    model = apply_norm_scheme(factory(num_hidden_layers=4), scheme, post_ln_fraction=0.5)
    with torch.no_grad():  # train-like perturbation of the norms, so that loading them matters
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(1.0, 0.1)
    model.save_pretrained(tmp_path)
    again = from_pretrained(tmp_path).eval()
    assert norm_scheme(again.config) == scheme
    assert is_layernorm_scaled(again) == scheme.endswith("lns")
    ids = torch.randint(0, 128, (2, 6))
    with torch.no_grad():
        torch.testing.assert_close(again(ids).logits, model(ids).logits, atol=0, rtol=0)


def test_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown norm scheme"):
        apply_norm_scheme(tiny_llama(), "post_ln")
    model = apply_norm_scheme(tiny_llama(num_hidden_layers=4), "mix_ln")
    model.save_pretrained(tmp_path)
    # drop the extra norms from the checkpoint: loading must refuse, not silently use ones
    from safetensors.torch import load_file, save_file

    state = load_file(tmp_path / "model.safetensors")
    save_file(
        {k: v for k, v in state.items() if "post_feedforward" not in k},
        tmp_path / "model.safetensors",
        metadata={"format": "pt"},
    )
    with pytest.raises(ValueError, match="lacks the Mix-LN norms"):
        from_pretrained(tmp_path)

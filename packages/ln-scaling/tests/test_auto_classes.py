"""An LNS / Mix-LN checkpoint and the Auto classes: saved as model type "ln_scaling", it reloads
with its scheme through `AutoModelForCausalLM` once ln_scaling is imported, is refused (never
loaded as a plain model) without it, and the same holds in a fresh interpreter, where the logits
must equal those of the model that was saved, bit for bit."""

import json

import pytest
import torch

from layerwise_core import tiny_bidirectional, tiny_llama, tiny_qwen2
from layerwise_core.testing import run_python
from ln_scaling import apply_norm_scheme, is_layernorm_scaled, norm_scheme, remove_layernorm_scaling

SCHEMES = ["lns", "mix_ln", "mix_ln+lns"]


def _trained_like(model, scheme):
    model = apply_norm_scheme(model, scheme, post_ln_fraction=0.5)
    with torch.no_grad():  # perturbed norms, so that loading each of them matters
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(1.0, 0.1, generator=torch.Generator().manual_seed(len(name)))
    return model


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("factory", [tiny_llama, tiny_qwen2])
def test_saved_as_ln_scaling_and_restored_by_the_auto_classes(tmp_path, scheme, factory):
    from transformers import AutoConfig, AutoModelForCausalLM

    model = _trained_like(factory(num_hidden_layers=4), scheme)
    family = model.config.model_type
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert (saved["model_type"], saved["base_model_type"]) == ("ln_scaling", family)
    assert model.config.model_type == family  # in memory the config is still the family's

    config = AutoConfig.from_pretrained(tmp_path)
    assert (config.model_type, norm_scheme(config)) == (family, scheme)
    again = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert type(again) is type(model)  # the family's class, patched, as after apply_*
    assert is_layernorm_scaled(again) == scheme.endswith("lns")
    ids = torch.randint(0, 128, (2, 6), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(again(ids).logits, model(ids).logits)


def test_without_a_scheme_the_config_is_saved_as_the_family_again(tmp_path):
    model = apply_norm_scheme(tiny_llama(), "lns")
    remove_layernorm_scaling(model)
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "llama" and "base_model_type" not in saved


def test_the_scheme_config_pickles_and_deep_copies_as_itself():
    import copy
    import pickle

    config = apply_norm_scheme(tiny_llama(num_hidden_layers=4), "mix_ln+lns", 0.5).config
    for again in (pickle.loads(pickle.dumps(config)), copy.deepcopy(config)):
        assert type(again) is type(config) and again == config
        assert again.to_dict()["model_type"] == "ln_scaling" and norm_scheme(again) == "mix_ln+lns"


def test_a_masked_diffusion_model_with_lns_loads_as_a_masked_lm(tmp_path):
    from transformers import AutoModelForMaskedLM

    model = _trained_like(tiny_bidirectional(num_hidden_layers=4), "lns")
    model.save_pretrained(tmp_path)
    again = AutoModelForMaskedLM.from_pretrained(tmp_path)
    assert type(again) is type(model) and again.config.mask_token_id == 127
    ids = torch.randint(0, 127, (2, 6), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(again(ids).logits, model(ids).logits)


# A fresh interpreter per saved folder set: first the Auto classes of plain transformers (refused,
# the message names model type `ln_scaling`), then `import ln_scaling` and both loaders.
_FRESH = """
import json, sys
from pathlib import Path
import torch
from transformers import AutoModelForCausalLM

root = Path(sys.argv[1])
ids = torch.load(root / "ids.pt")
folders = sorted(p for p in root.iterdir() if p.is_dir())
for folder in folders:
    if json.loads((folder / "config.json").read_text())["model_type"] != "ln_scaling":
        continue  # the pre-release checkpoint: plain transformers loads it without its scheme
    try:
        AutoModelForCausalLM.from_pretrained(folder)
        raise SystemExit(f"{folder.name}: loaded without ln_scaling")
    except ValueError as err:
        assert "model type `ln_scaling`" in str(err), err
assert "ln_scaling" not in sys.modules

import ln_scaling

for folder in folders:
    expected = torch.load(folder / "expected.pt")
    with torch.no_grad():
        ours = ln_scaling.from_pretrained(folder)
        assert torch.equal(ours(ids).logits, expected), f"{folder.name}: ln_scaling.from_pretrained"
        if folder.name != "pre-release":
            auto = AutoModelForCausalLM.from_pretrained(folder)
            assert torch.equal(auto(ids).logits, expected), f"{folder.name}: Auto"
    print(folder.name, ln_scaling.norm_scheme(ours.config))
"""


def test_every_scheme_loads_in_a_fresh_interpreter(tmp_path):
    ids = torch.randint(0, 128, (2, 6), generator=torch.Generator().manual_seed(0))
    torch.save(ids, tmp_path / "ids.pt")
    for scheme in SCHEMES:
        model = _trained_like(tiny_llama(num_hidden_layers=4), scheme)
        model.save_pretrained(tmp_path / scheme)
        with torch.no_grad():
            torch.save(model(ids).logits, tmp_path / scheme / "expected.pt")
    # what pre-release ln-scaling wrote: the same weights, the scheme keys in the stock config
    (tmp_path / "pre-release").mkdir()
    for file in ("model.safetensors", "expected.pt"):
        (tmp_path / "pre-release" / file).write_bytes((tmp_path / "mix_ln+lns" / file).read_bytes())
    config = json.loads((tmp_path / "mix_ln+lns" / "config.json").read_text())
    config["model_type"] = config.pop("base_model_type")
    (tmp_path / "pre-release" / "config.json").write_text(json.dumps(config))

    lines = run_python(_FRESH, tmp_path).stdout.split("\n")
    assert [line for line in lines if line] == [
        "lns lns",
        "mix_ln mix_ln",
        "mix_ln+lns mix_ln+lns",
        "pre-release mix_ln+lns",
    ]

"""Saved models and the Auto classes: the registry names the package to install, checkpoints of
pre-release ln-scaling are refused with the upgrade, and a masked-diffusion model saved here reloads in a
fresh interpreter with its bidirectional attention (logits equal bit for bit)."""

import json
import sys

import pytest
import torch

from layerwise_core import (
    MODEL_PACKAGES,
    UsageError,
    auto_model_class,
    import_model_packages,
    load_pretrained,
    tiny_bidirectional,
    tiny_llama,
    tiny_shifted_bidirectional,
)
from layerwise_core.testing import run_python


@pytest.mark.parametrize(
    "config",
    [{"model_type": "coe"}, {"model_type": "ln_scaling", "base_model_type": "coe"}],
    ids=["type", "base_type"],
)
def test_a_missing_package_is_named_with_its_install(monkeypatch, config):
    monkeypatch.setitem(sys.modules, "coe_moe", None)  # `import coe_moe` now fails
    with pytest.raises(ImportError) as err:
        import_model_packages(config)
    assert "`pip install coe-moe` and `import coe_moe` before loading it" in str(err.value)
    assert "Chain-of-Experts" in str(err.value) and "'coe'" in str(err.value)


def test_stock_and_unknown_types_import_nothing():
    assert import_model_packages({"model_type": "llama"}) == {"model_type": "llama"}
    assert "llama" not in MODEL_PACKAGES


def test_a_pre_release_ln_scaling_checkpoint_is_refused_with_the_upgrade(tmp_path):
    tiny_llama().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "llama"
    config["layernorm_scaling"] = True  # what pre-release ln-scaling wrote: a stock type + the key
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(UsageError, match=r"ln_scaling.from_pretrained\(path\).save_pretrained"):
        load_pretrained(tmp_path)


def test_the_auto_class_of_a_config():
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    assert auto_model_class(tiny_llama().config) is AutoModelForCausalLM
    assert auto_model_class(tiny_bidirectional().config) is AutoModelForMaskedLM


# Run in a fresh interpreter: nothing of layerwise_core is imported before the checks that need it.
_FRESH = """
import sys
import torch
from transformers import AutoModelForMaskedLM

folder, ids = sys.argv[1], torch.load(sys.argv[2])
expected = torch.load(sys.argv[3])
try:  # plain transformers: refused, never loaded as something else
    AutoModelForMaskedLM.from_pretrained(folder)
    raise SystemExit("loaded without its registration")
except ValueError as err:
    assert "model type `layerwise_bidirectional_llama`" in str(err), err
assert "layerwise_core.bidirectional_llama" not in sys.modules

import layerwise_core

model = layerwise_core.load_pretrained(folder)  # imports the package the model type names
assert type(model).__name__ == "BidirectionalLlamaForMaskedDiffusion"
with torch.no_grad():
    assert torch.equal(model(ids).logits, expected), "load_pretrained"
    assert model.config.logit_shift == 1
    again = AutoModelForMaskedLM.from_pretrained(folder).eval()  # registered from now on
    assert torch.equal(again(ids).logits, expected), "AutoModelForMaskedLM"
print("ok")
"""


def test_a_masked_diffusion_model_loads_in_a_fresh_interpreter(tmp_path):
    model = tiny_shifted_bidirectional(num_hidden_layers=3)  # Dream-like: logit_shift=1
    ids = torch.randint(0, 127, (2, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(ids).logits
        changed = ids.clone()
        changed[:, -1] = (changed[:, -1] + 1) % 127
        # bidirectional: the first position sees the last token (a causal reload would not)
        assert not torch.equal(model(changed).logits[:, 0], expected[:, 0])
    model.save_pretrained(tmp_path / "model")
    torch.save(ids, tmp_path / "ids.pt")
    torch.save(expected, tmp_path / "expected.pt")
    result = run_python(_FRESH, tmp_path / "model", tmp_path / "ids.pt", tmp_path / "expected.pt")
    assert result.stdout.strip().endswith("ok")

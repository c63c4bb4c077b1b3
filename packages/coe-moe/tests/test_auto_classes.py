"""A saved Chain-of-Experts model in a fresh interpreter: plain transformers refuses model type
`coe` (never loads something else), `layerwise_core.load_pretrained` imports coe_moe itself, and
after `import coe_moe` `AutoModelForCausalLM` gives the saved model (logits equal bit for bit);
`import coe_moe` leaves transformers' modeling code until a model is wanted."""

import torch

from coe_moe import CoEConfig, CoEForCausalLM
from layerwise_core.testing import run_python

_FRESH = """
import sys
import torch
from transformers import AutoModelForCausalLM

folder, ids, expected = sys.argv[1], torch.load(sys.argv[2]), torch.load(sys.argv[3])
try:
    AutoModelForCausalLM.from_pretrained(folder)
    raise SystemExit("loaded without coe_moe")
except ValueError as err:
    assert "model type `coe`" in str(err), err
assert "coe_moe" not in sys.modules

import layerwise_core

with torch.no_grad():
    model = layerwise_core.load_pretrained(folder)  # imports coe_moe: the registry names it
    assert type(model).__name__ == "CoEForCausalLM"
    assert torch.equal(model(ids).logits, expected), "load_pretrained"
    import coe_moe  # noqa: F401 - what a user writes before the Auto classes

    again = AutoModelForCausalLM.from_pretrained(folder)
    assert torch.equal(again(ids).logits, expected), "AutoModelForCausalLM"
print("ok")
"""


def test_a_saved_coe_model_loads_in_a_fresh_interpreter(tmp_path):
    config = CoEConfig(
        vocab_size=96,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        moe_intermediate_size=16,
        num_experts=4,
        top_k=2,
        num_iterations=2,
        expert_backend="torch",
    )
    torch.manual_seed(0)
    model = CoEForCausalLM(config).eval()
    ids = torch.randint(0, 96, (2, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.save(model(ids).logits, tmp_path / "expected.pt")
    torch.save(ids, tmp_path / "ids.pt")
    model.save_pretrained(tmp_path / "model")
    result = run_python(_FRESH, tmp_path / "model", tmp_path / "ids.pt", tmp_path / "expected.pt")
    assert result.stdout.strip().endswith("ok")


_LIGHT = """
import pickle
import sys

import coe_moe

heavy = [m for m in ("transformers.modeling_utils", "coe_moe.modeling_coe") if m in sys.modules]
assert not heavy, f"import coe_moe imported {heavy}"
from transformers import AutoConfig, AutoModelForCausalLM

with open(sys.argv[1], "rb") as handle:
    config = pickle.load(handle)  # made in another process: unpickled, not constructed, here
model = AutoModelForCausalLM.from_config(config)
assert type(model) is coe_moe.CoEForCausalLM, type(model)
assert isinstance(AutoConfig.for_model("coe"), coe_moe.CoEConfig)
print("ok")
"""


def test_import_leaves_the_modeling_code_until_a_model_is_wanted(tmp_path):
    """`import coe_moe` registers model type `coe` but imports no transformers modeling code (it
    takes seconds); the model classes come with the first CoEConfig, also an unpickled one."""
    import pickle

    config = CoEConfig(
        vocab_size=32, hidden_size=16, num_hidden_layers=1, num_attention_heads=4,
        moe_intermediate_size=8, num_experts=4, top_k=2,
    )  # fmt: skip
    (tmp_path / "config.pkl").write_bytes(pickle.dumps(config))
    result = run_python(_LIGHT, tmp_path / "config.pkl")
    assert result.stdout.strip().endswith("ok")

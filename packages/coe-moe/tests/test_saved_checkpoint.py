"""A checkpoint written by an earlier coe-moe (tests/data/checkpoint_f6ee4fc, before the modeling
code was rewritten on transformers' Mixtral classes) loads with the same keys and gives the same
numbers bit for bit: eval logits, training loss and aux loss, router logits and hidden states;
the same seed gives the same initial weights."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from coe_moe import CoEConfig, CoEForCausalLM

FIXTURE = Path(__file__).parent / "data" / "checkpoint_f6ee4fc"


@pytest.fixture
def one_thread():
    # the fixture was computed with one torch thread; a second one changes summation order
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_checkpoint_of_the_earlier_code_gives_the_same_numbers(one_thread):
    expected = load_file(FIXTURE / "expected.safetensors")
    model, info = AutoModelForCausalLM.from_pretrained(FIXTURE / "model", output_loading_info=True)
    assert isinstance(model, CoEForCausalLM)
    assert all(not keys for keys in info.values()), info  # no missing / unexpected / mismatched
    ids = expected["ids"]
    with torch.no_grad():
        assert torch.equal(model.eval()(ids).logits, expected["logits"])
        hidden = model(ids, output_hidden_states=True).hidden_states
        train = model.train()(ids, labels=ids)
    assert len(hidden) == 3 and len(train.router_logits) == 4  # 2 layers x 2 iterations
    for i, h in enumerate(hidden):
        assert torch.equal(h, expected[f"hidden_states.{i}"]), i
    for i, logits in enumerate(train.router_logits):
        assert torch.equal(logits, expected[f"router_logits.{i}"]), i
    assert torch.equal(train.aux_loss, expected["train_aux_loss"])
    assert torch.equal(train.loss, expected["train_loss"])


def test_same_seed_same_initial_weights_as_the_earlier_code():
    # the fixture's weights are CoEForCausalLM(config) right after torch.manual_seed(0)
    saved = load_file(FIXTURE / "model" / "model.safetensors")
    config = CoEConfig.from_pretrained(FIXTURE / "model")
    torch.manual_seed(0)
    state = CoEForCausalLM(config).state_dict()
    assert sorted(state) == sorted(saved)
    for key, value in saved.items():
        assert torch.equal(state[key], value), key

"""Meta-device construction and materialisation (`build_model`, `init_model_weights`): initial
weights that are a function of (seed, parameter name), the same whole or as FSDP2 shards, and a
sharded build that never holds the whole model in a process.

The 1-process checks run here; the 2-process ones (gloo on CPU) in ONE torchrun launch of
`_meta_init_worker.py`, as in test_fsdp.py.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from layerwise.models import ModelConfig, build_model, init_model_weights
from layerwise.models.build import _construct
from layerwise_core import init_normal_
from layerwise_core.testing import run_torchrun

STD = 0.05  # not the default 0.02: the std of every N(0, std) tensor follows model.init_std
COE = {"name": "coe", "num_experts": 4, "top_k": 2}
# model.norm=mix_ln with 1 of llama-tiny's 2 blocks Post-LN (the default 0.25 makes none)
MIX_LN = {"scheme": "mix_ln", "post_ln_fraction": 0.5}
KINDS = {
    "dense": ({}, "ntp"),
    "lns": ({"norm": "lns"}, "ntp"),
    "mix_ln": ({"norm": MIX_LN}, "ntp"),
    "coe": ({"mlp": COE}, "ntp"),
    "mdm": ({"norm": "lns"}, "mdm"),
    # 3 experts and a vocabulary of 101: rows that do not split evenly over 2 processes
    "moe_int4": ({"mlp": {"name": "moe", "num_experts": 3, "top_k": 2}, "quant": "int4"}, "ntp"),
    "tied": ({"overrides": {"tie_word_embeddings": True}}, "ntp"),
}
# ~48M parameters (194 MB in fp32), none larger than 2.1M: a process holding its half of the
# shards and one full parameter stays far below the whole model
MEMORY_MODEL = {"preset": "llama-60m", "overrides": {"num_hidden_layers": 14}}
MEMORY_VOCAB = 4096


def _config(kind: str) -> tuple[ModelConfig, str]:
    fields, objective = KINDS[kind]
    return ModelConfig.model_validate({"init_std": STD, **fields}), objective


def test_initial_weights_are_a_function_of_seed_and_parameter_name():
    cfg, _ = _config("coe")
    rng = torch.get_rng_state()
    a = build_model(cfg, 100, 64, seed=1)
    assert torch.equal(torch.get_rng_state(), rng)  # the global RNG is not drawn from
    torch.manual_seed(123)  # another global RNG state: the same weights
    b = build_model(cfg, 100, 64, seed=1)
    c = build_model(cfg, 100, 64, seed=2)
    for (name, x), (_, y), (_, z) in zip(
        a.state_dict().items(), b.state_dict().items(), c.state_dict().items(), strict=True
    ):
        assert torch.equal(x, y), name
        if x.unique().numel() > 1:  # drawn: another seed draws other values
            assert not torch.equal(x, z), name
    # two parameters of one shape draw from their own generators
    attention = a.model.layers[0].self_attn
    assert not torch.equal(attention.q_proj.weight, attention.k_proj.weight)
    # the model materialised on meta first (as FSDP2 does, unsharded here) is the same
    on_meta = build_model(cfg, 100, 64, seed=1, device="meta")
    assert all(p.device.type == "meta" for p in on_meta.parameters())
    init_model_weights(on_meta, STD, 1)
    for (name, x), (_, y) in zip(on_meta.state_dict().items(), a.state_dict().items(), strict=True):
        assert torch.equal(x, y), name


@pytest.mark.parametrize("kind", list(KINDS))
def test_init_keeps_the_papers_tensors_and_distribution(kind):
    """Against the initialisation of before (the Hugging Face constructors, then
    `init_normal_`): every tensor that started constant (norms at ones, Mix-LN's new Post-LN
    norms, biases) starts at the same constant, every drawn one is N(0, init_std) (mean and std
    within 5 standard errors), buffers (RoPE) are equal bit for bit."""
    cfg, objective = _config(kind)
    torch.manual_seed(0)
    before = init_normal_(_construct(cfg, 101, 64, None, objective, None), STD)
    after = build_model(cfg, 101, 64, objective=objective, seed=0)
    old, new = dict(before.named_parameters()), dict(after.named_parameters())
    assert old.keys() == new.keys()
    drawn = 0
    for name, value in new.items():
        reference = old[name]
        assert value.shape == reference.shape and value.dtype == reference.dtype, name
        if reference.unique().numel() == 1:
            assert torch.equal(value, reference), name
            continue
        drawn += 1
        n = value.numel()
        assert abs(value.mean().item()) < 5 * STD / math.sqrt(n), name
        assert abs(value.std().item() / STD - 1) < 5 / math.sqrt(2 * n), name
    assert drawn >= 7 * 2 + 1  # the blocks' matrices, the embeddings (and the untied head)
    if kind == "mix_ln":
        post_ln = after.model.layers[0].post_feedforward_layernorm.weight
        assert torch.equal(post_ln, torch.ones_like(post_ln))
    buffers = dict(before.named_buffers())
    assert buffers.keys() == dict(after.named_buffers()).keys()
    for name, value in after.named_buffers():
        assert torch.equal(value, buffers[name]), name


def test_a_parameter_without_an_initialisation_rule_is_refused():
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.gain = nn.Parameter(torch.empty(4))

    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(4, 4), Scaled())
    with pytest.raises(TypeError, match=r"no initialisation rule for parameter 'gain' of Scaled"):
        init_model_weights(model, STD, 0)


@pytest.fixture(scope="module")
def launched(small_data, tiny_run, tmp_path_factory):
    """Every 2-process job of this module, in one torchrun launch; returns the folder of reports."""
    root = tmp_path_factory.mktemp("meta_init")
    models = {
        name: {"model": {"init_std": STD, **fields}, "objective": objective}
        for name, (fields, objective) in KINDS.items()
    }
    pretrain = tiny_run(
        root / "run", "train.parallelism=fsdp2", "train.steps=2", "objective=meap"
    ).to_dict()
    jobs = [
        {
            "kind": "memory",
            "model": MEMORY_MODEL,
            "vocab": MEMORY_VOCAB,
            "out": str(root / "memory.json"),
        },
        {"kind": "shards", "models": models, "out": str(root / "shards.json")},
        {"kind": "pretrain", "config": pretrain, "out": str(root / "pretrain.json")},
        {
            "kind": "accumulation",
            "model": {},
            "vocab": 101,
            "out": str(root / "accumulation.json"),
        },
    ]
    (root / "jobs.json").write_text(json.dumps(jobs))
    worker = __file__.replace("test_meta_init.py", "_meta_init_worker.py")
    run_torchrun(worker, root / "jobs.json", nproc=2, timeout=600)
    return root


def _reports(launched, job: str) -> list[dict]:
    return json.loads((launched / f"{job}.json").read_text())


@pytest.mark.distributed
@pytest.mark.parametrize("kind", list(KINDS))
def test_shards_materialised_from_meta_equal_the_rows_of_the_whole_model(launched, kind):
    for rank, report in enumerate(_reports(launched, "shards")):
        found = report[kind]
        assert found["mismatched"] == [], (rank, found["mismatched"])
        assert found["params"] == found["sharded_params"] > 0
        # every parameter was split: a process holds fewer rows than the whole
        assert found["split"] == found["params"], rank
        assert found["buffers"] == [
            "model.rotary_emb.inv_freq",
            "model.rotary_emb.original_inv_freq",
        ]
        assert found["bad_buffers"] == []
        assert found["logits_equal"], rank
        assert found["tied"] == (kind == "tied")


@pytest.mark.distributed
def test_a_sharded_build_never_holds_the_whole_model(launched):
    for rank, found in enumerate(_reports(launched, "memory")):
        print(rank, {k: round(v / 1e6, 1) for k, v in found.items()})  # MB, shown with -s
        full = found["full_bytes"]
        assert full > 190e6  # ~48M fp32 parameters
        assert found["shard_bytes"] == pytest.approx(full / 2, rel=1e-3)
        # the measurement sees a whole model built in the same process...
        assert found["full_peak_gain"] > 0.9 * full, (rank, found)
        # ...and the shards held after the sharded build, which peaked far below the whole
        assert found["meta_held"] > 0.4 * full, (rank, found)
        assert found["meta_peak_gain"] < 0.75 * full, (rank, found)


@pytest.mark.distributed
def test_pretrain_under_fsdp2_builds_on_meta_and_trains_the_shards(launched):
    for report in _reports(launched, "pretrain"):
        assert report["device"] == "meta" and report["built_on_meta"]
        assert report["materialised_shards"]
        assert report["step"] == 2 and report["loss_finite"]


@pytest.mark.distributed
def test_fsdp2_reduces_every_micro_batch_instead_of_holding_whole_gradients(launched):
    # grad_accum > 1 under FSDP2: a micro-batch before the last leaves sharded gradients, not
    # each layer's whole fp32 gradient held until the last one (which would undo sharding)
    for report in _reports(launched, "accumulation"):
        assert report["params"] > 0
        assert report["sharded_grads"] == report["params"]

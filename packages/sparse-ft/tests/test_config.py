"""LiftConfig / SeftConfig / PruneConfig: defaults tied to the papers and to the functions they feed,
validation, YAML round trip, adapter folders saved while the configs were dataclasses still load
(and re-save to the same files), PruneConfig.apply is sparse_ft.prune."""

import inspect
import json
import shutil
import typing
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from layerwise_core import ConfigError, tiny_llama
from layerwise_kernels._backend import BACKENDS
from sparse_ft import (
    ALLOCATIONS,
    LiftConfig,
    PruneConfig,
    SeftConfig,
    SparseFTModel,
    packed_calibration,
    principal_weight_indices,
    prune,
)

OLD_ADAPTERS = Path(__file__).parent / "data" / "adapters_dataclass_config"


def _default(function, name):
    return inspect.signature(function).parameters[name].default


def test_defaults_are_the_papers_and_those_of_the_functions_they_feed():
    # LIFT's Llama-2-7B math setting (spec sparse-ft.md): lora_rank 128, filter_rank 64, every 400
    lift = LiftConfig()
    assert (lift.lora_rank, lift.filter_rank, lift.update_interval) == (128, 64, 400)
    assert lift.select_largest  # the paper's top-k largest |W'|
    assert lift.niter == _default(principal_weight_indices, "niter")
    assert lift.svd == _default(principal_weight_indices, "method")
    seft = SeftConfig()
    assert (seft.update_interval, seft.reprune) == (10, "sensitivity")  # SEFT commonsense
    # the backends are those the sddmm kernel accepts
    for cls in (LiftConfig, SeftConfig):
        assert typing.get_args(cls.model_fields["backend"].annotation) == BACKENDS
    # PruneConfig mirrors prune(): same sparsity / pattern / allocation defaults and choices
    prune_cfg = PruneConfig()
    for name in ("sparsity", "pattern", "allocation"):
        assert getattr(prune_cfg, name) == _default(prune, name), name
    assert typing.get_args(PruneConfig.model_fields["allocation"].annotation) == ALLOCATIONS
    assert prune_cfg.method == "none" and prune_cfg.calibration_sequences == 128  # Wanda: 128


def test_keyword_construction_yaml_round_trip_and_overrides(tmp_path):
    lift = LiftConfig(lora_rank=4, target_modules=["q_proj", "v_proj"], svd="lowrank")
    assert lift.target_modules == ("q_proj", "v_proj")  # hashable: the config is frozen
    assert LiftConfig.from_yaml(_written(lift, tmp_path / "lift.yaml")) == lift
    seft = SeftConfig(budget_rank=2, pattern="2:4", target_modules=r".*\.mlp\..*")
    assert SeftConfig.from_yaml(_written(seft, tmp_path / "seft.yaml")) == seft
    prune_cfg = PruneConfig(method="wanda", allocation="owl", sparsity=0.7)
    assert PruneConfig.from_yaml(_written(prune_cfg, tmp_path / "prune.yaml")) == prune_cfg
    assert lift.with_overrides(["filter_rank=8"]) == LiftConfig(
        lora_rank=4, filter_rank=8, target_modules=["q_proj", "v_proj"], svd="lowrank"
    )
    with pytest.raises(ValueError, match="frozen"):
        lift.lora_rank = 2


def _written(config, path):
    config.to_yaml(path)
    return path


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: LiftConfig(lora_rank=0), "lora_rank"),
        (lambda: LiftConfig(update_interval=0), "update_interval"),
        (lambda: LiftConfig(svd="randomized"), "svd"),
        (lambda: LiftConfig(backend="cuda"), "backend"),
        (lambda: LiftConfig(reference_quirks=True, largest=True), "SMALLEST"),
        (lambda: SeftConfig(update_interval=1), "update_interval"),
        (lambda: SeftConfig(drop_fraction=0.0), "drop_fraction"),
        (lambda: SeftConfig(pattern="2-4"), "looks like '2:4'"),
        (lambda: PruneConfig(method="owl"), "method"),
        (lambda: PruneConfig(sparsity=1.0), "sparsity"),
        (lambda: PruneConfig(sparsity=None), "needs an N:M pattern"),
        (lambda: PruneConfig(pattern="2:4", sparsity=0.6), "zeroes 50% of every row"),
        (lambda: PruneConfig(pattern="2:4", allocation="owl"), "needs pattern=None"),
    ],
)
def test_bad_values_are_refused_naming_the_field(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_typos_and_positional_arguments_name_the_fix():
    with pytest.raises(ConfigError, match="unknown field 'lora_rnk' .did you mean 'lora_rank'"):
        LiftConfig.from_dict({"lora_rnk": 4})
    with pytest.raises(TypeError, match=r"keyword arguments only: write LiftConfig\(lora_rank=1"):
        LiftConfig(1, 2)
    # a pattern alone implies its sparsity; the default sparsity does not conflict with it
    assert PruneConfig(method="wanda", pattern="1:4").pattern == "1:4"


def _saved(folder):
    meta = json.loads((folder / "sparse_config.json").read_text())
    with safe_open(str(folder / "sparse_delta.safetensors"), "pt") as handle:
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    return meta, tensors


def _old_base(method):
    # the base weights the fixtures were trained on (tests/data/.../README.md)
    model = tiny_llama(seed=1)
    if method == "seft":
        prune(model, "magnitude", 0.5)
    return model


@pytest.mark.parametrize("method", ["lift", "seft"])
def test_adapter_saved_with_dataclass_configs_loads_and_resaves_identically(method, tmp_path):
    folder = OLD_ADAPTERS / method
    meta, tensors = _saved(folder)
    config_cls = LiftConfig if method == "lift" else SeftConfig
    loaded = SparseFTModel.from_pretrained(_old_base(method), folder)
    assert loaded.peft_config == config_cls(**meta["config"])
    assert type(loaded.peft_config) is config_cls
    # the merged weights are the base with the saved touched weights and deltas, rebuilt here
    # from the raw file
    base = dict(_old_base(method).named_parameters())
    merged = dict(
        SparseFTModel.from_pretrained(_old_base(method), folder)
        .merge_and_unload()
        .named_parameters()
    )
    for name in meta["shapes"]:
        want = base[f"{name}.weight"].detach().clone().reshape(-1)
        want[tensors[f"{name}.touched_indices"]] = tensors[f"{name}.touched_weights"]
        want.index_add_(0, tensors[f"{name}.indices"], tensors[f"{name}.values"])
        assert torch.equal(merged[f"{name}.weight"].reshape(-1), want), name
    # saving the loaded adapter writes what the dataclass version wrote
    loaded.save_pretrained(tmp_path / "again")
    meta_again, tensors_again = _saved(tmp_path / "again")
    assert meta_again == meta
    assert (tmp_path / "again" / "sparse_config.json").read_text() == (
        folder / "sparse_config.json"
    ).read_text()
    assert tensors_again.keys() == tensors.keys()
    for key in tensors:
        assert torch.equal(tensors_again[key], tensors[key]), key


def test_saved_config_keeps_only_the_config_fields(tmp_path):
    class Tagged(LiftConfig):  # what an integration's tagged choice makes of LiftConfig
        name: str = "lift"

    model = SparseFTModel(tiny_llama(seed=0), Tagged(lora_rank=1, filter_rank=2))
    model.save_pretrained(tmp_path / "adapter")
    reloaded = SparseFTModel.from_pretrained(tiny_llama(seed=0), tmp_path / "adapter")
    assert reloaded.peft_config == LiftConfig(lora_rank=1, filter_rank=2)


def test_an_unknown_saved_field_is_refused_with_the_valid_ones(tmp_path):
    shutil.copytree(OLD_ADAPTERS / "lift", tmp_path / "lift")
    path = tmp_path / "lift" / "sparse_delta.safetensors"
    with safe_open(str(path), "pt") as handle:
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
        meta = json.loads(handle.metadata()["sparse_ft"])
    meta["config"]["rank"] = 3
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata={"sparse_ft": json.dumps(meta)})
    with pytest.raises(ConfigError, match="unknown field 'rank'.*valid fields here"):
        SparseFTModel.from_pretrained(tiny_llama(seed=1), tmp_path / "lift")


def _calibration(sequences=6, tokens=16):
    return torch.randint(0, 128, (sequences, tokens), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize(
    ("config", "direct"),
    [
        (dict(method="magnitude", sparsity=0.3), dict(method="magnitude", sparsity=0.3)),
        (dict(method="wanda"), dict(method="wanda", sparsity=0.5)),
        (
            dict(method="wanda", allocation="owl", sparsity=0.6),
            dict(method="wanda", sparsity=0.6, allocation="owl"),
        ),
        (
            dict(method="sparsegpt", pattern="2:4"),
            dict(method="sparsegpt", sparsity=None, pattern="2:4"),
        ),
        (dict(method="wanda", calibration_sequences=2), dict(method="wanda", sparsity=0.5, rows=2)),
    ],
)
def test_prune_config_apply_equals_prune(config, direct):
    calibration = _calibration()
    rows = direct.pop("rows", None)
    a, b = tiny_llama(seed=3), tiny_llama(seed=3)
    got = PruneConfig(**config).apply(a, calibration)
    want = prune(b, calibration=calibration[:rows], **direct)
    assert got.masks.keys() == want.masks.keys() and got.targets == want.targets
    for name in want.masks:
        assert torch.equal(got.masks[name], want.masks[name]), name
    for (name, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(p, q), name
    assert 0 < got.overall_sparsity < 1


def test_prune_config_none_leaves_the_model_and_calibration_is_checked():
    model = tiny_llama(seed=3)
    before = {n: p.clone() for n, p in model.named_parameters()}
    assert PruneConfig().apply(model, _calibration()) is None
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    with pytest.raises(ValueError, match="needs calibration data"):
        PruneConfig(method="wanda").apply(model)
    # a list of batches counts sequences across batches: 2 + 1 of [2, 16], [2, 16]
    calibration = _calibration(4)
    a, b = tiny_llama(seed=3), tiny_llama(seed=3)
    PruneConfig(method="wanda", calibration_sequences=3).apply(a, list(calibration.split(2)))
    prune(b, "wanda", 0.5, calibration=calibration[:3])
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_packed_calibration_cuts_the_concatenated_documents():
    docs = [[1, 2, 3], list(range(4, 14))]  # 13 tokens
    assert packed_calibration(docs, 1).tolist() == [list(range(1, 14))]  # one block of all 13
    # two sequences of >= 8 tokens do not fit: one block of 8, the tail dropped
    assert packed_calibration(docs, 2).tolist() == [list(range(1, 9))]
    forty = [list(range(40))]
    assert packed_calibration(forty, 3).tolist() == [  # length max(8, 40 // 3) = 13
        list(range(0, 13)),
        list(range(13, 26)),
        list(range(26, 39)),
    ]
    assert packed_calibration(forty, 2, length=4).shape == (2, 4)
    with pytest.raises(ValueError, match="too few"):
        packed_calibration([[1, 2, 3]], 1)

"""ELAS in `layerwise pretrain`: `model.mlp: relu2` (squared-ReLU FFN, 2:4 activation sparsity
after a dense warm-up), `model.low_rank: R` (LORO's factor pairs) and `optimizer: loro`.

The tiny run (llama-tiny: hidden 64, 2 layers, FFN width ceil(1.5 * 176 / 64) * 64 = 320, rank
16) switches from the dense warm-up to the 2:4 select after 4 of its 8 updates, and LORO takes an
exact step every 3 updates. The switch is pinned by comparison with the same run whose warm-up
never ends (losses equal bit for bit up to update 4, different from update 5); the logged 2:4
statistics are compared with values computed by hand from the FFN's inputs; a resume at the switch
equals the uninterrupted run bit for bit; 2 processes (FSDP2, DDP) train as 1.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml

from layerwise.models import build_model, init_model_weights
from layerwise.models.build import _parameter_seed, initial_value
from layerwise.train import PretrainConfig, pretrain, read_metrics, read_model_state
from layerwise.train.metrics import TIMING_FIELDS
from layerwise.train.pretrain import _reduced_elas_stats
from layerwise_core import ConfigError
from layerwise_core.testing import run_python, run_torchrun
from layerwise_kernels import mask_24
from sparse_ft import (
    ELASFFN,
    LOROConfig,
    LowRankConfig,
    LowRankLinear,
    ReLU2MLPConfig,
    set_elas_step,
)

STEPS = 8
WARMUP = 4  # dense updates before the 2:4 select
RANK = 16
FFN = 320  # ReLU2MLPConfig().ffn_dim(176): ceil(264 / 64) * 64
ELAS = (
    "model.mlp={name: relu2, activation_sparsity: 2:4, warmup_steps: 4}",  # 2:4 unquoted: 124
    f"model.low_rank={RANK}",
    "optimizer={name: loro, lr: 1e-2, exact_every: 3}",
    f"train.steps={STEPS}",
)
MODULES = ["model.layers.0.mlp", "model.layers.1.mlp"]
KINDS = ("activation_sparsity", "dropped_mass_fraction")


def _train(run) -> list[dict]:
    return [r for r in read_metrics(run) if r["split"] == "train"]


def _params(run, step=STEPS) -> dict[str, torch.Tensor]:
    return read_model_state(run / "checkpoints" / f"step_{step}")


def _timeless(run) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in read_metrics(run)]


# --- configuration ----------------------------------------------------------------------------

YAML = """
model:
  preset: llama-tiny
  mlp: {name: relu2, activation_sparsity: 2:4, grad: masked, warmup_steps: 1000}
  low_rank: 128
optimizer: {name: loro, lr: 1e-2, exact_every: 500}
"""


def test_yaml_switches_are_the_packages_configs(tmp_path):
    # the gotcha: YAML 1.1 reads an unquoted 2:4 as the base-60 integer 2 * 60 + 4
    assert yaml.safe_load(YAML)["model"]["mlp"]["activation_sparsity"] == 124
    (tmp_path / "run.yaml").write_text(YAML)
    cfg = PretrainConfig.from_yaml(tmp_path / "run.yaml")
    mlp, low_rank, optimizer = cfg.model.mlp, cfg.model.low_rank, cfg.optimizer
    assert isinstance(mlp, ReLU2MLPConfig) and mlp.name == "relu2"
    assert (mlp.activation_sparsity, mlp.grad, mlp.warmup_steps) == ("2:4", "masked", 1000)
    # a bare int is the rank; the other fields the package's defaults
    assert isinstance(low_rank, LowRankConfig)
    assert low_rank.model_dump() == LowRankConfig(rank=128, attention=True, mlp=True).model_dump()
    assert isinstance(optimizer, LOROConfig) and optimizer.name == "loro"
    assert (optimizer.lr, optimizer.exact_every) == (1e-2, 500)
    # the YAML written for the run reads back as the same configuration, 2:4 quoted
    text = cfg.to_yaml()
    assert "activation_sparsity: '2:4'" in text
    assert PretrainConfig.from_dict(yaml.safe_load(text)) == cfg


def test_dotted_overrides_and_shorthands():
    cfg = PretrainConfig.from_dict(
        {},
        [
            "model.mlp=relu2",  # bare string: {name: relu2}, the package's defaults
            "model.mlp.warmup_steps=7",
            "model.mlp.activation_sparsity=2:4",  # parsed as YAML: 124 again
            "model.low_rank=64",  # bare int
            "model.low_rank.attention=false",  # reaches into the shorthand
            "optimizer=loro",
            "optimizer.exact_every=3",
        ],
    )
    assert cfg.model.mlp.model_dump() == {
        **ReLU2MLPConfig(warmup_steps=7).model_dump(),
        "name": "relu2",
    }
    assert cfg.model.low_rank == LowRankConfig(rank=64, attention=False)
    assert cfg.optimizer.model_dump() == {**LOROConfig(exact_every=3).model_dump(), "name": "loro"}
    # switching the optimizer by name keeps the values chosen (lr), takes LORO's defaults for
    # the rest (AdamW's weight decay 0.01 is a default: LORO's 0.0 replaces it)
    switched = PretrainConfig.from_dict(
        {}, ["model.low_rank=8", "optimizer.lr=5e-3", "optimizer.name=loro"]
    )
    assert (switched.optimizer.lr, switched.optimizer.weight_decay) == (5e-3, 0.0)
    # defaults: no ELAS
    default = PretrainConfig()
    assert default.model.low_rank.rank is None and not default.model.elas


def test_defaults_shown_are_the_packages():
    """What test_config_layout checks for every switch, for the three ELAS ones by name."""
    cfg = PretrainConfig.from_dict({}, ["model.mlp=relu2", "model.low_rank=4", "optimizer=loro"])
    shown = cfg.model.mlp.model_dump(mode="json")
    assert shown.pop("name") == "relu2" and shown == ReLU2MLPConfig().model_dump(mode="json")
    shown = cfg.optimizer.model_dump(mode="json")
    assert shown.pop("name") == "loro" and shown == LOROConfig().model_dump(mode="json")
    assert PretrainConfig().model.low_rank.model_dump() == LowRankConfig().model_dump()


@pytest.mark.parametrize(
    "overrides,message",
    [
        (("optimizer=loro",), "set model.low_rank=R"),
        (("optimizer=loro", "model.low_rank={rank: 8, attention: false, mlp: false}"), "low_rank"),
        (("model.mlp=moe", "model.low_rank=8"), "use model.mlp=dense or relu2"),
        (("model.norm=mix_ln", "model.mlp=coe"), "needs model.mlp=dense or relu2"),
        (("objective=mdm", "model.mlp=relu2"), "use objective=ntp or meap with ELAS"),
        (("objective=mdm", "model.low_rank=8"), "use objective=ntp or meap with ELAS"),
        (("spectral=alphadecay", "model.low_rank=8"), "use spectral=none"),
        (("model.quant=int4", "model.mlp=relu2"), "use model.quant=none"),
        (("model.low_rank=true",), "not a boolean"),
        (("model.mlp=relu2", "model.mlp.activation_sparsity=1:4"), "activation_sparsity"),
        (("model.mlp=relu2", "model.mlp.warmup_step=3"), "did you mean 'model.mlp.warmup_steps'"),
        (("optimizer=lorro",), "did you mean 'loro'"),
    ],
)
def test_incompatible_or_wrong_switches_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        PretrainConfig.from_dict({}, overrides)


# --- the paper recipes -------------------------------------------------------------------------

# specs/elas.md 2.1 and LORO's scripts: size -> (rank, steps, LR warm-up, lr, exact_every)
RECIPES = {
    "elas-60m": (128, 10_000, 1_000, 1e-2, 500),
    "elas-130m": (256, 20_000, 2_000, 1e-2, 500),
    "elas-350m": (256, 60_000, 2_000, 1e-2, 500),
    "elas-1b": (512, 100_000, 10_000, 5e-3, 200),
}


@pytest.mark.parametrize("name", list(RECIPES))
def test_recipes_hold_the_papers_setting(name):
    from layerwise.recipes import load_recipe

    rank, steps, warmup, lr, exact_every = RECIPES[name]
    cfg = load_recipe(name)
    assert cfg.model.low_rank == LowRankConfig(rank=rank)  # attention and MLP
    mlp = cfg.model.mlp
    assert (mlp.name, mlp.activation_sparsity, mlp.grad, mlp.warmup_steps) == (
        "relu2",
        "2:4",
        "ste",
        1000,  # dense updates before the 2:4 select, every size
    )
    optimizer = cfg.optimizer
    assert (optimizer.name, optimizer.lr, optimizer.exact_every) == ("loro", lr, exact_every)
    assert optimizer.weight_decay == 0.0
    assert (cfg.train.steps, cfg.schedule.warmup_steps, cfg.schedule.min_lr_ratio) == (
        steps,
        warmup,
        0.1,
    )
    # 512 sequences of 256 tokens per step, bf16, no clipping
    assert cfg.train.batch_size * cfg.train.grad_accum == 512 and cfg.train.block_size == 256
    assert (cfg.train.precision, cfg.train.grad_clip) == ("bf16", None)


def test_smoke_runs_time_the_sparse_ffn():
    """The smoke runner cuts an ELAS recipe's dense FFN warm-up to one update (the timed steps
    2..N run the 2:4 select), and leaves the other recipes' models alone."""
    from layerwise.recipes import list_recipes, load_recipe, smoke

    assert set(RECIPES) <= set(list_recipes())
    for name in list_recipes():
        recipe = load_recipe(name)
        overrides = smoke.smoke_overrides(5, "/tmp/unused", name)
        cfg = load_recipe(name, overrides)
        elas = name in RECIPES
        assert ("model.mlp.warmup_steps=1" in overrides) == elas, name
        if elas:
            assert cfg.model.mlp.warmup_steps == 1
            assert cfg.model.with_overrides(["mlp.warmup_steps=1000"]) == recipe.model
        else:
            assert cfg.model == recipe.model, name


# --- the model --------------------------------------------------------------------------------


def _model_cfg(*overrides):
    return PretrainConfig.from_dict({"model": {"preset": "llama-tiny"}}, overrides).model


def test_build_model_is_the_same_whatever_the_construction_device():
    cfg = _model_cfg(*ELAS[:2])
    on_cpu = build_model(cfg, 96, 32, seed=3, device="cpu")
    with torch.device("meta"):
        on_meta = build_model(cfg, 96, 32, seed=3)
    assert all(p.is_meta for p in on_meta.parameters())
    init_model_weights(on_meta, cfg.init_std, 3)
    a, b = on_cpu.state_dict(), on_meta.state_dict()
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    # the ELAS model: low-rank attention and FFN, 2:4 FFN of width 320, warm-up step 0
    ffns = [m for m in on_cpu.modules() if isinstance(m, ELASFFN)]
    assert len(ffns) == 2 and all(f.ffn_dim == FFN and f.rank == RANK for f in ffns)
    assert all(int(f.elas_step) == 0 and not f.sparse_active for f in ffns)
    attention = on_cpu.model.layers[0].self_attn
    assert all(isinstance(getattr(attention, p), LowRankLinear) for p in ("q_proj", "o_proj"))
    assert on_cpu.config.model_type == "elas_llama"
    # another seed: other weights
    other = build_model(cfg, 96, 32, seed=4)
    assert not torch.equal(other.model.layers[0].mlp.up_proj.weight_in, ffns[0].up_proj.weight_in)


@pytest.mark.parametrize("scheme", ["lns", "mix_ln+lns"])
def test_norm_schemes_combine_with_elas_and_reload_in_a_fresh_process(tmp_path, scheme):
    """A norm scheme applied after ELAS wraps the ELAS model: saved, it reloads (Auto classes, a
    fresh interpreter: nothing registered by this session) with the same logits."""
    cfg = _model_cfg(*ELAS[:2], f"model.norm={scheme}", "model.mlp.warmup_steps=0")
    model = build_model(cfg, 96, 32, seed=0).eval()
    ids = torch.randint(0, 96, (1, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    model.save_pretrained(tmp_path)
    torch.save({"ids": ids, "logits": logits}, tmp_path / "expected.pt")
    code = (
        "import sys, torch\n"
        "from layerwise.models import load_saved_model\n"
        "want = torch.load(sys.argv[1] + '/expected.pt')\n"
        "model = load_saved_model(sys.argv[1])\n"
        "print(type(model).__name__, torch.equal(model(input_ids=want['ids']).logits, "
        "want['logits']))\n"
    )
    out = run_python(code, str(tmp_path)).stdout.split()
    assert out[-2:] == ["ElasLlamaForCausalLM", "True"]
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "ln_scaling"


def test_low_rank_factors_are_xavier_normal_per_name():
    seed = 5
    model = build_model(_model_cfg(*ELAS[:2]), 96, 32, seed=seed)
    pooled: dict[tuple[int, int], list[torch.Tensor]] = {}
    for name, param in model.named_parameters():
        if not name.endswith(("weight_in", "weight_out")):
            continue
        # exactly torch's xavier_normal_ (LowRankLinear.reset_parameters) drawn from the
        # parameter's own generator
        generator = torch.Generator().manual_seed(_parameter_seed(seed, name))
        expected = torch.nn.init.xavier_normal_(torch.empty(param.shape), generator=generator)
        assert torch.equal(param.detach(), expected), name
        pooled.setdefault(tuple(param.shape), []).append(param.detach().flatten())
    # shapes: q/k/v/o [64, 16], up [64, 16] and [320, 16], down [320, 16] and [64, 16]
    assert set(pooled) == {(64, RANK), (FFN, RANK)}
    for (n, r), values in pooled.items():
        values = torch.cat(values)
        want = math.sqrt(2.0 / (n + r))  # hand formula: 0.158 for [64, 16], 0.0765 for [320, 16]
        # >= 8192 draws per shape: the sample std within 3% (about 4 standard errors)
        assert values.std().item() == pytest.approx(want, rel=0.03), (n, r)
        assert abs(values.mean().item()) < 3 * want / math.sqrt(values.numel())
    # the rule's value is the package's formula, not the run's init_std
    assert (
        initial_value("xavier_normal", "x", torch.Size([64, 16]), torch.float32, 0.02, 0).std()
        > 0.1
    )


def test_logged_statistics_are_those_of_the_ffn_inputs():
    """`_reduced_elas_stats` (what a train record carries) against the sparsity and dropped mass
    computed by hand from relu(up(x))^2 of every FFN."""
    model = build_model(_model_cfg(*ELAS[:2]), 96, 32, seed=0)
    ffns = {n: m for n, m in model.named_modules() if isinstance(m, ELASFFN)}
    seen = {}
    for name, ffn in ffns.items():
        ffn.up_proj.register_forward_hook(
            lambda m, i, out, name=name: seen.setdefault(name, []).append(out.detach())
        )
        ffn.collect_stats = True
    ids = torch.randint(0, 96, (3, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model(input_ids=ids[:2])
        model(input_ids=ids[2:])  # two forwards: the statistics add up
    got = _reduced_elas_stats(model)
    assert list(got) == MODULES
    for name in MODULES:
        y2 = torch.relu(torch.cat([y.reshape(-1, FFN) for y in seen[name]])).square().double()
        kept = torch.where(mask_24(y2), y2, 0.0)
        sparsity = (y2 == 0).double().mean().item()
        dropped = 1 - kept.sum().item() / y2.sum().item()
        assert got[name]["activation_sparsity"] == pytest.approx(sparsity, abs=1e-6)
        assert got[name]["dropped_mass_fraction"] == pytest.approx(dropped, rel=1e-4)
        # at initialisation relu^2 is about half zeros, and 2:4 keeps at least half the mass
        assert 0.35 < sparsity < 0.65 and 0.0 < dropped < 0.5
    assert _reduced_elas_stats(model) == {}  # read once: the sums were reset


# --- training ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def runs(small_data, tiny_run, tmp_path_factory):
    """The tiny ELAS run (8 updates, 2:4 from update 5), the same run without the switch
    (stopped after 5 updates), the run stopped at the switch (step 4) and resumed, and the run
    with activation checkpointing."""
    root = tmp_path_factory.mktemp("elas")
    result = pretrain(tiny_run(root / "straight", *ELAS), data=small_data)
    never = "model.mlp.warmup_steps=1000"
    pretrain(tiny_run(root / "dense", *ELAS, never), stop_at=5, data=small_data)
    pretrain(tiny_run(root / "resumed", *ELAS), stop_at=WARMUP, data=small_data)
    torch.manual_seed(123)  # the global RNG disturbed between the invocations
    pretrain(tiny_run(root / "resumed", *ELAS, "train.resume=true"), data=small_data)
    checkpointed = ("train.activation_checkpointing=true",)
    pretrain(tiny_run(root / "checkpointed", *ELAS, *checkpointed), data=small_data)
    return root, result


def test_the_warmup_switch_happens_after_exactly_warmup_steps_updates(runs):
    root, _ = runs
    sparse, dense = _train(root / "straight"), _train(root / "dense")
    assert [r["step"] for r in dense] == [1, 2, 3, 4, 5]
    # updates 1-4 dense in both runs: bit for bit the same; update 5 uses the 2:4 select
    assert [r["loss"] for r in sparse[:WARMUP]] == [r["loss"] for r in dense[:WARMUP]]
    assert sparse[WARMUP]["loss"] != dense[WARMUP]["loss"]
    # the warm-up step is a buffer of the checkpoint: the number of completed updates
    for step in (WARMUP, STEPS):
        state = _params(root / "resumed" if step == WARMUP else root / "straight", step)
        for module in MODULES:
            assert state[f"{module}.elas_step"].item() == step


def test_every_train_record_carries_the_statistics_per_layer(runs):
    root, result = runs
    records = _train(root / "straight")
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    for record in records:
        keys = {k for k in record if k.startswith(KINDS)}
        assert keys == {f"{kind}/{module}" for kind in KINDS for module in MODULES}
        assert all(0.0 <= record[k] <= 1.0 for k in keys), record
        # the 2:4 select keeps the 2 largest of 4: at most half of each group's mass dropped
        assert all(record[f"dropped_mass_fraction/{m}"] <= 0.5 for m in MODULES)
    first = records[0]
    assert all(0.35 < first[f"activation_sparsity/{m}"] < 0.65 for m in MODULES)  # ~half at init
    assert all(first[f"dropped_mass_fraction/{m}"] > 0 for m in MODULES)  # >2 positives: dropped
    # the run's summary: the last record's statistics, keyed by module
    assert result.elas_stats == {
        m: {kind: records[-1][f"{kind}/{m}"] for kind in KINDS} for m in MODULES
    }
    assert result.step == STEPS and math.isfinite(result.final_eval.loss)


def test_resume_across_the_warmup_switch_is_bitwise(runs):
    root, _ = runs
    straight, resumed = _params(root / "straight"), _params(root / "resumed")
    assert straight.keys() == resumed.keys()
    for name, value in straight.items():
        assert torch.equal(value, resumed[name]), name
    assert _timeless(root / "straight") == _timeless(root / "resumed")
    # training moved the factors: not a comparison of two initialisations
    moved = _params(root / "resumed", WARMUP)["model.layers.0.mlp.down_proj.weight_in"]
    assert not torch.equal(moved, straight["model.layers.0.mlp.down_proj.weight_in"])


def test_activation_checkpointing_trains_and_logs_the_same(runs):
    """Activation checkpointing recomputes the 2:4 FFN forwards in the backward (the warm-up
    state and the select included): the same training, bit for bit, and the same records."""
    root, _ = runs
    assert _timeless(root / "checkpointed") == _timeless(root / "straight")
    straight, checkpointed = _params(root / "straight"), _params(root / "checkpointed")
    for name, value in straight.items():
        assert torch.equal(value, checkpointed[name]), name


def test_final_model_reloads_as_trained(runs, small_data):
    from layerwise.train import load_saved_model

    root, _ = runs
    model = load_saved_model(root / "straight" / "final")
    ffns = [m for m in model.modules() if isinstance(m, ELASFFN)]
    assert len(ffns) == 2 and all(int(f.elas_step) == STEPS and f.sparse_active for f in ffns)
    state = _params(root / "straight")
    for name, value in model.state_dict().items():
        assert torch.equal(value, state[name]), name
    set_elas_step(model, 0)  # the warm-up's dense FFN gives other logits
    ids = small_data.validation.gather(range(2))[:, :-1]
    with torch.no_grad():
        dense = model(input_ids=ids).logits
        set_elas_step(model, STEPS)
        sparse = model(input_ids=ids).logits
    assert not torch.equal(dense, sparse)


# --- 2 processes ------------------------------------------------------------------------------

TWO = ("train.batch_size=2", "train.grad_accum=2")
ONE = ("train.batch_size=4", "train.grad_accum=2")
# one micro-batch per step and no clipping: FSDP2 and DDP sum the same gradients in the same order
# (FSDP2 reduces after every micro-batch, DDP once per step; a clip norm is a sum over shards),
# so sharding itself (LORO's exact step gathers each factor pair and writes back its shard) must
# be exact
EXACT = ("train.batch_size=4", "train.grad_accum=1", "train.grad_clip=null")


@pytest.fixture(scope="module")
def launched(small_data, tiny_run, tmp_path_factory):
    """The tiny ELAS run on 2 gloo processes, FSDP2 and DDP, in one torchrun launch, and the same
    run in this process."""
    root = tmp_path_factory.mktemp("elas_two")
    runs = {
        "fsdp2": (*TWO, "train.parallelism=fsdp2"),
        "ddp": (*TWO, "train.parallelism=ddp"),
        "fsdp2_exact": (*EXACT, "train.parallelism=fsdp2"),
        "ddp_exact": (*EXACT, "train.parallelism=ddp"),
    }
    jobs = [
        {"kind": "pretrain", "config": tiny_run(root / name, *ELAS, *extra).to_dict()}
        for name, extra in runs.items()
    ]
    (root / "jobs.json").write_text(json.dumps(jobs))
    worker = __file__.replace("test_elas_pretrain.py", "_fsdp_worker.py")
    run_torchrun(worker, root / "jobs.json", nproc=2, timeout=900)
    pretrain(tiny_run(root / "one", *ELAS, *ONE), data=small_data)
    return root


@pytest.mark.distributed
@pytest.mark.parametrize("parallelism", ["fsdp2", "ddp"])
def test_two_processes_train_as_one(launched, parallelism):
    """2 processes x 2 blocks x 2 micro-batches == 1 process x 4 x 2, up to fp32 summation order.
    LORO at lr 1e-2 (exact steps: QR and SVD of each factor pair at the unscaled step size) moves
    factors of std ~0.1-0.16 by ~1e-2 per update and carries the order's rounding further than
    AdamW's test_fsdp runs: parameters within atol 1e-4 (measured: 3.7e-5 after 8 updates,
    while the exact steps move every factor by 0.4-1.0), every loss within 1e-5 relative."""
    two, one = launched / parallelism, launched / "one"
    a, b = _params(two), _params(one)
    assert a.keys() == b.keys()
    for name in b:
        torch.testing.assert_close(a[name], b[name], atol=1e-4, rtol=1e-3)
    logs_a, logs_b = _train(two), _train(one)
    assert len(logs_a) == len(logs_b) == STEPS
    for x, y in zip(logs_a, logs_b):
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-5), x["step"]
        # the statistics of the global batch, summed over micro-batches and processes: equal up
        # to a ReLU output that rounds across 0 (one element of 4 x 64 x 320 is 6.1e-6)
        for key in (k for k in y if k.startswith(KINDS)):
            assert x[key] == pytest.approx(y[key], abs=2e-5), (x["step"], key)


@pytest.mark.distributed
def test_fsdp2_equals_ddp_bitwise_on_the_same_sums(launched):
    fsdp2, ddp = _params(launched / "fsdp2_exact"), _params(launched / "ddp_exact")
    assert fsdp2.keys() == ddp.keys()
    for name, value in ddp.items():
        assert torch.equal(fsdp2[name], value), name
    fsdp2_log, ddp_log = _timeless(launched / "fsdp2_exact"), _timeless(launched / "ddp_exact")
    for a, b in zip(fsdp2_log, ddp_log, strict=True):
        # the logged gradient norm is a sum over shards in FSDP2: equal to fp32 rounding only
        if "grad_norm" in b:
            assert a.pop("grad_norm") == pytest.approx(b.pop("grad_norm"), rel=1e-6)
        assert a == b

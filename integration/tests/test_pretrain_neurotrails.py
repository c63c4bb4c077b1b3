"""NeuroTrails in `layerwise pretrain`: `model.heads` (sparse_ft.HeadsConfig: K heads on a shared
backbone, or the dense full ensemble) and `sparsity:` (sparse_ft.DSTConfig: dynamic sparse
training), specs/neurotrails.md.

The runs train llama-tiny (hidden 64, 2 blocks, SwiGLU 176) with K = 3 heads of b = 1 block each
(s = 1 shared block) on synthetic Markov text (40 words, each followed by one of 3 successors
chosen uniformly: about ln 3 nats per word), BPE vocabulary 300. What is pinned:

- spec 10 item 10 through `layerwise.train.pretrain`: 200 steps at density 0.5 with a topology
  update every 10 lower the loss by >= 20%, keep every tensor at exactly ceil(d_l N_l) active
  entries (d_l: `erk_densities` of the model's masked shapes), the global density within 1e-3 of
  the target, and change the masks at every one of the 20 update events; the masked weights of
  the checkpoint are exactly zero;
- the loss is the SUM of the heads' cross-entropies (`loss` = sum of `loss/head{k}`), and the
  validation record equals the combined prediction's perplexity and each head's loss recomputed
  from the saved model;
- a resume mid-interval (masks, step count, Adam moments restored) ends bitwise where the
  uninterrupted run ends; activation checkpointing trains bitwise the same;
- 2 processes (DDP, FSDP2) == 1 process: with one micro-batch per process and no clipping, the
  2-process step sums the same two half-batch gradients as the 1-process run with 2 micro-batches
  (halving is exact), so weights, masks and losses are equal bit for bit;
- the dense full ensemble and the single sparse model train through the same loop;
- the final HF folder reloads through `AutoModelForCausalLM` in a fresh process with the
  checkpoint's logits;
- the refusals of combinations that do not fit, and that a resume cannot change `sparsity` or
  `model.heads`.
"""

from __future__ import annotations

import json
import math
import random

import pytest
import torch
import yaml
from torch.nn import functional as F

from layerwise.data import DataConfig, prepare_data
from layerwise.models import ModelConfig, build_model, init_model_weights
from layerwise.models.build import initial_value
from layerwise.train import PretrainConfig, pretrain, read_metrics, read_model_state
from layerwise.train.config import resume_changes
from layerwise.train.metrics import TIMING_FIELDS
from layerwise.train.parallel import DistributedEnv, decoder_layers, parallelize
from layerwise.train.pretrain import _multi_head_validation
from layerwise.train.throughput import model_flops_per_token
from layerwise_core import ConfigError, torch_load_safe
from layerwise_core.testing import run_python, run_torchrun
from sparse_ft.dst import DSTConfig, erk_densities
from sparse_ft.multi_head import MultiHeadForCausalLM, head_disagreement

VOCAB = 300
BLOCK = 64
HEADS = ("model.heads={count: 3, blocks_in_head: 1}",)
SPARSE = ("sparsity={density: 0.5, update_every: 4}",)


@pytest.fixture(scope="module")
def markov(tmp_path_factory):
    """60 documents of 400 words from a first-order Markov chain: 40 words, each followed by
    one of 3 successors (uniformly), so the next word carries ln 3 nats."""
    rng = random.Random(0)
    words = [f"w{i}" for i in range(40)]
    successors = {w: rng.sample(words, 3) for w in words}
    folder = tmp_path_factory.mktemp("markov")
    for doc in range(60):
        word, text = rng.choice(words), []
        for _ in range(400):
            text.append(word)
            word = rng.choice(successors[word])
        (folder / f"doc{doc:02d}.txt").write_text(" ".join(text) + "\n")
    data_cfg = DataConfig(source=f"text:{folder}", vocab_size=VOCAB)
    return data_cfg, prepare_data(data_cfg, block_size=BLOCK)


def _cfg(markov, out_dir, *overrides: str) -> PretrainConfig:
    data_cfg, _ = markov
    return PretrainConfig.from_dict(
        {
            "data": data_cfg.to_dict(),
            "model": {"preset": "llama-tiny"},
            # NeuroTrails' Adam: no weight decay
            "optimizer": {"name": "adamw", "lr": 3e-3, "betas": [0.9, 0.95], "weight_decay": 0.0},
            "schedule": {"warmup_steps": 2},
            "train": {
                "steps": 12,
                "batch_size": 4,
                "block_size": BLOCK,
                "eval_every": 0,
                "eval_batches": 2,
                "save_every": 0,
                "log_every": 1,
                "out_dir": str(out_dir),
            },
        },
        overrides=overrides,
    )


def _train(run) -> list[dict]:
    return [r for r in read_metrics(run) if r["split"] == "train"]


def _timeless(run) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in read_metrics(run)]


def _state(run, step) -> tuple[dict[str, torch.Tensor], dict]:
    """(model state, DynamicSparsity state) of checkpoint `step` of `run`."""
    folder = run / "checkpoints" / f"step_{step}"
    return read_model_state(folder), torch_load_safe(folder / "scheduler.pt")["sparsity"]


def _assert_same_state(a, b) -> None:
    (weights_a, sparse_a), (weights_b, sparse_b) = a, b
    assert weights_a.keys() == weights_b.keys()
    for name, value in weights_a.items():
        assert torch.equal(value, weights_b[name]), name
    assert sparse_a["step_count"] == sparse_b["step_count"]
    assert sparse_a["masks"].keys() == sparse_b["masks"].keys()
    for name, mask in sparse_a["masks"].items():
        assert torch.equal(mask, sparse_b["masks"][name]), name


# --- configuration ----------------------------------------------------------------------------

YAML = """
model:
  preset: llama-tiny
  heads: 3
sparsity:
  density: 0.9
  update_every: 50
"""


def test_yaml_switches_are_the_packages_configs(tmp_path):
    (tmp_path / "run.yaml").write_text(YAML)
    cfg = PretrainConfig.from_yaml(
        tmp_path / "run.yaml", overrides=["model.heads.blocks_in_head=1"]
    )
    assert cfg.model.heads.count == 3 and cfg.model.heads.blocks_in_head == 1
    assert cfg.model.heads.enabled and cfg.sparsity.enabled
    assert isinstance(cfg.sparsity, DSTConfig)
    # the package's defaults (the official LM script's soft prune, T = 3, p0 0.5 -> 0.005)
    assert cfg.sparsity.model_dump() == DSTConfig(density=0.9, update_every=50).model_dump()
    # off by default: one dense model
    plain = PretrainConfig()
    assert not plain.model.heads.enabled and not plain.sparsity.enabled
    assert yaml.safe_load(cfg.to_yaml())["model"]["heads"]["count"] == 3  # written out whole


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ((*HEADS, "objective=mdm"), r"model.heads=3 trains each head on next-token prediction"),
        ((*HEADS, "objective=meap"), r"not objective=meap: use objective=ntp"),
        ((*HEADS, "model.mlp=moe"), r"which model.mlp=moe does not fit: set model.mlp=dense"),
        ((*HEADS, "model.mlp=relu2"), r"model.mlp=relu2 does not fit"),
        ((*HEADS, "model.norm=lns"), r"model.norm=lns does not fit: set model.norm=pre_ln"),
        ((*HEADS, "model.low_rank=16"), r"model.low_rank=16 does not fit: set model.low_rank=null"),
        (
            (*HEADS, "train.log_layer_variance_every=10", "train.log_every=10"),
            r"set train.log_layer_variance_every=0 with model.heads",
        ),
        (("sparsity.density=0.5", "model.low_rank=16"), r"ELAS .* replaces them"),
        (("sparsity.density=0.5", "model.mlp=coe"), r"not model.mlp=coe's expert tensors"),
        (("model.heads=true",), r"heads takes a count"),
    ],
)
def test_incompatible_switches_are_refused(markov, tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        _cfg(markov, tmp_path, *overrides)


def test_a_resume_cannot_change_the_heads_or_the_sparsity(markov, tmp_path):
    stored = _cfg(markov, tmp_path, *HEADS, *SPARSE)
    for change in (
        "sparsity.density=0.6",
        "sparsity.update_every=5",
        "sparsity.prune=magnitude",
        "model.heads.count=2",
        "model.heads.blocks_in_head=all",
        "model.heads.combine=probs",
    ):
        allowed, refused = resume_changes(stored, _cfg(markov, tmp_path, *HEADS, *SPARSE, change))
        assert not allowed and list(refused) == [change.split("=")[0]], change


# --- the model --------------------------------------------------------------------------------


@pytest.mark.parametrize("blocks", [1, "all"])
def test_every_parameter_is_initialised_by_its_name(blocks):
    """build_model's multi-head model (and the full ensemble): every parameter has an init rule,
    its value is a function of (seed, name) alone (meta build + init == direct build), so each
    head's copy of a block starts from its own draw: the heads are independent."""
    cfg = ModelConfig.from_dict(
        {"preset": "llama-tiny", "heads": {"count": 3, "blocks_in_head": blocks}}
    )
    model = build_model(cfg, 96, 32, seed=5)
    assert isinstance(model, MultiHeadForCausalLM)
    meta = build_model(cfg, 96, 32, seed=5, device="meta")
    init_model_weights(meta, cfg.init_std, 5)
    params = dict(model.named_parameters())
    assert params.keys() == dict(meta.named_parameters()).keys()
    for name, value in meta.named_parameters():
        assert torch.equal(value, params[name]), name
        if name.endswith("norm.weight") or "layernorm" in name:
            assert torch.equal(value, torch.ones_like(value)), name
        else:  # N(0, 0.02) from the generator of (seed, name)
            want = initial_value("normal", name, value.shape, value.dtype, 0.02, 5)
            assert torch.equal(value, want), name
    for j in range(len(model.heads[0].layers)):  # the heads' copies of a block differ
        q = [head.layers[j].self_attn.q_proj.weight for head in model.heads]
        assert not torch.equal(q[0], q[1]) and not torch.equal(q[1], q[2])
    if blocks == "all":
        tables = [head.embed_tokens.weight for head in model.heads]
        assert not torch.equal(tables[0], tables[1])


def test_flops_per_token_count_every_head():
    """6 N + 12 L d T with N and L over the backbone and all heads; by hand for llama-tiny
    (d 64, f 176, 4 heads of 16, V 96, T 32): a block multiplies 4 d^2 + 3 d f = 50,176 weights,
    an LM head V d = 6,144; the input embedding is a lookup (one per model of the ensemble)."""
    block, head, attention = 4 * 64 * 64 + 3 * 64 * 176, 96 * 64, 12 * 64 * 32
    assert block == 50_176
    for blocks, n, layers in (
        (1, 1 * block + 3 * (1 * block + head), 1 + 3),  # s = 1 shared, K = 3 heads of b = 1
        ("all", 3 * (2 * block + head), 3 * 2),  # 3 independent 2-block models
    ):
        cfg = ModelConfig.from_dict(
            {"preset": "llama-tiny", "heads": {"count": 3, "blocks_in_head": blocks}}
        )
        model = build_model(cfg, 96, 32, device="meta")
        assert len(decoder_layers(model)) == layers
        assert model_flops_per_token(model, 32) == 6 * n + layers * attention
    # one plain Llama, unchanged: 2 blocks + the LM head
    plain = build_model(ModelConfig(), 96, 32, device="meta")
    assert model_flops_per_token(plain, 32) == 6 * (2 * block + head) + 2 * attention


def test_activation_checkpointing_wraps_every_head_block():
    cfg = ModelConfig.from_dict(
        {"preset": "llama-tiny", "heads": {"count": 3, "blocks_in_head": 1}}
    )
    model = build_model(cfg, 96, 32)
    env = DistributedEnv(1, 0, 0, torch.device("cpu"))
    parallelize(model, env, activation_checkpointing=True)
    layers = decoder_layers(model)
    assert len(layers) == 4 and all("forward" in vars(layer) for layer in layers)


# --- training ---------------------------------------------------------------------------------

LONG = 200
EVERY = 10


@pytest.fixture(scope="module")
def long_run(markov, tmp_path_factory):
    """Spec 10 item 10: 200 steps of NeuroTrails (K 3, b 1, density 0.5, an update every 10
    steps, logged every 10: one update per record), the final validation on 4 batches."""
    root = tmp_path_factory.mktemp("neurotrails")
    overrides = (
        *HEADS,
        f"sparsity={{density: 0.5, update_every: {EVERY}}}",
        f"train.steps={LONG}",
        f"train.log_every={EVERY}",
        "train.eval_batches=4",
        "schedule.warmup_steps=20",
    )
    cfg = _cfg(markov, root / "run", *overrides)
    return cfg, pretrain(cfg, data=markov[1])


def test_neurotrails_learns_and_keeps_every_density_exactly(long_run):
    _, result = long_run
    records = _train(result.out_dir)
    assert [r["step"] for r in records] == list(range(EVERY, LONG + 1, EVERY))
    assert records[-1]["loss"] <= 0.8 * records[0]["loss"], (records[0], records[-1])
    weights, sparse = _state(result.out_dir, LONG)
    names = sparse["masks"].keys()
    # every Linear / Embedding weight is masked: embedding, 1 + 3 blocks x 7, 3 LM heads
    assert len(names) == 1 + 4 * 7 + 3
    shapes = [tuple(weights[n].shape) for n in names]
    expected = {
        n: math.ceil(d * math.prod(s)) / math.prod(s)
        for n, s, d in zip(names, shapes, erk_densities(shapes, 0.5))
    }
    total = sum(math.prod(s) for s in shapes)
    for record in records:
        assert record["mask_updates"] == 1 and record["mask_changed"] > 0, record["step"]
        for name, density in expected.items():  # exactly ceil(d_l N_l) after every update
            assert record[f"density/{name}"] == density, (record["step"], name)
        assert record["density"] == pytest.approx(0.5, abs=1e-3)
        assert record["density"] == pytest.approx(
            sum(expected[n] * math.prod(s) for n, s in zip(names, shapes)) / total, abs=1e-12
        )
    # the cosine-decayed fraction of the last update (step 200 of 200) is the final 0.005
    assert records[-1]["prune_fraction"] == pytest.approx(0.005)
    assert records[0]["prune_fraction"] == pytest.approx(
        0.005 + 0.495 * (1 + math.cos(math.pi * EVERY / LONG)) / 2
    )
    for name, mask in sparse["masks"].items():  # masked weights are exactly zero
        assert int(mask.sum()) == round(expected[name] * mask.numel())
        assert not weights[name][~mask].any(), name
    assert result.density == pytest.approx(records[-1]["density"])


def test_the_loss_is_the_sum_of_the_heads_losses(long_run):
    _, result = long_run
    for record in _train(result.out_dir):
        heads = [record[f"loss/head{k}"] for k in range(3)]
        assert record["loss"] == pytest.approx(sum(heads), rel=1e-6)  # fp32 sum
        assert all(h < record["loss"] / 2 for h in heads)  # a sum, not a mean


def test_validation_is_the_combined_prediction_and_each_head(long_run, markov):
    """The validation record against the saved final model: perplexity of the mean of the
    heads' logits, each head's cross-entropy, their disagreement."""
    from transformers import AutoModelForCausalLM  # the type: registered by sparse_ft.multi_head

    _, result = long_run
    record = [r for r in read_metrics(result.out_dir) if r["split"] == "validation"][-1]
    model = AutoModelForCausalLM.from_pretrained(result.out_dir / "final").eval()
    blocks = markov[1].validation.gather(range(4 * 4))  # eval_batches x batch_size
    with torch.no_grad():
        out = model(input_ids=blocks[:, :-1])
    targets = blocks[:, 1:].reshape(-1)

    def ce(logits):
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets).item()

    mean = torch.stack(out.head_logits).mean(0)
    assert record["loss"] == pytest.approx(ce(mean), rel=1e-5)
    heads = [ce(z) for z in out.head_logits]
    for k, loss in enumerate(heads):
        assert record[f"loss/head{k}"] == pytest.approx(loss, rel=1e-5)
    assert record["ensemble_gain"] == pytest.approx(sum(heads) / 3 - ce(mean), abs=1e-5)
    assert record["disagreement"] == pytest.approx(head_disagreement(out.head_logits), abs=1e-6)
    assert result.final_heads == {
        k: v for k, v in record.items() if "/" in k or k in ("ensemble_gain", "disagreement")
    }


def test_validation_combines_bf16_heads_in_float32(long_run, markov):
    """Under bf16 autocast the heads' logits are bf16: the combined prediction is the mean of
    the heads upcast to float32 (not a bf16 mean), each head's loss its float32 CE."""
    from transformers import AutoModelForCausalLM

    _, result = long_run
    model = AutoModelForCausalLM.from_pretrained(result.out_dir / "final").eval()
    blocks = markov[1].validation
    cpu = torch.device("cpu")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        scored, extras = _multi_head_validation(model, blocks, 4, 8, cpu)
        outs = [model(input_ids=blocks.gather(range(i, i + 4))[:, :-1]) for i in (0, 4)]
    targets = torch.cat([blocks.gather(range(i, i + 4))[:, 1:].reshape(-1) for i in (0, 4)])

    def ce(combine):
        logits = torch.cat([combine(out.head_logits).flatten(0, 1) for out in outs])
        return F.cross_entropy(logits.float(), targets).item()

    assert all(z.dtype == torch.bfloat16 for z in outs[0].head_logits)
    fp32 = ce(lambda heads: torch.stack([z.float() for z in heads]).mean(0))
    bf16 = ce(lambda heads: torch.stack(heads).mean(0))
    assert scored.loss == pytest.approx(fp32, rel=1e-6)
    assert abs(fp32 - bf16) > 1e-5 * fp32  # the bf16 mean is measurably other
    for k in range(3):
        assert extras[f"loss/head{k}"] == pytest.approx(ce(lambda h, k=k: h[k]), rel=1e-6)


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler")  # the skipped step
def test_an_fp16_step_the_scaler_skips_still_counts(markov, tmp_path, monkeypatch):
    """fp16 with a scaler whose first scale (2^60) overflows the fp16 gradients and whose
    backoff (2^-60) then sets it to 1: step 1 is skipped, steps 2-8 apply. The DST step count is
    the run's step at every checkpoint (1 after the skipped step), the updates (every 4) fall at
    steps 4 and 8 with p(4) of T = 8, and the scale ends at exactly 1 (one skip)."""

    class Overflowing(torch.amp.GradScaler):
        def __init__(self, device: str = "cpu") -> None:
            super().__init__(device, init_scale=2.0**60, backoff_factor=2.0**-60)

    monkeypatch.setattr(torch.amp, "GradScaler", Overflowing)
    run = tmp_path / "fp16"
    fp16 = ("train.precision=fp16", "train.steps=8", "train.save_every=1")
    pretrain(_cfg(markov, run, *HEADS, *SPARSE, *fp16), data=markov[1])
    for step in range(1, 9):
        state = torch_load_safe(run / "checkpoints" / f"step_{step}" / "scheduler.pt")
        assert state["sparsity"]["step_count"] == step
        assert state["grad_scaler"]["scale"] == 1.0  # backed off once, at step 1, never again
    records = _train(run)
    assert [r["mask_updates"] for r in records] == [0, 0, 0, 1, 0, 0, 0, 1]
    assert records[3]["prune_fraction"] == pytest.approx(
        0.005 + 0.495 * (1 + math.cos(math.pi * 4 / 8)) / 2
    )


@pytest.fixture(scope="module")
def short_runs(markov, tmp_path_factory):
    """12 steps of NeuroTrails (an update every 4 steps): uninterrupted; stopped at step 6
    (between updates) and resumed with the global RNG disturbed; with activation checkpointing."""
    root = tmp_path_factory.mktemp("neurotrails_short")
    data = markov[1]
    pretrain(_cfg(markov, root / "straight", *HEADS, *SPARSE), data=data)
    pretrain(_cfg(markov, root / "resumed", *HEADS, *SPARSE), stop_at=6, data=data)
    torch.manual_seed(123)
    pretrain(_cfg(markov, root / "resumed", *HEADS, *SPARSE, "train.resume=true"), data=data)
    checkpointed = "train.activation_checkpointing=true"
    pretrain(_cfg(markov, root / "checkpointed", *HEADS, *SPARSE, checkpointed), data=data)
    return root


def test_resume_between_updates_is_bitwise(short_runs):
    straight = _state(short_runs / "straight", 12)
    _assert_same_state(straight, _state(short_runs / "resumed", 12))
    assert _timeless(short_runs / "straight") == _timeless(short_runs / "resumed")
    # the run stopped after the first update: its masks differ from the end's, which the resume
    # restored rather than redrew
    _, halfway = _state(short_runs / "resumed", 6)
    assert halfway["step_count"] == 6
    assert any(not torch.equal(m, straight[1]["masks"][n]) for n, m in halfway["masks"].items())


def test_activation_checkpointing_trains_the_same(short_runs):
    _assert_same_state(_state(short_runs / "straight", 12), _state(short_runs / "checkpointed", 12))
    assert _timeless(short_runs / "straight") == _timeless(short_runs / "checkpointed")


@pytest.mark.parametrize(
    ("arm", "overrides"),
    [
        ("ensemble", ("model.heads={count: 3, blocks_in_head: all}",)),
        ("single_sparse", SPARSE),
    ],
)
def test_the_other_arms_train(markov, tmp_path, arm, overrides):
    """The dense full ensemble (3 whole models, summed losses) and one sparse model."""
    run = tmp_path / arm
    result = pretrain(_cfg(markov, run, *overrides, "train.steps=8"), data=markov[1])
    records = _train(run)
    assert len(records) == 8 and records[-1]["loss"] < records[0]["loss"]
    weights = read_model_state(run / "checkpoints" / "step_8")
    if arm == "ensemble":
        assert result.density is None and "density" not in records[0]
        for record in records:
            heads = [record[f"loss/head{k}"] for k in range(3)]
            assert record["loss"] == pytest.approx(sum(heads), rel=1e-6)  # fp32 sum
        assert result.final_heads["ensemble_gain"] > 0  # mean of 3 models beats their mean loss
        assert len([n for n in weights if n.endswith("embed_tokens.weight")]) == 3
    else:
        assert "loss/head0" not in records[0] and result.final_heads is None
        assert all(r["density"] == pytest.approx(0.5, abs=1e-3) for r in records)
        masks = torch_load_safe(run / "checkpoints" / "step_8" / "scheduler.pt")["sparsity"]
        assert set(masks["masks"]) == {
            n for n in weights if n.endswith("weight") and weights[n].dim() == 2
        }
        for name, mask in masks["masks"].items():
            assert not weights[name][~mask].any(), name


# --- 2 processes ------------------------------------------------------------------------------

# one micro-batch of 2 blocks per process, no clipping; the 1-process run takes the same 4 blocks
# as 2 micro-batches of 2: both sum the same two half-batch gradients
# (validation: the same 8 blocks, 2 per forward pass)
TWO = ("train.batch_size=2", "train.grad_accum=1", "train.grad_clip=null", "train.eval_batches=2")
ONE = ("train.batch_size=2", "train.grad_accum=2", "train.grad_clip=null", "train.eval_batches=4")


@pytest.fixture(scope="module")
def launched(markov, tmp_path_factory):
    root = tmp_path_factory.mktemp("neurotrails_two")
    jobs = [
        {
            "kind": "pretrain",
            "config": _cfg(
                markov, root / p, *HEADS, *SPARSE, *TWO, f"train.parallelism={p}"
            ).to_dict(),
        }
        for p in ("ddp", "fsdp2")
    ]
    (root / "jobs.json").write_text(json.dumps(jobs))
    worker = __file__.replace("test_pretrain_neurotrails.py", "_fsdp_worker.py")
    run_torchrun(worker, root / "jobs.json", nproc=2, timeout=600)
    pretrain(_cfg(markov, root / "one", *HEADS, *SPARSE, *ONE), data=markov[1])
    return root


@pytest.mark.distributed
def test_two_ddp_processes_train_as_one_bitwise(launched):
    """Weights, masks, step count and every logged loss bit for bit (validation: to rounding)."""
    two, one = launched / "ddp", launched / "one"
    _assert_same_state(_state(two, 12), _state(one, 12))
    for a, b in zip(_timeless(two), _timeless(one), strict=True):
        if b["split"] == "validation":  # its batches are summed over the processes
            for key in [k for k in b if k != "split"]:
                assert a.pop(key) == pytest.approx(b.pop(key), rel=1e-6), key
        assert a == b


@pytest.mark.distributed
def test_fsdp2_shards_train_as_one(launched):
    """FSDP2 (every head's blocks sharded; DynamicSparsity on DTensor shards with full masks):
    the same masks bit for bit and weights to fp32 rounding (measured: losses equal bit for bit
    up to step 6, then within 1 ulp; weights within 2e-6). Every masked weight is zero in both
    processes' shards: both applied rank 0's masks."""
    two, one = launched / "fsdp2", launched / "one"
    (weights_two, sparse_two), (weights_one, sparse_one) = _state(two, 12), _state(one, 12)
    assert sparse_two["step_count"] == sparse_one["step_count"] == 12
    for name, mask in sparse_one["masks"].items():
        assert torch.equal(sparse_two["masks"][name], mask), name
        assert not weights_two[name][~mask].any(), name
    for name, value in weights_one.items():
        torch.testing.assert_close(weights_two[name], value, atol=1e-5, rtol=1e-4)
    for a, b in zip(_train(two), _train(one), strict=True):
        for key in ("loss", "loss/head0", "loss/head1", "loss/head2"):
            assert a[key] == pytest.approx(b[key], rel=1e-5), (a["step"], key)
        assert {k: v for k, v in a.items() if k.startswith(("density", "mask"))} == {
            k: v for k, v in b.items() if k.startswith(("density", "mask"))
        }


# --- the saved model --------------------------------------------------------------------------

_RELOAD = """
import sys, torch
import sparse_ft.multi_head
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(sys.argv[1]).eval()
ids = torch.load(sys.argv[2])
with torch.no_grad():
    out = model(input_ids=ids)
torch.save({"type": type(model).__name__, "logits": out.logits, "heads": out.head_logits}, sys.argv[3])
"""


def test_final_folder_reloads_in_a_fresh_process(long_run, markov, tmp_path):
    cfg, result = long_run
    weights, _ = _state(result.out_dir, LONG)
    model = build_model(cfg.model, len(markov[1].tokenizer), BLOCK)
    model.load_state_dict(weights)  # the checkpoint the final folder was exported from
    ids = markov[1].validation.gather(range(2))[:, :-1]
    torch.save(ids, tmp_path / "ids.pt")
    run_python(_RELOAD, result.out_dir / "final", tmp_path / "ids.pt", tmp_path / "out.pt")
    got = torch.load(tmp_path / "out.pt")
    assert got["type"] == "MultiHeadForCausalLM"
    with torch.no_grad():
        want = model.eval()(input_ids=ids)
    assert torch.equal(got["logits"], want.logits)
    for a, b in zip(got["heads"], want.head_logits, strict=True):
        assert torch.equal(a, b)

"""`train.parallelism=fsdp2` on 2 gloo processes against 1 process, and sharded checkpoints across
world sizes and parallelisms.

Every 2-process job runs in ONE torchrun launch (`_fsdp_worker.py`: imports cost seconds per
launch); the 1-process references run in this process. A 2-process run takes half the per-process
batch (2 blocks x 2 micro-batches x 2 processes = the 1-process run's 4 x 2), so both take the
same optimizer steps up to fp32 summation order: parameters are compared with the fp32 tolerance
of `layerwise_core.testing` (atol 1e-5, rtol 1e-4) after 10 steps, losses to 1e-5 relative.
"""

from __future__ import annotations

import json

import pytest
import torch

from layerwise.train import read_metrics, read_model_state
from layerwise.train.metrics import TIMING_FIELDS
from layerwise_core.testing import assert_close, run_torchrun

STEPS = 10
TWO = ("train.parallelism=fsdp2", "train.batch_size=2", "train.grad_accum=2")
ONE = ("train.batch_size=4", "train.grad_accum=2")
# each 2-process run batches several switches (incompatible ones apart: Mix-LN needs a dense
# Llama; mdm builds a bidirectional Llama whatever model.mlp says)
SWITCHES = {
    "lns_spam_alphadecay_meap_ac": (
        "model.norm=lns",
        "optimizer=spam",
        "optimizer.density=0.5",  # sparse momentum: masks and moments sharded like the weights
        "optimizer.weight_decay=0.1",  # AlphaDecay scales it per module (SPAM's default is 0)
        "spectral=alphadecay",
        "spectral.interval=3",
        "spectral.min_eigs=4",
        "objective=meap",
        "train.activation_checkpointing=true",
    ),
    "mixln_stablespam_llr_clip": (
        "model.norm=mix_ln",
        "optimizer=stable_spam",
        "spectral=llr",
        "spectral.interval=3",
        "spectral.min_eigs=4",
        "train.grad_clip=0.5",  # clips in most steps (the gradient norm is ~1)
    ),
    "coe_meap_per_sequence": (
        "model.mlp=coe",
        "model.mlp.num_experts=4",
        "model.mlp.top_k=2",
        "objective=meap",
        "objective.mask_mode=per_sequence",
    ),
    "moe_lns": ("model.mlp=moe", "model.mlp.num_experts=4", "model.mlp.top_k=2", "model.norm=lns"),
    "mdm_lns": ("objective=mdm", "model.norm=lns"),  # a bidirectional Llama (Mix-LN refuses it)
}
# the resume runs: SPAM with sparse momentum (the dense round trip of its moments) and a mask
# redraw every 4 steps (from the restored RNG), a checkpoint at step 5
RESUME = (
    "optimizer=spam",
    "optimizer.density=0.5",
    "optimizer.reset_interval=4",
    "train.save_every=5",
)
# fake quantisation is discontinuous: a weight that moves by 1e-7 across a rounding boundary moves
# its quantised value by a whole step, so no two fp32 summation orders stay within fp32
# tolerance of each other (1 vs 2 processes: 1e-3 after 10 steps). Sharding itself is exact:
# FSDP2 equals DDP bit for bit on the same per-process batches (no clipping, whose norm is a sum
# in another order).
# one micro-batch per step: FSDP2 reduces after every micro-batch, DDP once per step (another sum
# order as soon as grad_accum > 1)
QUANT = (
    "model.quant.format=int4",
    "train.grad_clip=null",
    "train.batch_size=4",
    "train.grad_accum=1",
)
# a learning rate that blows the weights up until the loss is NaN (test_user_errors.py)
DIVERGES = ("optimizer.lr=1e3", "train.grad_clip=null", "train.steps=20", "train.save_every=2")


def _params(run, step=STEPS):
    return read_model_state(run / "checkpoints" / f"step_{step}")


def _train(run):
    return [r for r in read_metrics(run) if r["split"] == "train"]


def _assert_same_training(two, one):
    """Parameters within fp32 tolerance, every logged loss within 1e-5 relative, same tokens."""
    a, b = _params(two), _params(one)
    assert a.keys() == b.keys()
    for name in b:
        assert_close(a[name], b[name])
    logs_a, logs_b = _train(two), _train(one)
    assert [r["tokens"] for r in logs_a] == [r["tokens"] for r in logs_b]
    assert len(logs_a) == STEPS
    # throughput in every train record; no MFU on a CPU (no peak FLOP/s to divide by)
    assert all(r["tokens_per_s"] > 0 and "mfu" not in r for r in logs_a + logs_b)
    for x, y in zip(logs_a, logs_b):
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-5), x["step"]


def _timeless(run):
    return [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in read_metrics(run)]


@pytest.fixture(scope="module")
def launched(small_data, tiny_run, tmp_path_factory):
    """Every 2-process job of this module, in one torchrun launch; returns the folder of runs."""
    from layerwise.train import pretrain

    root = tmp_path_factory.mktemp("fsdp")
    # a 1-process run stopped at step 5, resumed on 2 processes in the launch
    pretrain(tiny_run(root / "from_one", *RESUME, *ONE), stop_at=5, data=small_data)
    jobs = [
        {"kind": "pretrain", "config": tiny_run(root / name, *TWO, *switches).to_dict()}
        for name, switches in SWITCHES.items()
    ]
    resume = tiny_run(root / "straight", *RESUME, *TWO).to_dict()
    jobs += [
        {"kind": "pretrain", "config": resume},
        {
            "kind": "pretrain",
            "config": tiny_run(root / "stopped", *RESUME, *TWO).to_dict(),
            "stop_at": 5,
        },
        {"kind": "copy", "src": str(root / "stopped"), "dst": str(root / "two_to_one")},
        {
            "kind": "pretrain",
            "config": tiny_run(root / "stopped", *RESUME, *TWO, "train.resume=true").to_dict(),
        },
        {
            "kind": "pretrain",
            "config": tiny_run(root / "from_one", *RESUME, *TWO, "train.resume=true").to_dict(),
        },
        # a DDP checkpoint, resumed under FSDP2: one format for both
        {
            "kind": "pretrain",
            "config": tiny_run(root / "from_ddp", *RESUME, *TWO, "train.parallelism=ddp").to_dict(),
            "stop_at": 5,
        },
        {
            "kind": "pretrain",
            "config": tiny_run(root / "from_ddp", *RESUME, *TWO, "train.resume=true").to_dict(),
        },
        {"kind": "pretrain", "config": tiny_run(root / "quant_fsdp2", *TWO, *QUANT).to_dict()},
        {
            "kind": "pretrain",
            "config": tiny_run(root / "quant_ddp", *TWO, *QUANT, "train.parallelism=ddp").to_dict(),
        },
        {
            "kind": "pretrain",
            "config": tiny_run(root / "bf16", *RESUME, *TWO, "train.precision=bf16").to_dict(),
        },
        {"kind": "precision", "out": str(root / "precision.json")},
        {
            "kind": "pretrain",
            "config": tiny_run(root / "diverged", *DIVERGES, *TWO).to_dict(),
            "diverges": str(root / "diverged.txt"),
        },
        {
            "kind": "logits",
            "config": resume,
            "checkpoint": str(root / "straight" / "checkpoints" / f"step_{STEPS}"),
            "out": str(root / "logits.pt"),
        },
    ]
    (root / "jobs.json").write_text(json.dumps(jobs))
    worker = __file__.replace("test_fsdp.py", "_fsdp_worker.py")
    run_torchrun(worker, root / "jobs.json", nproc=2, timeout=900)
    return root


@pytest.mark.distributed
@pytest.mark.parametrize("name", list(SWITCHES))
def test_fsdp2_two_processes_equal_one_process_for_every_switch(
    launched, small_data, tiny_run, name
):
    from layerwise.train import pretrain

    one = launched / f"{name}.one"
    pretrain(tiny_run(one, *ONE, *SWITCHES[name]), data=small_data)
    _assert_same_training(launched / name, one)
    if "spectral=alphadecay" in SWITCHES[name]:  # the gathered spectra gave the same alphas
        spectral = [r for r in read_metrics(launched / name) if r["split"] == "spectral"]
        reference = [r for r in read_metrics(one) if r["split"] == "spectral"]
        assert len(spectral) == len(reference) > 1
        for a, b in zip(spectral, reference):
            assert a.keys() == b.keys()
            for key in a:
                assert a[key] == pytest.approx(b[key], abs=1e-4), key


@pytest.mark.distributed
def test_resume_on_the_same_two_processes_is_bitwise(launched):
    straight, resumed = _params(launched / "straight"), _params(launched / "stopped")
    for name, value in straight.items():
        assert torch.equal(value, resumed[name]), name
    assert _timeless(launched / "straight") == _timeless(launched / "stopped")
    assert not torch.equal(
        _params(launched / "stopped", 5)["lm_head.weight"], straight["lm_head.weight"]
    )


@pytest.mark.distributed
def test_resume_from_two_processes_on_one(launched, small_data, tiny_run):
    from layerwise.train import pretrain

    one = launched / "straight.one"
    pretrain(tiny_run(one, *RESUME, *ONE), data=small_data)
    _assert_same_training(launched / "straight", one)  # the 2-process run is the 1-process one
    resumed = launched / "two_to_one"  # a copy of the 2-process run stopped at step 5
    cfg = tiny_run(resumed, *RESUME, *ONE, "train.parallelism=ddp", "train.resume=true")
    assert pretrain(cfg, data=small_data).step == STEPS
    _assert_same_training(resumed, one)
    history = [json.loads(line) for line in (resumed / "history.jsonl").read_text().splitlines()]
    assert history[-1]["changes"] == {
        "processes": [2, 1],
        "train.batch_size": [2, 4],
        "train.parallelism": ["fsdp2", "ddp"],
        "train.out_dir": [str(launched / "stopped"), str(resumed)],
    }


@pytest.mark.distributed
def test_resume_from_one_process_on_two(launched, small_data, tiny_run):
    from layerwise.train import pretrain

    one = launched / "from_one.straight"
    pretrain(tiny_run(one, *RESUME, *ONE), data=small_data)
    _assert_same_training(launched / "from_one", one)
    history = [
        json.loads(line)
        for line in (launched / "from_one" / "history.jsonl").read_text().splitlines()
    ]
    assert history[-1]["changes"]["processes"] == [1, 2]


@pytest.mark.distributed
def test_a_ddp_checkpoint_resumes_under_fsdp2(launched):
    _assert_same_training(launched / "from_ddp", launched / "straight")
    state = json.loads(
        (launched / "from_ddp" / "checkpoints" / "step_5" / "trainer_state.json").read_text()
    )
    assert state["parallelism"] == "ddp" and state["world_size"] == 2


@pytest.mark.distributed
def test_fsdp2_equals_ddp_bitwise_with_fake_quantisation(launched):
    fsdp2, ddp = _params(launched / "quant_fsdp2"), _params(launched / "quant_ddp")
    for name, value in ddp.items():
        assert torch.equal(fsdp2[name], value), name
    # the logged gradient norm is a sum over shards in FSDP2: equal to fp32 rounding only
    fsdp2_log, ddp_log = _timeless(launched / "quant_fsdp2"), _timeless(launched / "quant_ddp")
    for a, b in zip(fsdp2_log, ddp_log, strict=True):
        if "grad_norm" in b:
            assert a.pop("grad_norm") == pytest.approx(b.pop("grad_norm"), rel=1e-6)
        assert a == b


@pytest.mark.distributed
def test_bf16_mixed_precision_policy(launched):
    report = json.loads((launched / "precision.json").read_text())
    # the sharded parameters and their gradients stay fp32; the layer computes in bf16
    assert report == {
        "compute_weight": "torch.bfloat16",
        "compute_input": "torch.bfloat16",
        "stored": "torch.float32",
        "stored_is_shard": True,
        "grad": "torch.float32",
    }
    # the bf16 run follows the fp32 one within bf16's tolerance (1.6e-2), and is not fp32
    bf16, fp32 = _train(launched / "bf16"), _train(launched / "straight")
    differences = [abs(a["loss"] - b["loss"]) / b["loss"] for a, b in zip(bf16, fp32)]
    assert max(differences) < 1.6e-2
    assert max(differences) > 1e-5


@pytest.mark.distributed
def test_exported_final_folder_gives_the_logits_of_the_sharded_model(launched):
    """final/ (exported on rank 0 from the DCP checkpoint) vs the checkpoint loaded into an
    FSDP2-sharded model on 2 processes (`load_training_state`)."""
    from layerwise.train import load_saved_model

    sharded = torch.load(launched / "logits.pt")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each torchrun worker: the same matmul reduction order
    try:
        model = load_saved_model(launched / "straight" / "final")
        with torch.no_grad():
            logits = model(input_ids=sharded["ids"]).logits
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(logits, sharded["logits"])


@pytest.mark.distributed
def test_export_any_checkpoint_of_a_sharded_run(launched, small_data, tiny_run, tmp_path):
    """`export_checkpoint` of a mid-run FSDP2 checkpoint, in one process: the Hugging Face folder
    gives the logits of the checkpoint loaded into the bare model (`load_training_state`)."""
    from layerwise.train import (
        PretrainConfig,
        build_model,
        export_checkpoint,
        load_saved_model,
        load_training_state,
    )
    from layerwise.train.optimizers import build_optimizer

    checkpoint = launched / "stopped" / "checkpoints" / "step_5"
    out = export_checkpoint(checkpoint, tmp_path / "exported")
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    cfg = PretrainConfig.from_dict(tiny_run(tmp_path / "unused", *RESUME, *ONE).to_dict())
    tokenizer = small_data.tokenizer
    model = build_model(cfg.model, len(tokenizer), cfg.train.block_size, tokenizer.eos_token_id)
    load_training_state(checkpoint, model, build_optimizer(cfg, model))
    ids = small_data.validation.gather(range(2))[:, :-1]
    with torch.no_grad():
        want = model.eval()(input_ids=ids).logits
        got = load_saved_model(out)(input_ids=ids).logits
    assert torch.equal(got, want)


@pytest.mark.distributed
def test_divergence_guard_stops_every_process_before_the_update(launched):
    """The loss is all-reduced and the gradient norm is that of the full (sharded) gradient: every
    process sees the same non-finite value and stops at the same step, before the update."""
    message = (launched / "diverged.txt").read_text()
    assert message.startswith("training diverged: the ")
    step = int(message.split(" at step ")[1].split(";")[0])
    kept = launched / "diverged" / "checkpoints" / f"step_{(step - 1) // 2 * 2}"
    assert f"the last good checkpoint, {kept}, is intact" in message
    for tensor in read_model_state(kept).values():
        assert torch.isfinite(tensor).all()
    assert not (launched / "diverged" / "final").exists()
    assert max(r["step"] for r in read_metrics(launched / "diverged")) == step - 1

"""The sparsity-vs-depth study (issue 19, spec studies.md A): the model switches of `layerwise
pretrain` (grouped-query attention, context length at fixed tokens per step, the MoE switch with
its balance and z-losses), per-layer output variance logged in training, the `sparsity-depth`
study's arms and a 20k-token smoke of every stage, the depth recipes."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml

from layerwise.models import ModelConfig, build_model
from layerwise.train import PretrainConfig, pretrain
from layerwise.train.config import TrainConfig
from layerwise.train.layer_variance import TrainingVarianceLog
from layerwise_core import ConfigError

VOCAB, T = 96, 16
TINY = {"preset": "llama-tiny", "overrides": {"num_hidden_layers": 3}}  # d 64, 4 heads, ffn 176
STANDARD_MOE = {  # a Pre-LN MoE block h + MoE(RMSNorm(h)), no shared expert
    "name": "moe",
    "num_shared_experts": 0,
    "moe_intermediate_size": 176,
    "inner_residual": False,
    "outer_residual": True,
}


def _ids(batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, T), generator=torch.Generator().manual_seed(seed))


def _model(**fields):
    return build_model(ModelConfig.model_validate({**TINY, **fields}), VOCAB, T, seed=0).eval()


# --- grouped-query attention ------------------------------------------------------------------


def test_gqa_groups_of_one_equals_multi_head_attention_bit_for_bit():
    mha, gqa = _model(), _model(n_kv_heads=4)  # 4 heads: G = 1
    assert gqa.config.num_key_value_heads == mha.config.num_attention_heads == 4
    with torch.no_grad():
        assert torch.equal(gqa(_ids()).logits, mha(_ids()).logits)


def test_gqa_equals_multi_head_attention_with_each_kv_head_repeated_over_its_group():
    gqa = _model(n_kv_heads=2)  # G = 2: query heads 0, 1 read kv head 0; heads 2, 3 kv head 1
    assert gqa.config.num_key_value_heads == 2
    assert gqa.model.layers[0].self_attn.k_proj.weight.shape == (2 * 16, 64)
    mha = _model()
    state = dict(gqa.state_dict())
    for name, value in list(state.items()):
        if name.endswith(("k_proj.weight", "v_proj.weight")):
            state[name] = value.view(2, 16, 64).repeat_interleave(2, dim=0).reshape(64, 64)
    mha.load_state_dict(state)
    with torch.no_grad():
        torch.testing.assert_close(mha(_ids()).logits, gqa(_ids()).logits)
    # a model whose k/v weights differ per query head is not the GQA model (the test can fail)
    with torch.no_grad():
        assert not torch.allclose(_model(n_kv_heads=4)(_ids()).logits, gqa(_ids()).logits)


def test_n_kv_heads_errors_name_the_fix():
    with pytest.raises(ConfigError, match=r"does not divide the 4 attention heads.*\[1, 2, 4\]"):
        PretrainConfig.from_dict({"model": {**TINY, "n_kv_heads": 3}})
    with pytest.raises(ConfigError, match="set only model.n_kv_heads"):
        PretrainConfig.from_dict(
            {"model": {"overrides": {"num_key_value_heads": 4}, "n_kv_heads": 2}}
        )
    # the heads of the overrides count: 8 heads take n_kv_heads 8
    ModelConfig.model_validate({"overrides": {"num_attention_heads": 8}, "n_kv_heads": 8})


# --- context length at fixed tokens per step ---------------------------------------------------


@pytest.mark.parametrize(("block", "batch"), [(32, 128), (64, 64), (128, 32), (256, 16)])
def test_tokens_per_step_sets_the_batch(block, batch):
    cfg = TrainConfig(tokens_per_step=4096, block_size=block)
    assert (cfg.batch_size, cfg.batch_size * cfg.block_size) == (batch, 4096)
    accum = TrainConfig(tokens_per_step=4096, block_size=block, grad_accum=2)
    assert accum.batch_size * accum.grad_accum * block == 4096
    # the written config reads back the same (batch_size and tokens_per_step agree)
    assert TrainConfig.model_validate(cfg.to_dict()) == cfg


def test_tokens_per_step_errors_name_the_fix():
    with pytest.raises(ConfigError, match="not a multiple of train.block_size x train.grad_acc"):
        PretrainConfig.from_dict({"train": {"tokens_per_step": 4096, "block_size": 96}})
    with pytest.raises(ConfigError, match="remove train.batch_size"):
        PretrainConfig.from_dict(
            {"train": {"tokens_per_step": 4096, "block_size": 128, "batch_size": 16}}
        )
    with pytest.raises(ConfigError, match="multiple of train.log_every=2"):
        PretrainConfig.from_dict({"train": {"log_every": 2, "log_layer_variance_every": 5}})


# --- the MoE switch ----------------------------------------------------------------------------


def test_moe_one_expert_top1_equals_the_dense_mlp():
    dense = _model()
    moe = _model(mlp={**STANDARD_MOE, "num_experts": 1, "top_k": 1})
    # attention, norms, embeddings and head share their names, hence their initial values
    for name, param in moe.named_parameters():
        if ".mlp." not in name:
            assert torch.equal(param, dense.get_parameter(name)), name
    with torch.no_grad():
        for block, reference in zip(moe.model.layers, dense.model.layers):
            mlp = reference.mlp
            block.mlp.experts.gate_up_proj.copy_(
                torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight])[None]
            )
            block.mlp.experts.down_proj.copy_(mlp.down_proj.weight[None])
        torch.testing.assert_close(moe(_ids()).logits, dense(_ids()).logits)
        # Chain-of-Experts' wiring (z_0 + update, the block input not added back) is another model
        chain = _model(
            mlp={
                **STANDARD_MOE,
                "num_experts": 1,
                "top_k": 1,
                "inner_residual": True,
                "outer_residual": False,
            }
        )
        chain.load_state_dict(moe.state_dict())
        assert (chain(_ids()).logits - dense(_ids()).logits).abs().max() > 1e-2


def test_router_z_loss_by_hand():
    from coe_moe import router_z_loss

    # log-partitions: log(1 + 1) = log 2 and log(3 + 3) = log 6
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), math.log(3.0)]])
    expected = (math.log(2.0) ** 2 + math.log(6.0) ** 2) / 2
    assert router_z_loss(logits).item() == pytest.approx(expected, rel=1e-6)
    assert router_z_loss(logits.half()).dtype == torch.float32


def test_moe_aux_loss_is_balance_over_the_batch_plus_z_loss():
    from coe_moe import load_balancing_loss, router_z_loss

    mlp = {
        **STANDARD_MOE,
        "num_experts": 4,
        "top_k": 2,
        "moe_intermediate_size": 16,
        "aux_loss_coef": 0.01,
        "balance_scope": "batch",
        "router_z_loss_coef": 0.001,
    }
    model = _model(mlp=mlp).train()
    ids = _ids(batch=3)
    out = model(input_ids=ids, labels=ids)
    logits = out.router_logits
    assert len(logits) == 3  # one router call per layer
    balance = sum(load_balancing_loss(x, 2, 1) for x in logits)  # the whole batch as one group
    z = sum(router_z_loss(x) for x in logits)
    torch.testing.assert_close(out.aux_loss, 0.01 * balance + 0.001 * z)
    # per-sequence balance (the CoE paper's default) is another number on this batch
    per_sequence = sum(load_balancing_loss(x, 2, 3) for x in logits)
    assert not torch.allclose(balance, per_sequence)
    # balanced selections give the batch loss 1 whatever the probabilities: by hand, 2 experts,
    # top-1, the first two tokens pick expert 0 and the last two expert 1
    hand = torch.tensor([[2.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 3.0]])
    assert load_balancing_loss(hand, 1, 1).item() == pytest.approx(1.0)
    with pytest.raises(ConfigError, match="router_z_loss_coef"):
        PretrainConfig.from_dict({"model": {**TINY, "mlp": {**mlp, "router_z_loss_coef": -1.0}}})


@pytest.mark.parametrize("norm", ["lns", "mix_ln"])
def test_switches_compose_with_the_norm_schemes(norm):
    mlp = {} if norm == "mix_ln" else {"mlp": {**STANDARD_MOE, "num_experts": 4, "top_k": 2}}
    plain = _model(n_kv_heads=2, **mlp)
    # Mix-LN: the first half of the 3 blocks (1) Post-LN
    scheme = {"scheme": norm, "post_ln_fraction": 0.5} if norm == "mix_ln" else norm
    scaled = _model(n_kv_heads=2, norm=scheme, **mlp)
    assert scaled.config.num_key_value_heads == 2
    with torch.no_grad():  # same weights, the norm scheme changes the function
        assert not torch.allclose(scaled(_ids()).logits, plain(_ids()).logits)


# --- per-layer output variance -----------------------------------------------------------------


def _variance(hidden: torch.Tensor) -> torch.Tensor:
    """mean over positions of the unbiased variance over channels, by hand"""
    centred = hidden - hidden.mean(-1, keepdim=True)
    return (centred.square().sum(-1) / (hidden.shape[-1] - 1)).mean()


def test_variance_monitor_reads_block_outputs_not_the_final_norm():
    model = _model()
    monitor = TrainingVarianceLog(model)
    final_input, mlp_out = [], []
    handles = [
        model.model.norm.register_forward_pre_hook(lambda m, a: final_input.append(a[0])),
        model.model.layers[1].mlp.register_forward_hook(lambda m, a, o: mlp_out.append(o)),
    ]
    with torch.no_grad():
        for seed in (0, 1):
            with monitor.armed():
                out = model(_ids(seed=seed), output_hidden_states=True)
            if seed == 0:
                first = out.hidden_states
    for handle in handles:
        handle.remove()
    record = monitor.record()
    monitor.close()
    assert set(record) == {
        *(
            f"{key}/{layer}"
            for key in ("layer_variance", "attn_variance", "mlp_variance")
            for layer in range(3)
        ),
        "layer_variance/last",
    }
    # the MLP update m_1 of block 1
    want = (_variance(mlp_out[0]) + _variance(mlp_out[1])) / 2
    assert record["mlp_variance/1"] == pytest.approx(want.item(), rel=1e-6)
    # blocks 0, 1: HF's hidden_states[l + 1]; the mean over the two armed forwards
    with torch.no_grad():
        second = model(_ids(seed=1), output_hidden_states=True).hidden_states
    for layer in (0, 1):
        want = _variance(first[layer + 1]) + _variance(second[layer + 1])
        assert record[f"layer_variance/{layer}"] == pytest.approx(want.item() / 2, rel=1e-6)
    last = (_variance(final_input[0]) + _variance(final_input[1])) / 2
    assert record["layer_variance/last"] == record["layer_variance/2"]
    assert record["layer_variance/last"] == pytest.approx(last.item(), rel=1e-6)
    # HF's last hidden state is post-final-norm: a different number (spec A.3.1's quirk)
    post_norm = _variance(first[-1]).item()
    assert abs(post_norm - record["layer_variance/last"]) > 1e-3 * record["layer_variance/last"]
    assert monitor.record() == {}  # reset: nothing armed since


def _records(folder):
    lines = (folder / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["split"] == "train"]


def test_layer_variance_logged_in_training_leaves_training_unchanged(
    small_data, tmp_path, tiny_run
):
    common = ("train.steps=4", "model.n_kv_heads=2")
    pretrain(tiny_run(tmp_path / "off", *common), data=small_data)
    pretrain(
        tiny_run(tmp_path / "on", *common, "train.log_layer_variance_every=2"), data=small_data
    )
    off, on = _records(tmp_path / "off"), _records(tmp_path / "on")
    assert [r["loss"] for r in on] == [r["loss"] for r in off]  # hooks only read
    assert [r["grad_norm"] for r in on] == [r["grad_norm"] for r in off]
    with_variance = [r["step"] for r in on if "layer_variance/last" in r]
    assert with_variance == [2, 4]
    record = on[3]
    assert record["layer_variance/last"] == record["layer_variance/1"] > 0  # llama-tiny: 2 blocks
    assert "layer_variance/2" not in record


# --- the study ---------------------------------------------------------------------------------


RUNNER_SET = ("train.out_dir", "train.seed", "train.save_every", "train.keep_last")


def _flat(cfg: PretrainConfig) -> dict:
    from layerwise.train.config import _flatten

    return {k: v for k, v in _flatten(cfg.to_dict()).items() if k not in RUNNER_SET}


def test_study_arms_follow_the_spec():
    from layerwise.studies import load_study, plan_jobs

    study = load_study("sparsity-depth")
    jobs = plan_jobs(study, "runs/unused")
    seeds = {}
    for job in jobs:
        seeds.setdefault(job.name.rsplit("-s", 1)[0], []).append(job.config.train.seed)
    three = {"L4", "L8", "L16", "L24", "wd0.3", "T256", "G4", "moe", "recipe"}
    assert {run for run, s in seeds.items() if s == [0, 1, 2]} == three
    assert {run for run, s in seeds.items() if s == [0, 1]} == set(seeds) - three
    assert len(jobs) == 3 * 9 + 2 * 6 == 39
    configs = {job.name: job.config for job in jobs if job.name.endswith("-s0")}
    base = _flat(configs["L16-s0"])
    # every arm differs from the L=16 baseline in its knob only
    knob_fields = {
        "L4-s0": {"model.overrides.num_hidden_layers": 4},
        "L8-s0": {"model.overrides.num_hidden_layers": 8},
        "L24-s0": {"model.overrides.num_hidden_layers": 24},
        "wd0-s0": {"optimizer.weight_decay": 0.0},
        "wd0.3-s0": {"optimizer.weight_decay": 0.3},
        "wd1.0-s0": {"optimizer.weight_decay": 1.0},
        "T32-s0": {"train.block_size": 32, "train.batch_size": 128},
        "T64-s0": {"train.block_size": 64, "train.batch_size": 64},
        "T256-s0": {"train.block_size": 256, "train.batch_size": 16},
        "G2-s0": {"model.n_kv_heads": 2},
        "G4-s0": {"model.n_kv_heads": 1},
        "lns-s0": {"model.norm.scheme": "lns"},
    }
    for name, fields in knob_fields.items():
        flat = _flat(configs[name])
        assert {k: v for k, v in flat.items() if base.get(k) != v} == fields, name
    for cfg in configs.values():
        train = cfg.train
        assert train.batch_size * train.block_size == 4096
        assert abs(train.steps * 4096 / 1e6 - 1) < 0.01  # 1M tokens per run
        assert train.log_layer_variance_every == 10
        assert (cfg.model.overrides["hidden_size"], cfg.model.n_heads) == (128, 4)
    assert base["model.overrides.num_hidden_layers"] == 16 and base["model.n_kv_heads"] == 4
    moe = configs["moe-s0"].model.mlp
    # matched active FFN parameters: top_k experts of 176 = the dense 352
    assert moe.top_k * moe.moe_intermediate_size == base["model.overrides.intermediate_size"]
    assert (moe.num_experts, moe.num_shared_experts, moe.aux_loss_coef) == (8, 0, 0.01)
    assert (moe.router_z_loss_coef, moe.inner_residual, moe.outer_residual) == (0.001, False, True)
    assert study.probe.window_tokens == 128 and study.report.curves == ["layer_variance/last"]


def test_recipe_arm_is_the_cpu_recipe():
    from layerwise.recipes import load_recipe
    from layerwise.studies import load_study, plan_jobs

    arm = next(j for j in plan_jobs(load_study("sparsity-depth"), "x") if j.name == "recipe-s0")
    recipe = _flat(load_recipe("depth-recipe-cpu"))
    ours = _flat(arm.config)
    # the cadences may differ; what is trained is the recipe
    cadence = ("train.eval_every", "train.eval_batches", "train.log_every")
    assert {k: v for k, v in ours.items() if k not in cadence} == {
        k: v for k, v in recipe.items() if k not in cadence
    }


def test_study_smoke_every_stage_runs(small_data, tmp_path):
    """20k tokens at L=4: a dense arm with every dense knob (GQA, context 32 at fixed tokens per
    step, decay 0.3, LNS) and the MoE arm, through every stage of the study."""
    from layerwise.studies import load_study, run_study
    from layerwise.studies.runner import resolve_study

    study = yaml.safe_load(resolve_study("sparsity-depth").read_text())
    study["base"]["data"] = {"vocab_size": 512, "max_documents": 20}  # small_data's cache
    study["base"]["model"]["overrides"]["num_hidden_layers"] = 4
    study["base"]["train"].update(
        steps=20,
        tokens_per_step=1024,
        block_size=64,
        eval_every=0,
        eval_batches=2,
        log_every=5,
        log_layer_variance_every=5,
    )
    study["base"]["schedule"]["warmup_steps"] = 2
    study["seeds"] = [0]
    moe = study["runs"]["moe"]
    study["runs"] = {
        "knobs": {
            "overrides": [
                "model.n_kv_heads=2",
                "train.block_size=32",
                "optimizer.weight_decay=0.3",
                "model.norm=lns",
            ],
            "tags": {"knob": "dense"},
        },
        "moe": {"overrides": moe["overrides"], "tags": {"knob": "moe"}},
    }
    study["probe"] = {
        "calibration_windows": 4,
        "eval_windows": 8,
        "window_tokens": 64,
        "batch_size": 4,
    }
    study["analyses"]["depth"] = {"name": "depth_metrics", "jacobian_rows": 8}  # sampled rows
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    out = tmp_path / "out"
    run_study(load_study(str(path)), out, jobs=1)
    results = json.loads((out / "results.json").read_text())
    for name, run in results["runs"].items():
        entry = run["seeds"]["0"]
        curve = entry["curves"]["layer_variance/last"]
        assert [step for step, _ in curve] == [5, 10, 15, 20], name
        assert all(v > 0 for _, v in curve)
        config = PretrainConfig.from_dict(
            yaml.safe_load((out / "runs" / f"{name}-s0" / "config.yaml").read_text())
        )
        tokens = config.train.steps * config.train.batch_size * config.train.block_size
        assert tokens == 20480
    analyses = {
        name: json.loads(
            (out / "runs" / f"{name}-s0" / "analyses" / "profile" / "step_20.json").read_text()
        )
        for name in ("knobs", "moe")
    }
    for record in analyses.values():
        assert "error" not in record, record.get("error")
        summary = record["summary"]
        assert len(record["details"]["variance"]) == 4
        assert summary["var_last"] == record["details"]["variance"][-1]
        # s_W(tau) grows with tau
        assert summary["weight_sparsity_0.01"] <= summary["weight_sparsity_0.05"]
        assert summary["weight_sparsity_0.05"] <= summary["weight_sparsity_0.1"]
    load = analyses["moe"]["details"]["expert_load"]
    assert len(load) == 4 and all(abs(sum(row) - 1) < 1e-5 for row in load)
    assert 0 <= analyses["moe"]["summary"]["expert_balance"] <= 1
    assert "expert_balance" not in analyses["knobs"]["summary"]
    for name in ("knobs", "moe"):
        depth = json.loads(
            (out / "runs" / f"{name}-s0" / "analyses" / "depth" / "step_20.json").read_text()
        )
        assert "error" not in depth, depth.get("error")
        summary = depth["summary"]
        assert 0 <= summary["usefulness"] <= 1 and summary["permutation"] >= 0
        assert summary["jacobian_mean"] > 0 and 0 < summary["attention_entropy"] <= 1
        assert math.isfinite(summary["causal"])
        assert len(depth["details"]["permutation"]["pairs"]) == 4 * 3 // 2
        # depth_probe's loss on the windows is the study's loss of the checkpoint
        base = depth["details"]["usefulness"]["base_loss"]
        assert base == pytest.approx(summary["loss"], rel=1e-5)
        ratios = depth["details"]["usefulness"]["loss_ratio"]
        assert summary["usefulness_excess"] == pytest.approx(sum(ratios) / len(ratios) - 1)
    assert "layer_variance/last" in (out / "report.md").read_text()


def test_report_tabulates_and_plots_metrics_by_depth(tmp_path):
    from layerwise.studies import write_report

    def seed(loss, useful):
        return {
            "status": "trained",
            "final": {"validation_loss": loss},
            "train_curve": [],
            "validation_curve": [],
            "curves": {},
            "analyses": {"depth": {"1": {"summary": {"usefulness": useful}}}},
        }

    results = {
        "study": "tiny",
        "description": "",
        "config": {
            "seeds": [0, 1],
            "checkpoints": [1.0],
            "probe": {"mdm_t": [0.5]},
            "analyses": {"depth": {"name": "depth_metrics"}},
            "report": {
                "versus": {
                    "tag": "depth",
                    "runs": ["L4", "L8"],
                    "metrics": ["loss", "depth/usefulness"],
                },
            },
        },
        "runs": {
            "L4": {"tags": {"depth": "4"}, "seeds": {"0": seed(2.0, 1.0), "1": seed(2.2, 0.5)}},
            "L8": {"tags": {"depth": "8"}, "seeds": {"0": seed(1.9, 0.75)}},
            "other": {"tags": {"depth": "16"}, "seeds": {"0": seed(9.0, 0.0)}},  # not chosen
        },
    }
    text = write_report(results, tmp_path).read_text()
    # mean and sample std by hand: (2.0, 2.2) -> 2.1 +- 0.1414; (1.0, 0.5) -> 0.75 +- 0.3536
    assert "| metric | depth 4 | depth 8 |" in text
    assert "| loss | 2.1 ± 0.14 (n=2) | 1.9 |" in text
    assert "| depth/usefulness | 0.75 ± 0.35 (n=2) | 0.75 |" in text
    assert "depth 16" not in text
    assert (tmp_path / "versus_depth.png").stat().st_size > 0

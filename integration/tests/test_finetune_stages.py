"""Resumable fine-tuning and stage pipelines (issue 23): a run stopped mid-way and resumed equals
the uninterrupted run bitwise (weights, losses, metrics) for every method, SEFT's armed gradient
collectors and LIFT's moved supports included; a two-stage pipeline interrupted inside stage 2
equals the uninterrupted pipeline; stage 2 starts from stage 1's merged model; finished stages
are skipped; bad stage lists are refused with one-line errors; [ntp, grpo] and [kd, grpo]
pipelines run end to end and resume exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from layerwise.finetune import (
    FinetuneConfig,
    PipelineConfig,
    finetune,
    format_prompt,
    generate_word_problems,
    run_pipeline,
    write_jsonl,
)
from layerwise_core import ConfigError, UsageError, load_safetensors


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny matrices: one intra-op thread is faster, and on a busy machine much faster (no
    spinning workers); the previous setting comes back after the module."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from layerwise.data import train_bpe_tokenizer
    from layerwise_core import tiny_llama

    root = tmp_path_factory.mktemp("stages")
    train = generate_word_problems(24, seed=0)
    write_jsonl(train, root / "train.jsonl")
    texts = [format_prompt(p["instruction"]) + p["answer"] for p in train]
    tokenizer = train_bpe_tokenizer(texts, vocab_size=300, min_frequency=1)
    for name, seed in (("model", 0), ("teacher", 1)):
        model = tiny_llama(
            seed=seed,
            vocab_size=len(tokenizer),
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            max_position_embeddings=512,
        )
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    return root


METHODS = {  # tiny ranks; LIFT refreshes and SEFT grows / re-prunes every 2 steps
    "full": {},
    "lora": {"r": 2},
    "lift": {"lora_rank": 2, "filter_rank": 4, "update_interval": 2},
    "seft": {"budget_rank": 2, "update_interval": 2, "drop_fraction": 0.2},
}


def _single(root: Path, method: str, out: str, **train) -> FinetuneConfig:
    return FinetuneConfig.from_dict(
        {
            "model": {"path": str(root / "model")},
            "data": {"train": str(root / "train.jsonl")},
            "method": {"name": method, **METHODS[method]},
            "prune": {"method": "wanda" if method == "seft" else "none"},
            "optimizer": {"lr": 1e-2, "betas": [0.9, 0.95], "eps": 1e-6, "weight_decay": 0.0},
            "schedule": {"warmup_ratio": 0.2},
            "train": {
                "steps": 5,
                "batch_size": 3,
                "grad_accum": 2,
                "log_every": 1,
                "save_every": 2,
                "out_dir": str(root / out),
                **train,
            },
        }
    )


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for path in sorted(folder.glob("*.safetensors")):
        out.update({f"{path.name}:{k}": v for k, v in load_safetensors(path)[0].items()})
    assert out, f"no safetensors in {folder}"
    return out


def _assert_same_tensors(a: Path, b: Path) -> None:
    ta, tb = _tensors(a), _tensors(b)
    assert ta.keys() == tb.keys()
    for key in ta:
        assert torch.equal(ta[key], tb[key]), key


def _metrics(folder: Path) -> list[dict]:
    lines = (folder / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "elapsed_s"} for line in lines]


@pytest.mark.parametrize("method", ["full", "lora", "lift", "seft"])
def test_single_run_stopped_twice_and_resumed_equals_uninterrupted(files, method):
    if method == "lora":
        pytest.importorskip("peft")
    whole = finetune(_single(files, method, f"whole-{method}"))
    part = _single(files, method, f"part-{method}")
    first = finetune(part, stop_at=2)
    assert first.stopped and first.steps == 2 and not (first.out_dir / "adapter").exists()
    latest = first.out_dir / "checkpoints" / "latest"
    assert latest.read_text().strip() == "step_2"
    with pytest.raises(
        UsageError, match="train.resume=true"
    ):  # a run is there: not silently redone
        finetune(part)
    resumed = part.with_overrides(["train.resume=true"])
    second = finetune(resumed, stop_at=3)
    assert second.resumed_from == 2 and second.stopped and second.steps == 3
    state = json.loads(
        (first.out_dir / "checkpoints" / "step_3" / "trainer_state.json").read_text()
    )
    assert not (first.out_dir / "checkpoints" / "step_2").exists()  # only the newest is kept
    if method == "seft":  # the checkpoints land where SEFT's gradient collectors are armed
        assert state["collectors"] and {v[0] for v in state["collectors"].values()} == {"grow"}
    third = finetune(resumed)
    assert third.resumed_from == 3 and third.steps == 5 and not third.stopped
    assert third.train_losses == whole.train_losses  # bitwise: the same floats
    assert _metrics(third.out_dir) == _metrics(whole.out_dir)
    saved = "final" if method == "full" else "adapter"
    _assert_same_tensors(whole.out_dir / saved, third.out_dir / saved)
    if method in ("lift", "seft"):  # the frozen weights that LIFT / SEFT changed (folded, pruned)
        for name, module in whole.model.sparse_modules().items():
            other = third.model.sparse_modules()[name]
            assert torch.equal(module.base_layer.weight, other.base_layer.weight), name
            assert torch.equal(module.indices, other.indices), name


def test_seft_resume_at_a_prune_phase_and_a_changed_config_is_refused(files):
    whole = finetune(_single(files, "seft", "whole-seft-prune", steps=4))
    part = _single(files, "seft", "part-seft-prune", steps=4)
    finetune(part, stop_at=2)
    ckpt = files / "part-seft-prune" / "checkpoints" / "step_2"
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert {v[0] for v in state["collectors"].values()} == {"prune"}  # re-prune armed at step 2
    with pytest.raises(UsageError, match=r"optimizer\.lr"):
        finetune(part.with_overrides(["train.resume=true", "optimizer.lr=0.5"]))
    resumed = finetune(part.with_overrides(["train.resume=true", "train.log_every=1"]))
    assert resumed.train_losses == whole.train_losses
    _assert_same_tensors(whole.out_dir / "adapter", resumed.out_dir / "adapter")


def _pipeline(root: Path, out: str, stages: list[dict], **train) -> PipelineConfig:
    return PipelineConfig.from_dict(
        {
            "model": {"path": str(root / "model")},
            "data": {"train": str(root / "train.jsonl")},
            "optimizer": {"lr": 1e-2, "weight_decay": 0.0},
            "schedule": {"warmup_ratio": 0.0},
            "train": {
                "steps": 4,
                "batch_size": 2,
                "log_every": 1,
                "save_every": 2,
                "out_dir": str(root / out),
                **train,
            },
            "stages": stages,
        }
    )


SFT_THEN_LORA = [
    {"name": "sft", "objective": "ntp", "method": "full", "train": {"steps": 3}},
    {"name": "lora", "method": {"name": "lora", "r": 2}, "optimizer": {"lr": 5e-2}},
]


def test_pipeline_interrupted_in_stage_two_equals_uninterrupted(files):
    pytest.importorskip("peft")
    whole = run_pipeline(_pipeline(files, "pipe-whole", SFT_THEN_LORA))
    assert list(whole.results) == ["sft", "lora"] and not whole.stopped
    assert whole.final == files / "pipe-whole" / "2-lora" / "final"
    cfg = _pipeline(files, "pipe-part", SFT_THEN_LORA)
    stopped = run_pipeline(cfg, stop_at=(2, 3))
    assert stopped.stopped and stopped.final is None
    assert stopped.results["lora"].steps == 3 and not (files / "pipe-part/2-lora/final").exists()
    again = run_pipeline(cfg)
    assert again.skipped == ["sft"] and again.results["lora"].resumed_from == 3
    assert not (files / "pipe-part" / "2-lora" / "checkpoints").exists()  # finished: removed
    for stage in ("1-sft", "2-lora"):
        a, b = files / "pipe-whole" / stage, files / "pipe-part" / stage
        _assert_same_tensors(a / "final", b / "final")
        assert _metrics(a) == _metrics(b)
    # stage 2 started from stage 1's model: its adapter merged onto 1-sft/final is 2-lora/final
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(files / "pipe-whole" / "1-sft" / "final")
    merged = PeftModel.from_pretrained(base, files / "pipe-whole" / "2-lora" / "adapter")
    merged = merged.merge_and_unload().state_dict()
    final = _tensors(files / "pipe-whole" / "2-lora" / "final")
    for key, value in final.items():
        assert torch.allclose(value, merged[key.split(":", 1)[1]], atol=1e-6), key
    sft = _tensors(files / "pipe-whole" / "1-sft" / "final")
    assert any(not torch.equal(final[k], sft[k]) for k in final)  # stage 2 trained


def test_finished_stages_are_skipped_and_a_changed_stage_is_refused(files, capsys):
    from layerwise.cli import main

    stages = [{"name": "lift", "method": {"name": "lift", **METHODS["lift"]}}]
    cfg = _pipeline(files, "pipe-skip", stages, steps=2)
    first = run_pipeline(cfg)
    final = files / "pipe-skip" / "1-lift" / "final"
    before = _tensors(final)
    stamp = (final / "model.safetensors").stat().st_mtime_ns
    # the LIFT delta is folded into final/: it equals the adapter merged onto the base
    from transformers import AutoModelForCausalLM

    from sparse_ft import SparseFTModel

    base = AutoModelForCausalLM.from_pretrained(files / "model")
    merged = SparseFTModel.from_pretrained(base, final.parent / "adapter").merge_and_unload()
    for key, value in merged.state_dict().items():
        assert torch.equal(value, before[f"model.safetensors:{key}"]), key
    assert first.results["lift"].steps == 2
    again = run_pipeline(cfg)
    assert again.skipped == ["lift"] and not again.results
    assert (final / "model.safetensors").stat().st_mtime_ns == stamp
    config = files / "pipe-skip.yaml"
    config.write_text(json.dumps(cfg.to_dict()))  # YAML is a superset of JSON
    assert main(["finetune", "--config", str(config)]) == 0
    assert "stage lift: finished earlier, skipped" in capsys.readouterr().out
    with pytest.raises(UsageError, match=r"stage 1 \(lift\) finished .*optimizer\.lr"):
        run_pipeline(cfg.with_overrides(["optimizer.lr=0.5"]))
    redone = run_pipeline(cfg.with_overrides(["train.overwrite=true"]))
    assert list(redone.results) == ["lift"] and not redone.skipped
    after = _tensors(final)  # rerun from scratch: the same run again
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in after)


@pytest.mark.parametrize(
    ("stages", "message"),
    [
        ([], "stages is empty"),
        ([{"name": "a"}, {"name": "a"}], r"stage names \['a'\] repeat"),
        ([{"name": "a/b"}], "must be letters, digits"),
        ([{"name": "a", "model": {"path": "x"}}], "a stage cannot set `model`"),
        ([{"name": "a", "train": {"out_dir": "x"}}], "cannot set train.out_dir"),
        ([{"name": "a", "epochs": 2}], r"unknown stage key\(s\) \['epochs'\]"),
        ([{"name": "a"}, {"name": "b", "objective": "gpro"}], r"stage 2 \(b\).*'grpo'"),
        ([{"name": "a", "method": {"r": 4}}], r"stage 1 \(a\).*'r' is a field of method.name=lora"),
        ([{"name": "a", "objective": {"name": "kd"}}], r"stage 1 \(a\).*objective.teacher"),
    ],
)
def test_bad_stage_lists_are_refused(stages, message):
    with pytest.raises(ConfigError, match=message):
        PipelineConfig.from_dict({"method": "lift", "stages": stages})


def test_merge_replaces_a_choice_given_another_name():
    from layerwise.finetune.stages import merge_stage

    shared = {"method": {"name": "lift", "lora_rank": 8}, "train": {"steps": 4, "seed": 1}}
    assert merge_stage(shared, {"method": "lift"})["method"] == {"name": "lift", "lora_rank": 8}
    assert merge_stage(shared, {"method": "lora"})["method"] == {"name": "lora"}
    assert merge_stage(shared, {"train": {"steps": 2}})["train"] == {"steps": 2, "seed": 1}


# --- SFT / KD then GRPO on a toy task (single-digit sums) -------------------------------------


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """Single-digit sums, a tokenizer trained on them and a tiny Llama: 12 SFT steps make the
    model answer with digits, so that GRPO's groups get mixed rewards (non-zero advantages)."""
    import random

    from layerwise.data import train_bpe_tokenizer
    from layerwise_core import tiny_llama

    root = tmp_path_factory.mktemp("toy")
    rng = random.Random(0)
    records = []
    for _ in range(24):
        a, b = rng.randint(0, 4), rng.randint(0, 4)
        records.append({"instruction": f"{a} + {b}", "answer": f"{a + b}"})
    write_jsonl(records, root / "train.jsonl")
    texts = [format_prompt(r["instruction"]) + r["answer"] for r in records]
    tokenizer = train_bpe_tokenizer(texts, vocab_size=300, min_frequency=1)
    model = tiny_llama(
        seed=0,
        vocab_size=len(tokenizer),
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        max_position_embeddings=512,
    )
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    return root


# GRPO: 2 prompts x 4 completions per step; each generated batch serves 2 updates (mu = 2), so a
# stop after step 3 lands mid-reuse and the resume needs the objective's saved batch
GRPO = {
    "name": "rl",
    "objective": {
        "name": "grpo",
        "num_generations": 4,
        "max_completion_length": 4,
        "num_iterations": 2,
    },
    "method": {"name": "lora", "r": 2},
    "optimizer": {"lr": 5e-2},
    "train": {"batch_size": 8},
}


def _toy_pipeline(root: Path, out: str, first: dict) -> PipelineConfig:
    return PipelineConfig.from_dict(
        {
            "model": {"path": str(root / "model")},
            "data": {"train": str(root / "train.jsonl")},
            "optimizer": {"lr": 1e-2, "weight_decay": 0.0},
            "schedule": {"warmup_ratio": 0.0},
            "train": {
                "steps": 4,
                "batch_size": 4,
                "log_every": 1,
                "save_every": 2,
                "out_dir": str(root / out),
            },
            "stages": [first, GRPO],
        }
    )


def _check_same_pipeline(a: Path, b: Path, stages: list[str]) -> None:
    for stage in stages:
        _assert_same_tensors(a / stage / "final", b / stage / "final")
        assert _metrics(a / stage) == _metrics(b / stage)
    first, last = _tensors(a / stages[0] / "final"), _tensors(a / stages[-1] / "final")
    assert any(not torch.equal(first[k], last[k]) for k in first)  # GRPO did update the model


SFT_TOY = {"name": "sft", "method": "full", "train": {"steps": 12}}


@pytest.fixture(scope="module")
def sft_grpo(toy):
    pytest.importorskip("peft")
    result = run_pipeline(_toy_pipeline(toy, "sft-grpo", SFT_TOY))
    rewards = [r["reward"] for r in _metrics(toy / "sft-grpo" / "2-rl") if "reward" in r]
    assert len(rewards) == 4 and max(rewards) > 0  # mixed groups: the RL stage has a signal
    return result


def test_sft_then_grpo_resumes_exactly_mid_reuse(toy, sft_grpo):
    cfg = _toy_pipeline(toy, "sft-grpo-part", SFT_TOY)
    assert run_pipeline(cfg, stop_at=(2, 3)).stopped
    again = run_pipeline(cfg)
    assert again.skipped == ["sft"] and again.results["rl"].resumed_from == 3
    _check_same_pipeline(toy / "sft-grpo", toy / "sft-grpo-part", ["1-sft", "2-rl"])


def test_kd_then_grpo_resumes_exactly(toy, sft_grpo):
    teacher = toy / "sft-grpo" / "1-sft" / "final"  # the SFT model distilled into the base
    kd = {
        "name": "kd",
        "objective": {"name": "kd", "mode": "logit", "teacher": str(teacher), "beta": 0.0},
        "method": "full",
        "train": {"steps": 8},
    }
    whole = run_pipeline(_toy_pipeline(toy, "kd-grpo", kd))
    losses = whole.results["kd"].train_losses
    assert losses[-1] < losses[0]  # forward KL to the teacher falls
    cfg = _toy_pipeline(toy, "kd-grpo-part", kd)
    assert run_pipeline(cfg, stop_at=(1, 5)).stopped
    again = run_pipeline(cfg)
    assert again.results["kd"].resumed_from == 5 and list(again.results) == ["kd", "rl"]
    _check_same_pipeline(toy / "kd-grpo", toy / "kd-grpo-part", ["1-kd", "2-rl"])

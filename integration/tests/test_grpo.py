"""`layerwise.finetune.grpo` against the spec's hand-computed cases (small-reasoning-lms.md §6 T1,
T2, T3, T5), TRL 1.x (T11: GRPOConfig's names and defaults; the loss of `GRPOTrainer._compute_loss`
on the same batch), and a tiny random Llama on a one-operation task (T10: a policy-gradient step
raises log pi of rewarded completions; a few steps raise the reward); the objective's sampling
is seeded by (seed, step, micro) only, num_iterations reuses pi_old exactly across a resume."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from collections import defaultdict
from contextlib import nullcontext
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from layerwise.finetune.grpo import (
    GRPOConfig,
    aggregate,
    clipped_surrogate,
    completion_logprobs,
    group_advantages,
    k3_kl,
)
from layerwise.finetune.objectives import Objective, ObjectiveContext


@pytest.fixture(autouse=True)
def _one_thread():
    # tiny matmuls: a second thread only adds contention on the shared 2-core machine (30x slower)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------
# T1: advantages


def test_t1_group_advantages_use_the_bessel_std():
    a = group_advantages([1.0, 0.0, 0.0, 1.0], 4)
    # Bessel std sqrt(1/3) = 0.57735: 0.5 / (0.57735 + 1e-4)
    assert torch.allclose(a, torch.tensor([1, -1, -1, 1]) * 0.865875, atol=1e-6)
    # the population std (0.5) would give 0.5 / 0.5001 = 0.99980: rejected
    assert not torch.allclose(a.abs(), torch.full((4,), 0.99980), atol=1e-2)
    a = group_advantages([1.0, 0.0, 0.0, 0.0], 4)
    assert torch.allclose(a, torch.tensor([1.49970, -0.49990, -0.49990, -0.49990]), atol=1e-5)
    assert torch.equal(group_advantages([1.0, 1.0, 1.0, 1.0], 4), torch.zeros(4))


def test_t1_groups_are_consecutive_and_normalised_separately():
    a = group_advantages([1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0], 4)
    assert torch.allclose(a[:4], torch.tensor([1, -1, -1, 1]) * 0.865875, atol=1e-6)
    assert torch.allclose(a[4:], torch.tensor([1.49970, -0.49990, -0.49990, -0.49990]), atol=1e-5)


def test_t1_a_none_reward_is_left_out_of_mean_and_std():
    # [1, None, 0, 0]: mean 1/3, Bessel std over 3 values sqrt((4/9 + 1/9 + 1/9) / 2) = 0.57735
    a = group_advantages([1.0, None, 0.0, 0.0], 4)
    s = math.sqrt(1 / 3) + 1e-4
    assert torch.allclose(
        a, torch.tensor([(2 / 3) / s, 0.0, (-1 / 3) / s, (-1 / 3) / s]), atol=1e-6
    )


def test_t1_scale_rewards_none_and_batch():
    r = [1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0]
    none = group_advantages(r, 4, "none")
    assert torch.allclose(none, torch.tensor([0.75, -0.25, -0.25, -0.25, 0.25, 0.25, 0.25, -0.75]))
    # batch: std over all 8 (mean 0.5, Bessel var 8 * 0.25 / 7) divides the group-centred rewards
    batch = group_advantages(r, 4, "batch")
    assert torch.allclose(batch, none / (math.sqrt(2 / 7) + 1e-4), atol=1e-6)
    assert GRPOConfig(scale_rewards=False).scale_rewards == "none"  # TRL's bool spelling
    assert GRPOConfig(scale_rewards=True).scale_rewards == "group"


def test_t1_nan_aware_std_equals_trls():
    utils = pytest.importorskip("trl.trainer.utils")
    from layerwise.finetune.grpo import _nanstd

    x = torch.tensor([[1.0, float("nan"), 0.5, 3.0], [2.0, 2.5, float("nan"), -1.0]])
    assert torch.allclose(_nanstd(x, dim=1), utils.nanstd(x, dim=1), atol=1e-7)
    assert torch.allclose(_nanstd(x), utils.nanstd(x), atol=1e-7)


# ---------------------------------------------------------------------------------------------
# T2: clipped surrogate, T3: k3, T5: aggregation


@pytest.mark.parametrize(
    ("ratio", "advantage", "loss", "moves"),
    [(1.3, 1.0, -1.2, False), (1.3, -1.0, 1.3, True), (0.7, -1.0, 0.8, False)],
)
def test_t2_clipped_surrogate(ratio, advantage, loss, moves):
    logp = torch.tensor([[math.log(ratio)]], requires_grad=True)
    out = clipped_surrogate(logp, torch.zeros(1, 1), torch.tensor([advantage]), epsilon=0.2)
    assert out.item() == pytest.approx(loss, abs=1e-6)
    out.sum().backward()
    if moves:  # d/dlogp of -rho A = -rho A
        assert logp.grad.item() == pytest.approx(-ratio * advantage, abs=1e-6)
    else:
        assert logp.grad.item() == 0.0


def test_t2_epsilon_high_widens_only_the_upper_side():
    logp = torch.log(torch.tensor([[1.25, 0.75]]))
    out = clipped_surrogate(logp, torch.zeros(1, 2), torch.tensor([1.0]), 0.2, epsilon_high=0.28)
    assert torch.allclose(out, torch.tensor([[-1.25, -0.75]]))  # 1.25 < 1.28: not clipped
    out = clipped_surrogate(logp, torch.zeros(1, 2), torch.tensor([1.0]), 0.2)
    assert torch.allclose(out, torch.tensor([[-1.2, -0.75]]))


def test_t3_k3_kl():
    kl = k3_kl(torch.tensor(math.log(0.25)), torch.tensor(math.log(0.5)))
    assert kl.item() == pytest.approx(2 - math.log(2) - 1, abs=1e-6)  # 0.306853
    same = torch.log(torch.tensor([0.1, 0.7, 0.2]))
    assert torch.equal(k3_kl(same, same.clone()), torch.zeros(3))


def test_t5_aggregation():
    per_token = torch.tensor([[2.0, 9.0, 9.0], [1.0, 1.0, 1.0]])  # 9: padding, masked
    mask = torch.tensor([[1, 0, 0], [1, 1, 1]])
    assert aggregate(per_token, mask, "grpo").item() == pytest.approx(1.5)
    assert aggregate(per_token, mask, "bnpo").item() == pytest.approx(1.25)
    assert aggregate(per_token, mask, "dapo").item() == pytest.approx(1.25)
    assert aggregate(per_token, mask, "dr_grpo", 4).item() == pytest.approx(0.625)
    # dapo over an accumulated batch of 10 tokens
    assert aggregate(per_token, mask, "dapo", num_items_in_batch=10).item() == pytest.approx(0.5)
    with pytest.raises(ValueError, match="dr_grpo"):
        aggregate(per_token, mask, "dr_grpo")


# ---------------------------------------------------------------------------------------------
# T11: TRL's GRPOConfig names and defaults

TRL_ONLY = {  # spec §3 fields we do not mirror (TRL's trainer options), with their defaults
    "learning_rate": 1e-6,
    "delta": None,
    "importance_sampling_level": "token",
    "reward_weights": None,
    "multi_objective_aggregation": "sum_then_normalize",
    "remove_unused_columns": False,
    "generation_batch_size": None,
    "steps_per_generation": None,
    "use_vllm": False,
}


def test_t11_trl_grpo_config_names_and_defaults():
    trl = pytest.importorskip("trl")
    defaults = {f.name: f.default for f in dataclasses.fields(trl.GRPOConfig)}
    ours = GRPOConfig()
    mirrored = [n for n in GRPOConfig.model_fields if n != "format_reward"]  # ours only
    for name in mirrored:
        assert name in defaults, f"trl {trl.__version__} GRPOConfig lost the field {name!r}"
        if name == "max_completion_length":  # 256 in 1.0-1.9, 512 from 1.10: set it explicitly
            assert ours.max_completion_length == 256 and defaults[name] in (256, 512)
            continue
        assert getattr(ours, name) == defaults[name], (
            f"trl {trl.__version__} GRPOConfig.{name} default is {defaults[name]!r}, "
            f"ours {getattr(ours, name)!r}: update layerwise.finetune.grpo.GRPOConfig"
        )
    for name, value in TRL_ONLY.items():
        assert name in defaults and defaults[name] == value, (
            f"trl {trl.__version__} GRPOConfig.{name}: {defaults.get(name, 'missing')!r} != "
            f"{value!r} (spec §3)"
        )


# ---------------------------------------------------------------------------------------------
# A tiny random Llama on one-operation sums; a word-level tokenizer whose vocabulary is half
# digits, so random completions are sometimes right


def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<unk>", "<eos>", "<pad>", *"0123456789", "+", "=", "####", "What", "is", "?", "."]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Digits(individual_digits=True)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>", pad_token="<pad>"
    )


def _model(tokenizer, seed=0):
    from layerwise_core import tiny_llama

    return tiny_llama(
        seed=seed,
        vocab_size=len(tokenizer),
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        max_position_embeddings=256,
    )


def _records(n):
    out = []
    for i in range(n):
        a, b = i % 5, (2 * i + 1) % 5
        out.append(
            {"instruction": f"What is {a} + {b} ?", "answer": f"{a} + {b} = {a + b} #### {a + b}"}
        )
    return out


def _objective(model, tokenizer, seed=0, prompt_format="alpaca", **fields):
    cfg = GRPOConfig(**{"num_generations": 8, "max_completion_length": 3, **fields})
    objective = cfg.build()
    objective.setup(
        ObjectiveContext(
            model=model,
            base_model=model,
            tokenizer=tokenizer,
            device=torch.device("cpu"),
            seed=seed,
            out_dir=Path("."),
            records=[],
            instruction_field="instruction",
            answer_field="answer",
            max_length=64,
            total_steps=1,
            prompt_format=prompt_format,
        )
    )
    return objective


def _sequence_logp(model, rollout, temperature=1.0):
    with torch.no_grad():
        logp = completion_logprobs(
            model,
            rollout["prompt_ids"],
            rollout["prompt_mask"],
            rollout["completion_ids"],
            rollout["completion_mask"],
            temperature,
        )
    return (logp * rollout["completion_mask"]).sum(1)


def test_the_objective_implements_the_interface_and_counts_completions():
    objective = GRPOConfig(num_generations=4).build()
    assert isinstance(objective, Objective)
    assert objective.records_per_micro_batch(16) == 4
    from layerwise_core import UsageError

    with pytest.raises(UsageError, match="multiple of num_generations 4"):
        objective.records_per_micro_batch(10)


def test_sampling_is_seeded_by_seed_step_micro_only():
    tokenizer = _tokenizer()
    model = _model(tokenizer)
    objective = _objective(model, tokenizer)
    records = _records(2)
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    first = objective.generate(model, records, step=3, micro=1)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is untouched
    torch.manual_seed(999)  # another global state: the same draws
    again = objective.generate(model, records, step=3, micro=1)
    assert torch.equal(first["completion_ids"], again["completion_ids"])
    other = objective.generate(model, records, step=3, micro=0)
    assert not torch.equal(first["completion_ids"], other["completion_ids"])
    # G completions per prompt, consecutive, left-padded prompts, mask through the first EOS
    assert first["prompt_ids"].shape[0] == 16
    assert torch.equal(first["prompt_ids"][:8], first["prompt_ids"][:1].expand(8, -1))
    ids, mask = first["completion_ids"], first["completion_mask"]
    for row in range(16):
        eos = (ids[row] == tokenizer.eos_token_id).nonzero()
        end = eos[0].item() + 1 if len(eos) else ids.size(1)
        assert mask[row].tolist() == [1] * end + [0] * (ids.size(1) - end)


def test_t10_policy_gradient_raises_log_pi_of_rewarded_completions():
    tokenizer = _tokenizer()
    model = _model(tokenizer)
    objective = _objective(model, tokenizer, seed=1)
    records = _records(4)
    rollout = objective.generate(model, records, step=0, micro=0)
    rewards, adv = rollout["rewards"], rollout["advantages"]
    assert 0 < rewards.mean() < 1, "precondition: some completions rewarded, some not"
    before = _sequence_logp(model, rollout)
    loss, metrics = objective.loss(model, records, {}, step=0, micro=0)
    assert metrics["reward"] == pytest.approx(rewards.mean().item())
    assert metrics["clip_ratio"] == 0.0  # num_iterations 1: rho == 1
    loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            p -= 0.5 * p.grad
    delta = _sequence_logp(model, rollout) - before
    assert (delta[adv > 0] > 0).all(), (delta, adv)
    assert delta[adv < 0].mean() < 0
    assert (adv * delta).sum() > 0


def test_t10_a_few_grpo_steps_raise_the_reward():
    tokenizer = _tokenizer()
    model = _model(tokenizer)
    objective = _objective(model, tokenizer, seed=0)
    records = _records(4)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    rewards = []
    for step in range(30):
        loss, metrics = objective.loss(model, records, {}, step=step, micro=0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        rewards.append(metrics["reward"])
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5  # B0's reward: 0.1
    assert last > 2 * first and last > first + 0.1, rewards


def test_num_iterations_reuses_pi_old_and_resumes_exactly():
    tokenizer = _tokenizer()
    model = _model(tokenizer)
    objective = _objective(model, tokenizer, seed=1, num_iterations=2, loss_type="grpo")
    records = _records(4)
    loss0, m0 = objective.loss(model, records, {}, step=0, micro=0)
    assert 0 < m0["reward"] < 1 and m0["clip_ratio"] == 0.0
    loss0.backward()
    with torch.no_grad():
        for p in model.parameters():
            p -= 5.0 * p.grad
            p.grad = None
    state = copy.deepcopy(objective.state_dict())
    # step 1 reuses step 0's completions (the records handed over are not used) with pi_old of
    # generation time: the ratio moved, so some tokens clip
    loss1, m1 = objective.loss(model, _records(8)[4:], {}, step=1, micro=0)
    assert m1["reward"] == m0["reward"] and m1["clip_ratio"] > 0
    resumed = _objective(model, tokenizer, seed=1, num_iterations=2, loss_type="grpo")
    resumed.load_state_dict(state)
    loss1r, _ = resumed.loss(model, records, {}, step=1, micro=0)
    assert torch.equal(loss1, loss1r)
    with pytest.raises(RuntimeError, match="no batch generated"):
        _objective(model, tokenizer, num_iterations=2).loss(model, records, {}, step=1, micro=0)


def test_mask_truncated_completions_and_kl_to_the_reference():
    tokenizer = _tokenizer()
    model = _model(tokenizer)
    records = _records(2)
    # 1 new token: EOS only by chance, so most completions are truncated and count for nothing
    objective = _objective(
        model, tokenizer, max_completion_length=1, mask_truncated_completions=True
    )
    rollout = objective.generate(model, records, 0, 0)
    kept = rollout["completion_ids"][:, 0] == tokenizer.eos_token_id
    assert torch.equal(rollout["completion_mask"][:, 0].bool(), kept)
    assert 0 < rollout["truncated"].mean() < 1
    # beta > 0: k3 to a frozen copy of the loaded model, 0 before any update, > 0 after one
    objective = _objective(model, tokenizer, beta=0.1)
    assert objective.ref_model is not model
    assert not any(p.requires_grad for p in objective.ref_model.parameters())
    loss, metrics = objective.loss(model, records, {}, 0, 0)
    assert metrics["kl"] == 0.0
    loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            p -= 5.0 * p.grad
    _, metrics = objective.loss(model, records, {}, 1, 0)
    assert metrics["kl"] > 0


# ---------------------------------------------------------------------------------------------
# Agreement with TRL: GRPOTrainer._compute_loss (its own log-probs through its fused LM head) on
# the same prompts, completions, advantages, old and reference log-probs


class _Accelerator:
    num_processes = 1
    is_main_process = True

    def autocast(self):
        return nullcontext()

    def reduce(self, x, reduction="sum"):
        return x

    def gather(self, x):
        return x

    gather_for_metrics = gather


def _trl_trainer(model, cfg: GRPOConfig, grad_accum: int = 1):
    """A GRPOTrainer without its __init__: the attributes `_compute_loss` reads (TRL's default
    steps_per_generation = gradient_accumulation_steps: one generation batch per step)."""
    from trl import GRPOTrainer

    trainer = object.__new__(GRPOTrainer)
    fields = {
        "model": model,
        "accelerator": _Accelerator(),
        "args": SimpleNamespace(
            delta=None, use_bias_correction_kl=False, steps_per_generation=grad_accum
        ),
        "beta": cfg.beta,
        "loss_type": cfg.loss_type,
        "epsilon_low": cfg.epsilon,
        "epsilon_high": cfg.epsilon_high if cfg.epsilon_high is not None else cfg.epsilon,
        "max_completion_length": cfg.max_completion_length,
        "importance_sampling_level": "token",
        "top_entropy_quantile": 1.0,
        "off_policy_mask_threshold": None,
        "use_vllm": False,
        "vllm_importance_sampling_correction": False,
        "aux_loss_enabled": False,
        "_entropy_bonus_enabled": False,
        "current_gradient_accumulation_steps": grad_accum,
        "_metrics": {"train": defaultdict(list), "eval": defaultdict(list)},
    }
    for name, value in fields.items():
        object.__setattr__(trainer, name, value)
    return trainer


@pytest.mark.parametrize("loss_type", ["dapo", "grpo", "bnpo", "dr_grpo"])
def test_loss_equals_trls_grpo_trainer_on_the_same_batch(loss_type):
    pytest.importorskip("trl")
    from trl.trainer.utils import add_fused_lm_head

    tokenizer = _tokenizer()
    model = _model(tokenizer)
    cfg = GRPOConfig(
        num_generations=4,
        max_completion_length=5,
        temperature=0.7,
        beta=0.05,
        epsilon_high=0.28,
        num_iterations=2,
        loss_type=loss_type,
    )
    objective = _objective(model, tokenizer, **cfg.model_dump())
    rollout = objective.generate(model, _records(2), 0, 0)
    g = torch.Generator().manual_seed(0)  # old / reference log-probs away from the policy's
    noise = lambda: 0.3 * torch.randn(rollout["completion_ids"].shape, generator=g)  # noqa: E731
    rollout["old_logp"] = rollout["old_logp"] + noise()
    rollout["ref_logp"] = rollout["ref_logp"] + noise()
    rollout["advantages"] = torch.randn(8, generator=g)
    ours, metrics = objective._policy_loss(model, rollout)
    assert metrics["clip_ratio"] > 0  # the clip is exercised

    theirs_model = copy.deepcopy(model)
    add_fused_lm_head(theirs_model, temperature=cfg.temperature, outputs=("log_probs", "entropy"))
    trainer = _trl_trainer(theirs_model, cfg)
    mask = rollout["completion_mask"]
    inputs = {
        "prompt_ids": rollout["prompt_ids"],
        "prompt_mask": rollout["prompt_mask"],
        "completion_ids": rollout["completion_ids"],
        "completion_mask": mask,
        "advantages": rollout["advantages"],
        "old_per_token_logps": rollout["old_logp"],
        "ref_per_token_logps": rollout["ref_logp"],
        "num_items_in_batch": mask.sum(),
    }
    theirs = trainer._compute_loss(theirs_model, inputs)
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-5, abs=1e-7)
    ours.backward()
    theirs.backward()
    for (name, p), q in zip(model.named_parameters(), theirs_model.parameters()):
        assert torch.allclose(p.grad, q.grad, rtol=1e-4, atol=1e-7), name
    logged = trainer._metrics["train" if theirs_model.training else "eval"]
    kl = logged["kl"][-1]
    assert metrics["kl"] == pytest.approx(kl, rel=1e-5)
    assert metrics["clip_ratio"] == pytest.approx(logged["clip_ratio/region_mean"][-1])


@pytest.mark.parametrize("loss_type", ["dapo", "grpo", "bnpo", "dr_grpo"])
def test_accumulated_step_equals_trls_with_grad_accum_two(loss_type):
    """grad_accum 2 through `begin_step` (the loop's path): each micro-batch's loss / 2 (the
    loop's scaling) equals TRL's `_compute_loss` with gradient_accumulation_steps 2 and
    num_items_in_batch the completion tokens of both micro-batches (dapo divides by those),
    and so do the accumulated gradients."""
    pytest.importorskip("trl")
    from trl.trainer.utils import add_fused_lm_head

    tokenizer = _tokenizer()
    model = _model(tokenizer)
    cfg = GRPOConfig(
        num_generations=4,
        max_completion_length=5,
        temperature=0.7,
        beta=0.05,
        epsilon_high=0.28,
        num_iterations=2,
        loss_type=loss_type,
    )
    objective = _objective(model, tokenizer, seed=2, **cfg.model_dump())  # 35 + 40 tokens
    records = _records(4)
    objective.begin_step(model, 0, [records[:2], records[2:]])
    g = torch.Generator().manual_seed(0)
    for rollout in objective._cache.values():  # old / reference log-probs off the policy's
        shape = rollout["completion_ids"].shape
        rollout["old_logp"] = rollout["old_logp"] + 0.3 * torch.randn(shape, generator=g)
        rollout["ref_logp"] = rollout["ref_logp"] + 0.3 * torch.randn(shape, generator=g)
        rollout["advantages"] = torch.randn(8, generator=g)
    masks = [objective._cache[m]["completion_mask"] for m in (0, 1)]
    assert masks[0].sum() != masks[1].sum()  # dapo's step-wide normaliser differs from bnpo's

    theirs_model = copy.deepcopy(model)
    add_fused_lm_head(theirs_model, temperature=cfg.temperature, outputs=("log_probs", "entropy"))
    theirs_model.train()  # TRL scales by the accumulation in training mode only
    trainer = _trl_trainer(theirs_model, cfg, grad_accum=2)
    total = masks[0].sum() + masks[1].sum()
    for micro in (0, 1):
        ours, _ = objective.loss(model, [], {}, 0, micro)
        rollout = objective._cache[micro]
        inputs = {
            "prompt_ids": rollout["prompt_ids"],
            "prompt_mask": rollout["prompt_mask"],
            "completion_ids": rollout["completion_ids"],
            "completion_mask": rollout["completion_mask"],
            "advantages": rollout["advantages"],
            "old_per_token_logps": rollout["old_logp"],
            "ref_per_token_logps": rollout["ref_logp"],
            "num_items_in_batch": total,
        }
        theirs = trainer._compute_loss(theirs_model, inputs)
        assert (ours / 2).item() == pytest.approx(theirs.item(), rel=1e-5, abs=1e-7)
        (ours / 2).backward()
        theirs.backward()
    for (name, p), q in zip(model.named_parameters(), theirs_model.parameters()):
        assert torch.allclose(p.grad, q.grad, rtol=1e-4, atol=1e-7), name


def test_chat_prompt_format_builds_the_templates_prompt():
    from layerwise_core import UsageError

    tokenizer = _tokenizer()
    model = _model(tokenizer)
    records = _records(2)
    with pytest.raises(UsageError, match="needs a tokenizer with a chat template"):
        _objective(model, tokenizer, prompt_format="chat").generate(model, records, 0, 0)
    tokenizer.chat_template = (  # its words are in the vocabulary: "What is 0 + 1 ? ="
        "{% for m in messages %}{{ m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %} ={% endif %}"
    )
    objective = _objective(model, tokenizer, prompt_format="chat")
    assert objective.prompts(records[:1]) == ["What is 0 + 1 ? ="]
    rollout = objective.generate(model, records, 0, 0)
    first = rollout["prompt_ids"][0][rollout["prompt_mask"][0].bool()]
    assert tokenizer.decode(first) == "What is 0 + 1 ? ="


# ---------------------------------------------------------------------------------------------
# Through `layerwise finetune` (objective: grpo): stopped in the middle of a num_iterations reuse
# and resumed, the run equals the uninterrupted one bitwise


def test_finetune_with_grpo_resumes_mid_reuse_exactly(tmp_path):
    from layerwise.finetune import FinetuneConfig, finetune, write_jsonl

    tokenizer = _tokenizer()
    _model(tokenizer).save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    write_jsonl(_records(8), tmp_path / "train.jsonl")

    def config(out, **train):
        return FinetuneConfig.from_dict(
            {
                "model": {"path": str(tmp_path / "model")},
                "data": {"train": str(tmp_path / "train.jsonl")},
                "method": "full",
                "objective": {
                    "name": "grpo",
                    "num_generations": 4,
                    "max_completion_length": 3,
                    "num_iterations": 2,
                    "beta": 0.1,
                },
                "optimizer": {"lr": 1e-2},
                "train": {
                    "steps": 4,
                    "batch_size": 8,
                    "grad_accum": 2,
                    "log_every": 1,
                    "save_every": 10,
                    "out_dir": str(tmp_path / out),
                    **train,
                },
            }
        )

    whole = finetune(config("whole"))
    assert finetune(config("part"), stop_at=3).stopped  # step 3 reuses step 2's completions
    resumed = finetune(config("part", resume=True))
    assert resumed.resumed_from == 3
    assert resumed.train_losses[-1] == whole.train_losses[-1]
    for p, q in zip(whole.model.parameters(), resumed.model.parameters()):
        assert torch.equal(p, q)
    logged = [
        json.loads(line) for line in (tmp_path / "whole/metrics.jsonl").read_text().splitlines()
    ]
    assert logged[1]["reward"] == logged[0]["reward"] > 0  # step 2 rescores step 1's completions
    assert logged[1]["kl"] > 0 and logged[1]["clip_ratio"] > 0  # the policy moved off pi_old
    assert all(0 <= m["frac_reward_zero_std"] <= 1 and "kl" in m for m in logged)


def test_reuse_steps_take_no_records_and_an_epoch_generates_for_each_record_once(
    tmp_path, monkeypatch
):
    """num_iterations 2, one epoch of 8 records at 2 prompts per step (grad_accum 2): TRL's
    schedule, 8 steps (4 generation steps, each followed by a reuse step that gets no records);
    every record is sampled for exactly once, in the run's shuffled data order."""
    from layerwise.finetune import FinetuneConfig, finetune, write_jsonl
    from layerwise.finetune.grpo import GRPOObjective

    tokenizer = _tokenizer()
    _model(tokenizer).save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    records = [{**r, "id": i} for i, r in enumerate(_records(8))]
    write_jsonl(records, tmp_path / "train.jsonl")
    handed, generated = {}, []
    real_begin, real_generate = GRPOObjective.begin_step, GRPOObjective.generate

    def begin_step(self, model, step, step_records):
        handed[step] = [[r["id"] for r in micro] for micro in step_records]
        return real_begin(self, model, step, step_records)

    def generate(self, model, micro_records, step, micro, **kwargs):
        generated.append((step, micro, [r["id"] for r in micro_records]))
        return real_generate(self, model, micro_records, step, micro, **kwargs)

    monkeypatch.setattr(GRPOObjective, "begin_step", begin_step)
    monkeypatch.setattr(GRPOObjective, "generate", generate)
    cfg = FinetuneConfig.from_dict(
        {
            "model": {"path": str(tmp_path / "model")},
            "data": {"train": str(tmp_path / "train.jsonl")},
            "method": "full",
            "objective": {
                "name": "grpo",
                "num_generations": 4,
                "max_completion_length": 3,
                "num_iterations": 2,
            },
            "optimizer": {"lr": 1e-3},
            "train": {"batch_size": 4, "grad_accum": 2, "out_dir": str(tmp_path / "run")},
        }
    )
    result = finetune(cfg)
    assert result.steps == 8 and len(result.train_losses) == 8
    assert [handed[s] for s in (1, 3, 5, 7)] == [[[], []]] * 4
    assert [(s, m) for s, m, _ in generated] == [(s, m) for s in (0, 2, 4, 6) for m in (0, 1)]
    order = torch.randperm(8, generator=torch.Generator().manual_seed(0)).tolist()
    assert [i for _, _, ids in generated for i in ids] == order
    assert [handed[s] for s in (0, 2, 4, 6)] == [
        [order[j : j + 1], order[j + 1 : j + 2]] for j in (0, 2, 4, 6)
    ]


def _scripted(scale_rewards: str, script: list[list[float]]):
    """A G = 2 objective whose reward function returns `script`'s lists, one per call (one call
    per micro-batch), and the model."""
    tokenizer = _tokenizer()
    model = _model(tokenizer)
    objective = _objective(
        model, tokenizer, num_generations=2, max_completion_length=2, scale_rewards=scale_rewards
    )
    calls = iter(script)
    objective.reward_fn = lambda prompts, completions, completion_ids=None, **columns: next(calls)
    return objective, model


@pytest.mark.parametrize("scale_rewards", ["batch", "group"])
def test_grad_accum_step_normalises_with_the_std_of_the_whole_generation_batch(scale_rewards):
    """grad_accum 2 through `begin_step`: TRL's generation batch is the whole step (both
    micro-batches), so `batch` divides by the Bessel std of all 8 rewards (not each
    micro-batch's); `group` divides each group by its own std, as before. reward_std is what TRL
    logs, nanstd of the batch's rewards, in both modes; frac_reward_zero_std averaged over the
    step is the share of zero-std groups (1 of 4)."""
    micro0, micro1 = [0.0, 1.0, 1.0, 1.0], [0.0, 3.0, 1.0, 2.0]
    objective, model = _scripted(scale_rewards, [micro0, micro1])
    records = _records(4)
    objective.begin_step(model, 0, [records[:2], records[2:]])
    centred = [torch.tensor([-0.5, 0.5, 0.0, 0.0]), torch.tensor([-1.5, 1.5, -0.5, 0.5])]
    step_std = torch.tensor(micro0 + micro1).std()  # torch's Bessel std, all 8 rewards
    assert step_std.item() == pytest.approx(math.sqrt(6.875 / 7))  # mean 1.125, SS 6.875
    if scale_rewards == "batch":
        expected = [c / (step_std + 1e-4) for c in centred]
        # the per-micro-batch std (0.5 for micro-batch 0) would give other advantages
        assert not torch.allclose(expected[0], centred[0] / (0.5 + 1e-4), atol=1e-3)
    else:
        s0, s1, s2 = math.sqrt(0.5), math.sqrt(4.5), math.sqrt(0.5)  # groups (0,1) (0,3) (1,2)
        expected = [
            centred[0] / torch.tensor([s0, s0, 1.0, 1.0]).add(1e-4),  # (1, 1): 0
            centred[1] / torch.tensor([s1, s1, s2, s2]).add(1e-4),
        ]
    logged = []
    for micro in (0, 1):
        assert torch.allclose(objective._cache[micro]["advantages"], expected[micro], atol=1e-6)
        logged.append(objective.loss(model, [], {}, 0, micro)[1])
    assert [m["reward_std"] for m in logged] == pytest.approx([step_std.item()] * 2)
    assert [m["frac_reward_zero_std"] for m in logged] == [0.5, 0.0]  # the loop averages: 1/4
    utils = pytest.importorskip("trl.trainer.utils")
    assert logged[0]["reward_std"] == pytest.approx(
        utils.nanstd(torch.tensor(micro0 + micro1)).item()
    )


def test_batch_mode_counts_zero_std_groups_and_logs_the_batch_reward_std():
    """One micro-batch, scale_rewards batch, groups (1, 1) and (0, 1): frac_reward_zero_std is
    the share of zero-std groups, 1/2 (not whether the whole batch has zero std: 0); reward_std
    is the batch's Bessel std, 0.5 (mean 0.75, SS 0.75 over 3), not the mean of the per-group
    stds sqrt(1/2) / 2."""
    objective, model = _scripted("batch", [[1.0, 1.0, 0.0, 1.0]])
    _, metrics = objective.loss(model, _records(2), {}, step=0, micro=0)
    assert metrics["frac_reward_zero_std"] == 0.5
    assert metrics["reward_std"] == pytest.approx(0.5)
    assert metrics["reward_std"] != pytest.approx(math.sqrt(0.5) / 2)

"""`objective: grpo`: Group Relative Policy Optimization (DeepSeekMath, arXiv 2402.03300) with TRL
1.x's names, defaults and loss variants (`trl.GRPOConfig` / `GRPOTrainer`; spec
small-reasoning-lms.md §2-§3).

Per micro-batch of P prompts (the stage's `batch_size` counts completions, as TRL's does, so
P = batch_size // num_generations):

1. each prompt (`instruction_data.prompt_text` in the stage's `data.prompt_format`: the prompt
   SFT trains on and the evaluation uses) is sampled G = `num_generations` times with Hugging Face `generate` (left padding, `temperature` / `top_p` / `top_k`, at most
   `max_completion_length` new tokens; the draws are seeded by (seed, step, micro) only, so a
   resumed stage samples what an uninterrupted one does);
2. rewards r: exact match of the final answer (`layerwise.finetune.rewards.exact_match_reward`,
   TRL's reward contract) plus `format_reward` x [the completion has a `#### N` marker];
3. advantages per group: A = (r - mean) / (std + 1e-4), std Bessel-corrected (`scale_rewards`
   group | batch | none; `batch`: one std over the rewards of every micro-batch of the step, TRL's
   generation batch; a None reward is NaN, left out of mean and std, and gets A = 0);
4. per completion token: rho = exp(log pi_theta - log pi_old) with log-probs from
   logits / temperature, loss = -min(rho A, clip(rho, 1 - epsilon, 1 + epsilon_high) A)
   + beta k3(pi_ref, pi_theta), aggregated by `loss_type` (grpo | bnpo | dapo | dr_grpo).

The loop calls `begin_step` before the micro-batches of an optimizer step with all their records:
the completions of the whole accumulated step are sampled and scored there (micro-batch m still
draws from (seed, step, m)), then normalised together (`scale_rewards: batch` divides by the std of
all the step's rewards, as TRL's generation batch of `steps_per_generation` = grad_accum
micro-batches does), so that `loss_type: dapo` divides every micro-batch's token sum by the completion
tokens of the whole step, as TRL's `num_items_in_batch` does (the loop's 1 / grad_accum scaling is
undone: the step's gradient is sum over its tokens / their count). Called without `begin_step`
(e.g. directly), `loss` samples its own micro-batch, which is then the whole batch (its batch std,
its tokens for dapo).

Logged (per micro-batch; the loop averages them over the step): `reward` (mean), `reward_std`
(TRL's: the Bessel std of all the rewards of the generation batch, i.e. of the step, not a mean
of group stds), `frac_reward_zero_std` (the share of groups whose rewards have zero std).

With `num_iterations = 1` pi_old = pi_theta.detach() (rho = 1: the plain policy gradient). With
`num_iterations = mu > 1`, the completions generated at step s (s % mu == 0) are reused, with
their pi_old log-probs of generation time, by the same micro-batch index of steps s+1..s+mu-1
(TRL reuses one generation batch for mu updates). Those reuse steps take no records from the data
order (`consumes_records(step)` is False), as TRL repeats the same prompts: every record is
generated for once per epoch, and an epoch lasts mu times as many steps. The reused batches live
in the objective's `state_dict`, so a resume mid-reuse is exact.

`beta > 0` scores the completions under a frozen copy of the model as loaded (the reference).

Differences from TRL: TRL shuffles the completions of a generation batch before splitting it into
micro-batches; here micro-batch m keeps its own prompts' groups (the advantages, batch std
included, are the same; only grpo / bnpo, which average per micro-batch, can tell the
difference). With `scale_rewards: batch` TRL's `frac_reward_zero_std` is whether the whole batch
has zero std (0 or 1); here it is the share of zero-std groups in every mode.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from pydantic import Field, field_validator
from torch import Tensor, nn

from layerwise.finetune.instruction_data import prompt_text
from layerwise.finetune.objectives import ObjectiveContext, objective_generator
from layerwise.finetune.rewards import exact_match_reward, format_bonus
from layerwise_core import LayerwiseConfig, UsageError, seeded_torch_rng

__all__ = [
    "GRPOConfig",
    "GRPOObjective",
    "aggregate",
    "clipped_surrogate",
    "completion_logprobs",
    "group_advantages",
    "k3_kl",
]

STD_EPS = 1e-4  # TRL's: A = (r - mean) / (std + 1e-4)


class GRPOConfig(LayerwiseConfig):
    """GRPO's hyper-parameters: `trl.GRPOConfig`'s names and defaults (a test compares them),
    except `max_completion_length`, whose TRL default moved (256 in 1.0-1.9, 512 later): set it
    in every recipe. The learning rate is the stage's `optimizer.lr` (TRL's default is 1e-6)."""

    num_generations: int = Field(8, ge=2)  # G: completions per prompt (a group)
    temperature: float = Field(1.0, gt=0)  # sampling; the log-probs use logits / temperature too
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0)  # 0: off
    max_completion_length: int = Field(256, ge=1)  # new tokens per completion
    beta: float = Field(0.0, ge=0)  # k3 KL to the frozen reference; 0: no reference is kept
    epsilon: float = Field(0.2, gt=0, lt=1)  # clip range below 1
    epsilon_high: float | None = Field(None, gt=0)  # clip range above 1; None: epsilon (DAPO 0.28)
    num_iterations: int = Field(1, ge=1)  # updates per generated batch (mu)
    loss_type: Literal["dapo", "grpo", "bnpo", "dr_grpo"] = "dapo"
    scale_rewards: Literal["group", "batch", "none"] = "group"  # std the advantage is divided by
    mask_truncated_completions: bool = False  # completions without EOS count for nothing
    format_reward: float = Field(0.0, ge=0)  # bonus for a `#### N` marker (spec §4: 0.1 when on)

    @field_validator("scale_rewards", mode="before")
    @classmethod
    def _bool_scale(cls, value: Any) -> Any:
        # TRL also accepts True ("group") and False ("none")
        return (
            {True: "group", False: "none"}.get(value, value) if isinstance(value, bool) else value
        )

    def build(self) -> GRPOObjective:
        """The objective the fine-tuning loop calls (`layerwise.finetune.objectives`)."""
        return GRPOObjective(self)


# ---------------------------------------------------------------------------------------------
# The maths (spec §2), one function each


def _as_rewards(rewards: Tensor | Sequence[float | None]) -> Tensor:
    if isinstance(rewards, Tensor):
        return rewards.to(torch.float32)
    return torch.tensor([float("nan") if r is None else float(r) for r in rewards])


def _nanstd(x: Tensor, dim: int | None = None) -> Tensor:
    """Bessel-corrected (n - 1) standard deviation over the non-NaN entries."""
    mean = torch.nanmean(x, dim=dim, keepdim=True)
    count = (~torch.isnan(x)).sum(dim=dim)
    variance = torch.nanmean((x - mean) ** 2, dim=dim)
    return (variance * count / (count - 1)).sqrt()


def group_std(
    rewards: Tensor | Sequence[float | None], num_generations: int, scale_rewards: str = "group"
) -> Tensor:
    """Per completion: the std of its group's rewards (`group`, and `none`, where it only tells
    the zero-std groups apart) or of the whole batch (`batch`), Bessel-corrected, NaN-aware."""
    r = _as_rewards(rewards)
    if r.numel() % num_generations:
        raise ValueError(f"{r.numel()} rewards do not split into groups of {num_generations}")
    if scale_rewards == "batch":
        return _nanstd(r).expand_as(r)
    return _nanstd(r.view(-1, num_generations), dim=1).repeat_interleave(num_generations)


def group_advantages(
    rewards: Tensor | Sequence[float | None],
    num_generations: int,
    scale_rewards: str = "group",
    batch_std: Tensor | float | None = None,
) -> Tensor:
    """GRPO advantages of rewards laid out group after group (G consecutive completions of one
    prompt): r - mean(group), divided by std + 1e-4 unless `scale_rewards="none"` (Dr. GRPO).
    The std is Bessel-corrected, over the group (`group`) or the batch (`batch`: `batch_std`
    when given, the std of a batch these rewards are a part of, else these rewards' std). A
    None / NaN reward is left out of mean and std and gets advantage 0."""
    if scale_rewards not in ("group", "batch", "none"):
        raise ValueError(f"scale_rewards {scale_rewards!r}: use 'group', 'batch' or 'none'")
    r = _as_rewards(rewards)
    if scale_rewards == "batch" and batch_std is not None:
        std = torch.as_tensor(batch_std, dtype=r.dtype).expand_as(r)
    else:
        std = group_std(r, num_generations, scale_rewards)
    mean = torch.nanmean(r.view(-1, num_generations), dim=1).repeat_interleave(num_generations)
    advantages = r - mean
    if scale_rewards != "none":
        advantages = advantages / (std + STD_EPS)
    return torch.nan_to_num(advantages, nan=0.0)


def clipped_surrogate(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
) -> Tensor:
    """Per-token PPO loss -min(rho A, clip(rho, 1 - epsilon, 1 + epsilon_high) A) with
    rho = exp(logp - old_logp); `advantages` per sequence (B,) or per token (B, T)."""
    high = epsilon if epsilon_high is None else epsilon_high
    if advantages.dim() == 1 and logp.dim() == 2:
        advantages = advantages.unsqueeze(1)
    ratio = torch.exp(logp - old_logp)
    clipped = torch.clamp(ratio, 1 - epsilon, 1 + high)
    return -torch.min(ratio * advantages, clipped * advantages)


def k3_kl(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """Schulman's k3 estimator of KL(pi_theta || pi_ref) per token:
    exp(ref - logp) - (ref - logp) - 1 (>= 0, exactly 0 where the two agree)."""
    delta = ref_logp - logp
    return torch.exp(delta) - delta - 1


def aggregate(
    per_token: Tensor,
    mask: Tensor,
    loss_type: str,
    max_completion_length: int | None = None,
    num_items_in_batch: float | Tensor | None = None,
) -> Tensor:
    """Reduce (B, T) per-token losses over the completion tokens (`mask` 1):
    grpo: mean over sequences of each sequence's token mean; bnpo: token mean of the batch;
    dapo: token sum / `num_items_in_batch` (the tokens of the whole accumulated batch; default:
    this batch's, then equal to bnpo); dr_grpo: token sum / (B * max_completion_length)."""
    mask = mask.to(per_token.dtype)
    total = (per_token * mask).sum()
    if loss_type == "grpo":
        return ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    if loss_type == "bnpo":
        return total / mask.sum().clamp(min=1.0)
    if loss_type == "dapo":
        items = mask.sum() if num_items_in_batch is None else num_items_in_batch
        return total / torch.as_tensor(items, dtype=per_token.dtype).clamp(min=1.0)
    if loss_type == "dr_grpo":
        if max_completion_length is None:
            raise ValueError("loss_type 'dr_grpo' needs max_completion_length")
        return total / (per_token.size(0) * max_completion_length)
    raise ValueError(f"loss_type {loss_type!r}: use 'dapo', 'grpo', 'bnpo' or 'dr_grpo'")


def completion_logprobs(
    model: nn.Module,
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    completion_ids: Tensor,
    completion_mask: Tensor,
    temperature: float = 1.0,
    logits_to_keep: bool = True,
) -> Tensor:
    """(B, C) log pi(completion token | prompt, earlier tokens) from logits / temperature (TRL's
    convention: the distribution the tokens were sampled from). `logits_to_keep`: pass
    Hugging Face's argument so only the completion positions' logits are computed."""
    input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
    attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
    width = completion_ids.size(1)
    kwargs = {"logits_to_keep": width + 1} if logits_to_keep else {}
    logits = model(input_ids=input_ids, attention_mask=attention_mask, **kwargs).logits
    logits = logits[:, -width - 1 : -1].float()  # position t predicts token t + 1
    if temperature != 1.0:
        logits = logits / temperature
    chosen = logits.gather(-1, completion_ids.unsqueeze(-1)).squeeze(-1)
    return chosen - torch.logsumexp(logits, dim=-1)


# ---------------------------------------------------------------------------------------------
# Rewards (spec §4)


def exact_match(prompts, completions, completion_ids=None, **columns) -> list[float | None]:
    """The default reward: `layerwise.finetune.rewards.exact_match_reward` (TRL's contract)."""
    return exact_match_reward(prompts, completions, completion_ids, **columns)


# ---------------------------------------------------------------------------------------------
# The objective


def _first_eos_mask(ids: Tensor, eos_ids: set[int]) -> tuple[Tensor, Tensor]:
    """(mask up to and including the first EOS, whether the row has an EOS)."""
    is_eos = torch.zeros_like(ids, dtype=torch.bool)
    for eos in eos_ids:
        is_eos |= ids == eos
    width = ids.size(1)
    first = torch.full((ids.size(0),), width, dtype=torch.long, device=ids.device)
    rows = is_eos.any(1)
    first[rows] = is_eos.int().argmax(1)[rows]
    positions = torch.arange(width, device=ids.device).expand_as(ids)
    return (positions <= first.unsqueeze(1)).long(), rows


class GRPOObjective:
    """GRPO for the fine-tuning loop (`layerwise.finetune.objectives.Objective`); see the module
    docstring. `reward_fn` replaces the exact-match reward (TRL's reward contract)."""

    def __init__(self, config: GRPOConfig, reward_fn: Callable | None = None) -> None:
        self.config = config
        self.reward_fn = reward_fn or exact_match
        self.ctx: ObjectiveContext | None = None
        self.ref_model: nn.Module | None = None
        self._cache: dict[int, dict[str, Tensor]] = {}  # micro -> generated batch
        self._cache_step = -1  # the step that generated `_cache`
        self._prepared: tuple[int, int] | None = None  # (step, micro-batches) of `begin_step`
        self._logits_to_keep = False

    # -- the interface ------------------------------------------------------------------------

    def setup(self, ctx: ObjectiveContext) -> None:
        """Keep the context; with beta > 0 a frozen copy of the model as loaded (the reference)."""
        self.ctx = ctx
        tok = ctx.tokenizer
        if tok.eos_token_id is None:
            raise UsageError(
                "objective grpo needs a tokenizer with an EOS token (completions end there): use "
                "a model folder whose tokenizer defines eos_token"
            )
        forward = getattr(ctx.base_model, "forward", None)
        self._logits_to_keep = forward is not None and (
            "logits_to_keep" in inspect.signature(forward).parameters
        )
        if self.config.beta > 0:
            self.ref_model = copy.deepcopy(ctx.base_model).eval()
            self.ref_model.requires_grad_(False)

    def records_per_micro_batch(self, batch_size: int) -> int:
        """Prompts per micro-batch: `batch_size` counts completions, as TRL's batch does."""
        g = self.config.num_generations
        if batch_size % g:
            raise UsageError(
                f"objective grpo: train.batch_size {batch_size} counts completions and must be a "
                f"multiple of num_generations {g}: set train.batch_size to {max(g, batch_size // g * g)}"
            )
        return batch_size // g

    def consumes_records(self, step: int) -> bool:
        """Whether `step` takes records from the data order: only generation steps do (the
        `num_iterations` reuse steps rescore the batch generated before, as TRL's do)."""
        return step % self.config.num_iterations == 0

    def begin_step(self, model: nn.Module, step: int, records: list[list[dict]]) -> None:
        """Before the micro-batches of `step`: sample every micro-batch's completions (records[m]
        for micro-batch m) on a generation step, or check that the reused ones are there; their
        completion tokens then normalise `loss_type: dapo` over the whole step."""
        self._require_setup()
        if self.consumes_records(step):
            rollouts = [
                self.generate(model, r, step, m, normalise=False) for m, r in enumerate(records)
            ]
            self._normalise(rollouts)  # one batch std over the whole step (scale_rewards batch)
            self._cache = dict(enumerate(rollouts))
            self._cache_step = step
        else:
            for micro in range(len(records)):
                self._check_cache(step, micro)
            if len(self._cache) != len(records):
                raise RuntimeError(
                    f"num_iterations {self.config.num_iterations}: step {self._cache_step} "
                    f"generated {len(self._cache)} micro-batches, step {step} has {len(records)} "
                    "(resume with the run's train.grad_accum)"
                )
        self._prepared = (step, len(records))

    def loss(
        self, model: nn.Module, records: list[dict], batch: dict[str, Tensor], step: int, micro: int
    ) -> tuple[Tensor, dict[str, float]]:
        """The GRPO loss of one micro-batch (its `batch` of gold answers is not used). After
        `begin_step(step)` the completions come from there (`records` is not read) and dapo
        divides by the step's completion tokens; otherwise they are sampled here (generation
        step) or reused (num_iterations reuse step)."""
        self._require_setup()
        mu = self.config.num_iterations
        num_items, accum = None, 1
        if self._prepared is not None and self._prepared[0] == step:
            self._check_cache(step, micro)
            num_items = sum(r["completion_mask"].sum().item() for r in self._cache.values())
            accum = self._prepared[1]
            rollout = self._cache[micro]
        elif self.consumes_records(step):
            rollout = self.generate(model, records, step, micro)
            if mu > 1:
                if self._cache_step != step:
                    self._cache, self._cache_step = {}, step
                self._cache[micro] = rollout
        else:
            self._check_cache(step, micro)
            rollout = self._cache[micro]
        rollout = {k: v.to(self.ctx.device) for k, v in rollout.items()}
        loss, metrics = self._policy_loss(model, rollout, num_items)
        if num_items is not None and self.config.loss_type == "dapo":
            loss = loss * accum  # the loop divides each micro-batch's loss by grad_accum
        return loss, metrics

    def _require_setup(self) -> None:
        if self.ctx is None:
            raise RuntimeError("call setup(ctx) before begin_step() / loss()")

    def _check_cache(self, step: int, micro: int) -> None:
        mu = self.config.num_iterations
        if self._cache_step != step - step % mu or micro not in self._cache:
            raise RuntimeError(
                f"num_iterations {mu}: no batch generated at step {step - step % mu} for "
                f"micro-batch {micro} (resume from a checkpoint that holds the objective state)"
            )

    def state_dict(self) -> dict:
        """The generation batches that later steps reuse (num_iterations > 1; none with 1), on
        the CPU, for an exact resume."""
        if self.config.num_iterations == 1:
            return {"cache_step": -1, "cache": {}}
        cache = {m: {k: v.detach().cpu() for k, v in r.items()} for m, r in self._cache.items()}
        return {"cache_step": self._cache_step, "cache": cache}

    def load_state_dict(self, state: dict) -> None:
        self._cache_step = int(state.get("cache_step", -1))
        self._cache = {int(k): dict(v) for k, v in state.get("cache", {}).items()}
        self._prepared = None

    # -- generation and scoring ---------------------------------------------------------------

    def prompts(self, records: list[dict]) -> list[str]:
        """The prompt texts: the stage's `data.prompt_format` (what SFT trains on and the
        evaluation uses)."""
        field = self.ctx.instruction_field
        missing = [i for i, r in enumerate(records) if field not in r]
        if missing:
            raise UsageError(
                f"objective grpo: record {missing[0] + 1} lacks {field!r} (its keys: "
                f"{list(records[missing[0]])}): set data.instruction_field to the prompt's key"
            )
        fmt = getattr(self.ctx, "prompt_format", "alpaca")
        return [prompt_text(self.ctx.tokenizer, str(r[field]), fmt) for r in records]

    @torch.no_grad()
    def generate(
        self, model: nn.Module, records: list[dict], step: int, micro: int, normalise: bool = True
    ) -> dict[str, Tensor]:
        """Sample G completions per record, score them; the tensors the loss needs plus the
        rewards (`rewards`: total, `reward_exact`, `reward_format`). `normalise`: add the
        advantages and reward statistics with this micro-batch as the whole batch (False: the
        caller normalises a step's rollouts together with `_normalise`)."""
        cfg, ctx = self.config, self.ctx
        tok, device, g = ctx.tokenizer, ctx.device, cfg.num_generations
        texts = self.prompts(records)
        enc = tok(texts, add_special_tokens=False, padding=True, padding_side="left",
                  return_tensors="pt")  # fmt: skip
        prompt_ids = enc["input_ids"].to(device).repeat_interleave(g, 0)
        prompt_mask = enc["attention_mask"].to(device).repeat_interleave(g, 0)
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        completion_ids = self._sample(model, prompt_ids, prompt_mask, pad_id, step, micro)
        eos_ids = {tok.eos_token_id}
        completion_mask, has_eos = _first_eos_mask(completion_ids, eos_ids)
        truncated = ~has_eos
        kept = [ids[m.bool()].tolist() for ids, m in zip(completion_ids, completion_mask)]
        completions = tok.batch_decode(kept, skip_special_tokens=True)
        prompts = [t for t in texts for _ in range(g)]
        columns = {k: [r.get(k) for r in records for _ in range(g)] for k in records[0]}
        columns["answer"] = [r[ctx.answer_field] for r in records for _ in range(g)]
        exact = self.reward_fn(prompts, completions, kept, **columns)
        exact_t = _as_rewards(exact)
        fmt = torch.tensor(format_bonus(prompts, completions, kept, bonus=1.0))
        rewards = exact_t + cfg.format_reward * fmt
        length = completion_mask.sum(1).float().cpu()  # before masking, as TRL logs it
        if cfg.mask_truncated_completions:
            completion_mask = completion_mask * (~truncated).unsqueeze(1).long()
        rollout = {
            "prompt_ids": prompt_ids,
            "prompt_mask": prompt_mask,
            "completion_ids": completion_ids,
            "completion_mask": completion_mask,
            "rewards": rewards,
            "reward_exact": exact_t,
            "reward_format": fmt,
            "truncated": truncated.float().cpu(),
            "length": length,
        }
        if cfg.num_iterations > 1:  # pi_old: the policy at generation time
            rollout["old_logp"] = self._logprobs(model, rollout)
        if self.ref_model is not None:
            rollout["ref_logp"] = self._logprobs(self.ref_model, rollout)
        if normalise:
            self._normalise([rollout])
        return rollout

    def _normalise(self, rollouts: list[dict[str, Tensor]]) -> None:
        """Add `advantages`, `zero_std` and `reward_std` to the rollouts of one generation batch
        (a step's micro-batches): group-centred rewards divided by the group std (`group`), one
        std over all the batch's rewards (`batch`, TRL's generation batch) or nothing (`none`);
        `zero_std` marks the completions of zero-std groups (every mode), `reward_std` is the
        batch's reward std (what TRL logs)."""
        cfg, g = self.config, self.config.num_generations
        rewards = torch.cat([r["rewards"] for r in rollouts])
        batch_std = _nanstd(rewards) if rewards.numel() > 1 else torch.zeros(())
        for rollout in rollouts:
            r = rollout["rewards"]
            advantages = group_advantages(r, g, cfg.scale_rewards, batch_std=batch_std)
            group = group_std(r, g, "group")
            rollout["advantages"] = advantages.to(rollout["completion_ids"].device)
            rollout["zero_std"] = torch.isclose(group, torch.zeros_like(group)).float()
            rollout["reward_std"] = batch_std.clone()

    def _sample(
        self, model: nn.Module, prompt_ids: Tensor, prompt_mask: Tensor, pad_id: int, step: int,
        micro: int,
    ) -> Tensor:  # fmt: skip
        from transformers import GenerationConfig

        cfg, ctx = self.config, self.ctx
        generation = GenerationConfig(
            do_sample=True,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            top_k=cfg.top_k,
            max_new_tokens=cfg.max_completion_length,
            pad_token_id=pad_id,
            eos_token_id=ctx.tokenizer.eos_token_id,
        )
        # HF samples from the global RNG: fork it, seeded by (seed, step, micro) only
        seed = objective_generator(ctx.seed, step, micro).initial_seed()
        with seeded_torch_rng(seed, prompt_ids.device):
            out = model.generate(
                input_ids=prompt_ids, attention_mask=prompt_mask, generation_config=generation
            )
        return out[:, prompt_ids.size(1) :]

    def _logprobs(self, model: nn.Module, rollout: dict[str, Tensor]) -> Tensor:
        return completion_logprobs(
            model,
            rollout["prompt_ids"],
            rollout["prompt_mask"],
            rollout["completion_ids"],
            rollout["completion_mask"],
            self.config.temperature,
            logits_to_keep=self._logits_to_keep,
        )

    # -- the loss -----------------------------------------------------------------------------

    def _policy_loss(
        self, model: nn.Module, rollout: dict[str, Tensor], num_items: float | None = None
    ) -> tuple[Tensor, dict[str, float]]:
        """The loss of one rollout; `num_items`: dapo's divisor, the completion tokens of the
        whole step (None: the rollout's)."""
        cfg = self.config
        mask = rollout["completion_mask"]
        logp = self._logprobs(model, rollout)
        old = rollout.get("old_logp")
        old = logp.detach() if old is None else old
        advantages = rollout["advantages"]
        per_token = clipped_surrogate(logp, old, advantages, cfg.epsilon, cfg.epsilon_high)
        metrics: dict[str, float] = {}
        fmask = mask.float()
        tokens = fmask.sum().clamp(min=1.0)
        if cfg.beta > 0:
            kl = k3_kl(logp, rollout["ref_logp"])
            per_token = per_token + cfg.beta * kl
            metrics["kl"] = ((kl.detach() * fmask).sum() / tokens).item()
        loss = aggregate(per_token, mask, cfg.loss_type, cfg.max_completion_length, num_items)
        ratio = torch.exp(logp.detach() - old)
        high = cfg.epsilon if cfg.epsilon_high is None else cfg.epsilon_high
        a = advantages.unsqueeze(1)
        clipped = ((ratio < 1 - cfg.epsilon) & (a < 0)) | ((ratio > 1 + high) & (a > 0))
        rewards = rollout["rewards"]
        metrics.update(
            reward=torch.nanmean(rewards).item(),
            reward_std=rollout["reward_std"].item(),
            reward_exact=torch.nanmean(rollout["reward_exact"]).item(),
            reward_format=rollout["reward_format"].mean().item(),
            frac_reward_zero_std=rollout["zero_std"].mean().item(),
            completion_length=rollout["length"].mean().item(),
            truncated_ratio=rollout["truncated"].mean().item(),
            clip_ratio=((clipped.float() * fmask).sum() / tokens).item(),
        )
        return loss, metrics

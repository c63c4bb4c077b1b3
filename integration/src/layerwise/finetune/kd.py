"""Knowledge distillation for `layerwise finetune` (`objective: {name: kd, ...}`, issue 23).

Generalized Jensen-Shannon divergence of GKD (Agarwal et al. 2024, arXiv:2306.13649, Eq. 1), in
TRL's convention (`trl.experimental.gkd.GKDTrainer.generalized_jsd_loss`), per completion token:

    M       = beta * p_T + (1 - beta) * p_S
    JSD_b   = beta * KL(p_T || M) + (1 - beta) * KL(p_S || M)
    beta 0  = forward KL(p_T || p_S) = sum_v p_T (log p_T - log p_S)   (mode-covering)
    beta 1  = reverse KL(p_S || p_T) = sum_v p_S (log p_S - log p_T)   (mode-seeking)

summed over the vocabulary and averaged over the valid (label != -100) tokens. Like TRL, the
loss applies no temperature (`KDConfig.temperature` only sets sampling) and no tau^2 factor.

Three modes (`KDConfig.mode`):
- `logit`: off-policy token-level KD on the dataset's completions, `alpha * CE(gold) +
  (1 - alpha) * JSD_beta` (beta 0: the forward-KL "KD-logit" arm).
- `gkd`: on-policy GKD as TRL's `GKDTrainer.training_step`: per micro-batch, with probability
  `lmbda` the completion is replaced by a student sample of `max_new_tokens` at `temperature`
  from the prompt; otherwise the dataset completion, or a teacher sample when `seq_kd`.
- `seq`: sequence-level KD (Kim & Rush 2016; TRL's `seq_kd=True, lmbda=0` without the logits):
  before training the teacher writes `seq_samples` completions per training problem at
  `seq_temperature`; those whose final answer matches the gold one are kept (rejection sampling)
  and cached in the stage folder (`seq_kd_traces.jsonl`, reused on resume; its meta file holds
  the teacher, sampling settings, seed, prompt format, max_length, field names and a sha256 of
  the problems, and a cache sampled otherwise is refused), then plain SFT on them. A problem with no correct trace is dropped from its micro-batch.

Prompts (the dataset's, the generation prompts of gkd / seq) follow the stage's
`data.prompt_format` (`instruction_data.prompt_text`: Alpaca or the tokenizer's chat template).

Every random draw inside `loss` (the lmbda coin, sampling) comes from a generator seeded by
(seed, step, micro), so a resumed stage equals an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from layerwise.eval.math_generation import gold_number
from layerwise.finetune.instruction_data import IGNORE_INDEX, collate, encode_examples
from layerwise.finetune.objectives import ObjectiveContext, objective_generator
from layerwise.finetune.rewards import extract_answer
from layerwise_core import (
    LayerwiseConfig,
    UsageError,
    atomic_write,
    load_pretrained,
    pad_token_rows,
    require_model_folder,
    seeded_torch_rng,
)

__all__ = [
    "KDConfig",
    "KDObjective",
    "forward_kl",
    "generalized_jsd",
    "reverse_kl",
]

TRACES_FILE = "seq_kd_traces.jsonl"  # mode seq: the kept teacher traces, one per line
TRACES_META = "seq_kd_traces.meta.json"  # how they were sampled (a mismatch is refused)


def generalized_jsd(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor | None = None,
    beta: float = 0.5,
    temperature: float = 1.0,
) -> Tensor:
    """GKD's generalized JSD (arXiv:2306.13649 Eq. 1, TRL's convention), mean over valid tokens.

    `student_logits`, `teacher_logits`: [..., V]; `labels`: [...] aligned with the logits (the
    caller shifts: logits at t score the token at t + 1), -100 marks positions left out; None
    counts every position. beta 0 is KL(p_T || p_S), beta 1 is KL(p_S || p_T), otherwise
    beta KL(p_T || M) + (1 - beta) KL(p_S || M) with M = beta p_T + (1 - beta) p_S. The logits are
    divided by `temperature` before the softmax (TRL's GKD uses 1)."""
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"generalized_jsd: beta must lie in [0, 1], got {beta}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"generalized_jsd: student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} differ: distil between models with one vocabulary"
        )
    log_s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    if beta == 0.0:
        per_token = (log_t.exp() * (log_t - log_s)).sum(-1)
    elif beta == 1.0:
        per_token = (log_s.exp() * (log_s - log_t)).sum(-1)
    else:
        b = torch.tensor(beta, dtype=log_s.dtype, device=log_s.device)
        log_m = torch.logsumexp(torch.stack([log_t + torch.log(b), log_s + torch.log1p(-b)]), 0)
        kl_t = (log_t.exp() * (log_t - log_m)).sum(-1)
        kl_s = (log_s.exp() * (log_s - log_m)).sum(-1)
        per_token = b * kl_t + (1 - b) * kl_s
    if labels is None:
        return per_token.mean()
    valid = labels != IGNORE_INDEX
    return per_token[valid].sum() / valid.sum().clamp_min(1)


def forward_kl(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor | None = None,
    temperature: float = 1.0,
) -> Tensor:
    """KL(p_T || p_S) = sum_v p_T (log p_T - log p_S), mean over valid tokens (`generalized_jsd`
    with beta 0): the mode-covering KD loss of Hinton et al. without the tau^2 factor."""
    return generalized_jsd(student_logits, teacher_logits, labels, 0.0, temperature)


def reverse_kl(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor | None = None,
    temperature: float = 1.0,
) -> Tensor:
    """KL(p_S || p_T) = sum_v p_S (log p_S - log p_T), mean over valid tokens (`generalized_jsd`
    with beta 1): the mode-seeking loss of MiniLLM / on-policy distillation."""
    return generalized_jsd(student_logits, teacher_logits, labels, 1.0, temperature)


class KDConfig(LayerwiseConfig):
    """`objective: {name: kd, ...}`: distil a frozen teacher into the trained model. TRL's
    `GKDConfig` names and defaults (temperature, lmbda, beta, max_new_tokens, seq_kd)."""

    mode: Literal["logit", "gkd", "seq"] = "logit"  # off-policy logits | on-policy GKD | traces
    teacher: str = Field(min_length=1)  # a local Hugging Face folder, same vocabulary (required)
    temperature: float = Field(0.9, gt=0)  # sampling temperature of generated completions
    lmbda: float = Field(0.5, ge=0, le=1)  # gkd: share of micro-batches sampled from the student
    beta: float = Field(0.5, ge=0, le=1)  # JSD interpolation: 0 forward KL, 1 reverse KL
    max_new_tokens: int = Field(128, ge=1)  # length of a generated completion
    seq_kd: bool = False  # gkd: the off-policy micro-batches use teacher samples, not the data
    alpha: float = Field(0.0, ge=0, le=1)  # logit / gkd: weight of the gold CE mixed in
    seq_samples: int = Field(4, ge=1)  # seq: teacher samples per training problem
    seq_temperature: float = Field(0.7, gt=0)  # seq: their sampling temperature

    def build(self) -> KDObjective:
        """The objective the fine-tuning loop calls (`layerwise.finetune.objectives.Objective`)."""
        return KDObjective(self)


def _prompt_lengths(labels: Tensor) -> Tensor:
    """Per row, the number of leading -100 labels: the prompt (`encode_examples`' layout)."""
    return (labels == IGNORE_INDEX).long().cumprod(1).sum(1)


@torch.no_grad()
def sample_completions(
    model: nn.Module,
    prompts: list[list[int]],
    *,
    pad_token_id: int,
    eos_token_id: int | None,
    max_new_tokens: int,
    temperature: float,
    seed: int,
) -> list[list[int]]:
    """One sampled completion per prompt (TRL's GKD sampling: top_k 0, top_p 1), cut after its
    first EOS (kept). The global RNG is forked and seeded with `seed`, so the draws depend on
    `seed` alone and the caller's random state is left untouched."""
    device = next(model.parameters()).device
    ids, mask = pad_token_rows(prompts, pad_token_id, left=True)
    was_training = model.training
    model.eval()
    with seeded_torch_rng(seed, device):
        out = model.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            do_sample=True,
            temperature=temperature,
            top_k=0,
            top_p=1.0,
            max_new_tokens=max_new_tokens,
            pad_token_id=pad_token_id,
            eos_token_id=eos_token_id,
        )
    model.train(was_training)
    completions = []
    for row in out[:, ids.shape[1] :].tolist():
        if eos_token_id is not None and eos_token_id in row:
            row = row[: row.index(eos_token_id) + 1]
        completions.append(row)
    return completions


def _problems_sha256(ctx: ObjectiveContext) -> str:
    """sha256 of the records' (instruction, answer, final) triples in order: the problems the seq
    traces were sampled for and checked against (`final`, when present, is the gold number)."""
    rows = [
        [r.get(ctx.instruction_field), r.get(ctx.answer_field), r.get("final")] for r in ctx.records
    ]
    text = json.dumps(rows, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _draw_seed(generator: torch.Generator) -> int:
    return int(torch.randint(0, 2**62, (1,), generator=generator))


class KDObjective:
    """`KDConfig`'s objective (`layerwise.finetune.objectives.Objective`): a frozen teacher
    loaded in `setup`; `loss` per micro-batch by mode (see the module docstring)."""

    def __init__(self, config: KDConfig) -> None:
        self.config = config
        self.teacher: nn.Module | None = None
        self.traces: dict[str, list[str]] = {}  # seq: instruction -> kept teacher completions

    # ---- setup -----------------------------------------------------------------------------
    def setup(self, ctx: ObjectiveContext) -> None:
        """Load the frozen teacher (same vocabulary, the student's dtype, eval mode); mode seq
        then samples and filters the teacher traces (or reuses those cached in `ctx.out_dir`)."""
        self.ctx = ctx
        tok = ctx.tokenizer
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        folder = require_model_folder(self.config.teacher, "objective.teacher")
        dtype = next(ctx.base_model.parameters()).dtype
        from transformers import AutoModelForCausalLM

        teacher = load_pretrained(folder, dtype=dtype, auto_class=AutoModelForCausalLM)
        student_vocab = ctx.base_model.get_output_embeddings().weight.shape[0]
        teacher_vocab = teacher.get_output_embeddings().weight.shape[0]
        if student_vocab != teacher_vocab:
            raise UsageError(
                f"objective.teacher {self.config.teacher!r} has {teacher_vocab} output tokens but "
                f"the student {student_vocab}: token-level KD compares whole next-token "
                "distributions, so pick a teacher with the student's tokenizer and vocabulary"
            )
        teacher.requires_grad_(False)
        self.teacher = teacher.to(ctx.device).eval()
        if self.config.mode == "seq":
            self.traces = self._seq_traces(ctx)

    def _seq_traces(self, ctx: ObjectiveContext) -> dict[str, list[str]]:
        """instruction -> the teacher's correct completions, from the cache or sampled now."""
        c = self.config
        meta = {
            "teacher": str(Path(c.teacher).resolve()),
            "seq_samples": c.seq_samples,
            "seq_temperature": c.seq_temperature,
            "max_new_tokens": c.max_new_tokens,
            "seed": ctx.seed,
            "problems": len(ctx.records),
            "problems_sha256": _problems_sha256(ctx),
            "max_length": ctx.max_length,
            "instruction_field": ctx.instruction_field,
            "answer_field": ctx.answer_field,
        }
        if _prompt_format(ctx) != "alpaca":  # the key only when not the default
            meta["prompt_format"] = _prompt_format(ctx)
        path, meta_path = Path(ctx.out_dir) / TRACES_FILE, Path(ctx.out_dir) / TRACES_META
        if path.is_file() and meta_path.is_file():
            cached = json.loads(meta_path.read_text())
            if cached != meta:
                differ = ", ".join(
                    f"{k} {cached.get(k)!r} (now {meta.get(k)!r})"
                    for k in sorted(set(cached) | set(meta))
                    if cached.get(k) != meta.get(k)
                )
                raise UsageError(
                    f"{path} was sampled with other settings ({differ}): delete {path} and "
                    f"{meta_path} to sample the teacher traces again"
                )
            rows = [json.loads(line) for line in path.read_text().splitlines() if line]
        else:
            rows = self._sample_traces(ctx)
            with atomic_write(path, "w") as handle:
                handle.writelines(json.dumps(row) + "\n" for row in rows)
            with atomic_write(meta_path, "w") as handle:
                json.dump(meta, handle)
        traces: dict[str, list[str]] = {}
        for row in rows:
            traces.setdefault(row[ctx.instruction_field], []).append(row[ctx.answer_field])
        return traces

    def _sample_traces(self, ctx: ObjectiveContext, chunk: int = 16) -> list[dict[str, Any]]:
        """Rejection sampling: `seq_samples` teacher completions per problem, the correct kept:
        `rewards.extract_answer` of the completion equals the record's `final` (else the number
        of its gold answer, `gold_number`), as the exact-match reward scores it."""
        c, tok = self.config, ctx.tokenizer
        prompts = [
            ids[: labels.count(IGNORE_INDEX)]
            for ids, labels in encode_examples(
                ctx.records,
                tok,
                ctx.instruction_field,
                ctx.answer_field,
                ctx.max_length,
                _prompt_format(ctx),
            )
        ]
        jobs = [(i, k) for i in range(len(ctx.records)) for k in range(c.seq_samples)]
        rows = []
        for start in range(0, len(jobs), chunk):
            part = jobs[start : start + chunk]
            completions = sample_completions(
                self.teacher,
                [prompts[i] for i, _ in part],
                pad_token_id=self.pad_id,
                eos_token_id=tok.eos_token_id,
                max_new_tokens=c.max_new_tokens,
                temperature=c.seq_temperature,
                seed=_draw_seed(objective_generator(ctx.seed, -1, start)),
            )
            for (i, k), completion in zip(part, completions):
                record = ctx.records[i]
                gold = gold_number(record.get("final", record[ctx.answer_field]))
                text = tok.decode(completion, skip_special_tokens=True)
                answer = extract_answer(text)
                if answer is not None and answer == gold:
                    rows.append(
                        {
                            ctx.instruction_field: record[ctx.instruction_field],
                            ctx.answer_field: text,
                            "problem": i,
                            "sample": k,
                        }
                    )
        return rows

    # ---- the loop's interface --------------------------------------------------------------
    def records_per_micro_batch(self, batch_size: int) -> int:
        return batch_size

    def state_dict(self) -> dict:
        return {}  # no state: draws are keyed by (seed, step, micro), traces live on disk

    def load_state_dict(self, state: dict) -> None:
        pass

    def loss(
        self,
        model: nn.Module,
        records: list[dict],
        batch: dict[str, Tensor],
        step: int,
        micro: int,
    ) -> tuple[Tensor, dict[str, float]]:
        """(loss, metrics) of one micro-batch; see the module docstring for each mode."""
        if self.teacher is None:
            raise RuntimeError("KDObjective.loss before setup(ctx): call setup first")
        generator = objective_generator(self.ctx.seed, step, micro)
        if self.config.mode == "seq":
            return self._seq_loss(model, records, generator)
        metrics = {"on_policy": 0.0, "teacher_sampled": 0.0}
        gold = batch
        if self.config.mode == "gkd":
            coin = float(torch.rand((), generator=generator))
            seed = _draw_seed(generator)
            if coin < self.config.lmbda:
                batch, metrics["on_policy"] = self._resample(model, batch, seed), 1.0
            elif self.config.seq_kd:
                batch, metrics["teacher_sampled"] = self._resample(self.teacher, batch, seed), 1.0
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        with torch.no_grad():
            teacher_logits = self.teacher(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
            ).logits
        labels = batch["labels"][:, 1:]
        kd = generalized_jsd(logits[:, :-1], teacher_logits[:, :-1], labels, self.config.beta)
        metrics["kd"] = kd.item()
        metrics["completion_tokens"] = float((labels != IGNORE_INDEX).sum())
        loss = kd
        alpha = self.config.alpha
        if alpha > 0:
            if gold is not batch:
                logits = model(input_ids=gold["input_ids"], attention_mask=gold["attention_mask"])
                logits = logits.logits
            ce = _token_ce(logits, gold["labels"])
            metrics["ce"] = ce.item()
            loss = alpha * ce + (1 - alpha) * kd
        return loss, metrics

    def _resample(self, sampler: nn.Module, batch: dict[str, Tensor], seed: int):
        """`batch` with each completion replaced by a sample of `sampler` from its prompt
        (TRL's `generate_on_policy_outputs`: prompt masked, the sample up to its EOS scored)."""
        c, tok = self.config, self.ctx.tokenizer
        prompt_lengths = _prompt_lengths(batch["labels"]).tolist()
        prompts = [row[:n] for row, n in zip(batch["input_ids"].tolist(), prompt_lengths)]
        completions = sample_completions(
            sampler,
            prompts,
            pad_token_id=self.pad_id,
            eos_token_id=tok.eos_token_id,
            max_new_tokens=c.max_new_tokens,
            temperature=c.temperature,
            seed=seed,
        )
        examples = [
            (p + s, [IGNORE_INDEX] * len(p) + s) for p, s in zip(prompts, completions, strict=True)
        ]
        device = batch["input_ids"].device
        return {k: v.to(device) for k, v in collate(examples, self.pad_id).items()}

    def _seq_loss(
        self, model: nn.Module, records: list[dict], generator: torch.Generator
    ) -> tuple[Tensor, dict[str, float]]:
        """SFT on one kept teacher trace per problem (drawn with `generator`); problems without
        a correct trace are left out (a micro-batch of none gives a zero loss with a graph)."""
        ctx = self.ctx
        chosen = []
        for record in records:
            options = self.traces.get(record[ctx.instruction_field], [])
            if options:
                pick = int(torch.randint(len(options), (), generator=generator))
                chosen.append({**record, ctx.answer_field: options[pick]})
        metrics = {"kept_problems": float(len(chosen))}
        if not chosen:
            zero = sum(p.sum() for p in model.parameters() if p.requires_grad) * 0.0
            return zero, {**metrics, "ce": 0.0}
        examples = encode_examples(
            chosen,
            ctx.tokenizer,
            ctx.instruction_field,
            ctx.answer_field,
            ctx.max_length,
            _prompt_format(ctx),
        )
        batch = {k: v.to(ctx.device) for k, v in collate(examples, self.pad_id).items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        ce = _token_ce(logits, batch["labels"])
        return ce, {**metrics, "ce": ce.item()}


def _prompt_format(ctx: ObjectiveContext) -> str:
    """The stage's `data.prompt_format` (the teacher's and the student's prompts)."""
    return getattr(ctx, "prompt_format", "alpaca")


def _token_ce(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean next-token cross-entropy over the valid (label != -100) tokens."""
    return F.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(),
        labels[:, 1:].flatten(),
        ignore_index=IGNORE_INDEX,
    )

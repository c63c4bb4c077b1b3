"""Two ways to score a (pruned) model, because they disagree about which layers matter.

- likelihood: the model only has to rank what it is shown. `PerplexityScorer` (next-token
  perplexity of text) and `MultipleChoiceScorer` (pick the choice of highest log-likelihood, as
  lm-eval's `loglikelihood` requests do).
- generation: the model has to produce the answer itself, token after token, from its own earlier
  tokens. `ExactMatchScorer`: greedy decoding and an exact-match check (lm-eval's
  `generate_until` with an exact-match metric).

Every scorer is a callable `scorer(model) -> float` with `name`, `protocol` and `higher_is_better`,
so sweeps and reports treat them alike. Causal LMs and masked-diffusion LMs (bidirectional;
`config.logit_shift` set, e.g. core's `tiny_bidirectional`) are both supported: for the latter the
likelihood is that of masked tokens (a fixed, seeded mask) and generation is greedy unmasking.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from depth_probe.capture import logit_shift_of
from layerwise_core import TokenInputs, pad_token_id, pad_token_rows, token_inputs

__all__ = [
    "ExactMatchScorer",
    "MultipleChoiceItem",
    "MultipleChoiceScorer",
    "PerplexityScorer",
    "Scorer",
    "first_line",
    "greedy_generate",
    "is_masked_diffusion",
]


class Scorer:
    """Base class: `__call__(model) -> float`; `name`, `protocol` ("likelihood" | "generation")."""

    name: str = "score"
    protocol: str = "likelihood"
    higher_is_better: bool = True

    def __call__(self, model: nn.Module) -> float:  # pragma: no cover - abstract
        raise NotImplementedError


def is_masked_diffusion(model: nn.Module) -> bool:
    """True for bidirectional masked-diffusion LMs: a config with `logit_shift` (core's test models,
    LLaDA-/Dream-style ports) or model type llada / dream."""
    config = getattr(model, "config", None)
    return getattr(config, "logit_shift", None) is not None or getattr(
        config, "model_type", ""
    ).lower() in ("llada", "dream")


def _mask_token_id(model: nn.Module) -> int:
    mask_id = getattr(getattr(model, "config", None), "mask_token_id", None)
    if mask_id is None:
        raise ValueError(
            "masked-diffusion scoring needs config.mask_token_id (the [MASK] token id); set it"
        )
    return int(mask_id)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.log_softmax(logits.float(), dim=-1).gather(-1, targets[..., None])[..., 0]


def _logits_at(
    model: nn.Module, inputs: torch.Tensor, mask: torch.Tensor, rows: torch.Tensor
) -> torch.Tensor:
    """Logits at the positions flagged in `rows` ([batch, seq] bool), as [n_flagged, vocab].

    The LM head only sees those positions (a pre-hook selects them), so scoring a few answer tokens
    never materialises [batch, seq, vocab] logits for a 50k-token vocabulary.
    """
    head = getattr(model, "get_output_embeddings", lambda: None)()
    handle = None
    if isinstance(head, nn.Module):

        def select(module, args):
            return (args[0][rows.to(args[0].device)][None], *args[1:])

        handle = head.register_forward_pre_hook(select)
    try:
        logits = model(input_ids=inputs, attention_mask=mask).logits
    finally:
        if handle is not None:
            handle.remove()
    return logits[0] if handle is not None else logits[rows]


def _aligned_logprobs(
    model: nn.Module, ids: torch.Tensor, mask: torch.Tensor, scored: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p(token), counted): log-probabilities at the positions flagged in `scored` ([batch,
    seq] bool) that have a logit to score them, 0 elsewhere; `counted` flags those positions.

    Causal LMs score token i from the logits at i - 1. Masked-diffusion LMs see the scored tokens
    replaced by [MASK] and score token i from the logits at i - logit_shift.
    """
    device = _device(model)
    ids, mask, scored = ids.to(device), mask.to(device), scored.to(device)
    if is_masked_diffusion(model):
        shift = logit_shift_of(model)
        inputs = torch.where(scored, torch.full_like(ids, _mask_token_id(model)), ids)
    else:
        shift = 1
        inputs = ids
    counted = scored.clone()
    counted[:, :shift] = False  # no logit scores the first `shift` tokens
    source = torch.zeros_like(counted)  # positions whose logits score a counted token
    source[:, : ids.shape[1] - shift] = counted[:, shift:]
    out = torch.zeros(ids.shape, dtype=torch.float32, device=device)
    if not counted.any():
        return out, counted
    logits = _logits_at(model, inputs, mask, source)
    out[counted] = _token_logprobs(logits, ids[counted])
    return out, counted


class PerplexityScorer(Scorer):
    """exp(mean NLL) of the text's tokens; lower is better.

    Causal LMs: next-token NLL of every real token after the first. Masked-diffusion LMs: NLL of a
    fixed, seeded subset of `mask_ratio` of the tokens, all masked at once (the same subset for
    every pruned variant, so scores compare).
    """

    name = "perplexity"
    protocol = "likelihood"
    higher_is_better = False

    def __init__(
        self,
        input_ids: TokenInputs,
        attention_mask: torch.Tensor | None = None,
        *,
        batch_size: int = 8,
        mask_ratio: float = 0.5,
        seed: int = 0,
        name: str = "perplexity",
    ):
        input_ids, attention_mask = token_inputs(input_ids, attention_mask, what="PerplexityScorer")
        if input_ids is None:
            raise ValueError("PerplexityScorer: pass the held-out token ids as input_ids")
        self.input_ids = input_ids
        self.attention_mask = (
            torch.ones_like(input_ids) if attention_mask is None else attention_mask
        )
        self.batch_size = batch_size
        self.name = name
        generator = torch.Generator().manual_seed(seed)
        self._diffusion_mask = (
            torch.rand(input_ids.shape, generator=generator) < mask_ratio
        ) & self.attention_mask.bool()

    @torch.no_grad()
    def __call__(self, model: nn.Module) -> float:
        total, count = 0.0, 0
        diffusion = is_masked_diffusion(model)
        for start in range(0, self.input_ids.shape[0], self.batch_size):
            rows = slice(start, start + self.batch_size)
            ids, mask = self.input_ids[rows], self.attention_mask[rows]
            if diffusion:
                scored = self._diffusion_mask[rows]
            else:
                scored = mask.bool().clone()
                scored[:, 1:] &= mask[:, :-1].bool()
                scored[:, 0] = False
            logp, counted = _aligned_logprobs(model, ids, mask, scored)
            total -= logp.sum().item()
            count += int(counted.sum())
        return math.exp(total / max(count, 1))


@dataclass(frozen=True)
class MultipleChoiceItem:
    context: str
    choices: tuple[str, ...]  # continuations, e.g. (" 7", " 8"); mind the leading space
    answer: int  # index of the right choice


class MultipleChoiceScorer(Scorer):
    """Accuracy of picking the choice of highest log-likelihood given the context.

    `length_normalize=True` divides each choice's log-likelihood by its token count (lm-eval's
    `acc_norm` normalises by characters; tokens are the model-agnostic unit here).
    `share_prefix=True` (causal LMs) runs each context once and scores all its choices from the
    context's KV cache: the same numbers as scoring `context + choice` sequences one by one, at a
    fraction of the cost when contexts are long and choices short.
    """

    name = "mc_accuracy"
    protocol = "likelihood"
    higher_is_better = True

    def __init__(
        self,
        tokenizer,
        items: Sequence[MultipleChoiceItem | tuple],
        *,
        length_normalize: bool = False,
        share_prefix: bool = True,
        batch_size: int = 16,
        name: str = "mc_accuracy",
    ):
        self.items = [
            i if isinstance(i, MultipleChoiceItem) else MultipleChoiceItem(*i) for i in items
        ]
        self.length_normalize = length_normalize
        self.share_prefix = share_prefix
        self.batch_size = batch_size
        self.name = name
        self.pad_id = pad_token_id(tokenizer)
        self._contexts: list[list[int]] = []
        self._choices: list[list[list[int]]] = []
        for item in self.items:
            self._contexts.append(tokenizer(item.context, add_special_tokens=True)["input_ids"])
            encoded = [tokenizer(c, add_special_tokens=False)["input_ids"] for c in item.choices]
            for choice, tokens in zip(item.choices, encoded):
                if not tokens:
                    raise ValueError(f"MultipleChoiceScorer: choice {choice!r} has no tokens")
            self._choices.append(encoded)

    def _full_sequences(self, model: nn.Module, items: list[int]) -> list[list[float]]:
        rows = [(i, c) for i in items for c in range(len(self._choices[i]))]
        seqs = [self._contexts[i] + self._choices[i][c] for i, c in rows]
        ids, mask = pad_token_rows(seqs, self.pad_id, left=False)
        scored = torch.zeros_like(mask, dtype=torch.bool)
        for row, (i, _) in enumerate(rows):
            scored[row, len(self._contexts[i]) : len(seqs[row])] = True
        logp = _aligned_logprobs(model, ids, mask, scored)[0].sum(-1).tolist()
        out = [[0.0] * len(self._choices[i]) for i in items]
        for row, (i, c) in enumerate(rows):
            out[items.index(i)][c] = logp[row]
        return out

    def _shared_prefix(self, model: nn.Module, items: list[int]) -> list[list[float]]:
        device = _device(model)
        ctx_ids, ctx_mask = pad_token_rows(
            [self._contexts[i] for i in items], self.pad_id, left=True
        )
        ctx_ids, ctx_mask = ctx_ids.to(device), ctx_mask.to(device)
        out = model(
            input_ids=ctx_ids,
            attention_mask=ctx_mask,
            position_ids=(ctx_mask.cumsum(-1) - 1).clamp_min(0),
            use_cache=True,
            logits_to_keep=1,
        )
        first = F.log_softmax(out.logits[:, -1].float(), dim=-1)  # scores each choice's 1st token
        rows = [(k, c) for k, i in enumerate(items) for c in range(len(self._choices[i]))]
        owner = torch.tensor([k for k, _ in rows], device=device)
        cache = out.past_key_values
        cache.reorder_cache(owner)  # one copy of its context's cache per choice
        cont_ids, cont_mask = pad_token_rows(
            [self._choices[items[k]][c] for k, c in rows], self.pad_id, left=False
        )
        cont_ids, cont_mask = cont_ids.to(device), cont_mask.to(device)
        lengths = ctx_mask.sum(-1)[owner]
        logits = model(
            input_ids=cont_ids,
            attention_mask=torch.cat([ctx_mask[owner], cont_mask], 1),
            position_ids=lengths[:, None] + torch.arange(cont_ids.shape[1], device=device),
            past_key_values=cache,
            use_cache=True,
        ).logits
        logp = first[owner].gather(-1, cont_ids[:, :1])[:, 0]
        if cont_ids.shape[1] > 1:
            later = _token_logprobs(logits[:, :-1], cont_ids[:, 1:])
            logp = logp + (later * cont_mask[:, 1:]).sum(-1)
        result = [[0.0] * len(self._choices[i]) for i in items]
        for row, (k, c) in enumerate(rows):
            result[k][c] = logp[row].item()
        return result

    def choice_loglikelihoods(self, model: nn.Module) -> list[list[float]]:
        """log p(choice | context) for every item and choice (normalised if asked)."""
        shared = self.share_prefix and not is_masked_diffusion(model)
        # batch_size counts sequences of context length: contexts when shared, else context+choice
        per_batch = (
            self.batch_size if shared else max(1, self.batch_size // max(map(len, self._choices)))
        )
        scores: list[list[float]] = []
        with torch.no_grad():
            for start in range(0, len(self.items), per_batch):
                items = list(range(start, min(start + per_batch, len(self.items))))
                if shared:
                    scores += self._shared_prefix(model, items)
                else:
                    scores += self._full_sequences(model, items)
        if self.length_normalize:
            scores = [
                [v / len(tokens) for v, tokens in zip(row, choices)]
                for row, choices in zip(scores, self._choices)
            ]
        return scores

    def __call__(self, model: nn.Module) -> float:
        scores = self.choice_loglikelihoods(model)
        hits = [
            max(range(len(s)), key=s.__getitem__) == item.answer
            for s, item in zip(scores, self.items)
        ]
        return sum(hits) / len(hits)


@torch.no_grad()
def greedy_generate(
    model: nn.Module,
    input_ids: TokenInputs,
    attention_mask: torch.Tensor | None = None,
    max_new_tokens: int = 8,
    *,
    pad_token_id: int = 0,
    eos_token_id: int | None = None,
) -> torch.Tensor:
    """Greedy continuation of left-padded prompts; returns only the new tokens [batch, new].

    Causal LMs: `model.generate(do_sample=False)` with the KV cache. Masked-diffusion LMs: append
    `max_new_tokens` [MASK] tokens and unmask one per step, always the most confident one (LLaDA's
    low-confidence remasking with one token per step), taking its argmax. `input_ids` may be a
    batch mapping with "input_ids" and "attention_mask" (no mask: every token is real).
    """
    device = _device(model)
    input_ids, attention_mask = token_inputs(input_ids, attention_mask, what="greedy_generate")
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    if not is_masked_diffusion(model):
        out = model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            do_sample=False,
            max_new_tokens=max_new_tokens,
            min_new_tokens=max_new_tokens if eos_token_id is None else 0,
            pad_token_id=pad_token_id,
            eos_token_id=eos_token_id,
        )
        return out[:, input_ids.shape[1] :]
    mask_id, shift = _mask_token_id(model), logit_shift_of(model)
    batch, prompt_len = input_ids.shape
    x = torch.cat([input_ids, torch.full((batch, max_new_tokens), mask_id, device=device)], 1)
    keys = torch.cat([attention_mask, torch.ones(batch, max_new_tokens, device=device).long()], 1)
    for _ in range(max_new_tokens):
        logits = model(input_ids=x, attention_mask=keys).logits.float()
        if shift:
            logits = torch.cat([logits[:, :1], logits[:, :-shift]], 1)  # position i scores token i
        confidence, token = logits.softmax(-1).max(-1)
        masked = x == mask_id
        masked[:, :prompt_len] = False
        confidence = torch.where(masked, confidence, torch.full_like(confidence, -1.0))
        pick = confidence.argmax(-1)
        rows = torch.arange(batch, device=device)
        has_mask = masked.any(-1)
        x[rows[has_mask], pick[has_mask]] = token[rows[has_mask], pick[has_mask]]
    return x[:, prompt_len:]


def first_line(text: str) -> str:
    """The default answer extractor: the generated text up to the first newline, stripped."""
    return text.strip().split("\n", 1)[0].strip()


class ExactMatchScorer(Scorer):
    """Fraction of prompts whose greedy continuation, after `extract`, equals the answer."""

    name = "exact_match"
    protocol = "generation"
    higher_is_better = True

    def __init__(
        self,
        tokenizer,
        prompts: Sequence[str],
        answers: Sequence[str],
        *,
        max_new_tokens: int = 8,
        batch_size: int = 16,
        extract: Callable[[str], str] = first_line,
        stop_at_eos: bool = False,
        name: str = "exact_match",
    ):
        if len(prompts) != len(answers):
            raise ValueError("ExactMatchScorer: prompts and answers differ in length")
        self.tokenizer = tokenizer
        self.prompts = list(prompts)
        self.answers = [a.strip() for a in answers]
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.extract = extract
        self.eos_id = getattr(tokenizer, "eos_token_id", None) if stop_at_eos else None
        self.name = name
        self.pad_id = pad_token_id(tokenizer)
        self._prompt_ids = [
            tokenizer(p, add_special_tokens=True)["input_ids"] for p in self.prompts
        ]
        self.last_outputs: list[str] = []

    def generations(self, model: nn.Module) -> list[str]:
        texts = []
        for start in range(0, len(self._prompt_ids), self.batch_size):
            ids, mask = pad_token_rows(
                self._prompt_ids[start : start + self.batch_size], self.pad_id, left=True
            )
            new = greedy_generate(
                model,
                ids,
                mask,
                self.max_new_tokens,
                pad_token_id=self.pad_id,
                eos_token_id=self.eos_id,
            )
            texts += self.tokenizer.batch_decode(new.cpu(), skip_special_tokens=True)
        return texts

    def __call__(self, model: nn.Module) -> float:
        self.last_outputs = self.generations(model)
        hits = [self.extract(t) == a for t, a in zip(self.last_outputs, self.answers)]
        return sum(hits) / len(hits)

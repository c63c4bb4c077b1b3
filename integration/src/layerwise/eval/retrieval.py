"""Key-information retrieval: key-value facts hidden in natural text, queried at a chosen depth.

A needle-in-a-haystack task sized for small models, usable with any Hugging Face causal LM and
tokenizer. A document of exactly `context_length` prompt tokens is

    filler[:a] FACT_1 filler[a:b] FACT_2 ... filler[..:] QUERY          -> answer

with `num_pairs` facts "The pass code of KEY is VALUE." inserted into a window of natural text
(`filler_texts`, e.g. the corpus's validation split), the queried fact at `depth` (0: start of the
document, 1: right before the query) and the others at random places; the query repeats the
fact's opening ("The pass code of KEY is") and the answer is " VALUE". Keys are random letter
strings, values random digit strings, all from a seeded `random.Random`: the same seed gives the
same documents on every machine.

Scoring is greedy exact match: an example counts as retrieved when, teacher-forced on its own
answer, the model's argmax at every answer position is the answer token, which holds exactly when
greedy decoding from the prompt produces the answer's tokens first. One forward pass per batch;
the mean negative log-likelihood of the answer tokens is reported with it.

    task = KeyValueRetrieval(tokenizer, corpus.texts("validation"))
    examples = task.examples(context_lengths=(128, 256), depths=(0, 0.5, 1), per_cell=20)
    print(evaluate_retrieval(model, examples).table())
    train_docs = task.documents(10_000, context_lengths=(128, 256), seed=1)  # token-id lists
"""

from __future__ import annotations

import hashlib
import random
import string
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from layerwise.data.corpus import load_corpus
from layerwise.models import load_model_and_tokenizer

__all__ = [
    "CellResult",
    "KeyValueRetrieval",
    "RetrievalExample",
    "RetrievalReport",
    "evaluate_pretrained",
    "evaluate_retrieval",
    "greedy_exact_match",
]


@dataclass(frozen=True)
class RetrievalExample:
    prompt_ids: list[int]  # document + query, ending right before the answer
    answer_ids: list[int]  # the queried value, as the model must continue
    key: str  # the queried key
    value: str  # its value (answer_ids decodes to " " + value)
    depth: float  # requested depth of the queried fact: 0 start of the document, 1 its end
    context_length: int  # len(prompt_ids)
    fact_offset: int  # index in prompt_ids where the queried fact's tokens start
    distractors: tuple[tuple[str, str], ...] = ()  # the other (key, value) facts of the document


@dataclass(frozen=True)
class CellResult:
    accuracy: float  # greedy exact-match rate
    answer_nll: float  # mean NLL of the answer tokens, nats
    count: int  # examples


@dataclass
class RetrievalReport:
    cells: dict[tuple[int, float], CellResult] = field(default_factory=dict)  # (context, depth)
    accuracy: float = 0.0  # over all examples
    answer_nll: float = 0.0  # over all answer tokens

    def as_dict(self) -> dict:
        """JSON-ready: overall numbers and one record per (context length, depth) cell."""
        return {
            "accuracy": self.accuracy,
            "answer_nll": self.answer_nll,
            "cells": [
                {"context_length": c, "depth": d, **vars(result)}
                for (c, d), result in sorted(self.cells.items())
            ],
        }

    def table(self) -> str:
        """Markdown: one row per context length, one column per depth, exact match in %."""
        contexts = sorted({c for c, _ in self.cells})
        depths = sorted({d for _, d in self.cells})
        lines = [
            "| context \\ depth | " + " | ".join(f"{d:g}" for d in depths) + " |",
            "|---|" + "---|" * len(depths),
        ]
        for c in contexts:
            cells = [self.cells.get((c, d)) for d in depths]
            text = [f"{100 * r.accuracy:.0f}%" if r else "" for r in cells]
            lines.append(f"| {c} | " + " | ".join(text) + " |")
        return "\n".join(lines)


def _rng(*parts: object) -> random.Random:
    digest = hashlib.sha256("\x00".join(map(str, ("kv-retrieval", *parts))).encode()).digest()
    return random.Random(digest)


class KeyValueRetrieval:
    """Builds retrieval documents from a tokenizer and natural filler text (module docstring).

    Args:
        tokenizer: any Hugging Face tokenizer (special tokens are never added).
        filler_texts: natural text for the haystack; tokenized once, up to `max_filler_tokens`.
        num_pairs: facts per document (1 = a single needle; more = distractor keys).
        key_length: letters per key; value_digits: digits per value (no leading zero).
        fact / query / answer: formats with {key} and {value}; the query must end where the
            answer starts.
    """

    def __init__(
        self,
        tokenizer,
        filler_texts: Iterable[str],
        *,
        num_pairs: int = 1,
        key_length: int = 3,
        value_digits: int = 3,
        fact: str = "\nThe pass code of {key} is {value}.\n",
        query: str = "\nThe pass code of {key} is",
        answer: str = " {value}",
        max_filler_tokens: int = 200_000,
    ):
        if num_pairs < 1 or key_length < 1 or value_digits < 1:
            raise ValueError("num_pairs, key_length and value_digits must all be >= 1")
        if num_pairs > 26**key_length // 2:
            raise ValueError(f"{num_pairs} distinct keys of {key_length} letters: use longer keys")
        self.tokenizer = tokenizer
        self.num_pairs = num_pairs
        self.key_length = key_length
        self.value_digits = value_digits
        self.fact, self.query, self.answer = fact, query, answer
        filler: list[int] = []
        for text in filler_texts:
            filler += self._encode(text.strip() + "\n")
            if len(filler) >= max_filler_tokens:
                break
        self.filler = filler[:max_filler_tokens]
        if not self.filler:
            raise ValueError("no filler text: pass natural text (e.g. corpus.texts('validation'))")

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _pairs(self, rng: random.Random) -> list[tuple[str, str]]:
        keys: list[str] = []
        while len(keys) < self.num_pairs:
            key = "".join(rng.choice(string.ascii_lowercase) for _ in range(self.key_length))
            if key not in keys:
                keys.append(key)
        low, high = 10 ** (self.value_digits - 1), 10**self.value_digits - 1
        return [(key, str(rng.randint(low, high))) for key in keys]

    def build(self, context_length: int, depth: float, rng: random.Random) -> RetrievalExample:
        """One document of exactly `context_length` prompt tokens, queried fact at `depth`."""
        if not 0.0 <= depth <= 1.0:
            raise ValueError(f"depth must be in [0, 1], got {depth}")
        pairs = self._pairs(rng)
        facts = [self._encode(self.fact.format(key=k, value=v)) for k, v in pairs]
        key, value = pairs[0]
        query = self._encode(self.query.format(key=key))
        budget = context_length - len(query) - sum(map(len, facts))
        if budget < 0:
            raise ValueError(
                f"context_length {context_length} is shorter than the {context_length - budget} "
                "tokens of the facts and the query: raise it or lower num_pairs"
            )
        if budget > len(self.filler):
            raise ValueError(
                f"context_length {context_length} needs {budget} filler tokens, only "
                f"{len(self.filler)} available: pass more filler text"
            )
        start = rng.randint(0, len(self.filler) - budget)
        window = self.filler[start : start + budget]
        # (cut point in the filler window, fact index); the queried fact (0) sits at depth
        cuts = [(round(depth * budget), 0)]
        cuts += [(rng.randint(0, budget), i) for i in range(1, len(facts))]
        # on a shared cut point the queried fact goes first at depth < 0.5, last otherwise
        cuts.sort(key=lambda cut: (cut[0], (cut[1] == 0) != (depth < 0.5)))
        prompt: list[int] = []
        previous, offset = 0, -1
        for cut, index in cuts:
            prompt += window[previous:cut]
            if index == 0:
                offset = len(prompt)
            prompt += facts[index]
            previous = cut
        prompt += window[previous:] + query
        return RetrievalExample(
            prompt_ids=prompt,
            answer_ids=self._encode(self.answer.format(value=value)),
            key=key,
            value=value,
            depth=float(depth),
            context_length=context_length,
            fact_offset=offset,
            distractors=tuple(pairs[1:]),
        )

    def examples(
        self,
        context_lengths: Sequence[int] = (128, 256),
        depths: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0),
        per_cell: int = 20,
        seed: int = 0,
    ) -> list[RetrievalExample]:
        """`per_cell` evaluation examples for every (context length, depth)."""
        return [
            self.build(c, d, _rng(seed, c, d, i))
            for c in context_lengths
            for d in depths
            for i in range(per_cell)
        ]

    def documents(
        self, count: int, context_lengths: Sequence[int] = (128, 256), seed: int = 1
    ) -> list[list[int]]:
        """`count` training documents (prompt + answer token ids), depth uniform in [0, 1].

        Use a seed different from the evaluation examples' so that their facts differ.
        """
        docs = []
        for i in range(count):
            rng = _rng("train", seed, i)
            example = self.build(rng.choice(list(context_lengths)), rng.random(), rng)
            docs.append(example.prompt_ids + example.answer_ids)
        return docs


@torch.no_grad()
def greedy_exact_match(
    model: nn.Module,
    examples: Sequence[RetrievalExample],
    batch_size: int = 16,
    device: torch.device | str | None = None,
) -> tuple[list[bool], list[float]]:
    """Per example: (greedy exact match, summed answer NLL in nats), teacher-forced on the answer.

    Rows are prompt + answer, right-padded (attention mask 0 on padding); the logit at position
    P - 1 + j scores answer token j.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    matches: list[bool] = []
    nlls: list[float] = []
    for lo in range(0, len(examples), batch_size):
        chunk = examples[lo : lo + batch_size]
        rows = [e.prompt_ids + e.answer_ids for e in chunk]
        width = max(map(len, rows))
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for b, row in enumerate(rows):
            ids[b, : len(row)] = torch.tensor(row)
            mask[b, : len(row)] = 1
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
        for b, e in enumerate(chunk):
            p, a = len(e.prompt_ids), len(e.answer_ids)
            scores = logits[b, p - 1 : p - 1 + a]
            target = torch.tensor(e.answer_ids, device=scores.device)
            matches.append(bool((scores.argmax(dim=-1) == target).all()))
            nlls.append(F.cross_entropy(scores, target, reduction="sum").item())
    model.train(was_training)
    return matches, nlls


def evaluate_retrieval(
    model: nn.Module,
    examples: Sequence[RetrievalExample],
    batch_size: int = 16,
    device: torch.device | str | None = None,
) -> RetrievalReport:
    """Greedy exact match and answer NLL, per (context length, depth) cell and overall."""
    if not examples:
        raise ValueError("no retrieval examples: build them with KeyValueRetrieval(...).examples()")
    matches, nlls = greedy_exact_match(model, examples, batch_size, device)
    groups: dict[tuple[int, float], list[int]] = {}
    for i, e in enumerate(examples):
        groups.setdefault((e.context_length, e.depth), []).append(i)
    report = RetrievalReport()
    for cell, idx in sorted(groups.items()):
        tokens = sum(len(examples[i].answer_ids) for i in idx)
        report.cells[cell] = CellResult(
            accuracy=sum(matches[i] for i in idx) / len(idx),
            answer_nll=sum(nlls[i] for i in idx) / tokens,
            count=len(idx),
        )
    report.accuracy = sum(matches) / len(matches)
    report.answer_nll = sum(nlls) / sum(len(e.answer_ids) for e in examples)
    return report


def evaluate_pretrained(
    model_path: str,
    *,
    tokenizer_path: str | None = None,
    source: str = "shakespeare",
    context_lengths: Sequence[int] = (128, 256),
    depths: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0),
    per_cell: int = 20,
    num_pairs: int = 1,
    value_digits: int = 3,
    seed: int = 0,
    batch_size: int = 16,
    device: str | None = None,
) -> RetrievalReport:
    """`layerwise eval retrieval`: a saved causal LM on documents made from `source`'s validation
    text (a `layerwise.data` corpus spec: shakespeare, text:PATH, jsonl:PATH, hf:NAME)."""
    # as trained (LNS / Mix-LN / quantisation re-applied); paths and vocabularies checked first
    model, tokenizer = load_model_and_tokenizer(model_path, tokenizer_path)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device)
    task = KeyValueRetrieval(
        tokenizer,
        load_corpus(source).texts("validation"),
        num_pairs=num_pairs,
        value_digits=value_digits,
    )
    examples = task.examples(context_lengths, depths, per_cell, seed)
    return evaluate_retrieval(model, examples, batch_size, device)

"""Fixed-logits models: networks whose output is prescribed, so that every commit can be derived by
hand. Offline Hugging Face libraries."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from types import SimpleNamespace

import pytest
import torch
from torch import nn

V = 8  # vocabulary of the fixed models
MASK = 7
EOS = 6


def prob_logits(token: int, p: float, vocab: int = V) -> torch.Tensor:
    """Logits whose softmax puts p on `token` and spreads 1 - p evenly on the rest."""
    probs = torch.full((vocab,), (1 - p) / (vocab - 1), dtype=torch.float64)
    probs[token] = p
    return probs.log().float()


class FixedLogits(nn.Module):
    """Returns logits from `fn(x, call)`; x (B, L) is what the sampler fed, call counts forwards.

    config: mask_token_id=7, logit_shift as given, eos_token_id=6, model_type "fixed".
    """

    def __init__(self, fn, logit_shift: int = 0):
        super().__init__()
        self.fn = fn
        self.calls = 0
        self.inputs: list[torch.Tensor] = []
        self._anchor = nn.Parameter(torch.zeros(()))  # gives the model a device
        self.config = SimpleNamespace(
            mask_token_id=MASK, logit_shift=logit_shift, eos_token_id=EOS, model_type="fixed"
        )

    def forward(self, input_ids=None, attention_mask=None, position_ids=None):
        self.calls += 1
        self.inputs.append(input_ids.clone())
        return SimpleNamespace(logits=self.fn(input_ids, self.calls))


def static(spec: dict[int, tuple[int, float]], length: int):
    """fn giving, at every call, the logits of `spec` {position: (token, p)}; other positions
    predict token 0 with p = 0.2."""
    table = torch.stack([prob_logits(*spec.get(i, (0, 0.2))) for i in range(length)])

    def fn(x, call):
        return table[None].expand(x.shape[0], -1, -1).clone()

    return fn


class PredictsMask(nn.Module):
    """Wraps a (tiny) model; at forward number c (from 1) the positions plan[c] predict the [MASK] id
    (its logit raised 4 above the row's maximum), as a real checkpoint sometimes does."""

    def __init__(self, inner: nn.Module, plan: dict[int, list[int]]):
        super().__init__()
        self.inner, self.plan, self.calls, self.config = inner, plan, 0, inner.config

    def forward(self, input_ids=None, attention_mask=None, position_ids=None):
        self.calls += 1
        out = self.inner(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids
        )
        logits = out.logits.clone()
        for pos in self.plan.get(self.calls, []):
            logits[:, pos, self.config.mask_token_id] = logits[:, pos].max(-1).values + 4.0
        return SimpleNamespace(logits=logits)


@pytest.fixture
def fl():
    """The fixed-logits toolkit: fl.model(fn, logit_shift=0), fl.static(spec, length),
    fl.prob_logits(token, p), fl.V / fl.MASK / fl.EOS, fl.predicts_mask(inner, plan)."""
    return SimpleNamespace(
        model=FixedLogits,
        static=static,
        prob_logits=prob_logits,
        V=V,
        MASK=MASK,
        EOS=EOS,
        predicts_mask=PredictsMask,
    )

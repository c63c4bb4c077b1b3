"""Hand a pruned model to lm-evaluation-harness (`pip install "depth-probe[lm-eval]"`).

The protocol question in lm-eval's words: `mmlu` scores the letter by `loglikelihood`,
`mmlu_continuation` the answer text by `loglikelihood`, `mmlu_generative` generates (`generate_until`)
and matches. Running the same removal under each shows whether a layer matters for ranking or for
producing an answer. The model is pruned in place with `skip_layers` and restored afterwards.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from depth_probe.layer_removal import skip_layers
from depth_probe.scoring import Scorer

__all__ = ["LmEvalScorer", "evaluate_with_lm_eval"]


def _lm_eval():
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
    except ImportError as err:  # the extra is optional
        raise ImportError(
            "depth_probe's lm-eval adapter needs lm-evaluation-harness: "
            'pip install "depth-probe[lm-eval]"'
        ) from err
    return lm_eval, HFLM


def evaluate_with_lm_eval(
    model: nn.Module,
    tokenizer,
    tasks: Sequence[str],
    *,
    remove: Sequence[int] = (),
    batch_size: int | str = 8,
    **simple_evaluate_kwargs: Any,
) -> dict:
    """`lm_eval.simple_evaluate(model=HFLM(pretrained=model, tokenizer=tokenizer), tasks=...)` with
    blocks `remove` skipped; returns lm-eval's results dict. The model is restored on return."""
    lm_eval, hflm = _lm_eval()
    with skip_layers(model, remove):
        lm = hflm(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
        return lm_eval.simple_evaluate(model=lm, tasks=list(tasks), **simple_evaluate_kwargs)


class LmEvalScorer(Scorer):
    """One lm-eval task and metric as a sweep scorer, e.g. `LmEvalScorer(tok, "arc_easy", "acc,none")`
    (protocol "likelihood") or `LmEvalScorer(tok, "gsm8k", "exact_match,strict-match",
    protocol="generation")`."""

    def __init__(
        self,
        tokenizer,
        task: str,
        metric: str = "acc,none",
        *,
        protocol: str = "likelihood",
        higher_is_better: bool = True,
        name: str | None = None,
        **simple_evaluate_kwargs: Any,
    ):
        self.tokenizer = tokenizer
        self.task = task
        self.metric = metric
        self.protocol = protocol
        self.higher_is_better = higher_is_better
        self.name = name or f"{task}:{metric}"
        self.kwargs = simple_evaluate_kwargs

    def __call__(self, model: nn.Module) -> float:
        results = evaluate_with_lm_eval(model, self.tokenizer, [self.task], **self.kwargs)
        return float(results["results"][self.task][self.metric])

"""SOAR as the paper describes it: a beam search over *positions* that collapses to parallel
decoding when the model is confident.

Cao et al., "Search or Accelerate: Confidence-Switched Position Beam Search for Diffusion Language
Models", arXiv:2602.10953. What we could read of the paper (its abstract and the project page
duterscmy.github.io/soar-introduction) says: under low confidence SOAR widens the search over
which positions to unmask (Position Beam Search, PBS, a search in the position dimension for
higher-confidence sequences); under high confidence it collapses the search and decodes many
positions at once. The method section itself was not retrievable here, so the rules below are our
reading, each marked with where it comes from. `dlm_decode.soar` is the released code
(`duterscmy/SOAR` `eval_llada8b/generate.py:generate_soar`) as it is; this module is the algorithm
without the released code's accidents:

Each row keeps up to B = `beam_width` partial canvases ("beams"). Every step feeds all beams that
still have masks, of all rows, through the network in one batched forward. For a beam with
canvas x, x0 = argmax(logits + T * Gumbel) over the real tokens (ours: never the [MASK] id, whose
commit would change nothing; the released code can commit it and leave the position masked) and
c_l = log softmax(logits)_l[x0_l] (full vocabulary) over the masked positions l of the beam's
current block (the first block that still has masks):

- parallel branch: if at least `min_parallel_tokens` positions have p_l = exp(c_l) above
  `confidence_threshold`, the beam proposes ONE child committing the (at most
  `max_parallel_tokens`) most confident of them;
- otherwise it proposes k = `branch_factor` children, each committing one of its k most
  confident positions (k is B unless set: the released code ties the two).

A child's score is its parent's plus the committed positions' log-probabilities (`score=
"log_prob"`: the log-probability of the committed tokens under the model's per-step marginals,
the usual beam-search score; the released LLaDA code sums probabilities, `"prob_sum"`, and the
released Dream code keeps their running mean, `"mean_prob"`). The row's candidates (B x k at
most) are sorted by score (stable), de-duplicated by canvas (two paths to the same canvas keep
the better-scored one) and pruned back to B. Collapse: if any beam of the row took the parallel
branch, the row keeps ONE beam, the best-scored parallel child (the released code keeps the best
candidate of any kind and tests the masks of beam 0, not of that candidate's parent).

Every beam of a row has committed the same number of tokens (a branch commits one, a parallel
step leaves one beam), so a row's beams complete together: the row ends then, or when the `steps`
cap is reached, and the answer is its best-scored beam. (The released code can hold beams of
different depths, feeds complete ones again and runs until every beam is complete.) Per row,
`canvas.steps`/`nfe` count the steps the row took part in and `sequence_evals` the beams fed
(x2 with guidance).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch
from pydantic import Field, model_validator

from dlm_decode._base import _StrategyConfig, _Validated
from dlm_decode.canvas import Canvas
from dlm_decode.remasking import gumbel_argmax

__all__ = ["SOARBeam", "SOARBeamConfig", "decode_soar_beam"]

Score = Literal["log_prob", "prob_sum", "mean_prob"]


class SOARBeamConfig(_StrategyConfig):
    """SOAR's position beam search (arXiv:2602.10953), the paper's algorithm. The paper's
    hyper-parameter table was not retrievable: defaults are the released code's where it has one
    (`duterscmy/SOAR`, `eval_llada8b/generate.py` and the `eval_*_soar*.sh` scripts), ours else."""

    # at most this many forwards per row; None: no cap (each step commits >= 1 token per beam,
    # so a row needs at most gen_length). Released: steps = gen_length in every script.
    steps: int | None = Field(None, ge=1)
    # semi-autoregressive blocks; None: one block (released Base/Dream scripts: block = length;
    # the LLaDA-Instruct script uses 32)
    block_length: int | None = Field(None, ge=1)
    beam_width: int = Field(2, ge=1)  # B: released max_beam_size=2 (LLaDA), beam_size=2 (Dream)
    branch_factor: int | None = Field(None, ge=1)  # positions per beam; None: = B (released)
    score: Score = "log_prob"  # beam score; log_prob: our reading of the paper [unverified]
    # p above it: parallel branch; None: pure position beam search (the paper's PBS).
    # Released: 0.95 (LLaDA generate_soar), 0.9 (Dream DreamGenerationConfig.threshhold)
    confidence_threshold: float | None = Field(0.95, ge=0, le=1)
    min_parallel_tokens: int = Field(1, ge=1)  # released: 1 (LLaDA and Dream)
    max_parallel_tokens: int = Field(5, ge=1)  # released: 5 (LLaDA and Dream)
    temperature: float = Field(0.0, ge=0)  # Gumbel-max sampling of x0; 0: argmax (released runs)
    cfg_scale: float = Field(0.0, ge=0)  # classifier-free guidance w (2 NFE per beam and step)
    record_beams: bool = False  # keep every step's kept beams in `SOARBeam.beam_history`

    @model_validator(mode="after")
    def _parallel_range(self) -> SOARBeamConfig:
        if self.min_parallel_tokens > self.max_parallel_tokens:
            raise ValueError(
                f"min_parallel_tokens {self.min_parallel_tokens} exceeds max_parallel_tokens "
                f"{self.max_parallel_tokens}: lower it or raise max_parallel_tokens"
            )
        return self

    def build(self) -> SOARBeam:
        return SOARBeam(**self._options(SOARBeam))


_DEFAULTS = SOARBeamConfig()


@dataclass
class BeamRecord:
    """One kept beam after a step (`record_beams=True`)."""

    sequence: torch.Tensor  # (L,) the beam's canvas
    score: float  # its score under the configured rule
    log_prob: float  # sum of log p of the tokens the search committed
    prob_sum: float  # sum of their p
    committed: int  # tokens the search committed


@dataclass
class SOARBeam(_Validated):
    """SOAR's confidence-switched position beam search as the paper describes it (Cao et al.,
    arXiv:2602.10953): `beam_width` beams, each expanding its `branch_factor` most confident
    positions, scored by the sum of log-probabilities, de-duplicated, collapsing to one beam when
    a beam can commit `min_parallel_tokens`+ positions above `confidence_threshold`. `SOAR` is
    the released code. `beam_width=1` is greedy: LLaDA's low-confidence sampler with one token per
    step (no threshold) or greedy SOAR (with one)."""

    config_class: ClassVar[type[_StrategyConfig]] = SOARBeamConfig

    steps: int | None = _DEFAULTS.steps
    block_length: int | None = _DEFAULTS.block_length
    beam_width: int = _DEFAULTS.beam_width
    branch_factor: int | None = _DEFAULTS.branch_factor
    score: str = _DEFAULTS.score
    confidence_threshold: float | None = _DEFAULTS.confidence_threshold
    min_parallel_tokens: int = _DEFAULTS.min_parallel_tokens
    max_parallel_tokens: int = _DEFAULTS.max_parallel_tokens
    temperature: float = _DEFAULTS.temperature
    cfg_scale: float = _DEFAULTS.cfg_scale
    record_beams: bool = _DEFAULTS.record_beams
    # (step, row, kept beams) after every step of every row, when record_beams
    beam_history: list[tuple[int, int, list[BeamRecord]]] = field(default_factory=list, repr=False)
    _gen_length: int = field(default=0, init=False, repr=False)

    @property
    def step_budget(self) -> int:
        return self.steps if self.steps is not None else self._gen_length

    def run(self, canvas: Canvas, generator: torch.Generator | None) -> None:
        self._gen_length = canvas.gen_length
        self.beam_history.clear()
        decode_soar_beam(
            canvas,
            steps=self.steps,
            block_length=self.block_length,
            beam_width=self.beam_width,
            branch_factor=self.branch_factor,
            score=self.score,
            confidence_threshold=self.confidence_threshold,
            min_parallel_tokens=self.min_parallel_tokens,
            max_parallel_tokens=self.max_parallel_tokens,
            temperature=self.temperature,
            generator=generator,
            history=self.beam_history if self.record_beams else None,
        )


@dataclass
class _Beam:
    seq: torch.Tensor  # (L,)
    block: int = 0
    log_prob: float = 0.0
    prob_sum: float = 0.0
    committed: int = 0
    parallel: bool = False  # this beam was made by the parallel branch

    def score(self, rule: str) -> float:
        if rule == "log_prob":
            return self.log_prob
        if rule == "prob_sum":
            return self.prob_sum
        return self.prob_sum / self.committed if self.committed else 0.0

    def child(self, seq: torch.Tensor, log_ps: list[float], parallel: bool) -> _Beam:
        return _Beam(
            seq,
            self.block,
            self.log_prob + sum(log_ps),
            self.prob_sum + sum(math.exp(v) for v in log_ps),
            self.committed + len(log_ps),
            parallel,
        )


def decode_soar_beam(
    canvas: Canvas,
    *,
    steps: int | None = None,
    block_length: int | None = None,
    beam_width: int = 2,
    branch_factor: int | None = None,
    score: str = "log_prob",
    confidence_threshold: float | None = 0.95,
    min_parallel_tokens: int = 1,
    max_parallel_tokens: int = 5,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
    history: list | None = None,
) -> None:
    """Run SOAR's position beam search on `canvas` (in place); see the module docstring.

    All beams with masks, of all active rows, share one forward per step; row r's counters grow
    by one step and by its number of beams fed. `history`, when given, receives
    (step, row, [BeamRecord, ...]) for the beams each row keeps after each step.
    """
    if score not in ("log_prob", "prob_sum", "mean_prob"):
        raise ValueError(f"score must be 'log_prob', 'prob_sum' or 'mean_prob', got {score!r}")
    G, P, mask_id = canvas.gen_length, canvas.prompt_length, canvas.mask_id
    block_length = G if block_length is None else block_length
    if G % block_length:
        raise ValueError(
            f"gen_length {G} must be a multiple of block_length {block_length}: pick a divisor "
            "of gen_length or block_length=None (one block)"
        )
    k = beam_width if branch_factor is None else branch_factor
    beams = {r: [_Beam(canvas.x[r].clone())] for r in canvas.active_rows().tolist()}
    step = 0
    while beams:
        # which rows go on, and which of their beams are fed
        live: list[tuple[int, _Beam]] = []
        for r in list(beams):
            if not canvas.active[r]:  # finished by an end-of-text stop
                del beams[r]
                continue
            if not bool((beams[r][0].seq[P:] == mask_id).any()):  # all beams are complete
                canvas.finish(torch.tensor([r], device=canvas.device))
                del beams[r]
                continue
            for beam in beams[r]:
                beam.block = _first_masked_block(beam, P, block_length, mask_id)
                live.append((r, beam))
        if not live or (steps is not None and step >= steps):
            break
        step += 1
        rows = sorted(beams)
        fed = [sum(1 for owner, _ in live if owner == r) for r in rows]
        canvas.count(
            torch.tensor(rows, device=canvas.device),
            sequences=torch.tensor(fed, device=canvas.device),
        )
        owner = torch.tensor([r for r, _ in live], device=canvas.device)
        logits = canvas.model_logits(torch.stack([b.seq for _, b in live]), owner)[:, P:]
        # a committed [MASK] would commit nothing (and, uncapped, loop forever): x0 is the best
        # real token; its confidence is still its probability under the full softmax
        no_mask = torch.tensor([mask_id], device=logits.device)
        x0 = gumbel_argmax(logits.index_fill(-1, no_mask, float("-inf")), temperature, generator)
        z = logits.float()
        log_p = (z.gather(-1, x0[..., None]).squeeze(-1) - z.logsumexp(-1)).cpu()
        x0 = x0.cpu()

        candidates: dict[int, list[_Beam]] = {r: [] for r in rows}
        for i, (r, beam) in enumerate(live):
            start = beam.block * block_length
            gen = beam.seq[P:].cpu()
            positions = (gen[start : start + block_length] == mask_id).nonzero().flatten() + start
            conf = log_p[i, positions]
            if confidence_threshold is not None:
                high = (conf.exp() > confidence_threshold).nonzero().flatten()
                if high.numel() >= min_parallel_tokens:
                    take = min(high.numel(), max_parallel_tokens)
                    top_c, top_i = torch.topk(conf[high], take)
                    chosen = positions[high[top_i]]
                    candidates[r].append(_commit(beam, chosen, x0[i], top_c, P, parallel=True))
                    continue
            top_c, top_i = torch.topk(conf, min(k, positions.numel()))
            for c, pos in zip(top_c, positions[top_i]):
                candidates[r].append(_commit(beam, pos[None], x0[i], c[None], P, parallel=False))

        for r in rows:
            pool = candidates[r]
            width = beam_width
            if any(c.parallel for c in pool):  # collapse: one beam, the best parallel child
                pool, width = [c for c in pool if c.parallel], 1
            pool = sorted(pool, key=lambda b: b.score(score), reverse=True)
            kept, seen = [], set()
            for cand in pool:
                key = tuple(cand.seq.tolist())
                if key not in seen:
                    seen.add(key)
                    kept.append(cand)
                if len(kept) == width:
                    break
            beams[r] = kept
            canvas.replace(r, kept[0].seq, step)
            if history is not None:
                history.append((step, r, [_record(b, score) for b in kept]))
    canvas.finish(canvas.active_rows())  # rows the `steps` cap stopped hold their best beam


def _commit(
    beam: _Beam,
    offsets: torch.Tensor,
    x0: torch.Tensor,
    log_ps: torch.Tensor,
    prompt_length: int,
    *,
    parallel: bool,
) -> _Beam:
    seq = beam.seq.clone()
    seq[prompt_length + offsets.to(seq.device)] = x0[offsets].to(seq.device)
    return beam.child(seq, log_ps.tolist(), parallel)


def _first_masked_block(beam: _Beam, prompt_length: int, block_length: int, mask_id: int) -> int:
    """The beam's current block: the first one from `beam.block` on that still has a mask."""
    block = beam.block
    while True:
        start = prompt_length + block * block_length
        if bool((beam.seq[start : start + block_length] == mask_id).any()):
            return block
        block += 1


def _record(beam: _Beam, rule: str) -> BeamRecord:
    return BeamRecord(
        beam.seq.clone(), beam.score(rule), beam.log_prob, beam.prob_sum, beam.committed
    )

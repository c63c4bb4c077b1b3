"""SOAR: adaptive choice between parallel commits and a beam search over *positions*.

arXiv:2602.10953; reference code duterscmy/SOAR `eval_llada8b/generate.py:generate_soar`. LLaDA's
semi-autoregressive blocks, but every step scores all beams of a row in one batched forward and,
for each beam, with c_l = softmax(z_l)[x0_l] over the masked positions of the beam's block:

- parallel branch: if some c_l > 0.95, commit up to 5 of them (highest first) greedily;
- otherwise branch: k = min(2, #masked) candidates, each committing one of the top-k positions.

A beam's score is the *sum* of the committed probabilities (named "log_prob" in the code, but no
log is taken). Candidates are sorted by score (stable), de-duplicated by sequence, and the best
`max_beam_size` kept; when any beam took the parallel branch the search collapses to the single
best candidate (the released test compares the masks of beam 0, not of the candidate's parent).
A beam whose block is full moves to the next block. The loop runs at most `steps` forwards.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dlm_decode.canvas import Canvas
from dlm_decode.remasking import gumbel_argmax

__all__ = ["decode_soar"]


@dataclass
class _Beam:
    seq: torch.Tensor  # (L,)
    score: float
    block: int


def decode_soar(
    canvas: Canvas,
    *,
    steps: int,
    block_length: int,
    temperature: float = 0.0,
    remasking: str = "low_confidence",
    confidence_threshold: float = 0.95,
    min_parallel_tokens: int = 1,
    max_parallel_tokens: int = 5,
    max_beam_size: int = 2,
    generator: torch.Generator | None = None,
) -> None:
    """Run SOAR on `canvas` (in place); rows keep their own beams, all beams share one forward."""
    if canvas.gen_length % block_length:
        raise ValueError(
            f"gen_length {canvas.gen_length} must be a multiple of block_length {block_length}"
        )
    num_blocks = canvas.gen_length // block_length
    if steps % num_blocks:
        raise ValueError(f"steps {steps} must be a multiple of the number of blocks {num_blocks}")
    mask_id, P = canvas.mask_id, canvas.prompt_length
    beams = {row: [_Beam(canvas.x[row].clone(), 0.0, 0)] for row in range(canvas.batch)}
    for global_step in range(steps):
        rows = [
            r for r in beams if canvas.active[r] and any((b.seq == mask_id).any() for b in beams[r])
        ]
        for r in beams:
            if canvas.active[r] and r not in rows:
                canvas.finish(torch.tensor([r], device=canvas.device))
        if not rows:
            break
        owner = [r for r in rows for _ in beams[r]]
        seqs = torch.stack([b.seq for r in rows for b in beams[r]])
        row_index = torch.tensor(owner, device=canvas.device)
        canvas.count(
            torch.tensor(rows, device=canvas.device),
            sequences=torch.tensor([len(beams[r]) for r in rows], device=canvas.device),
        )
        logits = canvas.model_logits(seqs, row_index)
        x0_all = gumbel_argmax(logits, temperature, generator)
        if remasking == "low_confidence":
            p_all = F.softmax(logits, dim=-1).gather(-1, x0_all[..., None]).squeeze(-1)
        elif remasking == "random":
            p_all = torch.rand(x0_all.shape, device=canvas.device, generator=generator)
        else:
            raise ValueError(f"remasking must be 'low_confidence' or 'random', got {remasking!r}")
        flat = 0
        for r in rows:
            candidates: list[_Beam] = []
            parallel = False
            for beam in beams[r]:
                x0, p = x0_all[flat], p_all[flat]
                flat += 1
                if not bool((beam.seq == mask_id).any()):
                    candidates.append(beam)
                    continue
                start = P + beam.block * block_length
                end = start + block_length
                positions = (beam.seq[start:end] == mask_id).nonzero().flatten() + start
                conf = p[positions]
                high = (conf > confidence_threshold).nonzero().flatten()
                if high.numel() >= min_parallel_tokens and high.numel() > 0:
                    take = min(high.numel(), max_parallel_tokens)
                    top_p, top_i = torch.topk(conf[high], take)
                    chosen = positions[high[top_i]]
                    seq = beam.seq.clone()
                    seq[chosen] = x0[chosen]
                    score = beam.score
                    for value in top_p.tolist():
                        score += value
                    candidates.append(
                        _Beam(
                            seq,
                            score,
                            _next_block(seq, beam.block, start, end, num_blocks, mask_id),
                        )
                    )
                    parallel = True
                    continue
                k = min(max_beam_size, positions.numel())
                if k == 0:
                    candidates.append(
                        _Beam(beam.seq, beam.score, min(beam.block + 1, num_blocks - 1))
                    )
                    continue
                top_p, top_i = torch.topk(conf, k)
                for value, pos in zip(top_p.tolist(), positions[top_i].tolist()):
                    seq = beam.seq.clone()
                    seq[pos] = x0[pos]
                    candidates.append(
                        _Beam(
                            seq,
                            beam.score + value,
                            _next_block(seq, beam.block, start, end, num_blocks, mask_id),
                        )
                    )
            candidates.sort(key=lambda b: b.score, reverse=True)
            unique, seen = [], set()
            for cand in candidates:
                key = tuple(cand.seq.tolist())
                if key not in seen:
                    seen.add(key)
                    unique.append(cand)
            before = int((beams[r][0].seq == mask_id).sum())
            if (
                parallel
                and unique
                and before - int((unique[0].seq == mask_id).sum()) >= min_parallel_tokens
            ):
                beams[r] = [unique[0]]
            else:
                beams[r] = unique[: min(max_beam_size, len(unique))]
            canvas.replace(r, beams[r][0].seq, global_step + 1)
    for r in range(canvas.batch):
        if canvas.active[r]:
            canvas.finish(torch.tensor([r], device=canvas.device))


def _next_block(seq, block, start, end, num_blocks, mask_id) -> int:
    if block < num_blocks - 1 and not bool((seq[start:end] == mask_id).any()):
        return block + 1
    return block

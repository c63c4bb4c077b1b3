"""The sequence being denoised: prompt, masked generation region, per-row state and counters.

    x = [prompt (left-padded) | gen_length x [MASK]]          (B, P + G)

Every sampler reads aligned logits through `Canvas.forward(rows)` (classifier-free guidance and the
NFE counters live there) and writes tokens through `Canvas.commit(rows, select, tokens)`, which
also runs the optional end-of-text stop and the streaming callback. Rows finish on their own
(`Canvas.finish`): a finished row is no longer fed to the network.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from dlm_decode.adapters import MaskedDiffusionLM
from dlm_decode.counters import DecodeStats
from dlm_decode.guidance import guided_logits, unconditional_input

__all__ = ["Canvas", "StepEvent"]


@dataclass
class StepEvent:
    """Passed to `generate(..., callback=)` after every commit (streaming)."""

    step: int  # iteration of the decoding loop, from 1
    rows: torch.Tensor  # (R,) batch rows that took this step
    committed: torch.Tensor  # (R, L) bool, positions written this step
    x: torch.Tensor  # (B, L) the whole canvas after the commit: read, do not modify
    finished: torch.Tensor  # (B,) bool, rows that are done


class Canvas:
    def __init__(
        self,
        lm: MaskedDiffusionLM,
        prompt_ids: torch.Tensor,
        gen_length: int,
        *,
        attention_mask: torch.Tensor | None = None,
        constraints: Mapping[int, int] | None = None,
        cfg_scale: float = 0.0,
        stop_at_eos: bool = False,
        callback: Callable[[StepEvent], None] | None = None,
    ):
        if prompt_ids.dim() != 2:
            raise ValueError(
                "input_ids (the prompts) must be (batch, prompt_length), got shape "
                f"{tuple(prompt_ids.shape)}: use input_ids[None] for one prompt"
            )
        if gen_length < 1:
            raise ValueError(f"gen_length must be >= 1, got {gen_length}")
        device = lm.device
        prompt_ids = prompt_ids.to(device)
        if bool((prompt_ids == lm.mask_token_id).any()):
            raise ValueError(
                f"the prompt contains the [MASK] id {lm.mask_token_id} (often because the pad id "
                "equals the mask id): pad with another id and pass attention_mask"
            )
        self.lm = lm
        self.mask_id = lm.mask_token_id
        self.batch, self.prompt_length = prompt_ids.shape
        self.gen_length = gen_length
        self.length = self.prompt_length + gen_length
        self.x = torch.full(
            (self.batch, self.length), self.mask_id, dtype=torch.long, device=device
        )
        self.x[:, : self.prompt_length] = prompt_ids
        self.key_mask = None
        if attention_mask is not None:
            attention_mask = attention_mask.to(device)
            if attention_mask.shape != prompt_ids.shape:
                raise ValueError(
                    f"attention_mask {tuple(attention_mask.shape)} must match input_ids "
                    f"{tuple(prompt_ids.shape)}"
                )
            real = attention_mask.bool()
            if bool((real[:, :-1] & ~real[:, 1:]).any()):
                raise ValueError(
                    "prompts must be left-padded (padding before the prompt): set "
                    "tokenizer.padding_side = 'left'"
                )
            if bool((~real).any()):
                ones = torch.ones(self.batch, gen_length, dtype=torch.long, device=device)
                self.key_mask = torch.cat([attention_mask.long(), ones], dim=1)
        self.constraints = dict(constraints or {})
        for offset, token in self.constraints.items():
            if not 0 <= offset < gen_length:
                raise ValueError(
                    f"constraint offset {offset} is outside the generation region [0, {gen_length})"
                )
            self.x[:, self.prompt_length + offset] = token
        # Prompt positions for guidance: everything not masked at the start (constraints included).
        self.prompt_index = self.x != self.mask_id
        self.cfg_scale = float(cfg_scale)
        self.stop_at_eos = stop_at_eos
        self.end_ids = [t for t in (lm.eos_token_id, lm.eot_token_id) if t is not None]
        if stop_at_eos and not self.end_ids:
            raise ValueError(
                "stop_at_eos=True needs an end-of-text id: pass eos_token_id=... to "
                "as_masked_diffusion_lm or set config.eos_token_id"
            )
        self.callback = callback
        self.active = torch.ones(self.batch, dtype=torch.bool, device=device)
        zeros = torch.zeros(self.batch, dtype=torch.long, device=device)
        self.nfe, self.steps, self.sequence_evals = zeros.clone(), zeros.clone(), zeros.clone()
        self.exit_step = torch.full((self.batch,), -1, dtype=torch.long, device=device)
        self.forward_calls = 0
        self.positions = torch.arange(self.length, device=device)
        # Seconds from the start until each row was complete (no mask left, or finished); -1 while
        # it is not. Kept on the device: recording a time costs no host sync.
        self.row_done_s = torch.full((self.batch,), -1.0, dtype=torch.float64, device=device)
        self._t0 = time.perf_counter()

    # -- reading -----------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.x.device

    def active_rows(self) -> torch.Tensor:
        return self.active.nonzero().flatten()

    def masked(self, rows: torch.Tensor) -> torch.Tensor:
        return self.x[rows] == self.mask_id

    def block_bounds(self, block: int | torch.Tensor, block_length: int):
        """Absolute [start, end) of generation block `block` (ints or per-row tensors)."""
        start = self.prompt_length + block * block_length
        return start, start + block_length

    def in_range(self, start, end) -> torch.Tensor:
        """(R, L) bool: start <= position < end, with start/end ints or (R,) tensors."""
        pos = self.positions[None, :]
        start = torch.as_tensor(start, device=self.device).reshape(-1, 1)
        end = torch.as_tensor(end, device=self.device).reshape(-1, 1)
        return (pos >= start) & (pos < end)

    # -- the network ---------------------------------------------------------------------------
    def model_logits(self, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Aligned logits of sequences x (N, L) whose attention masks are those of `rows` (N,),
        with guidance when cfg_scale > 0. Counts nothing (see `forward`)."""
        key_mask = None if self.key_mask is None else self.key_mask[rows]
        if self.cfg_scale <= 0:
            return self.lm.logits(x, key_mask)
        un_x = unconditional_input(x, self.prompt_index[rows], self.mask_id)
        both_mask = None if key_mask is None else torch.cat([key_mask, key_mask])
        logits = self.lm.logits(torch.cat([x, un_x]), both_mask)
        cond, uncond = logits.chunk(2, dim=0)
        return guided_logits(cond, uncond, self.cfg_scale)

    def count(self, rows: torch.Tensor, sequences: int | torch.Tensor = 1) -> None:
        """One denoising step of `rows`: NFE +1 (+2 with guidance), sequences scored per row."""
        per_row = 2 if self.cfg_scale > 0 else 1
        self.steps[rows] += 1
        self.nfe[rows] += per_row
        self.sequence_evals[rows] += per_row * torch.as_tensor(sequences, device=self.device)
        self.forward_calls += 1

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        """Aligned (guided) logits (R, L, V) of the current canvas rows, counted."""
        self.count(rows)
        return self.model_logits(self.x[rows], rows)

    # -- writing -------------------------------------------------------------------------------
    def commit(
        self, rows: torch.Tensor, select: torch.Tensor, tokens: torch.Tensor, step: int
    ) -> None:
        """Write tokens[select] into the masked positions of `rows` (never over a decoded one)."""
        current = self.x[rows]
        select = select & (current == self.mask_id)
        self.x[rows] = torch.where(select, tokens, current)
        self._after_write(rows, select, step)

    def replace(self, row: int, seq: torch.Tensor, step: int) -> None:
        """Set row `row` to `seq` (a beam search switching beams may un-commit positions)."""
        rows = torch.tensor([row], device=self.device)
        changed = (self.x[row] != seq)[None]
        self.x[row] = seq
        self._after_write(rows, changed, step)

    def _after_write(self, rows: torch.Tensor, select: torch.Tensor, step: int) -> None:
        if self.stop_at_eos:
            self._stop_rows_at_end(rows)
        complete = ~(self.x[rows, self.prompt_length :] == self.mask_id).any(1)
        self._mark_done(rows, complete)
        if self.callback is not None:
            self.callback(StepEvent(step, rows, select, self.x, ~self.active))

    def finish(self, rows: torch.Tensor) -> None:
        self.active[rows] = False
        self._mark_done(rows, torch.ones(rows.shape, dtype=torch.bool, device=self.device))

    def _mark_done(self, rows: torch.Tensor, done: torch.Tensor) -> None:
        """Record the time of `rows` that are done now (`done`, (R,) bool) and were not before."""
        now = time.perf_counter() - self._t0
        previous = self.row_done_s[rows]
        self.row_done_s[rows] = torch.where(done & (previous < 0), now, previous)

    def _stop_rows_at_end(self, rows: torch.Tensor) -> None:
        """Ours (not in the references, which truncate after decoding): a row whose first EOS/EoT
        has only decoded tokens before it is done; its later masks become EOS."""
        gen = self.x[rows, self.prompt_length :]
        is_end = torch.zeros_like(gen, dtype=torch.bool)
        for token in self.end_ids:
            is_end |= gen == token
        first = torch.where(is_end.any(1), is_end.int().argmax(1), self.gen_length)
        offsets = torch.arange(self.gen_length, device=self.device)[None, :]
        masked = gen == self.mask_id
        done = (first < self.gen_length) & ~(masked & (offsets < first[:, None])).any(1)
        done &= self.active[rows]
        if bool(done.any()):
            fill = masked & done[:, None]
            gen = gen.masked_fill(fill, self.end_ids[0])
            self.x[rows, self.prompt_length :] = gen
            self.finish(rows[done])

    # -- result ----------------------------------------------------------------------------------
    def stats(self, step_budget: int) -> DecodeStats:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        wall_s = time.perf_counter() - self._t0
        gen = self.x[:, self.prompt_length :]
        is_end = torch.zeros_like(gen, dtype=torch.bool)
        for token in self.end_ids:
            is_end |= gen == token
        first = torch.where(is_end.any(1), is_end.int().argmax(1), self.gen_length)
        return DecodeStats(
            nfe=self.nfe.cpu(),
            steps=self.steps.cpu(),
            sequence_evals=self.sequence_evals.cpu(),
            step_budget=step_budget,
            generated_tokens=first.cpu(),
            forward_calls=self.forward_calls,
            wall_s=wall_s,
            row_wall_s=torch.where(self.row_done_s < 0, wall_s, self.row_done_s).cpu(),
        )

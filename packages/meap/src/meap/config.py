"""`MEAPConfig`: MEAP pre-training as a config, `.masked_inputs(...)` masks a micro-batch.

    cfg = meap.MEAPConfig(mask_ratio=0.15, mask_mode="reference")   # the 1B run's ratio
    inputs = cfg.masked_inputs(blocks[:, :-1], mask_token_id, step)  # targets: blocks[:, 1:], clean

x~_t = [MASK] for t in M, else x_t; loss = next-token cross-entropy on x~ against the clean targets
(Zhuang et al., arXiv 2502.07490, Sec. 3.1; `meap.input_masking`). The mask is a function of the
optimizer step (and, in "per_sequence" mode, of the seed and of the row's index in the global
batch), so a process that holds rows [row_offset, row_offset + B) of a global batch of
`global_batch` rows masks them exactly as a single process holding the whole batch would: every
micro-batch, process count and resume sees the same masks.
"""

from __future__ import annotations

import torch
from pydantic import Field

from layerwise_core import LayerwiseConfig
from meap.input_masking import MaskMode, _check_ids, mask_inputs, masked_positions

__all__ = ["MEAPConfig"]


class MEAPConfig(LayerwiseConfig):
    """MEAP pre-training: replace a share of the input positions by [MASK], targets clean."""

    # share of the input positions replaced by [MASK] (the paper sweeps 0.05-0.2; 0.15 for 1B)
    mask_ratio: float = Field(0.15, gt=0.0, lt=1.0)
    # "reference": the official masks (the same columns for every row, 51 cycling by step);
    # "per_sequence": independent positions per row, from (seed, step) and the row's global index
    mask_mode: MaskMode = "reference"

    def masked_inputs(
        self,
        input_ids: torch.Tensor,
        mask_token_id: int,
        step: int,
        *,
        row_offset: int = 0,
        global_batch: int | None = None,
        seed: int = 0,
    ) -> torch.Tensor:
        """A copy of the (B, T) inputs with MEAP's masked positions set to `mask_token_id`.

        `step`: the optimizer step (the same for every accumulation micro-batch). `row_offset`:
        the index of row 0 of `input_ids` in the global batch of `global_batch` rows (None:
        row_offset + B, i.e. the inputs end the batch; the whole batch when row_offset is 0) over all processes and micro-batches of the step; with
        "per_sequence" the mask of the global batch is drawn and these rows are cut from it, so
        the slices of all processes concatenate to the single-process mask. "reference" masks
        the same columns in every row, so it needs neither. `seed`: the run's seed (per_sequence).
        """
        if input_ids.dim() != 2:
            raise ValueError(
                f"input_ids must be (batch, length), got shape {tuple(input_ids.shape)}; "
                "use input_ids.unsqueeze(0) for a single sequence"
            )
        _check_ids(input_ids, mask_token_id)
        rows = input_ids.shape[0]
        if global_batch is None:
            global_batch = row_offset + rows
        if row_offset < 0 or row_offset + rows > global_batch:
            raise ValueError(
                f"rows [{row_offset}, {row_offset + rows}) do not fit in a global batch of "
                f"{global_batch} rows: pass row_offset = the index of this micro-batch's first row "
                "in the step's global batch and global_batch = its number of rows"
            )
        if self.mask_mode == "reference":
            return mask_inputs(input_ids, self.mask_ratio, mask_token_id, step)
        whole = torch.empty(global_batch, input_ids.shape[1], dtype=torch.long)
        mask = masked_positions(whole, self.mask_ratio, step, "per_sequence", seed=seed)
        mask = mask[row_offset : row_offset + rows].to(input_ids.device)
        return input_ids.masked_fill(mask, mask_token_id)

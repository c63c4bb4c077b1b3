"""The configs of sparse-ft's methods: the papers' defaults, in this one place.

    LiftConfig(lora_rank=128, filter_rank=64, update_interval=400)    LIFT (arXiv 2506.00772)
    SeftConfig(budget_rank=8, update_interval=10, drop_fraction=0.1)  SEFT (arXiv 2505.24037)
    PruneConfig(method="wanda", sparsity=0.5).apply(model, calibration)   Wanda / SparseGPT / ...
    QuantizeConfig(method="gptq", bits=3).apply(model, calibration)       GPTQ / RTN

Pydantic models on `layerwise_core.LayerwiseConfig`: keyword construction, unknown fields refused
(with "did you mean"), YAML round trip (`to_yaml` / `from_yaml`), dotted overrides. LIFT and SEFT
configs are frozen (a wrapped model keeps the config it was built with); `get_sparse_model` picks
the method by config type.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
from pydantic import ConfigDict, Field, field_validator, model_validator
from torch import nn

from layerwise_core import LayerwiseConfig
from sparse_ft.nm_sparsity import parse_nm
from sparse_ft.pruning import PruneResult, prune
from sparse_ft.quantization import QuantizeResult, quantize
from sparse_ft.sparsity_allocation import Allocation

__all__ = ["LiftConfig", "PruneConfig", "QuantizeConfig", "SeftConfig"]

# PEFT's target_modules: a list of names (a module matches its own name or a suffix ".name"),
# a regex over the full name, or None (every Linear of the decoder blocks)
TargetModules = tuple[str, ...] | str | None


class _AdapterConfig(LayerwiseConfig):
    model_config = ConfigDict(frozen=True)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if args:  # the dataclass these configs were took positional arguments
            shown = ", ".join(
                f"{name}={value!r}" for name, value in zip(type(self).model_fields, args)
            )
            raise TypeError(
                f"{type(self).__name__} takes keyword arguments only: write "
                f"{type(self).__name__}({shown})"
            )
        super().__init__(**kwargs)


class LiftConfig(_AdapterConfig):
    """LIFT hyper-parameters. Defaults: the paper's Llama-2-7B math setting."""

    lora_rank: int = Field(128, ge=1)  # budget k = min((m + n) * lora_rank, m * n): LoRA's count
    filter_rank: int = Field(64, ge=1)  # rank r of the approximation W' whose top-k are selected
    update_interval: int | None = Field(400, ge=1)  # steps between mask refreshes; None: static
    target_modules: TargetModules = None  # PEFT-style; None: all Linear in the decoder blocks
    svd: Literal["full", "lowrank"] = "full"  # full SVD, or torch.svd_lowrank with q = 2r
    niter: int = Field(2, ge=0)  # power iterations of svd_lowrank
    largest: bool | None = None  # None: largest (paper), or smallest under reference_quirks
    reference_quirks: bool = False  # official code: smallest entries, refresh at (step + 1) % N
    backend: Literal["auto", "torch", "triton"] = "auto"  # layerwise_kernels.sddmm backend

    @model_validator(mode="after")
    def _quirks_select_smallest(self) -> LiftConfig:
        if self.reference_quirks and self.largest:
            raise ValueError(
                "reference_quirks=True selects the SMALLEST entries, as the official lift_sparse "
                "configs do; drop largest=True, or set reference_quirks=False"
            )
        return self

    @property
    def select_largest(self) -> bool:
        """True: the paper's top-k largest |W'|; False: the official configs' smallest."""
        if self.largest is not None:
            return self.largest
        return not self.reference_quirks


class SeftConfig(_AdapterConfig):
    """SEFT hyper-parameters (the paper's commonsense setting: an update every 10 steps)."""

    budget_rank: int = Field(8, ge=1)  # k = min((m + n) * budget_rank, unpruned) per matrix
    # steps between topology updates (paper: 10 or 60); >= 2: re-pruning runs on the step after
    # growth
    update_interval: int = Field(10, ge=2)
    drop_fraction: float = Field(0.1, gt=0, le=1)  # fraction of k dropped and regrown per update
    reprune: Literal["sensitivity", "magnitude"] = "sensitivity"  # |theta * grad| or |theta|
    pattern: str | None = None  # "2:4" etc. for N:M-pruned models: growth stays in the pattern
    target_modules: TargetModules = None  # PEFT-style; None: all Linear in the decoder blocks
    seed: int = 0  # draws the initial support (uniform over unpruned positions)
    backend: Literal["auto", "torch", "triton"] = "auto"  # layerwise_kernels.sddmm backend

    @field_validator("pattern")
    @classmethod
    def _pattern_is_n_m(cls, pattern: str | None) -> str | None:
        if pattern is not None:
            parse_nm(pattern)
        return pattern

    @property
    def nm(self) -> tuple[int, int] | None:
        return parse_nm(self.pattern) if self.pattern is not None else None


class PruneConfig(LayerwiseConfig):
    """Pruning before fine-tuning (SEFT starts from a pruned model), as `sparse_ft.prune` does it.

    Defaults: no pruning; when a method is chosen, 50% unstructured sparsity with the same
    fraction in every block, calibrated on 128 sequences (Wanda's and SparseGPT's setting).
    """

    method: Literal["none", "magnitude", "wanda", "sparsegpt"] = "none"  # none: leave weights
    sparsity: float | None = Field(0.5, ge=0, lt=1)  # fraction of zeros; with a pattern: N / M
    pattern: str | None = None  # "2:4", "4:8" ...: N zeros in every M consecutive inputs of a row
    allocation: Allocation = (
        "uniform"  # per-block sparsity: uniform | owl | deeper_/earlier_sparser
    )
    calibration_sequences: int = Field(128, ge=1)  # token sequences used as calibration data

    @model_validator(mode="after")
    def _consistent(self) -> PruneConfig:
        if self.pattern is None:
            if self.sparsity is None:
                raise ValueError("sparsity=None needs an N:M pattern: set sparsity or pattern")
            return self
        n, m = parse_nm(self.pattern)
        explicit = "sparsity" in self.model_fields_set and self.sparsity is not None
        if explicit and not math.isclose(self.sparsity, n / m):  # type: ignore[arg-type]
            raise ValueError(
                f"pattern {self.pattern!r} zeroes {n / m:.0%} of every row, not sparsity="
                f"{self.sparsity}: drop sparsity (or set it to {n / m})"
            )
        if self.allocation != "uniform":
            raise ValueError(
                f"an N:M pattern fixes the sparsity of every block: allocation={self.allocation!r} "
                "needs pattern=None (unstructured)"
            )
        return self

    @property
    def needs_calibration(self) -> bool:
        """Wanda, SparseGPT and OWL read activations; uniform magnitude pruning does not."""
        return self.method not in ("none", "magnitude") or (
            self.method != "none" and self.allocation == "owl"
        )

    def apply(
        self,
        model: nn.Module,
        calibration: torch.Tensor | Sequence[torch.Tensor] | None = None,
    ) -> PruneResult | None:
        """Prune `model` in place (`sparse_ft.prune`); None when `method="none"`.

        `calibration`: token ids [sequences, tokens] (or a list of such batches); the first
        `calibration_sequences` sequences are used, on the model's device. `packed_calibration`
        cuts tokenised documents into such sequences.
        """
        if self.method == "none":
            return None
        batches = None
        if calibration is not None and self.needs_calibration:
            device = next(model.parameters()).device
            batches = _first_sequences(calibration, self.calibration_sequences, device)
        return prune(
            model,
            self.method,
            None if self.pattern is not None else self.sparsity,
            pattern=self.pattern,
            allocation=self.allocation,
            calibration=batches,
        )


class QuantizeConfig(LayerwiseConfig):
    """Weight quantisation, as `sparse_ft.quantize` does it (GPTQ, arXiv 2210.17323, or RTN).

    Defaults: no quantisation; when a method is chosen, `quantize()`'s defaults (tested equal),
    which are the official GPTQ CLI's (asymmetric, one grid per row, percdamp 0.01, 128
    calibration sequences) with 4 bits (the CLI's 16 means off). The diffusion-LM study's
    GPTQ_VIRTUAL: `bits=3, group_size=128, sym=True, true_sequential=True`.
    """

    method: Literal["none", "gptq", "rtn"] = "none"  # none: leave weights
    bits: int = Field(4, ge=2, le=8)  # maxq = 2^bits - 1
    group_size: int = -1  # -1: one grid per output row; g: per row and g input columns
    sym: bool = False  # symmetric grid (zero = 2^(bits-1)); the CLI's default is asymmetric
    act_order: bool = False  # quantise columns by decreasing diag H
    static_groups: bool = False  # group grids fitted up front on the original weights
    true_sequential: bool = False  # [q,k,v] -> [o] -> [gate,up] -> [down], re-forward between
    blocksize: int = Field(128, ge=1)  # GPTQ's lazy-batch columns
    percdamp: float = Field(0.01, ge=0)  # damping: percdamp * mean(diag H)
    mse: bool = False  # shrink search of the grid range
    damp_retries: int = Field(1, ge=0)  # retries with 10x damping when Cholesky fails
    calibration_masking: Literal["none", "diffusion"] = "none"  # diffusion LMs: masked copies
    mask_token_id: int | None = None  # None: model.config.mask_token_id
    mask_repeats: int = Field(4, ge=1)  # masked copies per calibration sequence
    seed: int = 0  # generator of the masked copies
    batch_size: int = Field(1, ge=1)  # sequences per forward (the official driver: 1)
    reference_quirks: bool = False  # the official code's stale group refit (g < B) and grid order
    calibration_sequences: int = Field(128, ge=1)  # token sequences used as calibration data

    @field_validator("group_size")
    @classmethod
    def _group_size(cls, group_size: int) -> int:
        if group_size != -1 and group_size < 1:
            raise ValueError(f"group_size must be -1 (a grid per row) or >= 1, got {group_size}")
        return group_size

    @model_validator(mode="after")
    def _static_needs_groups(self) -> QuantizeConfig:
        if self.static_groups and self.group_size == -1:
            raise ValueError("static_groups fits one grid per group: set group_size (e.g. 128)")
        return self

    def apply(
        self,
        model: nn.Module,
        calibration: torch.Tensor | Sequence[torch.Tensor] | None = None,
    ) -> QuantizeResult | None:
        """Quantise `model` in place (`sparse_ft.quantize`); None when `method="none"`.

        `calibration`: token ids [sequences, tokens]; the first `calibration_sequences` are used
        (GPTQ only), on the model's device.
        """
        if self.method == "none":
            return None
        batches = None
        if calibration is not None and self.method == "gptq":
            device = next(model.parameters()).device
            batches = _first_sequences(calibration, self.calibration_sequences, device)
        fields = self.model_dump(exclude={"method", "calibration_sequences"})
        return quantize(model, self.method, calibration=batches, **fields)


def _first_sequences(
    calibration: torch.Tensor | Sequence[torch.Tensor], count: int, device: torch.device
) -> list[torch.Tensor]:
    """The first `count` rows of token ids given as [N, T] (or [T]) tensors, moved to `device`."""
    parts = [calibration] if torch.is_tensor(calibration) else list(calibration)
    out: list[torch.Tensor] = []
    for part in parts:
        rows = part.unsqueeze(0) if part.dim() == 1 else part
        if count <= 0:
            break
        out.append(rows[:count].to(device))
        count -= out[-1].shape[0]
    return out

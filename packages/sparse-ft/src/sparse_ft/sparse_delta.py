"""The sparse-delta parametrisation shared by LIFT and SEFT: a frozen Linear plus k trainable entries.

    W_eff = W + scatter(indices, values)          y = x W_eff^T + b

`W` (any dtype) and the bias stay frozen; `values` is an fp32 master copy of the k trainable entries
at the flat (row-major, sorted) positions `indices`. Every optimizer therefore keeps O(k) state.
W_eff is formed inside W's own storage for the duration of a matmul (the k entries are saved and
restored bit-exactly), so the forward costs O(k) extra work and memory. The gradient is O(k) as
well: the backward computes only the selected entries of the dense gradient,

    dL/dvalues_i = dW[r_i, c_i] = sum_t dy[t, r_i] * x[t, c_i]        (r_i, c_i) = divmod(indices_i, n)

with `layerwise_kernels.sddmm` (Triton on CUDA, one dot product per entry through a CSR
`sampled_addmm` on CPU: k * T multiply-adds, not the m * n * T of a dense dW), and writes W_eff into
W's storage again for dL/dx instead of saving it, so no dense [m, n] tensor is allocated by the
forward or the backward. The same idea as SpIEL (Ansell et al., arXiv 2401.16405, `linear_sd`).

Changing the support (`set_support`) keeps the values and optimizer moments of surviving entries,
starts arriving entries at zero, and folds the values of leaving entries into W (W_eff is unchanged
bit for bit). Positions whose W changed since wrapping are recorded in `touched_indices`, so that
the whole delta against the original weights can be saved and re-applied exactly.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.autograd.function import once_differentiable
from torch.nn import functional as F

from layerwise_kernels.sddmm import sddmm

__all__ = [
    "SparseDeltaLinear",
    "effective_weight",
    "master_dtype",
    "remap_optimizer_state",
    "support_overlap",
]

GradObserver = Callable[[torch.Tensor], None]


def master_dtype(weight_dtype: torch.dtype) -> torch.dtype:
    """dtype of the trainable values: fp32, or fp64 for an fp64 weight."""
    return torch.float64 if weight_dtype == torch.float64 else torch.float32


def effective_weight(
    weight: torch.Tensor, values: torch.Tensor, indices: torch.Tensor
) -> torch.Tensor:
    """W + scatter(indices, values), added in the values' precision and rounded once to W's dtype."""
    flat = weight.reshape(-1)
    if flat.dtype == values.dtype:
        return flat.index_add(0, indices, values).view_as(weight)
    added = flat.to(values.dtype).index_add(0, indices, values)
    return added.to(weight.dtype).view_as(weight)


def _write_effective(
    weight: torch.Tensor, values: torch.Tensor, indices: torch.Tensor
) -> torch.Tensor:
    """Write the k W_eff entries into W's own (contiguous) storage; return the k original ones.

    O(k) work and memory; `weight.data` then holds exactly `effective_weight` until the originals
    are written back with `_restore` (bit-exact). The indices are unique, so `scatter_` (about twice
    as fast as `index_copy_` on CPU) is deterministic.
    """
    flat = weight.data.view(-1)
    saved = flat.index_select(0, indices)
    flat.scatter_(0, indices, (saved.to(values.dtype) + values).to(weight.dtype))
    return saved


def _restore(weight: torch.Tensor, indices: torch.Tensor, saved: torch.Tensor) -> None:
    weight.data.view(-1).scatter_(0, indices, saved)


class _SparseDeltaLinearFunction(torch.autograd.Function):
    """y = x (W + scatter(values))^T + b with an O(k) gradient for `values` (W and b are frozen)."""

    @staticmethod
    def forward(ctx, x, weight, bias, values, indices, module):
        if weight.is_contiguous():
            saved = _write_effective(weight, values, indices)
            try:
                y = F.linear(x, weight.data.to(x.dtype), bias)
            finally:
                _restore(weight, indices, saved)
        else:
            y = F.linear(x, effective_weight(weight, values, indices).to(x.dtype), bias)
        ctx.save_for_backward(x, weight, values, indices)
        ctx.module = module
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        x, weight, values, indices = ctx.saved_tensors
        module = ctx.module
        dy2 = dy.reshape(-1, dy.shape[-1])
        dx = dvalues = None
        if ctx.needs_input_grad[0]:
            # W_eff again, not saved: a dense copy per layer would cost what full fine-tuning costs
            if weight.is_contiguous():
                saved = _write_effective(weight, values, indices)
                try:
                    dx = (dy2 @ weight.data.to(dy2.dtype)).view(x.shape).to(x.dtype)
                finally:
                    _restore(weight, indices, saved)
            else:
                w_eff = effective_weight(weight, values, indices)
                dx = (dy2 @ w_eff.to(dy2.dtype)).view(x.shape).to(x.dtype)
        observer = module.grad_observer
        if ctx.needs_input_grad[3] or observer is not None:
            x2 = x.reshape(-1, x.shape[-1])
            if observer is not None:
                # topology-update steps of SEFT only: the dense gradient, one layer at a time
                dense = dy2.T.to(values.dtype) @ x2.to(values.dtype)
                observer(dense)
                dvalues = dense.reshape(-1)[indices]
            else:
                n = weight.shape[1]
                dvalues = sddmm(dy2.T, x2, indices // n, indices % n, backend=module.backend)
            dvalues = dvalues.to(values.dtype)
        return dx, None, None, dvalues, None, None


def support_overlap(
    old: torch.Tensor, new: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For sorted unique index vectors: (positions in `old` kept, their positions in `new`, mask of
    `old` entries that leave)."""
    if old.numel() == 0:
        empty = torch.zeros(0, dtype=torch.long, device=new.device)
        return empty, empty, torch.zeros(0, dtype=torch.bool, device=new.device)
    pos = torch.searchsorted(old, new).clamp_(max=old.numel() - 1)
    found = old[pos] == new
    keep_new = found.nonzero().squeeze(1)
    keep_old = pos[found]
    leaving = torch.ones(old.numel(), dtype=torch.bool, device=old.device)
    leaving[keep_old] = False
    return keep_old, keep_new, leaving


def _unwrap(optimizer):
    # accelerate's AcceleratedOptimizer and similar wrappers keep the real one in `.optimizer`
    while hasattr(optimizer, "optimizer") and isinstance(
        optimizer.optimizer, torch.optim.Optimizer
    ):
        optimizer = optimizer.optimizer
    return optimizer


@torch.no_grad()
def remap_optimizer_state(
    optimizer: torch.optim.Optimizer | None,
    param: torch.Tensor,
    keep_old: torch.Tensor,
    keep_new: torch.Tensor,
    new_len: int,
    seed: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> None:
    """Re-index the per-entry optimizer state of a 1-D parameter whose entries move.

    Every state tensor shaped like `param` (Adam's exp_avg / exp_avg_sq / max_exp_avg_sq, SGD's
    momentum_buffer, ...) becomes `new[keep_new] = old[keep_old]`, zero elsewhere; scalar state such
    as Adam's `step` is kept (the step counter stays global). `seed[key] = (positions, values)` fills
    arriving entries of one state tensor (SpIEL seeds Adam moments from gathered gradients).
    """
    if optimizer is None:
        return
    state = _unwrap(optimizer).state.get(param)
    if not state:
        return
    for key, old in list(state.items()):
        if torch.is_tensor(old) and old.dim() == 1 and old.shape == param.shape:
            new = torch.zeros(new_len, dtype=old.dtype, device=old.device)
            new[keep_new] = old[keep_old]
            if seed is not None and key in seed:
                positions, fill = seed[key]
                new[positions] = fill.to(old.dtype)
            state[key] = new


class SparseDeltaLinear(nn.Module):
    """A frozen `nn.Linear` plus a trainable sparse delta: W_eff = W + scatter(indices, values).

    Args:
        base_layer: the Linear to adapt; its weight and bias are frozen (requires_grad=False).
        indices: flat row-major positions of the trainable entries (made sorted and unique).
        backend: backend of the O(k) gradient op `layerwise_kernels.sddmm` ("auto": Triton on CUDA).
    """

    def __init__(self, base_layer: nn.Linear, indices: torch.Tensor, *, backend: str = "auto"):
        super().__init__()
        if not isinstance(base_layer, nn.Linear):
            raise TypeError(f"SparseDeltaLinear wraps nn.Linear, got {type(base_layer).__name__}")
        self.base_layer = base_layer
        for p in base_layer.parameters():
            p.requires_grad_(False)
        weight = base_layer.weight
        indices = torch.unique(indices.to(device=weight.device, dtype=torch.long))
        if indices.numel() and (indices[0] < 0 or indices[-1] >= weight.numel()):
            raise ValueError(f"indices must lie in [0, {weight.numel()}) for shape {weight.shape}")
        self.values = nn.Parameter(
            torch.zeros(indices.numel(), dtype=master_dtype(weight.dtype), device=weight.device)
        )
        self.register_buffer("indices", indices)
        self.register_buffer(
            "touched_indices", torch.zeros(0, dtype=torch.long, device=weight.device)
        )
        self.backend = backend
        self.grad_observer: GradObserver | None = None

    @property
    def weight(self) -> torch.Tensor:
        """The frozen base weight (what code that inspects `proj.weight` expects to find)."""
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base_layer.bias

    @property
    def in_features(self) -> int:
        return self.base_layer.in_features

    @property
    def out_features(self) -> int:
        return self.base_layer.out_features

    @property
    def k(self) -> int:
        return self.indices.numel()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _SparseDeltaLinearFunction.apply(
            x, self.base_layer.weight, self.base_layer.bias, self.values, self.indices, self
        )

    def effective_weight(self) -> torch.Tensor:
        """W + scatter(values), in W's dtype (a new dense tensor)."""
        return effective_weight(self.base_layer.weight.detach(), self.values.detach(), self.indices)

    def delta_weight(self) -> torch.Tensor:
        """The trainable part as a dense [m, n] tensor in the values' dtype."""
        dense = torch.zeros(
            self.base_layer.weight.numel(), dtype=self.values.dtype, device=self.values.device
        )
        dense[self.indices] = self.values.detach()
        return dense.view(self.base_layer.weight.shape)

    @torch.no_grad()
    def set_support(
        self,
        new_indices: torch.Tensor,
        optimizer: torch.optim.Optimizer | None = None,
        seed: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> dict[str, int]:
        """Move the trainable support to `new_indices` (sorted unique) without changing W_eff.

        Surviving entries keep their values and optimizer state; leaving entries are folded into W
        (W_i <- round(W_i + v_i), exactly the W_eff entry); arriving entries start at value 0 with
        zero optimizer state, or with `seed` (see `remap_optimizer_state`, positions index the new
        support). Returns counts {"kept", "arrived", "left"}.
        """
        new_indices = new_indices.to(device=self.indices.device, dtype=torch.long)
        keep_old, keep_new, leaving = support_overlap(self.indices, new_indices)
        weight = self.base_layer.weight
        flat = weight.data.view(-1)
        gone = self.indices[leaving]
        if gone.numel():
            folded = flat[gone].to(self.values.dtype) + self.values.data[leaving]
            flat[gone] = folded.to(weight.dtype)
            self.touched_indices = torch.unique(torch.cat([self.touched_indices, gone]))
        new_values = torch.zeros(new_indices.numel(), dtype=self.values.dtype, device=flat.device)
        new_values[keep_new] = self.values.data[keep_old]
        remap_optimizer_state(optimizer, self.values, keep_old, keep_new, new_indices.numel(), seed)
        self.values.data = new_values
        self.values.grad = None
        self.indices = new_indices
        return {
            "kept": int(keep_new.numel()),
            "arrived": int(new_indices.numel() - keep_new.numel()),
            "left": int(gone.numel()),
        }

    @torch.no_grad()
    def zero_base(self, positions: torch.Tensor) -> None:
        """Prune: W_i <- 0 at flat `positions`, which must not be in the trainable support."""
        positions = positions.to(device=self.indices.device, dtype=torch.long)
        if positions.numel() == 0:
            return
        self.base_layer.weight.data.view(-1)[positions] = 0
        self.touched_indices = torch.unique(torch.cat([self.touched_indices, positions]))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # the set of touched positions grows during training: resize before the strict copy
        key = prefix + "touched_indices"
        if key in state_dict and state_dict[key].shape != self.touched_indices.shape:
            self.touched_indices = torch.zeros_like(state_dict[key], device=self.indices.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return (
            f"k={self.k}, shape={tuple(self.base_layer.weight.shape)}, "
            f"density={self.k / max(1, self.base_layer.weight.numel()):.4f}"
        )

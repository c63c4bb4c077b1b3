"""ELAS's feed-forward block: squared ReLU with 2:4 activation sparsity before the down projection.

    y1 = Up(x),   y2 = relu(y1)^2,   s = S(y2),   out = Down(s)          (ELAS, arXiv 2605.03667)

S keeps the 2 largest of every 4 consecutive features of each token (ties: lower index;
`layerwise_kernels.mask_24`) and zeroes the other 2. With low-rank projections
(`sparse_ft.LowRankLinear`, Down = A_dn B_dn^T) the only 2:4 GEMM is h2 = s A_dn, run by
`layerwise_kernels.sparse24_mm`; out = h2 B_dn^T. Backward, with g_h2 = dL/dh2 = g_out B_dn:

    dL/dA_dn = s^T g_h2                     (the s the forward used; the authors' dev code used y2)
    g_s      = g_h2 A_dn^T
    grad="ste"    (the paper): g_y2 = g_s          (straight through S: dropped slots get gradient)
    grad="masked" (ours):      g_y2 = g_s * M      (the true gradient of the sparsified network)
    g_y1     = 2 g_y2 relu(y1)

Saved for backward (beside what the two projections save: x, h1, h2): "ste" keeps y1 only and
recomputes s = S(relu(y1)^2) in backward (the same kernel on the same input: bit for bit the
forward's s); "masked" keeps s compact (F/2 values + one uint8 per group of 4) and uses
relu(y1) = sqrt(s) on the kept slots (exact in fp64; fp32 and bf16 within one rounding).
Elementwise math is fp32 (fp64 stays fp64); GEMMs run in the activations' dtype.

Dense warm-up: S is the identity (and the whole block autograd-native) until the module's
`elas_step` buffer reaches `warmup_steps`; the trainer calls `set_elas_step(model, step)` after
every optimizer step. The buffer is in `state_dict`, so a checkpoint resumes in the right phase.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from layerwise_kernels import (
    Sparse24Stats,
    decompress_24,
    relu2_sparsify_24,
    sparse24_mm,
)
from sparse_ft.low_rank import LowRankLinear

__all__ = [
    "ELASFFN",
    "Relu2Sparse24Matmul",
    "analytic_saved_bytes",
    "elas_stats",
    "relu2_sparse24_matmul",
    "saved_activation_bytes",
    "set_elas_step",
]

GRAD_MODES = ("ste", "masked")
BACKENDS = ("auto", "torch", "triton")


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _kernel_backends(backend: str) -> tuple[str, str]:
    """(select backend, sparse24_mm backend): "torch" = pure-torch references everywhere."""
    return backend, ("dense" if backend == "torch" else "auto")


class Relu2Sparse24Matmul(torch.autograd.Function):
    """h2 = S(relu(y1)^2) @ w, differentiable in y1 and w (see the module docstring).

    forward(y1 [..., F], w [F, N], grad, backend, stats) -> h2 [..., N], plus the five
    `Sparse24Stats` fields as non-differentiable outputs when `stats`.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, y1: torch.Tensor, w: torch.Tensor, grad: str, backend: str, stats: bool
    ) -> Any:
        select_backend, mm_backend = _kernel_backends(backend)
        y1_2d = y1.reshape(-1, y1.shape[-1])
        w_c = w.to(y1.dtype)
        if grad == "ste":
            sel = relu2_sparsify_24(y1_2d, out="masked", stats=stats, backend=select_backend)
            s = sel.values
            ctx.save_for_backward(y1, w)
        else:
            sel = relu2_sparsify_24(y1_2d, out="compact", stats=stats, backend=select_backend)
            s = decompress_24(sel.values, sel.indices)
            ctx.save_for_backward(sel.values, sel.indices, w)
        ctx.grad, ctx.backend, ctx.y1_shape = grad, backend, y1.shape
        h2 = sparse24_mm(s, w_c, backend=mm_backend).reshape(*y1.shape[:-1], w.shape[1])
        if not stats:
            return h2
        ctx.mark_non_differentiable(*sel.stats)
        return (h2, *sel.stats)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, g_h2: torch.Tensor, *_stats_grads: Any) -> Any:
        f = ctx.y1_shape[-1]
        if ctx.grad == "ste":
            y1, w = ctx.saved_tensors
            y1_2d = y1.reshape(-1, f)
            s = relu2_sparsify_24(y1_2d, out="masked", backend=_kernel_backends(ctx.backend)[0])
            s = s.values
            relu_y1 = torch.relu(y1_2d.to(_compute_dtype(y1.dtype)))  # everywhere: straight through
        else:
            values, indices, w = ctx.saved_tensors
            s = decompress_24(values, indices)
            # relu(y1) on kept slots (0 elsewhere): sqrt(fl(r^2)) rounds back to r in binary
            # floating point, so this is exact in bf16 and fp64 (fp32: torch's CPU sqrt is off by
            # one ulp in ~1e-5 of the cases); subnormal squares excepted
            compute = _compute_dtype(s.dtype)
            relu_y1 = s.to(compute).sqrt().to(s.dtype).to(compute)
        g_2d = g_h2.reshape(-1, g_h2.shape[-1]).to(s.dtype)
        g_y1 = g_w = None
        if ctx.needs_input_grad[0]:
            g_s = g_2d @ w.to(s.dtype).T
            g_y1 = (2.0 * g_s.to(relu_y1.dtype) * relu_y1).to(s.dtype).reshape(ctx.y1_shape)
        if ctx.needs_input_grad[1]:
            g_w = (s.T @ g_2d).to(w.dtype)  # s, not relu(y1)^2: what the forward multiplied
        return g_y1, g_w, None, None, None


def relu2_sparse24_matmul(
    y1: torch.Tensor,
    w: torch.Tensor,
    *,
    grad: Literal["ste", "masked"] = "ste",
    backend: str = "auto",
    stats: bool = False,
) -> tuple[torch.Tensor, Sparse24Stats | None]:
    """(S(relu(y1)^2) @ w, stats or None): ELAS's sparse half of the FFN, differentiable.

    y1 [..., F] (F % 4 == 0), w [F, N] (A_dn of a low-rank Down, or Down's weight transposed).
    grad="ste": the paper's straight-through backward; "masked": the exact backward of the
    sparsified net. backend: "auto" | "triton" | "torch" (pure-torch select and dense GEMM).
    """
    if grad not in GRAD_MODES:
        raise ValueError(f"grad must be one of {GRAD_MODES}, got {grad!r}")
    if w.dim() != 2 or w.shape[0] != y1.shape[-1]:
        raise ValueError(
            f"relu2_sparse24_matmul needs w of shape [F, N] with F = y1.shape[-1] = "
            f"{y1.shape[-1]}, got {tuple(w.shape)}: pass A_dn [F, r] or the Down weight's .T"
        )
    if not (torch.is_grad_enabled() and (y1.requires_grad or w.requires_grad)):
        # inference: nothing to save, so no compact form either (both modes: the same forward)
        select_backend, mm_backend = _kernel_backends(backend)
        sel = relu2_sparsify_24(y1, out="masked", stats=stats, backend=select_backend)
        h2 = sparse24_mm(sel.values.reshape(-1, y1.shape[-1]), w.to(y1.dtype), backend=mm_backend)
        return h2.reshape(*y1.shape[:-1], w.shape[1]), sel.stats
    out = Relu2Sparse24Matmul.apply(y1, w, grad, backend, stats)
    if not stats:
        return out, None
    return out[0], Sparse24Stats(*out[1:])


def _in_backward() -> bool:
    """True while autograd runs a backward pass (activation checkpointing recomputes forwards)."""
    task_id = getattr(torch._C, "_current_graph_task_id", None)
    return task_id is not None and task_id() != -1


class ELASFFN(nn.Module):
    """ELAS's FFN: out = Down(S(relu(Up(x))^2)), S the 2:4 select after `warmup_steps` updates.

    Args:
        hidden_size: d, the model width.
        ffn_dim: F, the squared-ReLU width; a multiple of 4 (ELAS pads F to a multiple of 64).
        rank: factor rank of `LowRankLinear` Up and Down; None: `nn.Linear` (full rank).
        sparse: False keeps S the identity for good (the dense low-rank ReLU^2 baseline).
        warmup_steps: dense updates before S is applied (ELAS: 1000).
        grad: "ste" (paper: straight through S) or "masked" (ours: gradient only on kept slots).
        backend: kernels of the select: "auto" | "triton" | "torch" ("torch" also runs the dense
            masked GEMM instead of the semi-structured sparse one).

    Attributes: `elas_step` (int64 buffer, in `state_dict`), `collect_stats` (bool: accumulate
    `Sparse24Stats` per forward, read with `elas_stats`; during warm-up, what S would drop).
    """

    def __init__(
        self,
        hidden_size: int,
        ffn_dim: int,
        rank: int | None = None,
        *,
        sparse: bool = True,
        warmup_steps: int = 1000,
        grad: Literal["ste", "masked"] = "ste",
        backend: str = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if ffn_dim % 4:
            raise ValueError(
                f"ELASFFN: ffn_dim must be a multiple of 4 for the 2:4 select, got {ffn_dim}: "
                f"use {ffn_dim + (-ffn_dim) % 64} (ELAS rounds up to a multiple of 64)"
            )
        if grad not in GRAD_MODES:
            raise ValueError(f"ELASFFN: grad must be one of {GRAD_MODES}, got {grad!r}")
        if backend not in BACKENDS:
            raise ValueError(f"ELASFFN: backend must be one of {BACKENDS}, got {backend!r}")
        if warmup_steps < 0:
            raise ValueError(f"ELASFFN: warmup_steps must be >= 0, got {warmup_steps}")
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        if rank is None:
            self.up_proj: nn.Module = nn.Linear(hidden_size, ffn_dim, bias=False, **factory)
            self.down_proj: nn.Module = nn.Linear(ffn_dim, hidden_size, bias=False, **factory)
        else:
            self.up_proj = LowRankLinear(hidden_size, ffn_dim, rank, **factory)
            self.down_proj = LowRankLinear(ffn_dim, hidden_size, rank, **factory)
        self.hidden_size, self.ffn_dim, self.rank = hidden_size, ffn_dim, rank
        self.grad, self.backend = grad, backend
        self._sparse, self._warmup_steps = sparse, warmup_steps
        self.register_buffer("elas_step", torch.zeros((), dtype=torch.int64, device=device))
        # Host mirror of the buffer, so that forward never syncs with the device to read it.
        # A bool (flips once) rather than the step: torch.compile guards on it.
        self._host_step = 0
        self._active = self._sparse and self._warmup_steps == 0
        self.collect_stats = False
        self._stats: Sparse24Stats | None = None

    @property
    def sparse(self) -> bool:
        return self._sparse

    @sparse.setter
    def sparse(self, value: bool) -> None:
        self._sparse = value
        self._active = value and self._host_step >= self._warmup_steps

    @property
    def warmup_steps(self) -> int:
        return self._warmup_steps

    @warmup_steps.setter
    def warmup_steps(self, value: int) -> None:
        self._warmup_steps = value
        self._active = self._sparse and self._host_step >= value

    @property
    def sparse_active(self) -> bool:
        """True when S applies: `sparse` and `elas_step >= warmup_steps`."""
        return self._active

    @torch.no_grad()
    def set_step(self, step: int) -> None:
        """Record `step` completed optimizer updates (the buffer and its host mirror)."""
        self.elas_step.fill_(int(step))
        self._host_step = int(step)
        self._active = self._sparse and self._host_step >= self._warmup_steps

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if not self.elas_step.is_meta:
            self.set_step(int(self.elas_step))

    def _w_first(self) -> torch.Tensor:
        """The matrix S(y2) multiplies: A_dn [F, r] (low rank) or Down's weight^T [F, d]."""
        if isinstance(self.down_proj, LowRankLinear):
            return self.down_proj.weight_in
        return self.down_proj.weight.T

    def _add_stats(self, stats: Sparse24Stats) -> None:
        if _in_backward():  # a checkpointed forward recomputed in backward was counted already
            return
        self._stats = stats if self._stats is None else self._stats + stats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y1 = self.up_proj(x)
        if not self._active:
            y2 = torch.relu(y1).square()
            if self.collect_stats:
                with torch.no_grad():
                    sel = relu2_sparsify_24(
                        y1.detach(), out="compact", stats=True, backend=self.backend
                    )
                self._add_stats(sel.stats)
            return self.down_proj(y2)
        h2, stats = relu2_sparse24_matmul(
            y1, self._w_first(), grad=self.grad, backend=self.backend, stats=self.collect_stats
        )
        if stats is not None:
            self._add_stats(stats)
        if isinstance(self.down_proj, LowRankLinear):
            return F.linear(h2, self.down_proj.weight_out)
        return h2

    def extra_repr(self) -> str:
        return (
            f"hidden_size={self.hidden_size}, ffn_dim={self.ffn_dim}, rank={self.rank}, "
            f"sparse={self.sparse}, warmup_steps={self.warmup_steps}, grad={self.grad!r}"
        )


def set_elas_step(model: nn.Module, step: int) -> int:
    """Set `elas_step` = `step` (completed optimizer updates) in every `ELASFFN` of `model`.

    Call after each optimizer step and at resume. Returns how many modules were set.
    """
    count = 0
    for module in model.modules():
        if isinstance(module, ELASFFN):
            module.set_step(step)
            count += 1
    return count


def elas_stats(model: nn.Module, reset: bool = True) -> dict[str, Sparse24Stats]:
    """The `Sparse24Stats` accumulated by every `ELASFFN` with `collect_stats`, by module name.

    Modules that saw no forward since the last reset are left out; `reset` clears the sums.
    """
    out: dict[str, Sparse24Stats] = {}
    for name, module in model.named_modules():
        if isinstance(module, ELASFFN) and module._stats is not None:
            out[name] = module._stats
            if reset:
                module._stats = None
    return out


def analytic_saved_bytes(
    mode: Literal["dense", "ste", "masked"],
    hidden_size: int,
    ffn_dim: int,
    rank: int | None,
    e: int,
) -> int:
    """Bytes per token an `ELASFFN` keeps for backward, e bytes per activation element.

    Both projections keep their inputs: x [d] and, low rank, h1 = x A_up and h2 = s A_dn [r each].
    The middle keeps: "dense" (S inactive) relu(y1) and y2 = relu(y1)^2 (autograd's relu and the
    down GEMM), 2F e; "ste" y1, F e; "masked" the compact s, F/2 values and F/4 index bytes.
    ELAS spec §3.5 counts x, h1, y1, y2, h2 for the dense FFN (the same), nibble-packed indices
    (F/8) for masked mode, and y1 plus the compact s for STE (we recompute s from y1 instead).
    """
    outer = hidden_size + (2 * rank if rank is not None else 0)
    middle = {
        "dense": 2 * ffn_dim * e,
        "ste": ffn_dim * e,
        "masked": ffn_dim // 2 * e + ffn_dim // 4,
    }
    return outer * e + middle[mode]


def saved_activation_bytes(module: nn.Module, *args: Any) -> int:
    """Bytes autograd saves for backward in `module(*args)`: every saved tensor's storage once,
    parameters (and views of them) excluded. Measured with `torch.autograd.graph.saved_tensors_hooks`."""
    params = {p.untyped_storage().data_ptr() for p in module.parameters()}
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()
        if st.data_ptr() not in params:
            storages[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        module(*args)
    return sum(storages.values())

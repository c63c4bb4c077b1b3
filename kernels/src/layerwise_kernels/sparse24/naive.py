"""Pure-torch 2:4 selection: the ground truth the Triton kernels are tested against.

For y of shape [..., F] (F % 4 == 0) viewed as groups of 4 consecutive features, slot i of a group
with magnitudes a = |y| is kept iff fewer than two slots beat it:

    c_i = #{j : a_j > a_i  or  (a_j == a_i and j < i)},        M_i = (c_i < 2)

(rank by |v| descending, index ascending; ELAS spec §3.1). The order is total, so every group keeps
exactly two slots, whatever the ties. NaN policy: a NaN ranks above every number, +-inf included
(NaNs among themselves by index), so a NaN is always kept and reaches the loss instead of being
hidden by the mask. No topk: its order among equal values is unspecified.

The fused op computes v = relu(y1)^2 in fp32 (fp64 stays fp64), ranks v, and casts the kept values
once to y1's dtype (relu(NaN) = NaN, as torch.relu).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

GROUP = 4


class Sparse24Stats(NamedTuple):
    """What a 2:4 select dropped, as 0-dim tensors on the input's device (no host sync).

    Sums over every element seen; `a + b` adds two stats (micro-batches, layers).
    """

    count: torch.Tensor  # int64: elements
    nonzero_before: torch.Tensor  # int64: non-zeros of relu^2 before the select (NaN counts)
    nonzero_after: torch.Tensor  # int64: non-zeros kept by the select
    mass_before: torch.Tensor  # fp32: sum of relu^2 values before the select
    mass_after: torch.Tensor  # fp32: sum of the kept relu^2 values

    def __add__(self, other: Sparse24Stats) -> Sparse24Stats:  # type: ignore[override]
        if not isinstance(other, Sparse24Stats):
            return NotImplemented
        return Sparse24Stats(*(a + b for a, b in zip(self, other, strict=True)))

    @property
    def activation_sparsity(self) -> torch.Tensor:
        """1 - nonzero_before / count: the fraction of exact zeros of relu^2 (fp32)."""
        return 1.0 - self.nonzero_before.float() / self.count.clamp_min(1).float()

    @property
    def dropped_nonzero_fraction(self) -> torch.Tensor:
        """1 - nonzero_after / nonzero_before (0 when there was no non-zero): fp32."""
        before = self.nonzero_before.float()
        frac = 1.0 - self.nonzero_after.float() / before.clamp_min(1.0)
        return torch.where(before > 0, frac, torch.zeros_like(frac))

    @property
    def dropped_mass_fraction(self) -> torch.Tensor:
        """1 - mass_after / mass_before (0 when the mass was 0): fp32."""
        before = self.mass_before.float()
        safe = torch.where(before != 0, before, torch.ones_like(before))
        frac = 1.0 - self.mass_after.float() / safe
        return torch.where(before != 0, frac, torch.zeros_like(frac))


class Relu2Sparse24(NamedTuple):
    """Output of `relu2_sparsify_24`; fields that the chosen `out` does not produce are None."""

    values: torch.Tensor  # "masked": [..., F] y1.dtype; "compact": [..., F/2] kept values in order
    mask: torch.Tensor | None  # "masked": bool [..., F]
    indices: torch.Tensor | None  # "compact": uint8 [..., F/4], byte = i0 | (i1 << 2), i0 < i1
    stats: Sparse24Stats | None  # when stats=True


def check_groups(size: int, what: str) -> None:
    """ValueError naming the fix unless `size` (the selected dim) is a multiple of 4."""
    if size % GROUP:
        raise ValueError(
            f"{what} needs the selected dim to be a multiple of 4, got {size}: pad it with zero "
            f"features to {size + (-size) % GROUP} (zeros are never kept over a non-zero)"
        )


def _beats(a_j, nan_j, a_i, nan_i) -> torch.Tensor:
    """Slot j > i ranks above slot i: NaN above numbers, then a strictly larger |v|."""
    return (nan_j & ~nan_i) | ((nan_j == nan_i) & (a_j > a_i))


def mask_24_naive(y: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Bool mask keeping the 2 largest-|v| slots of every 4 along `dim` (ties: lower index)."""
    y = y.movedim(dim, -1)
    check_groups(y.shape[-1], "mask_24")
    groups = y.reshape(*y.shape[:-1], y.shape[-1] // GROUP, GROUP)
    a = groups.abs()
    nan = a.isnan()
    a = a.masked_fill(nan, 0.0)  # NaN's rank comes from `nan`, never from a comparison
    # Slot-major copies: each comparison below reads contiguous memory.
    a, nan = a.movedim(-1, 0).contiguous(), nan.movedim(-1, 0).contiguous()
    # The order is total, so for i < j: i beats j exactly when j does not beat i (a tie goes to
    # the lower index i); the 6 pairs give every c_i.
    beats = {
        (j, i): _beats(a[j], nan[j], a[i], nan[i])
        for i in range(GROUP)
        for j in range(i + 1, GROUP)
    }
    kept = []
    for i in range(GROUP):
        c_i = sum(
            (beats[j, i] if j > i else ~beats[i, j]).to(torch.uint8) for j in range(GROUP) if j != i
        )
        kept.append(c_i < 2)
    return torch.stack(kept, dim=-1).reshape(y.shape).movedim(-1, dim)


def sparsify_24_naive(y: torch.Tensor, dim: int = -1) -> tuple[torch.Tensor, torch.Tensor]:
    """(torch.where(M, y, 0), M) with M = mask_24_naive(y, dim): kept values bitwise unchanged."""
    mask = mask_24_naive(y, dim)
    return torch.where(mask, y, torch.zeros((), dtype=y.dtype, device=y.device)), mask


def sparse24_stats(y2: torch.Tensor, mask: torch.Tensor) -> Sparse24Stats:
    """Statistics of selecting `mask` from an already computed relu^2 tensor `y2` (e.g. in warm-up).

    Counts and fp32 sums over all elements; 0-dim tensors on y2's device, no host sync.
    """
    if mask.shape != y2.shape or mask.dtype != torch.bool:
        raise ValueError(
            f"sparse24_stats needs a bool mask of y2's shape {tuple(y2.shape)}, got "
            f"{mask.dtype} {tuple(mask.shape)}: pass the mask of mask_24(y2)"
        )
    kept = torch.where(mask, y2, torch.zeros((), dtype=y2.dtype, device=y2.device))
    return Sparse24Stats(
        # torch.full launches a fill: no host-to-device copy that would wait for the stream.
        count=torch.full((), y2.numel(), dtype=torch.int64, device=y2.device),
        nonzero_before=torch.count_nonzero(y2),
        nonzero_after=torch.count_nonzero(kept),
        mass_before=y2.sum(dtype=torch.float32),
        mass_after=kept.sum(dtype=torch.float32),
    )


def kept_slots(mask: torch.Tensor) -> torch.Tensor:
    """int64 [..., F/4, 2]: the two kept slots (ascending) of every group of a 2:4 `mask`."""
    groups = mask.reshape(*mask.shape[:-1], mask.shape[-1] // GROUP, GROUP)
    # Stable sort of "not kept" puts the kept slots first, each in ascending order.
    return torch.argsort((~groups).to(torch.uint8), dim=-1, stable=True)[..., :2]


def compress_24(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Compact form of a 2:4 tensor along its last dim: (values [..., F/2], indices uint8 [..., F/4]).

    The kept slots of a group are those of `mask_24(s)` (its non-zeros first, then the lowest zero
    slots), values in slot order, index byte = i0 | (i1 << 2) with i0 < i1. For any s with at most
    two non-zeros per group `decompress_24(*compress_24(s))` equals s (bit for bit, except that a
    -0.0 in a dropped slot comes back as +0.0; the selector's outputs have none); for others it is
    `sparsify_24(s)` (the two largest are kept).
    """
    check_groups(s.shape[-1], "compress_24")
    slots = kept_slots(mask_24_naive(s))
    groups = s.reshape(*s.shape[:-1], s.shape[-1] // GROUP, GROUP)
    values = groups.gather(-1, slots).reshape(*s.shape[:-1], s.shape[-1] // 2)
    indices = (slots[..., 0] | (slots[..., 1] << 2)).to(torch.uint8)
    return values, indices


def decompress_24(values: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Dense [..., F] from `compress_24`'s (values [..., F/2], indices uint8 [..., F/4]); zeros elsewhere."""
    if indices.dtype != torch.uint8 or values.shape[:-1] != indices.shape[:-1]:
        raise ValueError(
            f"decompress_24 needs uint8 indices [..., F/4] beside values [..., F/2], got "
            f"{indices.dtype} {tuple(indices.shape)} and {tuple(values.shape)}"
        )
    if values.shape[-1] != 2 * indices.shape[-1]:
        raise ValueError(
            f"decompress_24: values have {values.shape[-1]} entries per row, indices "
            f"{indices.shape[-1]} groups: there must be 2 values per group"
        )
    idx = indices.to(torch.int64)
    slots = torch.stack([idx & 3, (idx >> 2) & 3], dim=-1)
    n_groups = indices.shape[-1]
    out = torch.zeros(*values.shape[:-1], n_groups, GROUP, dtype=values.dtype, device=values.device)
    out.scatter_(-1, slots, values.reshape(*values.shape[:-1], n_groups, 2))
    return out.reshape(*values.shape[:-1], n_groups * GROUP)


def relu2(y1: torch.Tensor) -> torch.Tensor:
    """relu(y1)^2 in fp32 (fp64 for fp64 input); relu(NaN) = NaN."""
    compute = torch.float64 if y1.dtype == torch.float64 else torch.float32
    r = torch.relu(y1.to(compute))
    return r * r


def relu2_sparsify_24_naive(
    y1: torch.Tensor, *, out: str = "masked", stats: bool = False
) -> Relu2Sparse24:
    """Fused reference: v = relu(y1)^2 in fp32, M = mask_24(v), then the masked or compact output.

    Ranking happens on the fp32 v (before the one cast to y1.dtype), stats on the fp32 v as well.
    """
    check_groups(y1.shape[-1], "relu2_sparsify_24")
    v = relu2(y1)
    mask = mask_24_naive(v)
    st = sparse24_stats(v, mask) if stats else None
    if out == "masked":
        kept = torch.where(mask, v, torch.zeros((), dtype=v.dtype, device=v.device))
        return Relu2Sparse24(kept.to(y1.dtype), mask, None, st)
    slots = kept_slots(mask)
    groups = v.reshape(*v.shape[:-1], v.shape[-1] // GROUP, GROUP)
    values = groups.gather(-1, slots).reshape(*v.shape[:-1], v.shape[-1] // 2).to(y1.dtype)
    indices = (slots[..., 0] | (slots[..., 1] << 2)).to(torch.uint8)
    return Relu2Sparse24(values, None, indices, st)

"""Fake-quantised Linear layers and the patcher that puts them into a model (Liger-style `apply_*`)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["FakeQuantLinear", "apply_fake_quant"]


class FakeQuantLinear(nn.Linear):
    """nn.Linear whose weight and input are fake-quantised in the forward pass.

        y = fq(x) @ fq(W)^T + b,   dL/dW and dL/dx straight through fq

    The weight gets one scale per output channel (row) or per `weight_group_size` entries of a row;
    the input one scale per token or per `act_group_size` entries. The bias is not quantised.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        device=None,
        dtype=None,
        *,
        mode: str = "int4",
        quantize_weight: bool = True,
        quantize_input: bool = True,
        weight_group_size: int | None = None,
        act_group_size: int | None = None,
    ) -> None:
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self._configure(mode, quantize_weight, quantize_input, weight_group_size, act_group_size)

    def _configure(self, mode, quantize_weight, quantize_input, weight_group_size, act_group_size):
        from layerwise_kernels.fake_quant.naive import QMAX

        if mode not in QMAX:
            raise ValueError(f"FakeQuantLinear mode must be one of {tuple(QMAX)}, got {mode!r}")
        self.mode = mode
        self.quantize_weight = quantize_weight
        self.quantize_input = quantize_input
        self.weight_group_size = weight_group_size
        self.act_group_size = act_group_size

    @classmethod
    def from_linear(cls, linear: nn.Linear, **kwargs) -> FakeQuantLinear:
        """A FakeQuantLinear that shares `linear`'s weight and bias Parameters (same objects)."""
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.in_features, new.out_features = linear.in_features, linear.out_features
        new.weight = linear.weight
        new.bias = linear.bias
        defaults = dict(
            mode="int4",
            quantize_weight=True,
            quantize_input=True,
            weight_group_size=None,
            act_group_size=None,
        )
        defaults.update(kwargs)
        new._configure(**defaults)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from layerwise_kernels.fake_quant import fake_quant

        weight = self.weight
        if self.quantize_weight:
            weight = fake_quant(weight, self.mode, group_size=self.weight_group_size)
        if self.quantize_input:
            x = fake_quant(x, self.mode, group_size=self.act_group_size)
        return F.linear(x, weight, self.bias)

    def extra_repr(self) -> str:
        parts = [super().extra_repr(), f"mode={self.mode}"]
        if not self.quantize_weight:
            parts.append("quantize_weight=False")
        if not self.quantize_input:
            parts.append("quantize_input=False")
        for name in ("weight_group_size", "act_group_size"):
            if getattr(self, name) is not None:
                parts.append(f"{name}={getattr(self, name)}")
        return ", ".join(parts)


def apply_fake_quant(
    model: nn.Module,
    mode: str = "int4",
    *,
    quantize_weight: bool = True,
    quantize_input: bool = True,
    weight_group_size: int | None = None,
    act_group_size: int | None = None,
    skip: Sequence[str] = ("lm_head",),
) -> nn.Module:
    """Replace every nn.Linear of `model` by a FakeQuantLinear that shares its Parameters; in place.

    Simulated low-bit training as in Stable-SPAM's 4-bit experiments: the weights and inputs of the
    Linear layers are fake-quantised, gradients pass straight through. `mode="none"` leaves the
    model alone. Linear layers whose qualified name contains an entry of `skip` (by default the
    output head) stay in full precision. Parameters keep their identity and state_dict names, so an
    optimizer built before the patch still holds them. Returns `model`.
    """
    if mode == "none":
        return model
    options = dict(
        mode=mode,
        quantize_weight=quantize_weight,
        quantize_input=quantize_input,
        weight_group_size=weight_group_size,
        act_group_size=act_group_size,
    )
    FakeQuantLinear.from_linear(nn.Linear(1, 1), **options)  # validate before touching the model
    for parent_name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            name = f"{parent_name}.{child_name}" if parent_name else child_name
            if type(child) is nn.Linear and not any(s in name for s in skip):
                setattr(parent, child_name, FakeQuantLinear.from_linear(child, **options))
    return model

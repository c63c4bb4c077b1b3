"""A linear layer stored as two rank-r factors, mergeable into one dense matrix (LORO's parameterisation).

    y = x A B^T (+ bias),   A = weight_in [in, r],   B = weight_out [out, r],   W = B A^T [out, in]

No nonlinearity between the factors (CoLA's design, which ELAS and LORO reject): the product is a
plain linear map, so a trained layer merges into an `nn.Linear` for inference (`to_linear`).
Both factors start Xavier-normal, as LORO's `init="xavier"` (`torch.nn.init.xavier_normal_` on
each [n, r] factor: std = sqrt(2 / (n + r)), n = in for A and out for B; the two fans of a
factor are its two sizes, so which one counts as "fan in" does not change the std).
`from_linear` goes the other way: the truncated SVD W ~ U_r S_r V_r^T split as
B = U_r sqrt(S_r), A = V_r sqrt(S_r) (balanced factors, A^T A = B^T B = S_r), the best rank-r
approximation in Frobenius and spectral norm (Eckart-Young).

`LowRankConfig` says which linears of a model become low rank (`apply_elas` reads it); in a YAML
file `low_rank: 128` means `{rank: 128, attention: true, mlp: true}`.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field, model_validator
from torch import nn

from layerwise_core import LayerwiseConfig

__all__ = ["LowRankConfig", "LowRankLinear"]


class LowRankLinear(nn.Module):
    """`forward(x) = (x @ weight_in) @ weight_out.T (+ bias)`; weight_in [in, rank], weight_out [out, rank]."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        rank: int,
        bias: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if rank < 1:
            raise ValueError(f"LowRankLinear: rank must be >= 1, got {rank}: pass a positive rank")
        self.in_features = in_features
        self.out_features = out_features
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        self.weight_in = nn.Parameter(torch.empty(in_features, rank, **factory))
        self.weight_out = nn.Parameter(torch.empty(out_features, rank, **factory))
        if bias:
            self.bias = nn.Parameter(torch.empty(out_features, **factory))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    @property
    def rank(self) -> int:
        """The number of columns of the factors (an upper bound of the product's rank)."""
        return self.weight_in.shape[1]

    def reset_parameters(self) -> None:
        """Xavier-normal factors (std sqrt(2 / (n + rank)) for a factor with n rows, as LORO's
        `xavier_normal_` on each factor); a zero bias (as LORO's)."""
        nn.init.xavier_normal_(self.weight_in)
        nn.init.xavier_normal_(self.weight_out)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = (x @ self.weight_in) @ self.weight_out.T
        if self.bias is not None:
            out = out + self.bias
        return out

    def merged_weight(self) -> torch.Tensor:
        """The dense weight W = weight_out @ weight_in.T, [out, in] (nn.Linear's layout)."""
        return self.weight_out @ self.weight_in.T

    @torch.no_grad()
    def to_linear(self) -> nn.Linear:
        """An `nn.Linear` with the merged weight (and the bias): the same outputs up to rounding."""
        w = self.weight_in
        linear = nn.Linear(
            self.in_features,
            self.out_features,
            bias=self.bias is not None,
            device=w.device,
            dtype=w.dtype,
        )
        linear.weight.copy_(self.merged_weight())
        if self.bias is not None:
            linear.bias.copy_(self.bias)
        return linear

    @classmethod
    @torch.no_grad()
    def from_linear(cls, linear: nn.Linear, rank: int) -> LowRankLinear:
        """The rank-`rank` truncated SVD of `linear.weight` (computed in fp64), singular values
        split as sqrt on both factors. Exact (up to rounding) when rank >= min(in, out); a rank
        above min(in, out) pads both factors with zero columns."""
        weight = linear.weight
        out_features, in_features = weight.shape
        module = cls(
            in_features,
            out_features,
            rank,
            bias=linear.bias is not None,
            device=weight.device,
            dtype=weight.dtype,
        )
        u, s, vh = torch.linalg.svd(weight.detach().double(), full_matrices=False)
        k = min(rank, s.numel())
        root = s[:k].sqrt()
        module.weight_out.zero_()
        module.weight_in.zero_()
        module.weight_out[:, :k] = (u[:, :k] * root).to(weight.dtype)
        module.weight_in[:, :k] = (vh[:k].T * root).to(weight.dtype)
        if linear.bias is not None:
            module.bias.copy_(linear.bias)
        return module

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"rank={self.rank}, bias={self.bias is not None}"
        )


class LowRankConfig(LayerwiseConfig):
    """Which linears of the decoder blocks become `LowRankLinear` (embeddings, lm_head and norms
    stay full rank). `LowRankConfig.model_validate(128)` is `LowRankConfig(rank=128)`."""

    rank: int | None = Field(None, ge=1)  # factor rank r; None: full rank (nothing replaced)
    attention: bool = True  # q/k/v/o projections low rank
    mlp: bool = True  # the MLP's projections low rank

    @model_validator(mode="before")
    @classmethod
    def _rank_shorthand(cls, data: Any) -> Any:
        # `low_rank: 128` in a YAML file means {rank: 128}
        if isinstance(data, bool):
            raise ValueError("low_rank takes a rank (e.g. 128) or a mapping, not a boolean")
        return {"rank": data} if isinstance(data, int) else data

    @property
    def enabled(self) -> bool:
        """True when some linears become low rank."""
        return self.rank is not None and (self.attention or self.mlp)

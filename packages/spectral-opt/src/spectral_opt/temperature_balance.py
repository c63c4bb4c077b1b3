"""TempBalance's linear map from alpha to a per-module hyper-parameter (`tb_linear_map`).

    value_i = interp(alpha_i, [alpha_min, alpha_max], [r_min * base, r_max * base])

alpha_min / alpha_max are taken over the modules being tuned. Both AlphaDecay and LLR map in the
increasing direction: the most heavy-tailed module (lowest alpha) gets r_min * base (the weakest
weight decay, the smallest learning rate), the least heavy-tailed one r_max * base.
When every alpha is equal the range is empty and, as `numpy.interp` does in the reference code,
every module gets r_max * base.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["tb_linear_map"]


def tb_linear_map(
    alphas: Mapping[str, float], base: float, ratio: tuple[float, float]
) -> dict[str, float]:
    """{name: interp(alpha, [min alpha, max alpha], [ratio[0] * base, ratio[1] * base])}."""
    r_min, r_max = ratio
    if not alphas:
        return {}
    lo, hi = min(alphas.values()), max(alphas.values())
    v_lo, v_hi = r_min * base, r_max * base
    if hi == lo:
        return {name: v_hi for name in alphas}
    return {name: v_lo + (a - lo) / (hi - lo) * (v_hi - v_lo) for name, a in alphas.items()}

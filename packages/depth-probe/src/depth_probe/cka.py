"""Linear Centered Kernel Alignment between layers (Kornblith et al., "Similarity of Neural Network
Representations Revisited", ICML 2019, eq. 5)::

    CKA(X, Y) = ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)

for token x feature matrices X, Y whose columns are centred (mean over tokens subtracted). It is 1
for X = Y, invariant to orthogonal transforms and isotropic scaling of either side, and compares
layers with different bases, which raw cosines cannot.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from depth_probe.capture import DepthCapture, as_capture
from layerwise_core import TokenInputs

__all__ = ["cka_matrix", "linear_cka"]


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Linear CKA of two [tokens, features] matrices (features may differ); computed in float64."""
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"linear_cka: row counts differ ({x.shape[0]} vs {y.shape[0]} tokens)")
    x = x.double() - x.double().mean(0, keepdim=True)
    y = y.double() - y.double().mean(0, keepdim=True)
    cross = torch.linalg.matrix_norm(y.T @ x) ** 2
    return cross / (torch.linalg.matrix_norm(x.T @ x) * torch.linalg.matrix_norm(y.T @ y))


def cka_matrix(
    source: nn.Module | DepthCapture,
    input_ids: TokenInputs | None = None,
    attention_mask: torch.Tensor | None = None,
    *,
    zero_channels: Sequence[int] | None = None,
) -> torch.Tensor:
    """[L + 1, L + 1] linear CKA between the hidden states h_0 .. h_L over all real tokens."""
    capture = as_capture(source, input_ids, attention_mask, what="cka_matrix")
    capture = capture.zero_channels(zero_channels)
    centred = []
    for hidden in capture.hidden_states:
        x = capture.real_tokens(hidden).double()
        centred.append(x - x.mean(0, keepdim=True))
    tokens, features = centred[0].shape
    if tokens * features > 2**22:  # large captures: float32 products of float64-centred data
        centred = [x.float() for x in centred]
    if tokens <= features:
        # ||Y^T X||_F^2 = <X X^T, Y Y^T>_F: one token Gram per layer, then dot products
        grams = torch.stack([x @ x.T for x in centred])
        flat = (grams / torch.linalg.matrix_norm(grams)[:, None, None]).flatten(1)
        return (flat @ flat.T).float()
    self_norms = [torch.linalg.matrix_norm(x.T @ x) for x in centred]
    num = len(centred)
    matrix = torch.ones(num, num, dtype=torch.float64)
    for i in range(num):
        for j in range(i + 1, num):
            cross = torch.linalg.matrix_norm(centred[j].T @ centred[i]) ** 2
            matrix[i, j] = matrix[j, i] = cross / (self_norms[i] * self_norms[j])
    return matrix.float()

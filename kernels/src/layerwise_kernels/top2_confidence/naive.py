"""Pure-torch top-2 confidence: the reference the Triton kernel is tested against.

For a row of logits z (length V >= 2), with z_(1) >= z_(2) the two largest entries:

    token = argmax_v z_v                      (first index on ties, like torch.argmax)
    prob  = softmax(z)_token
    gap   = z_(1) - z_(2) = log p_(1) - log p_(2)

Computed in fp32 (fp64 stays fp64) on chunks of about 4M elements: the softmax of one chunk is the
only temporary (torch's fused softmax is the fastest way to the normaliser on CPU), so memory does
not grow with batch x length x vocabulary as a full softmax does.
"""

from __future__ import annotations

import torch

# Elements per chunk: 4M fp32 is a 16 MiB temporary, whatever the batch and vocabulary.
CHUNK_ELEMENTS = 1 << 22


def top2_confidence_naive(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(token int64, prob, gap) over the last dim; prob and gap in fp32 (fp64 for fp64 logits)."""
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    lead, vocab = logits.shape[:-1], logits.shape[-1]
    rows = logits.reshape(-1, vocab)
    token = torch.empty(rows.shape[0], dtype=torch.int64, device=logits.device)
    prob = torch.empty(rows.shape[0], dtype=dtype, device=logits.device)
    gap = torch.empty(rows.shape[0], dtype=dtype, device=logits.device)
    step = max(1, CHUNK_ELEMENTS // vocab)
    for start in range(0, rows.shape[0], step):
        z = rows[start : start + step].to(dtype)
        top = torch.topk(z, 2, dim=-1)
        first, second = top.values[:, 0], top.values[:, 1]
        chosen = top.indices[:, 0]
        tied = first == second  # topk's order among equal values is unspecified: argmax's is not
        if bool(tied.any()):
            chosen[tied] = z[tied].argmax(-1)
        end = start + z.shape[0]
        token[start:end] = chosen
        prob[start:end] = torch.softmax(z, dim=-1).gather(-1, chosen[:, None]).squeeze(-1)
        gap[start:end] = first - second
    return token.view(lead), prob.view(lead), gap.view(lead)

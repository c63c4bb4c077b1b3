"""Throughput of a training run: tokens per second per device and model FLOPs utilisation (MFU).

Model FLOPs per token of a decoder-only transformer (PaLM, Chowdhery et al. 2022, appendix B; the
estimate of torchtitan and nanoGPT):

    F = 6 N + 12 L d T

N: the weights each token is multiplied with (every matrix but the input embedding table, a
lookup; a tied LM head counts once; an MoE layer counts the experts a token visits), 6 = 2 FLOPs
per multiply-add x (forward + 2 in the backward); 12 L d T: the attention scores and their
weighted sum (L layers, d = heads x head dim, T the sequence length), causal masking not
subtracted. Activation checkpointing's recomputation is not model FLOPs: MFU does not count it.
A multi-head model (`sparse_ft.MultiHeadForCausalLM`, NeuroTrails) runs every token through the
backbone and all K heads: N counts every head's blocks and LM head (each input embedding table,
one per model of a full ensemble, is a lookup) and L every decoder layer of
`model.decoder_layers()`. Dynamic sparsity's masks are not subtracted: the hardware multiplies
the dense matrices, zeros included.

    MFU = tokens/s per device x F / peak FLOP/s of the device

The peak is the dense tensor-core throughput of the GPU's data sheet at the compute dtype
(`PEAK_FLOPS`); on a CPU or an unknown GPU it is None and MFU is not reported.
"""

from __future__ import annotations

import re
import time

import torch
from torch import nn

from layerwise_core import find_decoder

__all__ = ["PEAK_FLOPS", "Throughput", "model_flops_per_token", "peak_flops"]

# Dense peak FLOP/s per GPU (NVIDIA data sheets; the sparse figures halved): bf16 (= fp16),
# tf32 (fp32 matmuls with TF32 allowed) and fp32. The first pattern that matches the device name
# (torch.cuda.get_device_name) wins: more specific names first.
PEAK_FLOPS: list[tuple[str, dict[str, float]]] = [
    (r"H100.*PCIe", {"bf16": 756e12, "tf32": 378e12, "fp32": 51.2e12}),
    (r"H[12]00 NVL", {"bf16": 835e12, "tf32": 417.5e12, "fp32": 60e12}),
    (r"H100|H200", {"bf16": 989.4e12, "tf32": 494.7e12, "fp32": 66.9e12}),  # SXM, GH200
    (r"A100", {"bf16": 312e12, "tf32": 156e12, "fp32": 19.5e12}),
    (r"L40S", {"bf16": 362.05e12, "tf32": 183e12, "fp32": 91.6e12}),
    (r"\bL4\b", {"bf16": 121e12, "tf32": 60e12, "fp32": 30.3e12}),
    (r"\bA10\b", {"bf16": 125e12, "tf32": 62.5e12, "fp32": 31.2e12}),
]


def peak_flops(device: torch.device, dtype: torch.dtype | None) -> float | None:
    """Dense peak FLOP/s of `device` computing in `dtype` (None: fp32), or None when unknown
    (a CPU, a GPU missing from `PEAK_FLOPS`)."""
    if device.type != "cuda":
        return None
    return peak_flops_of(torch.cuda.get_device_name(device), dtype)


def peak_flops_of(name: str, dtype: torch.dtype | None) -> float | None:
    """`peak_flops` by device name (e.g. "NVIDIA H100 80GB HBM3")."""
    if dtype in (torch.bfloat16, torch.float16):
        key = "bf16"
    elif torch.get_float32_matmul_precision() != "highest" or torch.backends.cuda.matmul.allow_tf32:
        key = "tf32"
    else:
        key = "fp32"
    for pattern, peaks in PEAK_FLOPS:
        if re.search(pattern, name):
            return peaks[key]
    return None


def _lookups(model: nn.Module) -> set[int]:
    """ids of the input embedding tables of `model` that are not also an output head (a tied LM
    head is a matmul)."""
    if callable(getattr(model, "decoder_layers", None)):  # multi-head: one table per model
        tables = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
        heads = {id(m.weight) for m in model.modules() if isinstance(m, nn.Linear)}
        return tables - heads
    dmap = find_decoder(model)
    embedding = dmap.embed_tokens.weight
    head = getattr(dmap.lm_head, "weight", None)
    return set() if embedding is head else {id(embedding)}


def _matmul_weights(model: nn.Module) -> float:
    """N: weights multiplied per token (see the module docstring)."""
    lookups = _lookups(model)
    counted: set[int] = set()
    total = 0.0
    # MoE / Chain-of-Experts layers (coe_moe.CoELayer): in each of its C iterations a token
    # visits top_k of the E routed experts, the shared expert and one router
    for module in model.modules():
        if not all(hasattr(module, a) for a in ("experts", "top_k", "num_iterations", "routers")):
            continue
        iterations = module.num_iterations
        uses = [
            (module.experts, iterations * module.top_k / module.experts.num_experts),
            (module.shared_experts, iterations),
            (module.routers, iterations / len(module.routers)),
        ]
        for part, times in uses:
            for p in part.parameters() if part is not None else ():
                total += p.numel() * times
                counted.add(id(p))
    for p in model.parameters():
        if id(p) in counted or p.dim() < 2:
            continue
        if id(p) in lookups:  # a lookup, unless it is also the LM head
            continue
        counted.add(id(p))
        total += p.numel()
    return total


def model_flops_per_token(model: nn.Module, seq_len: int) -> float:
    """F = 6 N + 12 L d T for sequences of `seq_len` tokens (call on the unsharded model)."""
    config = model.config
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    if callable(getattr(model, "decoder_layers", None)):  # the backbone's and every head's
        layers = len(model.decoder_layers())
    else:
        layers = len(find_decoder(model).layers)
    return 6 * _matmul_weights(model) + 12 * layers * heads * head_dim * seq_len


class Throughput:
    """Tokens/s per device and MFU over the steps since the last `record()`: the loop brackets
    each optimizer step with `start()` / `stop()` (evaluations and checkpoints are not timed)."""

    def __init__(self, tokens_per_step: int, flops_per_token: float, peak: float | None):
        self.tokens_per_step = tokens_per_step  # tokens one process trains on per step
        self.flops_per_token = flops_per_token
        self.peak = peak
        self._seconds, self._steps, self._started = 0.0, 0, 0.0

    def start(self) -> None:
        self._started = time.perf_counter()

    def stop(self, device: torch.device, sync: bool = False) -> None:
        if sync and device.type == "cuda":  # the GPU has finished what the step queued
            torch.cuda.synchronize(device)
        self._seconds += time.perf_counter() - self._started
        self._steps += 1

    def record(self) -> dict[str, float]:
        """`{"tokens_per_s": ..., "mfu": ...}` (MFU only with a known peak); resets the window."""
        if self._steps == 0 or self._seconds <= 0.0:
            return {}
        rate = self._steps * self.tokens_per_step / self._seconds
        self._seconds, self._steps = 0.0, 0
        out = {"tokens_per_s": round(rate, 2)}
        if self.peak is not None:
            out["mfu"] = round(rate * self.flops_per_token / self.peak, 5)
        return out

"""Model FLOPs per token (6N + 12 L d T, counted by hand here), the peak-FLOPs table by GPU name,
and tokens/s and MFU over a window of steps."""

from __future__ import annotations

import pytest
import torch

import layerwise.train.throughput as throughput
from layerwise.train.config import ModelConfig
from layerwise.train.model import build_model
from layerwise.train.throughput import (
    Throughput,
    model_flops_per_token,
    peak_flops,
    peak_flops_of,
)

V, T = 100, 16  # vocabulary, sequence length
# llama-tiny: hidden 64, 2 layers, 4 heads of 16 (no GQA), SwiGLU width 176
ATTENTION = 4 * 64 * 64  # q, k, v, o
ATTENTION_SCORES = 12 * 2 * 64 * T  # 12 L d T


def test_dense_llama_flops_by_hand():
    model = build_model(ModelConfig(), V, T)
    per_layer = ATTENTION + 3 * 64 * 176  # + gate, up, down
    weights = 2 * per_layer + V * 64  # + the LM head; the embedding table is a lookup
    assert model_flops_per_token(model, T) == 6 * weights + ATTENTION_SCORES
    tied = build_model(ModelConfig(overrides={"tie_word_embeddings": True}), V, T)
    assert tied.lm_head.weight is tied.model.embed_tokens.weight
    assert model_flops_per_token(tied, T) == 6 * weights + ATTENTION_SCORES  # counted once


def test_chain_of_experts_counts_the_experts_a_token_visits():
    experts = {"num_experts": 4, "top_k": 2, "moe_intermediate_size": 16}
    model = build_model(
        ModelConfig(mlp={"name": "coe", **experts}), V, T
    )  # C = 2 iterations, 1 shared expert, one router each
    routed = 4 * (2 * 16) * 64 + 4 * 64 * 16  # gate_up [E, 2I, h] + down [E, h, I]
    shared = 3 * 64 * 16
    router = 4 * 64
    # per token and iteration: K / E of the routed experts, the shared one and one router
    per_layer = ATTENTION + 2 * (routed * 2 / 4 + shared + router)
    weights = 2 * per_layer + V * 64
    assert model_flops_per_token(model, T) == pytest.approx(6 * weights + ATTENTION_SCORES)
    moe = build_model(ModelConfig(mlp={"name": "moe", **experts}), V, T)  # C = 1
    per_layer = ATTENTION + routed * 2 / 4 + shared + router
    assert model_flops_per_token(moe, T) == pytest.approx(
        6 * (2 * per_layer + V * 64) + ATTENTION_SCORES
    )


@pytest.mark.parametrize(
    ("name", "dtype", "peak"),
    [
        ("NVIDIA H100 80GB HBM3", torch.bfloat16, 989.4e12),  # SXM
        ("NVIDIA H100 PCIe", torch.bfloat16, 756e12),
        ("NVIDIA H100 NVL", torch.float16, 835e12),
        ("NVIDIA H200", torch.bfloat16, 989.4e12),
        ("NVIDIA GH200 480GB", torch.bfloat16, 989.4e12),
        ("NVIDIA A100-SXM4-80GB", torch.bfloat16, 312e12),
        ("NVIDIA A100 80GB PCIe", None, 19.5e12),  # fp32 matmuls, TF32 off (torch's default)
        ("NVIDIA L4", torch.bfloat16, 121e12),
        ("NVIDIA A10", torch.bfloat16, 125e12),
        ("NVIDIA A10G", torch.bfloat16, None),  # not in the table: no MFU rather than a guess
        ("Tesla V100-SXM2-16GB", torch.float16, None),
    ],
)
def test_peak_flops_by_device_name(name, dtype, peak):
    assert peak_flops_of(name, dtype) == peak


def test_fp32_peak_follows_the_tf32_setting():
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("high")  # fp32 matmuls on TF32 tensor cores
        assert peak_flops_of("NVIDIA H100 80GB HBM3", None) == 494.7e12
    finally:
        torch.set_float32_matmul_precision(before)
    assert peak_flops_of("NVIDIA H100 80GB HBM3", None) == 66.9e12


def test_no_peak_on_cpu():
    assert peak_flops(torch.device("cpu"), torch.bfloat16) is None


def test_tokens_per_second_and_mfu_over_a_window(monkeypatch):
    clock = iter([0.0, 0.5, 10.0, 10.5, 20.0, 21.0])  # two steps of 0.5 s, then one of 1 s
    monkeypatch.setattr(throughput.time, "perf_counter", lambda: next(clock))
    meter = Throughput(tokens_per_step=1000, flops_per_token=6e6, peak=1e12)
    for _ in range(2):  # the 9.5 s between the steps (evaluation, checkpoint) are not counted
        meter.start()
        meter.stop(torch.device("cpu"))
    assert meter.record() == {"tokens_per_s": 2000.0, "mfu": 0.012}  # 2000 * 6e6 / 1e12
    meter.start()
    meter.stop(torch.device("cpu"))
    assert meter.record() == {"tokens_per_s": 1000.0, "mfu": 0.006}  # a new window
    assert meter.record() == {}  # no step since
    cpu = Throughput(tokens_per_step=1000, flops_per_token=6e6, peak=None)
    clock = iter([0.0, 2.0])
    cpu.start()
    cpu.stop(torch.device("cpu"))
    assert cpu.record() == {"tokens_per_s": 500.0}  # no MFU without a peak

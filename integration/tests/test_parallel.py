"""`layerwise.train.parallel` in one process: activation checkpointing recomputes each decoder
layer and changes no number; `torch.compile` compiles one graph for all layers and matches eager.
(DDP / FSDP2 over 2 processes: test_fsdp.py, test_distributed.py.)"""

from __future__ import annotations

import functools

import pytest
import torch

from layerwise.train.parallel import init_distributed, parallelize
from layerwise_core import tiny_llama
from layerwise_core.testing import assert_close


def _loss_and_grads(model, ids):
    loss = model(input_ids=ids, labels=ids, use_cache=False).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def test_activation_checkpointing_recomputes_each_layer_and_changes_nothing():
    ids = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(0))
    runs = {}
    for checkpointed in (False, True):
        model = tiny_llama(seed=0, num_hidden_layers=3)
        calls = []
        for index, layer in enumerate(model.model.layers):
            # a pre-hook: the recomputation stops once the last saved tensor is back, before the
            # MLP's forward returns
            layer.mlp.register_forward_pre_hook(lambda *_, i=index, seen=calls: seen.append(i))
        parallelize(model, init_distributed(), activation_checkpointing=checkpointed)
        runs[checkpointed] = (*_loss_and_grads(model, ids), calls)
    (loss, grads, calls), (ac_loss, ac_grads, ac_calls) = runs[False], runs[True]
    assert calls == [0, 1, 2]
    assert ac_calls == [0, 1, 2, 2, 1, 0]  # the backward recomputes each layer, last first
    assert torch.equal(ac_loss, loss)
    assert all(torch.equal(ac_grads[n], g) for n, g in grads.items())


def test_compiled_layers_share_one_graph_and_match_eager(monkeypatch):
    """aot_eager: dynamo and AOT autograd without inductor's C++ code generation (the real
    backend: the test below)."""
    from torch._dynamo.utils import counters

    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    torch._dynamo.reset()
    counters.clear()
    ids = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(0))
    eager = _loss_and_grads(tiny_llama(seed=0, num_hidden_layers=4), ids)
    model = tiny_llama(seed=0, num_hidden_layers=4)
    parallelize(model, init_distributed(), compile=True)
    compiled = _loss_and_grads(model, ids)
    # the four layers run one compiled graph: no recompilation per layer (which would stop at
    # dynamo's cache limit of 8 and leave deeper models eager)
    assert counters["stats"]["unique_graphs"] == 1
    assert_close(compiled[0], eager[0])
    for name, grad in eager[1].items():
        assert_close(compiled[1][name], grad)


def test_compile_matches_eager_over_three_steps(small_data, tmp_path, tiny_run):
    """The real backend (inductor's C++ code on the CPU; 29 s with a cold cache on the shared
    2-core dev machine)."""
    from layerwise.train import pretrain, read_metrics

    common = ("train.steps=3", "schedule.warmup_steps=1", "train.eval_batches=1")
    pretrain(tiny_run(tmp_path / "eager", *common), data=small_data)
    pretrain(tiny_run(tmp_path / "compiled", *common, "train.compile=true"), data=small_data)
    eager, compiled = read_metrics(tmp_path / "eager"), read_metrics(tmp_path / "compiled")
    assert [r["step"] for r in compiled] == [1, 2, 3, 3]  # 3 train records + the validation
    for a, b in zip(compiled, eager):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5), a

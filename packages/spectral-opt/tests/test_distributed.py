"""Two gloo processes with FSDP2 shards (DTensor weights) give the alphas and the per-module
hyper-parameters of a single process, on every rank."""

import json
import textwrap

import pytest
import torch
from torch import nn

from layerwise_core import module_param_groups, tiny_llama
from layerwise_core.testing import run_torchrun
from spectral_opt import AlphaDecay, LayerwiseLR, module_alphas

SIZE = dict(hidden_size=64, intermediate_size=128, vocab_size=96, num_hidden_layers=3)
TYPES = (nn.Linear, nn.Embedding)

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import torch, torch.distributed as dist
    from torch import nn
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from layerwise_core import is_dtensor, module_param_groups, tiny_llama
    from spectral_opt import AlphaDecay, LayerwiseLR, module_alphas

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    size = json.loads(sys.argv[2])
    replicated = module_alphas(tiny_llama(seed=0, **size))  # plain tensors, work split over ranks
    model = tiny_llama(seed=0, **size)
    mesh = init_device_mesh("cpu", (2,))
    for layer in model.model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    assert is_dtensor(model.model.layers[0].mlp.down_proj.weight)
    sharded = module_alphas(model)
    types = (nn.Linear, nn.Embedding)
    groups = module_param_groups(model, module_types=types, weight_decay=0.1)
    optimizer = torch.optim.AdamW(groups, lr=1e-3)
    decay = AlphaDecay(optimizer, model, 0.1, module_types=types)
    llr = LayerwiseLR(optimizer, model, 1e-3, total_steps=10, ramp_steps=0)
    decay.step(); llr.step()
    hyper = {g["module_name"] or "rest": [g["weight_decay"], g["lr"]] for g in optimizer.param_groups}
    ids = torch.randint(0, size["vocab_size"], (2, 8), generator=torch.Generator().manual_seed(0))
    model(ids, labels=ids).loss.backward()
    optimizer.step()  # the sharded model trains with the per-module groups
    out = dict(replicated=replicated, sharded=sharded, hyper=hyper)
    with open(f"{sys.argv[1]}.{rank}.json", "w") as f:
        json.dump(out, f)
    from layerwise_core.testing import exit_torchrun_worker

    exit_torchrun_worker()  # barrier, then exit without gloo's flaky teardown
    """
)


@pytest.mark.distributed
def test_fsdp2_two_processes_equal_single_process(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    prefix = tmp_path / "out"
    run_torchrun(script, prefix, json.dumps(SIZE), nproc=2)  # torchrun: 1 OpenMP thread each
    ranks = [json.loads((tmp_path / f"out.{r}.json").read_text()) for r in range(2)]
    assert ranks[0] == ranks[1]  # every rank applies identical hyper-parameters

    model = tiny_llama(seed=0, **SIZE)
    single = module_alphas(model)
    optimizer = torch.optim.AdamW(
        module_param_groups(model, module_types=TYPES, weight_decay=0.1), lr=1e-3
    )
    AlphaDecay(optimizer, model, 0.1, module_types=TYPES).step()
    LayerwiseLR(optimizer, model, 1e-3, total_steps=10, ramp_steps=0).step()
    hyper = {
        g["module_name"] or "rest": [g["weight_decay"], g["lr"]] for g in optimizer.param_groups
    }
    for key in ("replicated", "sharded"):
        assert list(ranks[0][key]) == list(single)
        for name, alpha in single.items():
            assert ranks[0][key][name] == pytest.approx(alpha, abs=1e-6), (key, name)
    assert set(ranks[0]["hyper"]) == set(hyper)
    for name, values in hyper.items():
        assert ranks[0]["hyper"][name] == pytest.approx(values, rel=1e-5), name

"""Run by test_meta_init.py under `torch.distributed.run --nproc_per_node 2` (gloo on CPU): the
jobs of the JSON file argv[1], in order, in every process; rank 0 writes each job's report, with
every rank's findings, to the job's "out" file (JSON).

- {"kind": "memory", "model": {...}, "vocab": V}: the host memory (RSS) a process gains while the
  model of ModelConfig `model` is built on the meta device, sharded (FSDP2) and materialised
  (`init_model_weights`), then while the same model is built whole (`build_model` on the CPU);
  run first, when the process's peak RSS is still about its current RSS;
- {"kind": "shards", "models": {name: {"model": {...}, "objective": ...}}}: for each model, its
  FSDP2 shards materialised from the meta device against the rows of the same model built whole;
- {"kind": "pretrain", "config": {...}}: `pretrain` under FSDP2, recording the devices
  `build_model` was asked for.
"""

import json
import resource
import sys
from pathlib import Path

import torch
import torch.distributed as dist

SEED = 7
BLOCK = 64


def _sharded(cfg, vocab: int, objective: str = "ntp"):
    """The model as `pretrain` makes it under FSDP2: built on meta, sharded, materialised."""
    from layerwise.models import build_model, init_model_weights
    from layerwise.train.parallel import init_distributed, parallelize

    env = init_distributed()
    model = build_model(cfg, vocab, BLOCK, objective=objective, seed=SEED, device="meta")
    parallelize(model, env, parallelism="fsdp2", precision="no")
    return init_model_weights(model, cfg.init_std, SEED, env.device)


def _rss() -> int:
    """Resident bytes of this process now."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize()


def _peak() -> int:
    """Peak resident bytes of this process so far (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _memory(job) -> dict:
    from layerwise.models import ModelConfig, build_model

    cfg = ModelConfig.model_validate(job["model"])
    _sharded(ModelConfig(), 100)  # warm-up: lazy imports, FSDP2 and gloo state
    start_rss, start_peak = _rss(), _peak()
    model = _sharded(cfg, job["vocab"])
    meta_peak = _peak()
    held = _rss() - start_rss
    full = build_model(cfg, job["vocab"], BLOCK, seed=SEED)
    full_peak = _peak()
    return {
        "full_bytes": sum(p.numel() * p.element_size() for p in full.parameters()),
        "shard_bytes": sum(p.to_local().numel() * p.element_size() for p in model.parameters()),
        # at most what the process gained at its peak while building on meta (an upper bound:
        # the peak before the build counts as if it were reached during it)
        "meta_peak_gain": max(meta_peak, start_peak) - start_rss,
        "meta_held": held,  # what the shards hold after the build
        # at least what the process gained at its peak while building the whole model
        "full_peak_gain": full_peak - max(meta_peak, start_peak),
        "start_peak_above_rss": start_peak - start_rss,
    }


def _accumulation(job) -> dict:
    """One micro-batch's backward outside the last (no gradient sync asked for) under FSDP2:
    whether every parameter then holds its reduced, sharded gradient (FSDP2's
    set_requires_gradient_sync(False) would instead keep each whole gradient unsharded)."""
    from layerwise.models import ModelConfig
    from layerwise.train.parallel import gradient_sync

    model = _sharded(ModelConfig.from_dict(job["model"]), job["vocab"])
    ids = torch.randint(0, job["vocab"], (2, BLOCK), generator=torch.Generator().manual_seed(0))
    with gradient_sync(model, enabled=False):
        model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
    return {
        "sharded_grads": sum(
            p.grad is not None and p.grad.to_local().shape == p.to_local().shape
            for p in model.parameters()
        ),
        "params": sum(1 for _ in model.parameters()),
    }


def _expected_rows(full: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """Rank `rank`'s rows of `full` under Shard(0): torch.chunk's split (trailing shards empty)."""
    chunks = full.chunk(world, dim=0)
    return chunks[rank] if rank < len(chunks) else full[full.shape[0] :]


def _shards(job) -> dict:
    from torch.distributed.tensor import Shard

    from layerwise.models import ModelConfig, build_model

    rank, world = dist.get_rank(), dist.get_world_size()
    report = {}
    for name, spec in job["models"].items():
        cfg = ModelConfig.model_validate(spec["model"])
        objective = spec.get("objective", "ntp")
        vocab = spec.get("vocab", 101)
        full = build_model(cfg, vocab, BLOCK, objective=objective, seed=SEED)
        model = _sharded(cfg, vocab, objective)
        whole = dict(full.named_parameters())
        mismatched, split = [], 0
        for pname, param in model.named_parameters():
            local = param.to_local()
            expected = _expected_rows(whole[pname], rank, world)
            if tuple(param.placements) != (Shard(0),) or not torch.equal(local, expected):
                mismatched.append(pname)
            split += local.shape[0] < whole[pname].shape[0]
        buffers = dict(full.named_buffers())
        bad_buffers = [
            b for b, value in model.named_buffers() if not torch.equal(value, buffers[b])
        ]
        ids = torch.arange(2 * 16).reshape(2, 16) % vocab
        with torch.no_grad():
            logits_equal = torch.equal(model(input_ids=ids).logits, full(input_ids=ids).logits)
        report[name] = {
            "params": len(whole),
            "sharded_params": sum(1 for _ in model.parameters()),
            "split": split,
            "mismatched": mismatched,
            "buffers": sorted(buffers),
            "bad_buffers": bad_buffers,
            "logits_equal": logits_equal,
            "tied": model.lm_head.weight is model.get_input_embeddings().weight,
        }
    return report


def _pretrain(job) -> dict:
    import importlib

    from layerwise.data import prepare_data
    from layerwise.train import PretrainConfig
    from layerwise.train.parallel import main_process_first
    from layerwise_core import is_dtensor

    # the module (layerwise.train's attribute `pretrain` is the function)
    pretrain_module = importlib.import_module("layerwise.train.pretrain")
    cfg = PretrainConfig.from_dict(job["config"])
    with main_process_first():
        data = prepare_data(cfg.data, cfg.train.block_size)
    seen = {}
    build, materialise = pretrain_module.build_model, pretrain_module.init_model_weights

    def recording_build(*args, **kwargs):
        model = build(*args, **kwargs)
        seen["device"] = str(kwargs.get("device"))
        seen["built_on_meta"] = all(p.device.type == "meta" for p in model.parameters())
        return model

    def recording_materialise(model, *args, **kwargs):
        model = materialise(model, *args, **kwargs)
        # this process's rows of every parameter, on its device
        seen["materialised_shards"] = all(
            is_dtensor(p) and p.to_local().device.type == "cpu" and p.to_local().shape[0] < len(p)
            for p in model.parameters()
        )
        return model

    pretrain_module.build_model = recording_build
    pretrain_module.init_model_weights = recording_materialise
    try:
        result = pretrain_module.pretrain(cfg, data=data)
    finally:
        pretrain_module.build_model = build
        pretrain_module.init_model_weights = materialise
    seen["step"] = result.step
    seen["num_parameters"] = result.num_parameters
    seen["loss_finite"] = result.final_eval is not None and bool(
        torch.isfinite(torch.tensor(result.final_eval.loss))
    )
    return seen


def main() -> None:
    from layerwise.train.parallel import init_distributed
    from layerwise_core.testing import exit_torchrun_worker

    init_distributed()
    kinds = {
        "memory": _memory,
        "shards": _shards,
        "pretrain": _pretrain,
        "accumulation": _accumulation,
    }
    for job in json.loads(Path(sys.argv[1]).read_text()):
        report = kinds[job["kind"]](job)
        reports = [None] * dist.get_world_size()
        dist.all_gather_object(reports, report)
        if dist.get_rank() == 0:
            Path(job["out"]).write_text(json.dumps(reports))
    exit_torchrun_worker()  # barrier, then exit without gloo's flaky teardown


if __name__ == "__main__":
    main()

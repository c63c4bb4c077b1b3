"""Run by test_fsdp.py under `torch.distributed.run --nproc_per_node 2` (gloo on CPU): the jobs of
the JSON file argv[1], in order, in every process.

- {"kind": "pretrain", "config": {...}, "stop_at": N | null}: `layerwise.train.pretrain`; with
  "diverges": FILE, the run must raise `TrainingDivergedError` on every process, whose message
  rank 0 writes to FILE;
- {"kind": "logits", "config": {...}, "checkpoint": DIR, "out": FILE}: the model of `config`
  built and sharded as `pretrain` does, checkpoint DIR loaded into it (`load_training_state`), its
  logits on fixed ids written to FILE (rank 0);
- {"kind": "precision", "out": FILE}: where FSDP2's bf16 MixedPrecisionPolicy computes and keeps
  its weights, written to FILE as JSON (rank 0);
- {"kind": "copy", "src": DIR, "dst": DIR}: a copy of a run folder (rank 0), e.g. a stopped run
  that the test resumes in one process.

One launch runs many jobs: each launch costs seconds of imports.
"""

import json
import shutil
import sys
from pathlib import Path

import torch


def _model(cfg, data):
    from layerwise.train import build_model
    from layerwise.train.optimizers import build_optimizer
    from layerwise.train.parallel import init_distributed, parallelize

    model = build_model(
        cfg.model, len(data.tokenizer), cfg.train.block_size, data.tokenizer.eos_token_id
    )
    parallelize(model, init_distributed(), parallelism=cfg.train.parallelism, precision="no")
    return model, build_optimizer(cfg, model)


def _logits(job, data) -> None:
    from layerwise.train import PretrainConfig, load_training_state

    cfg = PretrainConfig.from_dict(job["config"])
    model, optimizer = _model(cfg, data)
    load_training_state(job["checkpoint"], model, optimizer)
    model.eval()
    ids = data.validation.gather(range(4))[:, :-1]
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    if torch.distributed.get_rank() == 0:
        torch.save({"ids": ids, "logits": logits}, job["out"])


def _precision(job) -> None:
    from layerwise.train.parallel import init_distributed, parallelize
    from layerwise_core import is_dtensor, tiny_llama

    model = tiny_llama(seed=0, vocab_size=64)
    parallelize(model, init_distributed(), parallelism="fsdp2", precision="bf16")
    seen = {}
    q_proj = model.model.layers[0].self_attn.q_proj
    q_proj.register_forward_pre_hook(
        lambda module, args: seen.update(weight=str(module.weight.dtype), input=str(args[0].dtype))
    )
    logits = model(input_ids=torch.arange(8)[None]).logits
    logits.float().sum().backward()
    report = {
        "compute_weight": seen["weight"],
        "compute_input": seen["input"],
        "stored": str(q_proj.weight.dtype),
        "stored_is_shard": is_dtensor(q_proj.weight),
        "grad": str(q_proj.weight.grad.dtype),
    }
    if torch.distributed.get_rank() == 0:
        Path(job["out"]).write_text(json.dumps(report))


def main() -> None:
    from layerwise.data import prepare_data
    from layerwise.train import PretrainConfig, pretrain
    from layerwise.train.parallel import init_distributed, main_process_first
    from layerwise_core.testing import exit_torchrun_worker

    init_distributed()
    data = None
    for job in json.loads(Path(sys.argv[1]).read_text()):
        if job["kind"] == "precision":
            _precision(job)
            continue
        if job["kind"] == "copy":
            if torch.distributed.get_rank() == 0:
                shutil.copytree(job["src"], job["dst"])
            torch.distributed.barrier()
            continue
        if data is None:  # the corpus of the test session's cache (LAYERWISE_CACHE)
            cfg = PretrainConfig.from_dict(job["config"])
            with main_process_first():
                data = prepare_data(cfg.data, cfg.train.block_size)
        if job["kind"] == "logits":
            _logits(job, data)
        else:
            cfg = PretrainConfig.from_dict(job["config"])
            if "diverges" not in job:
                pretrain(cfg, stop_at=job.get("stop_at"), data=data)
                continue
            from layerwise.train.divergence import TrainingDivergedError

            try:
                pretrain(cfg, data=data)
            except TrainingDivergedError as err:
                if torch.distributed.get_rank() == 0:
                    Path(job["diverges"]).write_text(str(err))
            else:
                raise AssertionError("the run did not diverge")
    exit_torchrun_worker()  # barrier, then exit without gloo's flaky teardown


if __name__ == "__main__":
    main()

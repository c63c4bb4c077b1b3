"""Memory and step time of fine-tuning a llama-130m-shaped model: full FT vs LoRA vs LIFT.

    python packages/sparse-ft/benchmarks/bench_memory.py [--rank 8] [--batch 2] [--seq 128] [--repeats 5]

Arms (equal trainable parameters for LoRA and LIFT: (m + n) * rank per adapted matrix, every
Linear of the decoder blocks):
- full FT: AdamW on every parameter.
- LoRA: peft `LoraConfig(r=rank)`, AdamW on A and B.
- LIFT (ours): `sparse_ft.get_sparse_model(model, LiftConfig(lora_rank=rank))`, O(k) Adam state and
  O(k) gradients (`layerwise_kernels.sddmm`: CSR `sampled_addmm` on CPU since issue 21, the banded
  torch product before).
- LIFT, reference-style: what the official code does: the adapted weights are trainable, their
  dense gradients are formed, then masked to the k entries for an O(k) Adam (`SparseAdamW`).

Peak memory: peak RSS (VmHWM) of a fresh process per arm, reset through /proc/self/clear_refs after
the model, wrapper and optimizer are built and one warm-up step has allocated the optimizer state,
then read after further steps; quoted in MiB and as a ratio to LoRA. Step time (forward, backward,
optimizer step, fp32): medians of interleaved repeats of all arms in one process, as ratios to LoRA.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

import torch

from layerwise_core import init_normal_, llama_config, set_seed
from layerwise_core.benchmarking import append_section, interleaved_medians, markdown_table

ROOT = Path(__file__).resolve().parents[3]
ARMS = ("full FT", "LoRA", "LIFT (ours)", "LIFT, reference-style")


def _model(preset: str):
    from transformers import LlamaForCausalLM

    set_seed(0)
    model = LlamaForCausalLM(llama_config(preset, vocab_size=32000))
    return init_normal_(model)


def _reference_style_lift(model, rank: int, filter_rank: int):
    """Dense trainable adapted weights; after backward keep grad[mask] only; Adam on k-vectors."""
    from sparse_ft import LiftConfig, lift_initial_indices, target_linear_names

    config = LiftConfig(lora_rank=rank, filter_rank=filter_rank, svd="lowrank")
    for p in model.parameters():
        p.requires_grad_(False)
    weights, masks = [], []
    for name in target_linear_names(model):
        weight = model.get_submodule(name).weight
        masks.append(lift_initial_indices(weight.detach(), config))
        weight.requires_grad_(True)
        weights.append(weight)
    state = [(torch.zeros(len(m)), torch.zeros(len(m))) for m in masks]
    betas, lr, eps = (0.9, 0.95), 2e-4, 1e-6
    counter = [0]

    @torch.no_grad()
    def step():
        counter[0] += 1
        t = counter[0]
        for w, idx, (m, v) in zip(weights, masks, state):
            g = w.grad.reshape(-1)[idx]
            m.mul_(betas[0]).add_(g, alpha=1 - betas[0])
            v.mul_(betas[1]).addcmul_(g, g, value=1 - betas[1])
            update = (m / (1 - betas[0] ** t)) / ((v / (1 - betas[1] ** t)).sqrt() + eps)
            w.view(-1)[idx] -= lr * update
            w.grad = None

    step.trainable = sum(len(m) for m in masks)
    return model, step


def build(arm: str, preset: str, rank: int, filter_rank: int):
    """(model, optimizer step callable) for one arm."""
    model = _model(preset)
    if arm == "full FT":
        opt = torch.optim.AdamW(model.parameters(), lr=2e-4, betas=(0.9, 0.95))
        return model, lambda: (opt.step(), opt.zero_grad(set_to_none=True))
    if arm == "LoRA":
        from peft import LoraConfig, get_peft_model

        from sparse_ft import target_linear_names

        model = get_peft_model(
            model,
            LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=target_linear_names(model)),
        )
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=2e-4, betas=(0.9, 0.95))
        return model, lambda: (opt.step(), opt.zero_grad(set_to_none=True))
    if arm == "LIFT (ours)":
        from sparse_ft import LiftConfig, get_sparse_model

        model = get_sparse_model(
            model,
            LiftConfig(
                lora_rank=rank, filter_rank=filter_rank, svd="lowrank", update_interval=None
            ),
        )
        opt = torch.optim.AdamW(model.trainable_parameters(), lr=2e-4, betas=(0.9, 0.95), eps=1e-6)
        return model, lambda: (opt.step(), opt.zero_grad(set_to_none=True))
    if arm == "LIFT, reference-style":
        return _reference_style_lift(model, rank, filter_rank)
    raise ValueError(arm)


def trainable(model, step) -> int:
    if hasattr(step, "trainable"):  # reference-style LIFT: dense weights, k entries updated
        return step.trainable
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _train_step(model, step, ids):
    model(input_ids=ids, labels=ids).loss.backward()
    step()


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def child(arm: str, preset: str, rank: int, filter_rank: int, batch: int, seq: int) -> None:
    """Fresh process: print {"peak_mib", "overhead_mib", "trainable"} for one arm as JSON."""
    torch.manual_seed(0)
    ids = torch.randint(0, 32000, (batch, seq))
    model, step = build(arm, preset, rank, filter_rank)
    count = trainable(model, step)
    loaded = _rss_kib("VmRSS")
    _train_step(model, step, ids)  # allocates the optimizer state
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM: imports and mask selection (SVD) do not count
    for _ in range(2):
        _train_step(model, step, ids)
    peak = _rss_kib("VmHWM")
    print(
        json.dumps(
            {"peak_mib": peak / 1024, "overhead_mib": (peak - loaded) / 1024, "trainable": count}
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="llama-130m")
    parser.add_argument("--rank", type=int, default=8, help="LoRA rank = LIFT lora_rank")
    parser.add_argument("--filter-rank", type=int, default=64, help="LIFT's filter rank")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        child(args.child, args.preset, args.rank, args.filter_rank, args.batch, args.seq)
        return
    if args.repeats < 5:
        parser.error("--repeats must be at least 5")

    peaks = {}
    for arm in ARMS:
        cmd = [
            sys.executable,
            __file__,
            "--child",
            arm,
            "--preset",
            args.preset,
            "--rank",
            str(args.rank),
            "--filter-rank",
            str(args.filter_rank),
            "--batch",
            str(args.batch),
            "--seq",
            str(args.seq),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
        peaks[arm] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(arm, peaks[arm], file=sys.stderr)

    torch.manual_seed(0)
    ids = torch.randint(0, 32000, (args.batch, args.seq))
    built = {arm: build(arm, args.preset, args.rank, args.filter_rank) for arm in ARMS}
    medians = interleaved_medians(
        {arm: (lambda m=m, s=s: _train_step(m, s, ids)) for arm, (m, s) in built.items()},
        repeats=args.repeats,
        warmup=1,
    )
    lora_peak, lora_time = peaks["LoRA"]["peak_mib"], medians["LoRA"]
    rows = [
        [
            arm,
            f"{peaks[arm]['trainable']:,}",
            f"{peaks[arm]['peak_mib']:.0f} MiB",
            f"{peaks[arm]['peak_mib'] / lora_peak:.2f}×",
            f"{peaks[arm]['overhead_mib']:.0f} MiB",
            f"{medians[arm] / lora_time:.2f}×",
        ]
        for arm in ARMS
    ]
    table = markdown_table(
        [
            "Arm",
            "Trainable params",
            "Peak RSS",
            "Peak / LoRA",
            "Training overhead",
            "Step time / LoRA",
        ],
        rows,
    )
    script = Path(__file__).resolve().relative_to(ROOT)
    command = shlex.join(["python", str(script), *sys.argv[1:]])
    text = append_section(
        args.output,
        f"sparse-ft: fine-tuning memory, full FT vs LoRA vs LIFT ({args.preset})",
        command,
        table,
        notes=[
            f"Model: {args.preset} shape (random init, fp32, vocab 32000), batch {args.batch} × "
            f"{args.seq} tokens; LoRA r = LIFT lora_rank = {args.rank} on every Linear of the "
            f"decoder blocks (equal trainable parameters); LIFT filter rank {args.filter_rank}.",
            "Peak RSS: VmHWM of a fresh process per arm, reset after setup and one warm-up step, "
            "over two more steps. Training overhead: that peak minus the RSS once the model, the "
            "wrapper and the optimizer were built (activations, gradients, optimizer state).",
            f"Step time: medians of {args.repeats} interleaved repeats (forward + backward + "
            "optimizer step) of all arms in one process, ratio to LoRA (lower is better).",
        ],
    )
    print(text)


if __name__ == "__main__":
    main()

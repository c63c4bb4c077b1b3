"""LIFT vs PEFT LoRA at equal trainable parameters: set-up, step time and peak memory (issue 21).

    python packages/sparse-ft/benchmarks/bench_lift_vs_lora.py --threads 1 [--preset llama-60m]

Arms: PEFT `LoraConfig(r=rank)` on every Linear of the decoder blocks, AdamW on A and B; LIFT
`get_sparse_model(model, LiftConfig(lora_rank=rank, filter_rank=64, update_interval=None))` with its
default exact mask (`svd="full"`), AdamW on the k values; "LIFT (before #21)": the implementation
before issue 21, kept here as a reference copy (mask from a full fp32 SVD, W_eff written and
restored in the forward and again in the backward, value gradient from the banded dense product),
so that before and after are measured in one run. Equal trainable parameters: (m + n) * rank per
adapted matrix.

- Set-up: wall time of `get_peft_model` / `get_sparse_model` on a freshly built model (building the
  model is not timed), medians of interleaved repeats.
- Step: forward + backward + optimizer step on batch x seq random tokens, medians of interleaved
  repeats of both arms in one process.
- Peak memory: VmHWM of a fresh process per arm, reset after set-up and one warm-up step (and a
  `malloc_trim`, so that set-up garbage the allocator kept does not count), read after two more
  steps (`bench_memory.py`'s rule otherwise).

All quoted as ratios to LoRA measured in the same run (the machine is shared: absolute times drift).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from layerwise_core import init_normal_, llama_config, set_seed
from layerwise_core.benchmarking import append_section, markdown_table

sys.path.insert(0, str(Path(__file__).parent))  # its sibling script, also when imported
from bench_memory import _rss_kib, _train_step  # one step, peak-RSS reader

ROOT = Path(__file__).resolve().parents[3]
ARMS = ("LoRA", "LIFT (before #21)", "LIFT (ours)")


def _previous_indices(weight: torch.Tensor, config) -> torch.Tensor:
    """The mask before issue 21: full fp32 SVD, top-k of |U_r S_r V_r^T|, sorted."""
    from sparse_ft import lift_budget

    u, s, vh = torch.linalg.svd(weight.float(), full_matrices=False)
    r = config.filter_rank
    approx = (u[:, :r] * s[:r]) @ vh[:r]
    k = lift_budget(weight.shape, config.lora_rank)
    return torch.sort(torch.topk(approx.abs().reshape(-1), k, sorted=False).indices).values


class _PreviousFunction(torch.autograd.Function):
    """SparseDeltaLinear's autograd function before issue 21."""

    @staticmethod
    def _write(weight, values, indices):
        flat = weight.data.view(-1)
        saved = flat[indices]
        flat[indices] = (saved.to(values.dtype) + values).to(weight.dtype)
        return flat, saved

    @staticmethod
    def forward(ctx, x, weight, bias, values, indices):
        flat, saved = _PreviousFunction._write(weight, values, indices)
        y = torch.nn.functional.linear(x, weight.data.to(x.dtype), bias)
        flat[indices] = saved
        ctx.save_for_backward(x, weight, values, indices)
        return y

    @staticmethod
    def backward(ctx, dy):
        from layerwise_kernels.sddmm import sddmm_naive

        x, weight, values, indices = ctx.saved_tensors
        dy2 = dy.reshape(-1, dy.shape[-1])
        dx = None
        if ctx.needs_input_grad[0]:
            flat, saved = _PreviousFunction._write(weight, values, indices)
            dx = (dy2 @ weight.data.to(dy2.dtype)).view(x.shape).to(x.dtype)
            flat[indices] = saved
        n = weight.shape[1]
        x2 = x.reshape(-1, x.shape[-1])
        dvalues = sddmm_naive(dy2.T, x2, indices // n, indices % n).to(values.dtype)
        return dx, None, None, dvalues, None


def _previous_forward(module, x):
    return _PreviousFunction.apply(
        x, module.base_layer.weight, module.base_layer.bias, module.values, module.indices
    )


def _model(preset: str):
    from transformers import LlamaForCausalLM

    set_seed(0)
    return init_normal_(LlamaForCausalLM(llama_config(preset, vocab_size=32000)))


def wrap(arm: str, model, rank: int, filter_rank: int):
    """The adapted model and the parameters its optimizer trains."""
    if arm == "LoRA":
        from peft import LoraConfig, get_peft_model

        from sparse_ft import target_linear_names

        config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=target_linear_names(model))
        model = get_peft_model(model, config)
        return model, [p for p in model.parameters() if p.requires_grad]
    if arm == "LIFT (ours)":
        from sparse_ft import LiftConfig, get_sparse_model

        config = LiftConfig(lora_rank=rank, filter_rank=filter_rank, update_interval=None)
        model = get_sparse_model(model, config)
        return model, list(model.trainable_parameters())
    if arm == "LIFT (before #21)":
        import types

        from sparse_ft import LiftConfig, SparseFTModel, target_linear_names

        config = LiftConfig(lora_rank=rank, filter_rank=filter_rank, update_interval=None)
        names = target_linear_names(model)
        indices = {
            n: _previous_indices(model.get_submodule(n).weight.detach(), config) for n in names
        }
        model = SparseFTModel(model, config, indices=indices)
        for module in model.sparse_modules().values():
            module.forward = types.MethodType(_previous_forward, module)
        return model, list(model.trainable_parameters())
    raise ValueError(arm)


def build(arm: str, preset: str, rank: int, filter_rank: int):
    """(model, optimizer step, trainable count) of one arm."""
    model, params = wrap(arm, _model(preset), rank, filter_rank)
    opt = torch.optim.AdamW(params, lr=2e-4, betas=(0.9, 0.95), eps=1e-6)
    return (
        model,
        (lambda: (opt.step(), opt.zero_grad(set_to_none=True))),
        sum(p.numel() for p in params),
    )


def child(arm: str, preset: str, rank: int, filter_rank: int, batch: int, seq: int) -> None:
    """Fresh process: print {"peak_mib", "trainable"} of one arm as JSON."""
    torch.manual_seed(0)
    ids = torch.randint(0, 32000, (batch, seq))
    model, step, count = build(arm, preset, rank, filter_rank)
    _train_step(model, step, ids)  # allocates the optimizer state
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # set-up garbage (e.g. the SVDs) leaves the heap
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM: imports and mask selection do not count
    for _ in range(2):
        _train_step(model, step, ids)
    print(json.dumps({"peak_mib": _rss_kib("VmHWM") / 1024, "trainable": count}))


def setup_medians(preset: str, rank: int, filter_rank: int, repeats: int) -> dict[str, float]:
    """Median seconds of wrapping a fresh model, both arms interleaved (model building untimed)."""
    samples: dict[str, list[float]] = {arm: [] for arm in ARMS}
    for i in range(repeats + 1):  # the first round warms up imports and allocators
        for arm in ARMS:
            model = _model(preset)
            start = time.perf_counter()
            wrap(arm, model, rank, filter_rank)
            elapsed = time.perf_counter() - start
            if i:
                samples[arm].append(elapsed)
            del model
    return {arm: statistics.median(v) for arm, v in samples.items()}


def step_medians(built: dict, ids: torch.Tensor, repeats: int) -> dict[str, float]:
    samples: dict[str, list[float]] = {arm: [] for arm in built}
    for i in range(repeats + 1):
        for arm, (model, step, _) in built.items():
            start = time.perf_counter()
            _train_step(model, step, ids)
            if i:
                samples[arm].append(time.perf_counter() - start)
    return {arm: statistics.median(v) for arm, v in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="llama-60m")
    parser.add_argument("--rank", type=int, default=8, help="LoRA rank = LIFT lora_rank")
    parser.add_argument("--filter-rank", type=int, default=64, help="LIFT's filter rank")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--setup-repeats", type=int, default=5)
    parser.add_argument("--output", type=Path, default=None, help="append the table here")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        child(args.child, args.preset, args.rank, args.filter_rank, args.batch, args.seq)
        return

    peaks = {}
    for arm in ARMS:
        cmd = [sys.executable, __file__, "--child", arm, "--preset", args.preset]
        cmd += ["--rank", str(args.rank), "--filter-rank", str(args.filter_rank)]
        cmd += ["--batch", str(args.batch), "--seq", str(args.seq)]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
        peaks[arm] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(arm, peaks[arm], file=sys.stderr)

    setup = setup_medians(args.preset, args.rank, args.filter_rank, args.setup_repeats)
    print("set-up", setup, file=sys.stderr)
    torch.manual_seed(0)
    ids = torch.randint(0, 32000, (args.batch, args.seq))
    built = {arm: build(arm, args.preset, args.rank, args.filter_rank) for arm in ARMS}
    steps = step_medians(built, ids, args.repeats)
    print("step", steps, file=sys.stderr)
    before = built["LIFT (before #21)"][0].sparse_modules()
    after = built["LIFT (ours)"][0].sparse_modules()
    same = sum(torch.equal(before[n].indices, after[n].indices) for n in after)
    moved = sum(
        len(set(before[n].indices.tolist()) ^ set(after[n].indices.tolist())) // 2 for n in after
    )
    rows = [
        [
            arm,
            f"{peaks[arm]['trainable']:,}",
            f"{setup[arm] * 1e3:.0f} ms",
            f"{setup[arm] / setup['LoRA']:.2f}×",
            f"{steps[arm] * 1e3:.0f} ms",
            f"{steps[arm] / steps['LoRA']:.2f}×",
            f"{peaks[arm]['peak_mib']:.0f} MiB",
            f"{peaks[arm]['peak_mib'] / peaks['LoRA']['peak_mib']:.2f}×",
        ]
        for arm in ARMS
    ]
    header = ["Arm", "Trainable", "Set-up", "/ LoRA", "Step", "/ LoRA", "Peak RSS", "/ LoRA"]
    table = markdown_table(header, rows)
    print(table)
    print(f"masks identical in {same} of {len(after)} matrices; {moved} entries moved")
    if args.output is not None:
        script = Path(__file__).resolve().relative_to(ROOT)
        command = shlex.join(["python", str(script), *sys.argv[1:]])
        append_section(
            args.output,
            f"sparse-ft: LIFT vs PEFT LoRA, set-up / step / peak ({args.preset})",
            command,
            table,
            notes=[
                f"{args.preset} shape (random init, fp32, vocab 32000), batch {args.batch} × "
                f"{args.seq} tokens; LoRA r = LIFT lora_rank = {args.rank} on every Linear of "
                f"the decoder blocks; LIFT filter rank {args.filter_rank}, exact mask.",
                f"Medians of {args.setup_repeats} (set-up) / {args.repeats} (step) interleaved "
                "repeats in one process; peak RSS of a fresh process per arm.",
                f"Masks: {same} of {len(after)} matrices identical before / after; {moved} "
                "entries moved in all (near-ties that the fp32 SVD ordered by rounding error).",
            ],
        )


if __name__ == "__main__":
    main()

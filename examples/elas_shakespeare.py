"""ELAS at toy scale: low-rank pre-training with 2:4 activation sparsity in a squared-ReLU FFN,
a small Llama on Shakespeare, against its dense, full-rank and SwiGLU neighbours (spec elas.md §5).

    python examples/elas_shakespeare.py                     # every arm, 2 seeds (resumable)
    python examples/elas_shakespeare.py --arms A F --steps 20 --seeds 0 --out /tmp/elas_smoke
    python examples/elas_shakespeare.py --replot --report   # figure + docs from saved results

Arms (one base `layerwise pretrain` config, each arm a list of overrides of it; same tokens, same
order, same seed per seed; one thing changes between neighbours):
  A full-rank SwiGLU (Llama's MLP)          B full-rank ReLU^2 (F = 1.5 d_ff, rounded to 64)
  C = B + 2:4 (STE, dense warm-up 10%)       D low-rank SwiGLU (r = d/4, AdamW on the factors)
  E low-rank ReLU^2                          F = E + 2:4 STE: ELAS
  G = F with the masked backward (ours)      H = F without the dense warm-up
  D_loro, F_loro: D and F with the LORO optimizer (`--arms D_loro F_loro`, optional)
Every run trains in its own folder `<out>/<arm>_s<seed>[_lr<lr>]` through `layerwise.train.pretrain`
(the integration's data pipeline: Shakespeare split by work, byte-level BPE 4k trained on the
train split); a run whose `result.json` exists is skipped, so a killed sweep resumes where it
stopped. Each finished run's summary (validation loss on the whole validation split, train loss
curve, per-layer ReLU^2 activation sparsity and 2:4 dropped-mass fraction from its metrics.jsonl)
is merged into `docs/reports/elas_shakespeare.json`; `--replot --report` rebuilds
docs/figures/elas_shakespeare.png and the docs/reproductions.md section from that file alone.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import re
import statistics
import textwrap
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "reports" / "elas_shakespeare.json"
FIGURE = ROOT / "docs" / "figures" / "elas_shakespeare.png"
DOCS = ROOT / "docs" / "reproductions.md"
TITLE = "ELAS: low-rank + 2:4 squared-ReLU activation sparsity vs dense arms, Shakespeare"

ARM_NAMES = {
    "A": "full-rank SwiGLU",
    "B": "full-rank ReLU²",
    "C": "full-rank ReLU² + 2:4 (STE)",
    "D": "low-rank SwiGLU",
    "E": "low-rank ReLU²",
    "F": "low-rank ReLU² + 2:4 STE (ELAS)",
    "G": "F, masked backward",
    "H": "F, no dense warm-up",
    "D_loro": "D with LORO",
    "F_loro": "F with LORO",
}
DEFAULT_ARMS = ["A", "B", "C", "D", "E", "F", "G", "H"]


def mlp_override(sparse: bool, grad: str = "ste", warmup: int = 0) -> str:
    """The whole `model.mlp` section: sparse_ft.ReLU2MLPConfig (quoted "2:4": YAML would read an
    unquoted 2:4 as the base-60 integer 124)."""
    section = {"name": "relu2", "activation_sparsity": "2:4" if sparse else "none"}
    if sparse:
        section |= {"grad": grad, "warmup_steps": warmup}
    return "model.mlp=" + json.dumps(section)


def arm_overrides(arm: str, rank: int, warmup: int, loro_lr: float, exact_every: int) -> list[str]:
    """The overrides of the base config that make `arm`."""
    low = [f"model.low_rank={rank}"]
    loro = ["optimizer=" + json.dumps({"name": "loro", "lr": loro_lr, "exact_every": exact_every})]
    table = {
        "A": [],
        "B": [mlp_override(False)],
        "C": [mlp_override(True, "ste", warmup)],
        "D": low,
        "E": [*low, mlp_override(False)],
        "F": [*low, mlp_override(True, "ste", warmup)],
        "G": [*low, mlp_override(True, "masked", warmup)],
        "H": [*low, mlp_override(True, "ste", 0)],
        "D_loro": low + loro,
        "F_loro": [*low, mlp_override(True, "ste", warmup), *loro],
    }
    return table[arm]


def base_config(args) -> dict:
    return {
        "data": {"source": "shakespeare", "tokenizer": "bpe", "vocab_size": 4096},
        "model": {
            "preset": "llama-tiny",
            "overrides": {
                "hidden_size": args.hidden,
                "intermediate_size": args.ffn,
                "num_hidden_layers": args.layers,
                "num_attention_heads": 4,
                "num_key_value_heads": 4,
            },
        },
        "optimizer": {
            "name": "adamw",
            "lr": args.lr,
            "betas": [0.9, 0.95],
            "weight_decay": args.wd,
        },
        "schedule": {"warmup_steps": max(1, args.steps // 10), "min_lr_ratio": 0.1},
        "train": {
            "steps": args.steps,
            "batch_size": args.batch,
            "block_size": 128,
            "eval_every": 0,  # only the final validation, over every validation block
            "eval_batches": None,
            "save_every": 0,
            "log_every": args.log_every,
        },
    }


def run_tag(arm: str, seed: int, lr: float | None) -> str:
    return f"{arm}_s{seed}" + ("" if lr is None else f"_lr{lr:g}")


# ---- statistics from metrics.jsonl ---------------------------------------------------------

_LAYER = re.compile(r"layers\.(\d+)")


def _per_layer(record: dict, kind: str) -> dict[int, float]:
    """Per-layer values of `kind` ("activation_sparsity" | "dropped_mass_fraction") in a metrics
    record: keys that name the kind and a `layers.<i>` module."""
    out = {}
    for key, value in record.items():
        if kind in key and isinstance(value, (int, float)):
            found = _LAYER.search(key)
            if found:
                out[int(found.group(1))] = float(value)
    return out


def sparsity_history(metrics: list[dict]) -> dict:
    """{"step": [...], "sparsity": [[per layer] ...], "dropped_mass": [[per layer] ...]}."""
    history = {"step": [], "sparsity": [], "dropped_mass": []}
    for record in metrics:
        sparsity = _per_layer(record, "activation_sparsity")
        dropped = _per_layer(record, "dropped_mass")
        if not sparsity:
            continue
        layers = sorted(sparsity)
        history["step"].append(record["step"])
        history["sparsity"].append([sparsity[i] for i in layers])
        history["dropped_mass"].append([dropped.get(i, math.nan) for i in layers])
    return history


# ---- training ------------------------------------------------------------------------------


def train_one(arm: str, seed: int, lr: float | None, args, data) -> dict:
    from layerwise.train.config import PretrainConfig
    from layerwise.train.metrics import read_metrics
    from layerwise.train.pretrain import pretrain

    folder = Path(args.out) / run_tag(arm, seed, lr)
    overrides = arm_overrides(arm, args.rank, args.elas_warmup, args.loro_lr, args.loro_exact_every)
    if lr is not None:
        overrides.append(f"optimizer.lr={lr}")
    overrides += [f"train.seed={seed}", f"train.out_dir={folder}", "train.overwrite=true"]
    cfg = PretrainConfig.from_dict(base_config(args), overrides)
    print(f"[elas] {folder.name}: {overrides[:-3]}", flush=True)
    trained = pretrain(cfg, data=data)
    mlp = cfg.model.mlp
    sparse = str(getattr(mlp, "activation_sparsity", "none")) == "2:4"
    metrics = read_metrics(folder)
    train = [r for r in metrics if r["split"] == "train"]
    return {
        "arm": arm,
        "seed": seed,
        "lr": cfg.optimizer.lr,
        "overrides": overrides[:-3],
        "parameters": trained.num_parameters,
        "steps": trained.step,
        "train_tokens": trained.train_tokens,
        "val_loss": trained.final_eval.loss,
        "val_perplexity": trained.final_eval.perplexity,
        "val_tokens": trained.final_eval.tokens,
        "train_s": trained.wall_s,
        # the 2:4 dense warm-up (None: no 2:4 in this arm)
        "elas_warmup": getattr(mlp, "warmup_steps", None) if sparse else None,
        "train_curve": [[r["step"], r["loss"]] for r in train],
        "stats": sparsity_history(train),
    }


@torch.no_grad()
def toggled_eval(args) -> None:
    """For each finished ReLU² run in the results: the validation loss of its final model with
    the 2:4 select switched the other way (dense-trained arms B/E: select on, no training with
    it; 2:4-trained arms: select off), over the same validation blocks."""
    from layerwise.data import prepare_data
    from layerwise.eval.perplexity import perplexity
    from layerwise.models import load_trained_model
    from layerwise.train.config import PretrainConfig
    from sparse_ft.elas_ffn import ELASFFN

    saved = load_results()
    data = None
    for tag, result in saved["runs"].items():
        folder = Path(args.out) / tag
        if "relu2" not in json.dumps(result["overrides"]) or "val_loss_toggled" in result:
            continue
        if not (folder / "final").exists():
            print(f"[elas] {tag}: no final model in {folder}, not toggled", flush=True)
            continue
        cfg = PretrainConfig.from_yaml(folder / "config.yaml")
        data = data or prepare_data(cfg.data, cfg.train.block_size)
        model = load_trained_model(folder / "final", cfg.model).eval()
        ffns = [m for m in model.modules() if isinstance(m, ELASFFN)]
        trained_sparse = ffns[0].sparse
        for ffn in ffns:
            ffn.sparse = not trained_sparse
            ffn.warmup_steps = 0
        scored = perplexity(model, data.validation, cfg.train.batch_size, None)
        assert scored.tokens == result["val_tokens"]
        result["val_loss_toggled"] = scored.loss
        result["toggled_to"] = "2:4 on" if not trained_sparse else "2:4 off"
        saved["runs"][tag] = result
        RESULTS.write_text(json.dumps(saved, indent=1) + "\n")
        print(
            f"[elas] {tag}: val loss {result['val_loss']:.4f}, "
            f"{result['toggled_to']} {scored.loss:.4f}",
            flush=True,
        )


def load_results() -> dict:
    return json.loads(RESULTS.read_text()) if RESULTS.exists() else {"runs": {}}


def save_result(tag: str, result: dict, setup: dict) -> None:
    """Merge one run into the committed results file (re-read first: atomic enough for one
    writer)."""
    saved = load_results()
    saved["setup"] = setup
    saved["runs"][tag] = result
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    tmp = RESULTS.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(saved, indent=1) + "\n")
    tmp.replace(RESULTS)


def setup_record(args) -> dict:
    return {
        "hidden": args.hidden,
        "ffn": args.ffn,
        "layers": args.layers,
        "rank": args.rank,
        "steps": args.steps,
        "batch": args.batch,
        "block": 128,
        "lr": args.lr,
        "wd": args.wd,
        "elas_warmup": args.elas_warmup,
        "loro_lr": args.loro_lr,
        "threads": torch.get_num_threads(),
        "loro_exact_every": args.loro_exact_every,
        # the commit of the code that trained (set by whoever launches from a snapshot)
        "code_commit": os.environ.get("ELAS_CODE_COMMIT"),
    }


# ---- figure and report ---------------------------------------------------------------------


def _runs_of(saved: dict, arm: str, lr: float) -> list[dict]:
    """The main runs of `arm` (not the LR sweep's; `lr` is the main one, LORO arms have theirs)."""
    del lr
    return [r for tag, r in saved["runs"].items() if r["arm"] == arm and "_lr" not in tag]


def mean_spread(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), (max(values) - min(values)) / 2 if len(values) > 1 else 0.0


def plot(saved: dict, path: Path) -> None:
    """Per ReLU² arm (columns): activation sparsity and dropped-mass fraction per layer over
    training (seed 0); right: train loss (mean over seeds) and final validation loss per arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lr = saved["setup"]["lr"]
    stat_arms = [a for a in ARM_NAMES if any(r["stats"]["step"] for r in _runs_of(saved, a, lr))]
    cols = max(1, len(stat_arms))
    top = 1.05 * max(
        (
            v
            for a in stat_arms
            for r in _runs_of(saved, a, lr)
            for row in r["stats"]["dropped_mass"]
            for v in row
        ),
        default=1.0,
    )
    fig, axes = plt.subplots(
        2, cols + 1, figsize=(2.9 * (cols + 1) + 1, 6.4), squeeze=False, constrained_layout=True
    )
    for col, arm in enumerate(stat_arms):
        run = min(_runs_of(saved, arm, lr), key=lambda r: r["seed"])
        stats = run["stats"]
        layers = len(stats["sparsity"][0])
        for layer in range(layers):
            color = plt.cm.viridis(layer / max(1, layers - 1))
            for row, key in enumerate(("sparsity", "dropped_mass")):
                axes[row, col].plot(
                    stats["step"],
                    [s[layer] for s in stats[key]],
                    color=color,
                    label=f"layer {layer}",
                )
        warm = run.get("elas_warmup")
        for row in (0, 1):
            if warm:
                axes[row, col].axvline(warm, color="grey", ls=":", lw=1)
            axes[row, col].grid(alpha=0.3)
            axes[row, col].set_xlabel("step")
        axes[0, col].set_title(f"{arm}: {ARM_NAMES[arm]}", fontsize=8)
        axes[0, col].set_ylim(0, 1)
        axes[1, col].set_ylim(0, top)  # one scale for every arm
    if stat_arms:
        axes[0, 0].set_ylabel("ReLU² activation sparsity\n(fraction of zeros)")
        axes[1, 0].set_ylabel("dropped mass / relu² mass\n(2:4 select; dotted: warm-up end)")
        axes[0, 0].legend(fontsize=7)
    loss_ax, val_ax = axes[0, cols], axes[1, cols]
    arms, means, spreads = [], [], []
    for arm in ARM_NAMES:
        runs = _runs_of(saved, arm, lr)
        if not runs:
            continue
        curves = [r["train_curve"] for r in runs]
        n = min(len(c) for c in curves)
        loss_ax.plot(
            [c[0] for c in curves[0][:n]],
            [statistics.mean(c[i][1] for c in curves) for i in range(n)],
            lw=1,
            label=arm,
        )
        mean, spread = mean_spread([r["val_loss"] for r in runs])
        arms.append(arm)
        means.append(mean)
        spreads.append(spread)
    loss_ax.set(xlabel="step", ylabel="train loss (nats)", title="train loss, mean of seeds")
    loss_ax.set_ylim(top=min(loss_ax.get_ylim()[1], 7.0))
    loss_ax.legend(fontsize=7, ncol=2)
    loss_ax.grid(alpha=0.3)
    val_ax.errorbar(range(len(arms)), means, yerr=spreads, fmt="o", capsize=3)
    val_ax.set_xticks(range(len(arms)))
    val_ax.set_xticklabels(arms, fontsize=7, rotation=45)
    val_ax.set(ylabel="validation loss (nats)", title="final val loss (± half-range)")
    val_ax.grid(alpha=0.3)
    s = saved["setup"]
    fig.suptitle(
        f"ELAS at toy scale: Llama d={s['hidden']}, {s['layers']} layers on Shakespeare, "
        f"{s['steps']} steps x {s['batch']} x {s['block']} tokens (2:4 statistics logged by the "
        "training loop)"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def loss_table(saved: dict) -> tuple[str, dict]:
    lr = saved["setup"]["lr"]
    embeddings = 2 * 4096 * saved["setup"]["hidden"]  # input embedding + untied lm_head
    means, rows = {}, []
    for arm in ARM_NAMES:
        runs = _runs_of(saved, arm, lr)
        if not runs:
            continue
        mean, spread = mean_spread([r["val_loss"] for r in runs])
        means[arm] = mean
        last = [r["stats"] for r in runs if r["stats"]["step"]]
        sparsity = dropped = "-"
        if last:  # per layer, mean over seeds
            sparsity, dropped = (
                " / ".join(
                    f"{statistics.mean(s[key][-1][i] for s in last):.{digits}f}"
                    for i in range(len(last[0][key][-1]))
                )
                for key, digits in (("sparsity", 2), ("dropped_mass", 3))
            )
        flipped = [r["val_loss_toggled"] for r in runs if "val_loss_toggled" in r]
        flip = "-"
        if len(flipped) == len(runs):
            flip = f"{statistics.mean(flipped):.4f} ({runs[0]['toggled_to']})"
        rows.append(
            [
                f"{arm} {ARM_NAMES[arm]}",
                f"{runs[0]['parameters'] / 1e6:.2f}M",
                f"{(runs[0]['parameters'] - embeddings) / 1e6:.2f}M",
                f"{mean:.4f} ± {spread:.4f}",
                f"{math.exp(mean):.1f}",
                flip,
                "-" if arm == "A" or "A" not in means else f"{100 * (mean / means['A'] - 1):+.2f}%",
                sparsity,
                dropped,
                f"{statistics.mean(r['train_s'] for r in runs) / 60:.1f} min",
                ", ".join(str(r["seed"]) for r in sorted(runs, key=lambda r: r["seed"])),
            ]
        )
    from layerwise_core.benchmarking import markdown_table

    header = [
        "Arm",
        "Parameters",
        "Without embeddings",
        "Val loss (mean ± half-range)",
        "Val ppl",
        "Val loss, 2:4 flipped at eval",
        "vs A",
        "ReLU² sparsity per layer, last log",
        "Dropped-mass fraction per layer, last log",
        "Train time",
        "Seeds",
    ]
    return markdown_table(header, rows), means


def sweep_table(saved: dict) -> str:
    rows = []
    for tag, r in sorted(saved["runs"].items()):
        if "_lr" in tag:
            rows.append([r["arm"], f"{r['lr']:g}", r["seed"], f"{r['val_loss']:.4f}"])
    base = {
        (r["arm"], r["seed"]): r
        for tag, r in saved["runs"].items()
        if r["seed"] == 0 and "_lr" not in tag
    }
    if not rows:
        return ""
    for arm in {row[0] for row in rows}:
        if (arm, 0) in base:
            r = base[(arm, 0)]
            rows.append([arm, f"{r['lr']:g} (main)", 0, f"{r['val_loss']:.4f}"])
    rows.sort(key=lambda row: (row[0], float(str(row[1]).split()[0])))
    from layerwise_core.benchmarking import markdown_table

    return "LR sweep (seed 0):\n\n" + markdown_table(["Arm", "lr", "Seed", "Val loss"], rows)


def paired_gap(saved: dict, a: str, b: str) -> tuple[float, list[float]] | None:
    """Validation loss of arm a minus arm b, seed by seed (seeds both have): (mean, per seed)."""
    lr = saved["setup"]["lr"]
    la = {r["seed"]: r["val_loss"] for r in _runs_of(saved, a, lr)}
    lb = {r["seed"]: r["val_loss"] for r in _runs_of(saved, b, lr)}
    diffs = [la[s] - lb[s] for s in sorted(la.keys() & lb.keys())]
    return (statistics.mean(diffs), diffs) if diffs else None


GAPS = [
    ("B", "A", "ReLU² vs SwiGLU, full rank"),
    ("C", "B", "2:4, full rank"),
    ("D", "A", "low rank, SwiGLU"),
    ("E", "D", "ReLU² vs SwiGLU, low rank"),
    ("F", "E", "2:4, low rank (ELAS vs its dense twin)"),
    ("G", "F", "masked vs STE backward"),
    ("H", "F", "no dense warm-up"),
    ("F", "A", "ELAS vs full-rank SwiGLU"),
    ("D_loro", "D", "LORO vs AdamW, low-rank SwiGLU"),
    ("F_loro", "F", "LORO vs AdamW, ELAS"),
    ("F_loro", "D_loro", "ELAS vs LORO (the paper's +0.07 to +0.28 ppl)"),
    ("F_loro", "A", "ELAS with LORO vs full-rank SwiGLU (the paper's headline)"),
]


def gap_table(saved: dict) -> str:
    from layerwise_core.benchmarking import markdown_table

    rows = []
    for a, b, what in GAPS:
        gap = paired_gap(saved, a, b)
        if gap is None:
            continue
        mean, diffs = gap
        rows.append([f"{a} - {b}", what, f"{mean:+.4f}", ", ".join(f"{d:+.4f}" for d in diffs)])
    header = ["Gap", "What changes", "Val loss difference (nats, mean)", "Per seed"]
    return markdown_table(header, rows) if rows else ""


def report(saved: dict, verdict: str | None) -> str:
    s = saved["setup"]
    table, _ = loss_table(saved)
    tokens = s["steps"] * s["batch"] * s["block"]
    done = len([t for t in saved["runs"] if "_lr" not in t])
    seeds = sorted({r["seed"] for r in saved["runs"].values()})
    run = (
        f"python examples/elas_shakespeare.py --hidden {s['hidden']} --layers {s['layers']} "
        f"--steps {s['steps']} --batch {s['batch']} --lr {s['lr']} --seeds "
        f"{' '.join(map(str, seeds))}"
    )
    cmd = (
        f"`{run}` (arms A-H); `{run} --arms D_loro F_loro`; `{run} --arms A --sweep 0.001 0.01 "
        "--sweep-arms A F`; `python examples/elas_shakespeare.py --toggle-eval`; then "
        "`python examples/elas_shakespeare.py --replot --report --verdict-file <text>` (figure and "
        "this section from docs/reports/elas_shakespeare.json alone)"
    )
    val_tokens = next(iter(saved["runs"].values()))["val_tokens"]
    claim = (
        "Claim (ELAS, spec elas.md §2): a low-rank Llama (LORO factors) whose FFN is a squared "
        "ReLU with 2:4 activation sparsity (top-2 of every 4 values, straight-through backward, "
        "1,000 dense warm-up steps) pre-trains with 'minimal degradation': C4 perplexity 34.06 -> "
        "34.12 (60M), 24.36 -> 24.80 (130M), 15.56 -> 15.69 (1B) against full rank, +0.07 to "
        "+0.28 against LORO; without the warm-up the 60M run gives NaN (130M: 29.70). Haziza et "
        "al. (1.5B, emulated 2:4): ReLU² ≈ SwiGLU, 2:4 costs ~0.001 nats, ReLU² layers reach "
        "84-98% sparsity."
    )
    setup = (
        f"Setup: Llama hidden {s['hidden']}, {s['layers']} layers, 4 heads, SwiGLU d_ff {s['ffn']} "
        f"(ReLU²: F = 1.5 d_ff rounded up to a multiple of 64 = "
        f"{64 * math.ceil(1.5 * s['ffn'] / 64)}), rank {s['rank']} (= d/4) on every attention and "
        "MLP projection of the low-rank arms (embeddings and lm_head full); BPE vocabulary 4096, "
        "Shakespeare through the integration's data pipeline (split by work), "
        f"{s['steps']} steps x {s['batch']} x {s['block']} tokens = {tokens:,} tokens per run; "
        f"AdamW (0.9, 0.95), lr {s['lr']} for every arm (on the factors for the low-rank arms), "
        f"weight decay {s['wd']}, LR warm-up 10% + cosine to 0.1 x lr, clip 1.0, fp32; 2:4 dense "
        f"warm-up {s['elas_warmup']} updates (10%) for C, F, G. LORO arms (optional, not a "
        f"one-change comparison): LOROConfig's defaults (the LORO scripts') with lr "
        f"{s['loro_lr']}, i.e. lazy factor steps at lr x r/d, an exact Riemannian step every "
        f"{s.get('loro_exact_every')} updates, betas (0.9, 0.999), embeddings, lm_head and norms "
        f"by plain AdamW at lr {s['loro_lr']}. Same "
        f"blocks, order and seed in every arm. Validation: the whole validation split "
        f"({val_tokens:,} predicted tokens), 2:4 select on where it is active. Sparsity (share of "
        "zeros of relu(y1)²) and dropped-mass fraction (share of the relu² mass the 2:4 select "
        "drops, or would drop in the dense arms and during the warm-up): per layer, on the "
        f"logged step's batch, from each run's metrics.jsonl. {done} runs, "
        f"{s['threads']} torch thread, code at commit {s.get('code_commit')}. Train time: wall "
        "clock on a 2-core machine shared with other jobs (noisy, not a speed comparison)."
    )
    return f"""
## {TITLE} (CPU, {datetime.date.today()})

{_bullet(claim)}
{_bullet(setup)}
- Machine: {machine()}.
{_bullet("Commands: " + cmd + ". Each run folder is skipped once its result.json exists: a killed sweep resumes with the same command.")}

{table}

Paired differences (same seed, same tokens):

{gap_table(saved)}

{sweep_table(saved)}

![ELAS sparsity, dropped mass and loss](figures/elas_shakespeare.png)

{_bullet("What holds at this scale: " + (verdict or "(runs still missing; see the table)"))}
{variants_text()}"""


def variants_text() -> str:
    """A subsection per other setup (docs/reports/elas_shakespeare_<variant>.json)."""
    out = []
    for path in sorted(RESULTS.parent.glob("elas_shakespeare_*.json")):
        saved = json.loads(path.read_text())
        if not saved.get("runs"):
            continue
        s = saved["setup"]
        variant = path.stem.removeprefix("elas_shakespeare_")
        arms = sorted({r["arm"] for r in saved["runs"].values()})
        seeds = sorted({r["seed"] for r in saved["runs"].values()})
        tokens = s["steps"] * s["batch"] * s["block"]
        text = (
            f"Same setup, {s['steps']} steps x {s['batch']} x {s['block']} = {tokens:,} tokens "
            f"per run (2:4 dense warm-up {s['elas_warmup']} updates), lr {s['lr']}, arms "
            f"{', '.join(arms)}, seeds {', '.join(map(str, seeds))}. Command: `python "
            f"examples/elas_shakespeare.py --variant {variant} --steps {s['steps']} --seeds "
            f"{' '.join(map(str, seeds))} --arms {' '.join(arms)}`."
        )
        figure = FIGURE.with_name(f"elas_shakespeare_{variant}.png")
        link = f"\n\n![{variant}](figures/{figure.name})" if figure.exists() else ""
        out.append(
            f"\n### Variant '{variant}'\n\n{_bullet(text)}\n\n{loss_table(saved)[0]}\n\n"
            f"{gap_table(saved)}{link}\n"
        )
    return "".join(out)


def machine() -> str:
    from layerwise_core.benchmarking import machine_description

    return machine_description()


def _bullet(text: str) -> str:
    return textwrap.fill(
        text,
        100,
        initial_indent="- ",
        subsequent_indent="  ",
        break_on_hyphens=False,
        break_long_words=False,
    )


def write_docs(section: str) -> None:
    """Replace this section of docs/reproductions.md (same title) or append it."""
    text = DOCS.read_text()
    start = text.find(f"\n## {TITLE} (")
    if start >= 0:
        end = text.find("\n## ", start + 1)
        text = text[:start] + text[end if end >= 0 else len(text) :]
    DOCS.write_text(text.rstrip("\n") + "\n" + section)


# ---- main ----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--ffn", type=int, default=None, help="SwiGLU d_ff (default 8d/3 to 8)")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--rank", type=int, default=None, help="default hidden / 4")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--wd", type=float, default=0.0)
    parser.add_argument("--loro-lr", type=float, default=1e-2)
    parser.add_argument(
        "--loro-exact-every", type=int, default=None, help="LORO exact step period (steps / 6)"
    )
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--arms", nargs="+", default=DEFAULT_ARMS, choices=list(ARM_NAMES))
    parser.add_argument("--sweep", type=float, nargs="*", default=[], help="extra lrs, seed 0")
    parser.add_argument("--sweep-arms", nargs="+", default=["A", "F"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--variant",
        default="",
        help="another setup (e.g. longer runs): its own results json and figure "
        "(docs/reports/elas_shakespeare_<variant>.json), a subsection of the report",
    )
    parser.add_argument("--out", default="runs/elas_shakespeare")
    parser.add_argument("--no-save", action="store_true", help="don't merge into the docs json")
    parser.add_argument(
        "--toggle-eval",
        action="store_true",
        help="no training: validation loss of the saved ReLU² runs with the 2:4 select flipped",
    )
    parser.add_argument("--replot", action="store_true", help="figure from saved results only")
    parser.add_argument("--report", action="store_true", help="write the docs section")
    parser.add_argument(
        "--verdict-file",
        default=None,
        help="a text file: the 'what holds at this scale' paragraph, kept in the results json",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.ffn = args.ffn or 8 * math.ceil(8 * args.hidden / 3 / 8)
    args.rank = args.rank or args.hidden // 4
    args.elas_warmup = args.steps // 10
    args.loro_exact_every = args.loro_exact_every or max(1, args.steps // 6)
    global RESULTS, FIGURE
    if args.variant:
        RESULTS = RESULTS.with_name(f"elas_shakespeare_{args.variant}.json")
        FIGURE = FIGURE.with_name(f"elas_shakespeare_{args.variant}.png")
        if args.out == parser.get_default("out"):
            args.out = f"{args.out}_{args.variant}"

    if args.toggle_eval:
        toggled_eval(args)
    elif not args.replot:
        from layerwise.data import prepare_data
        from layerwise.train.config import PretrainConfig

        cfg = PretrainConfig.from_dict(base_config(args))
        data = prepare_data(cfg.data, cfg.train.block_size)
        jobs = [(arm, seed, None) for seed in args.seeds for arm in args.arms]
        jobs += [(arm, 0, lr) for lr in args.sweep for arm in args.sweep_arms]
        for arm, seed, lr in jobs:
            tag = run_tag(arm, seed, lr)
            done = Path(args.out) / tag / "result.json"
            if done.exists():
                old = json.loads(done.read_text())
                if old.get("setup", {}).get("steps") != args.steps:
                    raise SystemExit(
                        f"{done} was trained with another setup ({old.get('setup')}): "
                        "remove it or choose another --out"
                    )
                print(f"[elas] {tag}: done, skipped", flush=True)
                if not args.no_save and tag not in load_results()["runs"]:
                    save_result(tag, old, setup_record(args))
                continue
            t0 = time.perf_counter()
            result = train_one(arm, seed, lr, args, data)
            result["setup"] = setup_record(args)
            done.write_text(json.dumps(result) + "\n")
            if not args.no_save:
                save_result(tag, result, setup_record(args))
            print(
                f"[elas] {tag}: val loss {result['val_loss']:.4f} "
                f"({time.perf_counter() - t0:.0f} s)",
                flush=True,
            )
    saved = load_results()
    if saved["runs"] and (args.replot or args.report or not args.no_save):
        plot(saved, FIGURE)
        print(loss_table(saved)[0])
    if args.report:
        if args.verdict_file:
            saved["verdict"] = " ".join(Path(args.verdict_file).read_text().split())
            RESULTS.write_text(json.dumps(saved, indent=1) + "\n")
        write_docs(report(saved, saved.get("verdict")))


if __name__ == "__main__":
    main()

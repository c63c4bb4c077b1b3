"""A study's report from its results alone: `report.md` and PNG figures beside `results.json`.

    write_report(json.loads(Path("study/results.json").read_text()), "study")

Tables (mean +- sample std over seeds; n = how many values): the runs and their final validation
loss; per analysis stage and checkpoint fraction, every summary metric by run, pooled by the
values of the `report.group_by` tags (e.g. family x data: over LRs and seeds), and, with
`report.pair`, in how many pairs (runs equal in every other tag, same seed) the metric of tag=a
is below tag=b's.
Figures: validation loss over training per run (and each train-record key of `report.curves`,
e.g. a per-layer variance logged during training); per stage, the relative loss increases at the
last fraction by group (or run); per-layer profiles (redundancy, block MMR, outlier ratio, skip
increase, heavy-tail alpha) where a stage records them. Nothing here reads the clock: the same results give the
same report.
"""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from layerwise.studies.claims import claims_section
from layerwise.studies.versus import versus_section

__all__ = ["PROFILES", "mean_std", "write_report"]

# per-layer profiles a stage may record in its details, plotted when present
PROFILES = ("redundancy", "block_mmr", "outlier_ratio", "skip_rel_increase", "alpha_per_layer")


def mean_std(values: Iterable[float]) -> str:
    """`mean +- std (n)`; a single value is shown alone."""
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.4g}"
    return f"{statistics.fmean(values):.4g} ± {statistics.stdev(values):.2g} (n={len(values)})"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return [*lines, ""]


def _summaries(results: dict, label: str, fraction: str):
    """(run, tags, seed, summary) of every seed where the stage ran at `fraction`."""
    for run, entry in results["runs"].items():
        for seed, seed_entry in entry["seeds"].items():
            done = seed_entry["analyses"].get(label, {}).get(fraction)
            if done and "summary" in done:
                yield run, entry["tags"], seed, done["summary"]


def _errors(results: dict) -> list[str]:
    lines = []
    for run, entry in results["runs"].items():
        for seed, seed_entry in entry["seeds"].items():
            for label, per_fraction in seed_entry["analyses"].items():
                for fraction, done in per_fraction.items():
                    if "error" in done:
                        lines.append(f"- {run} seed {seed}, {label} at {fraction}: {done['error']}")
    return lines


def _pairs(results: dict, label: str, fraction: str, metric: str, pair: dict) -> str:
    tag, a, b = pair["tag"], pair["a"], pair["b"]
    values: dict[tuple, dict[str, float]] = {}
    for _, tags, seed, summary in _summaries(results, label, fraction):
        if tag not in tags or summary.get(metric) is None:
            continue
        key = (tuple(sorted((k, v) for k, v in tags.items() if k != tag)), seed)
        values.setdefault(key, {})[tags[tag]] = summary[metric]
    compared = [v for v in values.values() if a in v and b in v]
    if not compared:
        return "-"
    holds = sum(v[a] < v[b] for v in compared)
    return f"{holds}/{len(compared)}"


def _stage_section(results: dict, label: str, figures: list[str], out: Path) -> list[str]:
    config = results["config"]
    report_cfg = config.get("report", {})
    fractions = [f"{f:g}" for f in config["checkpoints"]]
    lines = [f"## {label} ({config['analyses'][label]['name']})", ""]
    last_with_data = None
    for fraction in fractions:
        found = list(_summaries(results, label, fraction))
        if not found:
            continue
        last_with_data = fraction
        metrics = list(dict.fromkeys(m for *_, s in found for m in s))
        runs = list(dict.fromkeys(run for run, *_ in found))
        lines.append(f"### at {fraction} of training")
        lines.append("")
        rows = [
            [m] + [mean_std(s.get(m) for r, _, _, s in found if r == run) for run in runs]
            for m in metrics
        ]
        lines += _table(["metric", *runs], rows)
        if report_cfg.get("group_by"):
            groups = list(dict.fromkeys(_group_of(results, run) for run, *_ in found))
            header = ["metric", *groups]
            pair = report_cfg.get("pair")
            if pair is not None:
                header.append(f"{pair['a']} < {pair['b']} (pairs)")
            rows = []
            for m in metrics:
                row = [m] + [
                    mean_std(s.get(m) for r, _, _, s in found if _group_of(results, r) == g)
                    for g in groups
                ]
                if pair is not None:
                    row.append(_pairs(results, label, fraction, m, pair))
                rows.append(row)
            lines.append(
                f"Pooled by {', '.join(report_cfg['group_by'])} (every run and seed of each):"
            )
            lines.append("")
            lines += _table(header, rows)
    if last_with_data is None:
        return [*lines, "No results yet.", ""]
    figure = _stage_figure(results, label, last_with_data, out)
    if figure:
        figures.append(figure)
        lines += [f"![{label}]({figure})", ""]
    profile = _profile_figure(results, label, last_with_data, out)
    if profile:
        figures.append(profile)
        lines += [f"![{label} per layer]({profile})", ""]
    return lines


def _group_of(results: dict, run: str) -> str:
    tags = results["runs"][run]["tags"]
    group_by = results["config"].get("report", {}).get("group_by", [])
    return ", ".join(f"{t}={tags[t]}" for t in group_by if t in tags) or run


def _stage_figure(results: dict, label: str, fraction: str, out: Path) -> str | None:
    """Bars of the relative loss increases at `fraction`, by group (or run), mean +- std."""
    found = list(_summaries(results, label, fraction))
    metrics = list(dict.fromkeys(m for *_, s in found for m in s if m.endswith("rel_increase")))
    if not metrics:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(dict.fromkeys(_group_of(results, run) for run, *_ in found))
    width = 0.8 / len(groups)
    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(metrics) + 2), 3.6))
    for i, group in enumerate(groups):
        means, stds = [], []
        for m in metrics:
            vals = [
                s[m]
                for r, _, _, s in found
                if _group_of(results, r) == group and s.get(m) is not None
            ]
            means.append(statistics.fmean(vals) if vals else float("nan"))
            stds.append(statistics.stdev(vals) if len(vals) > 1 else 0.0)
        xs = [j + (i - (len(groups) - 1) / 2) * width for j in range(len(metrics))]
        ax.bar(xs, means, width, yerr=stds, label=group, capsize=2)
    ax.set_xticks(range(len(metrics)))
    ax.set_xticklabels([m.removesuffix("/rel_increase") for m in metrics], rotation=30, ha="right")
    ax.set_ylabel("relative loss increase")
    ax.set_title(f"{results['study']}: {label} at {fraction} of training")
    ax.axhline(0, color="black", linewidth=0.5)
    ax.legend(fontsize=8)
    fig.tight_layout()
    name = f"{label}.png"
    fig.savefig(out / name, dpi=110, metadata={"Software": None})
    plt.close(fig)
    return name


def _profile_figure(results: dict, label: str, fraction: str, out: Path) -> str | None:
    """Per-layer profiles recorded in the stage's details, mean over the runs of each group."""
    per_group: dict[str, dict[str, list[list[float]]]] = {}
    for run, entry in results["runs"].items():
        for seed_entry in entry["seeds"].values():
            details = seed_entry["analyses"].get(label, {}).get(fraction, {}).get("details", {})
            for key in PROFILES:
                if isinstance(details.get(key), list):
                    group = per_group.setdefault(_group_of(results, run), {})
                    group.setdefault(key, []).append(details[key])
    keys = [k for k in PROFILES if any(k in g for g in per_group.values())]
    if not keys:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.4), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for group, profiles in per_group.items():
            if key in profiles:
                columns = list(zip(*profiles[key]))
                ax.plot(
                    range(len(columns)), [statistics.fmean(c) for c in columns], "o-", label=group
                )
        ax.set_xlabel("layer")
        ax.set_title(key, fontsize=9)
        ax.legend(fontsize=7)
    fig.suptitle(f"{results['study']}: {label} at {fraction} of training", fontsize=10)
    fig.tight_layout()
    name = f"{label}_layers.png"
    fig.savefig(out / name, dpi=110, metadata={"Software": None})
    plt.close(fig)
    return name


def _training_figure(results: dict, out: Path, key: str | None = None) -> str | None:
    """Validation loss over training (or the train-record `key` of `report.curves`), mean over
    the seeds of each run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    plotted = False
    for run, entry in results["runs"].items():
        seeds = entry["seeds"].values()
        if key is None:
            curves = [s["validation_curve"] for s in seeds if s["validation_curve"]]
        else:
            curves = [s["curves"][key] for s in seeds if s.get("curves", {}).get(key)]
        if not curves:
            continue
        steps = [step for step, _ in curves[0]]
        losses = [
            statistics.fmean(c[i][1] for c in curves if i < len(c)) for i in range(len(steps))
        ]
        ax.plot(steps, losses, "o-", markersize=3, label=run)
        plotted = True
    if not plotted:
        plt.close(fig)
        return None
    ax.set_xlabel("step")
    if key is None:
        ax.set_ylabel("validation loss (mean over seeds)")
        title = "validation loss (CE for AR, ELBO bound for DLM)"
        name = "training.png"
    else:
        ax.set_ylabel(f"{key} (mean over seeds)")
        title = f"{key} over training"
        name = "curve_" + "".join(c if c.isalnum() else "_" for c in key) + ".png"
    ax.set_title(f"{results['study']}: {title}", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / name, dpi=110, metadata={"Software": None})
    plt.close(fig)
    return name


def write_report(results: dict[str, Any], out: str | os.PathLike) -> Path:
    """Write `out/report.md` and its PNGs from `results` (`layerwise.studies.aggregate`)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config = results["config"]
    lines = [f"# Study {results['study']}", ""]
    if results.get("description"):
        lines += [results["description"].strip(), ""]
    lines += [
        f"Seeds {config['seeds']} (per run where a run names its own), checkpoints at "
        f"{config['checkpoints']} of training; every table is mean ± sample std over seeds "
        "(n = values). Compression arms are RELATIVE loss increases (L_after - L_before) / "
        "L_before: next-token CE for AR runs, the fixed-mask ELBO (mean over the masking rates "
        f"{config['probe']['mdm_t']}) for masked-diffusion runs.",
        "",
        "## Runs",
        "",
    ]
    rows = []
    for run, entry in results["runs"].items():
        seeds = entry["seeds"]
        done = [s for s, e in seeds.items() if e["status"] == "trained"]
        final = [
            e["final"]["validation_loss"] for e in seeds.values() if e.get("final") is not None
        ]
        tags = ", ".join(f"{k}={v}" for k, v in entry["tags"].items())
        rows.append([run, tags, f"{len(done)}/{len(seeds)}", mean_std(final)])
    lines += _table(["run", "tags", "seeds trained", "final validation loss"], rows)
    figures: list[str] = []
    for key in [None, *config.get("report", {}).get("curves", [])]:
        figure = _training_figure(results, out, key)
        if figure:
            figures.append(figure)
            lines += [f"![{key or 'training'}]({figure})", ""]
    lines += versus_section(results, out)  # report.versus: metrics by a numeric tag
    lines += claims_section(results)  # report.claims: expected directions, checked
    for label in config["analyses"]:
        lines += _stage_section(results, label, figures, out)
    errors = _errors(results)
    if errors:
        lines += ["## Analyses not done", "", *errors, ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path

"""Summary metrics against a numeric run tag, for a study's report (e.g. usefulness, causal and
permutation scores by depth in the sparsity-depth study, spec studies.md A.5):

    report:
      versus: {tag: depth, runs: [L4, L8, L16, L24],
               metrics: [loss, depth/usefulness, depth/causal, depth/permutation]}

`loss` is the run's final validation loss; `<label>/<metric>` a summary metric of analysis stage
`<label>` at the last checkpoint fraction. `versus_section` gives the markdown (a table of mean
+- sample std over the seeds of the runs at each tag value) and one PNG with a panel per metric
(mean with +- std error bars).
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

from pydantic import Field

from layerwise_core import LayerwiseConfig

__all__ = ["VersusConfig", "versus_section"]


class VersusConfig(LayerwiseConfig):
    """Summary metrics plotted and tabulated against the numeric value of a run tag."""

    tag: str  # a tag whose values are numbers (e.g. depth)
    # `loss` (final validation loss) or `<stage label>/<summary metric>` at the last fraction
    metrics: list[str] = Field(min_length=1)
    runs: list[str] | None = None  # the runs compared (None: every run that has the tag)


def _values(results: dict, versus: dict, metric: str) -> dict[float, list[float]]:
    """{tag value: [the metric of every seed of every chosen run with that value]}."""
    fraction = f"{results['config']['checkpoints'][-1]:g}"
    out: dict[float, list[float]] = {}
    for run, entry in results["runs"].items():
        if versus.get("runs") is not None and run not in versus["runs"]:
            continue
        if versus["tag"] not in entry["tags"]:
            continue
        x = float(entry["tags"][versus["tag"]])
        for seed in entry["seeds"].values():
            if metric == "loss":
                value = (seed.get("final") or {}).get("validation_loss")
            else:
                label, _, name = metric.partition("/")
                done = seed["analyses"].get(label, {}).get(fraction, {})
                value = done.get("summary", {}).get(name)
            if value is not None and math.isfinite(value):
                out.setdefault(x, []).append(float(value))
    return dict(sorted(out.items()))


def _cell(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.4g}"
    return f"{statistics.fmean(values):.4g} ± {statistics.stdev(values):.2g} (n={len(values)})"


def versus_section(results: dict[str, Any], out: Path) -> list[str]:
    """Markdown lines (table + figure) of `results["config"]["report"]["versus"]`; [] if unset
    or nothing measured yet."""
    versus = results["config"].get("report", {}).get("versus")
    if not versus:
        return []
    series = {metric: _values(results, versus, metric) for metric in versus["metrics"]}
    xs = sorted({x for values in series.values() for x in values})
    if not xs:
        return []
    tag = versus["tag"]
    lines = [f"## Metrics by {tag}", ""]
    lines.append("| metric | " + " | ".join(f"{tag} {x:g}" for x in xs) + " |")
    lines.append("|" + "---|" * (len(xs) + 1))
    for metric, values in series.items():
        lines.append(f"| {metric} | " + " | ".join(_cell(values.get(x, [])) for x in xs) + " |")
    lines.append("")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(m, v) for m, v in series.items() if v]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.0), squeeze=False)
    for ax, (metric, values) in zip(axes[0], panels):
        x = list(values)
        mean = [statistics.fmean(v) for v in values.values()]
        std = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in values.values()]
        ax.errorbar(x, mean, yerr=std, fmt="o-", capsize=3, markersize=4)
        ax.set_xlabel(tag)
        ax.set_title(metric, fontsize=9)
    fig.suptitle(f"{results['study']}: by {tag} (mean ± std over seeds)", fontsize=10)
    fig.tight_layout()
    name = "versus_" + "".join(c if c.isalnum() else "_" for c in tag) + ".png"
    fig.savefig(out / name, dpi=110, metadata={"Software": None})
    plt.close(fig)
    return [*lines, f"![by {tag}]({name})", ""]

"""PNG figures of a `DepthProbe` and of sweeps (needs the `plot` extra: matplotlib)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from depth_probe.probe import DepthProbe
from depth_probe.skip_effect import SkipEffect
from depth_probe.sweeps import SweepResult

__all__ = ["plot_probe", "plot_sweeps"]


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise ImportError(
            'depth_probe figures need matplotlib: pip install "depth-probe[plot]"'
        ) from err
    return plt


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def _heatmap(ax, matrix: torch.Tensor, title: str, xlabel: str, ylabel: str, **kwargs):
    image = ax.imshow(matrix.numpy(), aspect="auto", origin="upper", **kwargs)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.figure.colorbar(image, ax=ax, shrink=0.8)


def plot_probe(
    result: DepthProbe,
    out_dir: str | Path,
    title: str = "",
    skip_effect: SkipEffect | None = None,
) -> list[Path]:
    """Write per_layer.png, angular_distance.png, logit_lens.png, cka.png, similarity.png,
    massive_activations.png (and skip_effect.png) into `out_dir`; returns their paths."""
    plt = _pyplot()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    layers = list(range(result.num_layers))
    paths = []

    fig, axes = plt.subplots(2, 3, figsize=(13, 6.5))
    axes[0, 0].bar(layers, result.block_influence.numpy())
    axes[0, 0].set_title("Block influence 1 - E cos(h_l, h_l+1)", fontsize=9)
    axes[0, 1].bar(layers, result.angular_distance.matrix[0, :].numpy())
    axes[0, 1].set_title("Angular distance d(h_l, h_l+1), last token", fontsize=9)
    rc = result.residual_contributions
    for name in ("attn_ratio", "mlp_ratio", "block_ratio"):
        axes[0, 2].plot(layers, getattr(rc, name).numpy(), marker=".", label=name)
    axes[0, 2].set_yscale("log")
    axes[0, 2].set_title("Contribution norm ratios (Csordas)", fontsize=9)
    axes[0, 2].legend(fontsize=7)
    for name in ("attn_cos", "mlp_cos", "block_cos"):
        axes[1, 0].plot(layers, getattr(rc, name).numpy(), marker=".", label=name)
    axes[1, 0].axhline(0, color="grey", lw=0.5)
    axes[1, 0].set_title("Contribution cosines", fontsize=9)
    axes[1, 0].legend(fontsize=7)
    axes[1, 1].plot(layers, result.output_variance.numpy(), marker=".")
    axes[1, 1].set_yscale("log")
    axes[1, 1].set_title("Output variance Var(h_l+1)", fontsize=9)
    axes[1, 2].plot(layers, result.massive_activations.max_median_ratio.numpy(), marker=".")
    axes[1, 2].set_yscale("log")
    axes[1, 2].set_title("Max/median |x| at attention input", fontsize=9)
    for ax in axes.flat:
        ax.set_xlabel("layer")
    if title:
        fig.suptitle(title)
    paths.append(_save(fig, out / "per_layer.png"))

    fig, ax = plt.subplots(figsize=(7, 5))
    matrix = result.angular_distance.matrix
    _heatmap(ax, matrix, "Angular distance d(h_l, h_l+n) (last token)", "start layer l", "n - 1")
    for n, (start, _) in result.angular_distance.best_blocks().items():
        ax.plot(start, n - 1, "w.", ms=4)
    paths.append(_save(fig, out / "angular_distance.png"))

    if result.logit_lens is not None:
        lens = result.logit_lens
        states = list(range(result.num_layers + 1))
        fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
        axes[0].plot(states, lens.kl.numpy(), marker=".")
        axes[0].set_yscale("symlog", linthresh=1e-2)
        axes[0].set_title("KL(p_L || p_l) [nats]", fontsize=9)
        axes[1].plot(states, lens.top1_agreement.numpy(), marker=".", label="top-1 = final top-1")
        axes[1].plot(states, lens.target_accuracy.numpy(), marker=".", label="top-1 = target")
        axes[1].set_ylim(-0.02, 1.02)
        axes[1].legend(fontsize=7)
        axes[1].set_title("Logit lens agreement", fontsize=9)
        axes[2].plot(states, lens.target_rank.numpy(), marker=".")
        axes[2].set_yscale("log")
        axes[2].set_title("Median rank of the target token", fontsize=9)
        for ax in axes:
            ax.set_xlabel("hidden state h_l (0 = embeddings)")
        paths.append(_save(fig, out / "logit_lens.png"))

    fig, ax = plt.subplots(figsize=(6, 5))
    _heatmap(ax, result.cka, "Linear CKA(h_i, h_j)", "j", "i", vmin=0, vmax=1)
    paths.append(_save(fig, out / "cka.png"))

    if result.similarity:
        rows = [("", result.similarity)]
        if result.similarity_zeroed:
            rows.append((f" (channels {result.zero_channels} zeroed)", result.similarity_zeroed))
        fig, axes = plt.subplots(len(rows), 3, figsize=(14, 4.2 * len(rows)), squeeze=False)
        for r, (suffix, matrices) in enumerate(rows):
            for c, (variant, matrix) in enumerate(matrices.items()):
                _heatmap(
                    axes[r, c], matrix, f"{variant}{suffix}", "block j output", "block i output"
                )
        paths.append(_save(fig, out / "similarity.png"))

    fig, axes = plt.subplots(2, 2, figsize=(13, 7.2))
    for row, massive in enumerate((result.massive_activations, result.massive_residual)):
        top = massive.channel_magnitude.topk(massive.top_k, dim=-1)
        ax = axes[row, 0]
        for k in range(massive.top_k):
            ax.plot(layers, top.values[:, k].numpy(), marker=".", label=f"top-{k + 1} channel")
        ax.plot(
            layers,
            massive.channel_magnitude.median(-1).values.numpy(),
            "k--",
            label="median channel",
        )
        ax.plot(layers, massive.max_abs.numpy(), "r:", label="max |x| (any token)")
        ax.set_yscale("log")
        ax.set_xlabel("layer")
        where = "attention (QKV) input" if massive.site == "attn_input" else "residual stream h_l"
        ax.set_title(f"Mean |x| per channel at the {where}", fontsize=9)
        ax.legend(fontsize=7)
        _heatmap(
            axes[row, 1],
            massive.channel_magnitude.clamp_min(1e-6).log10(),
            f"log10 mean |x| (layer x channel), {where}",
            "channel",
            "layer",
        )
    paths.append(_save(fig, out / "massive_activations.png"))

    if skip_effect is not None:
        fig, axes = plt.subplots(1, 2, figsize=(13, 4), gridspec_kw={"width_ratios": [3, 2]})
        _heatmap(
            axes[0],
            skip_effect.relative_change,
            f"Skip layer s before t={skip_effect.positions}: relative change of D_l at tokens >= t",
            "effect at layer l",
            "skipped layer s",
            vmin=0,
            vmax=1,  # as in Csordas et al.'s plots; larger changes saturate
        )
        axes[1].bar(layers, skip_effect.output_change.numpy())
        axes[1].set_xlabel("skipped layer s")
        axes[1].set_title("max ||p - p'|| at tokens >= t", fontsize=9)
        paths.append(_save(fig, out / "skip_effect.png"))
    return paths


def plot_sweeps(sweeps: Sequence[SweepResult], out_dir: str | Path) -> list[Path]:
    """sweep_<kind>.png per sweep: each scorer's score relative to the full model per candidate."""
    plt = _pyplot()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for result in sweeps:
        names = list(result.scores)
        fig, axes = plt.subplots(len(names), 1, figsize=(10, 2.4 * len(names)), squeeze=False)
        labels = [
            ",".join(map(str, r)) if len(r) <= 4 else f"{len(r)} layers" for r in result.removals
        ]
        for ax, name in zip(axes[:, 0], names):
            color = "C0" if result.protocols.get(name) == "likelihood" else "C3"
            ax.bar(range(len(labels)), result.relative(name), color=color)
            ax.axhline(1.0, color="grey", lw=0.6)
            ax.set_ylabel("vs full model")
            ax.set_title(
                f"{name} ({result.protocols.get(name, '?')}; full model {result.baseline[name]:.4g})",
                fontsize=9,
            )
            if not result.higher_is_better.get(name, True):
                ax.set_yscale("log")
        axes[-1, 0].set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
        axes[-1, 0].set_xlabel(f"removed ({result.kind})")
        paths.append(_save(fig, out / f"sweep_{result.kind}.png"))
    return paths

"""Plots draw what the fit says: the tail line has slope -alpha on log-log axes; the history
lines carry the recorded alphas."""

import math

import pytest
import torch

pytest.importorskip("matplotlib")
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from spectral_opt import hill_alpha
from spectral_opt.plots import plot_alpha_history, plot_esd, plot_module_alphas


def test_esd_plot_tail_has_slope_minus_alpha(tmp_path):
    g = torch.Generator().manual_seed(0)
    eigs = torch.rand(2000, generator=g, dtype=torch.float64).pow(-1 / 2.0)  # alpha = 3 tail
    ax = plot_esd(eigs)
    (tail,) = [line for line in ax.get_lines() if line.get_label().startswith("power law")]
    x, y = tail.get_xdata(), tail.get_ydata()
    slope = (math.log(y[-1]) - math.log(y[0])) / (math.log(x[-1]) - math.log(x[0]))
    assert slope == pytest.approx(-hill_alpha(eigs).item(), rel=1e-9)
    ax.figure.savefig(tmp_path / "esd.png")
    assert (tmp_path / "esd.png").stat().st_size > 1000
    weight_ax = plot_esd(torch.randn(80, 60, generator=g))  # a weight: its ESD is computed
    assert weight_ax.get_xscale() == "log"
    plt.close("all")


def test_alpha_history_and_module_plots():
    history = [(0, {"a": 3.0, "b": 4.0}), (10, {"a": 2.5, "b": 4.2})]
    ax = plot_alpha_history(history)
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert list(lines["a"].get_xdata()) == [0, 10] and list(lines["a"].get_ydata()) == [3.0, 2.5]
    bars = plot_module_alphas({"a": 3.0, "b": 4.0}).patches
    assert [b.get_height() for b in bars] == [3.0, 4.0]
    plt.close("all")

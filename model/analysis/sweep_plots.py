"""The plots of a whole sweep, as PNG files: its runs' learning curves on shared axes, and each run
as a point of the rate–distortion plane (written by `model.analysis.report.write_comparison`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from model.analysis.figures import pyplot, save_figure
from model.analysis.plots import CURVES


def plot_overlaid_curves(curves: dict[str, Sequence[dict]], path: Path, title: str = "") -> Path:
    """Learning curves of several runs on shared axes: validation solid, training dotted."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for i, (name, metrics) in enumerate(curves.items()):
        if not metrics:
            continue
        epochs = [m["epoch"] for m in metrics]
        for ax, (key, _) in zip(axes, CURVES):
            ax.plot(epochs, [m["validation"][key] for m in metrics], "-", marker=".", ms=3, color=f"C{i % 10}",
                    label=name)
            ax.plot(epochs, [m["train"][key] for m in metrics], ":", color=f"C{i % 10}", lw=0.8)
    for ax, (key, label) in zip(axes, CURVES):
        ax.set_title(f"{label} (validation solid, training dotted)", fontsize=9)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if key != "kl":
            values = [m["validation"][key] for ms in curves.values() for m in ms[1:]]
            low, high = (float(np.percentile(values, 2)), float(max(values))) if values else (0.0, 0.0)
            if high > low:  # the first epoch's value would squash the rest of the curve
                ax.set_ylim(low - 0.05 * (high - low), high + 0.05 * (high - low))
    axes[0].set_ylabel("nats per image")
    axes[2].legend(fontsize=7, loc="lower right")
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


def plot_rate_distortion(points: dict[str, tuple[float, float]], path: Path, title: str = "") -> Path:
    """Each run as (rate, distortion) = (test KL, −log p(x|z)); lines of equal ELBO run at −45°."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    rates = [r for r, _ in points.values()]
    distortions = [d for _, d in points.values()]
    for i, (name, (rate, distortion)) in enumerate(points.items()):
        ax.scatter([rate], [distortion], color=f"C{i % 10}", zorder=3)
        ax.annotate(name, (rate, distortion), fontsize=7, xytext=(4, 4), textcoords="offset points")
    low, high = min(r + d for r, d in zip(rates, distortions)), max(r + d for r, d in zip(rates, distortions))
    span = np.array([0.0, max(rates) * 1.1 + 1])
    for level in np.linspace(low, high, 4):
        ax.plot(span, level - span, color="0.8", lw=0.7, zorder=1)
    ax.set_xlim(-0.5, max(rates) * 1.1 + 1)
    ax.set_ylim(min(distortions) * 0.95, max(distortions) * 1.05)
    ax.set_xlabel("rate: KL(q(z|x) || p(z)) (nats)")
    ax.set_ylabel("distortion: −log p(x|z) (nats)")
    ax.set_title(title or "rate–distortion (grey: equal −ELBO)", fontsize=9)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)

"""Pictures of a training run: the loss curve, the loss per noise level, and a convergence summary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_loss_curve(rows: list[dict[str, Any]], path: Path) -> Path | None:
    """Loss (and its running mean) against step, learning rate on a second axis."""
    rows = [r for r in rows if "loss" in r]
    if not rows:
        return None
    plt = _pyplot()
    steps = np.array([r["step"] for r in rows])
    loss = np.array([r["loss"] for r in rows])
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, loss, lw=0.8, alpha=0.5, label="loss (logged)")
    if len(loss) >= 5:
        k = max(2, len(loss) // 20)
        smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
        ax.plot(steps[k - 1:], smooth, lw=2, label=f"mean of {k}")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    if all("lr" in r for r in rows):
        ax2 = ax.twinx()
        ax2.plot(steps, [r["lr"] for r in rows], color="gray", lw=1, ls="--", label="lr")
        ax2.set_ylabel("learning rate")
    ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_loss_by_timestep(rows: list[dict[str, Any]], path: Path) -> Path | None:
    """One line per stretch of training: the mean loss in each timestep bucket (which noise levels are hard)."""
    rows = [r for r in rows if any(k.startswith("loss_t") for k in r)]
    if not rows:
        return None
    keys = sorted((k for k in rows[-1] if k.startswith("loss_t")), key=lambda k: int(k.split("_")[1][1:]))
    starts = [int(k.split("_")[1][1:]) for k in keys]
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    chosen = rows if len(rows) <= 6 else [rows[int(i)] for i in np.linspace(0, len(rows) - 1, 6)]
    colors = plt.cm.viridis(np.linspace(0, 1, len(chosen)))
    for row, color in zip(chosen, colors):
        ax.plot(starts, [row.get(k, np.nan) for k in keys], marker="o", color=color, label=f"step {row['step']}")
    ax.set_xlabel("timestep t (bucket start)")
    ax.set_ylabel("mean training loss in bucket (as weighted)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def convergence_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Initial and final loss (means over the first and last tenth of the logged rows), the improvement, and the
    largest increase of the mean loss from one epoch to the next."""
    rows = [r for r in rows if "loss" in r]
    if not rows:
        return {}
    k = max(1, len(rows) // 10)
    initial = float(np.mean([r["loss"] for r in rows[:k]]))
    final = float(np.mean([r["loss"] for r in rows[-k:]]))
    by_epoch: dict[int, list[float]] = {}
    for r in rows:
        by_epoch.setdefault(int(r.get("epoch", 0)), []).append(r["loss"])
    epoch_means = [float(np.mean(v)) for _, v in sorted(by_epoch.items())]
    jumps = [(b - a, i + 1) for i, (a, b) in enumerate(zip(epoch_means, epoch_means[1:]))]
    worst = max(jumps, default=(0.0, None))
    return {
        "initial_loss": initial,
        "final_loss": final,
        "improvement": (initial - final) / initial if initial else 0.0,
        "epoch_mean_loss": epoch_means,
        "largest_epoch_increase": worst[0] if worst[0] > 0 else 0.0,
        "largest_increase_at_epoch": worst[1] if worst[0] > 0 else None,
    }


def format_summary(summary: dict[str, Any]) -> str:
    if not summary:
        return "no loss was logged"
    change = 100 * summary["improvement"]
    text = (f"loss {summary['initial_loss']:.4f} -> {summary['final_loss']:.4f} "
            + (f"({change:.1f}% lower)" if change >= 0 else f"({-change:.1f}% higher)"))
    if summary["largest_increase_at_epoch"] is not None:
        text += (f"; largest epoch-to-epoch increase +{summary['largest_epoch_increase']:.4f} "
                 f"at epoch {summary['largest_increase_at_epoch']}")
    else:
        text += "; the epoch mean loss never increased"
    return text

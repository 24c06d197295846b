"""Plots people would rather look at than read: loss curves from a run's ``metrics.jsonl``."""

from __future__ import annotations

from pathlib import Path

from pretrain.metrics import LOSS_KEYS, read_metrics


def plot_loss_curves(metrics_path: Path, out_png: Path, title: str = "pretraining losses") -> Path | None:
    """Total and per-term losses against step, one line per phase; None when there is nothing to plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [r for r in read_metrics(metrics_path) if "step" in r and "loss" in r]
    if not records:
        return None
    keys = [k for k in LOSS_KEYS if any(k in r for r in records)]
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.4), squeeze=False)
    phases = sorted({str(r.get("phase", "main")) for r in records})
    for ax, key in zip(axes[0], keys, strict=True):
        for phase in phases:
            points = [
                (r["step"], r[key]) for r in records if key in r and str(r.get("phase", "main")) == phase
            ]
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, label=phase, linewidth=1.2)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if len(phases) > 1:
            ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_png.with_name(out_png.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(out_png)
    return out_png

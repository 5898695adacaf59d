"""Seaborn figures for the series' tidy tables.

Each function takes a DataFrame this package produced, draws one figure on a
new (or given) matplotlib axis and returns the axis, so a notebook can restyle
or save it.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns


def _ax(ax, figsize=(6, 3.5)):
    if ax is None:
        _, ax = plt.subplots(figsize=figsize)
    return ax


def confidence_histogram(scores: pd.DataFrame, by: str = "sport", threshold: float = 0.5, ax=None):
    """Histogram of the normalised probability of the true answer, one colour per group."""
    ax = _ax(ax)
    sns.histplot(data=scores, x="p_true_norm", hue=by if by in scores else None, bins=20, multiple="stack", ax=ax)
    ax.axvline(threshold, color="k", ls="--", lw=1)
    ax.set(xlabel="normalised probability of the true answer", ylabel="facts",
           title=f"What the model knows (dashed: known ≥ {threshold})")
    return ax


def accuracy_bars(table: pd.DataFrame, x: str, y: str = "accuracy", hue: str | None = None, ax=None, title: str = ""):
    """Bar chart of an accuracy-like column (0–1) against a category."""
    ax = _ax(ax)
    sns.barplot(data=table, x=x, y=y, hue=hue, ax=ax)
    ax.set(ylim=(0, 1), title=title)
    return ax


def save(fig_or_ax, path) -> None:
    """Save a figure (or an axis's figure) as PNG next to the metrics."""
    fig = fig_or_ax.figure if hasattr(fig_or_ax, "figure") and not isinstance(fig_or_ax, plt.Figure) else fig_or_ax
    fig.savefig(path, dpi=110, bbox_inches="tight")


def plot_metrics(agg: pd.DataFrame, metrics: tuple[str, ...] = ("edit_acc", "maintain_acc", "mcq_edit_acc",
                                                                 "relearn_acc", "probe_true", "lm_loss_change")):
    """Bars per metric of a grid's :func:`statistics.aggregate`: localization × task, with the 95% CI as error bars.

    The unedited model's row (``statistics.UNEDITED``) comes first when present, then the localizations in
    the registry's order. Returns the figure.
    """
    import numpy as np

    from .registry import LABELS
    from .statistics import UNEDITED

    present = [m for m in metrics if m in set(agg["metric"])]
    fig, axes = plt.subplots(1, len(present), figsize=(3.2 * len(present), 3.6), squeeze=False, sharey=False)
    names = list(dict.fromkeys(agg["localization"]))
    order = [n for n in (UNEDITED, *LABELS) if n in names] + [n for n in names if n not in LABELS and n != UNEDITED]
    task_names = list(dict.fromkeys(agg["task"]))
    width = 0.8 / max(1, len(task_names))
    for ax, m in zip(axes[0], present):
        sub = agg[agg["metric"] == m]
        for k, t in enumerate(task_names):
            s = sub[sub["task"] == t].set_index("localization").reindex(order)
            x = np.arange(len(order)) + (k - (len(task_names) - 1) / 2) * width
            ax.bar(x, s["mean"], width, yerr=s["ci95"].fillna(0), label=t, capsize=2)
        ax.set_xticks(np.arange(len(order)), order, rotation=60, ha="right", fontsize=8)
        ax.set_title(m, fontsize=10)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return fig

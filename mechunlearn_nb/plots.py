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

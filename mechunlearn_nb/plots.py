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


# ---------------------------------------------------------------------------
# Attacks and weight masks (tables of attacks.relearn, attacks.soft_prompt_attack, masking.mask_analysis)
# ---------------------------------------------------------------------------


def plot_relearning(curves: pd.DataFrame, half: str | None = "B (held out)", ax=None,
                    title: str = "Relearning: forget accuracy on the held-out half"):
    """Seaborn line plot of accuracy against relearning step, one line per localization.

    Args:
        curves: concatenated :func:`~mechunlearn_nb.attacks.relearn` tables.
        half: draw only this half (``None``: both, as line styles).
    """
    ax = _ax(ax, figsize=(7, 3.8))
    data = curves if half is None else curves[curves["half"] == half]
    if data.empty:
        raise ValueError(f"No rows for half {half!r} (halves: {sorted(curves['half'].unique())}).")
    sns.lineplot(data=data, x="step", y="accuracy", hue="localization", style="half" if half is None else None,
                 markers=True, dashes=half is None, ax=ax)
    ax.set(ylim=(-0.02, 1.02), xlabel="relearning steps", ylabel="accuracy of the true answer", title=title,
           xticks=sorted(data["step"].unique()))
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    return ax


def plot_soft_prompt(tables: pd.DataFrame, title: str = "Soft-prompt attack"):
    """Seaborn bars: accuracy without and with the learned prefix, per localization, on half B and the control.

    Returns:
        The ``sns.FacetGrid`` (one panel for half B, one for the held-out maintain facts when measured).
    """
    halves = [h for h in ("B (held out)", "maintain (held out)") if h in set(tables["half"])]
    data = tables[tables["half"].isin(halves)]
    g = sns.catplot(data=data, x="localization", y="accuracy", hue="stage", col="half", col_order=halves, kind="bar",
                    height=3.2, aspect=1.3)
    g.set(ylim=(0, 1))
    g.set_axis_labels("", "accuracy of the true answer")
    g.set_titles("{col_name}")
    for ax in g.axes.flat:
        ax.tick_params(axis="x", rotation=20)
    g.figure.suptitle(title, y=1.04)
    return g


def plot_mask(components: pd.DataFrame, ax=None, title: str = "Share of the edit's delta the mask keeps",
              shade: list[int] | None = None, shade_label: str = "fact lookup"):
    """Seaborn bars: per block, the share of the delta kept in the attention layer and the MLP.

    Args:
        components: :attr:`~mechunlearn_nb.masking.MaskResult.components`.
        shade: blocks to shade (e.g. the fact-lookup layers).
    """
    ax = _ax(ax, figsize=(8, 3.5))
    data = components[components["kind"].isin(["attn", "mlp"])]
    sns.barplot(data=data, x="layer", y="frac_kept", hue="kind", hue_order=["mlp", "attn"], ax=ax)
    layers = sorted(data["layer"].unique())
    if shade:
        pos = [layers.index(l) for l in shade if l in layers]
        if pos:
            ax.axvspan(min(pos) - 0.5, max(pos) + 0.5, color="tab:green", alpha=0.12, label=shade_label)
            ax.legend()
    ax.set(ylim=(0, 1.02), xlabel="block", ylabel="share of delta kept", title=title)
    return ax

"""Seaborn figures for the series' tidy tables.

Each function takes a DataFrame this package produced, draws one figure on a
new (or given) matplotlib axis and returns the axis (or the figure / seaborn
grid it made), so a notebook can restyle it, and :func:`save` writes it next
to the metrics. This is the view layer: it imports the computation modules,
none of them imports it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from . import latent, patching, tracing
from .io import atomic_path


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


def save(fig_or_ax, path) -> Path:
    """Save a figure as PNG next to the metrics: 110 dpi, tight bounding box, folder created if needed.

    Args:
        fig_or_ax: a matplotlib figure, an axis, or a seaborn grid (anything with a ``.figure``).
        path: the image file; its suffix gives the format. Written under a temporary name and
            renamed when complete, so an interrupted save never leaves half an image.

    Returns:
        The path written.
    """
    fig = fig_or_ax if isinstance(fig_or_ax, plt.Figure) else getattr(fig_or_ax, "figure", None)
    if not isinstance(fig, plt.Figure):
        raise TypeError(f"Cannot save a {type(fig_or_ax).__name__}: pass a matplotlib figure, an axis or a seaborn grid "
                        "(e.g. plt.gcf()).")
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format=path.suffix.lstrip(".") or None)
    return path


# ---------------------------------------------------------------------------
# Causal tracing and activation / attribution patching (tables of tracing and patching)
# ---------------------------------------------------------------------------


#: heatmap colours per component, as in ROME's figures
CMAPS = {"resid": "Purples", "mlp": "Greens", "attn": "Reds", "head": "Blues"}
COMPONENT_TITLES = {"resid": "residual stream", "mlp": "MLP output", "attn": "attention output", "head": "attention heads (last token)"}


def _heatmap(grid: pd.DataFrame, ax, cmap: str, vmax: float | None = None):
    """Sequential colours from 0 when effects are (nearly) all positive; diverging around 0 otherwise."""
    lo, hi = float(np.nanmin(grid.values)), float(np.nanmax(grid.values))
    hi = vmax if vmax is not None else hi
    if lo < -0.1 * max(hi, 1e-12):
        lim = max(abs(lo), abs(hi))
        sns.heatmap(grid, ax=ax, cmap="RdBu_r", center=0, vmin=-lim, vmax=lim, cbar_kws=dict(label="effect"))
    else:
        sns.heatmap(grid, ax=ax, cmap=cmap, vmin=0, vmax=hi, cbar_kws=dict(label="effect"))


def plot_trace(summary: pd.DataFrame, components: Sequence[str] = ("resid", "mlp", "attn"), axes=None,
               title: str = "Causal tracing", vmax: float | None = None):
    """ROME-style heatmaps: one panel per component, position kinds × layers, colour = effect.

    Returns:
        The matplotlib figure.
    """
    comps = [c for c in components if (summary["component"] == c).any()]
    if not comps:
        raise ValueError(f"None of {list(components)} in this table.")
    if axes is None:
        fig, axes = plt.subplots(len(comps), 1, figsize=(9, 1.9 * len(comps) + 0.6), squeeze=False)
        axes = axes[:, 0]
    fig = axes[0].figure
    for ax, comp in zip(axes, comps):
        grid = tracing.effect_grid(summary, comp)
        _heatmap(grid, ax, CMAPS.get(comp, "viridis"), vmax)
        ax.set(title=COMPONENT_TITLES.get(comp, comp), xlabel="layer", ylabel="")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_heads(summary: pd.DataFrame, ax=None, title: str = "Attention heads at the last token", cmap: str = "RdBu_r"):
    """Heatmap of every head's effect: heads × layers."""
    if ax is None:
        _, ax = plt.subplots(figsize=(9, 2.4))
    grid = tracing.effect_grid(summary, "head")
    lim = float(np.nanmax(np.abs(grid.values))) or 1.0
    sns.heatmap(grid, ax=ax, cmap=cmap, center=0, vmin=-lim, vmax=lim, cbar_kws=dict(label="effect"))
    ax.set(title=title, xlabel="layer", ylabel="head")
    return ax


def plot_fact(per_fact: pd.DataFrame, subject: str, component: str = "mlp", ax=None, cmap: str | None = None):
    """One fact's trace: its tokens (rows) × layers, colour = that fact's normalised effect."""
    rows = per_fact[(per_fact["subject"] == subject) & (per_fact["component"] == component)]
    if rows.empty:
        raise ValueError(f"No {component!r} rows for {subject!r}; traced subjects: {sorted(per_fact['subject'].unique())[:10]}.")
    rows = rows.drop_duplicates(["layer", "head", "position"])
    if component == "head":
        grid = rows.pivot_table(index="head", columns="layer", values="effect")
    else:
        rows = rows.assign(label=[f"{p}: {t}" for p, t in zip(rows["position"], rows["token"])])
        grid = rows.pivot_table(index="label", columns="layer", values="effect", sort=False)
        order = rows.drop_duplicates("label").sort_values("position")["label"]
        grid = grid.loc[order]
    if ax is None:
        _, ax = plt.subplots(figsize=(9, 0.35 * len(grid) + 1.2))
    _heatmap(grid, ax, cmap or CMAPS.get(component, "viridis"))
    r = rows.iloc[0]
    ax.set(title=f"{subject}: {COMPONENT_TITLES.get(component, component)} (p clean {r['clean']:.2f}, corrupted {r['corrupt']:.2f})",
           xlabel="layer", ylabel="")
    return ax


def plot_comparison(table: pd.DataFrame, ax=None, title: str = "Attribution vs activation patching"):
    """Scatter of attribution-patching effects against activation-patching effects, one colour per component."""
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 4.5))
    sns.scatterplot(data=table, x="effect_patching", y="effect_attribution", hue="component", style="position_kind",
                    ax=ax, s=30, alpha=0.8)
    lo = float(min(table["effect_patching"].min(), table["effect_attribution"].min()))
    hi = float(max(table["effect_patching"].max(), table["effect_attribution"].max()))
    ax.plot([lo, hi], [lo, hi], color="k", lw=0.8, ls="--")
    ax.set(xlabel="activation patching (effect)", ylabel="attribution patching (estimate)",
           title=f"{title}\nPearson r = {patching.correlation(table):.3f}")
    ax.legend(fontsize=7, loc="best")
    return ax


def plot_patching(summary: pd.DataFrame, components: Sequence[str] = ("resid", "attn", "mlp"), title: str = "Activation patching",
                  axes=None):
    """Heatmaps of a patching summary: one panel per component, position kinds × layers."""
    return plot_trace(summary, components=components, title=title, axes=axes)


# ---------------------------------------------------------------------------
# Probes and the fact-lookup evidence (tables of probing and localization)
# ---------------------------------------------------------------------------


def plot_probe_accuracy(accuracy: pd.DataFrame, majority: float | None = None, split: str = "test", ax=None,
                        title: str = "Linear probes for the sport, layer by layer"):
    """Seaborn line plot of probe accuracy against layer, one line per position.

    Args:
        accuracy: :attr:`LayerProbes.accuracy` (``layer, position, split, accuracy``).
        majority: draw the majority-class rate (chance for a constant guess) as a dashed line.
        split: which split to draw.
    """
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 3.5))
    data = accuracy[accuracy["split"] == split]
    if data.empty:
        raise ValueError(f"No {split!r} rows in the accuracy table (splits: {sorted(accuracy['split'].unique())}).")
    sns.lineplot(data=data, x="layer", y="accuracy", hue="position", style="position", markers=True, dashes=False, ax=ax)
    if majority is not None:
        ax.axhline(majority, color="grey", ls="--", lw=1, label="majority class")
        ax.legend()
    ax.set(ylim=(0, 1.02), xlabel="residual stream after this many blocks (0: embeddings)",
           ylabel=f"{split} accuracy", title=title)
    ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
    return ax


def plot_fact_lookup(evidence: pd.DataFrame, ax=None, title: str = "Fact-lookup evidence, block by block"):
    """The three kinds of evidence of :func:`localization.fact_lookup_evidence` on one axis, FLU shaded.

    Lines: the subject probe's rise (share of its gain reached after the block), the MLP's
    subject-position effect and the strongest head's final-position effect (both relative to
    their maximum); the chosen blocks are shaded.
    """
    if ax is None:
        _, ax = plt.subplots(figsize=(8, 3.6))
    cols = {"probe_rise": "subject probe: share of its gain", "final_rise": "final-token probe: share of its gain",
            "mlp_rel": "MLP effect at the subject (rel.)", "head_rel": "best head at the final token (rel.)"}
    long = evidence.melt(id_vars="layer", value_vars=[c for c in cols if c in evidence], var_name="evidence", value_name="value")
    long["evidence"] = long["evidence"].map(cols)
    long = long.dropna(subset=["value"])
    sns.lineplot(data=long, x="layer", y="value", hue="evidence", style="evidence", markers=True, dashes=False, ax=ax)
    chosen = evidence.loc[evidence["selected"], "layer"]
    if len(chosen):
        ax.axvspan(chosen.min() - 0.5, chosen.max() + 0.5, color="tab:green", alpha=0.12, label="FLU")
    dec = evidence.attrs.get("decision", {})
    if dec.get("extraction") is not None:
        ax.axvline(dec["extraction"], color="tab:red", ls=":", lw=1.2, label="extraction")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    ax.set(xlabel="block", ylabel="share of maximum", title=title, xticks=list(evidence["layer"]))
    return ax


# ---------------------------------------------------------------------------
# Latent knowledge after an edit (tables of latent)
# ---------------------------------------------------------------------------


def plot_latent(table: pd.DataFrame, col_wrap: int = 3, title: str | None = None):
    """Seaborn small multiples: per edit, the fraction of edited athletes read as ground truth / edit label per layer.

    Solid lines: after the edit; dashed: the base model (before). Returns the ``sns.FacetGrid``.
    """
    long = latent.long_form(table)
    if long.empty:
        raise ValueError("No edits in the table to plot.")
    g = sns.relplot(data=long, x="layer", y="fraction", hue="prediction", style="stage", col="localization",
                    col_wrap=min(col_wrap, long["localization"].nunique()), kind="line", markers=True,
                    style_order=["after", "before"], hue_order=["ground truth", "edit label"], height=2.6, aspect=1.25,
                    palette=["tab:blue", "tab:red"])
    g.set(ylim=(-0.02, 1.02))
    g.set_axis_labels("after block (0: embeddings)", "share of edited athletes")
    g.set_titles("{col_name}")
    if title:
        g.figure.suptitle(title, y=1.03)
    return g


# ---------------------------------------------------------------------------
# Robustness of an edit (tables of evaluation)
# ---------------------------------------------------------------------------


def plot_accuracies(tables: pd.DataFrame | list[pd.DataFrame], task: str | None = None, stage: str = "after"):
    """Seaborn bars: forget / edit / maintain accuracy per format, one colour per localization.

    Returns:
        The ``sns.FacetGrid``.
    """
    table = pd.concat(tables, ignore_index=True) if isinstance(tables, list) else tables
    rows = table[(table["stage"] == stage) & (((table["set"] == "forget") & table["metric"].isin(["acc_true", "acc_new"]))
                                               | ((table["set"] == "maintain") & (table["metric"] == "acc_true")))]
    if task is not None:
        rows = rows[rows["task"] == task]
    if rows.empty:
        raise ValueError("No accuracy rows to plot (check task/stage).")
    names = {("forget", "acc_true"): "forget acc (true answer) ↓", ("forget", "acc_new"): "edit acc (new answer) ↑",
             ("maintain", "acc_true"): "maintain acc ↑"}
    rows = rows.assign(measure=[names[(s, m)] for s, m in zip(rows["set"], rows["metric"])])
    g = sns.catplot(data=rows, x="format", y="value", hue="localization", col="measure", row="task" if task is None else None,
                    kind="bar", height=3, aspect=1.2, col_order=list(names.values()))
    g.set(ylim=(0, 1))
    g.set_axis_labels("", "accuracy")
    g.set_titles("{col_name}" if task is not None else "{row_name} · {col_name}")
    return g


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


# ---------------------------------------------------------------------------
# The comparison grid (tables of statistics.aggregate)
# ---------------------------------------------------------------------------


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


def plot_window_sweep(cells: pd.DataFrame, evidence: pd.DataFrame, metrics: Sequence[str],
                      evidence_columns: Sequence[str] = ("flu_selected", "probe_gain", "attribution", "causal_tracing"),
                      col_wrap: int = 4):
    """The window sweep (:mod:`.sweep`): the first panel draws each window's evidence (each column scaled to its
    largest value), the others each metric's mean over seeds ± 2 standard errors (no resampling: with two or three
    seeds a bootstrap would be far too narrow), against the window's first block. Returns the figure."""
    start = evidence.set_index("localization")["start"]
    data = cells.assign(start=cells["localization"].map(start))
    present = [m for m in metrics if m in data and data[m].notna().any()]
    n = len(present) + 1
    cols = min(col_wrap, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.3 * cols, 2.8 * rows), squeeze=False, sharex=True)
    flat = axes.ravel()
    ax = flat[0]
    for c in evidence_columns:
        v = evidence[c]
        if v.notna().any() and v.abs().max() > 0:
            ax.plot(evidence["start"], v / v.abs().max(), marker="o", ms=3, label=c)
    ax.set_title("evidence (scaled to its maximum)", fontsize=9)
    ax.legend(fontsize=7)
    for ax, m in zip(flat[1:], present):
        sns.lineplot(data=data, x="start", y=m, marker="o", errorbar=("se", 2), ax=ax)
        ax.set_title(m, fontsize=9)
        ax.set_ylabel("")
    for ax in flat[n:]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("window's first block")
    fig.tight_layout()
    return fig


#: short names of the claims' measures, for figures (a metric not listed keeps its column name)
MEASURE_NAMES = {"mcq_debiased_edit_acc": "debiased multiple choice", "mcq_edit_acc": "multiple choice, new answer",
                 "mcq_forget_acc": "multiple choice, old answer", "qa_forget_acc": "question-answer format",
                 "paraphrase_edit_acc": "paraphrases", "relearn_p_true_auc": "relearning (area)",
                 "relearn_p_true_max": "relearning (maximum)", "relearn_acc": "relearning (endpoint)",
                 "probe_true": "probes", "maintain_acc": "side effect: other facts",
                 "lm_loss_change": "side effect: general text"}


def plot_claims(verdicts: pd.DataFrame, title: str | None = None, better_if_higher: dict | None = None):
    """Forest plot of :func:`~mechunlearn_nb.reanalysis.verdicts_v2`: each tested claim's difference with its
    bootstrap interval, one panel per dataset, coloured by verdict; untestable and too-coarse claims are listed in
    the y labels with no interval.

    ``better_if_higher`` (``{metric: bool}``, e.g. :func:`~mechunlearn_nb.reanalysis.better_if_higher`): each
    difference is signed so that **right means fact lookup better** (a lower relearning area, a higher
    carry-over), every row on one reading; side effects alike (less damage: right). None: the raw differences.
    """
    data = verdicts.copy()
    names = data["metric"].map(lambda m: MEASURE_NAMES.get(m, m))
    data["row"] = names + " vs " + data["versus"].str.replace("OT (", "OT-", regex=False).str.rstrip(")")
    if better_if_higher is not None:
        missing = sorted(set(data.loc[data["diff"].notna(), "metric"]) - set(better_if_higher))
        if missing:
            raise ValueError(f"better_if_higher does not say which way is better for {missing}. Fix: add them, or "
                             f"pass None for the raw differences.")
        sign = data["metric"].map(lambda m: 1.0 if better_if_higher.get(m, True) else -1.0)
        low, high = data["low"] * sign, data["high"] * sign
        data["diff"], data["low"], data["high"] = data["diff"] * sign, np.minimum(low, high), np.maximum(low, high)
        xlabel = "← comparator better · fact lookup better →  (95% two-level bootstrap)"
        title = title or "Fact lookup against each comparator, paired by (task, seed)"
    else:
        xlabel = "FLU − comparator (95% two-level bootstrap)"
        title = title or "Fact lookup minus comparator, paired by (task, seed)"
    datasets = list(dict.fromkeys(data["dataset"]))
    fig, axes = plt.subplots(1, len(datasets), figsize=(6.5 * len(datasets), 0.32 * data.groupby("dataset").size().max() + 1.5),
                             squeeze=False)
    palette = {"supported": "tab:green", "contradicted": "tab:red", "not distinguishable": "tab:gray",
               "equivalent": "tab:blue", "equivalence not shown": "tab:orange"}
    for ax, ds in zip(axes[0], datasets):
        sub = data[data["dataset"] == ds].reset_index(drop=True)
        y = np.arange(len(sub))[::-1]
        for yi, r in zip(y, sub.itertuples()):
            if pd.notna(r.diff):
                c = palette.get(r.verdict, "k")
                ax.errorbar(r.diff, yi, xerr=[[r.diff - r.low], [r.high - r.diff]], fmt="o", color=c, capsize=3)
            else:
                ax.text(0, yi, r.verdict, va="center", ha="center", fontsize=7, color="dimgray",
                        bbox=dict(facecolor="white", edgecolor="none", pad=0.5))
        ax.axvline(0, color="k", lw=0.8, zorder=0)
        ax.set_yticks(y, sub["row"], fontsize=7)
        ax.set(xlabel=xlabel, title=f"{ds}")
    handles = [plt.Line2D([], [], marker="o", ls="", color=c, label=v) for v, c in palette.items()]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return fig


def plot_training(history: pd.DataFrame, accuracies: dict[str, str], steps: int | None = None, title: str = "",
                  axes=None):
    """Two panels of a training run as it goes: the loss, and accuracies, against the step.

    Args:
        history: rows of :func:`~mechunlearn_nb.train.train` (``step``, ``loss`` and accuracy columns; the rows
            so far, for a live curve: the accuracies are drawn where measured).
        accuracies: accuracy column → the label drawn for it (missing columns are skipped).
        steps: the run's length, to fix the x axis while it grows.
        title: the figure's title.
        axes: two matplotlib axes (default: a new figure).

    Returns:
        The matplotlib figure.
    """
    if axes is None:
        fig, axes = plt.subplots(1, 2, figsize=(8, 2.8))
    fig = axes[0].figure
    xmax = max(steps or 0, int(history["step"].max()) if len(history) else 1, 1)
    if "loss" in history:  # step 0 is a measurement only: no loss yet
        trained = history.dropna(subset=["loss"])
        axes[0].plot(trained["step"], trained["loss"], marker="o", ms=3, color="#444444")
    axes[0].set(xlabel="step", ylabel="loss", title="loss", xlim=(0, xmax))
    for col, label in accuracies.items():
        if col in history and history[col].notna().any():  # an unlearning edit has no new answer to draw
            measured = history.dropna(subset=[col])
            axes[1].plot(measured["step"], measured[col], marker="o", ms=3, label=label)
    axes[1].set(xlabel="step", ylabel="accuracy", title="accuracy", xlim=(0, xmax), ylim=(-0.05, 1.05))
    if axes[1].lines:
        axes[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig

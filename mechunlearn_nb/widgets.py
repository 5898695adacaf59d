"""ipywidgets explorers: type or pick something, see what the model does.

Every explorer computes with this package's functions and returns the widget
(display it as a cell's last expression). The computation behind each one is
also a plain function, so the same numbers can be had without a widget. This
is the view layer, with :mod:`.plots`: it imports the computation modules,
none of them imports it.
"""

from __future__ import annotations

from collections.abc import Sequence

import ipywidgets as widgets
import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from IPython.display import display

from . import evaluation, grid, plots, probing, statistics, tracing
from .evaluation import sport_probabilities
from .prompts import SPORTS_FORMATS


def athlete_explorer(model, default: str = "LeBron James", formats=("fact", "qa")) -> widgets.VBox:
    """A text box: type an athlete, see the sport probabilities in each format."""
    box = widgets.Text(value=default, description="Athlete:", continuous_update=False)
    out = widgets.Output()

    def show(*_):
        out.clear_output(wait=True)
        with out:
            try:
                table = sport_probabilities(model, box.value, formats)
            except ValueError as err:
                print(err)
                return
            display(table.pivot(index="sport", columns="format", values="probability").round(3))

    box.observe(show, names="value")
    show()
    return widgets.VBox([box, out])


def grid_explorer(out_dir) -> widgets.VBox:
    """Pick a task, a localization and a seed of a comparison grid: see that cell's metrics, its whole
    evaluation table before and after the edit, and its relearning curve (reads the saved cells only)."""
    cells = grid.saved_cells(out_dir)
    # 'initial' sizes each label to its text; the default fixed width cuts "Localization:" off
    pick = {col: widgets.Dropdown(options=list(dict.fromkeys(cells[col])), description=f"{col.capitalize()}:",
                                  style={"description_width": "initial"})
            for col in ("task", "localization", "seed")}
    out = widgets.Output()

    def show(*_):
        out.clear_output(wait=True)
        with out:
            key = {col: w.value for col, w in pick.items()}
            try:
                cell = grid.saved_cell(out_dir, **key)
            except FileNotFoundError as err:
                print(err)
                return
            m = cell["metrics"]
            display(pd.Series({k: m.get(k) for k in statistics.METRICS if pd.notna(m.get(k, float("nan")))}, name="metric").round(3)
                    .to_frame("value").T)
            try:
                display(grid.evaluation_table(cell).round(3))
            except ValueError as err:
                print(err)
            if cell["curve"]:
                fig, ax = plt.subplots(figsize=(5, 3))
                sns.lineplot(data=pd.DataFrame(cell["curve"]), x="step", y="accuracy", hue="half", marker="o", ax=ax)
                ax.set(title="relearning attack: true answer recovered", ylim=(-0.02, 1.02))
                plt.show()

    for w in pick.values():
        w.observe(show, names="value")
    show()
    return widgets.VBox([widgets.HBox(list(pick.values())), out])


# ---------------------------------------------------------------------------
# Causal tracing and patching: one fact at a time
# ---------------------------------------------------------------------------


def trace_explorer(per_fact: pd.DataFrame, components: Sequence[str] | None = None):
    """Pick a traced fact and a component: see that fact's trace."""
    subjects = list(dict.fromkeys(per_fact["subject"]))
    comps = list(components or [c for c in ("resid", "mlp", "attn", "head") if (per_fact["component"] == c).any()])
    pick = widgets.Dropdown(options=subjects, description="Athlete:")
    comp = widgets.ToggleButtons(options=comps, value=comps[min(1, len(comps) - 1)], description="Component:")
    out = widgets.Output()

    def show(*_):
        out.clear_output(wait=True)
        with out:
            ax = plots.plot_fact(per_fact, pick.value, comp.value)
            plt.show(ax.figure)

    pick.observe(show, names="value")
    comp.observe(show, names="value")
    show()
    return widgets.VBox([widgets.HBox([pick, comp]), out])


# ---------------------------------------------------------------------------
# Probes: one athlete at a time
# ---------------------------------------------------------------------------


def probe_explorer(lp: probing.LayerProbes, default: str | None = None):
    """Pick an athlete: each layer's probe probability of its true sport, at both positions."""
    probs = pd.concat([lp.true_label_probabilities(p) for p in lp.probes], ignore_index=True)
    athletes = sorted(lp.facts["athlete"])
    pick = widgets.Dropdown(options=athletes, value=default if default in athletes else athletes[0], description="Athlete:")
    out = widgets.Output()

    def show(*_):
        out.clear_output(wait=True)
        with out:
            rows = probs[probs["athlete"] == pick.value]
            fact = lp.facts[lp.facts["athlete"] == pick.value].iloc[0]
            _, ax = plt.subplots(figsize=(7, 3))
            sns.lineplot(data=rows, x="layer", y="p_true", hue="position", markers=True, style="position", dashes=False, ax=ax)
            ax.set(ylim=(0, 1.02), ylabel=f"probe p({fact[lp.label_column]})",
                   title=f"{pick.value} ({fact[lp.label_column]}; {fact['split']} half)",
                   xlabel="residual stream after this many blocks")
            plt.show()

    pick.observe(show, names="value")
    show()
    return widgets.VBox([pick, out])


# ---------------------------------------------------------------------------
# Edits: one athlete before and after
# ---------------------------------------------------------------------------


def edit_explorer(model, results: dict, athletes: list[str], formats=SPORTS_FORMATS):
    """A widget: pick an athlete and an edit, see the sport probabilities before and after, in every format."""
    if not athletes:
        raise ValueError("No athletes to choose from. Fix: pass the edited athletes, e.g. task.subjects.")
    who = widgets.Dropdown(options=list(athletes), description="Athlete:")
    which = widgets.Dropdown(options=list(results), description="Edit:")
    out = widgets.Output()

    def show(*_):
        out.clear_output(wait=True)
        with out:
            table = evaluation.athlete_before_after(model, who.value, {which.value: results[which.value]}, formats)
            g = sns.catplot(data=table, x="sport", y="probability", hue="model", col="format", kind="bar",
                            height=2.4, aspect=1.0, palette=["#999999", "#d62728"])
            g.set(ylim=(0, 1))
            plt.show()
            display(table.pivot_table(index=["format", "sport"], columns="model", values="probability").round(3))

    who.observe(show, names="value")
    which.observe(show, names="value")
    show()
    return widgets.VBox([widgets.HBox([who, which]), out])


# ---------------------------------------------------------------------------
# Attention patterns (circuitsvis views of tracing.attention_pattern)
# ---------------------------------------------------------------------------


def show_head(model, prompt: str, layer: int, head: int | None = None):
    """circuitsvis view of a layer's attention pattern on a prompt (one head, or all heads), each head
    labelled with its component name (``"a3.h2"``: head 2 of layer 3, as in localizations' component lists).

    The view carries circuitsvis's JavaScript inline (~1.3 MB) rather than loading it from a CDN, which
    circuitsvis does whenever it can reach the internet: the notebook then shows the same thing offline
    and online, and opening it never makes a request to another machine.

    Returns:
        An ``IPython.display.HTML`` object; display it (a cell's last expression) to see the view.
    """
    import circuitsvis.attention as cva
    from IPython.display import HTML

    from .models import Component

    tokens, pattern = tracing.attention_pattern(model, prompt, layer)
    heads = list(range(pattern.shape[0]))
    if head is not None:
        if not 0 <= head < pattern.shape[0]:
            raise ValueError(f"Head {head} does not exist (layer {layer} has {pattern.shape[0]} heads).")
        pattern, heads = pattern[head : head + 1], [head]
    view = cva.attention_heads(attention=pattern, tokens=tokens,
                               attention_head_names=[Component(layer, "head", h).name for h in heads])
    return HTML(view.local_src)


def head_explorer(model, prompts: dict[str, str], default_layer: int | None = None, default_head: int = 0):
    """Pick a prompt (by athlete), a layer and a head: see that head's attention pattern (circuitsvis).

    The pattern is drawn when a choice changes, not when the widget is created: a circuitsvis view
    carries its whole JavaScript bundle (~1.3 MB), which a headless run (papermill) does not
    handle inside a widget. Show the default head in a cell of its own with :func:`show_head`.
    """
    from .models import Component

    if not prompts:
        raise ValueError("No prompts to explore. Fix: pass {athlete: prompt}.")
    pick = widgets.Dropdown(options=list(prompts), description="Athlete:")
    layer = widgets.IntSlider(value=model.cfg.n_layers - 1 if default_layer is None else default_layer,
                              min=0, max=model.cfg.n_layers - 1, description="Layer:", continuous_update=False)
    head = widgets.Dropdown(options=list(range(model.cfg.n_heads)), value=default_head, description="Head:")
    out = widgets.Output()
    with out:
        print("Change the athlete, layer or head to draw its attention pattern "
              "(rows: query tokens, columns: key tokens).")

    def show(*_):
        out.clear_output(wait=True)
        with out:
            print(f"{pick.value!r}, head {Component(layer.value, 'head', head.value).name}")
            display(show_head(model, prompts[pick.value], layer.value, head.value))

    for w in (pick, layer, head):
        w.observe(show, names="value")
    return widgets.VBox([widgets.HBox([pick, layer, head]), out])

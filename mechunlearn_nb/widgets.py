"""ipywidgets explorers: type or pick something, see what the model does.

Every explorer computes with this package's functions and returns the widget
(display it as a cell's last expression). The computation behind each one is
also a plain function, so the same numbers can be had without a widget. This
is the view layer, with :mod:`.plots`: it imports the computation modules,
none of them imports it.
"""

from __future__ import annotations

import html
from collections.abc import Sequence

import ipywidgets as widgets
import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from IPython.display import display

from . import evaluation, grid, plots, probing, statistics, tracing
from .evaluation import sport_probabilities
from .prompts import SPORTS, SPORTS_FORMATS


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


# ---------------------------------------------------------------------------
# The unlearning lab: edit one fact live, attack it, revert it
# ---------------------------------------------------------------------------

#: edit accuracies of :func:`.editing.edit`'s history, as the lab's curve labels them
EDIT_CURVE = {"forget_acc": "fact: true answer", "edit_acc": "fact: new answer", "maintain_acc": "maintain facts"}
#: the relearning attack's halves in the lab (:meth:`.lab.Lab.attack`)
ATTACK_CURVE = {"A (trained)": "related facts (trained)", "B (held out)": "the edited fact",
                "maintain (held out)": "neighbours (control)"}
#: the errors the lab shows in the widget instead of a traceback: the package's bad-input errors
#: (ParameterError and MultiTokenAnswerError are ValueErrors) and "no edit yet"
LAB_ERRORS = (ValueError, TypeError, RuntimeError)


def unlearning_lab(model=None, *, lab=None, default: str = "LeBron James", target: str = "forget",
                   localization: str = "fact lookup", steps: int = 5, **lab_kwargs) -> widgets.VBox:
    """The unlearning lab: pick a known fact, a target, a localization and steps; **Edit**, **Attack**, **Revert**.

    **Edit** trains through :meth:`.lab.Lab.edit` with a live loss / accuracy curve and a progress bar,
    then shows the report (:meth:`.lab.Lab.report`: every format, the neighbours, general text, before
    and after) beside the curve. **Attack** runs the relearning attack on related facts with its curve;
    **Revert** removes the edit and says whether every weight is the base model's again, bit for bit.
    Changing the fact reverts the edit first. Bad input (a fact the model does not know, a target of
    several tokens, zero steps) shows the package's error message in the widget.

    Args:
        model: the bridge; ignored when ``lab`` is given.
        lab: a :class:`.lab.Lab` (default: ``Lab(model, **lab_kwargs)``).
        default, target, localization, steps: the controls' starting values.
        lab_kwargs: :class:`.lab.Lab` arguments (``dataset``, ``components``, ``known`` ...).

    Returns:
        The widget; ``.lab`` is the :class:`.lab.Lab` and ``.controls`` a dict of its controls and
        outputs (``fact, target, localization, steps, edit, attack, revert, status, progress, curve, report``),
        so a test or a notebook can drive it; ``.shown`` holds the tables behind what it shows now
        (``curve``: the live curve's rows, ``report``, ``attack``).
    """
    from . import lab as _lab

    if lab is None:
        if model is None:
            raise ValueError("unlearning_lab needs a model (or a lab). Fix: unlearning_lab(model).")
        lab = _lab.Lab(model, **lab_kwargs)
    facts = lab.facts
    wide = {"description_width": "initial"}
    fact = widgets.Combobox(value=default if default in facts else facts[0], options=facts, ensure_option=False,
                            description="Fact:", style=wide, continuous_update=False)
    tgt = widgets.Combobox(value=target, options=[_lab.FORGET, *(["golf", *SPORTS] if lab.dataset == "sports" else [])],
                           description="Target:", style=wide, continuous_update=False)
    loc = widgets.Dropdown(options=lab.localizations, value=localization, description="Localization:", style=wide)
    n_steps = widgets.IntText(value=steps, description="Steps:", style=wide, layout=widgets.Layout(width="130px"))
    buttons = {name: widgets.Button(description=name, button_style=style, icon=icon)
               for name, style, icon in (("Edit", "primary", "pencil"), ("Attack", "warning", "bolt"),
                                         ("Revert", "", "undo"))}
    status = widgets.HTML(value="Pick a fact, a target and a localization, then press <b>Edit</b>.")
    progress = widgets.IntProgress(value=0, min=0, max=max(steps, 1), description="", bar_style="info",
                                   layout=widgets.Layout(width="320px"))
    curve = widgets.Output(layout=widgets.Layout(width="55%"))
    report = widgets.Output(layout=widgets.Layout(width="45%", overflow="auto"))
    busy = {"on": False}
    shown: dict[str, pd.DataFrame] = {}  # what the widget shows now, as tables (curve, report, attack)

    def say(message: str, kind: str = "info") -> None:
        colour = {"info": "inherit", "error": "#b00020", "ok": "#1b7f3b"}[kind]
        status.value = f"<span style='color:{colour}'>{message}</span>"

    def draw(rows: list[dict], accuracies: dict[str, str], total: int, title: str) -> None:
        shown["curve"] = pd.DataFrame(rows)
        fig = plots.plot_training(shown["curve"], accuracies, steps=total, title=title)
        curve.clear_output(wait=True)
        with curve:
            display(fig)
        plt.close(fig)

    def live(accuracies: dict[str, str], total: int, title: str):
        rows: list[dict] = []
        progress.max, progress.value = max(total, 1), 0

        def on_step(row: dict) -> None:
            rows.append(row)
            progress.value = int(row["step"])
            draw(rows, accuracies, total, title)

        return on_step

    def guarded(action):
        def run(_=None):
            if busy["on"]:
                return
            busy["on"] = True
            for b in buttons.values():
                b.disabled = True
            try:
                action()
            except LAB_ERRORS as err:
                say(html.escape(str(err), quote=False), "error")
            finally:
                busy["on"] = False
                for b in buttons.values():
                    b.disabled = False
        return run

    def do_edit():
        total = n_steps.value
        # bad input (fact, target, steps) fails before anything is reverted or trained
        lab.config(loc.value, lab.task(fact.value, tgt.value)[0].meta["target"], total)
        say(f"Editing {html.escape(fact.value)} → {html.escape(tgt.value)} through {loc.value}, {total} steps ...")
        report.clear_output()
        result = lab.edit(fact.value, tgt.value, loc.value, total,
                          on_step=live(EDIT_CURVE, total, f"edit: {fact.value} → {tgt.value} ({loc.value})"))
        say(f"Edited in {result.manifest['seconds']:.1f} s; measuring the report ...")
        table = shown["report"] = lab.report()
        with report:
            display(table.round(3))
            if table.attrs["untestable"]:
                print(f"left out (the unedited model gets them wrong): {', '.join(table.attrs['untestable'])}")
        say(f"Edit applied ({result.manifest['seconds']:.1f} s; report {table.attrs['seconds']:.1f} s). "
            "Attack it, or revert it.", "ok")

    def do_attack():
        cur = lab._require_edit("Attack")
        config_steps = _lab.ATTACK_SETTINGS["steps"]
        say(f"Relearning attack on {len(cur.related)} related facts, {config_steps} steps ...")
        table = shown["attack"] = lab.attack(on_step=live(ATTACK_CURVE, config_steps, f"relearning attack on {cur.task.name}"))
        b = table[table["half"] == "B (held out)"]["accuracy"]
        say(f"Attack done: the edited fact's true answer is {'back' if b.iloc[-1] >= 0.5 else 'still gone'} "
            f"after {config_steps} steps (accuracy {b.iloc[0]:.0f} → {b.iloc[-1]:.0f}). The edit stays applied.", "ok")

    def do_revert():
        out = lab.revert()
        progress.value = 0
        shown.pop("report", None)
        report.clear_output()
        if out["restored"]:
            say(f"Reverted: the model is restored to the base model, every weight equal bit for bit "
                f"(checked in {out['seconds']:.1f} s).", "ok")
        else:
            say(f"Reverted, but {len(out['differ'])} weight tensor(s) differ from the base model: "
                f"{html.escape(', '.join(out['differ'][:3]))}. Fix: reload the model.", "error")

    def fact_changed(change):
        if lab.current is not None and change["new"] != change["old"]:
            guarded(do_revert)()

    buttons["Edit"].on_click(guarded(do_edit))
    buttons["Attack"].on_click(guarded(do_attack))
    buttons["Revert"].on_click(guarded(do_revert))
    fact.observe(fact_changed, names="value")
    box = widgets.VBox([widgets.HBox([fact, tgt]), widgets.HBox([loc, n_steps]),
                        widgets.HBox([*buttons.values(), progress]), status, widgets.HBox([curve, report])])
    box.lab = lab
    box.shown = shown
    box.controls = dict(fact=fact, target=tgt, localization=loc, steps=n_steps, edit=buttons["Edit"],
                        attack=buttons["Attack"], revert=buttons["Revert"], status=status, progress=progress,
                        curve=curve, report=report)
    return box

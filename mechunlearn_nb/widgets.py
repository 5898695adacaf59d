"""ipywidgets explorers: type or pick something, see what the model does.

Every explorer computes with this package's functions and returns the widget
(display it as a cell's last expression). The computation behind each one is
also a plain function, so the same numbers can be had without a widget.
"""

from __future__ import annotations

import ipywidgets as widgets
import pandas as pd
from IPython.display import display

from .prompts import SPORTS_FORMATS, sports_prompts
from .scoring import score_set


def sport_probabilities(model, athlete: str, formats=SPORTS_FORMATS) -> pd.DataFrame:
    """Normalised probability of each sport for one athlete, in every sports format (tidy)."""
    athlete = athlete.strip()
    if not athlete:
        raise ValueError("Type an athlete's name.")
    facts = pd.DataFrame({"athlete": [athlete]})
    rows = []
    for fmt in formats:
        sc = score_set(model, sports_prompts(facts, fmt), progress=False)
        for label, p in zip(sc["labels"][0], sc["probs_norm"][0]):
            rows.append(dict(format=fmt, sport=label, probability=float(p)))
    return pd.DataFrame(rows)


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
    import matplotlib.pyplot as plt
    import seaborn as sns

    from . import grid, statistics

    cells = grid.saved_cells(out_dir)
    pick = {col: widgets.Dropdown(options=list(dict.fromkeys(cells[col])), description=f"{col.capitalize()}:")
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

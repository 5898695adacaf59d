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

"""Expected values of every notebook's metrics, with tolerances: the one place they live.

Each notebook writes ``metrics.json``; :func:`check` compares it with the ranges
below. ``"fast"`` ranges are for the small runs of the tests (``FAST=True``),
``"full"`` ranges for the full-size run on the embedded Gemma 3 270M (the
README's run command checks them too, so a reader can tell whether their run
reproduced). Ranges come from measured runs, widened to cover seed and
platform noise; a metric listed here but missing from ``metrics.json`` fails.
"""

from __future__ import annotations

import math

import pandas as pd

Range = tuple[float, float]

EXPECTED: dict[str, dict[str, dict[str, Range]]] = {
    "00_quickstart": {
        "fast": {
            "n_scored": (200, 200),
            "accuracy": (0.45, 0.75),
            "frac_known": (0.25, 0.55),
            "acc_qa_known": (0.6, 1.0),
            "load_seconds": (0, 120),
        },
        "full": {
            "n_scored": (1559, 1559),
            "n_known": (540, 680),
            "n_known_basketball": (150, 215),
            "accuracy": (0.53, 0.63),
            "acc_qa_known": (0.75, 1.0),
        },
    },
}


def check(notebook: str, metrics: dict, size: str = "fast", model: str | None = None) -> pd.DataFrame:
    """Compare a notebook's metrics with its expected ranges.

    Args:
        notebook: the notebook's stem (``"00_quickstart"``).
        metrics: the content of its ``metrics.json``.
        size: ``"fast"`` or ``"full"``.
        model: ranges hold for the embedded model only; for another model nothing is checked.

    Returns:
        One row per expected metric: ``metric, value, low, high, ok``.
    """
    if notebook not in EXPECTED:
        raise KeyError(f"No expected values for notebook {notebook!r}. Fix: add an entry to mechunlearn_nb/expected.py.")
    if model not in (None, "gemma-3-270m", "embedded"):
        return pd.DataFrame(columns=["metric", "value", "low", "high", "ok"])
    rows = []
    for metric, (low, high) in EXPECTED[notebook].get(size, {}).items():
        value = metrics.get(metric)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value) and low <= value <= high
        rows.append(dict(metric=metric, value=value, low=low, high=high, ok=bool(ok)))
    return pd.DataFrame(rows, columns=["metric", "value", "low", "high", "ok"])

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
    # FAST: 2 facts (Patrick Corbin, Khris Middleton), seed 0; measured values in the comments
    "01_causal_tracing": {
        "fast": {
            "n_facts": (2, 2),
            "p_clean": (0.05, 0.4),                      # measured 0.140
            "p_corrupt": (0.0, 0.02),                    # 0.0011: the noise wipes the subject out
            "resid_last_layer_last_effect": (0.999, 1.001),  # restoring the final state = the clean run
            "peak_attn_last_layer": (9, 15),             # 12
            "peak_attn_last_effect": (0.03, 0.5),        # 0.105
            "peak_mlp_last_subject_layer": (0, 8),       # 3
            "top_head_layer": (8, 16),                   # 11
        },
    },
    # FAST: 2 facts patched both ways, 12 attributed, seed 0; measured twice, identical values
    "02_attribution_patching": {
        "fast": {
            "n_facts": (2, 2),
            "n_facts_ap": (12, 12),
            "ld_clean": (0.3, 3.0),                      # measured 1.006
            "ld_corrupt": (-5.0, -0.3),                  # -1.941
            "resid_last_layer_last_effect": (0.999, 1.001),
            "corr_ap_vs_patching": (0.4, 0.95),          # 0.697
            "corr_head": (0.8, 1.0),                     # 0.985
            "corr_attn": (0.4, 1.0),                     # 0.734
            "peak_mlp_last_subject_layer": (1, 6),       # 3
            "peak_mlp_last_subject_effect": (0.2, 1.0),  # 0.677
            "top_head_layer": (9, 15),                   # 12
            "output_tracing_n_params": (1, 30_000_000),  # 9,503,232 (a12, m3, m0) under a 3-MLP budget
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

"""Expected values of every notebook's metrics, with tolerances: the one place they live.

Each notebook writes ``metrics.json``; :func:`check` compares it with the ranges
of ``expected.toml`` beside this file. ``"fast"`` ranges are for the small runs of the tests (``FAST=True``),
``"full"`` ranges for the full-size run on the embedded Gemma 3 270M (the
README's run command checks them too, so a reader can tell whether their run
reproduced). Ranges come from measured runs, widened to cover seed and
platform noise; a metric listed here but missing from ``metrics.json`` fails.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pandas as pd

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

Range = tuple[float, float]

#: the file the ranges live in: ``[NOTEBOOK.fast]`` / ``[NOTEBOOK.full]`` tables of ``metric = [low, high]``,
#: with the measured values in comments
EXPECTED_FILE = Path(__file__).with_name("expected.toml")


def _load(path: Path = EXPECTED_FILE) -> dict[str, dict[str, dict[str, Range]]]:
    with open(path, "rb") as f:
        raw = tomllib.load(f)
    return {nb: {size: {k: (v[0], v[1]) for k, v in ranges.items()} for size, ranges in sizes.items()}
            for nb, sizes in raw.items()}


EXPECTED: dict[str, dict[str, dict[str, Range]]] = _load()


#: the model every range above was measured on
REFERENCE_MODEL = "gemma-3-270m"
COLUMNS = ["metric", "value", "low", "high", "ok", "status"]
NO_REFERENCE = "no reference"


def reference_for(model: str | None) -> str | None:
    """The model whose expected values apply to ``model`` (a name as given to ``load_model`` or recorded in
    ``metrics.json``): the embedded Gemma 3 270M under any of its aliases (``models.EMBEDDED_ALIASES``:
    None, ``"embedded"``, ``"google/gemma-3-270m"`` ...); None for any other model, which has no reference."""
    from .models import EMBEDDED_ALIASES

    return REFERENCE_MODEL if model in EMBEDDED_ALIASES else None


def check(notebook: str, metrics: dict, size: str = "fast", model: str | None = None) -> pd.DataFrame:
    """Compare a notebook's metrics with its expected ranges.

    Args:
        notebook: the notebook's stem (``"00_quickstart"``).
        metrics: the content of its ``metrics.json``.
        size: ``"fast"`` or ``"full"``.
        model: the model the notebook ran (None: the embedded one). The ranges were measured on the embedded
            model (:func:`reference_for`); another model has no reference and nothing is compared.

    Returns:
        One row per expected metric: ``metric, value, low, high, ok, status`` with ``status`` one of
        ``"ok"``, ``"out of range"``, ``"missing"`` (not a number in ``metrics``) or ``"no reference"``
        (``low``/``high`` NaN and ``ok`` None: nothing to compare with). :func:`outcome` sums them up.
    """
    if notebook not in EXPECTED:
        raise KeyError(f"No expected values for notebook {notebook!r}. Fix: add a [NOTEBOOK.fast] table to mechunlearn_nb/expected.toml.")
    if size not in ("fast", "full"):
        raise ValueError(f"size must be 'fast' or 'full', got {size!r}.")
    ranges = EXPECTED[notebook].get(size, {})
    if reference_for(model) is None:
        rows = [dict(metric=m, value=metrics.get(m), low=math.nan, high=math.nan, ok=None, status=NO_REFERENCE)
                for m in ranges]
        return pd.DataFrame(rows, columns=COLUMNS)
    rows = []
    for metric, (low, high) in ranges.items():
        value = metrics.get(metric)
        number = isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)
        ok = number and low <= value <= high
        rows.append(dict(metric=metric, value=value, low=low, high=high, ok=bool(ok),
                         status="ok" if ok else "out of range" if number else "missing"))
    return pd.DataFrame(rows, columns=COLUMNS)


def outcome(checks: pd.DataFrame) -> str:
    """``"reproduced"`` (every expected metric in range), ``"not reproduced"`` (one or more out of range or
    missing) or ``"no reference"`` (no expected values for this model, notebook or size) for :func:`check`'s rows."""
    if len(checks) == 0 or (checks["status"] == NO_REFERENCE).all():
        return NO_REFERENCE
    return "reproduced" if checks["ok"].astype(bool).all() else "not reproduced"

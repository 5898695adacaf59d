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


#: ranges_from_cells: counts that follow from the plan (kept exact), counts that follow from measurements, the
#: metrics that are a minimum or mean over every cell (and the cell column behind each), and times (no range)
EXACT = ("n_cells", "n_verdicts", "family_size", "evaluation_rows", "n_windows", "width", "n_primary", "n_correlations")
MEASURED_COUNTS = ("n_tested", "n_untestable", "n_testable_instruments", "n_excluded", "n_incomplete",
                   "n_correlations_with_rho")
OVER_ALL = {"min_edit_acc": "edit_acc", "mean_edit_acc": "edit_acc", "min_maintain_acc": "maintain_acc"}
NO_RANGE = ("seconds", "grid_seconds", "cell_seconds_mean", "sweep_seconds")
#: ranges_from_cells: the share of a localization's cells whose edit completed (notebook 10's ``complete__<window>``)
SHARE_OF_CELLS = "complete"


def _floor_of(metric: str) -> float:
    return 0.02 if "loss" in metric else 0.05


def _bounded(metric: str) -> bool:
    """Accuracies and probabilities live in [0, 1]; a loss change does not."""
    return "loss" not in metric


def ranges_from_cells(metrics: dict, cells: pd.DataFrame, completeness: float | None = None
                      ) -> tuple[list[tuple[str, float, float, str]], list[str]]:
    """Expected ranges of a full-size study's metrics, derived from its cells (``scripts/expected_ranges.py`` prints
    them as TOML).

    How each range is derived (fixed here, before the study's last cells; the same rule for every metric):

    - counts that follow from the plan (cells, verdicts, Holm's family, evaluation rows): the value itself;
    - counts that follow from measurements (tests with a p-value, untestable verdicts, testable instruments, excluded
      edits): the value ± max(1, 10% of it);
    - a localization's mean of a metric over its cells (``edit_acc__fact-lookup`` ...): the mean ± max(floor,
      3 standard errors over those cells); the floor is 0.05 for an accuracy or probability (3 facts of 64), 0.02
      for a loss change;
    - a minimum or mean over every cell (``min_edit_acc`` ...): the value ± max(floor, one standard deviation over the
      cells);
    - the share of a localization's cells whose edit completed (``complete__<window>``, the window sweep's): the share
      ± one cell's worth (1 / its cells);
    - accuracies and probabilities are clipped to [0, 1]; times (``seconds`` ...) and settings get no range.

    A localization's mean that differs from its cells' mean raises ValueError (metrics written from other cells).
    A range that would span all of [0, 1] is not returned but named in ``refused`` (it could not fail): such a metric
    needs another rule or is left out.

    Args:
        metrics: the study's ``metrics.json`` (notebook 09 run on its folder).
        cells: its cells, one row each (``grid.saved_cells``).
        completeness: where the study's means read complete edits only (the window sweep's: notebook 10 leaves out
            cells whose ``train_acc`` is below the plan's ``edit_completeness``), that threshold: a localization's
            means and their spread are then taken over those cells, its ``complete__`` share over all of them.
            None: every cell (notebook 09's).

    Returns:
        ``(rows, refused)``: rows ``(metric, low, high, comment)`` in the order of ``metrics``, the comment giving the
        measured value and the spread behind the range; ``refused`` names the metrics whose range would span all of
        [0, 1].
    """
    from .io import slug

    by_slug = {slug(loc): loc for loc in cells["localization"].unique()}
    if completeness is not None and "train_acc" not in cells:
        raise ValueError("completeness is given but the cells have no 'train_acc'. Fix: pass the sweep's saved cells "
                         "(grid.saved_cells of its folder), or completeness=None.")
    kept = cells if completeness is None else cells[cells["train_acc"] >= completeness]
    rows, refused = [], []
    for key, value in metrics.items():
        if key in NO_RANGE or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if isinstance(value, float) and math.isnan(value):
            continue
        if key in EXACT:
            rows.append((key, value, value, f"{value}: follows from the plan"))
            continue
        if key in MEASURED_COUNTS:
            half = max(1, math.ceil(0.1 * value))
            rows.append((key, max(0, value - half), value + half, f"{value}"))
            continue
        metric, _, part = key.partition("__")
        if key in OVER_ALL:
            v = cells[OVER_ALL[key]].dropna()
            half, how = max(_floor_of(key), float(v.std(ddof=1))), f"sd {v.std(ddof=1):.3f} over {len(v)} cells"
        elif metric == SHARE_OF_CELLS and completeness is not None and part in by_slug:
            n = int((cells["localization"] == by_slug[part]).sum())
            share = float((cells.loc[cells["localization"] == by_slug[part], "train_acc"] >= completeness).mean())
            if not math.isclose(value, share, abs_tol=1e-9):
                raise ValueError(f"{key} = {value} in metrics.json, but {share} of its {n} cells completed: the metrics "
                                 f"were written from other cells. Fix: rerun the notebook on this folder first.")
            half, how = 1 / n, f"{n} cells"
        elif part in by_slug and metric in cells:
            v = kept.loc[kept["localization"] == by_slug[part], metric].dropna()
            if len(v) < 2:
                continue
            if not math.isclose(value, float(v.mean()), rel_tol=1e-9, abs_tol=1e-12):
                raise ValueError(f"{key} = {value} in metrics.json, but its cells' mean is {float(v.mean())}: the metrics "
                                 f"were written from other cells. Fix: rerun the notebook (09, or 10 for a sweep) on this folder first.")
            se = float(v.std(ddof=1)) / math.sqrt(len(v))
            half, how = max(_floor_of(metric), 3 * se), f"{len(v)} cells, se {se:.3f}"
        else:
            continue
        low, high = value - half, value + half
        if _bounded(key):
            low, high = max(0.0, low), min(1.0, high)
            if low <= 0.0 and high >= 1.0:
                refused.append(key)
                continue
        rows.append((key, round(float(low), 3), round(float(high), 3), f"{value:.3f} ({how})"))
    return rows, refused

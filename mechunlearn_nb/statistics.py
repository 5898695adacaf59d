"""Statistics of a comparison grid: intervals over seeds, the paper's table, and its claims checked.

The grid (:mod:`.grid`) saves one row of metrics per (task, localization, seed) cell. Here they become

- :func:`aggregate`: mean ± 95% confidence interval over seeds (Student t), per task, localization and
  metric — with :func:`unedited` appended, the unedited model's own scores as a reference row;
- :func:`table`: the paper-style wide table (``mean ± ci`` strings);
- :func:`verdicts`: each of the paper's claims — fact lookup more robust than output tracing on multiple
  choice, on paraphrases, on relearning, on probes, with comparable side effects — checked pair by pair on
  the cells, with the numbers and a verdict that could have gone the other way.

Everything here reads plain DataFrames (``saved_cells`` of a grid, or hand-made rows): no model needed.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from . import registry
from .tasks import dataset_of

METRICS = ("forget_acc", "edit_acc", "maintain_acc", "mcq_forget_acc", "mcq_edit_acc", "paraphrase_edit_acc",
           "paraphrase_forget_acc", "relearn_acc", "probe_true", "lm_loss_change")
#: for each metric, whether a higher value means a better (more robust / less damaging) edit
HIGHER_IS_BETTER = {"forget_acc": False, "edit_acc": True, "maintain_acc": True, "mcq_forget_acc": False,
                    "mcq_edit_acc": True, "paraphrase_edit_acc": True, "paraphrase_forget_acc": False,
                    "relearn_acc": False, "probe_true": False, "lm_loss_change": False}


def aggregate(cells: pd.DataFrame, metrics: tuple[str, ...] = METRICS) -> pd.DataFrame:
    """Mean ± 95% confidence interval over seeds, per (task, localization, metric) (tidy).

    The interval is Student's t over the seeds (``half_width = t(0.975, n-1) · sd / √n``); with one
    seed it is NaN: a single run says nothing about its own noise.
    """
    rows = []
    present = [m for m in metrics if m in cells]
    for (task, loc), g in cells.groupby(["task", "localization"], sort=False):
        for m in present:
            v = g[m].dropna().to_numpy(dtype=float)
            if len(v) == 0:
                continue
            mean, half = mean_ci95(v)
            rows.append(dict(task=task, localization=loc, metric=m, mean=mean, ci95=half, n_seeds=len(v)))
    return pd.DataFrame(rows)


def mean_ci95(values) -> tuple[float, float]:
    """Mean and half-width of its 95% Student-t interval (``t(0.975, n-1) · sd / √n``); NaN half-width for
    one value, NaN both for none."""
    from scipy import stats

    v = np.asarray(values, dtype=float)
    if len(v) == 0:
        return np.nan, np.nan
    half = float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else np.nan
    return float(v.mean()), half


UNEDITED = "unedited model"
#: metric ← the field of a cell that holds the same score measured on the unedited model
BASE_OF = {"forget_acc": "base_forget_acc", "maintain_acc": "base_maintain_acc", "mcq_forget_acc": "base_mcq_forget_acc",
           "mcq_edit_acc": "base_mcq_edit_acc", "probe_true": "probe_true_base"}


def unedited(cells: pd.DataFrame) -> pd.DataFrame:
    """The unedited model's scores on each (task, seed), as rows of localization ``"unedited model"``.

    Every cell records the scores of the model before its edit (the same for all localizations of a task
    and seed); this collects them under the metric names, so that appended to the cells they give the table
    and the bars a reference row: ``aggregate(pd.concat([cells, unedited(cells)]))``. Metrics without a
    before-edit value (edit, relearning, loss change) stay empty; cells saved before a field was recorded
    are skipped for it.
    """
    cols = [c for c in BASE_OF.values() if c in cells]
    if not cols:
        return pd.DataFrame(columns=["task", "localization", "seed"])
    first = cells.groupby(["task", "seed"], sort=False)[cols].first()  # first recorded value of each field
    return first.rename(columns={v: k for k, v in BASE_OF.items()}).reset_index().assign(localization=UNEDITED)


def table(agg: pd.DataFrame, task: str | None = None) -> pd.DataFrame:
    """The paper-style wide table: rows (task, localization), columns metrics, cells ``mean ± ci``."""
    sub = agg if task is None else agg[agg["task"] == task]
    fmt = sub.assign(cell=[f"{m:.2f}" + ("" if np.isnan(c) else f" ± {c:.2f}") for m, c in zip(sub["mean"], sub["ci95"])])
    wide = fmt.pivot_table(index=["task", "localization"], columns="metric", values="cell", aggfunc="first", sort=False)
    return wide.reindex(columns=[m for m in METRICS if m in wide.columns])


#: multiple choice offers four options (A-D)
MCQ_CHANCE = 0.25

CLAIMS = (
    ("FLU edits generalise to multiple choice better than OT edits", "mcq_edit_acc"),
    ("FLU edits leave less of the true answer in multiple choice than OT edits", "mcq_forget_acc"),
    ("FLU edits generalise to paraphrases better than OT edits (CounterFact)", "paraphrase_edit_acc"),
    ("FLU edits resist relearning better than OT edits", "relearn_acc"),
    ("FLU edits leave less latent knowledge for probes than OT edits", "probe_true"),
)
SIDE_EFFECTS = (("maintain accuracy is comparable", "maintain_acc", 0.1),
                ("general-text loss change is comparable", "lm_loss_change", 0.1))


def _mcq_note(cells: pd.DataFrame) -> str:
    """Which tasks' MCQ numbers follow a preferred option rather than the fact (unedited accuracy ≤ chance)."""
    if "base_mcq_forget_acc" not in cells or not cells["base_mcq_forget_acc"].notna().any():
        return ""
    per_task = cells.groupby(["task", "seed"], sort=False)["base_mcq_forget_acc"].first().groupby(level=0, sort=False).mean()
    low = per_task[per_task <= MCQ_CHANCE]
    if low.empty:
        return ""
    values = ", ".join(f"{v:.2f} ({t})" for t, v in low.items())
    others = "" if len(low) == per_task.notna().sum() else "; on the other tasks it is above chance"
    return (f"before any edit the model answers this share of these questions right: {values} (chance "
            f"{MCQ_CHANCE:.2f}): its MCQ answers on these tasks follow a preferred option, not the fact{others}")


def verdicts(cells: pd.DataFrame, flu: str = registry.FLU.label,
             ot: tuple[str, ...] = (registry.entry("ot_causal_tracing").label,
                                    registry.entry("ot_attribution_patching").label),
             by_dataset: bool = True) -> pd.DataFrame:
    """The paper's claims checked on this run, with numbers.

    For each dataset (``dataset`` column: the paper makes its claims on Sports Facts and on CounterFact
    separately), each claim and each output-tracing variant, the two localizations are compared pair by pair:
    on each (task, seed) both ran — the same facts to edit, the same data — the difference FLU − OT of the
    metric; ``diff_mean ± diff_ci95`` (Student t) over those pairs, pooled over the dataset's tasks and
    seeds. **supported** when FLU is better and the interval excludes zero, **direction only** when it is
    better within noise, **not supported** otherwise, **no data** when no pair has a value (e.g. MCQ on a
    task without it). Side effects are **comparable** when the mean difference is under the tolerance.
    ``flu_mean``/``ot_mean`` (± their own intervals) are over the same pairs; ``n_flu``/``n_ot`` count each
    side's cells with a value.
    When the cells span both datasets, rows with ``dataset="all"`` pool them as well; ``by_dataset=False``
    gives only those.
    ``note`` flags the MCQ claims when the unedited model's multiple-choice accuracy on the edited facts
    (``base_mcq_forget_acc``, per task, averaged over seeds) is at or below chance, naming the tasks.
    """
    if by_dataset and len(cells):
        of = cells["task"].map(dataset_of)
        groups = [(d, cells[of == d]) for d in ("sports", "counterfact") if (of == d).any()]
        if len(groups) > 1:
            groups.append(("all", cells))
    else:
        groups = [("all", cells)]
    frames = [_verdicts(sub, flu, ot).assign(dataset=name) for name, sub in groups]
    cols = ["dataset", "claim", "versus", "metric", "flu_mean", "flu_ci95", "ot_mean", "ot_ci95", "diff_mean",
            "diff_ci95", "n_pairs", "n_flu", "n_ot", "verdict", "note"]
    return pd.concat(frames, ignore_index=True).reindex(columns=cols) if frames else pd.DataFrame(columns=cols)


def _paired(cells: pd.DataFrame, flu: str, other: str, metric: str) -> tuple[np.ndarray, np.ndarray, int, int]:
    """FLU's and the other localization's values of ``metric`` on the (task, seed) pairs both have, in the same
    order, and how many cells each side has on its own."""
    if metric not in cells:
        return np.array([]), np.array([]), 0, 0
    side = {loc: cells[cells["localization"] == loc].dropna(subset=[metric]).drop_duplicates(["task", "seed"])
            .set_index(["task", "seed"])[metric] for loc in (flu, other)}
    both = side[flu].index.intersection(side[other].index, sort=False)
    return (side[flu].loc[both].to_numpy(dtype=float), side[other].loc[both].to_numpy(dtype=float),
            len(side[flu]), len(side[other]))


def _verdicts(cells: pd.DataFrame, flu: str, ot: tuple[str, ...]) -> pd.DataFrame:
    mcq_note = _mcq_note(cells)
    rows = []
    for other in ot:
        if other not in set(cells["localization"]) or flu not in set(cells["localization"]):
            continue
        for claim, metric, tol in [(c, m, None) for c, m in CLAIMS] + [(f"side effects: {c} (|Δ| < {t})", m, t)
                                                                       for c, m, t in SIDE_EFFECTS]:
            a, b, n_a, n_b = _paired(cells, flu, other, metric)
            (ma, ca), (mb, cb), (md, cd) = mean_ci95(a), mean_ci95(b), mean_ci95(a - b)
            if len(a) == 0:
                verdict = "no data"
            elif tol is not None:
                verdict = "comparable" if abs(md) < tol else "different"
            else:
                better = md > 0 if HIGHER_IS_BETTER[metric] else md < 0
                verdict = ("supported" if not np.isnan(cd) and abs(md) > cd else "direction only") if better \
                    else "not supported"
            rows.append(dict(claim=claim, versus=other, metric=metric, flu_mean=ma, flu_ci95=ca, ot_mean=mb, ot_ci95=cb,
                             diff_mean=md, diff_ci95=cd, n_pairs=len(a), n_flu=n_a, n_ot=n_b, verdict=verdict,
                             note=mcq_note if metric.startswith("mcq") and verdict != "no data" else ""))
    return pd.DataFrame(rows)

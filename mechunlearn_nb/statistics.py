"""Statistics of a comparison grid: intervals over seeds, the paper's table, and its claims checked.

The grid (:mod:`.grid`) saves one row of metrics per (task, localization, seed) cell. Here they become

- :func:`aggregate`: mean ± 95% confidence interval over seeds (Student t), per task, localization and
  metric — with :func:`unedited` appended, the unedited model's own scores as a reference row;
- :func:`table`: the paper-style wide table (``mean ± ci`` strings);
- :func:`verdicts`: each of the paper's claims — fact lookup more robust than output tracing on multiple
  choice, on paraphrases, on relearning, on probes, with comparable side effects — checked pair by pair on
  the cells, with the numbers and a verdict that could have gone the other way.

and the statistics a reviewer accepts (the grid's verdicts above predate them; :mod:`.reanalysis` applies these
to a saved grid):

- :func:`hierarchical_bootstrap` (seeds, then facts, on per-fact data) and :func:`parametric_bootstrap` (its form
  for cells that keep a proportion and its n: facts drawn as Binomial(n, p)/n); :func:`sign_flip_test`;
- :func:`holm` across a family of claims; :func:`tost` / :func:`tost_bootstrap` for "comparable" side effects;
- :func:`rank_correlation` (does a unit's evidence rank with its measured level? seeds fitted out, their noise
  drawn again), :func:`shift_null` (would evidence slid along the layers rank as well?) and
  :func:`partial_spearman` (what is left of a rank correlation with a third series, e.g. depth, held fixed);
- :func:`testability`: is an instrument above chance on the unedited model at all?
- :func:`curve_metrics` and :func:`floor_ceiling`: the whole relearning curve, and which summaries cannot
  discriminate.

Everything here reads plain DataFrames (``saved_cells`` of a grid, or hand-made rows): no model needed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from . import registry
from .checks import check_float, check_int
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


# ---------------------------------------------------------------------------
# Statistics that respect the design: seeds, then facts
# ---------------------------------------------------------------------------
#
# A grid cell is one edit (a seed) measured on a set of facts. Two sources of noise sit in every number:
# which seed (facts sampled, initialisation, evidence), and which facts were measured within it. Student t over
# three seeds ignores the second and is wild with the first (t(0.975, 2) = 4.30: "0.58 ± 1.20"). A two-level
# bootstrap resamples both: draw the seeds with replacement, then, inside each drawn seed, its facts with
# replacement, and take the statistic of the result; the spread of many such draws is the interval.
#
# Saved cells of older grids keep one proportion and its n per cell, not the facts. Their fact level is then
# *parametric*: a drawn cell's value is Binomial(n, p)/n, which is exactly the distribution of resampling n
# facts, each right with probability p. Values that are not proportions (probabilities, losses, areas under a
# curve) have no fact level in such a cell: their interval resamples seeds only, and says so. Cells saved since
# keep the relearning attack's held-out facts one by one (``curve_facts``), and the area under the relearning
# curve is then resampled fact by fact (:func:`hierarchical_bootstrap`, ``reanalysis.fact_aucs``).

#: the method names written beside every interval
FACTS = "two-level bootstrap (seeds, then facts)"
BINOMIAL = "two-level parametric bootstrap (seeds, then facts as Binomial(n, p)/n)"
SEEDS_ONLY = "bootstrap over seeds only (no per-fact data in the saved cells)"


@dataclass(frozen=True)
class Bootstrap:
    """A bootstrap estimate: point ``estimate``, percentile interval ``[low, high]`` at ``level``, the two-sided
    ``p_value`` of "the true value is 0" (share of draws on the other side of 0, doubled), the ``method`` used, the
    number of seeds (or paired units) and draws, and the draws themselves (``replicates``) for equivalence tests.
    """

    estimate: float
    low: float
    high: float
    p_value: float
    method: str
    n_units: int
    n_boot: int
    level: float = 0.95
    replicates: np.ndarray = field(default=None, repr=False, compare=False)


def _p_two_sided(reps: np.ndarray, null: float = 0.0) -> float:
    """Two-sided bootstrap p-value of ``null``: twice the smaller share of draws on either side (+1 smoothing, so
    never 0 from a finite number of draws)."""
    below, above = np.sum(reps <= null), np.sum(reps >= null)
    return float(min(1.0, 2 * (min(below, above) + 1) / (len(reps) + 1)))


def _summarise(estimate: float, reps: np.ndarray, method: str, n_units: int, level: float) -> Bootstrap:
    lo, hi = np.quantile(reps, [(1 - level) / 2, 1 - (1 - level) / 2])
    return Bootstrap(float(estimate), float(lo), float(hi), _p_two_sided(reps), method, n_units, len(reps), level, reps)


def _check_boot(n_boot, level) -> None:
    check_int("n_boot", n_boot, min=100)
    check_float("level", level, min=0.5, max=0.999)


def hierarchical_bootstrap(facts: pd.DataFrame, value: str = "value", seed: str = "seed", strata: str | None = None,
                           n_boot: int = 2000, level: float = 0.95, rng: int | np.random.Generator = 0) -> Bootstrap:
    """Two-level bootstrap of a mean over per-fact data: resample seeds, then facts within each drawn seed.

    Args:
        facts: one row per (seed, fact) with the measured ``value`` (e.g. 1/0 correct, a probability, or a
            paired difference FLU − OT on the same fact).
        value: the column measured.
        seed: the column naming the upper level (a seed, or a (task, seed) unit).
        strata: optional column (e.g. ``task``) within which seeds are resampled, so every draw keeps the design's
            tasks; the statistic is then the mean over strata of each stratum's mean over seeds.
        n_boot: number of draws; level: the interval's coverage; rng: a seed or a numpy Generator.

    Returns:
        :class:`Bootstrap` with ``method`` :data:`FACTS`. A seed drawn twice gets two independent fact draws.
    """
    _check_boot(n_boot, level)
    if value not in facts or seed not in facts or (strata is not None and strata not in facts):
        raise ValueError(f"hierarchical_bootstrap needs columns {value!r}, {seed!r}{'' if strata is None else ', ' + repr(strata)}; "
                         f"got {list(facts.columns)}. Fix: pass one row per (seed, fact) with those columns.")
    data = facts.dropna(subset=[value])
    if data.empty:
        raise ValueError(f"No values in column {value!r}. Fix: pass per-fact data with at least one value.")
    gen = np.random.default_rng(rng)
    groups = [("", data)] if strata is None else list(data.groupby(strata, sort=False))
    per_stratum_est, per_stratum_reps, n_units = [], [], 0
    for _, g in groups:
        units = [v[value].to_numpy(dtype=float) for _, v in g.groupby(seed, sort=False)]
        n_units += len(units)
        draw = gen.integers(0, len(units), size=(n_boot, len(units)))
        means = np.empty((n_boot, len(units)))
        for u, vals in enumerate(units):  # the facts of every draw of unit u, resampled independently
            where = draw == u
            k = int(where.sum())
            if k:
                means[where] = vals[gen.integers(0, len(vals), size=(k, len(vals)))].mean(axis=1)
        per_stratum_reps.append(means.mean(axis=1))
        per_stratum_est.append(np.mean([u.mean() for u in units]))
    return _summarise(np.mean(per_stratum_est), np.mean(per_stratum_reps, axis=0), FACTS, n_units, level)


def parametric_bootstrap(p, n=None, strata=None, p_other=None, n_other=None, n_boot: int = 2000, level: float = 0.95,
                         rng: int | np.random.Generator = 0) -> Bootstrap:
    """Two-level bootstrap for saved cells that keep one proportion ``p`` and its fact count ``n`` per seed.

    Seeds are resampled (within each stratum, if ``strata`` is given); each drawn seed's value is then
    Binomial(n, p)/n — resampling its n facts. With ``p_other`` (and ``n_other``) the statistic is the mean of the
    paired differences ``p − p_other`` (the same seed and task on both sides, each side's facts drawn separately).
    Where ``n`` is None (or NaN), that value has no fact level (a probability, a loss, an area under a curve) and
    only seeds are resampled: ``method`` says which form was used (:data:`BINOMIAL` or :data:`SEEDS_ONLY`).

    Args:
        p, n: per unit (seed, or (task, seed) pair), the proportion and its number of facts.
        strata: per unit, its stratum (e.g. the task); the statistic is the mean over strata of the mean over units.
        p_other, n_other: the comparator's values on the same units, for a paired difference.
    """
    _check_boot(n_boot, level)
    p = np.asarray(p, dtype=float)
    units = len(p)
    if units == 0:
        raise ValueError("parametric_bootstrap got no values. Fix: pass at least one seed's proportion.")
    n = np.full(units, np.nan) if n is None else np.asarray(n, dtype=float)
    q = None if p_other is None else np.asarray(p_other, dtype=float)
    m = None if q is None else (np.full(units, np.nan) if n_other is None else np.asarray(n_other, dtype=float))
    if len(n) != units or (q is not None and (len(q) != units or len(m) != units)):
        raise ValueError(f"parametric_bootstrap: p ({units}), n ({len(n)}) and the comparator's values must have one "
                         f"entry per unit. Fix: pair them by (task, seed) first.")
    for name, v in (("p", p), ("p_other", q)):
        if v is not None and np.isnan(v).any():
            raise ValueError(f"{name} has missing values. Fix: drop the units without a value on both sides first.")
    binomial = not np.isnan(n).all() and (m is None or not np.isnan(m).all())
    if binomial:
        for name, v, counts in (("p", p, n), ("p_other", q, m)):
            if v is not None and ((v < 0) | (v > 1)).any():
                raise ValueError(f"{name} must be proportions in [0, 1] to be drawn as Binomial(n, p)/n; got {v}. "
                                 f"Fix: pass n=None for values that are not proportions.")
            if counts is not None and (np.isnan(counts).any() or (counts < 1).any()):
                raise ValueError(f"Fact counts must be ≥ 1 on every unit (got {counts}). Fix: give every unit its n, or "
                                 f"n=None for the seeds-only form.")
    gen = np.random.default_rng(rng)
    strata = np.zeros(units, dtype=int) if strata is None else pd.factorize(np.asarray(strata))[0]

    def side(values, counts, idx):
        if not binomial:
            return values[idx]
        nn = counts[idx].astype(int)
        return gen.binomial(nn, values[idx]) / nn

    reps, est = [], []
    for s in np.unique(strata):
        members = np.flatnonzero(strata == s)
        idx = members[gen.integers(0, len(members), size=(n_boot, len(members)))]
        draw = side(p, n, idx) - (0 if q is None else side(q, m, idx))
        reps.append(draw.mean(axis=1))
        est.append(np.mean(p[members] - (0 if q is None else q[members])))
    return _summarise(np.mean(est), np.mean(reps, axis=0), BINOMIAL if binomial else SEEDS_ONLY, units, level)


def additive_fit(m: np.ndarray, iterations: int = 200) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Least-squares fit of ``unit + seed`` to a units × seeds array with NaN where a unit lacks a seed.

    Returns ``(unit_effects, seed_effects, residuals)``: the seed effects sum to zero, so a unit's effect is its
    level on an average seed; with every seed present the unit effects are the row means. (Alternating the two
    sets of means converges to the least-squares fit of the additive model.)
    """
    have = ~np.isnan(m)
    seed_fx = np.zeros(m.shape[1])
    unit_fx = np.nanmean(m, axis=1)
    for _ in range(iterations):
        with np.errstate(invalid="ignore"):
            seed_new = np.nanmean(np.where(have, m - unit_fx[:, None], np.nan), axis=0)
        seed_new = np.nan_to_num(seed_new - np.nanmean(seed_new))
        unit_fx = np.nanmean(np.where(have, m - seed_new[None, :], np.nan), axis=1)
        if np.allclose(seed_new, seed_fx, atol=1e-12, rtol=0):
            break
        seed_fx = seed_new
    return unit_fx, seed_fx, np.where(have, m - unit_fx[:, None] - seed_fx[None, :], np.nan)


def unit_levels(values: pd.DataFrame, units=None) -> tuple[pd.Series, np.ndarray]:
    """Each unit's level (:func:`additive_fit`) from rows ``unit, seed, value``, for ``units`` (default: all).

    Returns ``(levels, table)``: levels indexed by unit, and the units × seeds array they were fitted from (NaN
    where a unit lacks a seed; seeds no unit has are dropped).
    """
    table = values.dropna(subset=["value"]).pivot_table(index="unit", columns="seed", values="value", aggfunc="mean")
    table = (table if units is None else table.loc[list(units)]).dropna(axis=1, how="all")
    m = table.to_numpy(dtype=float)
    return pd.Series(additive_fit(m)[0] if len(m) else [], index=table.index, dtype=float), m


def rank_correlation(values: pd.DataFrame, evidence: pd.Series, n_boot: int = 10000, level: float = 0.95,
                     rng: int | np.random.Generator = 0) -> dict:
    """Spearman's rank correlation between units' levels and their evidence, with the seeds' noise in an interval.

    Args:
        values: one row per (unit, seed): columns ``unit, seed, value`` (e.g. a window of layers, a test seed and
            a robustness metric of its cell); a unit may miss seeds (an excluded cell).
        evidence: one number per unit, indexed by unit.
        n_boot, level, rng: the draws, coverage and seed of the interval.

    The values are fitted as unit + seed + residual by least squares (:func:`additive_fit`): a seed that moves every
    unit alike (an easier draw of facts) changes no unit's level, also when some unit lacks that seed. The estimate
    correlates the units' levels with their evidence (ties get average ranks).

    The interval answers: *what rho would a replication with fresh seeds give, given these units' levels?* Each
    draw adds normal noise of the pooled residual variance (divided by the unit's seed count) to every level and
    correlates again. It describes the seeds' noise, not a confidence interval for a true rho (the draws add noise
    to levels that are already noisy, so they lean toward zero), and not the choice of units: over one model's
    overlapping windows of layers, smooth series can correlate by chance, which a window-level null (e.g.
    :func:`shift_null`) asks about. A bootstrap over three seeds per unit would be far too narrow (with pure noise its
    95% interval missed zero in about one run in five); this one missed zero in 2.7% of 300 pure-noise simulations
    (15 units, 3 seeds) and 6% with large seed shifts added. ``p_value`` is the two-sided share of draws on the
    other side of zero from the estimate (small: a replication would keep the sign).

    Returns:
        ``{"rho", "low", "high", "p_value", "n_units", "n_seeds", "residual_sd", "note"}``; rho is NaN when fewer
        than three units have both a value and evidence, or the evidence or the levels are all tied; the interval
        is NaN without a residual degree of freedom (one seed); ``note`` says which (empty when all is there).
    """
    from scipy import stats

    _check_boot(n_boot, level)
    if not {"unit", "seed", "value"} <= set(values.columns):
        raise ValueError(f"rank_correlation needs columns 'unit', 'seed', 'value'; got {list(values.columns)}. Fix: "
                         "one row per (unit, seed) with the measured value.")
    ev = pd.Series(evidence, dtype=float).dropna()
    measured = values.dropna(subset=["value"])["unit"].unique()
    units = [u for u in measured if u in ev.index]
    fitted, m = unit_levels(values, units)
    out = dict(rho=np.nan, low=np.nan, high=np.nan, p_value=np.nan, n_units=len(units), n_seeds=m.shape[1],
               residual_sd=np.nan, note="")
    if len(units) < 3:
        return {**out, "note": f"{len(units)} unit(s) with a value and evidence: a rank correlation needs 3"}
    if ev[units].nunique() < 2:
        return {**out, "note": "the evidence is the same for every unit: nothing to rank"}
    x = ev[units].to_numpy(dtype=float)
    _, _, resid = additive_fit(m)
    levels = np.round(fitted.to_numpy(), 12)  # exact ties stay ties after the fit's arithmetic
    if np.unique(levels).size < 2:
        return {**out, "note": "every unit measured the same: nothing to rank"}
    rho = stats.spearmanr(levels, x).statistic
    out["rho"] = float(rho)
    have = ~np.isnan(m)
    df = int(have.sum()) - len(units) - (m.shape[1] - 1)
    if df < 1:
        return {**out, "note": "one seed: no residual to size the seeds' noise, no interval"}
    sd = float(np.sqrt(np.nansum(resid ** 2) / df))
    out["residual_sd"] = sd
    gen = np.random.default_rng(rng)
    draws = levels[:, None] + gen.normal(0.0, 1.0, (len(units), n_boot)) * (sd / np.sqrt(have.sum(axis=1)))[:, None]
    ranks = stats.rankdata(draws, axis=0)
    rx = stats.rankdata(x)
    rc, xc = ranks - ranks.mean(axis=0), rx - rx.mean()
    with np.errstate(invalid="ignore", divide="ignore"):
        reps = (xc @ rc) / np.sqrt((xc ** 2).sum() * (rc ** 2).sum(axis=0))
    reps = reps[np.isfinite(reps)]
    if len(reps):
        lo, hi = np.quantile(reps, [(1 - level) / 2, 1 - (1 - level) / 2])
        out.update(low=float(lo), high=float(hi), p_value=_p_two_sided(reps))
    return out


def partial_spearman(x, y, control) -> float:
    """Spearman's correlation of ``x`` and ``y`` with ``control`` held fixed: the correlation of their ranks'
    residuals after a least-squares line on the control's ranks (the usual rank partial correlation).

    What is left of a rank correlation when both series also follow a third one (e.g. evidence and robustness that
    both change with depth). NaN with fewer than four complete points (a line on the control leaves no spread to
    correlate) or when a residual is constant (the series *is* the control, up to rank).
    """
    from scipy import stats

    x, y, z = (np.asarray(a, dtype=float) for a in (x, y, control))
    ok = np.isfinite(x) & np.isfinite(y) & np.isfinite(z)
    if ok.sum() < 4:
        return float("nan")
    rx, ry, rz = (stats.rankdata(a[ok]) for a in (x, y, z))
    design = np.column_stack([np.ones_like(rz), rz])
    res = [r - design @ np.linalg.lstsq(design, r, rcond=None)[0] for r in (rx, ry)]
    if any(np.abs(r).max() < 1e-9 for r in res):
        return float("nan")
    return float(np.corrcoef(res[0], res[1])[0, 1])


def shift_null(block_values: np.ndarray, windows: list[list[int]], levels: np.ndarray, direction: int = 1,
               control: np.ndarray | None = None) -> dict:
    """How often evidence slid along the blocks ranks with ``levels`` as well as the real evidence does.

    ``block_values``: one evidence number per block; ``windows``: each unit's blocks; ``levels``: each unit's
    measured level (:func:`additive_fit`); ``direction``: +1 when the hypothesis is a positive rho, -1 a negative
    one. Every circular shift of the blocks' evidence (and of its reverse) keeps how smooth it is along the layers
    and breaks which layers it points at; each gives the windows new evidence (the mean over their blocks) and a
    new Spearman rho with the same levels.

    Returns:
        ``{"rho", "p_shift", "n_shifts"}``: ``p_shift`` is the one-sided share of shifts whose rho reaches the real
        one's in ``direction`` (+1 smoothing, so its smallest value is 1 / (n_shifts + 1): with 18 blocks, 1/36 =
        0.028). A series that only rises or falls with depth keeps most of its ranking under no shift, so depth
        itself can pass this test: compare a correlation with depth's own before reading it as evidence's.
        With ``control`` (one number per unit, e.g. each window's depth) the statistic is :func:`partial_spearman`
        with the control held fixed, and the same shifts make its null.
    """
    from scipy import stats

    b = np.asarray(block_values, dtype=float)
    lv = np.asarray(levels, dtype=float)

    def rho(series):
        ev = np.array([np.nanmean(series[w]) for w in windows])
        ok = np.isfinite(ev) & np.isfinite(lv)
        if ok.sum() < 3 or np.unique(ev[ok]).size < 2 or np.unique(lv[ok]).size < 2:
            return np.nan
        if control is not None:
            return partial_spearman(ev[ok], lv[ok], np.asarray(control, dtype=float)[ok])
        return stats.spearmanr(ev[ok], lv[ok]).statistic

    real = rho(b)
    null = [rho(np.roll(s, k)) for s in (b, b[::-1]) for k in range(len(b)) if (s is not b or k)]
    null = np.array([r for r in null if np.isfinite(r)])
    if not np.isfinite(real) or len(null) == 0:
        return dict(rho=float(real), p_shift=np.nan, n_shifts=len(null))
    if direction not in (1, -1):
        raise ValueError(f"direction={direction!r}: +1 (a positive rho is the hypothesis) or -1 (a negative one).")
    hits = np.sum(direction * null >= direction * real - 1e-12)
    return dict(rho=float(real), p_shift=float((1 + hits) / (1 + len(null))), n_shifts=len(null))


def holm(p_values, family_size: int | None = None) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error), in the input's order; NaN stays NaN.

    Sort the m p-values; the i-th smallest (i = 0…m−1) is multiplied by m − i, the running maximum keeps the order,
    and values are capped at 1. A claim is rejected at level α when its adjusted p-value is ≤ α.
    (statsmodels' ``multipletests(method="holm")`` computes the same; it is not a dependency here.)

    ``family_size``: the family fixed in advance (a plan's every claim × dataset × comparator and every side
    effect × dataset × comparator), when some of its
    tests could not be computed (an untestable instrument, too few pairs): each of those counts as a test with
    p = 1, so a test that could not run does not make the others' correction milder. None: the p-values given.

    Raises:
        ValueError: a p-value outside [0, 1], or a family smaller than the p-values given.
    """
    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    if family_size is not None and family_size < len(ok):
        raise ValueError(f"family_size={family_size} is smaller than the {len(ok)} p-values given. Fix: the family "
                         f"holds every test it was fixed with, computed or not.")
    if len(ok) == 0:
        return out
    if ((p[ok] < 0) | (p[ok] > 1)).any():
        raise ValueError(f"p-values must lie in [0, 1]; got {p[ok]}. Fix: pass p-values, not statistics.")
    order = ok[np.argsort(p[ok], kind="stable")]
    m = len(order) if family_size is None else int(family_size)
    adjusted = np.minimum(1.0, np.maximum.accumulate((m - np.arange(len(order))) * p[order]))
    out[order] = adjusted
    return out


def tost(differences, margin: float, alpha: float = 0.05) -> dict:
    """Two one-sided t-tests (TOST) that the mean of paired ``differences`` lies inside ``(−margin, +margin)``.

    "Comparable" needs evidence of equivalence, not a small point estimate: both one-sided tests
    (mean > −margin, mean < +margin) must reject; the TOST p-value is the larger of the two.

    Returns:
        ``dict(mean, p_value, equivalent, margin, n, method)``; ``equivalent`` is ``p_value ≤ alpha``.
    """
    from scipy import stats

    check_float("margin", margin, min=0.0)
    check_float("alpha", alpha, min=0.0, max=1.0)
    d = np.asarray(differences, dtype=float)
    d = d[~np.isnan(d)]
    if len(d) < 2:
        raise ValueError(f"TOST needs at least two paired differences; got {len(d)}. Fix: pair more seeds or tasks.")
    lower = stats.ttest_1samp(d, -margin, alternative="greater").pvalue
    upper = stats.ttest_1samp(d, margin, alternative="less").pvalue
    p = float(max(lower, upper)) if np.std(d) > 0 else float(0.0 if abs(d.mean()) < margin else 1.0)
    return dict(mean=float(d.mean()), p_value=p, equivalent=p <= alpha, margin=margin, n=len(d), method="TOST (t)")


def tost_bootstrap(boot: Bootstrap, margin: float, alpha: float = 0.05) -> dict:
    """TOST on bootstrap draws of a difference: p = the larger share of draws at or beyond −margin and +margin
    (+1 smoothing); equivalent when p ≤ alpha, i.e. the (1 − 2α) interval lies inside the margins."""
    check_float("margin", margin, min=0.0)
    reps = boot.replicates
    if reps is None:
        raise ValueError("This Bootstrap kept no draws. Fix: compute it with hierarchical_bootstrap or parametric_bootstrap.")
    k = len(reps)
    p = float(max((np.sum(reps <= -margin) + 1) / (k + 1), (np.sum(reps >= margin) + 1) / (k + 1)))
    return dict(mean=boot.estimate, p_value=min(1.0, p), equivalent=p <= alpha, margin=margin, n=boot.n_units,
                method=f"TOST on a {boot.method}")


#: chance level of each prompt format: 1 / number of candidates (sports fact/qa: 3 sports + golf; multiple choice
#: A–D; CounterFact prompts: target_true vs target_new)
CHANCE = {"fact": 0.25, "qa": 0.25, "mcq": 0.25, "mcq_nosys": 0.25, "cf_prompt": 0.5, "cf_paraphrase": 0.5,
          "cf_neighborhood": 0.5, "cf_mcq": 0.25}
TESTABLE = "testable"
UNTESTABLE = "untestable on this model"


def testability(accuracy, n, chance: float, margin: float = 0.05, level: float = 0.95, n_boot: int = 2000,
                rng: int | np.random.Generator = 0) -> dict:
    """Is an instrument testable on this model? Only if the *unedited* model answers it: the interval of its
    accuracy on held-out known facts lies above ``chance + margin``.

    A multiple-choice question the unedited model answers at or below chance measures its favourite letter, not
    the fact: an edit can only move the favourite, and a claim read from it says nothing about knowledge. Such a
    claim's verdict is "untestable on this model", with the number.

    Args:
        accuracy, n: the unedited model's accuracy and fact count per seed (one value each, or arrays over seeds).
        chance: the instrument's chance level (see :data:`CHANCE`); margin: how far above chance the lower end of
            the interval must lie.

    Returns:
        ``dict(verdict, accuracy, low, high, chance, margin, n_seeds, method, reason)``; the interval is the
        two-level parametric bootstrap (:func:`parametric_bootstrap`).
    """
    check_float("chance", chance, min=0.0, max=1.0)
    check_float("margin", margin, min=0.0, max=1.0)
    acc = np.atleast_1d(np.asarray(accuracy, dtype=float))
    counts = np.atleast_1d(np.asarray(n, dtype=float))
    keep = ~np.isnan(acc)
    if not keep.any():
        return dict(verdict=UNTESTABLE, accuracy=np.nan, low=np.nan, high=np.nan, chance=chance, margin=margin,
                    n_seeds=0, method="", reason="no baseline measured on the unedited model")
    boot = parametric_bootstrap(acc[keep], counts[keep] if len(counts) == len(acc) else np.full(keep.sum(), counts[0]),
                                n_boot=n_boot, level=level, rng=rng)
    ok = boot.low > chance + margin
    reason = (f"unedited accuracy {boot.estimate:.3f} [{boot.low:.3f}, {boot.high:.3f}] "
              f"{'>' if ok else '≤'} chance {chance:.2f} + margin {margin:.2f}")
    return dict(verdict=TESTABLE if ok else UNTESTABLE, accuracy=boot.estimate, low=boot.low, high=boot.high,
                chance=chance, margin=margin, n_seeds=boot.n_units, method=boot.method, reason=reason)


# ---------------------------------------------------------------------------
# Relearning curves: the whole curve, not its last point
# ---------------------------------------------------------------------------

HELD_OUT = "B (held out)"
#: a value this close to 0 or 1 is at the floor or the ceiling of an accuracy or a probability
FLOOR, CEILING = 0.05, 0.95


def curve_metrics(curves: pd.DataFrame, half: str = HELD_OUT) -> pd.DataFrame:
    """Summaries of each cell's relearning curve on ``half`` (default: the held-out facts), for accuracy and p_true.

    The endpoint (accuracy at the last step, scored by argmax on a few facts) throws the curve away: a curve
    that rises to a probability of 0.3 at step 5 and falls back shows nothing at its end. Per cell:

    - ``auc``: area under the curve divided by the steps' span (trapezoid): the mean level over the attack;
    - ``max``: the largest value over the steps;
    - ``change``: the value at the last step minus at step 0;
    - ``final``: the value at the last step (the old endpoint).

    Args:
        curves: tidy curves (``grid.curves``): ``task, localization, seed, step, half, accuracy, p_true, n``.

    Returns:
        One row per (task, localization, seed, quantity) with ``quantity`` in ``accuracy, p_true``, the four
        summaries, ``n`` (facts in the half) and ``steps`` (how many points the curve has).
    """
    need = {"task", "localization", "seed", "step", "half", "accuracy", "p_true"}
    if not need <= set(curves.columns):
        raise ValueError(f"curve_metrics needs columns {sorted(need)}; missing {sorted(need - set(curves.columns))}. "
                         f"Fix: pass grid.curves(out_dir) of a saved grid.")
    sub = curves[curves["half"] == half]
    if sub.empty:
        raise ValueError(f"No curve rows for half {half!r}; halves present: {sorted(set(curves['half']))}. "
                         f"Fix: pick one of them.")
    rows = []
    for (task, loc, seed), g in sub.groupby(["task", "localization", "seed"], sort=False):
        g = g.sort_values("step")
        steps = g["step"].to_numpy(dtype=float)
        span = steps[-1] - steps[0]
        for q in ("accuracy", "p_true"):
            v = g[q].to_numpy(dtype=float)
            auc = float(np.trapezoid(v, steps) / span) if span > 0 else float(v[0])
            rows.append(dict(task=task, localization=loc, seed=seed, quantity=q, auc=auc, max=float(v.max()),
                             change=float(v[-1] - v[0]), final=float(v[-1]),
                             n=int(g["n"].iloc[0]) if "n" in g else np.nan, steps=len(v)))
    return pd.DataFrame(rows)


def floor_ceiling(values: pd.DataFrame, by: str = "task", metric_columns=("auc", "max", "change", "final"),
                  floor: float = FLOOR, ceiling: float = CEILING) -> pd.DataFrame:
    """Which metrics cannot discriminate: every localization of a group at the floor, or every one at the ceiling.

    A relearning accuracy of 1.00 for every localization (elimination solves the task) or 0.00 for every one
    (too few facts, too weak an attack) ranks nothing: differences between localizations cannot show. Each
    localization is judged on its mean over seeds (one noisy seed above the floor does not make an instrument).

    Args:
        values: :func:`curve_metrics` (with its ``quantity`` column) or any tidy table with ``by``,
            ``localization`` and the metric columns.
        by: the grouping column in which every localization must be compared (default: per task).

    Returns:
        One row per group, quantity and metric: ``lowest, highest`` (over localizations' means), ``spread``
        (highest − lowest) and ``status``: ``"floor"`` (all ≤ ``floor``), ``"ceiling"`` (all ≥ ``ceiling``) or
        ``"discriminates"``; ``change`` is judged on its absolute value (no movement at all is its floor).
    """
    keys = [by] + (["quantity"] if "quantity" in values else [])
    if "localization" not in values or by not in values:
        raise ValueError(f"floor_ceiling needs columns {by!r} and 'localization'; got {list(values.columns)}. "
                         f"Fix: pass curve_metrics(...) or cells with those columns.")
    rows = []
    for key, g in values.groupby(keys, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        for m in metric_columns:
            if m not in g:
                continue
            v = g.groupby("localization", sort=False)[m].mean().dropna().to_numpy(dtype=float)
            if len(v) == 0:
                continue
            judged = np.abs(v) if m == "change" else v
            status = "floor" if (judged <= floor).all() else "ceiling" if (judged >= ceiling).all() else "discriminates"
            rows.append(dict(zip(keys, key), metric=m, lowest=float(v.min()), highest=float(v.max()),
                             spread=float(v.max() - v.min()), status=status))
    return pd.DataFrame(rows)


def sign_flip_test(differences, strata=None, n_draws: int = 20000, rng: int | np.random.Generator = 0) -> float:
    """Two-sided randomization p-value of paired ``differences`` (one per seed, or (task, seed) pair) around 0.

    Under "no difference" each pair's sign is a coin flip; the p-value is the share of sign patterns whose
    statistic (the mean over strata of each stratum's mean) is at least as far from 0 as the observed one. All
    ``2^k`` patterns are enumerated for k ≤ 16 pairs (exact), else ``n_draws`` random ones. It assumes nothing about
    the spread of the differences — and so it cannot go below ``2 / 2^k``: with six pairs, 0.031. A cross-check of
    the bootstrap, whose percentile intervals are too narrow when there are only a few seeds.
    """
    d = np.asarray(differences, dtype=float)
    if len(d) == 0 or np.isnan(d).any():
        raise ValueError("sign_flip_test needs paired differences without missing values. Fix: drop unpaired seeds.")
    groups = np.zeros(len(d), dtype=int) if strata is None else pd.factorize(np.asarray(strata))[0]
    weights = np.array([1.0 / (np.sum(groups == g) * len(np.unique(groups))) for g in groups])
    k = len(d)
    if k <= 16:
        signs = 1 - 2 * ((np.arange(2 ** k)[:, None] >> np.arange(k)) & 1)
    else:
        signs = np.random.default_rng(rng).choice([-1, 1], size=(n_draws, k))
    observed = abs(float(np.sum(weights * d)))
    stats_ = np.abs(signs @ (weights * d))
    return float(np.mean(stats_ >= observed - 1e-12))

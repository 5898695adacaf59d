"""Re-analysis of a saved comparison grid with statistics that respect its design.

The grid's own verdicts (:func:`.statistics.verdicts`) read a Student-t interval over three seeds and call a claim
"supported" when it excludes zero, one claim at a time. This reads the same saved cells again and asks, claim by
claim and task by task, first whether the claim *could* have been tested, then what the evidence says:

1. **testability**: each instrument's unedited accuracy on held-out known facts (the "before" rows of every cell's
   evaluation table, or its ``base_*`` metrics) against the instrument's chance level
   (:func:`.statistics.testability`); a claim read through an untestable instrument gets "untestable on this model";
2. **exclusions**: an edit that did not reach ``completeness`` (edit accuracy on its trained prompts: the training's
   final ``train_acc``, as the rates were tuned, or the evaluation's ``edit_acc`` in cells without it) is reported
   and left out of every claim, with its pair;
3. **floor / ceiling**: a relearning metric at the floor or the ceiling for every localization on a task (their
   complete edits) cannot rank them (:func:`.statistics.floor_ceiling`); that task is left out of that claim;
4. **paired comparison**: fact lookup minus a comparator on the same (task, seed), the two-level parametric
   bootstrap stratified by task (:func:`.statistics.parametric_bootstrap`), for the output-tracing variants *and*
   a random localization of the same budget; the area under the relearning curve, where every cell kept its
   held-out facts one by one (``curve_facts``), resamples seeds and then the paired per-fact differences
   (:func:`.statistics.hierarchical_bootstrap`);
5. **one family**: Holm's correction over every claim and side-effect test (:func:`.statistics.holm`); side
   effects are judged by an equivalence test (TOST) within the grid's own tolerance.

Reads only: the saved folder is left as it is. ``python scripts/reanalyse_grid.py`` writes the result.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from . import grid, registry, statistics
from .statistics import CHANCE, HIGHER_IS_BETTER
from .tasks import dataset_of

#: the comparators of fact lookup: both output-tracing variants of the paper and a random localization of the same
#: weight budget (the comparator a localization has to beat to count as one)
COMPARATORS = ("OT (causal tracing)", "OT (attribution patching)", "random")
#: edit accuracy on the trained prompts an edit must reach before its other metrics are read
COMPLETENESS = 0.95
#: probes pick one of the three sports of the probe-training athletes
PROBE_CHANCE = 1 / 3

#: (claim, metric, instrument per dataset): the instrument is the prompt format whose unedited held-out accuracy
#: decides testability ("probe": the probes' unedited read-out); None where the dataset has no such measure
CLAIMS = (
    ("FLU edits generalise to multiple choice better", "mcq_edit_acc", {"sports": "mcq", "counterfact": "cf_mcq"}),
    ("FLU edits leave less of the true answer in multiple choice", "mcq_forget_acc",
     {"sports": "mcq", "counterfact": "cf_mcq"}),
    ("FLU edits generalise to paraphrases better", "paraphrase_edit_acc", {"counterfact": "cf_paraphrase"}),
    ("FLU edits resist relearning better (endpoint accuracy)", "relearn_acc", {"sports": "fact", "counterfact": "cf_prompt"}),
    ("FLU edits resist relearning better (area under the held-out probability curve)", "relearn_p_true_auc",
     {"sports": "fact", "counterfact": "cf_prompt"}),
    ("FLU edits resist relearning better (maximum held-out probability)", "relearn_p_true_max",
     {"sports": "fact", "counterfact": "cf_prompt"}),
    ("FLU edits leave less latent knowledge for probes", "probe_true", {"sports": "probe"}),
)
#: the relearning claims' metrics and the curve summary each is read from (quantity, summary)
CURVE_METRICS = {"relearn_acc": ("accuracy", "final"), "relearn_p_true_auc": ("p_true", "auc"),
                 "relearn_p_true_max": ("p_true", "max")}
#: for each claim's metric, whether higher is better for the edit (the relearning summaries: lower is better)
BETTER_IF_HIGHER = {**HIGHER_IS_BETTER, **{m: False for m in CURVE_METRICS}}
#: where each proportion's facts were counted: (set, format per dataset); None: not a proportion (seeds only)
COUNT_OF = {"mcq_edit_acc": ("forget", {"sports": "mcq", "counterfact": "cf_mcq"}),
            "mcq_forget_acc": ("forget", {"sports": "mcq", "counterfact": "cf_mcq"}),
            "paraphrase_edit_acc": ("forget", {"counterfact": "cf_paraphrase"}),
            "maintain_acc": ("maintain", {"sports": "fact", "counterfact": "cf_prompt"}),
            "edit_acc": ("forget", {"sports": "fact", "counterfact": "cf_prompt"}),
            "mcq_debiased_edit_acc": ("forget", {"sports": "mcq_debiased", "counterfact": "mcq_debiased"}),
            "mcq_debiased_forget_acc": ("forget", {"sports": "mcq_debiased", "counterfact": "mcq_debiased"}),
            "qa_forget_acc": ("forget", {"sports": "qa"}), "qa_edit_acc": ("forget", {"sports": "qa"})}
#: formats that score several prompts per fact, and the one-prompt-per-fact format whose count gives their number of
#: facts: a proportion's sampling unit is the fact (CounterFact has two paraphrases of each), not the prompt
FACTS_OF = {"cf_paraphrase": "cf_prompt"}


def better_if_higher(p=None) -> dict[str, bool]:
    """For every metric a claim or side effect reads, whether a higher value is better for the edit (the
    relearning summaries: lower is better), with a plan's claims (:class:`.plan.Plan`) on top: what
    :func:`.plots.plot_claims` needs to put "fact lookup better" on one side."""
    return {**BETTER_IF_HIGHER, **({c.metric: c.higher_is_better for c in p.claims} if p is not None else {})}


def _records(out_dir: str | Path) -> list[dict]:
    paths = sorted((Path(out_dir) / "cells").glob("*.json"))
    if not paths:
        raise FileNotFoundError(f"No saved cells in {Path(out_dir) / 'cells'}. Fix: point at a saved grid's folder.")
    return [json.loads(p.read_text()) for p in paths]


def baselines(out_dir: str | Path) -> pd.DataFrame:
    """The unedited model's accuracy per (task, seed, set, format), with its fact count ``n`` and its ``source``.

    From each cell's evaluation table ("before" rows, ``acc_true``); cells saved without a table give their
    ``base_forget_acc``/``base_maintain_acc``/``base_mcq_forget_acc`` (training format / multiple choice), their
    counts taken from the same task's cells that kept a table. The probes' unedited read-out (``probe_true_base``,
    on the edited facts) is the row of format ``"probe"``. ``n`` counts facts: a format that scores several prompts
    per fact (:data:`FACTS_OF`) takes the count of its one-prompt format on the same facts (``n_prompts``: the
    prompts).
    """
    rows = []
    for cell in _records(out_dir):
        m = cell["metrics"]
        ds = dataset_of(m["task"])
        key = dict(task=m["task"], seed=int(m["seed"]))
        if cell.get("evaluation"):
            t = grid.evaluation_table(cell).reset_index()
            t = t[t["metric"] == "acc_true"]
            rows += [dict(key, set=r.set, format=r.format, accuracy=float(r.before), n=float(r.n), source="evaluation")
                     for r in t.itertuples()]
        else:
            fmt = "fact" if ds == "sports" else "cf_prompt"
            mcq = "mcq" if ds == "sports" else "cf_mcq"
            for field, set_, f in (("base_forget_acc", "forget", fmt), ("base_maintain_acc", "maintain", fmt),
                                   ("base_mcq_forget_acc", "forget", mcq)):
                if field in m and m[field] is not None and not pd.isna(m[field]):
                    rows.append(dict(key, set=set_, format=f, accuracy=float(m[field]), n=np.nan, source=field))
        if m.get("probe_true_base") is not None and not pd.isna(m.get("probe_true_base")):
            rows.append(dict(key, set="forget", format="probe", accuracy=float(m["probe_true_base"]),
                             n=float(m["n_forget"]), source="probe_true_base"))
    frame = pd.DataFrame(rows)
    # one value per (task, seed, set, format): the unedited model is the same for every localization; prefer tables
    frame["rank"] = (frame["source"] != "evaluation").astype(int)
    frame = frame.sort_values("rank").drop_duplicates(["task", "seed", "set", "format"]).drop(columns="rank")
    by_task = frame.dropna(subset=["n"]).groupby(["task", "set", "format"])["n"].median()
    missing = frame["n"].isna()
    frame.loc[missing, "n"] = [by_task.get((r.task, r.set, r.format), np.nan) for r in frame[missing].itertuples()]
    frame.loc[missing, "source"] += " (n from the task's other seeds)"
    frame["n_prompts"] = frame["n"]
    facts = frame.set_index(["task", "seed", "set", "format"])["n"]
    for fmt, one in FACTS_OF.items():
        rows_of = frame["format"] == fmt
        counted = pd.Series([facts.get((r.task, r.seed, r.set, one), np.nan) for r in frame[rows_of].itertuples()],
                            index=frame.index[rows_of], dtype=float)
        frame.loc[counted.index, "n"] = counted.fillna(frame.loc[counted.index, "n_prompts"])
        frame.loc[counted.index[counted.isna()], "source"] += f" (no {one} count: n counts prompts)"
    return frame.sort_values(["task", "set", "format", "seed"]).reset_index(drop=True)


def testability_table(base: pd.DataFrame, margin: float = 0.05, n_boot: int = 4000,
                      chance: dict | None = None, level: float = 0.95) -> pd.DataFrame:
    """Testability of every instrument on every task, from :func:`baselines` pooled over seeds.

    Held-out known facts are the ``maintain`` set; the probes are read on the edited facts before the edit (the only
    unedited probe read-out a cell keeps). Chance: :data:`.statistics.CHANCE`, probes :data:`PROBE_CHANCE`, then
    ``chance`` (``{format: level}``, e.g. a plan's instruments) on top.
    """
    levels = {**CHANCE, "probe": PROBE_CHANCE, **(chance or {})}
    rows = []
    for (task, set_, fmt), g in base.groupby(["task", "set", "format"], sort=False):
        chance = levels.get(fmt)
        if chance is None:
            continue
        t = statistics.testability(g["accuracy"], g["n"], chance=chance, margin=margin, level=level, n_boot=n_boot)
        rows.append(dict(task=task, dataset=dataset_of(task), set=set_, format=fmt, n_seeds=t["n_seeds"],
                         n_facts=int(g["n"].median()) if g["n"].notna().any() else np.nan, accuracy=t["accuracy"],
                         low=t["low"], high=t["high"], chance=chance, margin=margin, verdict=t["verdict"],
                         method=t["method"]))
    return pd.DataFrame(rows)


def attack_curves(out_dir: str | Path, setting: str | None = None) -> pd.DataFrame:
    """The saved relearning curves of one attack setting (``grid.curves``). Cells that ran several attacks
    (``GridConfig.attack_settings``) keep a ``setting`` column; then ``setting`` picks one (None: the first, the
    grid's ``relearn_acc``). Cells of a single attack have no such column and are returned whole."""
    curves = grid.curves(out_dir)
    if "setting" not in curves or curves.empty:
        return curves
    present = list(dict.fromkeys(curves["setting"].dropna()))
    setting = setting or present[0]
    if setting not in present:
        raise ValueError(f"No relearning curves of attack setting {setting!r} in {out_dir}; it holds {present}. "
                         f"Fix: pick one of them.")
    return curves[curves["setting"] == setting].drop(columns="setting")


def fact_aucs(out_dir: str | Path, setting: str | None = None) -> pd.DataFrame | None:
    """Each held-out fact's area under its relearning curve (probability of the true answer; the trapezoid over the
    steps divided by their span, :func:`statistics.curve_metrics`'s ``auc``, whose mean over a cell's facts it
    is), from cells saved with their attack fact by fact (``curve_facts``): ``task, localization, seed, fact,
    auc``. ``None`` when any cell lacks those records (then the areas have no fact level)."""
    rows = []
    for cell in _records(out_dir):
        facts = cell.get("curve_facts")
        if not facts:
            return None
        m = cell["metrics"]
        frame = pd.DataFrame(facts)
        if "setting" in frame and frame["setting"].notna().any():
            present = list(dict.fromkeys(frame["setting"]))
            frame = frame[frame["setting"] == (setting or present[0])]
        for fact, g in frame.groupby("fact", sort=False):
            g = g.sort_values("step")
            steps, v = g["step"].to_numpy(dtype=float), g["p_true"].to_numpy(dtype=float)
            span = steps[-1] - steps[0]
            rows.append(dict(task=m["task"], localization=m["localization"], seed=int(m["seed"]), fact=fact,
                             auc=float(np.trapezoid(v, steps) / span) if span > 0 else float(v[0])))
    return pd.DataFrame(rows)


def cells_with_curves(out_dir: str | Path, setting: str | None = None) -> pd.DataFrame:
    """The saved cells (``grid.saved_cells``) with the relearning curve summaries of :data:`CURVE_METRICS` (held-out
    half of the attack ``setting``'s curves, :func:`attack_curves`) and each proportion's fact count
    (``n_<metric>``) joined on."""
    cells = grid.saved_cells(out_dir)
    cells["seed"] = cells["seed"].astype(int)
    cm = statistics.curve_metrics(attack_curves(out_dir, setting))
    for metric, (quantity, summary) in CURVE_METRICS.items():
        part = cm[cm["quantity"] == quantity].set_index(["task", "localization", "seed"])
        idx = pd.MultiIndex.from_frame(cells[["task", "localization", "seed"]])
        cells[metric] = part[summary].reindex(idx).to_numpy()
        if quantity == "accuracy":
            cells["n_" + metric] = part["n"].reindex(idx).to_numpy(dtype=float)
    base = baselines(out_dir)
    counts = base.set_index(["task", "seed", "set", "format"])["n"]
    for metric, (set_, fmts) in COUNT_OF.items():
        cells["n_" + metric] = [counts.get((t, s, set_, fmts.get(dataset_of(t))), np.nan)
                                for t, s in zip(cells["task"], cells["seed"])]
    cells["n_probe_true"] = cells["n_forget"].astype(float).where(cells.get("probe_true").notna())
    return cells


def _stratified_mean(values: pd.Series, strata: pd.Series) -> float:
    """The mean over strata (tasks) of each stratum's mean: every task weighs the same, as in the bootstrap."""
    return float(values.groupby(strata.to_numpy()).mean().mean())


def _pairs(cells: pd.DataFrame, other: str, metric: str) -> pd.DataFrame:
    keep = ["task", "seed", metric, "n_" + metric] if "n_" + metric in cells else ["task", "seed", metric]
    side = {loc: cells[cells["localization"] == loc].dropna(subset=[metric])[keep].set_index(["task", "seed"])
            for loc in (registry.FLU.label, other)}
    return side[registry.FLU.label].join(side[other], lsuffix="_flu", rsuffix="_other", how="inner").reset_index()


def _fact_pairs(facts: pd.DataFrame, pairs: pd.DataFrame, other: str) -> pd.DataFrame | None:
    """Per-fact paired differences FLU − ``other`` on the (task, seed) units of ``pairs`` (the same held-out facts
    on both sides), one row per (unit, fact): ``task, unit, diff``; None when a unit lacks its facts on a side."""
    side = {loc: {key: g.set_index("fact")["auc"] for key, g in facts[facts["localization"] == loc]
                  .groupby(["task", "seed"], sort=False)} for loc in (registry.FLU.label, other)}
    rows = []
    for task, seed in zip(pairs["task"], pairs["seed"]):
        a, b = side[registry.FLU.label].get((task, int(seed))), side[other].get((task, int(seed)))
        if a is None or b is None or set(a.index) != set(b.index):
            return None
        rows += [dict(task=task, unit=f"{task}|{seed}", diff=float(x)) for x in (a - b.reindex(a.index)).to_numpy()]
    return pd.DataFrame(rows)


def _pairs_by_task(pairs: pd.DataFrame) -> str:
    """How many (task, seed) pairs each task gives a comparison: ``"edit 64 athletes: 5, forget 64 athletes: 3"``."""
    return ", ".join(f"{t}: {n}" for t, n in pairs.groupby("task", sort=False).size().items())


def _enough_per_task(pairs: pd.DataFrame, min_pairs: int) -> tuple[pd.DataFrame, str]:
    """``pairs`` without the tasks that give fewer than ``min_pairs`` of them, and a note naming those tasks: a task
    resting on one (task, seed) pair has no seed-to-seed spread, and the bootstrap stratified by task would read its
    one difference as exact."""
    size = pairs.groupby("task", sort=False).size()
    few = size[size < min_pairs]
    if few.empty:
        return pairs, ""
    note = "; ".join(f"{t}: {n} pair(s), fewer than {min_pairs}, left out of this comparison" for t, n in few.items())
    return pairs[~pairs["task"].isin(few.index)].reset_index(drop=True), note


def _compare(pairs: pd.DataFrame, metric: str, n_boot: int, rng: int, fact_diffs: pd.DataFrame | None = None,
             level: float = 0.95) -> dict:
    """FLU − comparator on paired cells: the two-level bootstrap (stratified by task) and an exact sign-flip test of
    the same differences. With ``fact_diffs`` (per-fact paired differences, :func:`_fact_pairs`) the bootstrap
    resamples units, then their facts (:func:`statistics.hierarchical_bootstrap`); else the parametric form."""
    n_col = "n_" + metric
    if fact_diffs is not None:
        b = statistics.hierarchical_bootstrap(fact_diffs, value="diff", seed="unit", strata="task", n_boot=n_boot,
                                              level=level, rng=rng)
    else:
        b = statistics.parametric_bootstrap(pairs[metric + "_flu"], pairs.get(n_col + "_flu"), strata=pairs["task"],
                                            p_other=pairs[metric + "_other"], n_other=pairs.get(n_col + "_other"),
                                            n_boot=n_boot, level=level, rng=rng)
    diffs = pairs[metric + "_flu"] - pairs[metric + "_other"]
    return dict(n_pairs=len(pairs), flu_mean=_stratified_mean(pairs[metric + "_flu"], pairs["task"]),
                other_mean=_stratified_mean(pairs[metric + "_other"], pairs["task"]), diff=b.estimate, low=b.low,
                high=b.high, p_value=b.p_value, method=b.method,
                p_signflip=statistics.sign_flip_test(diffs, strata=pairs["task"]), boot=b)


def verdicts_v2(out_dir: str | Path, comparators=COMPARATORS, alpha: float = 0.05, completeness: float = COMPLETENESS,
                margin: float = 0.05, n_boot: int = 10000, rng: int = 0, claims=CLAIMS,
                side_effects=statistics.SIDE_EFFECTS, better_if_higher: dict | None = None, chance: dict | None = None,
                setting: str | None = None, level: float = 0.95, testability_n_boot: int = 4000,
                min_held_out: int = 0, fixed_family: bool = False,
                attack_untestable: str | None = None, min_pairs_per_task: int = 1) -> dict[str, pd.DataFrame]:
    """The re-analysed verdicts of a saved grid (see the module docstring).

    ``claims`` (``(statement, metric, {dataset: instrument})``), ``side_effects`` (``(name, metric, margin)``),
    ``better_if_higher`` and ``chance`` (``{instrument: level}``) default to the shipped grid's; :func:`plan_verdicts`
    passes a plan's. ``setting``: the attack whose curves the relearning claims read (:func:`attack_curves`).
    ``level``: the intervals' coverage; ``testability_n_boot``: the bootstrap draws of each instrument's testability.
    ``min_held_out``: the relearning claims read only cells whose attack held out at least this many facts (others
    are named in the row's note). ``fixed_family``: Holm's family is every row the grid has data for (a plan's
    claim × dataset × comparator and side effect), a row that could not be tested counting as p = 1
    (:func:`statistics.holm`'s ``family_size``); False: the rows that got a p-value. ``attack_untestable``: why the
    attack cannot tell edits apart on this model (:func:`.plan.attack_untestable`); the relearning claims are then
    "untestable on this model" with that reason, their curves still reported. ``min_pairs_per_task``: a task
    giving a comparison fewer (task, seed) pairs than this leaves that comparison, named in its note.

    Returns:
        ``{"verdicts", "testability", "excluded", "floor_ceiling", "curves"}``: the claims with ``diff`` (FLU −
        comparator) ``[low, high]``, ``p_value``, ``p_holm`` and ``verdict`` (bootstrap), and ``p_signflip``,
        ``p_signflip_holm``, ``verdict_signflip`` (the exact sign-flip test, Holm-corrected over the same claims);
        the instruments' testability; the cells left out as incomplete edits; the relearning summaries'
        floor/ceiling status (judged on complete edits only); per-cell curve summaries (``complete``: whether the
        cell's edit was complete and enters the claims).
    """
    better_if_higher = {**BETTER_IF_HIGHER, **(better_if_higher or {})}
    cells = cells_with_curves(out_dir, setting)
    per_fact_auc = fact_aucs(out_dir, setting)  # the relearning area's fact level, where the cells kept it
    test = testability_table(baselines(out_dir), margin=margin, n_boot=testability_n_boot, chance=chance, level=level)
    # an edit is complete when its accuracy on its own trained prompts reaches ``completeness``: ``train_acc`` (the
    # training's final accuracy, what the rates were tuned on), or the evaluation's ``edit_acc`` in cells that did
    # not keep it (grids before the plans); an edit whose accuracy was not measured is not known to be complete
    reached = cells["train_acc"] if "train_acc" in cells else cells["edit_acc"]
    ok = reached >= completeness
    excluded = cells[~ok][["task", "localization", "seed", "edit_acc", "forget_acc"]
                          + (["train_acc"] if "train_acc" in cells else [])]
    complete = cells[ok]
    curve = statistics.curve_metrics(attack_curves(out_dir, setting))
    keys = ["task", "localization", "seed"]
    curve["complete"] = pd.MultiIndex.from_frame(curve[keys]).isin(pd.MultiIndex.from_frame(complete[keys]))
    # floor and ceiling are judged on the complete edits, as every claim is: an incomplete edit's curve would move a
    # localization's mean off the floor or the ceiling that its complete edits sit at
    fc = statistics.floor_ceiling(curve[curve["complete"]])
    stuck = {(r.task, metric) for metric, (q, s) in CURVE_METRICS.items()
             for r in fc[(fc["quantity"] == q) & (fc["metric"] == s) & (fc["status"] != "discriminates")].itertuples()}
    fc_status = {(r.task, metric): f"{r.status} ({r.lowest:.2f}–{r.highest:.2f})" for metric, (q, s) in CURVE_METRICS.items()
                 for r in fc[(fc["quantity"] == q) & (fc["metric"] == s)].itertuples()}
    verdict_of = test.set_index(["task", "set", "format"])
    rows = []
    for dataset in ("sports", "counterfact"):
        in_ds = complete[complete["task"].map(dataset_of) == dataset]
        all_ds = cells[cells["task"].map(dataset_of) == dataset]  # before the exclusions

        def measured(other: str, metric: str) -> bool:
            """Did the grid measure ``metric`` for fact lookup and ``other`` on this dataset (before exclusions)? A
            comparison it never measured is "no data" (outside the family); one whose cells were all excluded is
            a test that could not run (inside it)."""
            return metric in all_ds and all(all_ds.loc[all_ds["localization"] == loc, metric].notna().any()
                                            for loc in (registry.FLU.label, other))

        for claim, metric, instruments in claims:
            fmt = instruments.get(dataset)
            if fmt is None:
                continue
            set_ = "forget" if fmt == "probe" else "maintain"
            tasks = [t for t in dict.fromkeys(in_ds["task"])
                     if metric in in_ds and in_ds.loc[in_ds["task"] == t, metric].notna().any()]
            testable, notes, why = [], [], set()  # why: the verdicts of the tasks left out (the row's, in order)
            if metric in CURVE_METRICS and attack_untestable:
                for other in comparators:
                    rows.append(dict(dataset=dataset, claim=claim, metric=metric, versus=other, instrument=fmt, tasks="",
                                     note=f"the attack: {attack_untestable}",
                                     verdict=statistics.UNTESTABLE if measured(other, metric) else "no data"))
                continue
            of_claim = in_ds
            if metric in CURVE_METRICS and min_held_out:  # an attack's held-out half too small to separate edits
                held = in_ds["n_relearn_acc"]
                few = held.isna() | (held < min_held_out)
                for t, g in in_ds[few].groupby("task", sort=False):
                    sizes = g["n_relearn_acc"].dropna()
                    why.add(f"held-out half below {min_held_out} facts")
                    notes.append(f"{t}: {len(g)} cell(s) held out fewer than {min_held_out} facts in the attack ("
                                 + (f"{int(sizes.min())}" if len(sizes) else "no attack curve") + "), left out")
                of_claim = in_ds[~few]
            for t in tasks:
                if not (of_claim["task"] == t).any():
                    continue
                if (t, set_, fmt) not in verdict_of.index:
                    why.add("no unedited baseline")
                    notes.append(f"{t}: no unedited baseline for {fmt}")
                    continue
                v = verdict_of.loc[(t, set_, fmt)]
                if v["verdict"] != statistics.TESTABLE:
                    why.add(statistics.UNTESTABLE)
                    notes.append(f"{t}: untestable, unedited {fmt} {v['accuracy']:.2f} [{v['low']:.2f}, {v['high']:.2f}] "
                                 f"vs chance {v['chance']:.2f}")
                elif (t, metric) in stuck:
                    why.add("cannot discriminate (floor/ceiling)")
                    notes.append(f"{t}: cannot discriminate, {fc_status[(t, metric)]} for every localization")
                else:
                    testable.append(t)
            for other in comparators:
                row = dict(dataset=dataset, claim=claim, metric=metric, versus=other, instrument=fmt,
                           tasks=", ".join(testable), note="; ".join(notes))
                if not measured(other, metric):
                    rows.append(dict(row, verdict="no data"))
                    continue
                if not tasks:  # measured, but every such cell was excluded as an incomplete edit
                    rows.append(dict(row, n_pairs=0, verdict="too few pairs (0)",
                                     note="every cell with this measure was excluded as an incomplete edit"))
                    continue
                if not testable:
                    order = (statistics.UNTESTABLE, "cannot discriminate (floor/ceiling)", "no unedited baseline",
                             f"held-out half below {min_held_out} facts")
                    rows.append(dict(row, verdict=next(w for w in order if w in why)))
                    continue
                pairs = _pairs(of_claim[of_claim["task"].isin(testable)], other, metric)
                row["pairs_by_task"] = _pairs_by_task(pairs)
                pairs, few = _enough_per_task(pairs, min_pairs_per_task)
                row["note"] = "; ".join(filter(None, (row["note"], few)))
                row["tasks"] = ", ".join(dict.fromkeys(pairs["task"]))
                if len(pairs) < 2:
                    rows.append(dict(row, n_pairs=len(pairs), verdict=f"too few pairs ({len(pairs)})"))
                    continue
                fact_diffs = (_fact_pairs(per_fact_auc, pairs, other)
                              if metric == "relearn_p_true_auc" and per_fact_auc is not None else None)
                compared = _compare(pairs, metric, n_boot, rng, fact_diffs, level)
                compared.pop("boot")
                rows.append(dict(row, **compared, kind="claim"))
        for name, metric, tol in side_effects:
            for other in comparators:
                pairs = _pairs(in_ds, other, metric)
                row = dict(dataset=dataset, claim=f"side effects: {name} (equivalent within ±{tol})", metric=metric,
                           versus=other, instrument="", tasks=", ".join(dict.fromkeys(pairs["task"])), note="",
                           pairs_by_task=_pairs_by_task(pairs))
                if not measured(other, metric):
                    rows.append(dict(row, n_pairs=0, verdict="no data"))
                    continue
                pairs, row["note"] = _enough_per_task(pairs, min_pairs_per_task)
                row["tasks"] = ", ".join(dict.fromkeys(pairs["task"]))
                if len(pairs) < 2:
                    rows.append(dict(row, n_pairs=len(pairs), verdict=f"too few pairs ({len(pairs)})"))
                    continue
                compared = _compare(pairs, metric, n_boot, rng, level=level)
                eq = statistics.tost_bootstrap(compared.pop("boot"), tol)
                compared.update(p_value=eq["p_value"], method=eq["method"], p_signflip=np.nan)
                rows.append(dict(row, **compared, kind="equivalence"))
    out = pd.DataFrame(rows)
    for col in ("p_value", "p_signflip", "kind", "diff", "verdict", "instrument"):  # (absent when no row set them)
        if col not in out:
            out[col] = np.nan
    out["verdict"] = out["verdict"].astype(object)  # filled below for the tested rows
    tested = out["p_value"].notna()
    out["p_holm"] = np.nan
    out["verdict_signflip"] = ""
    in_family = out["verdict"] != "no data"
    family = int(in_family.sum()) if fixed_family else int(tested.sum())
    out.loc[tested, "p_holm"] = statistics.holm(out.loc[tested, "p_value"], family_size=family)
    out["family_size"] = family
    flips = out["p_signflip"].notna()
    out["p_signflip_holm"] = np.nan
    claim_family = int((in_family & (out["instrument"].fillna("") != "")).sum()) if fixed_family else None
    out.loc[flips, "p_signflip_holm"] = statistics.holm(out.loc[flips, "p_signflip"], family_size=claim_family)
    for i in out.index[tested]:
        r = out.loc[i]
        significant = r["p_holm"] <= alpha
        if r["kind"] == "equivalence":
            out.loc[i, "verdict"] = "equivalent" if significant else "equivalence not shown"
        else:
            better = r["diff"] > 0 if better_if_higher[r["metric"]] else r["diff"] < 0
            out.loc[i, "verdict"] = ("supported" if better else "contradicted") if significant else "not distinguishable"
            exact = r["p_signflip_holm"] <= alpha
            out.loc[i, "verdict_signflip"] = ("supported" if better else "contradicted") if exact else "not distinguishable"
    cols = ["dataset", "claim", "metric", "versus", "instrument", "tasks", "n_pairs", "pairs_by_task", "flu_mean", "other_mean", "diff",
            "low", "high", "method", "p_value", "p_holm", "family_size", "verdict", "p_signflip", "p_signflip_holm", "verdict_signflip", "note"]
    return dict(verdicts=out.reindex(columns=cols), testability=test, excluded=excluded.reset_index(drop=True),
                floor_ceiling=fc, curves=curve)


def plan_verdicts(out_dir: str | Path, p, setting: str | None = None, rng: int = 0,
                  attack_untestable: str | None = None) -> dict[str, pd.DataFrame]:
    """:func:`verdicts_v2` of a grid against its pre-registered plan (:class:`.plan.Plan`): the plan's claims,
    instruments and chance levels, comparators, side effects and their margins, family-wise ``alpha``, testability
    margin, completeness rule, held-out minimum, bootstrap size and level. Holm's family is fixed as the plan fixes
    it: every claim × dataset × comparator and every side effect the grid has data for, a test that could not be
    computed (an untestable instrument, too few pairs) counting as p = 1; for the whole plan's grid that is
    :attr:`.plan.Plan.family_size`. A grid that ran a part of the plan is compared with the plan's comparators it
    holds (the family is then the tests that part allows). ``setting``: the attack the relearning claims read
    (default: the plan's first; the plan's ``[attack]`` rule picks the primary one from the calibration).
    A task enters a comparison with at least 2 (task, seed) pairs (one pair has no seed-to-seed spread).
    A folder holding a cell of a seed that is not one of the plan's test seeds (the tuning seed above all) is
    refused with the cells named, not read; a folder holding every cell of the plan whose tests do not make the
    plan's whole family (a measure missing from the cells) is refused after reading.
    ``attack_untestable``: why no attack setting can judge the relearning claims (:func:`.plan.attack_untestable`).
    """
    claims = tuple((c.statement, c.metric, {d: c.instrument for d in c.datasets}) for c in p.claims)
    cells = grid.saved_cells(out_dir)
    foreign = cells[~cells["seed"].isin(p.test_seeds)]
    if len(foreign):  # the tuning seed (or any other) would enter the verdicts unseen: refuse, naming the cells
        named = ", ".join(f"{r.task} / {r.localization} / seed {r.seed}" for r in foreign.head(5).itertuples())
        raise ValueError(f"{out_dir} holds {len(foreign)} cell(s) of seeds outside plan {p.name!r}'s test seeds "
                         f"{list(p.test_seeds)} ({named}{', ...' if len(foreign) > 5 else ''}); the tuning seed "
                         f"{p.tuning_seed} never enters a verdict. Fix: move those cells out of {Path(out_dir) / 'cells'}.")
    present = set(cells["localization"])
    comparators = tuple(c for c in p.comparators if c in present)
    if p.subject not in present or not comparators:
        raise ValueError(f"{out_dir} holds cells of {sorted(present)}; plan {p.name!r} compares {p.subject!r} with "
                         f"{list(p.comparators)}. Fix: run the subject and at least one comparator.")
    result = verdicts_v2(out_dir, comparators=comparators, alpha=p.alpha, completeness=p.edit_completeness,
                       attack_untestable=attack_untestable, min_pairs_per_task=2,
                       margin=p.testability_margin, n_boot=p.n_boot, rng=rng, claims=claims,
                       side_effects=tuple((e.id, e.metric, e.margin) for e in p.side_effects),
                       better_if_higher={c.metric: c.higher_is_better for c in p.claims},
                       chance={c.instrument: c.chance for c in p.claims}, setting=setting or p.attack_settings[0],
                       level=p.level, testability_n_boot=p.n_boot, min_held_out=p.min_held_out, fixed_family=True)
    design = {(t, loc, s) for t in p.tasks for loc in (p.subject, *p.comparators) for s in p.test_seeds}
    v = result["verdicts"]
    if design <= set(zip(cells["task"], cells["localization"], cells["seed"].astype(int))) and len(v) and \
            int(v["family_size"].iloc[0]) != p.family_size:  # the whole plan ran: a test without data is an error
        missing = v[v["verdict"] == "no data"]
        named = "; ".join(f"{r.dataset} / {r.metric} / {r.versus}" for r in missing.head(5).itertuples())
        raise ValueError(f"{out_dir} holds every cell of plan {p.name!r}, but {len(missing)} of its tests have no "
                         f"data ({named}): Holm's family would be {int(v['family_size'].iloc[0])} instead of the plan's "
                         f"{p.family_size}. Fix: the cells lack a measure the plan reads; recompute them with this "
                         f"version of the package (delete their files in {Path(out_dir) / 'cells'} and run again).")
    return result


def summary(result: dict, alpha: float = 0.05) -> dict:
    """The headline numbers of :func:`verdicts_v2` as plain data (what the re-analysis README quotes)."""
    v, test = result["verdicts"], result["testability"]
    mcq = test[(test["set"] == "maintain") & test["format"].isin(["mcq", "mcq_nosys", "cf_mcq", "mcq_debiased", "qa"])]
    tested = v[v["p_value"].notna()]
    claims = tested[tested["verdict"].isin(["supported", "contradicted", "not distinguishable"])]
    return dict(
        alpha=alpha, family_size=int(v["family_size"].iloc[0]) if len(v) else 0, n_tested=int(len(tested)),
        n_claim_rows=int(len(v)),
        verdict_counts={k: int(n) for k, n in v["verdict"].value_counts().items()},
        held_out_baselines=[dict(task=r.task, format=r.format, accuracy=round(r.accuracy, 3), low=round(r.low, 3),
                                 high=round(r.high, 3), chance=r.chance, verdict=r.verdict) for r in mcq.itertuples()],
        excluded_cells=[dict(task=r.task, localization=r.localization, seed=int(r.seed), edit_acc=round(r.edit_acc, 3))
                        for r in result["excluded"].itertuples()],
        not_discriminating=[dict(task=r.task, quantity=r.quantity, metric=r.metric, lowest=round(r.lowest, 3),
                                 highest=round(r.highest, 3), status=r.status)
                            for r in result["floor_ceiling"].itertuples() if r.status != "discriminates"],
        claims=[dict(dataset=r.dataset, metric=r.metric, versus=r.versus, n_pairs=int(r.n_pairs), diff=round(r.diff, 4),
                     low=round(r.low, 4), high=round(r.high, 4), p_holm=round(r.p_holm, 4),
                     p_signflip_holm=round(r.p_signflip_holm, 4), verdict=r.verdict) for r in claims.itertuples()],
        claims_surviving_signflip=int((claims["p_signflip_holm"] <= alpha).sum()),
    )

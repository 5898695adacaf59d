"""Statistics that respect the design (seeds, then facts), on synthetic data: no model needed."""

import numpy as np
import pandas as pd
import pytest

from mechunlearn_nb import statistics


def _facts(n_facts: int, p=(0.55, 0.6, 0.65), rng=0) -> pd.DataFrame:
    gen = np.random.default_rng(rng)
    return pd.DataFrame([dict(seed=s, value=float(gen.random() < ps)) for s, ps in enumerate(p) for _ in range(n_facts)])


def test_two_level_bootstrap_narrows_with_more_facts():
    widths = [(b.high - b.low) for b in (statistics.hierarchical_bootstrap(_facts(n), n_boot=1000) for n in (8, 64, 512))]
    assert widths[0] > widths[1] > widths[2]
    # the seed level stays: with many facts the interval does not collapse to nothing
    assert widths[2] > 0.02
    b = statistics.hierarchical_bootstrap(_facts(64))
    assert b.method == statistics.FACTS and b.n_units == 3 and b.low < b.estimate < b.high


def test_parametric_bootstrap_narrows_with_more_facts_and_names_its_form():
    p = [0.5, 0.6, 0.55]
    small, large = (statistics.parametric_bootstrap(p, [n] * 3) for n in (8, 512))
    assert small.method == statistics.BINOMIAL
    assert (small.high - small.low) > 1.5 * (large.high - large.low)
    seeds_only = statistics.parametric_bootstrap(p)
    assert seeds_only.method == statistics.SEEDS_ONLY
    # facts at Binomial level add width to the seeds-only interval
    assert (small.high - small.low) > (seeds_only.high - seeds_only.low)


def test_parametric_bootstrap_paired_difference_and_p_value():
    same = statistics.parametric_bootstrap([0.5, 0.6, 0.55, 0.52], [64] * 4, p_other=[0.5, 0.6, 0.55, 0.52], n_other=[64] * 4)
    apart = statistics.parametric_bootstrap([0.9, 0.92, 0.88, 0.91], [64] * 4, p_other=[0.1, 0.12, 0.08, 0.1], n_other=[64] * 4)
    assert same.estimate == pytest.approx(0.0) and same.p_value > 0.3
    assert apart.estimate == pytest.approx(0.8025) and apart.p_value < 0.01 and apart.low > 0.7
    with pytest.raises(ValueError, match="proportions"):
        statistics.parametric_bootstrap([1.5, 0.2], [8, 8])
    with pytest.raises(ValueError, match="one entry per unit"):
        statistics.parametric_bootstrap([0.5, 0.2], [8])


def test_holm_matches_a_hand_computed_case():
    # sorted: 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06, 0.04·1 = 0.04 → running max 0.06
    adjusted = statistics.holm([0.01, 0.04, 0.03, 0.005, np.nan])
    np.testing.assert_allclose(adjusted[:4], [0.03, 0.06, 0.06, 0.02])
    assert np.isnan(adjusted[4])
    assert statistics.holm([0.6, 0.5]).tolist() == [1.0, 1.0]
    with pytest.raises(ValueError, match="p-values"):
        statistics.holm([2.0])
    # a family fixed at 6 of which 4 were computed: the 2 others count as p = 1 (0.005·6, 0.01·5, 0.03·4, 0.04·3)
    fixed = statistics.holm([0.01, 0.04, 0.03, 0.005, np.nan], family_size=6)
    np.testing.assert_allclose(fixed[:4], [0.05, 0.12, 0.12, 0.03])
    np.testing.assert_allclose(fixed[:4], statistics.holm([0.01, 0.04, 0.03, 0.005, 1.0, 1.0])[:4])
    with pytest.raises(ValueError, match="smaller than the 4 p-values"):
        statistics.holm([0.01, 0.04, 0.03, 0.005], family_size=3)


def test_tost_accepts_equal_and_rejects_shifted():
    gen = np.random.default_rng(0)
    equal = statistics.tost(gen.normal(0.0, 0.03, 12), margin=0.1)
    shifted = statistics.tost(gen.normal(0.2, 0.03, 12), margin=0.1)
    assert equal["equivalent"] and equal["p_value"] < 0.01
    assert not shifted["equivalent"] and shifted["p_value"] > 0.5
    # the bootstrap form agrees
    same = statistics.parametric_bootstrap([0.9, 0.91, 0.9, 0.92], [256] * 4, p_other=[0.9, 0.9, 0.91, 0.92], n_other=[256] * 4)
    apart = statistics.parametric_bootstrap([0.9, 0.91, 0.9, 0.92], [256] * 4, p_other=[0.7, 0.7, 0.71, 0.72], n_other=[256] * 4)
    assert statistics.tost_bootstrap(same, 0.1)["equivalent"]
    assert not statistics.tost_bootstrap(apart, 0.1)["equivalent"]


def test_testability_flags_a_model_answering_at_chance():
    at_chance = statistics.testability([0.26, 0.24, 0.25], [256] * 3, chance=0.25)
    assert at_chance["verdict"] == statistics.UNTESTABLE and "0.25" in at_chance["reason"]
    below = statistics.testability([0.07, 0.05, 0.06], [256] * 3, chance=statistics.CHANCE["mcq"])
    assert below["verdict"] == statistics.UNTESTABLE and below["high"] < 0.25
    knows = statistics.testability([0.93, 0.95, 0.91], [256] * 3, chance=0.25)
    assert knows["verdict"] == statistics.TESTABLE and knows["low"] > 0.3
    # a few facts: 0.45 on 8 facts is not clearly above chance + margin
    few = statistics.testability([0.45], [8], chance=0.25, margin=0.05)
    assert few["verdict"] == statistics.UNTESTABLE


def _curves():
    rows = []
    for loc, shape in (("fact lookup", [0.0, 0.3, 0.1, 0.0]), ("random", [0.0, 0.1, 0.05, 0.02])):
        for seed in (0, 1):
            for step, v in zip((0, 5, 10, 20), shape):
                rows.append(dict(task="t", localization=loc, seed=seed, step=step, half="B (held out)", accuracy=0.0,
                                 p_true=v, n=8))
                rows.append(dict(task="t", localization=loc, seed=seed, step=step, half="A (trained)", accuracy=1.0,
                                 p_true=1.0, n=8))
    return pd.DataFrame(rows)


def test_curve_metrics_keep_what_the_endpoint_throws_away():
    m = statistics.curve_metrics(_curves())
    flu = m[(m.localization == "fact lookup") & (m.quantity == "p_true")].iloc[0]
    # trapezoid over steps 0, 5, 10, 20: (0+0.3)/2·5 + (0.3+0.1)/2·5 + (0.1+0)/2·10 = 2.25, over a span of 20
    assert flu["auc"] == pytest.approx(2.25 / 20)
    assert flu["max"] == pytest.approx(0.3) and flu["change"] == pytest.approx(0.0) and flu["final"] == 0.0
    status = statistics.floor_ceiling(m).set_index(["quantity", "metric"])["status"]
    assert status["accuracy", "final"] == "floor"          # held-out accuracy 0 for every localization
    assert status["p_true", "max"] == "discriminates"      # 0.3 vs 0.1 at step 5
    trained = statistics.floor_ceiling(statistics.curve_metrics(_curves(), half="A (trained)"))
    assert (trained.set_index(["quantity", "metric"]).loc[("accuracy", "final"), "status"]) == "ceiling"
    with pytest.raises(ValueError, match="half"):
        statistics.curve_metrics(_curves(), half="C")


def test_sign_flip_test_is_exact_and_bounded_by_the_number_of_pairs():
    assert statistics.sign_flip_test([0.1] * 6) == pytest.approx(2 / 64)   # all one sign: the smallest p six pairs allow
    assert statistics.sign_flip_test([0.1, -0.1, 0.1, -0.1]) == 1.0
    assert statistics.sign_flip_test([0.3, 0.2, 0.25, -0.01, 0.28, 0.22, 0.3, 0.26]) < 0.05


def test_reanalysis_of_the_shipped_grid():
    from pathlib import Path

    from mechunlearn_nb import plots, reanalysis

    grid_dir = Path(__file__).resolve().parents[1] / "results" / "09_comparison_full"
    r = reanalysis.verdicts_v2(grid_dir, n_boot=1000)
    v, test = r["verdicts"], r["testability"]
    # multiple choice on held-out known facts is at or below chance on every task: its claims are untestable
    mcq = test[(test["set"] == "maintain") & test["format"].isin(["mcq", "cf_mcq"])]
    assert len(mcq) == 5 and (mcq["verdict"] == statistics.UNTESTABLE).all() and (mcq["high"] < 0.3).all()
    assert (v[v["metric"].str.startswith("mcq")]["verdict"] == statistics.UNTESTABLE).all()
    qa = test[(test["set"] == "maintain") & (test["format"] == "qa")]
    assert (qa["verdict"] == statistics.TESTABLE).all() and (qa["low"] > 0.8).all()
    # the endpoint of relearning sits at the ceiling on forget-basketball and the floor on edit-16 for every localization
    stuck = r["floor_ceiling"].set_index(["task", "quantity", "metric"])["status"]
    assert stuck["forget basketball", "accuracy", "final"] == "ceiling"
    assert stuck["edit 16 athletes", "accuracy", "final"] == "floor"
    # incomplete edits are left out (causal-tracing OT under-fits edit-64 on two seeds)
    ex = r["excluded"]
    assert ((ex["localization"] == "OT (causal tracing)") & (ex["task"] == "edit 64 athletes")).sum() == 2
    assert (ex["edit_acc"] < reanalysis.COMPLETENESS).all()
    # fact lookup against random of the same budget is a named comparator with a verdict
    rnd = v[(v["versus"] == "random") & v["p_value"].notna()]
    assert len(rnd) >= 8 and rnd["p_holm"].ge(rnd["p_value"]).all()
    fig = plots.plot_claims(v)
    assert len(fig.axes) == 2 and {a.get_title() for a in fig.axes} == {"sports", "counterfact"}
    assert set(v["verdict"]) <= {"supported", "contradicted", "not distinguishable", "equivalent",
                                 "equivalence not shown", statistics.UNTESTABLE, "too few pairs (1)", "no data"}


def test_a_grid_is_judged_against_its_plan(tmp_path):
    """plan_verdicts reads a grid with the plan's claims, instruments, comparators, margins and alpha. On the shipped
    grid (run before the plan): the plan's debiased multiple choice and QA-format metrics were never measured there
    ("no data"), its relearning claim reads the curve's area, and its numbers equal the re-analysis' for the same
    metric and comparator; a grid without the plan's subject or any comparator is refused."""
    import json
    from dataclasses import replace
    from pathlib import Path

    from mechunlearn_nb import grid, plan, reanalysis
    from mechunlearn_nb.io import save_json

    grid_dir = Path(__file__).resolve().parents[1] / "results" / "09_comparison_full"
    p = replace(plan.require("v2"), n_boot=1000)
    r = reanalysis.plan_verdicts(grid_dir, p)
    v = r["verdicts"]
    assert set(v["versus"]) == set(p.comparators)  # the first grid ran all four of v2's comparators
    claims = v[v["instrument"] != ""]
    assert set(claims["claim"]) == {c.statement for c in p.claims}
    assert (claims[claims["metric"].isin(["mcq_debiased_edit_acc", "qa_forget_acc"])]["verdict"] == "no data").all()
    side = v[v["instrument"] == ""]
    assert {c.split(" (")[0] for c in side["claim"]} == {f"side effects: {e.id}" for e in p.side_effects}
    assert all(f"±{e.margin}" in " ".join(side["claim"]) for e in p.side_effects)
    tested = v[v["p_value"].notna()]
    # Holm's family is the plan's 44 tests less the 12 this grid never measured (debiased MC and QA: "no data")
    assert p.family_size == 44 and (v["verdict"] == "no data").sum() == 12 and (v["family_size"] == 32).all()
    assert tested["p_holm"].ge(tested["p_value"]).all()
    # the plan's held-out minimum (32): the 16-fact tasks (8 held out) leave the relearning claims, named in the note
    auc = tested[tested["metric"] == "relearn_p_true_auc"]
    assert len(auc) == 8 and not auc["tasks"].str.contains("16").any()
    assert auc["note"].str.contains("held out fewer than 32 facts in the attack \\(8\\)").all()
    # a task enters a comparison with 2 pairs or more: causal-tracing OT kept one complete edit-64 cell
    assert auc["n_pairs"].tolist() == [sum(n for n in (int(part.split(": ")[1]) for part in t.split(", ")) if n >= 2)
                                       for t in auc["pairs_by_task"]]
    ct = auc.set_index(["dataset", "versus"]).loc[("sports", "OT (causal tracing)")]
    assert ct["n_pairs"] == 3 and "edit 64 athletes: 1 pair(s), fewer than 2, left out" in ct["note"]
    # the same metric, comparator and pairs as the re-analysis with the same minimums: the same estimate
    again = reanalysis.verdicts_v2(grid_dir, n_boot=1000, min_held_out=32, min_pairs_per_task=2, claims=[
        c for c in reanalysis.CLAIMS if c[1] == "relearn_p_true_auc"])["verdicts"]
    key = ["dataset", "metric", "versus"]
    both = auc.merge(again[again["p_value"].notna()], on=key, suffixes=("", "_again"))
    assert len(both) == 6 and np.allclose(both["diff"], both["diff_again"])  # 2 datasets x 3 (non-localized: new)
    assert (both["n_pairs"] == both["n_pairs_again"]).all() and (both["pairs_by_task"] == both["pairs_by_task_again"]).all()
    alone = tmp_path / "cells"  # a grid of fact lookup alone: nothing to compare it with
    alone.mkdir()
    for cell in sorted((grid_dir / "cells").glob("edit-64-athletes__fact-lookup__*.json")):
        (alone / cell.name).write_text(cell.read_text())
    with pytest.raises(ValueError, match="run the subject and at least one comparator"):
        reanalysis.plan_verdicts(tmp_path, p)
    # a cell of the tuning seed among the test seeds' is refused, named, before any verdict reads it
    tuned = json.loads((grid_dir / "cells" / "edit-64-athletes__random__0.json").read_text())
    tuned["metrics"]["seed"] = p.tuning_seed
    save_json(tuned, grid.cell_path(tmp_path, "edit 64 athletes", "random", p.tuning_seed))
    with pytest.raises(ValueError, match=r"1 cell\(s\) of seeds outside plan 'v2'.*edit 64 athletes / random / seed 100"
                                         r".*Fix: move those cells out"):
        reanalysis.plan_verdicts(tmp_path, p)
    # a grid holding every cell of a plan must make the plan's whole family: here the first grid lacks the debiased
    # multiple choice and the QA format (12 tests without data), which a plan of its own tasks and seeds refuses
    own = replace(p, tasks=("edit 64 athletes", "counterfact 64"), test_seeds=(0, 1, 2))
    with pytest.raises(ValueError, match=r"every cell of plan 'v2', but 12 of its tests have no data.*family would be "
                                         r"32 instead of the plan's 44"):
        reanalysis.plan_verdicts(grid_dir, own)


def test_rank_correlation_ignores_seed_shifts_and_says_when_it_cannot_be_computed():
    units = [f"w{i}" for i in range(10)]
    ev = pd.Series(np.arange(10.0), index=units)
    rng = np.random.default_rng(1)
    base = pd.DataFrame([dict(unit=u, seed=s, value=0.1 * i + rng.normal(0, 0.2)) for i, u in enumerate(units)
                         for s in range(3)])
    r = statistics.rank_correlation(base, ev, n_boot=2000)
    assert r["low"] > 0 and r["n_units"] == 10 and r["n_seeds"] == 3
    shifted = statistics.rank_correlation(base.assign(value=base["value"] + base["seed"] * 5.0), ev, n_boot=2000)
    assert shifted == pytest.approx(r)  # a seed that moves every unit alike changes no rank and no noise estimate
    # a window that lost a seed keeps its level: the seed's shift is fitted out, not averaged in (the raw means
    # here would put the last unit first)
    lost = base.assign(value=base["value"] + (base["seed"] == 2) * 10.0)
    lost = lost[~((lost["unit"] == "w0") & (lost["seed"] != 2))]
    assert statistics.rank_correlation(lost, ev, n_boot=2000)["rho"] == pytest.approx(r["rho"], abs=0.05)
    assert statistics.additive_fit(np.array([[0, 10], [1, 11], [2, 12], [3, np.nan]]))[0] == pytest.approx([5, 6, 7, 8])
    one_seed = statistics.rank_correlation(base[base["seed"] == 0], ev, n_boot=2000)
    assert np.isfinite(one_seed["rho"]) and np.isnan(one_seed["low"]) and "no interval" in one_seed["note"]
    tied = statistics.rank_correlation(base, pd.Series(1.0, index=units), n_boot=2000)
    assert np.isnan(tied["rho"]) and "evidence is the same" in tied["note"] and r["note"] == ""
    with pytest.raises(ValueError, match="needs columns 'unit', 'seed', 'value'"):
        statistics.rank_correlation(base.rename(columns={"unit": "window"}), ev)


def test_rank_correlation_interval_keeps_its_error_rate_on_pure_noise_and_finds_a_trend():
    """The calibration the docstring quotes, rerun small: 15 units x 3 seeds, as the window sweep has."""
    units = [f"w{i}" for i in range(15)]
    ev = pd.Series(np.arange(15.0), index=units)

    def run(trend, seed):
        rng = np.random.default_rng(seed)
        shifts = rng.normal(0, 1.0, 3)  # seeds that move every unit alike
        values = pd.DataFrame([dict(unit=u, seed=s, value=trend * i + shifts[s] + rng.normal())
                               for i, u in enumerate(units) for s in range(3)])
        return statistics.rank_correlation(values, ev, n_boot=400, rng=seed)

    null = [run(0.0, seed) for seed in range(120)]
    missed = np.mean([r["low"] > 0 or r["high"] < 0 for r in null])
    assert missed <= 0.10  # 95% interval; the seeds-only bootstrap it replaced missed about 0.2
    found = np.mean([run(0.15, 1000 + seed)["low"] > 0 for seed in range(40)])
    assert found >= 0.85


def test_partial_spearman_holds_the_control_fixed():
    rng = np.random.default_rng(0)
    z = np.arange(30.0)
    shared = rng.normal(size=30)
    # both follow z; only the first pair shares something beyond it
    x, y = z + 5 * shared, z + 5 * shared + rng.normal(size=30)
    u, v = z + 5 * rng.normal(size=30), z + 5 * rng.normal(size=30)
    assert statistics.partial_spearman(x, y, z) > 0.8
    assert abs(statistics.partial_spearman(u, v, z)) < 0.4 < stats_spearman(u, v)
    assert np.isnan(statistics.partial_spearman([1, 2, 3], [3, 1, 2], [1, 2, 3]))  # three points: nothing left
    assert np.isnan(statistics.partial_spearman(z, y, z))  # x is the control up to rank


def stats_spearman(a, b):
    from scipy import stats

    return stats.spearmanr(a, b).statistic


def test_verdicts_count_facts_not_prompts_and_leave_out_an_unmeasured_edit(tmp_path):
    """CounterFact scores two paraphrases of each fact: the paraphrase proportions' unit is the fact (64), not the
    prompt (128). An edit whose accuracy is missing is not known to be complete: excluded, with its pair. A claim whose
    instrument has no unedited baseline says so."""
    import json
    from pathlib import Path

    from mechunlearn_nb import reanalysis

    shipped = Path(__file__).resolve().parents[1] / "results" / "09_comparison_full" / "cells"
    (tmp_path / "cells").mkdir()
    for path in sorted(shipped.glob("counterfact-64__*.json")):
        cell = json.loads(path.read_text())
        if cell["metrics"]["localization"] == "fact lookup" and cell["metrics"]["seed"] == 2:
            cell["metrics"]["edit_acc"] = None
        if cell["metrics"]["localization"] == "all MLPs":  # every one incomplete
            cell["metrics"]["edit_acc"] = 0.5
        (tmp_path / "cells" / path.name).write_text(json.dumps(cell))
    base = reanalysis.baselines(tmp_path).set_index(["seed", "set", "format"])
    assert base.loc[(0, "forget", "cf_paraphrase"), ["n", "n_prompts"]].tolist() == [64, 128]
    assert base.loc[(0, "maintain", "cf_paraphrase"), "n"] == base.loc[(0, "maintain", "cf_prompt"), "n"] == 256
    claims = (("paraphrases", "paraphrase_edit_acc", {"counterfact": "cf_paraphrase"}),
              ("no baseline", "paraphrase_edit_acc", {"counterfact": "cf_nowhere"}))
    r = reanalysis.verdicts_v2(tmp_path, comparators=("random",), n_boot=500, claims=claims, side_effects=())
    ex = r["excluded"]
    assert ex[["localization", "seed"]].values.tolist() == [["all MLPs", 0], ["all MLPs", 1], ["all MLPs", 2],
                                                            ["fact lookup", 2]]
    assert ex["edit_acc"].isna().sum() == 1
    v = r["verdicts"].set_index("claim")
    assert v.loc["paraphrases", "n_pairs"] == 2 and v.loc["paraphrases", "pairs_by_task"] == "counterfact 64: 2"
    assert v.loc["no baseline", "verdict"] == "no unedited baseline" and "cf_nowhere" in v.loc["no baseline", "note"]
    assert (r["verdicts"]["family_size"] == 1).all()  # the rows that got a p-value (no plan fixed the family)
    fixed = reanalysis.verdicts_v2(tmp_path, comparators=("random",), n_boot=500, claims=claims, side_effects=(),
                                   fixed_family=True)["verdicts"].set_index("claim")
    assert (fixed["family_size"] == 2).all()
    assert fixed.loc["paraphrases", "p_holm"] == pytest.approx(min(1.0, 2 * fixed.loc["paraphrases", "p_value"]))
    # a comparator measured but every cell excluded: a test that could not run (in the family); one never run: no data
    three = reanalysis.verdicts_v2(tmp_path, comparators=("random", "all MLPs", "OT (nowhere)"), n_boot=500,
                                   claims=claims[:1], side_effects=(("maintain", "maintain_acc", 0.05),),
                                   fixed_family=True)["verdicts"].set_index(["dataset", "versus", "metric"])
    assert three.loc[("counterfact", "all MLPs", "paraphrase_edit_acc"), "verdict"] == "too few pairs (0)"
    assert three.loc[("counterfact", "all MLPs", "maintain_acc"), "verdict"] == "too few pairs (0)"
    assert (three.xs("OT (nowhere)", level="versus")["verdict"] == "no data").all()
    assert (three.xs("sports")["verdict"] == "no data").all()  # no sports cell here
    assert (three["family_size"] == 4).all()  # random and all MLPs, a claim and a side effect each


def test_the_claims_figure_puts_fact_lookup_better_on_the_right():
    """Oriented by which way is better, a lower relearning area and a higher carry-over both plot right of zero;
    raw, the area's difference stays negative; a metric with no direction is refused."""
    from mechunlearn_nb import plan, plots, reanalysis

    v = pd.DataFrame([dict(dataset="sports", metric="relearn_p_true_auc", versus="random", diff=-0.03, low=-0.05,
                           high=-0.01, verdict="supported"),
                      dict(dataset="sports", metric="mcq_debiased_edit_acc", versus="random", diff=0.1, low=0.05,
                           high=0.15, verdict="supported")])

    def points(fig):
        return sorted(float(line.get_xdata()[0]) for line in fig.axes[0].lines if line.get_marker() == "o")

    better = reanalysis.better_if_higher(plan.require("v3"))
    assert better["mcq_debiased_edit_acc"] and not better["relearn_p_true_auc"]
    oriented = plots.plot_claims(v, better_if_higher=better)
    assert points(oriented) == pytest.approx([0.03, 0.1]) and "fact lookup better" in oriented.axes[0].get_xlabel()
    assert points(plots.plot_claims(v)) == pytest.approx([-0.03, 0.1])
    with pytest.raises(ValueError, match=r"which way is better for \['mcq_debiased_edit_acc'\]"):
        plots.plot_claims(v, better_if_higher=reanalysis.better_if_higher())


def test_completeness_reads_the_trained_prompts_accuracy_and_floor_ceiling_only_complete_edits(tmp_path):
    """An edit is complete by its training's final accuracy on its own prompts (``train_acc``, what the rates were
    tuned on) where the cell kept it, whatever the evaluation's ``edit_acc`` says. Floor and ceiling are judged on the
    complete edits: every complete edit at the ceiling is "ceiling" however low an excluded one sits (reading the
    excluded one too, fact lookup's mean would fall to 2/3 and the task would "discriminate")."""
    import json
    from pathlib import Path

    from mechunlearn_nb import reanalysis

    shipped = Path(__file__).resolve().parents[1] / "results" / "09_comparison_full" / "cells"
    (tmp_path / "cells").mkdir()
    for path in sorted(shipped.glob("edit-64-athletes__*.json")):
        cell = json.loads(path.read_text())
        m = cell["metrics"]
        if m["localization"] not in ("fact lookup", "random"):
            continue
        incomplete = m["localization"] == "fact lookup" and m["seed"] == 0
        m["edit_acc"], m["train_acc"] = 1.0, 0.5 if incomplete else 1.0
        for row in cell["curve"]:
            if row["half"].startswith("B"):
                row["accuracy"] = row["p_true"] = 0.0 if incomplete else 1.0
        (tmp_path / "cells" / path.name).write_text(json.dumps(cell))
    claims = (("relearning", "relearn_p_true_auc", {"sports": "fact"}),)
    r = reanalysis.verdicts_v2(tmp_path, comparators=("random",), n_boot=200, claims=claims, side_effects=())
    ex = r["excluded"]
    assert ex[["localization", "seed", "train_acc", "edit_acc"]].values.tolist() == [["fact lookup", 0, 0.5, 1.0]]
    fc = r["floor_ceiling"].set_index(["task", "quantity", "metric"])["status"]
    assert fc["edit 64 athletes", "p_true", "auc"] == fc["edit 64 athletes", "accuracy", "final"] == "ceiling"
    curves = r["curves"].set_index(["localization", "seed"])
    assert not curves.loc[("fact lookup", 0), "complete"].any() and curves.loc[("random", 0), "complete"].all()
    assert "cannot discriminate" in r["verdicts"].iloc[0]["verdict"]
    # without train_acc (cells of grids before the plans) the evaluation's edit accuracy decides, as before
    for path in (tmp_path / "cells").glob("*.json"):
        cell = json.loads(path.read_text())
        del cell["metrics"]["train_acc"]
        path.write_text(json.dumps(cell))
    assert reanalysis.verdicts_v2(tmp_path, comparators=("random",), n_boot=200, claims=claims,
                                  side_effects=())["excluded"].empty

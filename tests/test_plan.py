"""Pre-registration: the plan file is read, checked, and a grid without one is refused."""

from pathlib import Path

import numpy as np
import pytest

from mechunlearn_nb import plan

ROOT = Path(__file__).resolve().parents[1]
V2 = ROOT / "mechunlearn_nb" / "plans" / "v2.toml"


def test_the_shipped_plan_loads():
    p = plan.load(V2)
    assert p.alpha == 0.05 and p.correction == "holm" and p.tuning_seed not in p.test_seeds
    assert p.subject == "fact lookup" and "random" in p.comparators
    assert p.probe_window == (6, 14) and p.edit_completeness == 0.95
    assert {c.id for c in p.claims} >= {"mcq", "qa", "relearning", "probe"}
    assert {s.metric: s.margin for s in p.side_effects}["maintain_acc"] == 0.05
    assert p.family_size == sum(len(c.datasets) for c in p.claims) * 4 + len(p.side_effects) * 2 * 4
    # the study's design: five test seeds, a forgetting task elimination cannot solve, both attack settings
    assert len(p.test_seeds) >= 5 and "forget 64 athletes" in p.tasks and "forget basketball" not in p.tasks
    assert p.localizations == ("fact lookup", "OT (causal tracing)", "OT (attribution patching)", "random",
                               "non-localized")
    assert p.precision == "bfloat16-mixed" and p.relearn_steps[0] == 0 and p.attack_settings == ("scaled", "paper")


def test_a_missing_plan_is_refused_naming_the_file_and_the_fix(tmp_path):
    with pytest.raises(plan.PlanError, match=r"No plan file at .*nowhere\.toml.*Fix: write one"):
        plan.require(tmp_path / "nowhere.toml")
    with pytest.raises(plan.PlanError, match=r"no plan.*Fix: name a shipped plan \(\['v2', 'v3'\]"):
        plan.require(None)
    with pytest.raises(plan.PlanError, match=r"No plan named 'v9': the shipped plans are \['v2', 'v3'\]"):
        plan.require("v9")
    assert plan.require("v2") == plan.load(V2)  # a shipped plan by name (it lives in the package: pip installs it)


@pytest.mark.parametrize("change, problem", [
    (("alpha = 0.05", "alpha = 5"), r"\[plan\]\.alpha = 5 is out of range"),
    (("tuning_seed = 100", "tuning_seed = 1"), "tuning_seed 1 is also a test seed"),
    (('"random", "non-localized"]', '"randomly", "non-localized"]'), "unknown localization"),
    (("window = [6, 14]", "window = [14, 6]"), r"\[probe\]\.window"),
    (('instrument = "mcq_debiased"\nchance = 0.25', 'instrument = "mcq_debiased"'), "no known chance level"),
    (("edit_completeness = 0.95", ""), "has no 'edit_completeness'"),
    (("[plan]", "[plan"), "not valid TOML"),
    (('"forget 64 athletes"', '"forget everything"'), "unknown task"),
    (('precision = "bfloat16-mixed"', 'precision = "half"'), r"\[grid\]\.precision"),
    (('settings = ["scaled", "paper"]', 'settings = ["strong"]'), r"\[attack\]\.settings"),
    (("relearn_steps = [0, 2, 5, 10, 20]", "relearn_steps = [5, 20]"), r"\[grid\]\.relearn_steps"),
])
def test_a_malformed_plan_is_refused(tmp_path, change, problem):
    text = V2.read_text()
    assert change[0] in text
    bad = tmp_path / "bad.toml"
    bad.write_text(text.replace(change[0], change[1], 1))
    with pytest.raises(plan.PlanError, match=problem) as err:
        plan.require(bad)
    assert str(bad) in str(err.value) and "Fix:" in str(err.value)


def test_the_plan_makes_the_grid_it_tests():
    p = plan.load(V2)
    config = plan.grid_config(p, rates={"sports": {"random": 1e-4}})
    assert config.tasks == p.tasks and config.localizations == p.localizations and config.seeds == p.test_seeds
    assert p.tuning_seed not in config.seeds and config.probe_window == p.probe_window
    assert config.attack_settings == p.attack_settings and config.relearn_steps == p.relearn_steps
    assert config.edit_overrides["precision"] == config.relearn_overrides["precision"] == p.precision
    assert config.edit_overrides["eval_every"] == 0 and config.rates == {"sports": {"random": 1e-4}}
    assert plan.grid_config(p, n_unrelated=0).n_unrelated == 0


def test_notebook_09_runs_its_plan_or_a_part_of_it_and_nothing_else(tmp_path):
    """Notebook 09's grid is its plan's (plan.notebook_config): the whole plan by default, a part of it on request;
    a task, localization or seed outside the plan is refused, and so is a run without a plan."""
    full = plan.notebook_config({"PLAN": "v2"})
    p = plan.load(V2)
    assert (full.tasks, full.localizations, full.seeds) == (p.tasks, p.localizations, p.test_seeds)
    assert full.attack_settings == p.attack_settings and full.probe_window == p.probe_window and full.mcq_debiased
    part = plan.notebook_config({"PLAN": "v2", "TASKS": ["counterfact 64"], "LOCALIZATIONS": ["fact lookup", "random"],
                                 "SEEDS": [3]})
    assert (part.tasks, part.localizations, part.seeds) == (("counterfact 64",), ("fact lookup", "random"), (3,))
    for name, value, outside in (("TASKS", ["edit 16 athletes"], "edit 16 athletes"),
                                 ("LOCALIZATIONS", ["fact lookup", "all MLPs"], "all MLPs"),
                                 ("SEEDS", [0, p.tuning_seed], str(p.tuning_seed))):
        with pytest.raises(plan.PlanError, match=rf"{name} = .*runs \[.*{outside}.*which plan 'v2'.*Fix: leave {name}"):
            plan.notebook_config({"PLAN": "v2", name: value})
    with pytest.raises(plan.PlanError, match="has no plan"):
        plan.notebook_config({"PLAN": None, "FAST": True})
    fast = plan.notebook_config({"PLAN": "v2", "FAST": True})
    assert fast.tasks == plan.FAST_SIZES["tasks"] and fast.seeds == p.test_seeds[:2]
    assert set(fast.localizations) <= set(p.localizations) and fast.edit_overrides["precision"] == p.precision
    rates = tmp_path / "rates.json"
    rates.write_text('{"rates": {"sports": {"fact lookup": {"lr": 0.0004, "complete": true}}}}')
    assert plan.notebook_config({"PLAN": "v2", "RATES": str(rates)}).rates == {"sports": {"fact lookup": 0.0004}}
    with pytest.raises(plan.PlanError, match="RATES = .*no such file"):
        plan.notebook_config({"PLAN": "v2", "RATES": str(tmp_path / "none.json")})
    # a rate tuned with more edit steps (the plan's fallback_steps) takes its steps into the grid's edits
    rates.write_text('{"rates": {"sports": {"non-localized": {"lr": 3e-05, "steps": 80, "complete": true}, '
                     '"random": {"lr": 0.0004, "steps": 40, "complete": true}}}}')
    config = plan.notebook_config({"PLAN": "v2", "RATES": str(rates)})
    assert config.rates == {"sports": {"non-localized": {"lr": 3e-05, "steps": 80}, "random": 0.0004}}
    # FAST keeps the toy size's edit steps: the tuned rate without its full-size steps
    fast = plan.notebook_config({"PLAN": "v2", "RATES": str(rates), "FAST": True})
    assert fast.rates == {"sports": {"non-localized": 3e-05, "random": 0.0004}}
    # the steps the tuning itself ran at (its edit_overrides) are its base: a rate at those steps is a rate alone
    rates.write_text('{"edit_overrides": {"steps": 10}, "rates": {"sports": {"random": {"lr": 0.0004, "steps": 10}, '
                     '"fact lookup": {"lr": 0.0001, "steps": 40}}}}')
    assert plan.read_rates(rates) == {"sports": {"random": 0.0004, "fact lookup": {"lr": 0.0001, "steps": 40}}}
    with pytest.raises(ValueError, match="steps"):
        plan.grid_config(p, rates={"sports": {"random": {"lr": 1e-4, "steps": 2.5}}})


def test_optional_fields_of_a_plan_default_to_plan_v2s_choices(tmp_path):
    p = plan.load(V2)
    assert p.tuning_fallback_steps is None
    assert (p.positive_task, p.positive_components) == ("edit 64 athletes", ("m14", "m15", "m16", "m17"))
    text = V2.read_text()
    extra = tmp_path / "extra.toml"
    extra.write_text(text.replace("factors = [0.5, 1.0, 2.0]", "factors = [0.5, 1.0, 2.0]\nfallback_steps = 80", 1)
                     .replace("min_separation = 0.05", 'min_separation = 0.05\npositive_task = "forget 64 athletes"\n'
                              'positive_components = ["m16", "m17"]', 1))
    q = plan.load(extra)
    assert q.tuning_fallback_steps == 80 and q.positive_task == "forget 64 athletes"
    assert q.positive_components == ("m16", "m17")
    bad = tmp_path / "bad.toml"
    bad.write_text(text.replace("min_separation = 0.05", 'min_separation = 0.05\npositive_task = "forget the moon"', 1))
    with pytest.raises(plan.PlanError, match="positive_task"):
        plan.load(bad)
    # the grid locates once (seed 0's evidence) unless the plan says every seed locates from its own
    assert not p.relocate_per_seed and not plan.grid_config(p).relocate_per_seed
    again = tmp_path / "again.toml"
    again.write_text(text.replace('precision = "bfloat16-mixed"', 'precision = "bfloat16-mixed"\nrelocate_per_seed = true', 1))
    assert plan.load(again).relocate_per_seed and plan.grid_config(plan.load(again)).relocate_per_seed
    bad.write_text(text.replace('precision = "bfloat16-mixed"', 'precision = "bfloat16-mixed"\nrelocate_per_seed = 1', 1))
    with pytest.raises(plan.PlanError, match="relocate_per_seed"):
        plan.load(bad)


def test_plan_v3_is_plan_v2_with_its_three_declared_changes():
    """v3's header names three changes from v2 (float32 training, fallback steps, the positive control); nothing
    else of the design may differ."""
    from dataclasses import asdict

    v2, v3 = asdict(plan.load(V2)), asdict(plan.load("v3"))
    changed = {k for k in v2 if v2[k] != v3[k]}
    assert changed == {"path", "name", "precision", "tuning_fallback_steps", "positive_task"}
    assert (v3["precision"], v3["tuning_fallback_steps"], v3["positive_task"]) == ("float32", 80, "forget 64 athletes")
    assert plan.CURRENT == "v3" and plan.notebook_config({"PLAN": plan.CURRENT}).edit_overrides["precision"] == "float32"


def test_the_relearning_claims_read_the_calibrations_primary_setting_and_refuse_a_wrong_calibration(tmp_path):
    import json

    p = plan.require("v3")
    assert plan.attack_setting(p) == "scaled"  # no calibration: the plan's first setting
    shipped = ROOT / "results" / "attack_calibration" / "v3" / "calibration.json"
    assert plan.attack_setting(p, shipped) == json.loads(shipped.read_text())["primary"]
    path = tmp_path / "calibration.json"
    for record, problem in [({"plan": "v2", "primary": "paper"}, "calibrates plan 'v2', not 'v3'"),
                            ({"plan": "v3", "primary": None, "min_separation": 0.05, "settings": {}},
                             "no attack setting separated .*untestable"),
                            ({"plan": "v3", "primary": "full"}, "names the setting 'full'")]:
        path.write_text(json.dumps(record))
        with pytest.raises(plan.PlanError, match=problem):
            plan.attack_setting(p, path)
    with pytest.raises(plan.PlanError, match="no such file"):
        plan.attack_setting(p, tmp_path / "missing.json")
    # a calibration in which no setting separated: read the first setting's curves, the claims untestable
    assert plan.attack_untestable(p) is None and plan.attack_untestable(p, shipped) is None
    path.write_text(json.dumps({"plan": "v3", "primary": None, "min_separation": 0.05, "settings": {"paper": 0.01}}))
    assert plan.attack_setting(p, path, unseparated="first") == "scaled"
    assert "no attack setting separated" in plan.attack_untestable(p, path) and "'paper': 0.01" in plan.attack_untestable(p, path)
    with pytest.raises(ValueError, match="choose 'refuse' or 'first'"):
        plan.attack_setting(p, path, unseparated="ignore")


def test_an_attack_that_separates_nothing_makes_the_relearning_claims_untestable():
    """plan_verdicts with attack_untestable: every relearning row "untestable on this model", with the reason, still in
    Holm's family (as p = 1); the other claims as without it."""
    from dataclasses import replace

    from mechunlearn_nb import reanalysis, statistics

    grid_dir = ROOT / "results" / "09_comparison_full"
    p = replace(plan.require("v2"), n_boot=500)
    plain = reanalysis.plan_verdicts(grid_dir, p)["verdicts"]
    why = "no attack setting separated the controls (test)"
    v = reanalysis.plan_verdicts(grid_dir, p, attack_untestable=why)["verdicts"]
    relearning = v["metric"] == "relearn_p_true_auc"
    assert relearning.sum() == 8 and (v.loc[relearning, "verdict"] == statistics.UNTESTABLE).all()
    assert v.loc[relearning, "note"].str.contains(why, regex=False).all() and v.loc[relearning, "p_value"].isna().all()
    assert plain.loc[plain["metric"] == "relearn_p_true_auc", "p_value"].notna().all()
    assert (v["family_size"] == plain["family_size"]).all()  # the family is the plan's, tested or not
    others = ~relearning & v["p_value"].notna()
    assert np.allclose(v.loc[others, "diff"], plain.loc[others, "diff"])
    # the 8 relearning tests now count as p = 1: every other test's correction is as strict or stricter, never milder
    assert (v.loc[others, "p_holm"] >= plain.loc[others, "p_holm"] - 1e-12).all()
    assert np.allclose(v.loc[others, "p_holm"], statistics.holm(v.loc[others, "p_value"], family_size=v["family_size"].iloc[0]))

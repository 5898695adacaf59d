"""The window sweep (does localization inform robust editing?): windows, their evidence, the cells, the correlations."""

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from mechunlearn_nb import grid, sweep

EDIT = dict(steps=2, batch_size=4, maintain_batch_size=4, lm_tokens=16, lm_window=16, eval_facts=4, eval_every=0)
#: the tiny random model knows nothing, so every fact counts as known (threshold 0)
SMALL = grid.GridConfig(tasks=("edit 4 athletes",), localizations=("fact lookup",), seeds=(0, 1), n_known=120,
                        known_threshold=0.0, max_maintain=8, n_unrelated=0, probes=False, relearn_steps=(0, 1),
                        edit_overrides=EDIT, components={"sports": {"fact lookup": ["m1"]}},
                        relearn_overrides=dict(batch_size=4, maintain_batch_size=4, lm_tokens=16, lm_window=16),
                        eval_overrides=dict(n_paragraphs=1, lm_tokens=16), rates={"sports": {"fact lookup": 3e-4}})


def test_windows_are_every_run_of_consecutive_mlps_and_bad_widths_are_refused(tiny):
    locs = sweep.windows(tiny, width=1)
    assert list(locs) == ["MLPs m0-m0", "MLPs m1-m1"] and locs["MLPs m1-m1"].components == ["m1"]
    both = sweep.windows(tiny, width=2)
    assert list(both) == ["MLPs m0-m1"] and both["MLPs m0-m1"].n_params == sum(l.n_params for l in locs.values())
    assert list(sweep.windows(tiny, 1, starts=[1])) == ["MLPs m1-m1"]
    with pytest.raises(ValueError, match="width=3: a window holds 1 to 2"):
        sweep.windows(tiny, width=3)
    with pytest.raises(ValueError, match=r"starts \[1\]: a window of 2 MLPs starts at 0 to 0 .*Fix"):
        sweep.windows(tiny, width=2, starts=[1])


def test_every_window_edits_at_fact_lookups_tuned_rate_and_steps():
    assert sweep.window_config(SMALL).edit_overrides == {**EDIT, "lr": 3e-4}
    tuned = grid.GridConfig(**{**SMALL.__dict__, "rates": {"sports": {"fact lookup": {"lr": 1e-4, "steps": 80}}}})
    cfg = sweep.window_config(tuned)
    assert cfg.rates is None and cfg.edit_overrides["lr"] == 1e-4 and cfg.edit_overrides["steps"] == 80
    untuned = grid.GridConfig(**{**SMALL.__dict__, "rates": None})
    assert "lr" not in sweep.window_config(untuned).edit_overrides  # the localized kind's default, as fact lookup's


def test_a_sweep_can_run_only_the_calibrated_attack_setting():
    from mechunlearn_nb import plan

    v3 = plan.require("v3")
    config = plan.notebook_config({"PLAN": "v3", "TASKS": [sweep.TASK], "LOCALIZATIONS": ["fact lookup"]})
    assert config.attack_settings == ("scaled", "paper")
    shipped = Path(__file__).resolve().parents[1] / "results" / "attack_calibration" / "v3" / "calibration.json"
    only = sweep.primary_attack(config, plan.attack_setting(v3, shipped))
    assert only.attack_settings == ("paper",) and only.edit_overrides == config.edit_overrides
    with pytest.raises(ValueError, match="attack setting 'rank 8'.*Fix"):
        sweep.primary_attack(config, "rank 8")
    fast = plan.notebook_config({"PLAN": "v3", "FAST": True, "LOCALIZATIONS": ["fact lookup"]})
    with pytest.raises(ValueError, match=r"runs only \['scaled'\].*Fix: CALIBRATION = None"):
        sweep.primary_attack(fast, "paper")


def _evidence():
    """A 6-block model's evidence: subject probes rise after block 1, an extraction head in block 4, MLPs 2-3 carry
    the attribution effect; causal tracing falls with depth."""
    sub, last = (0.3, 0.3, 0.6, 0.8, 0.9, 0.9, 0.9), (0.3, 0.3, 0.3, 0.3, 0.3, 0.9, 0.9)
    probes = pd.DataFrame([dict(layer=i, position=pos, split="test", accuracy=a)
                           for pos, accs in (("last_subject", sub), ("last", last)) for i, a in enumerate(accs)])
    attribution = [0.05, 0.1, 0.5, 0.6, 0.05, 0.0]
    rows = [dict(layer=l, position_kind="last_subject", component="mlp", head=pd.NA, effect=e)
            for l, e in enumerate(attribution)]
    rows += [dict(layer=l, position_kind="last", component="head", head=h, effect=1.0 if (l, h) == (4, 0) else 0.01)
             for l in range(6) for h in range(2)]
    trace = pd.DataFrame([dict(layer=l, position_kind="last_subject", component="mlp", head=pd.NA, effect=e)
                          for l, e in enumerate([0.4, 0.3, 0.2, 0.1, 0.0, 0.0])])
    return dict(probes=probes, attribution=pd.DataFrame(rows), trace=trace)


def test_layer_and_window_evidence_read_the_rules_tables():
    model = SimpleNamespace(cfg=SimpleNamespace(n_layers=6))
    layers = sweep.layer_evidence(model, _evidence())
    assert layers["layer"].tolist() == list(range(6))
    assert layers["flu_selected"].tolist() == [0, 0, 1, 1, 0, 0]  # the rule picks MLPs 2-3
    assert layers["attribution"].tolist() == pytest.approx([0.05, 0.1, 0.5, 0.6, 0.05, 0.0])
    assert layers["causal_tracing"].tolist() == pytest.approx([0.4, 0.3, 0.2, 0.1, 0.0, 0.0])
    # the share of the subject probes' gain over the embeddings reached after the block (0.3 -> 0.6 of 0.3 -> 0.9),
    # and the share made in the block
    assert layers["probe_rise"].tolist()[:4] == pytest.approx([0.0, 0.5, 5 / 6, 1.0])
    assert layers["probe_gain"].tolist() == pytest.approx([0.0, 0.5, 1 / 3, 1 / 6, 0.0, 0.0])
    assert layers["depth"].tolist() == list(range(6))
    locs = {sweep.window_label(s, 2): SimpleNamespace(components=[f"m{s}", f"m{s + 1}"]) for s in range(5)}
    ev = sweep.window_evidence(layers, locs)
    assert ev["localization"].tolist() == list(locs) and ev["start"].tolist() == list(range(5)) and set(ev["width"]) == {2}
    assert ev["flu_selected"].tolist() == [0, 0.5, 1, 0.5, 0]
    assert ev["causal_tracing"].tolist() == pytest.approx([0.35, 0.25, 0.15, 0.05, 0.0])
    without = sweep.layer_evidence(model, {**_evidence(), "trace": None})
    assert without["causal_tracing"].isna().all()
    with pytest.raises(ValueError, match="no attribution-patching table"):
        sweep.layer_evidence(model, {"probes": None, "attribution": None})


def _cells(metric_of_window, noise=0.01, seeds=(0, 1, 2), incomplete=()):
    rng = np.random.default_rng(0)
    return pd.DataFrame([dict(localization=sweep.window_label(s, 2), seed=seed,
                              relearn_paper_p_true_auc=metric_of_window(s) + 0.3 * seed + rng.normal(0, noise),
                              edit_acc=1.0, train_acc=0.5 if (s, seed) in incomplete else 1.0)
                         for s in range(8) for seed in seeds])


def _layers():
    """9 blocks: fact lookup's rule picks the first three, attribution falls with depth, causal tracing rises."""
    return pd.DataFrame(dict(layer=range(9), flu_selected=[1.0, 1, 1, 0, 0, 0, 0, 0, 0], probe_rise=np.nan,
                             probe_gain=np.nan, attribution=np.linspace(1, 0, 9), causal_tracing=np.linspace(0, 1, 9),
                             depth=np.arange(9.0)))


def test_correlations_find_a_planted_trend_and_leave_incomplete_edits_out():
    layers = _layers()
    evidence = sweep.window_evidence(layers, {sweep.window_label(s, 2): SimpleNamespace(components=[f"m{s}", f"m{s + 1}"])
                                              for s in range(8)})
    # more evidence (early windows) -> less comes back: robust; causal tracing runs the other way; every seed
    # shifts every window alike (0.3 per seed), which must change no rank, also where a window lost a seed
    cells = _cells(lambda s: 0.1 + 0.05 * s, incomplete={(7, 0), (7, 1), (7, 2), (3, 0)})
    table = sweep.correlations(cells, evidence, layers, completeness=0.95, n_boot=2000)
    auc = table[table["metric"] == "relearn_paper_p_true_auc"].set_index("evidence")
    assert set(auc.index) == {"flu_selected", "attribution", "causal_tracing", "depth"}  # probe_gain: not measured
    assert auc.loc["attribution", "rho"] == pytest.approx(-1.0) and auc.loc["attribution", "robust_rho"] == pytest.approx(1.0)
    assert auc.loc["attribution", "high"] < 0 and auc.loc["causal_tracing", "low"] > 0
    assert auc.loc["attribution", "n_units"] == 7  # window 7 has no complete edit; window 3 keeps two seeds
    # a ramp slid along the blocks mostly ranks worse than the real one in the premise's direction (one of the
    # 2 x 9 - 1 shifts leaves the seven windows' order as it is); causal tracing points the other way: it cannot pass
    assert auc.loc["attribution", "p_shift"] == pytest.approx(2 / 18) and np.isnan(auc.loc["depth", "p_shift"])
    assert auc.loc["causal_tracing", "p_shift"] == pytest.approx(1.0)
    tied = table[table["metric"] == "edit_acc"]  # all 1.0: no rank correlation, and the row says why
    assert tied["rho"].isna().all() and tied["note"].str.contains("every unit measured the same").all()
    # completing the edit is a measure of its own, over every cell: the late window never does
    done = table[table["metric"] == "complete"].set_index("evidence")
    assert done.loc["depth", "rho"] == pytest.approx(-0.436, abs=0.001) and done.loc["depth", "n_units"] == 8
    tested = table.dropna(subset=["p_shift"])
    assert np.allclose(tested["p_floor"], 1 / 18) and (tested["p_shift"] >= tested["p_floor"]).all()
    assert (table["role"] == "descriptive").all()  # no primary named: every row describes
    few = sweep.correlations(cells[cells["localization"].isin(list(evidence["localization"])[:2])], evidence, n_boot=200)
    assert few["rho"].isna().all() and few["note"].str.contains("2 unit.*needs 3").all()
    # no trend, only noise: the replication interval covers zero
    flat = sweep.correlations(_cells(lambda s: 0.3, noise=0.05), evidence, layers, n_boot=2000)
    row = flat[(flat["metric"] == "relearn_paper_p_true_auc") & (flat["evidence"] == "attribution")].iloc[0]
    assert row["low"] < 0 < row["high"]


def test_a_windows_own_rate_is_a_reference_row_beside_depth():
    """With each window tuned to its own rate, its learning rate x steps (``edit_budget``) is ranked against each
    measure like depth (a reference: no shift null, no partial correlation); without rates there is no such row."""
    layers = _layers()
    locs = {sweep.window_label(s, 2): SimpleNamespace(components=[f"m{s}", f"m{s + 1}"]) for s in range(8)}
    # late windows edit harder (more steps), and more comes back from them: the budget ranks with the measure
    rates = {label: dict(lr=1e-4 if s < 4 else 2e-4, steps=40 if s < 6 else 80) for s, label in enumerate(locs)}
    evidence = sweep.window_evidence(layers, locs, rates)
    assert evidence["edit_budget"].tolist() == pytest.approx([4e-3] * 4 + [8e-3] * 2 + [1.6e-2] * 2)
    cells = _cells(lambda s: 0.1 + 0.05 * s)
    auc = sweep.correlations(cells, evidence, layers, n_boot=500).set_index(["metric", "evidence"])
    row = auc.loc[("relearn_paper_p_true_auc", "edit_budget")]
    assert row["rho"] > 0.8 and np.isnan(row["p_shift"]) and np.isnan(row["partial_rho"])
    assert np.isfinite(auc.loc[("relearn_paper_p_true_auc", "attribution"), "p_shift"])  # the evidence keeps its null
    untuned = sweep.correlations(cells, sweep.window_evidence(layers, locs), layers, n_boot=500)
    assert "edit_budget" not in set(untuned["evidence"])
    with pytest.raises(ValueError, match="no rate for 'MLPs m7-m8'.*Fix"):
        sweep.window_evidence(layers, locs, {k: v for k, v in rates.items() if k != "MLPs m7-m8"})


def test_partial_correlation_given_depth_separates_evidence_from_where_the_window_is():
    layers = _layers().assign(attribution=[0, 0.2, 0.6, 1.0, 0.6, 0.2, 0, 0, 0])  # evidence peaked mid-model
    evidence = sweep.window_evidence(layers, {sweep.window_label(s, 2): SimpleNamespace(components=[f"m{s}", f"m{s + 1}"])
                                              for s in range(8)})
    bump = evidence.set_index("localization")["attribution"]
    wobble = [0.02, -0.03, 0.01, 0.0, -0.02, 0.03, -0.01, 0.02]

    def auc_rows(metric_of_window):
        table = sweep.correlations(_cells(metric_of_window, noise=0.001), evidence, layers, n_boot=500)
        return table[table["metric"] == "relearn_paper_p_true_auc"].set_index("evidence")

    # less comes back where the evidence peaks, on top of a depth trend: the evidence adds to depth
    informative = auc_rows(lambda s: 0.05 * s - 0.3 * bump[sweep.window_label(s, 2)])
    assert informative.loc["attribution", "robust_partial_rho"] > 0.9
    assert informative.loc["attribution", "p_partial"] == pytest.approx(2 / 18)
    # only depth (and a wobble): rho still follows the evidence's slope, the partial one does not
    depth_only = auc_rows(lambda s: 0.05 * s + wobble[s])
    assert depth_only.loc["attribution", "robust_rho"] > 0.5
    assert depth_only.loc["attribution", "robust_partial_rho"] < 0.5 and depth_only.loc["attribution", "p_partial"] > 0.2
    # evidence that is depth up to rank (causal tracing here) has nothing left once depth is held fixed
    assert np.isnan(depth_only.loc["causal_tracing", "partial_rho"]) and np.isnan(depth_only.loc["depth", "partial_rho"])


def test_the_primary_test_is_one_named_row_and_its_verdict_could_go_either_way():
    """One (measure, evidence) row is the sweep's test. A planted effect on a symmetric bump of evidence beats every
    shift but the bump's own reverse (p = 2/18 on 9 blocks): it passes at alpha 0.12, not at 0.05; depth alone does
    not pass at 0.12; a row that has no partial correlation is "not computed", with the reason."""
    layers = _layers().assign(attribution=[0, 0.2, 0.6, 1.0, 0.6, 0.2, 0, 0, 0])
    evidence = sweep.window_evidence(layers, {sweep.window_label(s, 2): SimpleNamespace(components=[f"m{s}", f"m{s + 1}"])
                                              for s in range(8)})
    bump = evidence.set_index("localization")["attribution"]
    wobble = [0.02, -0.03, 0.01, 0.0, -0.02, 0.03, -0.01, 0.02]
    primary = ("relearn_paper_p_true_auc", "attribution")

    def table_of(metric_of_window):
        return sweep.correlations(_cells(metric_of_window, noise=0.001), evidence, layers, n_boot=300, primary=primary)

    informative = table_of(lambda s: 0.05 * s - 0.3 * bump[sweep.window_label(s, 2)])
    assert (informative["role"] == "primary").sum() == 1
    row = informative[informative["role"] == "primary"].iloc[0]
    assert (row["metric"], row["evidence"]) == primary
    assert sweep.primary_result(informative, alpha=0.12)["verdict"] == "supported"
    strict = sweep.primary_result(informative)
    assert strict["verdict"] == "not shown" and strict["p_partial"] == pytest.approx(2 / 18)
    assert strict["p_floor"] == pytest.approx(1 / 18) and strict["robust_partial_rho"] > 0.9
    assert sweep.primary_result(table_of(lambda s: 0.05 * s + wobble[s]), alpha=0.12)["verdict"] == "not shown"
    traced = sweep.correlations(_cells(lambda s: 0.05 * s + wobble[s]), evidence, layers, n_boot=300,
                                primary=("relearn_paper_p_true_auc", "causal_tracing"))  # the evidence: a ramp
    assert sweep.primary_result(traced)["verdict"] == "not computed"
    # a measure that ranks exactly as depth does leaves nothing for the evidence: not shown, not "not computed"
    ramp = sweep.primary_result(table_of(lambda s: 0.05 * s))
    assert ramp["verdict"] == "not shown" and "exactly as their depth" in ramp["reason"]
    assert sweep.primary_result(traced.drop(columns="role"))["reason"].startswith("no primary row")
    from mechunlearn_nb import plan

    config = plan.notebook_config({"PLAN": "v3", "TASKS": [sweep.TASK], "LOCALIZATIONS": ["fact lookup"]})
    assert sweep.primary_measure(sweep.primary_attack(config, "paper")) == "relearn_paper_p_true_auc"
    with pytest.raises(ValueError, match="no 'train_acc'.*Fix"):
        sweep.correlations(_cells(lambda s: 0.1).drop(columns="train_acc"), evidence, layers, completeness=0.95)


def test_sweep_evidence_is_located_once_and_refused_for_other_settings(tmp_path, monkeypatch):
    from mechunlearn_nb import registry

    model = SimpleNamespace(cfg=SimpleNamespace(n_layers=6, model_name="six-block"))
    calls = []
    monkeypatch.setattr(registry, "locate", lambda *a, **k: calls.append(k) or ({}, _evidence()))
    first = sweep.sweep_evidence(model, tmp_path, n_locate=16, trace=True, progress=False)
    again = sweep.sweep_evidence(model, tmp_path, n_locate=16, trace=True, progress=False)
    pd.testing.assert_frame_equal(first, again)
    assert len(calls) == 1 and calls[0]["names"] == ("fact lookup", "OT (causal tracing)")
    with pytest.raises(ValueError, match=r"located with .*'n_locate': 16.*not .*'n_locate': 64.*Fix: use a new OUTPUT_DIR"):
        sweep.sweep_evidence(model, tmp_path, n_locate=64, trace=True, progress=False)
    with pytest.raises(ValueError, match="'trace': True.*not .*'trace': False"):
        sweep.sweep_evidence(model, tmp_path, n_locate=16, trace=False, progress=False)


def test_run_sweep_saves_each_cell_and_a_rerun_reads_them_back(tiny, tmp_path, monkeypatch):
    cells = sweep.run_sweep(tiny, SMALL, tmp_path, width=1, task="edit 4 athletes", progress=False)
    assert cells[["localization", "seed"]].values.tolist() == [["MLPs m0-m0", 0], ["MLPs m0-m0", 1],
                                                                ["MLPs m1-m1", 0], ["MLPs m1-m1", 1]]
    assert (cells["lr"] == 3e-4).all() and cells["components"].tolist() == [["m0"], ["m0"], ["m1"], ["m1"]]
    assert len(list((tmp_path / "cells").glob("*.json"))) == 4 and len(list((tmp_path / "baselines").glob("*"))) == 2
    assert json.loads((tmp_path / "sweep.json").read_text()) == {"task": "edit 4 athletes", "width": 1, "seeds": [0, 1]}
    whole = sweep.windows(tiny, 1)
    assert sweep.missing_cells(tmp_path, whole, [0, 1], "edit 4 athletes") == []
    share = tmp_path / "share"  # a share of the windows: the rest of the sweep is still missing
    sweep.run_sweep(tiny, SMALL, share, width=1, starts=[1], task="edit 4 athletes", progress=False)
    assert sweep.missing_cells(share, whole, [0, 1], "edit 4 athletes") == [("MLPs m0-m0", 0), ("MLPs m0-m0", 1)]

    def never(*args, **kwargs):
        raise AssertionError("a saved cell was computed again")

    monkeypatch.setattr(grid.CellComputer, "compute_localization", never)
    again = sweep.run_sweep(tiny, SMALL, tmp_path, width=1, task="edit 4 athletes", progress=False)
    pd.testing.assert_frame_equal(again, cells)
    faster = grid.GridConfig(**{**SMALL.__dict__, "rates": {"sports": {"fact lookup": 1e-3}}})
    with pytest.raises(ValueError, match=r"other settings \(edit_overrides differ\).*Fix"):  # cells made at another rate
        sweep.run_sweep(tiny, faster, tmp_path, width=1, task="edit 4 athletes", progress=False)
    # a folder whose settings were saved but no cell yet (another process computing its first one) is refused too
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    for name in ("grid_config.json", "sweep.json"):
        (fresh / name).write_text((tmp_path / name).read_text())
    with pytest.raises(ValueError, match="other settings"):
        sweep.run_sweep(tiny, faster, fresh, width=1, starts=[1], task="edit 4 athletes", progress=False)
    assert sweep.missing_cells(fresh, whole, [0, 1], "edit 4 athletes") == [("MLPs m0-m0", 0), ("MLPs m0-m0", 1),
                                                                         ("MLPs m1-m1", 0), ("MLPs m1-m1", 1)]
    # a saved cell edited at another rate than the folder's settings is refused when read back
    path = grid.cell_path(tmp_path, "edit 4 athletes", "MLPs m0-m0", 0)
    cell = json.loads(path.read_text())
    cell["edit_config"]["lr"] = 1e-3
    path.write_text(json.dumps(cell))
    with pytest.raises(ValueError, match=r"edited at lr 0.001 for 2 steps, not lr 0.0003 for 2 steps"):
        sweep.run_sweep(tiny, SMALL, tmp_path, width=1, task="edit 4 athletes", progress=False)
    with pytest.raises(ValueError, match=r"holds a sweep of .*'width': 1.*not .*'width': 2.*Fix: use a new OUTPUT_DIR"):
        sweep.run_sweep(tiny, SMALL, tmp_path, width=2, task="edit 4 athletes", progress=False)
    # another process may take other windows of the same sweep into the same folder
    part = sweep.run_sweep(tiny, SMALL, tmp_path, width=1, starts=[1], task="edit 4 athletes", progress=False)
    assert part["localization"].unique().tolist() == ["MLPs m1-m1"]
    with pytest.raises(ValueError, match="sports evidence"):
        sweep.run_sweep(tiny, SMALL, tmp_path / "cf", width=1, task="counterfact 4", progress=False)


def _partial_rates(folder, chosen):
    """A window_rates.json holding one window's rate only."""
    path = sweep.window_rates_path(folder)
    path.write_text(json.dumps({"rates": {"MLPs m1-m1": chosen["MLPs m1-m1"]}}))
    return path


def test_each_window_is_tuned_to_its_own_rate_and_the_sweep_edits_at_it(tiny, tmp_path, monkeypatch):
    from mechunlearn_nb import editing

    untuned = grid.GridConfig(**{**SMALL.__dict__, "rates": None})
    args = dict(completeness=0.0, tuning_seed=100, factors=(0.5, 2.0), width=1, task="edit 4 athletes", progress=False)
    share = tmp_path / "share"  # one process's share of the windows: no choice for the whole sweep yet
    part, _ = sweep.tune_windows(tiny, untuned, share, starts=[1], **args)
    assert list(part) == ["MLPs m1-m1"] and not sweep.window_rates_path(share).exists()
    chosen, trials = sweep.tune_windows(tiny, untuned, tmp_path, **args)
    default = editing.EditConfig.for_localization(sweep.windows(tiny, 1)["MLPs m0-m0"]).lr
    assert trials.groupby("localization")["lr"].apply(sorted).to_dict() == {
        "MLPs m0-m0": [0.5 * default, 2 * default], "MLPs m1-m1": [0.5 * default, 2 * default]}
    assert (trials["steps"] == 2).all() and trials["complete"].all()  # completeness 0: every trial is complete
    for label, rate in chosen.items():  # the rule: the most held-out maintain facts kept among complete edits
        mine = trials[trials["localization"] == label]
        assert rate["lr"] in mine["lr"].tolist() and rate["complete"] and rate["steps"] == 2
        assert mine.loc[mine["lr"] == rate["lr"], "heldout_maintain_acc"].iloc[0] == mine["heldout_maintain_acc"].max()
    saved = json.loads(sweep.window_rates_path(tmp_path).read_text())
    assert saved["rates"] == chosen and saved["tuning_seed"] == 100 and saved["factors"] == [0.5, 2.0]
    assert sorted(p.name for p in (tmp_path / "window_tuning").glob("*.csv")) == ["mlps-m0-m0.csv", "mlps-m1-m1.csv"]

    def never(*a, **k):
        raise AssertionError("a saved trial was run again")

    monkeypatch.setattr(editing, "edit", never)
    again, _ = sweep.tune_windows(tiny, untuned, tmp_path, **args)
    assert again == chosen
    monkeypatch.undo()
    assert sweep.read_window_rates(tmp_path, sweep.windows(tiny, 1)) == chosen
    with pytest.raises(ValueError, match=r"has no rate for \['MLPs m0-m0'\].*Fix: finish their tuning"):
        sweep.read_window_rates(_partial_rates(share, chosen), sweep.windows(tiny, 1))
    with pytest.raises(ValueError, match=r"No window rates at .*Fix: tune the windows first"):
        sweep.read_window_rates(tmp_path / "nowhere", sweep.windows(tiny, 1))
    cells = sweep.run_sweep(tiny, untuned, tmp_path / "sweep", width=1, task="edit 4 athletes", progress=False,
                            rates=saved["rates"])
    assert cells.groupby("localization")["lr"].first().to_dict() == {k: v["lr"] for k, v in chosen.items()}
    with pytest.raises(ValueError, match=r"rates has no rate for \['MLPs m1-m1'\].*Fix"):
        sweep.run_sweep(tiny, untuned, tmp_path / "other", width=1, task="edit 4 athletes", progress=False,
                        rates={"MLPs m0-m0": chosen["MLPs m0-m0"]})
    with pytest.raises(ValueError, match=r"holds a sweep of .*'rates'.*Fix"):  # fact lookup's rate into tuned windows
        sweep.run_sweep(tiny, untuned, tmp_path / "sweep", width=1, task="edit 4 athletes", progress=False)


def test_the_primary_test_on_the_shipped_evidence_can_find_an_effect_and_keeps_its_error_rate():
    """On the sweep's own per-block evidence (18 blocks, 15 windows, 3 seeds): robustness that follows causal
    tracing's evidence (on top of a depth trend) is found in most runs; robustness that follows depth alone, or a
    bump where the evidence is not, is rarely called supported; noise alone, independent across windows, is called
    supported about as often as the test's level says (its smallest p, 1/36, is not its false-positive rate: the
    shifts of one evidence series are not exchangeable with it, so the rate is measured here)."""
    root = Path(__file__).resolve().parents[1] / "results" / "10_localization_sweep"
    layers = pd.read_csv(root / "layer_evidence.csv")
    locs = {sweep.window_label(s, 4): SimpleNamespace(components=[f"m{b}" for b in range(s, s + 4)]) for s in range(15)}
    ev = sweep.window_evidence(layers, locs)
    by = ev.set_index("localization")
    rng = np.random.default_rng(0)

    def verdicts(truth, runs):
        out = []
        for _ in range(runs):
            cells = pd.DataFrame([dict(localization=w, seed=k, train_acc=1.0, relearn_paper_p_true_auc=truth(w) +
                                       rng.normal(0, 0.005)) for w in locs for k in range(3)])
            table = sweep.correlations(cells, ev, layers, completeness=0.95, n_boot=100,
                                       primary=("relearn_paper_p_true_auc", "causal_tracing"))
            out.append(sweep.primary_result(table)["verdict"])
        return pd.Series(out)

    found = verdicts(lambda w: 0.5 - 3 * by.loc[w, "causal_tracing"] + 0.002 * by.loc[w, "start"], 15)
    assert (found == "supported").mean() >= 0.8
    depth = verdicts(lambda w: 0.5 + 0.005 * by.loc[w, "start"], 30)
    elsewhere = verdicts(lambda w: 0.5 - 0.05 * np.exp(-((by.loc[w, "start"] - 10) / 2.0) ** 2), 15)
    assert (depth == "supported").mean() <= 0.15 and (elsewhere == "supported").mean() <= 0.1
    noise = verdicts(lambda w: 0.5, 200)  # no effect at all: the false-positive rate (0.05 is the level)
    assert (noise == "supported").mean() <= 0.1


@pytest.mark.notebook
@pytest.mark.slow
def test_a_share_of_the_windows_computes_its_cells_and_draws_nothing(tmp_path):
    """Notebook 10 run with a share of the windows (one process of several on the same folder) saves its cells and
    writes none of the analysis: no cells.csv, correlations.csv, figure or metrics.json from a part of the sweep."""
    import nbformat

    from mechunlearn_nb import runner

    nb_path = Path(__file__).resolve().parents[1] / "notebooks" / "10_localization_sweep.ipynb"
    metrics = runner.run_notebook(nb_path, tmp_path, {"FAST": True, "MODEL_NAME": None, "STARTS": [14]}, timeout=1800)
    out = tmp_path / nb_path.stem
    assert metrics == {}
    assert sorted(p.name for p in (out / "cells").glob("*.json")) == [
        "edit-8-athletes__mlps-m14-m17__0.json", "edit-8-athletes__mlps-m14-m17__1.json"]
    assert not any((out / name).exists() for name in ("cells.csv", "correlations.csv", "window_sweep.png", "metrics.json"))
    printed = "".join(o.get("text", "") for c in nbformat.read(tmp_path / nb_path.name, as_version=4).cells
                      if c.cell_type == "code" for o in c.outputs)
    assert "a share of the sweep: the folder holds 2 of its 6 cells" in printed and "primary test" not in printed


def test_the_shipped_sweep_cells_follow_its_settings():
    """results/10_localization_sweep fills over sessions: every cell saved so far is a window of 4 MLPs of
    edit 64 athletes at fact lookup's tuned sports rate and steps, seeds 0-2, attacked only in the calibrated setting
    at the plan's steps, in the plan's precision; the folder's settings are the sweep's."""
    from mechunlearn_nb import plan

    root = Path(__file__).resolve().parents[1] / "results" / "10_localization_sweep"
    p = plan.load("v3")
    rate = json.loads((root.parent / "tuning" / "v3" / "rates.json").read_text())["rates"]["sports"]["fact lookup"]
    assert json.loads((root / "sweep.json").read_text()) == {"task": sweep.TASK, "width": 4, "seeds": [0, 1, 2]}
    config = json.loads((root / "grid_config.json").read_text())
    assert config["attack_settings"] == ["paper"] and config["relearn_steps"] == list(p.relearn_steps)
    paths = sorted((root / "cells").glob("*.json"))
    assert paths, "the sweep has saved no cell"
    labels = {sweep.window_label(s, 4): [f"m{b}" for b in range(s, s + 4)] for s in range(15)}
    for path in paths:
        cell = json.loads(path.read_text())
        m = cell["metrics"]
        assert path == grid.cell_path(root, m["task"], m["localization"], m["seed"])
        assert m["task"] == sweep.TASK and m["seed"] in (0, 1, 2) and m["components"] == labels[m["localization"]]
        assert m["lr"] == rate["lr"] and cell["edit_config"]["steps"] == rate["steps"], path.name
        assert cell["edit_config"]["precision"] == p.precision
        assert {(r["setting"], r["step"]) for r in cell["curve"]} == {("paper", k) for k in p.relearn_steps}


def test_the_tuned_sweeps_trials_follow_the_plans_rule():
    """results/10_localization_sweep_tuned fills over sessions: each window's saved trials are plan v3's candidates
    (the localized default rate x its factors at the sweep's steps, then the same at the fallback steps only where
    none completed), ``complete`` is the plan's completeness; once every window is tuned, window_rates.json holds
    the rule's choice from those trials and the plan's settings."""
    from mechunlearn_nb import editing, plan, tuning

    root = Path(__file__).resolve().parents[1] / "results" / "10_localization_sweep_tuned"
    p = plan.load("v3")
    config = plan.notebook_config({"PLAN": "v3", "TASKS": [sweep.TASK], "LOCALIZATIONS": ["fact lookup"],
                                   "SEEDS": list(p.test_seeds[:3])})
    base = editing.EditConfig.for_localization("localized", **{k: v for k, v in config.edit_overrides.items()
                                                                if k != "lr"})
    rates = [base.lr * f for f in p.tuning_factors]
    labels = [sweep.window_label(s, 4) for s in range(15)]
    files = {label: sweep.window_trials_path(root, label) for label in labels}
    saved = {label: pd.read_csv(path) for label, path in files.items() if path.exists()}
    assert set(saved) == set(labels), "a window of the sweep has no saved trials"
    for label, trials in saved.items():
        assert (trials["localization"] == label).all() and list(trials.columns) == tuning.COLUMNS
        assert (trials["complete"] == (trials["train_acc"] >= p.edit_completeness)).all(), label
        first = trials[trials["steps"] == base.steps]
        assert first["lr"].tolist() == pytest.approx(rates[: len(first)]), label  # the candidates, in order
        later = trials[trials["steps"] != base.steps]
        if len(later):  # the fallback: only after every candidate ran short of complete
            assert len(first) == len(rates) and not first["complete"].any(), label
            assert set(later["steps"]) == {p.tuning_fallback_steps}, label
            assert later["lr"].tolist() == pytest.approx(rates[: len(later)]), label
    path = sweep.window_rates_path(root)
    assert path.exists(), "every window is tried but no window_rates.json was written"
    record = json.loads(path.read_text())
    assert (record["tuning_seed"], record["completeness"], record["fallback_steps"], tuple(record["factors"])) == (
        p.tuning_seed, p.edit_completeness, p.tuning_fallback_steps, p.tuning_factors)
    assert set(record["rates"]) == set(labels) == set(saved)
    for label in labels:
        want = tuning.choose_rate(saved[label], p.edit_completeness)
        got = record["rates"][label]
        assert (got["lr"], got["steps"], got["complete"]) == (pytest.approx(want["lr"]), want["steps"],
                                                               want["complete"]), label


def test_the_tuned_sweep_cells_follow_its_window_rates():
    """results/10_localization_sweep_tuned fills over sessions: every cell saved so far is a window of 4 MLPs of
    edit 64 athletes edited at that window's own rate and steps (window_rates.json), seeds 0-2, attacked only in
    the calibrated setting at the plan's steps, in the plan's precision; sweep.json records the same rates."""
    from mechunlearn_nb import plan

    root = Path(__file__).resolve().parents[1] / "results" / "10_localization_sweep_tuned"
    p = plan.load("v3")
    path = sweep.window_rates_path(root)
    assert path.exists(), "the tuned sweep has no window_rates.json"
    labels = {sweep.window_label(s, 4): [f"m{b}" for b in range(s, s + 4)] for s in range(15)}
    rates = sweep.read_window_rates(path, {label: None for label in labels})
    record = json.loads((root / "sweep.json").read_text())
    assert record["rates"] == {label: {"lr": rates[label]["lr"], "steps": rates[label]["steps"]} for label in labels}
    assert (record["task"], record["width"], record["seeds"]) == (sweep.TASK, 4, [0, 1, 2])
    config = json.loads((root / "grid_config.json").read_text())
    assert config["attack_settings"] == ["paper"] and config["relearn_steps"] == list(p.relearn_steps)
    for cell_path in sorted((root / "cells").glob("*.json")):
        cell = json.loads(cell_path.read_text())
        m = cell["metrics"]
        assert cell_path == grid.cell_path(root, m["task"], m["localization"], m["seed"])
        assert m["task"] == sweep.TASK and m["seed"] in (0, 1, 2) and m["components"] == labels[m["localization"]]
        own = rates[m["localization"]]
        assert m["lr"] == own["lr"] and cell["edit_config"]["steps"] == own["steps"], cell_path.name
        assert cell["edit_config"]["precision"] == p.precision
        assert {(r["setting"], r["step"]) for r in cell["curve"]} == {("paper", k) for k in p.relearn_steps}


def test_grid_status_reads_a_sweep_folder_by_its_windows_and_seeds(tmp_path, capsys):
    """A sweep's folder (sweep.json) is counted as windows × seeds of the model its evidence came from, not as a
    plan's grid; a folder with neither is refused with the fix."""
    from mechunlearn_nb.__main__ import main

    layers = pd.DataFrame(dict(layer=range(6), causal_tracing=0.0, depth=range(6)))
    layers.to_csv(tmp_path / "layer_evidence.csv", index=False)
    (tmp_path / "sweep.json").write_text(json.dumps({"task": "edit 4 athletes", "width": 4, "seeds": [0, 1]}))
    (tmp_path / "cells").mkdir()
    for label, seed, seconds in (("MLPs m0-m3", 0, 100.0), ("MLPs m2-m5", 1, 300.0), ("MLPs m2-m5", 0, 2000.0)):
        metrics = dict(task="edit 4 athletes", localization=label, seed=seed)
        grid.cell_path(tmp_path, "edit 4 athletes", label, seed).write_text(
            json.dumps(dict(metrics=metrics, seconds=dict(edit=seconds / 2, relearn=seconds / 2))))
    table = sweep.sweep_progress(tmp_path)
    assert table["window"].tolist() == ["MLPs m0-m3", "MLPs m1-m4", "MLPs m2-m5"]
    assert table["done"].tolist() == [1, 0, 2] and table["left"].tolist() == [1, 2, 0]
    # at the median pace of the saved cells (300 s): the one computed beside other work (2,000 s) does not set it
    assert table["seconds_left"].tolist() == [300.0, 600.0, 0.0]
    assert main(["grid-status", str(tmp_path), "--workers", "2"]) == 0
    out = capsys.readouterr().out
    assert "window sweep: 3 of 6 cells saved; about 0.1 h left with 2 process(es)" in out and "m1-m4" in out
    assert "scaled to its own steps" not in out  # every window edits alike: one pace
    # windows tuned to their own steps: a cell's time is the other phases' median plus the edit's time per step
    # (here 1 s, from cells of 100 and 50 steps) times the window's steps
    rates = {"MLPs m0-m3": dict(lr=1e-4, steps=100), "MLPs m1-m4": dict(lr=1e-4, steps=80),
             "MLPs m2-m5": dict(lr=2e-4, steps=50)}
    (tmp_path / "sweep.json").write_text(json.dumps({"task": "edit 4 athletes", "width": 4, "seeds": [0, 1],
                                                     "rates": rates}))
    for label, seed, edit, rest in (("MLPs m0-m3", 0, 100.0, 30.0), ("MLPs m2-m5", 1, 50.0, 40.0),
                                    ("MLPs m2-m5", 0, 50.0, 50.0)):
        metrics = dict(task="edit 4 athletes", localization=label, seed=seed)
        grid.cell_path(tmp_path, "edit 4 athletes", label, seed).write_text(
            json.dumps(dict(metrics=metrics, seconds=dict(edit=edit, relearn=rest))))
    tuned = sweep.sweep_progress(tmp_path).set_index("window")
    assert tuned["cell_seconds"].tolist() == [140.0, 120.0, 90.0] and tuned["edit_steps"].tolist() == [100, 80, 50]
    assert tuned.loc["MLPs m1-m4", "seconds_left"] == 240.0 and tuned.loc["MLPs m0-m3", "seconds_left"] == 140.0
    assert main(["grid-status", str(tmp_path)]) == 0 and "scaled to its own steps" in capsys.readouterr().out
    (tmp_path / "layer_evidence.csv").unlink()
    with pytest.raises(FileNotFoundError, match="no window sweep.*Fix"):
        sweep.sweep_progress(tmp_path)
    assert main(["grid-status", str(tmp_path)]) == 2  # one line naming the fix, no traceback
    assert "no window sweep" in capsys.readouterr().err


@pytest.mark.parametrize("folder", ["10_localization_sweep", "10_localization_sweep_tuned"])
def test_a_shipped_sweep_is_complete_and_its_correlations_follow_from_its_cells(folder):
    """Each shipped sweep (at fact lookup's rate; each window at its own rate) holds all 45 cells (15 windows ×
    seeds 0-2), and its correlations.csv, primary verdict and metrics.json follow from them: recomputed here from
    the cells, layer_evidence.csv and (tuned) window_rates.json with the notebook's settings (completeness, primary
    row, bootstrap seed), they agree to the last digit; the shipped metrics pass the folder's [.full] ranges."""
    from mechunlearn_nb import expected, plan

    root = Path(__file__).resolve().parents[1] / "results" / folder
    p = plan.load("v3")
    labels = [sweep.window_label(s, 4) for s in range(15)]
    rates_path = sweep.window_rates_path(root)
    rates = sweep.read_window_rates(rates_path, {label: None for label in labels}) if rates_path.exists() else None
    assert (rates is None) == (folder == "10_localization_sweep")
    assert not sweep.missing_cells(root, labels, [0, 1, 2]), "the sweep is not complete"
    cells = pd.DataFrame([json.loads(path.read_text())["metrics"] for path in sorted((root / "cells").glob("*.json"))])
    assert len(cells) == 45
    cells = sweep.in_window_order(cells, labels)  # as run_sweep returns them: windows in layer order, then seeds
    layers = pd.read_csv(root / "layer_evidence.csv")
    locs = {label: SimpleNamespace(components=[f"m{b}" for b in range(s, s + 4)]) for s, label in enumerate(labels)}
    ev = sweep.window_evidence(layers, locs, rates)
    table = sweep.correlations(cells, ev, layers, completeness=p.edit_completeness,
                               primary=("relearn_paper_p_true_auc", sweep.PRIMARY_EVIDENCE))
    assert ("edit_budget" in set(table["evidence"])) == (rates is not None)
    shipped = pd.read_csv(root / "correlations.csv")
    assert shipped[["metric", "evidence", "role"]].values.tolist() == table[["metric", "evidence", "role"]].values.tolist()
    for column in ("rho", "robust_rho", "low", "high", "p_shift", "partial_rho", "p_partial", "n_units"):
        np.testing.assert_allclose(shipped[column].to_numpy(float), table[column].to_numpy(float), rtol=1e-9,
                                   atol=1e-12, err_msg=column)
    metrics = json.loads((root / "metrics.json").read_text())
    verdict = sweep.primary_result(table)
    assert metrics["primary"]["verdict"] == verdict["verdict"] and metrics["n_cells"] == 45
    assert metrics["n_incomplete"] == int((~(cells["train_acc"] >= p.edit_completeness)).sum())
    checked = expected.check(folder, metrics, size="full")
    assert len(checked) > 20 and checked["ok"].all(), checked[~checked["ok"].astype(bool)]

"""The comparison grid (grid, registry, statistics): aggregation and verdicts on hand-made cells, a grid's
configuration and saved folder, the shipped full-size grid."""

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mechunlearn_nb import grid, io, plots, registry, statistics
from mechunlearn_nb.localization import Kind


def _cells(flu_relearn, ot_relearn, seeds=(0, 1, 2)):
    rows = []
    for s in seeds:
        rows.append(dict(task="edit 16 athletes", localization="fact lookup", seed=s, relearn_acc=flu_relearn[s],
                         maintain_acc=0.9, lm_loss_change=0.01, mcq_edit_acc=np.nan, probe_true=0.2, edit_acc=1.0))
        rows.append(dict(task="edit 16 athletes", localization="OT (causal tracing)", seed=s, relearn_acc=ot_relearn[s],
                         maintain_acc=0.88, lm_loss_change=0.02, mcq_edit_acc=np.nan, probe_true=0.6, edit_acc=1.0))
    return pd.DataFrame(rows)


def test_aggregate_mean_and_t_interval():
    cells = _cells([0.1, 0.2, 0.3], [0.7, 0.8, 0.9])
    agg = statistics.aggregate(cells)
    row = agg[(agg.localization == "fact lookup") & (agg.metric == "relearn_acc")].iloc[0]
    assert row["mean"] == pytest.approx(0.2)
    # t(0.975, 2) = 4.303; sd = 0.1; n = 3
    assert row["ci95"] == pytest.approx(4.3027 * 0.1 / np.sqrt(3), rel=1e-3)
    assert row["n_seeds"] == 3
    one = statistics.aggregate(cells[cells.seed == 0])
    assert one["ci95"].isna().all()


def test_verdicts_separate_supported_direction_and_not():
    strong = statistics.verdicts(_cells([0.1, 0.12, 0.11], [0.8, 0.82, 0.81]), ot=("OT (causal tracing)",))
    v = strong.set_index("metric")["verdict"]
    assert v["relearn_acc"] == "supported"
    assert v["probe_true"] == "supported"  # no spread over seeds: intervals of width 0, apart
    assert v["mcq_edit_acc"] == "no data" and v["paraphrase_edit_acc"] == "no data"
    assert v["maintain_acc"] == "comparable"
    noisy = statistics.verdicts(_cells([0.1, 0.9, 0.5], [0.2, 0.8, 0.6]), ot=("OT (causal tracing)",))
    assert noisy.set_index("metric").loc["relearn_acc", "verdict"] == "direction only"
    worse = statistics.verdicts(_cells([0.8, 0.82, 0.81], [0.1, 0.12, 0.11]), ot=("OT (causal tracing)",))
    assert worse.set_index("metric").loc["relearn_acc", "verdict"] == "not supported"
    assert (strong["note"] == "").all()  # no record of the unedited model's MCQ: nothing to flag
    cells = _cells([0.1, 0.12, 0.11], [0.8, 0.82, 0.81]).assign(mcq_edit_acc=0.5, base_mcq_forget_acc=0.05)
    flagged = statistics.verdicts(cells, ot=("OT (causal tracing)",)).set_index("metric")["note"]
    assert "0.05 (edit 16 athletes)" in flagged["mcq_edit_acc"] and flagged["relearn_acc"] == ""
    assert "other tasks" not in flagged["mcq_edit_acc"]
    fine = statistics.verdicts(cells.assign(base_mcq_forget_acc=0.9), ot=("OT (causal tracing)",))
    assert (fine["note"] == "").all()


def test_verdicts_compare_pairs_of_cells_on_the_same_task_and_seed():
    """Tasks at different levels: pooled, FLU and OT overlap; pair by pair, FLU is lower every time."""
    easy = _cells([0.10, 0.12, 0.11], [0.20, 0.21, 0.22])
    hard = _cells([0.80, 0.85, 0.90], [0.90, 0.95, 0.99]).assign(task="edit 64 athletes")
    cells = pd.concat([easy, hard], ignore_index=True)
    row = statistics.verdicts(cells, ot=("OT (causal tracing)",)).set_index("metric").loc["relearn_acc"]
    assert row["flu_mean"] + row["flu_ci95"] > row["ot_mean"] - row["ot_ci95"]  # the pooled intervals overlap
    assert row["diff_mean"] == pytest.approx(np.mean([-0.1, -0.09, -0.11, -0.1, -0.1, -0.09]))
    assert row["verdict"] == "supported" and row["n_pairs"] == 6
    # a cell without its counterpart is not compared: the pairs shrink, the counts say so
    lone = cells.drop(cells[(cells.localization == "OT (causal tracing)") & (cells.seed == 2)].index)
    row = statistics.verdicts(lone, ot=("OT (causal tracing)",)).set_index("metric").loc["relearn_acc"]
    assert (row["n_pairs"], row["n_flu"], row["n_ot"]) == (4, 6, 4)


def test_verdicts_per_dataset_and_pooled():
    sports = _cells([0.1, 0.12, 0.11], [0.8, 0.82, 0.81]).assign(mcq_edit_acc=0.5, base_mcq_forget_acc=0.05)
    cf = _cells([0.8, 0.82, 0.81], [0.1, 0.12, 0.11]).assign(task="counterfact 16", mcq_edit_acc=0.5,
                                                               base_mcq_forget_acc=0.9)
    cf["paraphrase_edit_acc"] = [1.0, 0.8, 0.9, 0.7, 0.9, 0.7]  # rows alternate fact lookup, OT: FLU 0.2 ahead
    v = statistics.verdicts(pd.concat([sports, cf], ignore_index=True), ot=("OT (causal tracing)",))
    assert list(dict.fromkeys(v["dataset"])) == ["sports", "counterfact", "all"]
    relearn = v[v.metric == "relearn_acc"].set_index("dataset")
    assert relearn.loc["sports", "verdict"] == "supported" and relearn.loc["counterfact", "verdict"] == "not supported"
    assert relearn.loc["all", "n_flu"] == 6 and relearn.loc["sports", "n_flu"] == 3
    para = v[v.metric == "paraphrase_edit_acc"].set_index("dataset")
    assert para.loc["sports", "verdict"] == "no data"  # no paraphrases of athletes
    assert para.loc["counterfact", "diff_mean"] == pytest.approx(0.2) and para.loc["counterfact", "n_pairs"] == 3
    mcq = v[v.metric == "mcq_edit_acc"].set_index("dataset")["note"]
    assert "0.05 (edit 16 athletes)" in mcq["sports"] and mcq["counterfact"] == ""
    assert "counterfact 16" not in mcq["all"] and "on the other tasks it is above chance" in mcq["all"]
    pooled = statistics.verdicts(pd.concat([sports, cf]), ot=("OT (causal tracing)",), by_dataset=False)
    assert set(pooled["dataset"]) == {"all"} and len(pooled) == 7


def test_table_is_wide_with_intervals():
    wide = statistics.table(statistics.aggregate(_cells([0.1, 0.2, 0.3], [0.7, 0.8, 0.9])))
    assert wide.loc[("edit 16 athletes", "fact lookup"), "relearn_acc"].startswith("0.20 ± ")


def test_grid_config_rejects_unknown_names():
    with pytest.raises(ValueError, match="Unknown task"):
        grid.GridConfig(tasks=("forget cricket",))
    with pytest.raises(ValueError, match="Unknown localization"):
        grid.GridConfig(localizations=("everything",))
    with pytest.raises(ValueError, match="seed"):
        grid.GridConfig(seeds=())


def test_cell_metrics_reads_the_evaluation_table():
    class T:
        train_format, dataset = "fact", "sports"

    rows = [dict(stage=st, set=s, format=f, metric=m, value=v) for st, s, f, m, v in [
        ("after", "forget", "fact", "acc_true", 0.1), ("after", "forget", "fact", "acc_new", 0.9),
        ("after", "maintain", "fact", "acc_true", 0.8), ("before", "forget", "fact", "acc_true", 1.0),
        ("before", "maintain", "fact", "acc_true", 0.85), ("after", "forget", "mcq", "acc_new", 0.3),
        ("before", "forget", "mcq", "acc_new", 0.7),
        ("before", "general_text", "text", "lm_loss", 3.0), ("after", "general_text", "text", "lm_loss", 3.2)]]
    curve = pd.DataFrame([dict(step=0, half="B (held out)", accuracy=0.0), dict(step=20, half="B (held out)", accuracy=0.5),
                          dict(step=20, half="A (trained)", accuracy=1.0)])
    m = grid.cell_metrics(T, pd.DataFrame(rows), curve, None)
    assert (m["forget_acc"], m["edit_acc"], m["maintain_acc"], m["mcq_edit_acc"]) == (0.1, 0.9, 0.8, 0.3)
    assert m["base_mcq_edit_acc"] == 0.7 and np.isnan(m["base_mcq_forget_acc"])  # not in the table: NaN
    assert m["lm_loss_change"] == pytest.approx(0.2) and m["relearn_acc"] == 0.5 and np.isnan(m["probe_true"])
    # probes: probe_true is the middle window's true share; the late layers are kept as probe_true_late
    probe = pd.DataFrame([dict(localization=loc, stage=st, position="final", layer=layer,
                               frac_true=(0.9 if st == "before" else (0.5 if layer <= 2 else 0.0)), frac_edit=0.0)
                          for loc, st in (("base", "before"), ("x", "after")) for layer in range(7)])
    m = grid.cell_metrics(T, pd.DataFrame(rows), curve, probe, probe_window=(1, 2))
    assert (m["probe_true"], m["probe_true_late"], m["probe_true_base"]) == (0.5, 0.0, 0.9)
    assert m["probe_window"] == [1, 2]
    assert grid.cell_metrics(T, pd.DataFrame(rows), curve, probe)["probe_true"] == 0.0  # no window: late layers


def test_probe_window_follows_fact_lookup(tiny):
    flu = registry.fixed(tiny, {"fact lookup": ["m0"]}, ("fact lookup",))["fact lookup"]
    assert grid.probe_window_for(tiny, flu, late_layers=1) == (1, 1)  # 2 blocks: after m0 up to layer 2 - 1
    with pytest.raises(ValueError, match="probe_window"):
        grid.GridConfig(probe_window=(5, 2))


def test_grid_config_checks_fixed_components():
    grid.GridConfig(localizations=("fact lookup", "OT (attribution patching)", "random"),
                          components={"sports": {"fact lookup": ["m1"], "OT (attribution patching)": ["a1"]}})
    with pytest.raises(ValueError, match="unknown dataset"):
        grid.GridConfig(components={"wiki": {"fact lookup": ["m1"]}})
    with pytest.raises(ValueError, match="cannot fix"):
        grid.GridConfig(components={"sports": {"random": ["m1"]}})
    with pytest.raises(ValueError, match="budgets would"):
        grid.GridConfig(localizations=("fact lookup", "OT (causal tracing)"),
                              components={"sports": {"fact lookup": ["m1"]}})
    with pytest.raises(ValueError, match="n_known"):
        grid.GridConfig(n_known=3)


def test_fixed_localizations_share_the_fact_lookup_budget(tiny):
    locs = registry.fixed(tiny, {"fact lookup": ["m1"], "OT (attribution patching)": ["a0"]},
                            ("fact lookup", "OT (attribution patching)", "all MLPs", "non-localized"))
    assert locs["fact lookup"].components == ["m1"]
    assert locs["all MLPs"].n_params > locs["fact lookup"].n_params
    rnd = registry.for_seed(tiny, locs, "random", seed=0)
    assert 0 < rnd.n_params <= locs["fact lookup"].n_params
    with pytest.raises(ValueError, match="fact lookup"):
        registry.fixed(tiny, {"OT (attribution patching)": ["a0"]})


def test_resume_refuses_cells_from_other_settings(tmp_path):
    from dataclasses import asdict

    from mechunlearn_nb.io import save_json

    cells = tmp_path / "cells"
    cells.mkdir()
    config = grid.GridConfig(tasks=("edit 16 athletes",), seeds=(0,))
    save_json(asdict(config), tmp_path / "grid_config.json")
    (cells / "a.json").write_text("{}")
    # more seeds or other localizations: the same settings, cells are reused
    grid._check_resume(grid.GridConfig(tasks=("edit 16 athletes",), seeds=(0, 1)), tmp_path, cells)
    with pytest.raises(ValueError, match="other settings.*relearn_steps"):
        grid._check_resume(grid.GridConfig(tasks=("edit 16 athletes",), seeds=(0,), relearn_steps=(0, 3)),
                                 tmp_path, cells)


def test_resumed_grid_reads_its_saved_localizations(tiny, tmp_path):
    from mechunlearn_nb.io import save_json

    names = ("fact lookup", "OT (attribution patching)", "random", "all MLPs")
    path = tmp_path / "localizations_sports.json"
    assert grid.saved_localizations(tiny, path, names) is None  # nothing saved yet: locate
    save_json({"flu_layers": [1], "n_locate": 4,
               "localizations": {"fact lookup": {"components": ["m1"], "n_params": 1},
                                 "OT (attribution patching)": {"components": ["a0", "m0"], "n_params": 1}}}, path)
    locs = grid.saved_localizations(tiny, path, names)
    assert locs["fact lookup"].components == ["m1"]
    assert locs["OT (attribution patching)"].components == ["a0", "m0"]
    assert locs["all MLPs"].n_params > locs["fact lookup"].n_params
    assert "random" not in locs  # drawn per seed by localization_for
    # a localization the earlier run did not locate: locate again rather than guess
    assert grid.saved_localizations(tiny, path, ("fact lookup", "OT (causal tracing)")) is None


def test_saved_cells_and_timings_read_a_running_grid(tmp_path):
    from mechunlearn_nb.io import save_json

    with pytest.raises(FileNotFoundError, match="No saved cells"):
        grid.saved_cells(tmp_path)
    for seed in (0, 1):
        save_json(dict(metrics=dict(task="edit 16 athletes", localization="fact lookup", seed=seed, relearn_acc=0.1 * seed),
                       curve=[], seconds=dict(edit=10.0, evaluate=2.0)), tmp_path / "cells" / f"c{seed}.json")
    cells = grid.saved_cells(tmp_path)
    assert list(cells["seed"]) == [0, 1] and cells["relearn_acc"].tolist() == [0.0, 0.1]
    t = grid.timings(tmp_path)
    assert len(t) == 4 and t.groupby("seed")["seconds"].sum().tolist() == [12.0, 12.0]


def test_grid_progress_counts_cells_and_estimates_the_time_left(tmp_path, capsys):
    from mechunlearn_nb.__main__ import main
    from mechunlearn_nb.io import save_json

    for loc, seed, secs in [("fact lookup", 0, 100.0), ("random", 0, 300.0), ("fact lookup", 1, None)]:
        save_json(dict(metrics=dict(task="edit 16 athletes", localization=loc, seed=seed), curve=[],
                       **({"seconds": dict(edit=secs / 2, evaluate=secs / 2)} if secs else {})),
                  tmp_path / "cells" / f"{io.slug('edit 16 athletes', loc, seed)}.json")
    p = grid.grid_progress(tmp_path, tasks=("edit 16 athletes", "counterfact 16"),
                                 localizations=("fact lookup", "random"), seeds=(0, 1)).set_index("task")
    assert p.loc["edit 16 athletes", ["planned", "done", "left"]].tolist() == [4, 3, 1]
    assert p.loc["edit 16 athletes", "cell_seconds"] == 200.0  # the untimed (older) cell is not counted
    assert p.loc["counterfact 16", "cell_seconds"] == 200.0 and p.loc["counterfact 16", "seconds_left"] == 800.0
    full = grid.grid_progress(tmp_path)  # (the first grid's design: 5 tasks x 7 localizations x 3 seeds)
    assert full["planned"].sum() == 105 and full["done"].sum() == 3
    # by default grid-status counts the current plan's cells (notebook 09's grid): these cells are not among them
    assert main(["grid-status", str(tmp_path), "--workers", "2"]) == 0
    out = capsys.readouterr().out
    assert "0 of 75 cells saved" in out
    assert main(["grid-status", str(tmp_path), "--workers", "2", "--plan", "v2", "--tasks",
                 "forget basketball,edit 16 athletes,edit 64 athletes,counterfact 16,counterfact 64", "--localizations",
                 "fact lookup,OT (causal tracing),OT MLPs only,OT (attribution patching),random,all MLPs,non-localized",
                 "--seeds", "0,1,2"]) == 0
    out = capsys.readouterr().out
    assert "3 of 105 cells saved" in out and f"{(102 * 200.0) / 2 / 3600:.1f} h left" in out
    assert main(["grid-status", str(tmp_path), "--plan", "v9"]) == 2  # one line, no traceback
    assert re.search("--plan: No plan named 'v9'", capsys.readouterr().err)
    # cells saved under other settings than the plan's are named as such (counted by name, not the plan's cells)
    from dataclasses import asdict

    from mechunlearn_nb import plan

    save_json(asdict(grid.GridConfig()), tmp_path / "grid_config.json")  # the first grid's design
    assert main(["grid-status", str(tmp_path)]) == 0
    assert re.search(rf"Note: .*other settings than plan '{plan.CURRENT}'.*attack_settings.*not that plan's cells",
                     capsys.readouterr().out)
    save_json(asdict(plan.grid_config(plan.require("v2"), rates={"sports": {"random": 1e-4}})),
              tmp_path / "grid_config.json")  # plan v2's cells are not plan v3's: they trained in bfloat16
    assert main(["grid-status", str(tmp_path)]) == 0 and re.search(r"Note: .*other settings than plan 'v3'.*edit_overrides",
                                                                    capsys.readouterr().out)
    assert main(["grid-status", str(tmp_path), "--plan", "v2"]) == 0 and "Note:" not in capsys.readouterr().out
    save_json(asdict(plan.grid_config(plan.require(plan.CURRENT), rates={"sports": {"random": 1e-4}})),
              tmp_path / "grid_config.json")
    assert main(["grid-status", str(tmp_path)]) == 0 and "Note:" not in capsys.readouterr().out
    assert main(["grid-status", str(tmp_path / "cells")]) == 2  # one line, no traceback
    assert re.search("No saved cells.*Fix", capsys.readouterr().err)
    # another plan than the full-size grid: the cells outside it are not counted
    assert main(["grid-status", str(tmp_path), "--tasks", "edit 16 athletes", "--localizations", "fact lookup",
                 "--seeds", "0,1,0"]) == 0
    assert "2 of 2 cells saved; about 0.0 h left" in capsys.readouterr().out
    assert main(["grid-status", str(tmp_path), "--localizations", "fact lookups"]) == 2  # one line, no traceback
    assert re.search("Unknown localization.*'fact lookups'.*choose from", capsys.readouterr().err)
    assert main(["grid-status", str(tmp_path), "--tasks", "edit athletes"]) == 2  # one line, no traceback
    assert re.search("Unknown task.*'edit athletes'", capsys.readouterr().err)
    assert main(["grid-status", str(tmp_path), "--seeds", "0,one"]) == 2  # one line, no traceback
    assert re.search("--seeds takes comma-separated integers", capsys.readouterr().err)


def test_one_saved_cell_its_evaluation_table_and_the_explorer(tmp_path, capsys):
    from mechunlearn_nb import widgets
    from mechunlearn_nb.io import save_json

    def rec(stage, set_, fmt, metric, value, n):
        return dict(stage=stage, set=set_, format=fmt, metric=metric, value=value, n=n)

    evaluation = [rec("before", "forget", "fact", "acc_true", 1.0, 16), rec("after", "forget", "fact", "acc_true", 0.25, 16),
                  rec("before", "maintain", "qa", "acc_true", 0.9, 256), rec("after", "maintain", "qa", "acc_true", 0.8, 256)]
    curve = [dict(step=s, half=h, accuracy=a) for s, h, a in [(0, "A (trained)", 0.0), (5, "A (trained)", 0.5),
                                                               (0, "B (held out)", 0.0), (5, "B (held out)", 0.25)]]
    for loc, ev in [("fact lookup", evaluation), ("random", [])]:
        save_json(dict(metrics=dict(task="edit 16 athletes", localization=loc, seed=0, edit_acc=1.0, probe_true=float("nan")),
                       curve=curve, evaluation=ev), tmp_path / "cells" / f"{io.slug('edit 16 athletes', loc, 0)}.json")
    cell = grid.saved_cell(tmp_path, "edit 16 athletes", "fact lookup", 0)
    table = grid.evaluation_table(cell)
    assert table.loc[("forget", "fact", "acc_true"), "change"] == pytest.approx(-0.75)
    assert table.loc[("maintain", "qa", "acc_true"), "n"] == 256 and list(table.columns) == ["before", "after", "change", "n"]
    with pytest.raises(ValueError, match="without its evaluation table"):
        grid.evaluation_table(grid.saved_cell(tmp_path, "edit 16 athletes", "random", 0))
    cells = grid.saved_cells(tmp_path).sort_values("localization", ascending=False)  # the older cell first
    key, first = grid.first_evaluation_table(tmp_path, cells)
    assert key == dict(task="edit 16 athletes", localization="fact lookup", seed=0) and first.equals(table)
    key, none = grid.first_evaluation_table(tmp_path, cells[cells["localization"] == "random"])
    assert key is None and none.empty and list(none.columns) == list(table.columns)
    with pytest.raises(FileNotFoundError, match="seed 3.*pick one of the saved cells"):
        grid.saved_cell(tmp_path, "edit 16 athletes", "fact lookup", 3)
    capsys.readouterr()
    box = widgets.grid_explorer(tmp_path)
    task, loc, seed = box.children[0].children
    assert list(loc.options) == ["fact lookup", "random"] and task.value == "edit 16 athletes" and seed.value == 0
    shown = capsys.readouterr().out  # outside a kernel the Output widget lets its content through to stdout
    assert "acc_true" in shown and "-0.75" in shown and "without its evaluation table" not in shown
    loc.value = "random"  # an older cell without a table still shows its metrics, says why the table is missing
    shown = capsys.readouterr().out
    assert "without its evaluation table" in shown and "edit_acc" in shown


def test_unedited_rows_give_the_table_a_reference():
    cells = _cells([0.1, 0.2, 0.3], [0.7, 0.8, 0.9]).assign(base_maintain_acc=0.95, probe_true_base=0.8)
    cells.loc[cells.index[:2], "base_mcq_edit_acc"] = 0.7  # an older cell lacks the field: the others' value is used
    base = statistics.unedited(cells)
    assert len(base) == 3 and set(base["localization"]) == {statistics.UNEDITED}
    assert base["maintain_acc"].tolist() == [0.95] * 3 and base["mcq_edit_acc"].tolist()[0] == 0.7
    agg = statistics.aggregate(pd.concat([cells, base], ignore_index=True))
    ref = agg[agg["localization"] == statistics.UNEDITED].set_index("metric")["mean"]
    assert ref["probe_true"] == pytest.approx(0.8) and "relearn_acc" not in ref
    fig = plots.plot_metrics(agg)
    assert statistics.UNEDITED in [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert statistics.unedited(cells[["task", "localization", "seed"]]).empty


def test_the_shipped_full_size_grid_is_complete_and_its_table_and_verdicts_follow_from_its_cells():
    import json

    from mechunlearn_nb import expected

    root = Path(__file__).resolve().parents[1] / "results" / "09_comparison_full"
    metrics = json.loads((root / "metrics.json").read_text())
    checked = expected.check("09_comparison_v1", metrics, size="full")  # (the grid before plans: its own ranges)
    assert len(checked) > 20 and checked["ok"].all(), checked[~checked["ok"]]
    cells = grid.saved_cells(root)
    assert len(cells) == 105 and grid.grid_progress(root)["left"].sum() == 0
    shipped = pd.read_csv(root / "verdicts.csv")
    again = statistics.verdicts(cells)
    cols = ["dataset", "claim", "versus", "verdict"]
    assert again[cols].values.tolist() == shipped[cols].values.tolist()
    assert np.allclose(again["diff_mean"], shipped["diff_mean"], equal_nan=True)
    agg = statistics.aggregate(pd.concat([cells, statistics.unedited(cells)], ignore_index=True))
    both = agg.merge(pd.read_csv(root / "aggregate.csv"), on=["task", "localization", "metric"], suffixes=("", "_shipped"))
    assert len(both) == len(agg) and np.allclose(both["mean"], both["mean_shipped"], equal_nan=True)


def test_registry_entries_say_how_each_localization_is_built(tiny):
    assert registry.LOCATED == ("fact lookup", "OT (causal tracing)", "OT MLPs only", "OT (attribution patching)")
    assert registry.entry("ot_causal_tracing") is registry.entry("OT (causal tracing)")
    assert {e.key for e in registry.ENTRIES} == {io.slug(e.label, sep="_") for e in registry.ENTRIES}
    with pytest.raises(ValueError, match="choose from"):
        registry.entry("everything")
    assert set(registry.FAST_COMPONENTS) == set(registry.LOCATED)
    # built from FAST components: nothing located, and each whole group carries its kind (its learning rate)
    locs, evidence = registry.build(tiny, ("fact_lookup", "random", "all MLPs", "non-localized"),
                                    components={"fact lookup": ["m1"]}, seed=3)
    assert list(locs) == ["fact lookup", "random", "all MLPs", "non-localized"] and evidence["n_locate"] == 0
    assert [locs[n].kind for n in locs] == [Kind.LOCALIZED, Kind.LOCALIZED, Kind.ALL_MLPS, Kind.NON_LOCALIZED]
    assert locs["random"].meta["seed"] == 3 and locs["random"].n_params <= locs["fact lookup"].n_params
    with pytest.raises(ValueError, match="budgets would"):
        registry.build(tiny, ("fact lookup", "OT (causal tracing)"), components={"fact lookup": ["m1"]})
    with pytest.raises(ValueError, match="built, not located"):
        registry.fixed(tiny, {"fact lookup": ["m1"], "random": ["a0"]})


def test_the_v2_study_cells_follow_their_plan():
    """results/09_comparison_v2 (filled over sessions): every saved cell is one of plan v3's, edited at its tuned
    rate through the components the study fixed (random: fact lookup's budget, drawn per seed), measured at the
    plan's relearning steps in both attack settings (and its 32 held-out facts one by one), and trained in the
    plan's precision."""
    import json

    from mechunlearn_nb import plan

    root = Path(__file__).resolve().parents[1] / "results" / "09_comparison_v2"
    p = plan.load("v3")
    study = json.loads((root / "study.json").read_text())
    rates = json.loads((root.parent / "tuning" / "v3" / "rates.json").read_text())
    assert study["plan"] == "v3" and study["rates"] == rates
    config = json.loads((root / "grid_config.json").read_text())
    assert config["tasks"] == list(p.tasks) and config["localizations"] == list(p.localizations)
    assert config["seeds"] == list(p.test_seeds) and p.tuning_seed not in config["seeds"]
    located = {d: json.loads((root / f"localizations_{d}.json").read_text())["localizations"]
               for d in ("sports", "counterfact")}
    paths = sorted((root / "cells").glob("*.json"))
    assert paths, "the study has saved no cell"
    random_components = {}
    for path in paths:
        cell = json.loads(path.read_text())
        m = cell["metrics"]
        assert path == grid.cell_path(root, m["task"], m["localization"], m["seed"])
        assert m["task"] in p.tasks and m["localization"] in p.localizations and m["seed"] in p.test_seeds
        dataset = "counterfact" if m["task"].startswith("counterfact") else "sports"
        rate = rates["rates"][dataset][m["localization"]]
        assert m["lr"] == rate["lr"] and cell["edit_config"]["steps"] == rate["steps"], path.name
        assert cell["edit_config"]["precision"] == p.precision
        if registry.entry(m["localization"]).located:
            assert m["components"] == located[dataset][m["localization"]]["components"], path.name
        elif m["localization"] == "random":
            assert m["n_params"] <= located[dataset]["fact lookup"]["n_params"]
            random_components[(dataset, m["seed"])] = tuple(m["components"])
        steps = {(r["setting"], r["step"]) for r in cell["curve"]}
        assert steps == {(s, k) for s in p.attack_settings for k in p.relearn_steps}, path.name
        # the held-out half fact by fact, every setting and step: the relearning claims resample facts
        fact_steps = {(r["setting"], r["step"]) for r in cell["curve_facts"]}
        assert fact_steps == steps and len(cell["curve_facts"]) == len(steps) * 32, path.name
    # one draw of random components per seed, different across seeds
    for dataset in ("sports", "counterfact"):
        drawn = [c for (d, _), c in random_components.items() if d == dataset]
        assert len(set(drawn)) == len(drawn)


def test_the_shipped_v2_study_is_complete_and_its_verdicts_and_tables_follow_from_its_cells():
    """results/09_comparison_v2 holds every cell of plan v3; its metrics sit in expected.toml's full-size ranges and
    its verdicts, intervals, exclusions and aggregate are what the plan's analysis reads from the cells again."""
    import json

    from mechunlearn_nb import expected, plan, reanalysis

    root = Path(__file__).resolve().parents[1] / "results" / "09_comparison_v2"
    p = plan.load("v3")
    cells = grid.saved_cells(root)
    assert len(cells) == len(p.tasks) * len(p.localizations) * len(p.test_seeds) == 75
    assert grid.grid_progress(root, p.tasks, p.localizations, p.test_seeds)["left"].sum() == 0
    metrics = json.loads((root / "metrics.json").read_text())
    checked = expected.check("09_comparison", metrics, size="full")
    assert len(checked) > 40 and checked["ok"].all(), checked[~checked["ok"]]
    calibration = root.parent / "attack_calibration" / "v3" / "calibration.json"
    setting = plan.attack_setting(p, calibration, unseparated="first")
    assert setting == metrics["attack_setting"] == "paper"
    again = reanalysis.plan_verdicts(root, p, setting=setting, attack_untestable=plan.attack_untestable(p, calibration))
    shipped = pd.read_csv(root / "verdicts.csv")
    v = again["verdicts"]
    assert len(v) == p.family_size == 44 and (v["family_size"] == 44).all()
    cols = ["dataset", "claim", "versus", "verdict"]
    assert v[cols].values.tolist() == shipped[cols].values.tolist()
    for col in ("diff", "low", "high", "p_holm"):
        assert np.allclose(v[col], shipped[col], equal_nan=True), col
    excluded = pd.read_csv(root / "excluded_cells.csv")
    assert again["excluded"][["task", "localization", "seed"]].values.tolist() == \
        excluded[["task", "localization", "seed"]].values.tolist()
    assert (excluded["train_acc"] < p.edit_completeness).all() and len(excluded) == metrics["n_excluded"]
    # every task's attack can rank the localizations (none at the floor or ceiling), unlike the first grid's
    assert (again["floor_ceiling"]["status"] == "discriminates").all()
    agg = statistics.aggregate(pd.concat([cells, statistics.unedited(cells)], ignore_index=True))
    both = agg.merge(pd.read_csv(root / "aggregate.csv"), on=["task", "localization", "metric"], suffixes=("", "_shipped"))
    assert len(both) == len(agg) and np.allclose(both["mean"], both["mean_shipped"], equal_nan=True)

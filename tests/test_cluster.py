"""The grid on Ray (cluster): a small grid on local Ray workers gives the one-process metrics; a worker killed
mid-cell loses nothing; a stopped driver resumes; a second driver on the same folder is refused.

One local Ray instance (2 CPUs) serves the whole module; its start-up time is printed (``-s``)."""

import json
import os
import socket
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import pandas as pd
import torch
import pytest

from mechunlearn_nb import cluster, grid, models

# one local Ray instance for the module: its tests stay on one test process (pytest-xdist, --dist loadgroup)
pytestmark = pytest.mark.xdist_group("ray")

EDIT = dict(steps=2, batch_size=4, maintain_batch_size=4, lm_tokens=16, lm_window=16, eval_facts=4, eval_every=0)
SMALL = dict(n_known=120, known_threshold=0.0, max_maintain=8, n_unrelated=0, probes=False, relearn_steps=(0, 1),
             edit_overrides=EDIT, relearn_overrides=dict(batch_size=4, maintain_batch_size=4, lm_tokens=16, lm_window=16),
             eval_overrides=dict(n_paragraphs=1, lm_tokens=16))
#: 2 tasks x 2 localizations x 2 seeds; the tiny random model knows nothing, so every fact counts as known
CONFIG = grid.GridConfig(tasks=("edit 4 athletes", "counterfact 4"), localizations=("fact lookup", "random"), seeds=(0, 1),
                         components={"sports": {"fact lookup": ["m1"]}, "counterfact": {"fact lookup": ["m1"]}}, **SMALL)
TINY = partial(models.tiny_model, seed=0)
KEYS = ["task", "localization", "seed"]


class MarkedWorker(cluster.GridWorker):
    """A worker that notes which process computed each cell, and exits mid-cell (the process dies, as when a
    node is lost) when the file ``die`` names that cell."""

    folder = None  # set by the test before the class is sent to Ray (pickled by value)

    def run_cell(self, task, localization, seed, records):
        folder = Path(self.folder)
        die = folder / "die"
        if die.exists() and die.read_text() == grid.cell_path(".", task, localization, seed).name:
            (folder / "died").write_text(str(os.getpid()))
            die.unlink()
            os._exit(1)
        cell = super().run_cell(task, localization, seed, records)
        (folder / f"{grid.cell_path('.', task, localization, seed).stem}.pid").write_text(str(os.getpid()))
        return cell


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the test's worker class travels to Ray
    info = cluster.start_ray(num_cpus=2)
    print(f"\nRay local start-up: {info['seconds']} s")
    yield info
    ray.shutdown()


def test_driver_lock_refuses_a_second_driver_and_takes_over_a_stale_one(tmp_path):
    with cluster.DriverLock(tmp_path) as lock:
        owner = json.loads(lock.path.read_text())
        assert owner["pid"] == os.getpid() and owner["host"] == socket.gethostname()
        with pytest.raises(cluster.GridLockedError, match=rf"pid {os.getpid()} on host .*Fix: wait.*delete .*\.driver\.lock"):
            cluster.DriverLock(tmp_path).acquire()
        with pytest.raises(cluster.GridLockedError, match="another driver"):  # run_cells checks before starting Ray
            cluster.run_cells(CONFIG, tmp_path, TINY)
    assert not lock.path.exists()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    lock.path.write_text(json.dumps({"pid": gone.pid, "host": socket.gethostname(), "since": "earlier"}))
    with cluster.DriverLock(tmp_path):  # its driver no longer runs on this host: stale, taken over
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()
    lock.path.write_text(json.dumps({"pid": gone.pid, "host": "another-node", "since": "earlier"}))
    with pytest.raises(cluster.GridLockedError, match="another-node"):  # cannot be checked from here: refused
        cluster.DriverLock(tmp_path).acquire()


def test_resources_are_checked():
    with pytest.raises(ValueError, match="workers"):
        cluster.Resources(workers=0)
    with pytest.raises(ValueError, match="gpus per worker"):
        cluster.Resources(gpus=-1)
    assert cluster.Resources(workers=2, cpus=1, gpus=0.5).gpus == 0.5


def test_small_grid_on_ray_survives_a_killed_worker_and_matches_one_process(ray_local, tiny, tmp_path):
    """8 cells on 2 workers; the worker computing one of them dies mid-cell: Ray restarts it and the cell is
    retried in the new process; every cell is saved once, and equals the cell computed in one process."""
    out, marks = tmp_path / "ray", tmp_path / "marks"
    marks.mkdir()
    victim = ("counterfact 4", "random", 1)
    (marks / "die").write_text(grid.cell_path(".", *victim).name)
    MarkedWorker.folder = str(marks)
    t0 = time.perf_counter()
    outcome = cluster.run_cells(CONFIG, out, TINY, cluster.Resources(workers=2), worker_class=MarkedWorker,
                                progress=False)
    print(f"\n8 tiny cells on 2 Ray workers (one killed): {time.perf_counter() - t0:.1f} s")
    assert outcome.failed == [] and sorted(outcome.computed) == sorted(grid.planned_cells(CONFIG))
    assert grid.missing_cells(CONFIG, out) == [] and not (out / cluster.LOCK_NAME).exists()
    died = int((marks / "died").read_text())
    retried = int((marks / f"{grid.cell_path('.', *victim).stem}.pid").read_text())
    assert not (marks / "die").exists() and retried != died  # computed again, in another process
    assert (out / "localizations_sports.json").exists() and (out / "localizations_counterfact.json").exists()

    # the same cells in one process (the first task's, seed 0): the metrics are identical, number for number
    one = tmp_path / "one"
    small = grid.GridConfig(**{**CONFIG.__dict__, "tasks": ("edit 4 athletes",), "seeds": (0,)})
    local = grid.run_grid(tiny, small, one, progress=False).set_index(KEYS).sort_index()
    remote = grid.saved_cells(out).set_index(KEYS).sort_index().loc[local.index]
    pd.testing.assert_frame_equal(local, remote[local.columns], check_exact=True)
    print(local[["edit_acc", "maintain_acc", "relearn_acc", "lm_loss_change"]].to_string())


def test_the_unedited_baseline_is_computed_once_per_task_and_seed_and_shared_on_disk(tiny, tmp_path):
    """A grid's folder keeps each (task, seed)'s unedited evaluation (``baselines/``): another computer on the same
    folder (a second worker, a resumed run) reads it instead of computing it, and its cells are the same number for
    number; a folder whose cells are gone and whose settings changed drops the old baselines."""
    config = grid.GridConfig(**{**CONFIG.__dict__, "tasks": ("edit 4 athletes",), "seeds": (0,)})
    out = tmp_path / "grid"
    first = grid.run_grid(tiny, config, out, progress=False).set_index(KEYS).sort_index()
    assert [p.name for p in (out / "baselines").iterdir()] == [grid.baseline_path(out, "edit 4 athletes", 0).name]

    def locate(dataset):
        return grid.localizations_from_record(tiny, json.loads((out / f"localizations_{dataset}.json").read_text()),
                                              grid.located_names(config))

    reader = grid.CellComputer(tiny, config, locate, share=out)
    fresh = grid.CellComputer(tiny, config, locate)  # computes its own baseline
    for loc in ("fact lookup", "random"):
        shared, own = reader.compute("edit 4 athletes", loc, 0), fresh.compute("edit 4 athletes", loc, 0)
        assert json.dumps(shared["metrics"]) == json.dumps(own["metrics"])  # every number, as saved
        assert shared["evaluation"] == own["evaluation"]
        row = first.loc[("edit 4 athletes", loc, 0)]
        assert [shared["metrics"][k] for k in ("edit_acc", "maintain_acc", "lm_loss_change")] == \
            [row[k] for k in ("edit_acc", "maintain_acc", "lm_loss_change")]
    assert reader.baselines_read == 1 and fresh.baselines_read == 0
    # other settings in a folder without cells: the stale baselines go (the cells were deleted to recompute)
    for cell in (out / "cells").glob("*.json"):
        cell.unlink()
    grid.start_grid(grid.GridConfig(**{**config.__dict__, "max_maintain": 6}), out)
    assert not (out / "baselines").exists()


def test_stopped_driver_resumes_from_saved_cells(ray_local, tmp_path):
    """A driver stopped after its first saved cell leaves the others unsaved and its lock released; the next
    driver computes only the cells still missing."""
    config = grid.GridConfig(**{**CONFIG.__dict__, "tasks": ("edit 4 athletes",), "seeds": (0,)})  # 2 cells

    def stop(cell):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cluster.run_cells(config, tmp_path, TINY, progress=False, on_saved=stop)  # one worker
    missing = grid.missing_cells(config, tmp_path)
    assert len(missing) == 1 and not (tmp_path / cluster.LOCK_NAME).exists()
    saved_before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "cells").glob("*.json")}
    again = cluster.run_cells(config, tmp_path, TINY, progress=False)
    assert sorted(again.computed) == sorted(missing) and again.read_back == 1
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "cells").glob("*.json") if p.name in saved_before} \
        == saved_before  # the saved cells were not recomputed
    assert grid.missing_cells(config, tmp_path) == []


@pytest.mark.parametrize("name, cls", [("embedded", "Gemma3TextConfig"), ("gemma-2-9b", "Gemma2Config")])
def test_shipped_configs_count_their_models_parameters(name, cls):
    """The parameter count grid-plan prints (from the config's architecture) is the model's, built on the meta
    device from the same numbers (norms aside: under 0.1%)."""
    import torch
    import transformers

    from mechunlearn_nb import sizing as plan

    arch = plan.load_config(name)["architecture"]
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(getattr(transformers, cls)(**arch))
    counted = sum(p.numel() for p in model.parameters())
    assert plan.parameters(arch)["total"] == pytest.approx(counted, rel=1e-3)


def test_grid_plan_estimates_from_the_measured_pace_without_a_model(capsys):
    from mechunlearn_nb import sizing as plan
    from mechunlearn_nb.__main__ import main

    cells, summary = plan.plan("embedded")
    measured = grid.timings(plan.PACE_DIR).groupby(["task", "localization", "seed"])["seconds"].sum()
    assert summary["compute_ratio"] == 1.0 and len(cells) == 105 == summary["n_cells"]
    # every one of the 105 cells at its task's measured mean: the measured total, plus the untimed cell's share
    assert summary["core_hours"] == pytest.approx(measured.groupby("task").mean().mul(21).sum() / 3600, abs=0.05)
    big, s9 = plan.plan("gemma-2-9b")
    ratio = plan.flops_per_token(plan.load_config("gemma-2-9b")["architecture"]) / plan.flops_per_token(
        plan.load_config("embedded")["architecture"])
    assert s9["compute_ratio"] == round(ratio, 2) and ratio > 10 and (big["gpus"] == 1).all()
    assert s9["core_hours"] == pytest.approx(summary["core_hours"] * ratio, rel=5e-3)  # both rounded to 0.1 h
    assert s9["weights_gb"] == round(s9["parameters"] * 2 / 1e9, 1)  # bfloat16
    assert main(["grid-plan", "gemma-2-9b"]) == 0
    shown = capsys.readouterr().out
    assert "105 cells" in shown and "basis: measured one-core seconds" in shown and "compute ratio" in shown
    assert f"{s9['core_hours']} core-hours" in shown and "models" not in sys.modules.get("mechunlearn_nb.sizing").__dict__
    assert main(["grid-plan", "gemma-9"]) == 2
    assert "No grid config 'gemma-9'" in capsys.readouterr().err


def test_tiny_model_runs_a_cell_on_the_device_torch_offers(tiny):
    """The device comes from torch (cuda when there is a GPU): a GPU machine runs this very path."""
    import torch

    device = models.default_device()
    assert device == ("cuda" if torch.cuda.is_available() else "cpu")
    model = tiny if device == "cpu" else models.tiny_model(seed=0, device=None)  # on a CPU: the same model
    assert next(models.hf_model(model).parameters()).device.type == device
    computer = grid.CellComputer(model, CONFIG, lambda dataset: grid.locate(model, dataset, CONFIG,
                                                                             computer.known_facts(dataset))[0])
    cell = computer.compute("edit 4 athletes", "fact lookup", 0)
    assert 0 <= cell["metrics"]["edit_acc"] <= 1 and cell["curve"]
    with pytest.raises(ValueError, match="Unknown dtype 'half'"):
        models.parse_dtype("half")


@pytest.mark.slow
def test_two_embedded_cells_on_ray_equal_one_process(ray_local, gemma, tmp_path):
    """2 cells on the embedded model at notebook 09's small sizes: a Ray worker's metrics are the one-process ones."""
    from mechunlearn_nb import plan, registry

    # (the identity of the two paths does not need the plan's 10-step edits and debiased multiple choice: 5 steps,
    # none, as before plans, keep this test at half the time)
    sizes = {k: v for k, v in plan.FAST_SIZES.items() if k != "tasks"}
    sizes.update(mcq_debiased=0, edit_overrides={**sizes["edit_overrides"], "steps": 5})
    config = grid.GridConfig(tasks=("edit 8 athletes",), localizations=("fact lookup", "random"), seeds=(0,),
                             components={"sports": {"fact lookup": registry.FAST_COMPONENTS["fact lookup"]}}, **sizes)
    t0 = time.perf_counter()
    outcome = cluster.run_cells(config, tmp_path / "ray", partial(models.load_model, None), progress=False)
    print(f"\n2 embedded cells on 1 Ray worker: {time.perf_counter() - t0:.1f} s")
    assert len(outcome.computed) == 2 and outcome.failed == []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as a worker computes (one thread per CPU it is given): the same sums in the same order
    try:
        local = grid.run_grid(gemma, config, tmp_path / "one", progress=False).set_index(KEYS).sort_index()
    finally:
        torch.set_num_threads(threads)
    remote = grid.saved_cells(tmp_path / "ray").set_index(KEYS).sort_index()[local.columns]
    # accuracies are counts of facts: equal exactly; losses are float32 sums, equal to float32 rounding (with two
    # threads against one, the general-text loss change of the random cell differed by 1.4e-6)
    losses = [c for c in local.columns if "loss" in c]
    pd.testing.assert_frame_equal(local.drop(columns=losses), remote.drop(columns=losses), check_exact=True)
    pd.testing.assert_frame_equal(local[losses], remote[losses], check_exact=False, rtol=0, atol=1e-5)
    print(local[["edit_acc", "maintain_acc", "relearn_acc", "lm_loss_change"]].to_string())


def test_the_study_script_refuses_a_folder_started_with_other_rates_before_any_cell(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    rates = {"sports": {"fact lookup": 1e-4}, "counterfact": {"fact lookup": 1e-4}}
    (tmp_path / "a.json").write_text(json.dumps({"rates": rates}))
    (tmp_path / "b.json").write_text(json.dumps({"rates": {**rates, "sports": {"fact lookup": 2e-4}}}))
    out = tmp_path / "study"
    out.mkdir()
    (out / "study.json").write_text(json.dumps({"plan": "v3", "rates": {"rates": rates},
                                                "components": "results/09_comparison_full"}))

    def study(rates_file):
        return subprocess.run([sys.executable, str(root / "scripts" / "run_study.py"), "--plan", "v3", "--rates",
                               str(rates_file), "--out", str(out), "--workers", "1"], capture_output=True, text=True,
                              timeout=300)

    refused = study(tmp_path / "b.json")
    assert refused.returncode != 0 and "holds a study with other rates" in refused.stderr
    assert "Fix: use a new --out" in refused.stderr and not (out / "cells").exists()
    # a different record of the located components is refused too: the rates were tuned on the shipped ones
    (out / "localizations_sports.json").write_text(json.dumps({"localizations": {}}))
    refused = study(tmp_path / "a.json")
    assert refused.returncode != 0 and "differs from" in refused.stderr and not (out / "cells").exists()


def _seed_record(model, config, seed):
    """A located record whose fact lookup depends on the evidence seed (m0 for even seeds, m1 for odd): the tiny
    random model has no look-up for the rule to find, so the per-seed evidence is stood in for."""
    from mechunlearn_nb import registry

    locs = registry.fixed(model, {"fact lookup": [f"m{seed % 2}"]}, grid.located_names(config))
    return {**grid.localization_record(locs, {"flu_layers": [seed % 2], "n_locate": 0}), "evidence_seed": seed}


class SeedLocatingWorker(cluster.GridWorker):
    """A worker whose located components depend on the evidence seed it is asked to locate from."""

    def locate(self, dataset, seed=0):
        return _seed_record(self.model, self.config, seed)


RELOCATING = grid.GridConfig(**{**CONFIG.__dict__, "tasks": ("edit 4 athletes",), "components": None,
                                "relocate_per_seed": True})


def _check_relocated(out: Path):
    for seed in (0, 1):
        record = json.loads(grid.localizations_path(out, f"sports__seed{seed}").read_text())
        assert record["evidence_seed"] == seed and record["localizations"]["fact lookup"]["components"] == [f"m{seed}"]
        flu = grid.saved_cell(out, "edit 4 athletes", "fact lookup", seed)["metrics"]
        rnd = grid.saved_cell(out, "edit 4 athletes", "random", seed)["metrics"]
        assert flu["components"] == [f"m{seed}"] and rnd["n_params"] <= flu["n_params"]  # random: that seed's budget
    assert not grid.localizations_path(out, "sports").exists()


def test_a_grid_locates_again_for_every_seed_and_resumes_from_what_it_saved(tiny, tmp_path, monkeypatch):
    """relocate_per_seed: each seed's cells edit through the components located from that seed's evidence sample
    (saved per seed), so the seeds' spread holds the evidence's; a resumed run reads them back; a folder of the
    other setting is refused."""
    from mechunlearn_nb import registry

    assert grid.evidence_key("sports", 3, CONFIG) == "sports" and grid.evidence_seed(CONFIG, 3) == 0
    assert grid.evidence_key("sports", 3, RELOCATING) == "sports__seed3" and grid.evidence_seed(RELOCATING, 3) == 3
    calls = []

    def build(model, names, dataset, components=None, seed=0, **kwargs):
        calls.append((dataset, seed))
        locs = registry.fixed(model, {"fact lookup": [f"m{seed % 2}"]}, names)
        return locs, {"flu_layers": [seed % 2], "n_locate": 0}

    monkeypatch.setattr(registry, "build", build)
    grid.run_grid(tiny, RELOCATING, tmp_path, progress=False)
    assert calls == [("sports", 0), ("sports", 1)]
    _check_relocated(tmp_path)
    grid.run_grid(tiny, RELOCATING, tmp_path, progress=False)  # resumed: every cell and record read back
    assert calls == [("sports", 0), ("sports", 1)]
    once = grid.GridConfig(**{**RELOCATING.__dict__, "relocate_per_seed": False})
    with pytest.raises(ValueError, match="relocate_per_seed"):
        grid.run_grid(tiny, once, tmp_path, progress=False)


def test_the_ray_driver_locates_once_per_seed_when_asked(ray_local, tmp_path):
    outcome = cluster.run_cells(RELOCATING, tmp_path, TINY, resources=cluster.Resources(workers=2), progress=False,
                                worker_class=SeedLocatingWorker)
    assert outcome.failed == [] and len(outcome.computed) == 4
    _check_relocated(tmp_path)


def test_cells_keep_the_attack_fact_by_fact_and_its_area_is_compared_fact_by_fact(tiny, tmp_path):
    """A cell saves its held-out half of the relearning attack fact by fact (``curve_facts``): the facts' mean is the
    saved curve, their areas average to the cell's area, the same facts stand on both sides of a (task, seed), and
    the area claim's bootstrap then resamples seeds and facts instead of seeds only."""
    import numpy as np

    from mechunlearn_nb import reanalysis, statistics

    config = grid.GridConfig(**{**CONFIG.__dict__, "tasks": ("edit 4 athletes",)})
    grid.run_grid(tiny, config, tmp_path, progress=False)
    cell = grid.saved_cell(tmp_path, "edit 4 athletes", "random", 1)
    facts = pd.DataFrame(cell["curve_facts"])
    assert list(facts.columns) == ["step", "half", "fact", "p_true", "correct", "setting"]
    assert len(facts) == 2 * len(config.relearn_steps) and set(facts["half"]) == {"B (held out)"}
    curve = pd.DataFrame(cell["curve"])
    held = curve[curve["half"] == "B (held out)"].set_index("step")
    means = facts.groupby("step")[["p_true", "correct"]].mean()
    assert np.allclose(means["p_true"], held["p_true"].loc[means.index])
    assert np.allclose(means["correct"], held["accuracy"].loc[means.index])
    aucs = reanalysis.fact_aucs(tmp_path)
    cells = reanalysis.cells_with_curves(tmp_path).set_index(["localization", "seed"])
    per_cell = aucs.groupby(["localization", "seed"])["auc"].mean()
    assert np.allclose(per_cell.to_numpy(), cells.loc[per_cell.index, "relearn_p_true_auc"].to_numpy())
    pairs = reanalysis._pairs(reanalysis.cells_with_curves(tmp_path), "random", "relearn_p_true_auc")
    diffs = reanalysis._fact_pairs(aucs, pairs, "random")
    assert len(diffs) == 2 * len(pairs) and diffs.groupby("unit").size().eq(2).all()  # the same 2 facts per seed
    by_fact = reanalysis._compare(pairs, "relearn_p_true_auc", 1000, 0, diffs)
    by_seed = reanalysis._compare(pairs, "relearn_p_true_auc", 1000, 0)
    assert by_fact["method"] == statistics.FACTS and by_seed["method"] == statistics.SEEDS_ONLY
    assert by_fact["diff"] == pytest.approx(by_seed["diff"], rel=1e-4)  # the same estimate (float32 facts), another spread
    (tmp_path / "cells" / "old.json").write_text(json.dumps({**cell, "curve_facts": []}))  # an older cell: no facts
    assert reanalysis.fact_aucs(tmp_path) is None

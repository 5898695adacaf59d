"""Full-size grid cells on Ray with 1 and 2 workers, and one of them in one process: speed-up and identity.

The cells: ``edit 64 athletes`` × (fact lookup, random of the same size) × seeds (``--seeds``, default 0 and 1) at
notebook 09's full sizes (the shipped grid's settings, ``results/09_comparison_full/grid_config.json``, with its located
components, so nothing is located again; the edit's accuracies measured at its start and end only, as a cell keeps
only the last). Steps, each into its own folder under ``--out``:

1. ``workers2``: the 4 cells on 2 Ray workers (one CPU each);
2. ``workers1``: the same 4 cells on 1 Ray worker;
3. ``one_process``: the first cell in this process with one torch thread (as a worker computes);
4. Ray's start-up: ``ray.init`` of a local instance, and a worker's start with its model load, each timed
   apart from any cell.
5. ``one_process_all``: every cell in this process with one torch thread, one after another (a median on one core);

``summary.json`` holds the wall times, the speed-up (workers1 / workers2), every cell's seconds per phase,
and whether each cell's metrics are identical across the runs.

    python scripts/time_ray_grid.py --out results/grid_speed [--precision bfloat16-mixed] [--steps 1,2,3] [--seeds 0]
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import torch

from mechunlearn_nb import cluster, grid, models
from mechunlearn_nb.io import save_json

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "results" / "09_comparison_full"


def config_for(precision: str, seeds: tuple[int, ...] = (0, 1)) -> grid.GridConfig:
    saved = json.loads((SHIPPED / "grid_config.json").read_text())
    base = grid.GridConfig(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in saved.items()
                              if k in grid.GridConfig.__dataclass_fields__})
    extra = {} if precision == "float32" else {"precision": precision}
    # the edit's accuracies only at its start and end (a cell keeps the last; the shipped grid measured every 10 steps)
    return replace(base, tasks=("edit 64 athletes",), localizations=("fact lookup", "random"), seeds=seeds,
                   edit_overrides={**base.edit_overrides, **extra, "eval_every": 0},
                   relearn_overrides={**base.relearn_overrides, **extra})


def cells_of(folder: Path) -> dict:
    return {p.stem: json.loads(p.read_text()) for p in sorted((folder / "cells").glob("*.json"))}


def ray_startup() -> dict:
    import ray

    started = cluster.start_ray(num_cpus=1)
    t0 = time.perf_counter()
    worker = ray.remote(cluster.GridWorker).options(num_cpus=1).remote(partial(models.load_model), config_for("float32"))
    ray.get(worker.where.remote())
    actor_s = time.perf_counter() - t0
    ray.kill(worker)
    ray.shutdown()
    t0 = time.perf_counter()
    models.load_model()
    return {"ray_init_s": started["seconds"], "worker_start_and_model_load_s": round(actor_s, 2),
            "model_load_in_this_process_s": round(time.perf_counter() - t0, 2)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--precision", default="float32")
    ap.add_argument("--steps", default="1,2,3,4", help="which steps to run (see the docstring)")
    ap.add_argument("--seeds", default="0,1", help="the cells' seeds (2 cells per seed)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    config = config_for(args.precision, tuple(int(x) for x in args.seeds.split(",") if x))
    summary_path = out / "summary.json"
    summary = {}

    def save(**values):  # merged into what is on disk: two invocations may run steps side by side
        on_disk = json.loads(summary_path.read_text()) if summary_path.exists() else {}
        summary.update({**on_disk, **summary, **values})
        save_json(summary, summary_path)

    save(cells=[list(c) for c in grid.planned_cells(config)], precision=args.precision)
    steps = {int(s) for s in args.steps.split(",") if s}
    load = partial(models.load_model)
    for step, name, workers in ((1, "workers2", 2), (2, "workers1", 1)):
        if step not in steps:
            continue
        t0 = time.perf_counter()
        outcome = cluster.run_cells(config, out / name, load, cluster.Resources(workers=workers, cpus=1.0))
        save(**{name: dict(outcome.to_dict(), wall_s=round(time.perf_counter() - t0, 1))})
        print(f"{name}: {summary[name]}", flush=True)
    if 3 in steps:
        torch.set_num_threads(1)
        one = replace(config, localizations=("fact lookup",), seeds=(0,))
        t0 = time.perf_counter()
        grid.run_grid(models.load_model(), one, out / "one_process", progress=True)
        save(one_process=dict(wall_s=round(time.perf_counter() - t0, 1), cells=1))
    if 5 in steps:
        torch.set_num_threads(1)
        t0 = time.perf_counter()
        grid.run_grid(models.load_model(), config, out / "one_process_all", progress=True)
        save(one_process_all=dict(wall_s=round(time.perf_counter() - t0, 1), cells=len(grid.planned_cells(config))))
    if 4 in steps:
        save(startup=ray_startup())
    # what the runs agree on
    runs = {name: cells_of(out / name) for name in ("workers2", "workers1", "one_process", "one_process_all")
            if (out / name).exists()}
    seconds, same = {}, {}
    for name, cells in runs.items():
        for key, cell in cells.items():
            seconds.setdefault(key, {})[name] = cell["seconds"]
    for key in seconds:
        metrics = {name: runs[name][key]["metrics"] for name in runs if key in runs[name]}
        names = list(metrics)
        same[key] = {f"{a} = {b}": json.dumps(metrics[a], sort_keys=True) == json.dumps(metrics[b], sort_keys=True)
                     for a, b in zip(names, names[1:])}  # (as JSON: NaN equals NaN)
    totals = {name: [sum(c["seconds"].values()) for c in cells.values()] for name, cells in runs.items()}
    save(cell_seconds=seconds, identical_metrics=same, median_cell_s={k: float(np.median(v)) for k, v in totals.items() if v})
    if "workers1" in summary and "workers2" in summary:
        save(speedup_workers2_over_workers1=round(summary["workers1"]["wall_s"] / summary["workers2"]["wall_s"], 2))
    print(json.dumps({k: summary[k] for k in summary if k not in ("cell_seconds", "cells")}, indent=1))


if __name__ == "__main__":
    main()

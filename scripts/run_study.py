"""Compute a pre-registered study's cells (notebook 09's grid at full size) on Ray workers, resuming from saved cells.

The study is the grid notebook 09 builds from the same parameters (``plan.notebook_config``: the plan, its tuned
rates), computed here without the notebook so that it can run for hours, stop, and resume in a later session;
notebook 09 run on the same folder afterwards (``OUTPUT_DIR``, ``PLAN`` and ``RATES`` as here) finds every cell
saved and only assembles the tables, verdicts and figures.

The components are the located ones the rates were tuned on (``--components``: a folder with
``localizations_<dataset>.json``, copied into ``--out`` before the first cell, so every cell of the study edits
exactly what was tuned; a different record already there is refused), unless the plan locates per seed
(``[grid] relocate_per_seed``: then every seed's are located from its own evidence). ``study.json`` in ``--out``
records the plan, the rates and the components; a rerun with other ones is refused before any cell.

    python scripts/run_study.py --plan v3 --rates results/tuning/v3/rates.json --out results/09_comparison_v2 \\
        --workers 2
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from functools import partial
from pathlib import Path

from mechunlearn_nb import cluster, grid, models, plan, tasks
from mechunlearn_nb.io import save_json

ROOT = Path(__file__).resolve().parents[1]


def _relative(path: Path) -> str:
    path = path.resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--plan", required=True, help="a shipped plan's name (v3) or a plan file")
    ap.add_argument("--rates", required=True, help="the tuned rates (rates.json of scripts/tune_rates.py)")
    ap.add_argument("--out", required=True, help="the study's folder (cells are saved in out/cells)")
    ap.add_argument("--components", default=str(ROOT / "results" / "09_comparison_full"),
                    help="folder with the located components the rates were tuned on (localizations_<dataset>.json)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--cpus-per-worker", type=float, default=1.0)
    ap.add_argument("--tasks", default=None, help="comma-separated part of the plan's tasks (default: all)")
    args = ap.parse_args()

    params = {"PLAN": args.plan, "RATES": args.rates, "FAST": False}
    if args.tasks:
        params["TASKS"] = [t.strip() for t in args.tasks.split(",")]
    config = plan.notebook_config(params)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rates = json.loads(Path(args.rates).read_text())
    # a plan that locates per seed (relocate_per_seed) takes no fixed components: each seed's are located from its
    # own evidence sample and saved beside the cells (localizations_<dataset>__seed<k>.json)
    fixed = not config.relocate_per_seed
    components = _relative(Path(args.components)) if fixed else "located per seed"
    study = {"plan": plan.require(args.plan).name, "rates": rates, "components": components}
    record = out / "study.json"
    if record.exists():
        old = json.loads(record.read_text())
        if old != study:
            diff = sorted(k for k in study if old.get(k) != study[k])
            sys.exit(f"{out} holds a study with other {', '.join(diff)} ({record}). Fix: use a new --out, or the "
                     f"plan, rates and components it was started with.")
    for dataset in dict.fromkeys(tasks.dataset_of(t) for t in config.tasks) if fixed else ():
        src = Path(args.components) / f"localizations_{dataset}.json"
        dst = grid.localizations_path(out, dataset)
        if dst.exists():
            if json.loads(dst.read_text()) != json.loads(src.read_text()):
                sys.exit(f"{dst} differs from {src}, the components the rates were tuned on. Fix: a new --out.")
        else:
            shutil.copyfile(src, dst)
    save_json(study, record)
    n = len(grid.planned_cells(config))
    print(f"study: plan {study['plan']}, {n} cells ({len(config.tasks)} tasks x {len(config.localizations)} "
          f"localizations x {len(config.seeds)} seeds), {len(grid.missing_cells(config, out))} to compute, "
          f"{args.workers} worker(s)", flush=True)
    outcome = cluster.run_cells(config, out, partial(models.load_model, None),
                                cluster.Resources(workers=args.workers, cpus=args.cpus_per_worker))
    print(json.dumps(outcome.to_dict(), indent=1))


if __name__ == "__main__":
    main()

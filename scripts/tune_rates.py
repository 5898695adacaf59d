"""A learning rate per localization on the plan's tuning seed (tuning.py's declared rule), before any test cell.

For each dataset of the plan, one task is drawn with the plan's ``tuning_seed`` (never a test seed); every
localization of the plan (its subject and comparators, from the located components of
``--components``, random drawn with the tuning seed) edits it at each candidate rate
(``tuning.FACTORS`` × its kind's default), at full size unless ``--steps`` says otherwise; the rule of
:mod:`mechunlearn_nb.tuning` picks the rate with the plan's ``edit_completeness``. Each trial is appended to
``<out>/trials_<dataset>.csv`` as it finishes (a rerun reads those back instead of running them again; one
process per dataset may share ``--out``). A localization with no complete edit is tried again with the plan's
``fallback_steps``, when it declares them; ``<out>/rates.json`` holds the choice for every dataset whose trials are complete.

    python scripts/tune_rates.py --plan v3 --out results/tuning/v3
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd
import torch

from mechunlearn_nb import editing, grid, models, plan, registry, tuning
from mechunlearn_nb.io import save_json

ROOT = Path(__file__).resolve().parents[1]
TASKS = {"sports": "edit 64 athletes", "counterfact": "counterfact 64"}


def _trials(out: Path, dataset: str, overrides: dict) -> pd.DataFrame:
    """The trials saved in ``out``; a file from before trials recorded their steps ran at the default steps."""
    path = out / f"trials_{dataset}.csv"
    table = pd.read_csv(path) if path.exists() else pd.DataFrame(columns=["dataset", *tuning.COLUMNS])
    if "steps" not in table:
        table.insert(3, "steps", overrides.get("steps", editing.EditConfig().steps))
    return table


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--plan", required=True, help="a shipped plan's name (v2) or a plan file")
    ap.add_argument("--out", required=True)
    ap.add_argument("--components", default=str(ROOT / "results" / "09_comparison_full"),
                    help="folder with localizations_<dataset>.json (located components)")
    ap.add_argument("--datasets", default="sports,counterfact",
                    help="which datasets this process tunes (one process per dataset can share --out)")
    ap.add_argument("--precision", default=None, help="the training forward pass (default: the plan's)")
    ap.add_argument("--steps", type=int, default=None, help="edit steps (default: EditConfig's)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = ap.parse_args()
    p = plan.require(args.plan)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = models.load_model()
    names = tuple(dict.fromkeys((p.subject, *p.comparators)))
    chosen = {}
    overrides = {"eval_every": 0, "precision": args.precision or p.precision, **({"steps": args.steps} if args.steps else {})}
    for dataset in args.datasets.split(","):  # (the plan's factors and fallback steps: tuning.tune_rates')
        done = _trials(out, dataset, overrides)
        record = json.loads((Path(args.components) / f"localizations_{dataset}.json").read_text())
        locs = grid.localizations_from_record(model, record, names, source=args.components)
        locs = {n: registry.for_seed(model, locs, n, p.tuning_seed) for n in names}
        task = grid.build_task(model, TASKS[dataset], p.tuning_seed)

        def save(row, dataset=dataset):
            nonlocal done
            done = pd.concat([done, pd.DataFrame([dict(dataset=dataset, **row)])], ignore_index=True)
            path = out / f"trials_{dataset}.csv"
            tmp = path.with_suffix(".tmp")
            done.to_csv(tmp, index=False)
            tmp.replace(path)
            print(json.dumps(dict(dataset=dataset, **row)), flush=True)

        # every trial already in trials_<dataset>.csv is read back, not run again (a rerun resumes)
        chosen[dataset], _ = tuning.tune_rates(model, task, locs, p.edit_completeness, factors=p.tuning_factors,
                                               seed=p.tuning_seed, edit_overrides=overrides, on_trial=save,
                                               progress=False, fallback_steps=p.tuning_fallback_steps,
                                               previous=done)
    # another process may have tuned the other dataset into the same --out: its choice is kept
    earlier = json.loads((out / "rates.json").read_text()).get("rates", {}) if (out / "rates.json").exists() else {}
    chosen = {**earlier, **chosen}
    save_json(dict(plan=p.name, tuning_seed=p.tuning_seed, completeness=p.edit_completeness,
                   factors=list(p.tuning_factors), tasks={d: TASKS[d] for d in chosen}, edit_overrides=overrides,
                   rates=chosen), out / "rates.json")
    print(json.dumps(chosen, indent=1))


if __name__ == "__main__":
    main()

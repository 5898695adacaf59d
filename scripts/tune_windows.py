"""Each window of the sweep tuned to its own learning rate (``sweep.tune_windows``), before any of its cells.

At fact lookup's rate most windows of the shipped sweep never completed their edit (33 of 45 cells below the
plan's completeness), so their robustness could not be read. Here every window is tuned exactly as each
localization of the plan was (``scripts/tune_rates.py``): the rule of ``mechunlearn_nb/tuning.py`` with the
plan's tuning seed, factors, fallback steps and edit completeness, on the sweep's task and grid settings (notebook
10's at full size). Each trial is saved as it finishes (``<out>/window_tuning/<window>.csv``) and a rerun reads
them back; processes may split the windows (``--starts``) and share ``--out``. Once every window is tuned,
``<out>/window_rates.json`` holds the choice, which notebook 10 takes as ``WINDOW_RATES``.

    python scripts/tune_windows.py --plan v3 --out results/10_localization_sweep_tuned [--starts 0,2,4] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from mechunlearn_nb import models, plan, sweep


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--plan", default="v3", help="a shipped plan's name or a plan file")
    ap.add_argument("--out", required=True)
    ap.add_argument("--starts", default=None, help="this process's windows (their first blocks, e.g. 0,2,4); "
                                                   "default: every window")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    p = plan.require(args.plan)
    config = plan.notebook_config({"PLAN": p.name, "TASKS": [sweep.TASK], "LOCALIZATIONS": ["fact lookup"],
                                   "SEEDS": list(p.test_seeds[:3])})
    starts = None if args.starts is None else [int(s) for s in args.starts.split(",") if s]
    model = models.load_model()
    chosen, trials = sweep.tune_windows(model, config, args.out, completeness=p.edit_completeness,
                                        tuning_seed=p.tuning_seed, factors=p.tuning_factors,
                                        fallback_steps=p.tuning_fallback_steps, starts=starts)
    print(trials.to_string(index=False))
    print(json.dumps(chosen, indent=1))
    saved = sweep.window_rates_path(args.out)
    print(f"every window tuned: {saved}" if saved.exists() else
          f"windows still to tune: run again without --starts once the other processes are done ({Path(args.out)})")


if __name__ == "__main__":
    main()

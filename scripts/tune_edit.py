"""Learning-rate sweep behind ``editing.DEFAULTS``: one edit per (kind of localization, learning rate).

Task: edit 16 known athletes (seed 0) with injection, 40 steps and the other ``EditConfig`` defaults; each
kind of localization is represented by one localization (fact lookup m2-m5 for the budget-matched kinds,
all MLPs, non-localized). Reports, per run, the final accuracies on the training facts (edited athletes:
new sport; maintain athletes: true sport) and on held-out maintain athletes. Results:
``scripts/results/tune_edit-<time>.json``.

    python scripts/tune_edit.py [--lrs localized=2e-4,6e-4 all_mlps=1e-4,3e-4 non_localized=3e-5,1e-4]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd

from mechunlearn_nb import editing, localization, models, tasks
from mechunlearn_nb.evaluation import evaluate


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lrs", nargs="*", default=["localized=2e-4,6e-4", "all_mlps=1e-4,3e-4", "non_localized=3e-5,1e-4"])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--flu", default="m2,m3,m4,m5", help="components of the budget-matched representative")
    args = ap.parse_args()
    model = models.load_model()
    task = tasks.edit_athletes(model, n=16, seed=0, max_maintain=64)
    locs = {"localized": localization.Localization.from_components(model, args.flu.split(","), name="fact lookup"),
            "all_mlps": localization.all_mlps(model), "non_localized": localization.non_localized(model)}
    base = evaluate(model, task, None, formats=("fact",), n_unrelated=0, n_paragraphs=4, n_generate=0, progress=False)
    rows = []
    for spec in args.lrs:
        kind, lrs = spec.split("=")
        for lr in (float(x) for x in lrs.split(",")):
            cfg = editing.EditConfig(steps=args.steps, lr=lr, eval_every=0)
            res = editing.edit(model, locs[kind], task, cfg, seed=0, progress=False)
            table = evaluate(model, task, res, baseline=base, formats=("fact",), n_unrelated=0, n_paragraphs=4,
                             n_generate=0, progress=False)
            after = table[table["stage"] == "after"].set_index(["set", "metric"])["value"]
            before = table[table["stage"] == "before"].set_index(["set", "metric"])["value"]
            row = dict(kind=kind, localization=locs[kind].name, n_params=locs[kind].n_params, lr=lr, steps=args.steps,
                       **{f"train_{k}": v for k, v in res.final().items()},
                       heldout_edit_acc=float(after[("forget", "acc_new")]),
                       heldout_maintain_acc=float(after[("maintain", "acc_true")]),
                       lm_loss_change=float(after[("general_text", "lm_loss")] - before[("general_text", "lm_loss")]),
                       seconds=res.manifest["seconds"])
            rows.append(row)
            print(json.dumps(row), flush=True)
    df = pd.DataFrame(rows)
    print(df.round(3).to_string(index=False))
    out = Path(__file__).resolve().parent / "results"
    out.mkdir(exist_ok=True)
    path = out / f"tune_edit-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(dict(rows=rows, task=task.name, n_maintain_eval=len(task.maintain_eval)), indent=1))
    print(f"written {path}")


if __name__ == "__main__":
    main()

"""Can the relearning attack tell edits apart? Its strength against a positive and a negative control.

On ``edit 64 athletes`` drawn with the tuning seed (held-out half: 32 facts), each under both attack settings,
the scaled default (``RelearnConfig()``: LoRA rank 64, alpha 32, constant rate) and the paper's
(``attacks.PAPER_LORA``: rank 512, alpha 32, cosine):

- **positive control**: an edit confined to the last MLPs (``--late``, fact lookup's budget of four MLPs at
  the top of the model, past the layers where the fact is looked up): a shallow edit the attack should undo;
- **negative control**: the attack on 64 athletes the unedited model does *not* know (normalised probability
  of their sport below the known threshold), with no edit: what the attack teaches by itself (sport base
  rates, elimination) — a localization's "recovery" is only recovery above this;
- **under test**: fact lookup's MLPs and a random localization of the same size.

Each curve is the held-out half's mean probability of the true answer at steps 0, 2, 5, 10, 20 and its
summaries (``statistics.curve_metrics``: area, maximum, change from step 0). Everything is appended to
``<out>/curves.csv`` as each attack finishes (a rerun skips the attacks there); ``<out>/summary.csv`` holds
the summaries. The attack discriminates when the positive control's area clearly exceeds the negative
control's; a setting that does not is reported as unable to separate localizations on this model.

    python scripts/calibrate_attack.py --out results/attack_calibration [--seed 100] [--precision bfloat16-mixed]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from mechunlearn_nb import attacks, editing, grid, models, registry, statistics, tasks
from mechunlearn_nb.localization import Localization

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {"scaled (rank 64, constant)": {}, "paper (rank 512, cosine)": attacks.PAPER_LORA}
STEPS = (0, 2, 5, 10, 20)


def unknown_task(model, n: int, seed: int, known: pd.DataFrame) -> tasks.Task:
    """``n`` athletes the model does not know, as a task whose forget set holds their true sports."""
    scores = tasks.known_facts(model, "sports", threshold=0.0, progress=False)
    unknown = scores[scores["p_true_norm"] < tasks.KNOWN_THRESHOLD]
    if len(unknown) < n:
        raise ValueError(f"Only {len(unknown)} unknown athletes; asked for {n}.")
    forget = unknown.sample(n, random_state=seed).assign(true_answer=lambda d: d["sport"]).reset_index(drop=True)
    maintain = known.sample(min(len(known), 128), random_state=seed).assign(true_answer=lambda d: d["sport"])
    half = len(maintain) // 2
    return tasks.Task(f"unknown {n} athletes", "sports", forget, maintain.iloc[:half].reset_index(drop=True),
                      maintain.iloc[half:].reset_index(drop=True), meta=dict(seed=seed, negative_control=True))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=100, help="the tuning seed (never a test seed)")
    ap.add_argument("--late", default="m14,m15,m16,m17", help="the positive control's components")
    ap.add_argument("--precision", default="float32")
    ap.add_argument("--components", default=str(ROOT / "results" / "09_comparison_full" / "localizations_sports.json"))
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "curves.csv"
    curves = pd.read_csv(path) if path.exists() else pd.DataFrame()
    model = models.load_model()
    known = tasks.known_facts(model, "sports", progress=False)
    task = grid.build_task(model, "edit 64 athletes", args.seed, known=known)
    record = json.loads(Path(args.components).read_text())
    locs = grid.localizations_from_record(model, record, (registry.FLU.label,), source=args.components)
    flu = locs[registry.FLU.label]
    edits = {"positive control (late MLPs)": Localization.from_components(model, args.late.split(","),
                                                                           name="positive control (late MLPs)"),
             registry.FLU.label: flu,
             "random": registry.for_seed(model, locs, "random", args.seed)}
    negative = unknown_task(model, 64, args.seed, known)
    for setting, extra in SETTINGS.items():
        cfg = attacks.RelearnConfig(eval_steps=STEPS, precision=args.precision, **extra)
        todo = [name for name in [*edits, "negative control (unknown athletes)"]
                if curves.empty or not ((curves["setting"] == setting) & (curves["localization"] == name)).any()]
        for name in todo:
            if name in edits:
                result = editing.edit(model, edits[name], task,
                                      editing.EditConfig.for_localization(edits[name], precision=args.precision,
                                                                          eval_every=0), seed=args.seed)
                curve = attacks.relearn(model, result, task, cfg, seed=args.seed)
                extra_cols = dict(edit_acc=result.final().get("edit_acc"), n_params=int(edits[name].n_params))
            else:
                curve = attacks.relearn(model, None, negative, cfg, seed=args.seed)
                extra_cols = dict(edit_acc=float("nan"), n_params=0)
            curve = curve.assign(localization=name, setting=setting, **extra_cols)
            curves = pd.concat([curves, curve], ignore_index=True)
            tmp = path.with_suffix(".tmp")
            curves.to_csv(tmp, index=False)
            tmp.replace(path)
            print(f"{setting} / {name}: held-out p_true by step "
                  f"{curve[curve['half'] == statistics.HELD_OUT].set_index('step')['p_true'].round(3).to_dict()}", flush=True)
    rows = []
    for setting, sub in curves.groupby("setting"):
        m = statistics.curve_metrics(sub.assign(task=sub["setting"]))
        rows.append(m.assign(setting=setting))
    summary = pd.concat(rows, ignore_index=True)
    summary.to_csv(out / "summary.csv", index=False)
    print(summary[summary["quantity"] == "p_true"].to_string(index=False))


if __name__ == "__main__":
    main()

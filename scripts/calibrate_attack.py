"""Can the relearning attack tell edits apart? Its strength against a positive and a negative control.

On ``edit 64 athletes`` drawn with the tuning seed (held-out half: 32 facts), each under both attack settings,
the scaled default (``RelearnConfig()``: LoRA rank 64, alpha 32, constant rate) and the paper's
(``attacks.PAPER_LORA``: rank 512, alpha 32, cosine):

- **positive control**: the plan's ``positive_task`` edited through its ``positive_components`` only (plan v2: the
  last four MLPs on ``edit 64 athletes``, fact lookup's budget at the top of the model, past the layers where the
  fact is looked up): a shallow edit the attack should undo. When it does not complete at its kind's default rate
  (an attack on an incomplete edit measures the edit, not the attack), its rate is raised (x1, x2, x4 ... x32)
  until the edit reaches the plan's completeness; ``edits.json`` logs each try;
- **negative control**: the attack on 64 athletes the unedited model does *not* know (normalised probability
  of their sport below the known threshold), with no edit: what the attack teaches by itself (sport base
  rates, elimination) — a localization's "recovery" is only recovery above this;
- **under test**: fact lookup's MLPs and a random localization of the same size, at their tuned sports rates and
  steps when ``--rates`` gives the plan's ``rates.json`` (the edits the study's cells make), else at their kind's
  default.

Each curve is the held-out half's mean probability of the true answer at the plan's steps and its
summaries (``statistics.curve_metrics``: area, maximum, change from step 0). Everything is appended to
``<out>/curves.csv`` as each attack finishes (a rerun skips the attacks there); ``<out>/summary.csv`` holds
the summaries. The attack discriminates when the positive control's area clearly exceeds the negative
control's; a setting that does not is reported as unable to separate localizations on this model.

    python scripts/calibrate_attack.py --plan v3 --rates results/tuning/v3/rates.json \\
        --out results/attack_calibration/v3
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd

from mechunlearn_nb import attacks, editing, grid, models, plan, registry, statistics, tasks, tuning
from mechunlearn_nb.io import save_json
from mechunlearn_nb.localization import Localization

ROOT = Path(__file__).resolve().parents[1]
#: the plan's attack settings (grid.ATTACK_SETTINGS): scaled = LoRA rank 64, alpha 32, constant; paper = rank 512, alpha 32, cosine
SETTINGS = {"scaled": {}, "paper": attacks.PAPER_LORA}
#: the positive control's candidate rates: its kind's default times these, the first complete edit is attacked
POSITIVE_FACTORS = (1, 2, 4, 8, 16, 32)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--plan", default=plan.CURRENT, help="the plan: its tuning seed, training precision and curve steps")
    ap.add_argument("--seed", type=int, default=None, help="default: the plan's tuning seed (never a test seed)")
    ap.add_argument("--precision", default=None, help="the training forward pass (default: the plan's)")
    ap.add_argument("--components", default=str(ROOT / "results" / "09_comparison_full" / "localizations_sports.json"))
    ap.add_argument("--rates", default=None,
                    help="the plan's tuned rates (rates.json of scripts/tune_rates.py): fact lookup and random then edit "
                         "at their tuned sports rate and steps, as in the study's cells (default: each kind's default)")
    args = ap.parse_args()
    p = plan.require(args.plan)
    tuned = (plan.read_rates(args.rates) or {}).get("sports", {}) if args.rates else {}
    seed = p.tuning_seed if args.seed is None else args.seed
    precision, steps = args.precision or p.precision, tuple(p.relearn_steps)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "curves.csv"
    curves = pd.read_csv(path) if path.exists() else pd.DataFrame()
    model = models.load_model()
    known = tasks.known_facts(model, "sports", progress=False)
    task = grid.build_task(model, "edit 64 athletes", seed, known=known)
    # (plan v2's rows in results/attack_calibration/ carry the name "positive control (late MLPs)")
    positive = f"positive control ({p.positive_task}: {','.join(p.positive_components)})"
    record = json.loads(Path(args.components).read_text())
    locs = grid.localizations_from_record(model, record, (registry.FLU.label,), source=args.components)
    flu = locs[registry.FLU.label]
    edits = {positive: Localization.from_components(model, list(p.positive_components), name=positive),
             registry.FLU.label: flu,
             "random": registry.for_seed(model, locs, "random", seed)}
    negative = tasks.unknown_athletes(model, 64, seed, known=known, max_maintain=256)
    # the task each edit is trained and attacked on
    edit_task = {registry.FLU.label: task, "random": task,
                 positive: task if p.positive_task == task.name else grid.build_task(model, p.positive_task, seed,
                                                                                     known=known)}
    # the negative control and the localizations under test first; the positive control, whose rate search is the
    # longest, last
    names = ["negative control (unknown athletes)", registry.FLU.label, "random", positive]
    edit_log = json.loads((out / "edits.json").read_text()) if (out / "edits.json").exists() else []
    for name in names:  # each edit once, attacked under every setting
        todo = [setting for setting in SETTINGS
                if curves.empty or not ((curves["setting"] == setting) & (curves["localization"] == name)).any()]
        if not todo:
            continue
        result = None
        if name in edits:
            # an attack on an incomplete edit measures the edit, not the attack: the positive control's rate is
            # raised (its kind's default x 1, 2, 4, 8) until the edit reaches the plan's completeness
            factors = POSITIVE_FACTORS if name == positive else (1,)
            rate = tuned.get(name)  # the study's tuned rate (and steps) for fact lookup and random, when given
            steps_of = {"steps": int(rate["steps"])} if isinstance(rate, dict) else {}
            default = (editing.EditConfig.for_localization(edits[name]).lr if rate is None
                       else float(rate["lr"] if isinstance(rate, dict) else rate))
            tried = {round(e["lr"] / default, 6): e["edit_acc"] for e in edit_log if e["localization"] == name}
            done = [f for f in factors if f in tried and tried[f] >= p.edit_completeness]
            # resume: the first complete rate found earlier, else the rates not yet tried (the last one is attacked)
            factors = done[:1] or [f for f in factors if f not in tried] or factors[-1:]
            for factor in factors:
                t0 = time.perf_counter()
                cfg = editing.EditConfig.for_localization(edits[name], precision=precision, eval_every=0,
                                                          lr=default * factor, **steps_of)
                result = editing.edit(model, edits[name], edit_task[name], cfg, seed=seed, progress=False)
                acc = tuning.train_accuracy(result)
                print(f"{name}: lr {cfg.lr:g}, edit {time.perf_counter() - t0:.0f} s, edit accuracy {acc}", flush=True)
                if round(factor, 6) not in tried:
                    edit_log.append(dict(localization=name, lr=cfg.lr, steps=cfg.steps, edit_acc=acc,
                                         seconds=round(time.perf_counter() - t0, 1)))
                save_json(edit_log, out / "edits.json")
                if acc >= p.edit_completeness:
                    break
        for setting in todo:
            t1 = time.perf_counter()
            cfg = attacks.RelearnConfig(eval_steps=steps, precision=precision, **SETTINGS[setting])
            if result is not None:
                curve = attacks.relearn(model, result, edit_task[name], cfg, seed=seed, progress=False)
                extra_cols = dict(edit_acc=tuning.train_accuracy(result), n_params=int(edits[name].n_params))
            else:
                curve = attacks.relearn(model, None, negative, cfg, seed=seed, progress=False)
                extra_cols = dict(edit_acc=float("nan"), n_params=0)
            curve = curve.assign(localization=name, setting=setting, attack_seconds=round(time.perf_counter() - t1, 1),
                                 lr=float("nan") if result is None else result.config.lr, **extra_cols)
            curves = pd.concat([curves, curve], ignore_index=True)
            tmp = path.with_suffix(".tmp")
            curves.to_csv(tmp, index=False)
            tmp.replace(path)
            print(f"{setting} / {name} ({time.perf_counter() - t1:.0f} s): held-out p_true by step "
                  f"{curve[curve['half'] == statistics.HELD_OUT].set_index('step')['p_true'].round(3).to_dict()}", flush=True)
    rows = []
    for setting, sub in curves.groupby("setting"):
        m = statistics.curve_metrics(sub.assign(task=sub["setting"]))
        rows.append(m.assign(setting=setting))
    summary = pd.concat(rows, ignore_index=True)
    summary.to_csv(out / "summary.csv", index=False)
    print(summary[summary["quantity"] == "p_true"].to_string(index=False))
    # the plan's [attack] rule: a setting separates localizations when the positive control's held-out probability
    # area exceeds the negative control's by at least min_separation; the primary one separates them most
    auc = summary[summary["quantity"] == "p_true"].set_index(["setting", "localization"])["auc"]
    rule = {}
    for setting in SETTINGS:
        pos, neg = auc.get((setting, positive)), auc.get((setting, "negative control (unknown athletes)"))
        if pos is None or neg is None:
            continue
        rule[setting] = dict(positive_auc=round(float(pos), 4), negative_auc=round(float(neg), 4),
                             separation=round(float(pos - neg), 4), separates=bool(pos - neg >= p.min_separation),
                             **{f"{name}_auc": round(float(auc[(setting, name)]), 4)
                                for name in (registry.FLU.label, "random") if (setting, name) in auc.index})
    usable = {k: v for k, v in rule.items() if v["separates"]}
    primary = max(usable, key=lambda k: usable[k]["separation"]) if usable else None
    save_json(dict(plan=p.name, seed=seed, rates=args.rates, tuned_sports_rates=tuned,
                   positive_control=dict(name=positive, task=p.positive_task, components=list(p.positive_components)),
                   precision=precision, steps=list(steps), min_separation=p.min_separation,
                   settings=rule, primary=primary), out / "calibration.json")
    print(json.dumps(dict(settings=rule, primary=primary), indent=1))


if __name__ == "__main__":
    main()

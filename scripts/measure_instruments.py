"""Base accuracy of every instrument on held-out known facts, with its interval and testability verdict.

Run from the repository root (the default sizes: about 40 minutes on two CPU cores shared with other work)::

    python scripts/measure_instruments.py --out results/instruments

Measures, on the unedited model: the sports multiple-choice question (with and without the system
prompt) in every debiased variant, the sports fact and QA formats, CounterFact's multiple-choice
question in every variant, its rewrite prompt and paraphrases, and MMLU.
Sports and CounterFact facts are seeded samples of the facts the model knows; MMLU a seeded sample
of the vendored test split. Writes ``base_accuracy.csv`` (one row per instrument and variant) and
``run.json`` (sizes, seconds, model).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd

from mechunlearn_nb import data, evaluation, io, models, prompts, tasks


def main(argv=None) -> pd.DataFrame:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="None: the embedded Gemma 3 270M")
    ap.add_argument("--n-sports", type=int, default=100, help="known athletes sampled")
    ap.add_argument("--n-counterfact", type=int, default=40, help="known CounterFact facts sampled")
    ap.add_argument("--n-mmlu", type=int, default=24, help="MMLU questions sampled")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--margin", type=float, default=evaluation.TESTABILITY_MARGIN)
    ap.add_argument("--only", default="sports,counterfact,mmlu", help="comma-separated: which datasets to measure")
    ap.add_argument("--out", default="results/instruments")
    args = ap.parse_args(argv)
    only = set(args.only.split(","))
    if not only <= {"sports", "counterfact", "mmlu"}:
        ap.error(f"--only: unknown dataset(s) {sorted(only - {'sports', 'counterfact', 'mmlu'})}")
    out = Path(args.out)
    model = models.load_model(args.model)
    seconds, frames = {}, []

    def timed(name, fn):
        t0 = time.perf_counter()
        frames.append(fn().assign(dataset=name.split(":")[0]))
        seconds[name] = round(time.perf_counter() - t0, 1)
        print(f"{name}: {seconds[name]} s", flush=True)
        save()  # after every part, so that an interrupted run keeps what it measured

    def save():
        table = evaluation.testability(pd.concat(frames, ignore_index=True), margin=args.margin)
        table.insert(0, "model", models.model_name(model))
        io.write_text(out / "base_accuracy.csv", table.to_csv(index=False, float_format="%.4f"))
        return table

    run = dict(model=models.model_name(model), seed=args.seed, margin=args.margin, confidence=evaluation.CONFIDENCE,
               seconds=seconds)
    if "sports" in only:
        sports_part(model, args, timed, run)
    if "counterfact" in only:
        counterfact_part(model, args, timed, run)
    if "mmlu" in only:
        timed("mmlu:mmlu", lambda: evaluation.mmlu_accuracy(model, n=args.n_mmlu, seed=args.seed))
        run["n_mmlu"] = args.n_mmlu
    table = save()
    io.write_text(out / "run.json", json.dumps(run, indent=1))
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(table[["instrument", "variant", "accuracy", "n", "ci_low", "ci_high", "chance", "verdict"]].to_string())
    return table


def sports_part(model, args, timed, run):
    known = tasks.known_facts(model, "sports", progress=False)
    athletes = known.sample(min(args.n_sports, len(known)), random_state=args.seed).reset_index(drop=True)
    q, o, a = prompts.sports_mcq_items(athletes)
    timed("sports:mcq", lambda: evaluation.debiased_mcq(model, q, o, a, "mcq", prefix=prompts.SYSTEM_PROMPT + "\n"))
    timed("sports:mcq_nosys", lambda: evaluation.debiased_mcq(model, q, o, a, "mcq_nosys"))
    for fmt in ("fact", "qa"):
        ps = prompts.sports_prompts(athletes, fmt, sports=prompts.SPORTS)
        timed(f"sports:{fmt}", lambda: evaluation.format_accuracy(model, ps, athletes["sport"].tolist()))
    run.update(n_sports_known=len(known), n_sports=len(athletes))


def counterfact_part(model, args, timed, run):
    cf_known = tasks.known_facts(model, "counterfact", progress=False)
    with_q = cf_known[cf_known["case_id"].isin(set(data.load_counterfact_mcq()["prompt_id"]))]
    facts = with_q.sample(min(args.n_counterfact, len(with_q)), random_state=args.seed).reset_index(drop=True)
    q, o, a, _ = prompts.counterfact_mcq_items(facts)
    timed("counterfact:cf_mcq", lambda: evaluation.debiased_mcq(model, q, o, a, "cf_mcq"))
    for fmt in ("cf_prompt", "cf_paraphrase"):
        ps = prompts.counterfact_prompts(facts, fmt)
        timed(f"counterfact:{fmt}", lambda: evaluation.format_accuracy(model, ps, ["target_true"] * len(facts)))
    run.update(n_counterfact_known=len(cf_known), n_counterfact_with_mcq=len(with_q), n_counterfact=len(facts))


if __name__ == "__main__":
    main()

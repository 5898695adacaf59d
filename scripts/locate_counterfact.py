"""CounterFact's fact-lookup rule with probe-like evidence: where does a relation's answer become readable?

Run from the repository root::

    python scripts/locate_counterfact.py --out results/instruments/counterfact_flu

The sports rule starts the look-up where a probe at the last subject token gains accuracy; CounterFact has no
fixed label set, so its rule so far ran on patching evidence alone and started at block 0. Here each relation's
answer set is the label set (:func:`probing.relation_probe_facts`: objects with at least 20 known facts, classes
balanced, relations with at least 3 such objects), one probe per relation, layer and position
(:func:`probing.relation_probes`), and the rule is applied to the same attribution-patching evidence the grid
located CounterFact with (64 known facts, seed 0) with and without these probes, plus its threshold sweep and the rule applied again to other evidence samples (seeds 1, 2:
other facts patched, other probe splits).

Writes ``probes.csv`` (per relation, layer, position, split), ``evidence.csv`` (the rule's table with and
without probes), ``sweep.csv`` (threshold sweep with probes), ``stability.csv`` and ``run.json`` (the decisions, sizes, seconds).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd

from mechunlearn_nb import io, localization, models, probing, registry, tasks


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="None: the embedded Gemma 3 270M")
    ap.add_argument("--n-locate", type=int, default=64, help="known facts for attribution patching (the grid's 64)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--stability-seeds", type=int, default=3, help="evidence samples the rule is applied to again")
    ap.add_argument("--out", default="results/instruments/counterfact_flu")
    args = ap.parse_args(argv)
    out = Path(args.out)
    t0 = time.perf_counter()
    model = models.load_model(args.model)
    n_layers = model.cfg.n_layers
    known = tasks.known_facts(model, "counterfact", progress=False)
    facts = probing.relation_probe_facts(known, seed=args.seed)
    _, evidence = registry.locate(model, "counterfact", names=("fact lookup",), n_locate=args.n_locate,
                                  seed=args.seed, known=known, progress=False, relation_probes=True)
    probes, attribution = evidence["probes"], evidence["attribution"]
    io.write_text(out / "probes.csv", probes.to_csv(index=False, float_format="%.4f"))
    with_probes = localization.fact_lookup_evidence(probes, attribution, n_layers=n_layers)
    without = localization.fact_lookup_evidence(None, attribution, n_layers=n_layers)
    table = pd.concat([with_probes.assign(evidence="probes + attribution"),
                       without.assign(evidence="attribution only")], ignore_index=True)
    io.write_text(out / "evidence.csv", table.to_csv(index=False, float_format="%.4f"))
    sweep = localization.threshold_sweep(probes, attribution, n_layers=n_layers)
    io.write_text(out / "sweep.csv", sweep.to_csv(index=False))
    seeds = tuple(args.seed + k for k in range(args.stability_seeds))
    stable = pd.concat([registry.stability(model, "counterfact", seeds=seeds, n_locate=args.n_locate, known=known,
                                           relation_probes=flag).assign(evidence=label)
                        for flag, label in ((True, "probes + attribution"), (False, "attribution only"))],
                       ignore_index=True)
    io.write_text(out / "stability.csv", stable.to_csv(index=False))
    test = probes[probes["split"] == "test"]
    run = dict(
        model=models.model_name(model), seed=args.seed, n_known=len(known), n_probe_facts=len(facts),
        relations=facts.attrs["relations"], rule=probing.RELATION_PROBE_RULE, n_locate=evidence["n_locate"],
        decision_with_probes={k: v for k, v in with_probes.attrs["decision"].items() if k != "rule"},
        decision_without_probes={k: v for k, v in without.attrs["decision"].items() if k != "rule"},
        sweep_same_as_default=int(sweep["same_as_default"].sum()), sweep_settings=len(sweep),
        stability={label: [" ".join(f"m{x}" for x in r) for r in g["layers"]] for label, g in stable.groupby("evidence")},
        mean_test_accuracy={pos: {int(l): round(float(a), 4) for l, a in g.groupby("layer")["accuracy"].mean().items()}
                            for pos, g in test.groupby("position")},
        seconds=dict(total=round(time.perf_counter() - t0, 1)),
    )
    io.write_text(out / "run.json", json.dumps(run, indent=1) + "\n")
    print(json.dumps({k: run[k] for k in ("decision_with_probes", "decision_without_probes", "sweep_same_as_default",
                                          "sweep_settings", "n_probe_facts", "stability", "seconds")}, indent=1))
    print(sweep.to_string())
    return run


if __name__ == "__main__":
    main()

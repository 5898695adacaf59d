"""How often the window sweep's primary test calls noise "supported": its false-positive rate, measured.

The test (``sweep.primary_result``) compares the partial rank correlation of causal tracing's window evidence with
the windows' relearning area (depth held fixed) against the evidence slid along the 18 blocks. Its smallest p is
1/36, but the shifts of one evidence series are not exchangeable with it, so its rate under no effect is not read
off that number: this script draws sweeps with no effect at all on the shipped evidence
(``results/10_localization_sweep/layer_evidence.csv``, 15 windows of 4 MLPs × 3 seeds, as the sweep) and counts.

Two kinds of noise, each ``--runs`` times:

- ``independent``: every (window, seed) is 0.5 plus normal noise (sd ``--seed-sd``);
- ``smooth``: the window's level is a random walk along the windows (steps of sd ``--walk-sd``, neighbouring
  windows share three of their four blocks), plus the same seed noise.

    python scripts/sweep_false_positives.py [--runs 1000] [--n-boot 100]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from mechunlearn_nb import sweep

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=1000, help="sweeps drawn per kind of noise")
    ap.add_argument("--n-boot", type=int, default=100, help="bootstrap draws per correlation (not the test's p)")
    ap.add_argument("--seed-sd", type=float, default=0.005, help="sd of the seed-to-seed noise")
    ap.add_argument("--walk-sd", type=float, default=0.01, help="sd of the smooth noise's step from window to window")
    ap.add_argument("--rng", type=int, default=0)
    ap.add_argument("--out", default=None, help="write the rates as JSON here too")
    args = ap.parse_args()
    layers = pd.read_csv(ROOT / "results" / "10_localization_sweep" / "layer_evidence.csv")
    starts = range(15)
    locs = {sweep.window_label(s, 4): SimpleNamespace(components=[f"m{b}" for b in range(s, s + 4)]) for s in starts}
    evidence = sweep.window_evidence(layers, locs)
    rng = np.random.default_rng(args.rng)
    levels = {"independent": lambda: np.full(len(locs), 0.5),
              "smooth": lambda: 0.5 + np.cumsum(rng.normal(0, args.walk_sd, len(locs)))}
    out = {}
    for kind, level in levels.items():
        calls = []
        for _ in tqdm(range(args.runs), desc=kind):
            lv = level()
            cells = pd.DataFrame([dict(localization=w, seed=k, train_acc=1.0,
                                       relearn_paper_p_true_auc=lv[i] + rng.normal(0, args.seed_sd))
                                  for i, w in enumerate(locs) for k in range(3)])
            table = sweep.correlations(cells, evidence, layers, completeness=0.95, n_boot=args.n_boot,
                                       primary=("relearn_paper_p_true_auc", sweep.PRIMARY_EVIDENCE))
            calls.append(sweep.primary_result(table)["verdict"])
        n = sum(c == "supported" for c in calls)
        rate = n / args.runs
        out[kind] = dict(supported=n, runs=args.runs, rate=rate, se=float(np.sqrt(rate * (1 - rate) / args.runs)),
                         not_computed=sum(c == "not computed" for c in calls))
        print(f"{kind}: called supported in {n} of {args.runs} sweeps with no effect = {rate:.3f} "
              f"(se {out[kind]['se']:.3f}; level {sweep.ALPHA})")
    if args.out:
        Path(args.out).write_text(json.dumps(dict(vars(args), results=out), indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Ablate the sports fact-lookup MLPs at the subject tokens, against random MLP sets of the same count.

Run from the repository root::

    python scripts/ablate_fact_lookup.py --out results/instruments

Reads the fact-lookup blocks the comparison grid used (``results/09_comparison_full/localizations_sports.json``,
``flu_layers``), takes a seeded sample of the athletes the model knows, and writes ``ablation.csv``: the mean
normalised probability of the true sport with no ablation, with the chosen MLPs' outputs zeroed (or set to
their mean) at the subject positions, and with as many randomly drawn MLPs ablated the same way.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd

from mechunlearn_nb import io, localization, models, tasks


def main(argv=None) -> pd.DataFrame:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--localizations", default="results/09_comparison_full/localizations_sports.json")
    ap.add_argument("--n", type=int, default=32, help="known athletes sampled")
    ap.add_argument("--n-random", type=int, default=5, help="random MLP sets of the same count")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="results/instruments")
    args = ap.parse_args(argv)
    layers = json.loads(Path(args.localizations).read_text())["flu_layers"]
    model = models.load_model(args.model)
    known = tasks.known_facts(model, "sports", progress=False)
    facts = known.sample(min(args.n, len(known)), random_state=args.seed).reset_index(drop=True)
    frames, shares = [], {}
    t0 = time.perf_counter()
    for mode in ("zero", "mean"):
        t = localization.ablation_check(model, facts, layers, n_random=args.n_random, mode=mode, seed=args.seed)
        shares[mode] = t.attrs["share_random_at_least"]
        frames.append(t.assign(share_random_at_least=shares[mode], p_value=t.attrs["p_value"]))
        print(t.to_string(), f"\nshare of random sets dropping at least as much: {shares[mode]:.2f}; "
              f"p = {t.attrs['p_value']:.3f}", flush=True)
    table = pd.concat(frames, ignore_index=True)
    table.insert(0, "model", models.model_name(model))
    io.write_text(Path(args.out) / "ablation.csv", table.to_csv(index=False, float_format="%.4f"))
    print(f"{time.perf_counter() - t0:.0f} s")
    return table


if __name__ == "__main__":
    main()

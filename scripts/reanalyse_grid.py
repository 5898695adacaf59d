"""Re-analyse a saved comparison grid (default: the shipped full-size grid) with statistics that respect its design.

Writes ``<grid>/reanalysis/``: ``verdicts_v2.csv`` (beside the grid's own ``verdicts.csv``, which stays untouched),
``testability.csv``, ``excluded_cells.csv``, ``floor_ceiling.csv``, ``curve_summaries.csv`` (per task and
localization, means over seeds), ``claims.png``, and ``summary.json`` (the numbers the README quotes). Reads only
the saved cells: no model is loaded. See :mod:`mechunlearn_nb.reanalysis` for the steps.

    python scripts/reanalyse_grid.py [--grid results/09_comparison_full] [--n-boot 10000]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mechunlearn_nb import io, plots, reanalysis


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grid", default="results/09_comparison_full", help="a saved grid's folder (with cells/)")
    ap.add_argument("--n-boot", type=int, default=10000, help="bootstrap draws")
    ap.add_argument("--alpha", type=float, default=0.05, help="family-wise error rate (Holm)")
    args = ap.parse_args()

    out = Path(args.grid) / "reanalysis"
    result = reanalysis.verdicts_v2(args.grid, alpha=args.alpha, n_boot=args.n_boot)
    v = result["verdicts"]
    curves = (result["curves"].groupby(["task", "localization", "quantity"], sort=False)[["auc", "max", "change", "final"]]
              .mean().reset_index())
    for name, frame in (("verdicts_v2", v), ("testability", result["testability"]), ("excluded_cells", result["excluded"]),
                        ("floor_ceiling", result["floor_ceiling"]), ("curve_summaries", curves)):
        with io.atomic_path(out / f"{name}.csv") as tmp:
            frame.to_csv(tmp, index=False)
    plots.save(plots.plot_claims(v[v["metric"].notna()], better_if_higher=reanalysis.better_if_higher()),
               out / "claims.png")
    io.save_json(reanalysis.summary(result, alpha=args.alpha), out / "summary.json")
    print(v[["dataset", "metric", "versus", "n_pairs", "diff", "low", "high", "p_holm", "p_signflip_holm", "verdict"]]
          .to_string(index=False, float_format=lambda x: f"{x:.4f}"))
    print(f"written: {out}")


if __name__ == "__main__":
    main()

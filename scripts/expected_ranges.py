"""Derive a full-size study's expected ranges from its shipped cells: the TOML block for ``expected.toml``.

Reads ``<grid>/metrics.json`` (notebook 09 run with ``OUTPUT_DIR`` = the grid) and ``<grid>/cells/`` and prints one
``metric = [low, high]`` line per number of the metrics, with the measured value, the number of cells and their spread
in a comment. Nothing is written: paste the block under ``[09_comparison.full]`` (or the section given).

The rule (``expected.ranges_from_cells``): counts that follow from the plan exactly; measured counts ± max(1, 10%);
a localization's mean ± max(floor, 3 standard errors over its cells); a minimum or mean over all cells ± max(floor,
one standard deviation); accuracies clipped to [0, 1]; a range that would span all of [0, 1] is refused, not printed.

    python scripts/expected_ranges.py --grid results/09_comparison_v2 [--section 09_comparison.full]
    python scripts/expected_ranges.py --grid results/10_localization_sweep --section 10_localization_sweep.full

A window sweep's folder (notebook 10's: its metrics.json has ``n_windows``) is read as notebook 10 writes it: the
window means over complete edits (the plan's ``edit_completeness``), the ``complete__`` shares over every cell.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mechunlearn_nb import expected, grid, plan


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grid", default="results/09_comparison_v2", help="the study's folder (cells/ and metrics.json)")
    ap.add_argument("--section", default="09_comparison.full", help="the expected.toml table to print")
    args = ap.parse_args()
    path = Path(args.grid) / "metrics.json"
    if not path.exists():
        print(f"No {path}. Fix: run notebook 09 on the study first (papermill ... -p OUTPUT_DIR {args.grid} with the "
              f"study's RATES and CALIBRATION), which writes it.", file=sys.stderr)
        return 2
    metrics = json.loads(path.read_text())
    completeness = plan.require(metrics["plan"]).edit_completeness if "n_windows" in metrics else None
    rows, refused = expected.ranges_from_cells(metrics, grid.saved_cells(args.grid), completeness=completeness)
    print(f"[{args.section}]")
    for key, low, high, comment in rows:
        print(f"{key} = [{low}, {high}]  # {comment}")
    if refused:
        print(f"# no range (it would span all of [0, 1]): {', '.join(refused)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

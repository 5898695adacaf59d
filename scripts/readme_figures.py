"""The README's figures: the key plots of a full-size run, copied into docs/figures/ at a small size.

    python scripts/readme_figures.py runs/<full-size run folder> [--width 720]

Takes the causal-tracing heatmap (01), activation vs attribution patching (02), the fact-lookup evidence (03)
from the run folder's notebook outputs, and the re-analysed claims of the shipped grid
(``results/09_comparison_full/reanalysis/claims.png``); each is scaled to ``--width`` pixels at most and saved
as an optimised PNG under ``docs/figures/`` with ``docs/figures/sources.json`` naming where each came from.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
#: README name -> (notebook folder in the run, file name there)
FIGURES = {
    "causal_trace.png": ("01_causal_tracing", "causal_trace.png"),
    "attribution_vs_activation.png": ("02_attribution_patching", "ap_vs_activation_patching.png"),
    "fact_lookup_evidence.png": ("03_fact_lookup_localization", "flu_evidence.png"),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run", help="a full-size run folder (runs/<stamp>)")
    ap.add_argument("--width", type=int, default=720)
    args = ap.parse_args()
    run = Path(args.run)
    out = ROOT / "docs" / "figures"
    out.mkdir(parents=True, exist_ok=True)
    sources = {}
    todo = {name: run / folder / file for name, (folder, file) in FIGURES.items()}
    todo["comparison.png"] = ROOT / "results" / "09_comparison_full" / "reanalysis" / "claims.png"
    for name, src in todo.items():
        if not src.exists():
            found = sorted(p.name for p in src.parent.glob("*.png")) if src.parent.exists() else []
            raise SystemExit(f"{src} is missing (PNG files there: {found}). Fix: pass the folder of a full-size run "
                             f"of notebooks 01-03 (`run --full --only 01,02,03`).")
        img = Image.open(src)
        width = args.width * 5 // 4 if name == "comparison.png" else args.width  # many labelled rows: a little wider
        if img.width > width:
            img = img.resize((width, round(img.height * width / img.width)), Image.LANCZOS)
        img.save(out / name, optimize=True)
        sources[name] = str(src.relative_to(ROOT) if src.is_relative_to(ROOT) else src)
        print(f"{name}: {img.width}x{img.height}, {(out / name).stat().st_size // 1024} KB from {src}")
    (out / "sources.json").write_text(json.dumps(sources, indent=1) + "\n")


if __name__ == "__main__":
    main()

"""Run the notebook series headless with papermill.

``python -m mechunlearn_nb run`` executes ``notebooks/NN_*.ipynb`` in order, each
with its ``parameters`` cell overridden (model name, ``FAST``, output folder),
into a new run folder ``runs/<timestamp>/``: the executed notebooks, and for each
notebook a folder with its ``metrics.json`` and figures. A run never writes into
an earlier run's folder. At the end it checks the metrics against
``expected.py`` and writes ``summary.json``.
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path

import pandas as pd

from . import expected
from .io import save_json

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"


def list_notebooks(only: list[str] | None = None, notebook_dir: Path = NOTEBOOK_DIR) -> list[Path]:
    """The series' notebooks in order, optionally only those whose number or name is in ``only``."""
    books = sorted(p for p in Path(notebook_dir).glob("[0-9][0-9]_*.ipynb"))
    if not books:
        raise FileNotFoundError(f"No notebooks found in {notebook_dir}.")
    if only:
        wanted = {o.strip() for o in only if o.strip()}
        chosen = [b for b in books if b.stem[:2] in wanted or b.stem in wanted]
        unknown = wanted - {b.stem[:2] for b in chosen} - {b.stem for b in chosen}
        if unknown:
            raise ValueError(f"Unknown notebook(s) {sorted(unknown)}; available: {[b.stem for b in books]}.")
        books = chosen
    return books


def new_run_dir(root: str | Path = "runs") -> Path:
    """A fresh run folder under ``root`` (never an existing one)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    for i in range(1000):
        path = root / (stamp if i == 0 else f"{stamp}-{i}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"Could not create a new run folder under {root}.")


def run_notebook(notebook: Path, run_dir: Path, parameters: dict, kernel: str = "python3", timeout: int | None = None) -> dict:
    """Execute one notebook into ``run_dir``; returns its metrics (``{}`` if it wrote none)."""
    import papermill as pm

    out_dir = run_dir / notebook.stem
    params = dict(parameters, OUTPUT_DIR=str(out_dir.resolve()))
    pm.execute_notebook(str(notebook), str(run_dir / notebook.name), parameters=params, kernel_name=kernel,
                        cwd=str(notebook.parent), progress_bar=False, execution_timeout=timeout)
    metrics_path = out_dir / "metrics.json"
    return json.loads(metrics_path.read_text()) if metrics_path.exists() else {}


def run_series(root: str | Path = "runs", fast: bool = False, model: str | None = None, only: list[str] | None = None,
               kernel: str = "python3", report: bool = True, notebook_dir: Path = NOTEBOOK_DIR) -> Path:
    """Run the series; returns the run folder."""
    books = list_notebooks(only, notebook_dir)
    run_dir = new_run_dir(root)
    size = "fast" if fast else "full"
    summary = {"started": datetime.now().isoformat(timespec="seconds"), "model": model or "gemma-3-270m",
               "size": size, "notebooks": {}}
    for nb in books:
        print(f"[{datetime.now():%H:%M:%S}] running {nb.name} ...", flush=True)
        t0 = time.perf_counter()
        entry = {"executed": str((run_dir / nb.name).resolve())}
        try:
            metrics = run_notebook(nb, run_dir, {"MODEL_NAME": model, "FAST": fast}, kernel=kernel)
            entry.update(status="ok", metrics=metrics)
            checks = expected.check(nb.stem, metrics, size, model) if nb.stem in expected.EXPECTED else pd.DataFrame()
            entry["checks"] = checks.to_dict(orient="records")
            failed = checks[~checks["ok"]]["metric"].tolist() if len(checks) else []
            entry["reproduced"] = not failed
            note = "matches expected values" if not failed else f"outside expected range: {failed}"
        except Exception as err:  # keep going: one failing notebook should not hide the others
            entry.update(status="failed", error=f"{type(err).__name__}: {err}")
            note = f"FAILED ({type(err).__name__})"
        entry["seconds"] = round(time.perf_counter() - t0, 1)
        summary["notebooks"][nb.stem] = entry
        save_json(summary, run_dir / "summary.json")
        print(f"    {nb.stem}: {entry['seconds']} s, {note}", flush=True)
    summary["finished"] = datetime.now().isoformat(timespec="seconds")
    save_json(summary, run_dir / "summary.json")
    if report:
        from .report import write_report

        print(f"report: {write_report(run_dir).resolve()}")
    print(f"run folder: {run_dir.resolve()}")
    return run_dir

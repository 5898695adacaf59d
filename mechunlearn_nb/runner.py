"""Run the notebook series headless with papermill.

``python -m mechunlearn_nb run`` executes ``notebooks/NN_*.ipynb`` in order, each
with its ``parameters`` cell overridden (model name, ``FAST``, output folder),
into a new run folder ``runs/<timestamp>/``: the executed notebooks, and for each
notebook a folder with its ``metrics.json`` and figures. A run never writes into
an earlier run's folder. At the end it checks the metrics against
``expected.toml`` and writes ``summary.json``.

At full size, once a notebook of the run has written ``localizations.json``
(notebook 03: the sports localizations it located), the later notebooks that
take sports components (a ``COMPONENTS`` parameter: 04-07 and 09; notebook 08's
CounterFact components are ``CF_COMPONENTS``) receive them as ``COMPONENTS`` instead of computing the same
evidence again, minutes each on a CPU. ``reuse_localizations=False``
(``run --relocate``) lets every notebook locate for itself.

At full size, ``workers > 1`` (``run --workers N``) computes the comparison grid
(notebook 09) in N processes, one (task, seed) part at a time each, before the
notebook's final pass assembles the table from the saved cells.
"""

from __future__ import annotations

import ast
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime
from pathlib import Path

import pandas as pd

from . import expected, registry
from .io import save_json, slug

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
ENGINE = "mechunlearn_nb"
REPLY_POLL_SECONDS = 1.0


def _register_engine() -> None:
    """Register papermill's nbclient engine with a client that polls for each cell's reply.

    nbclient waits for a cell's ``execute_reply`` with one open-ended poll of the kernel's
    shell socket. With ipywidgets in the cell that wake-up can be missed, and the run then
    hangs forever with an idle kernel (jupyter/nbclient#312). Polling in short rounds finds
    the waiting reply on the next round; a cell's own timeout is kept.
    """
    import asyncio
    from queue import Empty
    from time import monotonic

    from nbclient.client import timestamp
    from nbclient.exceptions import CellTimeoutError
    from nbclient.util import ensure_async
    from papermill.clientwrap import PapermillNotebookClient
    from papermill.engines import NBClientEngine, papermill_engines
    from papermill.log import logger
    from papermill.utils import merge_kwargs, remove_args

    if ENGINE in papermill_engines._engines:
        return

    class PollingClient(PapermillNotebookClient):
        async def _async_poll_for_reply(self, msg_id, cell, timeout, task_poll_output_msg, task_poll_kernel_alive):
            deadline = None if timeout is None else monotonic() + timeout
            while deadline is None or monotonic() < deadline:
                try:
                    msg = await ensure_async(self.kc.shell_channel.get_msg(timeout=REPLY_POLL_SECONDS))
                except Empty:
                    continue
                if msg["parent_header"].get("msg_id") != msg_id:
                    continue
                if self.record_timing:
                    cell["metadata"]["execution"]["shell.execute_reply"] = timestamp(msg)
                try:
                    await asyncio.wait_for(task_poll_output_msg, self.iopub_timeout)
                except (asyncio.TimeoutError, Empty):
                    if self.raise_on_iopub_timeout:
                        task_poll_kernel_alive.cancel()
                        raise CellTimeoutError.error_from_timeout_and_cell(
                            "Timeout waiting for IOPub output", self.iopub_timeout, cell) from None
                    self.log.warning("Timeout waiting for IOPub output")
                task_poll_kernel_alive.cancel()
                return msg
            # past the cell's deadline: nbclient's own timeout handling (interrupt, error)
            return await super()._async_poll_for_reply(msg_id, cell, 0, task_poll_output_msg, task_poll_kernel_alive)

    class PollingEngine(NBClientEngine):
        @classmethod
        def execute_managed_notebook(cls, nb_man, kernel_name, log_output=False, stdout_file=None, stderr_file=None,
                                     start_timeout=60, execution_timeout=None, **kwargs):
            kwargs = remove_args(["input_path"], **kwargs)
            safe_kwargs = remove_args(["timeout", "startup_timeout"], **kwargs)
            final_kwargs = merge_kwargs(safe_kwargs, timeout=execution_timeout if execution_timeout else kwargs.get("timeout"),
                                        startup_timeout=start_timeout, kernel_name=kernel_name, log=logger,
                                        log_output=log_output, stdout_file=stdout_file, stderr_file=stderr_file)
            return PollingClient(nb_man, **final_kwargs).execute()

    papermill_engines.register(ENGINE, PollingEngine)


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


PACES_FILE = Path(__file__).with_name("paces.toml")


def estimate(notebooks: list[Path], fast: bool, workers: int = 1, model: str | None = None) -> pd.DataFrame:
    """Each notebook's expected wall time, from the measured runs in ``paces.toml`` (two cores, embedded model).

    One row per notebook: ``seconds`` (NaN where no run of that size was measured) and ``basis``. At full size,
    ``workers`` divides notebook 09's grid (its cells run in that many processes). For another model the
    embedded model's paces are a lower bound, and ``basis`` says so.
    """
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    size = "small" if fast else "full"
    with open(PACES_FILE, "rb") as f:
        paces = tomllib.load(f)[size]
    rows = []
    for nb in notebooks:
        seconds = float(paces.get(nb.stem, float("nan")))
        basis = f"measured ({size} run, embedded model, 2 cores)" if nb.stem in paces else "not measured"
        if not fast and workers > 1 and grid_parameters(nb) is not None:
            seconds /= workers
            basis += f", grid divided by {workers} processes"
        if model is not None and nb.stem in paces:
            basis += "; another model: at least this"
        rows.append(dict(notebook=nb.stem, seconds=seconds, basis=basis))
    return pd.DataFrame(rows, columns=["notebook", "seconds", "basis"])


def describe_duration(seconds: float) -> str:
    """``'48 s'``, ``'13 min'``, ``'35.2 h'``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


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


def run_notebook(notebook: Path, run_dir: Path, parameters: dict, kernel: str = "python3", timeout: int | None = None,
                 executed: str | None = None, progress: bool = False) -> dict:
    """Execute one notebook into ``run_dir`` (as ``executed``, default its own name); returns its metrics
    (``{}`` if it wrote none). Its output folder is ``run_dir/<notebook stem>``. ``progress`` shows papermill's
    progress bar (cells done) on stderr.

    ``kernel`` is named explicitly so that the notebook's own metadata (the ``mechunlearn_nb`` kernel that
    ``scripts/setup.sh`` registers for JupyterLab) is not needed: ``python3`` is the kernel of this interpreter."""
    import papermill as pm

    out_dir = run_dir / notebook.stem
    params = dict(parameters, OUTPUT_DIR=str(out_dir.resolve()))
    _register_engine()
    pm.execute_notebook(str(notebook), str(run_dir / (executed or notebook.name)), parameters=params, kernel_name=kernel,
                        cwd=str(notebook.parent), progress_bar=progress, execution_timeout=timeout, engine_name=ENGINE)
    metrics_path = out_dir / "metrics.json"
    return json.loads(metrics_path.read_text()) if metrics_path.exists() else {}


def takes_sports_components(notebook: Path) -> bool:
    """Whether a notebook's parameters cell has ``COMPONENTS`` (sports localizations, ``{label: [components]}``)."""
    import papermill as pm

    return "COMPONENTS" in pm.inspect_notebook(str(notebook))


def grid_parameters(notebook: Path) -> dict | None:
    """A grid notebook's default ``TASKS`` and ``SEEDS`` (notebook 09); None for a notebook without both."""
    import papermill as pm

    params = pm.inspect_notebook(str(notebook))
    if "TASKS" not in params or "SEEDS" not in params:
        return None
    return {k: ast.literal_eval(params[k]["default"]) for k in ("TASKS", "SEEDS")}


def describe_error(err: BaseException) -> str:
    """One line for a failed notebook: its own cell and exception (``In [7]: ValueError: ...``), not papermill's wrapper.

    ``PapermillExecutionError`` carries the failing cell's execution count and the exception the notebook raised;
    anything else (the kernel died, the notebook is missing ...) is named by its type.
    """
    ename = getattr(err, "ename", None)
    if ename is not None:
        evalue = " ".join(str(getattr(err, "evalue", "")).split())  # one line, even for a multi-line message
        return f"In [{getattr(err, 'exec_count', '?')}]: {ename}: {evalue}"
    return f"{type(err).__name__}: {' '.join(str(err).split())}"


def _grid_part(notebook: Path, run_dir: Path, parameters: dict, kernel: str, threads: int, executed: str) -> dict:
    """One worker process's share of a grid: the notebook with one task and one seed (runs in a child process)."""
    os.environ.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    t0 = time.perf_counter()
    entry = {"tasks": parameters["TASKS"], "seeds": parameters["SEEDS"], "executed": str((run_dir / executed).resolve())}
    try:
        run_notebook(notebook, run_dir, parameters, kernel=kernel, executed=executed)
        entry["status"] = "ok"
    except Exception as err:  # the final pass computes whatever a failed part left undone
        entry.update(status="failed", error=describe_error(err))
    entry["seconds"] = round(time.perf_counter() - t0, 1)
    return entry


def run_grid_parts(notebook: Path, run_dir: Path, parameters: dict, workers: int, kernel: str = "python3",
                   cpus: int | None = None) -> list[dict]:
    """Compute a grid notebook's cells in ``workers`` processes before its single final pass.

    The grid is cut into (task, seed) parts, each executed as the notebook with ``TASKS=[task], SEEDS=[seed]``
    into the same output folder, ``workers`` at a time with ``cpus // workers`` threads each. The notebook
    saves every cell as it finishes and reads saved cells back instead of recomputing them, so the final
    pass over all tasks and seeds (run by the caller) only assembles the table — or computes what a failed
    part left undone. The first part to reach a dataset locates its components; parts reaching it meanwhile
    wait and read them back (:func:`grid.dataset_localizations`).

    Returns:
        One entry per part: ``tasks, seeds, executed, status, seconds`` (and ``error`` when it failed).
    """
    import multiprocessing

    grid = grid_parameters(notebook)
    if grid is None:
        raise ValueError(f"{notebook.name} has no TASKS and SEEDS parameters; only a grid notebook (09) runs in parts.")
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}.")
    tasks, seeds = parameters.get("TASKS", grid["TASKS"]), parameters.get("SEEDS", grid["SEEDS"])
    parts = [(t, s) for t in tasks for s in seeds]
    threads = max(1, (cpus or os.cpu_count() or 1) // workers)
    (run_dir / f"{notebook.stem}.parts").mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(max_workers=min(workers, len(parts)), mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(_grid_part, notebook, run_dir, dict(parameters, TASKS=[t], SEEDS=[s]), kernel, threads,
                               f"{notebook.stem}.parts/{slug(t, s)}.ipynb") for t, s in parts]
        return [f.result() for f in futures]


def run_series(root: str | Path = "runs", fast: bool = False, model: str | None = None, only: list[str] | None = None,
               kernel: str = "python3", report: bool = True, notebook_dir: Path = NOTEBOOK_DIR,
               reuse_localizations: bool = True, workers: int = 1) -> Path:
    """Run the series; returns the run folder.

    Args:
        reuse_localizations: at full size, pass the components of the first ``localizations.json`` a notebook
            of this run wrote (notebook 03) to the later notebooks that take sports components.
        workers: at full size, compute a grid notebook's cells (notebook 09) in this many processes
            (:func:`run_grid_parts`) before its final pass; FAST grids are a few cells and run in one.
    """
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}.")
    books = list_notebooks(only, notebook_dir)
    run_dir = new_run_dir(root)
    size = "fast" if fast else "full"
    summary = {"started": datetime.now().isoformat(timespec="seconds"), "model": model or "gemma-3-270m",
               "size": size, "notebooks": {}}
    located: dict | None = None  # {name: [components]} from the run's notebook 03
    for nb in books:
        print(f"[{datetime.now():%H:%M:%S}] running {nb.name} ...", flush=True)
        t0 = time.perf_counter()
        entry = {"executed": str((run_dir / nb.name).resolve())}
        params = {"MODEL_NAME": model, "FAST": fast}
        if located and not fast and reuse_localizations and takes_sports_components(nb):
            params["COMPONENTS"] = located
            entry["components_from"] = summary["localizations_from"]
            print(f"    COMPONENTS from {summary['localizations_from']}", flush=True)
        try:
            if workers > 1 and not fast and grid_parameters(nb) is not None:
                print(f"    computing its cells in {workers} processes (one task and seed each)", flush=True)
                entry["parts"] = run_grid_parts(nb, run_dir, params, workers, kernel=kernel)
                bad = [p for p in entry["parts"] if p["status"] != "ok"]
                if bad:
                    print(f"    {len(bad)} part(s) failed; the final pass computes their cells: "
                          f"{[p['error'] for p in bad]}", flush=True)
            metrics = run_notebook(nb, run_dir, params, kernel=kernel, progress=True)
            saved = run_dir / nb.stem / "localizations.json"
            if located is None and saved.exists():  # the evidence-based ones; random and whole groups are rebuilt
                located = {n: c for n, c in json.loads(saved.read_text()).items() if n in registry.LOCATED}
                summary["localizations_from"] = str(saved.resolve())
            entry.update(status="ok", metrics=metrics)
            checks = (expected.check(nb.stem, metrics, size, model) if nb.stem in expected.EXPECTED
                      else pd.DataFrame(columns=expected.COLUMNS))
            entry["checks"] = checks.to_dict(orient="records")
            entry["reference"] = expected.outcome(checks)
            # None: no expected values for this model (or notebook), so the run neither reproduced nor failed to
            entry["reproduced"] = {"reproduced": True, "not reproduced": False}.get(entry["reference"])
            failed = checks[checks["status"].isin(["out of range", "missing"])]["metric"].tolist()
            note = {"reproduced": "matches expected values", "not reproduced": f"outside expected range: {failed}",
                    expected.NO_REFERENCE: "no expected values for this model: nothing to compare"}[entry["reference"]]
        except Exception as err:  # keep going: one failing notebook should not hide the others
            entry.update(status="failed", error=describe_error(err))
            note = f"FAILED at {entry['error']} (executed notebook: {entry['executed']})"
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

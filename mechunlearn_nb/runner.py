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

``workers > 1`` (``run --workers N``) computes the comparison grid (notebook 09)
on N Ray workers (:mod:`.cluster`: a local Ray instance, or the cluster at
``--ray-address``), saving each cell as it finishes, before the notebook's final
pass assembles the table from the saved cells.
"""

from __future__ import annotations

import ast
import json
import os
import sys
import time
from datetime import datetime
from pathlib import Path

import pandas as pd

from . import expected, registry
from .io import save_json

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
    ``workers`` divides notebook 09's grid (its cells run on that many Ray workers). For another model the
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
        if not fast and workers > 1 and is_grid_notebook(nb):
            seconds /= workers
            basis += f", grid divided by {workers} workers"
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


def is_grid_notebook(notebook: Path) -> bool:
    """Whether a notebook is a grid notebook (notebook 09): it has a ``PLAN`` parameter, the pre-registered plan whose
    cells it runs."""
    import papermill as pm

    return "PLAN" in pm.inspect_notebook(str(notebook))


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


def notebook_defaults(notebook: Path) -> dict:
    """A notebook's parameters cell, evaluated (each default must be a Python literal, as papermill writes them)."""
    import papermill as pm

    out = {}
    for name, param in pm.inspect_notebook(str(notebook)).items():
        try:
            out[name] = ast.literal_eval(param["default"])
        except (ValueError, SyntaxError):
            raise ValueError(f"{notebook.name}: the default of {name} ({param['default']!r}) is not a Python literal, "
                             f"which `run --workers` needs to build the notebook's grid. Fix: write it as a literal.") from None
    return out


def run_grid_on_ray(notebook: Path, run_dir: Path, parameters: dict, resources=None, address: str | None = None,
                    device: str | None = None, dtype: str | None = None, progress: bool = True) -> dict:
    """Compute a grid notebook's cells on Ray workers (:func:`cluster.run_cells`) before its single final pass.

    The grid is the one the notebook builds from the same parameters (:func:`plan.notebook_config`: its
    plan, or the part of it the parameters select), saved
    into the notebook's output folder (``run_dir/<notebook stem>``); the notebook's final pass then finds
    every cell saved and only assembles the table (or computes what a failed cell left undone).

    Returns:
        :meth:`cluster.Outcome.to_dict` (cells computed, read back, failed; seconds; Ray's start-up) plus
        ``workers``, ``cpus_per_worker``, ``gpus_per_worker`` and ``address``.
    """
    from functools import partial

    from . import cluster, models, plan

    if not is_grid_notebook(notebook):
        raise ValueError(f"{notebook.name} has no PLAN parameter; only a grid notebook (09) runs on Ray.")
    params = {**notebook_defaults(notebook), **parameters}
    config = plan.notebook_config(params)
    resources = resources or cluster.Resources()
    load = partial(models.load_model, params.get("MODEL_NAME"), device=device, dtype=dtype)
    outcome = cluster.run_cells(config, run_dir / notebook.stem, load, resources, address=address, progress=progress)
    return {**outcome.to_dict(), "cpus_per_worker": resources.cpus, "gpus_per_worker": resources.gpus,
            "requested_workers": resources.workers, "address": address or os.environ.get("RAY_ADDRESS") or "local"}


def run_series(root: str | Path = "runs", fast: bool = False, model: str | None = None, only: list[str] | None = None,
               kernel: str = "python3", report: bool = True, notebook_dir: Path = NOTEBOOK_DIR,
               reuse_localizations: bool = True, workers: int = 1, ray_address: str | None = None,
               cpus_per_worker: float = 1.0, gpus_per_worker: float = 0.0, device: str | None = None,
               dtype: str | None = None) -> Path:
    """Run the series; returns the run folder.

    Args:
        reuse_localizations: at full size, pass the components of the first ``localizations.json`` a notebook
            of this run wrote (notebook 03) to the later notebooks that take sports components.
        workers: compute a grid notebook's cells (notebook 09) on this many Ray workers (:func:`run_grid_on_ray`)
            before its final pass; 1 (and no ``ray_address``): the notebook computes them itself, in one process.
        ray_address: a Ray cluster to compute the grid on (default ``$RAY_ADDRESS``; neither: a local instance).
        cpus_per_worker, gpus_per_worker: what each Ray worker asks for (fractional GPUs share one).
        device, dtype: where and in what precision every notebook and worker loads its model (default: CUDA
            when available, float32); passed to the notebooks' kernels as ``$MECHUNLEARN_NB_DEVICE`` / ``_DTYPE``.
    """
    from . import cluster, models

    resources = cluster.Resources(workers=workers, cpus=cpus_per_worker, gpus=gpus_per_worker)
    if device is not None:
        os.environ[models.DEVICE_VARIABLE] = models.default_device(device)
    if dtype is not None:
        models.parse_dtype(dtype)
        os.environ[models.DTYPE_VARIABLE] = dtype
    on_ray = workers > 1 or bool(ray_address or os.environ.get("RAY_ADDRESS"))
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
            if on_ray and is_grid_notebook(nb):
                print(f"    computing its cells on Ray ({workers} worker(s), {cpus_per_worker} CPU and "
                      f"{gpus_per_worker} GPU each)", flush=True)
                entry["cluster"] = run_grid_on_ray(nb, run_dir, params, resources, address=ray_address,
                                                   device=device, dtype=dtype)
                c = entry["cluster"]
                print(f"    {c['computed']} cell(s) computed on {c['workers']} worker(s), {c['read_back']} already saved, "
                      f"{len(c['failed'])} failed, in {c['seconds']} s" + (f" (Ray started in {c['ray']['seconds']} s)"
                                                                           if c["ray"] else ""), flush=True)
                if c["failed"]:
                    print(f"    the final pass computes the failed cells: {[f['error'] for f in c['failed']]}", flush=True)
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

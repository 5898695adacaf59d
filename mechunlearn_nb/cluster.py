"""The comparison grid on Ray: one laptop by default, a cluster when the study outgrows it.

:func:`run_cells` computes a grid's missing cells (:func:`grid.missing_cells`) on Ray actors and saves
each one as it arrives, exactly as :func:`grid.run_grid` does in one process (the per-cell JSON files
are the result and the resume mechanism):

- each worker is one actor (:class:`GridWorker`) that loads the model once, in its constructor, and
  computes the cells handed to it with :class:`grid.CellComputer`; it gets ``cpus_per_worker`` CPUs
  (as many torch threads) and ``gpus_per_worker`` GPUs (fractional allowed, e.g. 0.5: two per GPU);
- the driver (this process) holds the folder's lock (:class:`DriverLock`: a second driver on the same
  folder is refused), locates once per dataset through one worker before any cell starts, saves the
  record (``localizations_<dataset>.json``) and hands it to every worker; it hands out one cell per idle
  worker and shows one progress bar over the cells (pace and time left);
- a worker that dies mid-cell (killed process, lost node) is restarted by Ray, which retries its cell
  (``max_restarts`` / ``max_task_retries``); past those, the driver hands the cell to another worker.
  Saved cells are never lost, and a driver stopped and started again computes only the missing ones.

Without ``address`` (nor ``RAY_ADDRESS``) a local Ray instance is started for the run and stopped after;
with one, the run joins that cluster (``ray start --head`` on a Slurm node, KubeRay on Kubernetes).
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from . import grid
from .io import save_json
from .tasks import dataset_of

LOCK_NAME = ".driver.lock"
#: local Ray start-ups tried before giving up (a busy machine can miss Ray's start-up deadline once)
START_ATTEMPTS = 2


class GridLockedError(RuntimeError):
    """Another driver holds the grid folder."""


class DriverLock:
    """One driver per grid folder: ``out_dir/.driver.lock`` names the pid and host holding it.

    Taken when the file can be created; released (deleted) when the driver ends, even by an exception. A lock
    left by a driver that was killed on *this* host (its pid no longer runs) is stale and taken over; one from
    another host cannot be checked from here and is refused with the way to clear it.
    """

    def __init__(self, out_dir: str | Path):
        self.path = Path(out_dir) / LOCK_NAME
        self.held = False

    def _owner(self) -> dict:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}

    def acquire(self) -> DriverLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                owner = self._owner()
                if owner.get("host") == me["host"] and isinstance(owner.get("pid"), int) and not _alive(owner["pid"]):
                    self.path.unlink(missing_ok=True)  # stale: its driver was killed on this host
                    continue
                raise GridLockedError(
                    f"{self.path.parent} is being computed by another driver (pid {owner.get('pid', '?')} on host "
                    f"{owner.get('host', '?')}, since {owner.get('since', '?')}). Fix: wait for it to finish, or use "
                    f"another output folder; if that driver is gone (its machine restarted or it was killed on "
                    f"another host), delete {self.path} and start again.") from None
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            return self
        raise GridLockedError(f"Could not take {self.path}. Fix: delete it if no driver runs on {self.path.parent}.")

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> DriverLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # runs, under another user
        return True
    return True


class GridWorker:
    """A Ray actor's state: the model, loaded once in the constructor, and a :class:`grid.CellComputer`.

    ``load``: a picklable callable returning the model (e.g. ``functools.partial(models.load_model, name,
    device=..., dtype=...)``); ``threads``: torch's threads in this worker (its CPUs).
    """

    def __init__(self, load, config: grid.GridConfig, threads: int = 1, share: str | None = None):
        import torch

        torch.set_num_threads(max(1, int(threads)))
        self.config = config
        self.model = load()
        self.records: dict[str, dict] = {}
        # the grid's folder: the unedited model's baselines computed once there for all workers that can reach it
        self.computer = grid.CellComputer(self.model, config, self._localizations, share=share)

    def _localizations(self, dataset: str, seed: int = 0) -> dict:
        key = grid.evidence_key(dataset, seed, self.config)
        return grid.localizations_from_record(self.model, self.records[key], grid.located_names(self.config),
                                              source="driver")

    def where(self) -> dict:
        return {"pid": os.getpid(), "host": socket.gethostname()}

    def locate(self, dataset: str, seed: int = 0) -> dict:
        """The dataset's record of located components (:func:`grid.locate`; ``seed``: the evidence sample, with
        ``relocate_per_seed``); the driver saves and shares it."""
        _, record = grid.locate(self.model, dataset, self.config, self.computer.known_facts(dataset), seed=seed)
        return record

    def run_cell(self, task: str, localization: str, seed: int, records: dict) -> dict:
        for key, record in records.items():  # keys: datasets, or grid.evidence_key's per-seed names
            if self.records.get(key) != record:
                self.records[key] = record
                self.computer.locs.pop(key, None)
        return self.computer.compute(task, localization, seed)


@dataclass
class Resources:
    """What each worker asks Ray for (``gpus`` may be fractional: 0.5 puts two workers on one GPU)."""

    workers: int = 1
    cpus: float = 1.0
    gpus: float = 0.0

    def __post_init__(self):
        if int(self.workers) != self.workers or self.workers < 1:
            raise ValueError(f"workers must be a whole number >= 1, got {self.workers!r}. Fix: --workers 1 (or more).")
        if not self.cpus > 0:
            raise ValueError(f"cpus per worker must be > 0, got {self.cpus!r}. Fix: --cpus-per-worker 1.")
        if self.gpus < 0:
            raise ValueError(f"gpus per worker must be >= 0, got {self.gpus!r}. Fix: --gpus-per-worker 0 (CPU) or 1.")
        if self.gpus > 1 and int(self.gpus) != self.gpus:
            raise ValueError(f"gpus per worker above 1 must be whole, got {self.gpus!r} (Ray's rule).")


def start_ray(address: str | None = None, num_cpus: float | None = None, num_gpus: float | None = None) -> dict:
    """Join the Ray cluster at ``address`` (or ``RAY_ADDRESS``), or start a local instance when neither is set.

    Returns ``{"address", "local", "seconds"}`` (``seconds``: the start-up or connection time).
    """
    import ray

    address = address or os.environ.get("RAY_ADDRESS") or None
    t0 = time.perf_counter()
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        for attempt in range(1, START_ATTEMPTS + 1):
            try:
                ray.init(address="local", num_cpus=None if num_cpus is None else max(1, math.ceil(num_cpus)),
                         num_gpus=None if num_gpus is None else math.ceil(num_gpus), include_dashboard=False,
                         log_to_driver=False, object_store_memory=200 * 1024 ** 2)
                break
            except Exception as err:
                if "timed out during startup" not in str(err):
                    raise
                ray.shutdown()
                if attempt < START_ATTEMPTS:
                    print(f"Ray's local start timed out (a busy machine); starting again ({attempt + 1} of "
                          f"{START_ATTEMPTS}).", flush=True)
                    continue
                raise RuntimeError(
                    f"The local Ray instance did not start in {START_ATTEMPTS} attempts ({err}) On a machine this busy "
                    f"Ray's node agents miss its fixed 15 s start-up deadline (their logs: "
                    f"/tmp/ray/session_latest/logs/raylet.out; ray-project/ray#65983). Fix: retry when the machine is "
                    f"less loaded, or use --workers 1 (no Ray).") from err
    return {"address": address or "local", "local": not address, "seconds": round(time.perf_counter() - t0, 2)}


@dataclass
class Outcome:
    """What :func:`run_cells` did: cells computed now, found saved, failed (with why), and the time taken."""

    computed: list = field(default_factory=list)
    read_back: int = 0
    failed: list = field(default_factory=list)
    seconds: float = 0.0
    ray: dict = field(default_factory=dict)
    workers: int = 0

    def to_dict(self) -> dict:
        return {"computed": len(self.computed), "read_back": self.read_back, "failed": self.failed,
                "seconds": round(self.seconds, 1), "ray": self.ray, "workers": self.workers}


def _record_for(out_dir: Path, dataset: str, config: grid.GridConfig, key: str | None = None) -> dict | None:
    """A saved localization record this grid can reuse (not when ``config.components`` fixes this dataset's);
    ``key``: :func:`grid.evidence_key`'s name of the record (default: the dataset's)."""
    path = grid.localizations_path(out_dir, key or dataset)
    if (config.components or {}).get(dataset) or not path.exists():
        return None
    record = json.loads(path.read_text())
    return record if grid.record_covers(record, grid.located_names(config)) else None


def run_cells(config: grid.GridConfig, out_dir: str | Path, load, resources: Resources | None = None,
              address: str | None = None, progress: bool = True, worker_class=GridWorker, max_retries: int = 2,
              on_saved=None) -> Outcome:
    """Compute the grid's missing cells on Ray workers, saving each into ``out_dir/cells/`` as it finishes.

    Args:
        load: picklable callable that returns the model (called once in each worker).
        resources: workers and what each asks for (default: one worker, one CPU).
        address: a Ray cluster to join (default ``RAY_ADDRESS``; neither: a local instance for this call).
            When Ray is already initialised in this process it is used as it is.
        max_retries: restarts of a dead worker, and retries of its cell there; past them the cell goes to
            another worker (at most this many times more), then counts as failed.
        on_saved: called with ``(task, localization, seed)`` after each cell is saved.

    Returns:
        :class:`Outcome`. Cells that raised are in ``failed`` (``task, localization, seed, error``) and are not
        saved: a later run computes them. ``GridLockedError`` when another driver holds ``out_dir``.
    """
    import ray
    from ray.exceptions import RayActorError, RayTaskError

    resources = resources or Resources()
    out_dir = Path(out_dir)
    t0 = time.perf_counter()
    outcome = Outcome()
    with DriverLock(out_dir):
        grid.start_grid(config, out_dir)
        todo = grid.missing_cells(config, out_dir)
        outcome.read_back = len(grid.planned_cells(config)) - len(todo)
        if not todo:
            outcome.seconds = time.perf_counter() - t0
            return outcome
        started = False
        if not ray.is_initialized():
            outcome.ray = start_ray(address, resources.workers * resources.cpus, resources.workers * resources.gpus or None)
            started = True
        n_workers = min(resources.workers, len(todo))
        outcome.workers = n_workers
        actor = ray.remote(worker_class).options(num_cpus=resources.cpus, num_gpus=resources.gpus,
                                                 max_restarts=max_retries, max_task_retries=max_retries)
        actors = [actor.remote(load, config, threads=max(1, int(resources.cpus)), share=str(out_dir.resolve()))
                  for _ in range(n_workers)]
        try:
            records = {}
            # once per dataset (or per dataset and seed, with relocate_per_seed), before any cell
            needed = dict.fromkeys((dataset_of(t), grid.evidence_seed(config, s)) for t, _, s in todo)
            for dataset, seed in needed:
                key = grid.evidence_key(dataset, seed, config)
                records[key] = _record_for(out_dir, dataset, config, key)
                if records[key] is None:
                    records[key] = ray.get(actors[0].locate.remote(dataset, seed))
                    save_json(records[key], grid.localizations_path(out_dir, key))
            _dispatch(todo, actors, records, out_dir, outcome, progress, max_retries, on_saved, RayActorError,
                      RayTaskError)
        finally:
            for a in actors:
                ray.kill(a)
            if started:
                ray.shutdown()
    outcome.seconds = time.perf_counter() - t0
    return outcome


def _dispatch(todo, actors, records, out_dir, outcome, progress, max_retries, on_saved, actor_error, task_error):
    import ray

    queue = list(todo)
    handed: dict[str, int] = {}  # a cell's times handed to another worker after its own died for good
    running: dict = {}  # future -> (actor, cell)
    idle = list(actors)
    bar = tqdm(total=len(todo), desc="grid cells", unit="cell", disable=not progress, smoothing=0.1)
    try:
        while queue or running:
            while queue and idle:
                a, cell = idle.pop(0), queue.pop(0)
                running[a.run_cell.remote(*cell, records)] = (a, cell)
            if not running:
                raise RuntimeError(f"Every worker died; {len(queue)} cell(s) left unsaved (they are computed by the "
                                   f"next run). Fix: check the workers' logs (Ray's session folder) for the cause.")
            done, _ = ray.wait(list(running), num_returns=1)
            a, cell = running.pop(done[0])
            try:
                result = ray.get(done[0])
            except actor_error as err:  # the worker died and used up its restarts: another one takes the cell
                key = grid.cell_path(out_dir, *cell).name
                handed[key] = handed.get(key, 0) + 1
                if handed[key] > max_retries:
                    outcome.failed.append(dict(zip(("task", "localization", "seed"), cell), error=f"worker died: {err}"))
                else:
                    queue.insert(0, cell)
                continue  # the dead worker is not idle again
            except task_error as err:  # the cell itself raised: record it, go on with the others
                outcome.failed.append(dict(zip(("task", "localization", "seed"), cell),
                                           error=" ".join(str(err.cause if err.cause else err).split())[:2000]))
                idle.append(a)
                bar.update(1)
                continue
            grid.save_cell(result, out_dir)
            outcome.computed.append(cell)
            idle.append(a)
            bar.set_postfix_str(f"{cell[0]} · {cell[1]} · seed {cell[2]}", refresh=False)
            bar.update(1)
            if on_saved is not None:
                on_saved(cell)
    finally:
        bar.close()

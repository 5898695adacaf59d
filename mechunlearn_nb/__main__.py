"""Command line of the mechunlearn_nb course (shown as is by --help):

  python -m mechunlearn_nb run [--full] [--model NAME] [--only 00,03] [--workers N] [--ray-address ADDR]
      run the notebook series headless into a new folder under runs/: by default at small sizes
      (minutes); --full at the paper's sizes (about a day on two cores). It prints its estimate first.
      --workers N computes notebook 09's grid on N Ray workers (a local Ray, or the cluster at ADDR).
  python -m mechunlearn_nb grid-status FOLDER [--tasks ...] [--seeds 0,1]
      how far a comparison grid (notebook 09) or a window sweep (notebook 10's folder) has got
  python -m mechunlearn_nb grid-plan CONFIG
      a grid config's cells, the resources each needs and the time it would take (no model loaded)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


class UsageError(Exception):
    """A mistake on the command line: printed as one line, exit status 2 (like argparse's own errors)."""


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except UsageError as err:
        print(f"python -m mechunlearn_nb: error: {err}", file=sys.stderr)
        return 2


def _main(argv: list[str] | None = None) -> int:
    from . import __version__

    parser = argparse.ArgumentParser(prog="python -m mechunlearn_nb", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the notebook series headless (papermill) into a new run folder")
    size = run.add_mutually_exclusive_group()
    size.add_argument("--full", action="store_true",
                      help="the paper's sizes: hours on a laptop (the estimate is printed before it starts)")
    size.add_argument("--fast", action="store_true", help="small sizes: the default, kept for scripts that pass it")
    run.add_argument("--model", default=None,
                     help="HF id, local folder or .gguf file (default: the embedded Gemma 3 270M)")
    run.add_argument("--only", default=None, help="comma-separated notebook numbers or names, e.g. 00,03")
    run.add_argument("--out", default="runs", help="parent folder of the run folder (default: runs/)")
    run.add_argument("--relocate", action="store_true",
                     help="every notebook computes its own localizations (default: at full size, notebooks 04-07 "
                          "and 09 reuse notebook 03's)")
    run.add_argument("--workers", type=int, default=1,
                     help="compute notebook 09's grid on this many Ray workers, each loading the model once (default 1: "
                          "the notebook computes it itself); a local Ray instance unless --ray-address is given")
    run.add_argument("--ray-address", default=None,
                     help="join this Ray cluster (e.g. 10.0.0.5:6379, or 'auto' on a cluster node; default: "
                          "$RAY_ADDRESS, else a local instance for the run)")
    run.add_argument("--cpus-per-worker", type=float, default=1.0,
                     help="CPUs (and torch threads) each Ray worker asks for (default 1)")
    run.add_argument("--gpus-per-worker", type=float, default=0.0,
                     help="GPUs each Ray worker asks for; fractional shares one GPU, e.g. 0.5 (default 0)")
    run.add_argument("--device", default=None,
                     help="where models are loaded: cpu, cuda, cuda:1 ... (default: cuda if available, else cpu)")
    run.add_argument("--dtype", default=None, choices=["float32", "bfloat16"],
                     help="parameter dtype of the models (default float32)")
    sub.add_parser("list", help="list the notebooks of the series")
    sub.add_parser("prepare", help="build the embedded model's cache folder (first load) and report the time")
    status = sub.add_parser("grid-status", help="how far a comparison grid (notebook 09; by default its plan's whole "
                                                "grid) or a window sweep (notebook 10's folder: its windows and "
                                                "seeds) has got, and the time left; reads its saved cells only")
    status.add_argument("folder", help="the grid's output folder (a run's 09_comparison/, or notebook 09's OUTPUT_DIR)")
    status.add_argument("--workers", type=int, default=1, help="processes that will share the cells left (default 1)")
    status.add_argument("--plan", default=None,
                        help="the plan whose cells the grid runs: a shipped plan's name or a plan file (default: "
                             "notebook 09's, plan.CURRENT); --tasks, --localizations, --seeds replace its parts")
    status.add_argument("--tasks", default=None,
                        help="comma-separated tasks the grid runs (default: the plan's), e.g. 'counterfact 64'")
    status.add_argument("--localizations", default=None,
                        help="comma-separated localizations the grid runs (default: the plan's)")
    status.add_argument("--seeds", default=None, help="comma-separated seeds the grid runs (default: the plan's test seeds)")
    plan = sub.add_parser("grid-plan", help="a grid config's cells, resources and estimated time (no model loaded)")
    plan.add_argument("config", help="a shipped config (embedded, gemma-2-9b) or the path of a .toml grid config")
    args = parser.parse_args(argv)

    from . import runner

    if args.command == "list":
        for nb in runner.list_notebooks():
            print(nb.stem)
        return 0
    if args.command == "prepare":
        from . import models

        models.load_model()
        print(json.dumps(models.LAST_LOAD_TIMES))
        return 0
    if args.command == "grid-plan":
        from . import sizing

        try:
            print(sizing.describe(*sizing.plan(args.config)))
        except (FileNotFoundError, ValueError) as err:
            raise UsageError(str(err)) from None
        return 0
    if args.command == "grid-status":
        return _grid_status(args.folder, args.workers, args.tasks, args.localizations, args.seeds, args.plan)
    only = args.only.split(",") if args.only else None
    _check_run_arguments(runner, only, args.model, args.workers)
    _check_ray_arguments(args)
    fast = not args.full
    times = runner.estimate(runner.list_notebooks(only), fast, args.workers, args.model)
    print(_estimate_line(times, fast, args.model), flush=True)
    run_dir = runner.run_series(root=args.out, fast=fast, model=args.model, only=only,
                                reuse_localizations=not args.relocate, workers=args.workers,
                                ray_address=args.ray_address, cpus_per_worker=args.cpus_per_worker,
                                gpus_per_worker=args.gpus_per_worker, device=args.device, dtype=args.dtype)
    summary = json.loads((run_dir / "summary.json").read_text())
    failed = [k for k, v in summary["notebooks"].items() if v["status"] != "ok"]
    for name in failed:
        print(f"{name} failed at {summary['notebooks'][name]['error']}", file=sys.stderr)
    return 1 if failed else 0


def _estimate_line(times, fast: bool, model: str | None) -> str:
    """What the run is about to do and about how long it takes, from measured paces (runner.estimate)."""
    from .runner import describe_duration

    known = times["seconds"].notna()
    total = describe_duration(times.loc[known, "seconds"].sum())
    missing = times.loc[~known, "notebook"].tolist()
    size = ("small sizes (the paper's sizes: --full)" if fast
            else "the paper's sizes (full)")
    line = f"Running {len(times)} notebook(s) at {size}: about {total} on two cores"
    line += " for the embedded model (another model: longer)" if model else ", measured"
    if missing:
        line += f"; no measured time for {', '.join(missing)}"
    if not fast:
        line += ". Each notebook saves as it goes; the grid (09) resumes where it stopped"
    return line + "."


def _check_run_arguments(runner, only: list[str] | None, model: str | None, workers: int) -> None:
    """The run's arguments, checked before the first notebook starts (each mistake: one line, exit 2)."""
    from . import models

    if workers < 1:
        raise UsageError(f"--workers must be at least 1, got {workers}. Fix: --workers 1 (or more).")
    try:
        runner.list_notebooks(only)
    except (ValueError, FileNotFoundError) as err:
        raise UsageError(f"--only: {err} Fix: pass numbers or names from `python -m mechunlearn_nb list`.") from None
    try:
        models.check_model_name(model)
    except OSError as err:  # FileNotFoundError included
        raise UsageError(f"--model: {err}") from None


def _check_ray_arguments(args) -> None:
    """The Ray and device options, checked before the first notebook starts (one line, exit 2)."""
    from . import cluster, models

    try:
        cluster.Resources(workers=args.workers, cpus=args.cpus_per_worker, gpus=args.gpus_per_worker)
    except ValueError as err:
        raise UsageError(str(err)) from None
    if args.device is not None:
        try:
            models.default_device(args.device)
        except ValueError as err:
            raise UsageError(f"--device: {err}") from None


def _grid_status(folder: str, workers: int, tasks: str | None = None, localizations: str | None = None,
                 seeds: str | None = None, plan_name: str | None = None) -> int:
    from . import grid
    from . import plan

    plan_name = plan.CURRENT if plan_name is None else plan_name
    if workers < 1:
        raise UsageError(f"--workers must be at least 1, got {workers}. Fix: --workers 1 (or more).")
    if (Path(folder) / "sweep.json").exists():  # notebook 10's window sweep: its windows and seeds, not a plan's grid
        return _sweep_status(folder, workers)

    def items(text):
        return tuple(x.strip() for x in text.split(",") if x.strip())

    try:
        fixed = plan.require(plan_name)
    except plan.PlanError as err:
        raise UsageError(f"--plan: {err}") from None
    selection = dict(tasks=items(tasks) if tasks is not None else fixed.tasks,
                     localizations=items(localizations) if localizations is not None else fixed.localizations)
    try:
        selection["seeds"] = tuple(int(x) for x in items(seeds)) if seeds is not None else fixed.test_seeds
    except ValueError:
        raise UsageError(f"--seeds takes comma-separated integers, e.g. 0,1,2; got {seeds!r}.") from None
    try:
        grid.check_selection(**selection)  # names the unknown task or localization and the choices
    except ValueError as err:
        raise UsageError(str(err)) from None
    try:
        table = grid.grid_progress(folder, **selection)
    except FileNotFoundError as err:  # names the folder and the fix
        raise UsageError(str(err)) from None
    print(table.assign(cell_seconds=table["cell_seconds"].round(0), seconds_left=table["seconds_left"].round(0))
          .to_string(index=False))
    left = table["seconds_left"].sum() / workers
    print(f"{table['done'].sum()} of {table['planned'].sum()} cells saved; about {left / 3600:.1f} h left "
          f"with {workers} process(es) at the cells' measured pace.")
    # (rates and components: what a run may add to its plan; every other field is the plan's design or its sizes)
    differ = grid.settings_differ(plan.grid_config(fixed), folder, ignore=("rates", "components"))
    if differ:
        print(f"Note: the cells in {folder} were computed with other settings than plan {fixed.name!r}'s full size "
              f"({', '.join(differ)} differ): they are counted here by name, but they are not that plan's cells.")
    return 0


def _sweep_status(folder: str, workers: int) -> int:
    from . import sweep

    try:
        table = sweep.sweep_progress(folder)
    except FileNotFoundError as err:
        raise UsageError(str(err)) from None
    print(table.assign(cell_seconds=table["cell_seconds"].round(0), seconds_left=table["seconds_left"].round(0))
          .to_string(index=False))
    left = table["seconds_left"].sum() / workers
    pace = (" (no cell saved yet: no pace to estimate from)" if not table["done"].sum() else
             " (each window's edit time scaled to its own steps)" if table["edit_steps"].notna().all() else "")
    print(f"window sweep: {table['done'].sum()} of {table['planned'].sum()} cells saved; about {left / 3600:.1f} h "
          f"left with {workers} process(es) at the saved cells' median pace{pace}. The correlations wait for all of them "
          f"(notebook 10 with STARTS = None).")
    return 0


if __name__ == "__main__":
    sys.exit(main())

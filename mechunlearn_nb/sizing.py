"""Grid configs shipped with the package (``mechunlearn_nb/configs/*.toml``) and what running one would take.

A config names a model, its architecture (the numbers of its ``config.json``), what each Ray worker asks for
and the grid (:class:`grid.GridConfig` fields). :func:`plan` lists its cells with the resources each needs and
estimates the total time **without loading any model**: each task's measured one-core seconds per cell on the
embedded model (``results/09_comparison_full``, the shipped full-size grid) × the config model's compute ratio
(its forward-pass FLOPs per token over the embedded model's, from the two architectures). The estimate is that
basis, stated in its output; a pace measured on the target hardware replaces it (``grid-status`` on a first few
cells).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import pandas as pd

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from . import grid
from .tasks import dataset_of

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
#: the shipped full-size grid on the embedded model: its cells' measured seconds are the pace
PACE_DIR = Path(__file__).resolve().parent.parent / "results" / "09_comparison_full"
ARCHITECTURE = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                "head_dim", "vocab_size")
BYTES = {"float32": 4, "bfloat16": 2}


def shipped() -> list[str]:
    """The names of the shipped configs (``grid-plan NAME``)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.toml"))


def load_config(name: str | Path) -> dict:
    """A config by shipped name (``embedded``, ``gemma-2-9b``) or path; checked: its grid builds, its
    architecture and resources are complete. Returns the TOML's tables plus ``config`` (the GridConfig)."""
    path = Path(name)
    if not path.exists():
        path = CONFIG_DIR / f"{name}.toml"
    if not path.exists():
        raise FileNotFoundError(f"No grid config {str(name)!r}. Fix: name a shipped one ({', '.join(shipped())}) "
                                f"or give the path of a .toml file like {CONFIG_DIR / 'embedded.toml'}.")
    raw = tomllib.loads(path.read_text())
    missing = [k for k in ARCHITECTURE if k not in raw.get("architecture", {})]
    if missing or "model" not in raw:
        raise ValueError(f"{path}: missing {['model'] if 'model' not in raw else []}{missing} (architecture). Fix: copy "
                         f"them from the model's config.json, as in {CONFIG_DIR / 'embedded.toml'}.")
    res = {"cpus_per_worker": 1, "gpus_per_worker": 0, "dtype": "float32", **raw.get("resources", {})}
    if res["dtype"] not in BYTES:
        raise ValueError(f"{path}: dtype {res['dtype']!r}; choose from {sorted(BYTES)}.")
    fields = set(asdict(grid.GridConfig()))
    unknown = sorted(set(raw.get("grid", {})) - fields)
    if unknown:
        raise ValueError(f"{path}: unknown grid field(s) {unknown}; choose from {sorted(fields)}.")
    config = grid.GridConfig(**{k: tuple(v) if isinstance(v, list) and k != "probe_window" else v
                                for k, v in raw.get("grid", {}).items()})
    return {**raw, "resources": res, "config": config, "path": str(path)}


def parameters(arch: dict) -> dict:
    """Parameter counts of a Gemma-style decoder from its architecture: ``embedding`` (tied with the
    unembedding), ``blocks`` (attention and gated MLP weights; norms left out) and ``total``."""
    d, f, n, h, kv, hd, v = (int(arch[k]) for k in ARCHITECTURE)
    attention = d * hd * (h + 2 * kv) + h * hd * d  # q, k, v, o
    mlp = 3 * d * f  # gate, up, down
    blocks = n * (attention + mlp)
    return {"embedding": v * d, "blocks": blocks, "total": v * d + blocks}


def flops_per_token(arch: dict) -> int:
    """Forward-pass multiply-adds per token: every block's weights, and the unembedding (all logits)."""
    p = parameters(arch)
    return p["blocks"] + p["embedding"]


def measured_pace(pace_dir: str | Path = PACE_DIR) -> pd.DataFrame:
    """One-core seconds per cell of each task of the shipped full-size grid (mean and median of its timed cells)."""
    t = grid.timings(pace_dir)
    per_cell = t.groupby(["task", "localization", "seed"])["seconds"].sum().groupby("task")
    return pd.DataFrame({"mean_s": per_cell.mean(), "median_s": per_cell.median(), "n_cells": per_cell.size()})


def plan(name: str | Path, pace_dir: str | Path = PACE_DIR) -> tuple[pd.DataFrame, dict]:
    """A config's cells (one row each: task, localization, seed, dataset, resources, estimated seconds) and a
    summary (compute ratio, weights' size, totals, the estimate's basis)."""
    c = load_config(name)
    config, res, arch = c["config"], c["resources"], c["architecture"]
    embedded = load_config(CONFIG_DIR / "embedded.toml")["architecture"]
    ratio = flops_per_token(arch) / flops_per_token(embedded)
    pace = measured_pace(pace_dir)
    fallback = float(pace["mean_s"].mean())
    rows = []
    for task, loc, seed in grid.planned_cells(config):
        base = float(pace["mean_s"].get(task, fallback))  # a task size the shipped grid lacks: its mean cell
        rows.append(dict(task=task, localization=loc, seed=seed, dataset=dataset_of(task),
                         cpus=res["cpus_per_worker"], gpus=res["gpus_per_worker"],
                         embedded_seconds=round(base, 1), estimated_core_seconds=round(base * ratio, 1)))
    cells = pd.DataFrame(rows)
    weights_gb = parameters(arch)["total"] * BYTES[res["dtype"]] / 1e9
    core_hours = float(cells["estimated_core_seconds"].sum()) / 3600
    summary = dict(
        config=c["path"], model=c["model"], description=c.get("description", ""), n_cells=len(cells),
        parameters=parameters(arch)["total"], compute_ratio=round(ratio, 2), weights_gb=round(weights_gb, 1),
        dtype=res["dtype"], cpus_per_worker=res["cpus_per_worker"], gpus_per_worker=res["gpus_per_worker"],
        core_hours=round(core_hours, 1),
        basis=(f"measured one-core seconds per cell of each task on the embedded model ({len(grid.timings(pace_dir).groupby(['task', 'localization', 'seed']))} "
               f"timed cells in {Path(pace_dir).name}) x the compute ratio {ratio:.2f} (forward FLOPs per token of "
               f"{c['model']} over the embedded model's, from their architectures). Core-hours on CPU; a GPU's pace "
               f"is not measured here: run the first cells and read `grid-status` for it."))
    return cells, summary


def describe(cells: pd.DataFrame, summary: dict) -> str:
    """The plan as text (what ``grid-plan`` prints)."""
    per_task = cells.groupby("task", sort=False).agg(cells=("seed", "size"), embedded_s=("embedded_seconds", "first"),
                                                     estimated_core_s=("estimated_core_seconds", "first"))
    lines = [f"{summary['model']}: {summary['description']}", f"config: {summary['config']}",
             f"{summary['n_cells']} cells ({cells['task'].nunique()} tasks x {cells['localization'].nunique()} "
             f"localizations x {cells['seed'].nunique()} seeds); each worker (one cell at a time) asks for "
             f"{summary['cpus_per_worker']} CPU(s) and {summary['gpus_per_worker']} GPU(s) and holds the model: "
             f"{summary['parameters'] / 1e9:.2f} B parameters, {summary['weights_gb']} GB of weights in {summary['dtype']}.",
             "", "per cell, by task (seconds):", per_task.to_string(), "",
             f"estimate: {summary['core_hours']} core-hours in all ({summary['core_hours'] / max(1, len(cells)):.2f} h per cell).",
             f"basis: {summary['basis']}", "", "cells:",
             cells[["task", "localization", "seed", "cpus", "gpus", "estimated_core_seconds"]].to_string(index=False)]
    return "\n".join(lines)

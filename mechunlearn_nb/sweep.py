"""Does localization inform robust editing? Every window of MLP layers, edited and attacked alike.

Guo et al. edit the MLPs that fact lookup points at and find the edit more robust than where output tracing
points. Two results cut against that premise: Hase et al. (2023) found that causal tracing does not predict which
MLP layer is best to edit (the layer itself predicts it far better), and Wang & Veitch (2025) found edits at random
locations as effective as at located ones. This module tests it on one model with the comparison's own
instruments: edit one task through every window of ``width`` consecutive MLP layers (``m0-m3``, ``m1-m4``, ...,
the size of fact lookup's four MLPs), several seeds each, and ask whether a window's *evidence* (how much the
locating methods point at it) ranks with its *robustness* (how little of the fact comes back).

1. :func:`windows` builds the localizations; every window is the same kind and size, so every one edits at fact
   lookup's tuned rate (:func:`window_config`), or at its own rate, tuned by the grid's rule on the tuning seed
   (:func:`tune_windows`), so that a window far from fact lookup's layers completes its edit too;
2. :func:`layer_evidence` turns one locating run (:func:`registry.locate`'s evidence: probes, attribution
   patching, causal tracing) into one row per block, :func:`window_evidence` into one row per window;
3. :func:`run_sweep` computes each (window, seed) cell with :func:`grid.run_cell` and saves it as the grid does
   (``<out>/cells/``, resumable; the unedited model's evaluation once per seed in ``<out>/baselines/``);
4. :func:`correlations` gives the rank correlation (Spearman) of every evidence column with every robustness
   measure over the windows, what a replication with fresh seeds would give (:func:`statistics.rank_correlation`),
   and how often the same evidence slid along the layers ranks as well (:func:`statistics.shift_null`). One row,
   fixed before the first cell, is the sweep's test (:data:`PRIMARY_EVIDENCE`, :func:`primary_result`); the others
   describe.

What the numbers cover: the interval, the seeds' noise (which facts, which batches) with the windows fixed; the
shift null, whether evidence that is as smooth along the layers but points elsewhere would rank as well (15
overlapping windows are not 15 independent observations: neighbours share three of four layers). Neither covers
another model or another evidence sample: a correlation here describes this model's layers.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from . import editing, grid, localization, registry, statistics, tuning
from .io import atomic_path, save_json, slug
from .localization import Localization

#: the task of the sweep (the plan's first athlete-editing task: 64 facts, 32 held out in the attack)
TASK = "edit 64 athletes"
#: fact lookup's four MLPs on the embedded model: the sweep's window width
WIDTH = 4
#: the evidence columns of :func:`window_evidence`, each the mean over the window's blocks
EVIDENCE = ("flu_selected", "probe_gain", "attribution", "causal_tracing", "depth", "edit_budget")
#: evidence columns that are not evidence of localization, only a reference (no shift null: see correlations):
#: the window's depth, and, when each window is tuned to its own rate, its ``edit_budget`` (learning rate × steps)
REFERENCE = ("depth", "edit_budget")
#: the robustness and cost metrics the sweep correlates with the evidence, and whether lower is more robust
#: (``relearn_p_true_auc``: each attack setting's own column, :func:`metric_columns`)
METRICS = {"edit_acc": False, "qa_forget_acc": True, "mcq_debiased_edit_acc": False, "relearn_p_true_auc": True,
           "relearn_acc": True, "probe_true": True, "maintain_acc": False, "lm_loss_change": True}


#: The sweep's one test, fixed before its first cell: does causal tracing's evidence (Hase et al.'s question) rank the
#: windows by how little of the edit the plan's primary attack brings back (:func:`primary_measure`), with the
#: window's depth held fixed (``p_partial``, one-sided)? One, because the shift null's smallest p is 1/36 with 18
#: blocks: a family of two could not reach ``ALPHA`` after any correction. Every other row of
#: :func:`correlations` describes; none is a test. 1/36 is the smallest p, not the test's false-positive rate: the
#: shifts are not exchangeable with the real evidence, so how often noise reaches ``p_partial <= ALPHA`` is
#: measured, not derived (tests/test_sweep.py simulates it on the shipped evidence).
PRIMARY_EVIDENCE = "causal_tracing"
#: the primary test's level
ALPHA = 0.05


def window_label(start: int, width: int = WIDTH) -> str:
    """A window's name, saved in its cells: ``"MLPs m2-m5"``."""
    return f"MLPs m{start}-m{start + width - 1}"


def windows(model, width: int = WIDTH, starts=None) -> dict[str, Localization]:
    """Every window of ``width`` consecutive MLP layers (or those beginning at ``starts``), in layer order.

    Raises:
        ValueError: a width outside 1..n_layers, or a start whose window leaves the model.
    """
    n = model.cfg.n_layers
    if isinstance(width, bool) or not isinstance(width, int) or not 1 <= width <= n:
        raise ValueError(f"width={width!r}: a window holds 1 to {n} consecutive MLP layers on this model.")
    starts = list(range(n - width + 1)) if starts is None else [int(s) for s in starts]
    bad = [s for s in starts if not 0 <= s <= n - width]
    if bad or not starts:
        raise ValueError(f"starts {bad or starts}: a window of {width} MLPs starts at 0 to {n - width} on this "
                         f"{n}-block model. Fix: choose starts in that range (None: all of them).")
    return {window_label(s, width): Localization.from_components(
        model, [f"m{layer}" for layer in range(s, s + width)], name=window_label(s, width),
        meta=dict(method="window", start=s, width=width)) for s in sorted(set(starts))}


def window_config(config: grid.GridConfig, rates: dict[str, dict] | None = None) -> grid.GridConfig:
    """The grid settings of a sweep: ``config`` with fact lookup's tuned rate (and steps) for every window, or with
    each window's own rate.

    A window is fact lookup's kind and size, so it edits at fact lookup's rate; where ``config.rates`` has none
    for sports, every window keeps the localized kind's default rate (as fact lookup would).

    Args:
        rates: ``{window label: {"lr", "steps"}}`` (:func:`tune_windows`' choice): each window edits at its own
            rate and steps instead, as the grid gives each localization its own (``config.rates``).
    """
    if rates is not None:  # each cell's own rate: window_edit_overrides
        return replace(config, rates=None)
    rate = (config.rates or {}).get("sports", {}).get(registry.FLU.label)
    tuned = {} if rate is None else dict(rate) if isinstance(rate, dict) else {"lr": float(rate)}
    return replace(config, rates=None, edit_overrides={**config.edit_overrides, **tuned})


def window_edit_overrides(cfg: grid.GridConfig, label: str, rates: dict[str, dict] | None = None) -> dict:
    """The edit settings of window ``label`` under the sweep's settings ``cfg`` (:func:`window_config`'s): with
    ``rates``, the window's own rate and steps on top."""
    own = {} if rates is None else {k: rates[label][k] for k in ("lr", "steps") if rates[label].get(k) is not None}
    return {**cfg.edit_overrides, **own}


def window_trials_path(out_dir: str | Path, label: str) -> Path:
    """Where :func:`tune_windows` keeps one window's trials: ``out_dir/window_tuning/<label>.csv``."""
    return Path(out_dir) / "window_tuning" / f"{slug(label)}.csv"


def window_rates_path(out_dir: str | Path) -> Path:
    """Where :func:`tune_windows` keeps the windows' chosen rates once every window is tuned."""
    return Path(out_dir) / "window_rates.json"


def tune_windows(model, config: grid.GridConfig, out_dir: str | Path, completeness: float, tuning_seed: int,
                 factors=tuning.FACTORS, fallback_steps: int | None = None, width: int = WIDTH, starts=None,
                 task: str = TASK, known: pd.DataFrame | None = None, progress: bool = True) -> tuple[dict, pd.DataFrame]:
    """Each window's own learning rate, by the rule the grid tunes its localizations with (:mod:`.tuning`).

    At fact lookup's rate most windows far from fact lookup's layers may never complete their edit, and a window
    whose edit did not take hold says nothing about robustness. So each window is tuned as a localization of the
    plan is: the localized kind's default rate times each of ``factors``, on ``task`` drawn with ``tuning_seed``
    (never a test seed), ``fallback_steps`` for a window with no complete edit, and the rule of
    :func:`tuning.choose_rate` with ``completeness``. Each trial is saved as it finishes
    (:func:`window_trials_path`, one file per window, so processes that split the windows by ``starts`` share
    ``out_dir``) and a rerun reads them back; once every window of the sweep is tuned, the choice is saved in
    :func:`window_rates_path` for :func:`run_sweep`'s ``rates``.

    Returns:
        ``({window label: {"lr", "steps", "complete", "reason"}}, trials)`` for the windows of ``starts``.
    """
    out_dir = Path(out_dir)
    locs = windows(model, width, starts)
    edit_overrides = {k: v for k, v in config.edit_overrides.items() if k != "lr"}
    known = grid.known_facts(model, "sports", config) if known is None else known
    tuning_task = grid.build_task(model, task, tuning_seed, config.max_forget, config.max_maintain, known=known)
    paths = {label: window_trials_path(out_dir, label) for label in locs}
    done = {label: (pd.read_csv(p).to_dict("records") if p.exists() else []) for label, p in paths.items()}
    previous = [row for rows in done.values() for row in rows]  # read once, before any trial of this call

    def save(row):  # into its window's own file (processes splitting the windows never write one file)
        rows = done[row["localization"]]
        rows.append(row)
        path = paths[row["localization"]]
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            pd.DataFrame(rows, columns=tuning.COLUMNS).to_csv(tmp, index=False)

    # one call: the unedited model's scores on the tuning task once for every window
    chosen, trials = tuning.tune_rates(model, tuning_task, locs, completeness, factors=factors, seed=tuning_seed,
                                       edit_overrides=edit_overrides, eval_overrides=config.eval_overrides,
                                       progress=progress, on_trial=save, fallback_steps=fallback_steps,
                                       previous=pd.DataFrame(previous, columns=tuning.COLUMNS) if previous else None)
    whole = windows(model, width)
    if all(window_trials_path(out_dir, label).exists() for label in whole) and set(chosen) == set(whole):
        save_json({"task": task, "width": width, "tuning_seed": tuning_seed, "completeness": completeness,
                   "factors": list(factors), "fallback_steps": fallback_steps, "rates": chosen},
                  window_rates_path(out_dir))
    return chosen, trials


def primary_attack(config: grid.GridConfig, setting: str) -> grid.GridConfig:
    """``config`` running only the relearning attack ``setting`` (e.g. the one a calibration chose,
    :func:`plan.attack_setting`) instead of every setting of the plan.

    The sweep's test reads the primary attack's relearning area (:func:`primary_measure`); a second setting would
    add a column of descriptive rows and one of its two attacks' time, to measure what the calibration found
    equivalent on this model. Refuses a setting the grid does not run.
    """
    if setting not in config.attack_settings:
        raise ValueError(f"attack setting {setting!r}: this grid runs only {list(config.attack_settings)} (a FAST "
                         f"grid runs the scaled attack alone). Fix: CALIBRATION = None, or a grid of the full plan.")
    return replace(config, attack_settings=(setting,))


def layer_evidence(model, evidence: dict, rule: localization.FactLookupRule | None = None) -> pd.DataFrame:
    """One row per block from a locating run's evidence (:func:`registry.locate`'s second value, sports).

    Columns: ``layer``, ``flu_selected`` (1 where the fact-lookup rule selects the block's MLP), ``probe_rise``
    (the share of the subject probes' gain reached after the block: never falls, by the rule's isotonic fit, so it
    is depth in disguise), ``probe_gain`` (the share made *in* the block: its increase), ``attribution`` (the rule's
    subject-position MLP effect from attribution patching), ``causal_tracing`` (the same read from the
    causal-tracing table; NaN without one) and ``depth`` (the block's index).
    """
    if evidence.get("attribution") is None:
        raise ValueError("The evidence has no attribution-patching table. Fix: pass registry.locate(...)[1] for "
                         "the sports dataset.")
    n = model.cfg.n_layers
    flu = localization.fact_lookup_evidence(evidence.get("probes"), evidence["attribution"], rule=rule, n_layers=n)
    out = pd.DataFrame({"layer": flu["layer"].astype(int), "flu_selected": flu["selected"].astype(float),
                        "probe_rise": flu["probe_rise"].astype(float), "attribution": flu["mlp_effect"].astype(float)})
    rise = out["probe_rise"]
    out.insert(3, "probe_gain", rise.diff().fillna(rise.iloc[0]))
    trace = evidence.get("trace")
    out["causal_tracing"] = (np.nan if trace is None else
                             localization.fact_lookup_evidence(None, trace, rule=rule, n_layers=n)["mlp_effect"]
                             .astype(float).to_numpy())
    out["depth"] = out["layer"].astype(float)
    return out


def window_evidence(layers: pd.DataFrame, locs: dict[str, Localization], rates: dict[str, dict] | None = None
                    ) -> pd.DataFrame:
    """One row per window of ``locs``: ``localization, start, width`` and each :data:`EVIDENCE` column, the mean of
    :func:`layer_evidence` over the window's blocks.

    ``rates``: each window's own rate (:func:`read_window_rates`); its ``edit_budget`` column is then the window's
    learning rate × steps (a reference like ``depth``: a window tuned to edit harder is one more thing that varies
    along the layers). None: ``edit_budget`` is NaN (every window edits alike) and :func:`correlations` skips it."""
    rows = []
    for label, loc in locs.items():
        blocks = [int(c[1:]) for c in loc.components]
        part = layers[layers["layer"].isin(blocks)]
        if rates is not None and label not in rates:
            raise ValueError(f"rates has no rate for {label!r}. Fix: pass the sweep's window rates "
                             f"(sweep.read_window_rates) or rates=None.")
        budget = np.nan if rates is None else float(rates[label]["lr"]) * int(rates[label]["steps"])
        rows.append(dict(localization=label, start=min(blocks), width=len(blocks),
                         **{c: budget if c == "edit_budget" else float(part[c].mean()) if c in part else np.nan
                            for c in EVIDENCE}))
    return pd.DataFrame(rows)


def evidence_path(out_dir: str | Path) -> Path:
    """Where a sweep keeps its per-block evidence: ``out_dir/layer_evidence.csv``."""
    return Path(out_dir) / "layer_evidence.csv"


def sweep_evidence(model, out_dir: str | Path, n_locate: int = 64, n_probe: int | None = None, trace: bool = True,
                   known: pd.DataFrame | None = None, seed: int = 0, progress: bool = True) -> pd.DataFrame:
    """The per-block evidence of the sweep (:func:`layer_evidence`), located once and saved in ``out_dir``.

    The locating run is :func:`registry.locate` on the sports dataset: probes on ``known`` (default: every known
    athlete; ``n_probe`` of them), attribution patching on ``n_locate`` known athletes, and causal tracing on the
    same athletes when ``trace`` (minutes at full size). A rerun with the same settings reads
    ``layer_evidence.csv`` back; other settings (another model, ``n_locate``, ``trace`` ...) are refused, so
    that evidence of one size never stands for another's.
    """
    from .models import model_name

    path = evidence_path(out_dir)
    made = dict(model=model_name(model), n_locate=n_locate, n_probe=n_probe, trace=bool(trace), seed=seed,
                n_known=None if known is None else len(known))
    record = path.with_name("layer_evidence.json")
    if path.exists():
        before = json.loads(record.read_text()) if record.exists() else None
        if before != made:
            raise ValueError(f"{path} was located with {before}, not {made}. Fix: use a new OUTPUT_DIR, or delete "
                             f"{path.name} to locate again.")
        return pd.read_csv(path)
    names = (registry.FLU.label, "OT (causal tracing)") if trace else (registry.FLU.label,)
    _, evidence = registry.locate(model, "sports", names=names, n_locate=n_locate, n_probe=n_probe, seed=seed,
                                  progress=progress, known=known)
    table = layer_evidence(model, evidence)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_json(made, record)
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)
    return table


def read_window_rates(path: str | Path, locs: dict[str, Localization]) -> dict[str, dict]:
    """The windows' own rates from a :func:`window_rates_path` file (or its folder), checked to cover ``locs``.

    Raises:
        ValueError: no such file, or a window of ``locs`` without a rate (its tuning not finished).
    """
    path = Path(path)
    path = window_rates_path(path) if path.is_dir() else path
    if not path.exists():
        raise ValueError(f"No window rates at {path}. Fix: tune the windows first (python scripts/tune_windows.py "
                         f"--out {path.parent}), or WINDOW_RATES = None for fact lookup's rate everywhere.")
    rates = json.loads(path.read_text()).get("rates", {})
    missing = [label for label in locs if label not in rates or not rates[label].get("lr")]
    if missing:
        raise ValueError(f"{path} has no rate for {missing}. Fix: finish their tuning (scripts/tune_windows.py), "
                         f"or use the window width it was tuned for.")
    return {label: rates[label] for label in locs}


def run_sweep(model, config: grid.GridConfig, out_dir: str | Path, width: int = WIDTH, starts=None,
              task: str = TASK, known: pd.DataFrame | None = None, progress: bool = True,
              rates: dict[str, dict] | None = None) -> pd.DataFrame:
    """Edit ``task`` through every window (:func:`windows`) with each of ``config.seeds``; save each cell.

    ``config``: a grid's settings (e.g. :func:`plan.notebook_config`'s), whose sports rate of fact lookup every
    window uses (:func:`window_config`). Cells are saved as the grid saves them (``<out>/cells/``, one JSON
    each, atomically) and a rerun computes only the missing ones; a folder holding cells of other settings is
    refused, and so is a folder whose saved settings differ even before its first cell (:func:`grid.settings_differ`),
    and a saved cell whose edit ran at another rate or steps. ``<out>/sweep.json`` records the task, the width and
    the seeds. Processes that share ``out_dir`` may split the windows (``starts``) between them: each saves only
    its own cells.
    ``known``: the sports facts the model knows, already scored (default: scored here as the grid does).
    ``rates``: each window's own rate and steps (:func:`tune_windows`; default: fact lookup's for every window).

    Returns:
        One row per cell (``task, localization, seed`` and the grid's metrics), windows in layer order.
    """
    if grid.dataset_of(task) != "sports":
        raise ValueError(f"task {task!r}: the sweep reads sports evidence and probes. Fix: an athlete task such as "
                         f"{TASK!r}.")
    out_dir = Path(out_dir)
    locs = windows(model, width, starts)
    if rates is not None and (missing := [label for label in locs if label not in rates]):
        raise ValueError(f"rates has no rate for {missing}. Fix: tune every window first (sweep.tune_windows), or "
                         f"pass rates=None for fact lookup's rate everywhere.")
    cfg = window_config(config, rates)
    record = dict(task=task, width=width, seeds=list(cfg.seeds))
    if rates is not None:  # a folder of tuned windows is another sweep than one at fact lookup's rate
        record["rates"] = {label: {k: rates[label].get(k) for k in ("lr", "steps")} for label in windows(model, width)
                           if label in rates}
    saved = out_dir / "sweep.json"
    if saved.exists() and (old := json.loads(saved.read_text())) != record:
        raise ValueError(f"{out_dir} holds a sweep of {old}, not {record}. Fix: use a new OUTPUT_DIR for this one.")
    changed = grid.settings_differ(replace(cfg, tasks=(task,)), out_dir)
    if changed:  # refused even before a cell is saved: another process may be computing this folder's cells
        raise ValueError(f"{out_dir} holds a sweep with other settings ({', '.join(changed)} differ). Fix: use a new "
                         f"OUTPUT_DIR, or the same PLAN, RATES and sizes as that sweep.")
    grid.start_grid(replace(cfg, tasks=(task,)), out_dir)
    save_json(record, saved)
    # the grid's computer, with the windows as this dataset's localizations (the unedited model's evaluation and
    # probe read-outs once per seed, shared through <out>/baselines)
    computer = grid.CellComputer(model, cfg, lambda dataset: locs, share=out_dir)
    if known is not None:
        computer.known["sports"] = known
    rows = []
    bar = tqdm([(s, label) for s in cfg.seeds for label in locs], desc="window sweep", disable=not progress)
    for seed, label in bar:
        path = grid.cell_path(out_dir, task, label, seed)
        if path.exists():
            cell = json.loads(path.read_text())
            want = editing.EditConfig.for_localization(locs[label], **window_edit_overrides(cfg, label, rates))
            got = cell.get("edit_config", {})
            if abs(got.get("lr", want.lr) - want.lr) > 1e-12 * want.lr or got.get("steps", want.steps) != want.steps:
                raise ValueError(f"{path} was edited at lr {got.get('lr')} for {got.get('steps')} steps, not lr "
                                 f"{want.lr} for {want.steps} steps. Fix: use a new OUTPUT_DIR, or the RATES of that sweep.")
            rows.append(cell["metrics"])
            continue
        bar.set_postfix_str(f"{label} · seed {seed}")
        cell = computer.compute_localization(task, locs[label], seed,
                                             edit_overrides=window_edit_overrides(cfg, label, rates))
        grid.save_cell(cell, out_dir)
        rows.append(cell["metrics"])
    return in_window_order(pd.DataFrame(rows), locs)


def in_window_order(cells: pd.DataFrame, labels) -> pd.DataFrame:
    """Cells (one row each: ``localization, seed, ...``) sorted as :func:`run_sweep` returns them: windows in the
    order of ``labels`` (layer order, :func:`windows`), then seeds; the index renumbered. Read the cells of a folder
    in this order to recompute a sweep's correlations exactly (the bootstrap draws rows by position)."""
    order = {label: i for i, label in enumerate(labels)}
    return cells.sort_values(["localization", "seed"], key=lambda c: c.map(order) if c.name == "localization" else c
                             ).reset_index(drop=True)


def missing_cells(out_dir: str | Path, locs, seeds, task: str = TASK) -> list[tuple[str, int]]:
    """The ``(window, seed)`` cells of a sweep not yet saved in ``out_dir``, windows in ``locs``' order.

    A process that computed a share of the windows (:func:`run_sweep`'s ``starts``) reads here how much of the whole
    sweep (``locs``: :func:`windows` without ``starts``) the folder holds; the analysis waits for none missing.
    """
    return [(label, seed) for label in locs for seed in seeds if not grid.cell_path(out_dir, task, label, seed).exists()]


def sweep_progress(out_dir: str | Path) -> pd.DataFrame:
    """How far a sweep saved in ``out_dir`` has got: one row per window, ``planned, done, left`` cells (its seeds),
    ``edit_steps`` (the window's own steps where its edit time is scaled to them, else NaN), ``cell_seconds`` (median wall time of the sweep's saved cells: a few slow ones, computed beside other work, do
    not set the pace; where each window has its own edit steps (``sweep.json``'s ``rates``), the median of the
    cells' other phases plus the median edit time per step times the window's steps) and ``seconds_left``
    (``left × cell_seconds``, one process).

    The windows are every run of ``width`` consecutive blocks of the model the evidence was located on (the rows of
    ``layer_evidence.csv``), the seeds and task ``sweep.json``'s. Reads only: safe beside running processes.
    ``FileNotFoundError`` (naming the fix) when the folder holds no sweep.
    """
    out_dir = Path(out_dir)
    record = out_dir / "sweep.json"
    if not record.exists() or not evidence_path(out_dir).exists():
        raise FileNotFoundError(f"{out_dir} holds no window sweep (no sweep.json and layer_evidence.csv). Fix: give "
                                f"the OUTPUT_DIR of a notebook-10 run, which writes both before its first cell.")
    made = json.loads(record.read_text())
    n_blocks = len(pd.read_csv(evidence_path(out_dir)))
    labels = [window_label(s, made["width"]) for s in range(n_blocks - made["width"] + 1)]
    missing = set(missing_cells(out_dir, labels, made["seeds"], made["task"]))
    times = grid.timings(out_dir)
    paces = times.groupby(["localization", "seed"])["seconds"].sum()
    pace = float(paces.median()) if len(paces) else np.nan
    steps = {label: (made.get("rates") or {}).get(label, {}).get("steps") for label in labels}
    per_step = rest = np.nan
    if all(steps.values()) and len(paces):  # windows tuned to their own steps: the edit's time scales with them
        by_cell = times.pivot_table(index=["localization", "seed"], columns="step", values="seconds", aggfunc="sum")
        if "edit" in by_cell:
            edit_steps = by_cell.index.get_level_values("localization").map(steps).to_numpy(float)
            per_step = float(np.median(by_cell["edit"].to_numpy(float) / edit_steps))
            rest = float(by_cell.drop(columns="edit").sum(axis=1).median())
    rows = []
    for label in labels:
        left = sum((label, s) in missing for s in made["seeds"])
        cell = rest + per_step * steps[label] if np.isfinite(per_step) else pace
        rows.append(dict(window=label, planned=len(made["seeds"]), done=len(made["seeds"]) - left, left=left,
                         edit_steps=steps[label] if np.isfinite(per_step) else np.nan, cell_seconds=cell,
                         seconds_left=left * cell if left else 0.0))
    return pd.DataFrame(rows)


def primary_measure(config: grid.GridConfig) -> str:
    """The primary test's measure: the held-out relearning area (lower: less comes back) of the grid's first attack
    setting, the calibrated one where :func:`primary_attack` left it alone (``relearn_paper_p_true_auc``)."""
    return f"relearn_{config.attack_settings[0]}_p_true_auc"


def primary_result(table: pd.DataFrame, alpha: float = ALPHA) -> dict:
    """The primary row of :func:`correlations` (``role == "primary"``) as a verdict: ``"supported"`` (the evidence
    ranks robustness beyond depth: ``p_partial`` at or below ``alpha``), ``"not shown"`` (also when the measure
    ranks exactly as depth does: nothing is left for the evidence), or ``"not computed"`` (no such row, or no
    partial correlation for another reason: the ``reason`` says why), with its numbers."""
    rows = table[table["role"] == "primary"] if "role" in table else table.iloc[:0]
    if rows.empty:
        return dict(verdict="not computed", reason="no primary row (its measure or evidence was not measured)")
    r = rows.iloc[0]
    out = dict(metric=r["metric"], evidence=r["evidence"], rho=r["rho"], robust_rho=r["robust_rho"], low=r["low"],
               high=r["high"], partial_rho=r["partial_rho"], robust_partial_rho=r["robust_partial_rho"],
               p_partial=r["p_partial"], p_floor=r["p_floor_partial"], n_units=int(r["n_units"]), alpha=alpha)
    if not np.isfinite(r["p_partial"]):
        depth = table[(table["metric"] == r["metric"]) & (table["evidence"] == "depth")]["rho"]
        if len(depth) and np.isfinite(depth.iloc[0]) and abs(depth.iloc[0]) > 1 - 1e-9:
            return dict(out, verdict="not shown", reason=f"{r['metric']} ranks the windows exactly as their depth "
                                                         f"does: nothing is left for the evidence")
        return dict(out, verdict="not computed", reason=r["note"] or "no partial correlation or no shift null")
    return dict(out, verdict="supported" if r["p_partial"] <= alpha else "not shown", reason="")


def metric_columns(cells: pd.DataFrame) -> dict[str, bool]:
    """:data:`METRICS` measured in ``cells``, ``{column: lower_is_more_robust}``; ``relearn_p_true_auc`` becomes
    one column per attack setting the cells ran (``relearn_scaled_p_true_auc``, ``relearn_paper_p_true_auc``)."""
    found = {}
    for name, lower in METRICS.items():
        columns = ([c for c in cells.columns if c.startswith("relearn_") and c.endswith("_p_true_auc")]
                   if name == "relearn_p_true_auc" else [name])
        found.update({c: lower for c in columns if c in cells and cells[c].notna().any()})
    return found


def correlations(cells: pd.DataFrame, evidence: pd.DataFrame, layers: pd.DataFrame | None = None,
                 completeness: float | None = None, n_boot: int = 10000, level: float = 0.95,
                 rng: int = 0, primary: tuple[str, str] | None = None) -> pd.DataFrame:
    """The rank correlation of each evidence column with each measure over the windows.

    Args:
        cells: the sweep's cells (:func:`run_sweep`), one row per (window, seed).
        evidence: :func:`window_evidence` of the same windows.
        layers: :func:`layer_evidence` behind it, for the shift null (None: no ``p_shift``).
        completeness: cells whose edit accuracy on their trained prompts (``train_acc``) is below it are left out
            of every measure (an incomplete edit says nothing about robustness; a missing one is not known to be
            complete); ``complete``, the share of a window's seeds whose edit did complete, is then a measure of
            its own, over all cells (a window whose edits do not take is not a robust place to edit). None keeps
            every cell.
        primary: ``(measure, evidence)`` of the one test (:data:`PRIMARY_EVIDENCE`, :func:`primary_measure`):
            its row gets ``role == "primary"``, every other ``"descriptive"``.

    Returns:
        One row per (metric, evidence): ``rho`` (Spearman of the windows' levels, seeds fitted out:
        :func:`statistics.rank_correlation`), ``low, high`` (what a replication with fresh seeds would give, given
        these windows), ``p_shift`` (:func:`statistics.shift_null`, one-sided in the premise's direction: how often
        the evidence slid along the blocks ranks as well; none for the ``depth`` reference), ``p_floor`` (the
        smallest value the shifts allow, 1 / (shifts + 1); ``p_floor_partial`` the same for ``p_partial``, whose
        shifts drop any that leave no partial correlation), ``n_units`` (windows), ``n_seeds``, ``residual_sd``,
        ``lower_is_more_robust``; ``partial_rho`` (the
        rank correlation with the window's depth held fixed, :func:`statistics.partial_spearman`: what the evidence
        says beyond where the window is; NaN below four windows) with ``p_partial`` (its shift null, one-sided);
        ``role``: ``"primary"`` for the one test, ``"descriptive"`` for every other row (no family correction: with
        at most 36 shifts no corrected family of these rows could reach 0.05, so they are not tests);
        ``robust_rho`` and ``robust_partial_rho`` are ``rho`` and ``partial_rho`` signed so that
        positive means *more evidence, better* (more robust; for ``maintain_acc`` and ``lm_loss_change``: less
        damage elsewhere); ``note`` says why a row has no correlation or interval (e.g. fewer than three windows
        with a complete edit, or every window's edit complete alike).
    """
    measures = {}
    use = cells
    if completeness is not None:
        if "train_acc" not in cells:
            raise ValueError("completeness is given but the cells have no 'train_acc' (the edit's accuracy on its "
                             "trained prompts). Fix: pass the sweep's cells (run_sweep), or completeness=None.")
        use = cells[cells["train_acc"] >= completeness]
        measures["complete"] = (cells.assign(value=(cells["train_acc"] >= completeness).astype(float)), False)
    for metric, lower in metric_columns(use).items():
        measures[metric] = (use.assign(value=use[metric]), lower)
    ev_by = evidence.set_index("localization")
    rows = []
    for metric, (data, lower) in measures.items():
        values = data[["localization", "seed", "value"]].rename(columns={"localization": "unit"})
        for column in EVIDENCE:
            if column not in ev_by or ev_by[column].notna().sum() == 0:  # not measured (e.g. no causal tracing)
                continue
            r = statistics.rank_correlation(values, ev_by[column], n_boot=n_boot, level=level, rng=rng)
            r.pop("p_value")  # the replication draws' side of zero: not a test of the windows (p_shift is)
            shift = dict(p_shift=np.nan, n_shifts=0, p_floor=np.nan, partial_rho=np.nan, p_partial=np.nan,
                         p_floor_partial=np.nan)
            units = [u for u in values.dropna(subset=["value"])["unit"].unique()
                     if u in ev_by.index and pd.notna(ev_by.loc[u, column])]
            if column not in REFERENCE and np.isfinite(r["rho"]):
                level_of = np.round(statistics.unit_levels(values, units)[0].to_numpy(), 12)  # as rank_correlation
                depth = ev_by.loc[units, "depth"].to_numpy(float)
                # what the evidence adds to knowing where the window is (Hase et al.'s question)
                shift["partial_rho"] = statistics.partial_spearman(ev_by.loc[units, column].to_numpy(float), level_of,
                                                                   depth)
                if layers is not None:
                    blocks = [list(range(int(ev_by.loc[u, "start"]), int(ev_by.loc[u, "start"] + ev_by.loc[u, "width"])))
                              for u in units]
                    series = layers.sort_values("layer")[column].to_numpy(float)
                    direction = -1 if lower else 1  # the premise: more evidence, better
                    null = statistics.shift_null(series, blocks, level_of, direction=direction)
                    shift.update(p_shift=null["p_shift"], n_shifts=null["n_shifts"],
                                 p_floor=1 / (null["n_shifts"] + 1) if null["n_shifts"] else np.nan)
                    if np.isfinite(shift["partial_rho"]):
                        partial = statistics.shift_null(series, blocks, level_of, direction=direction, control=depth)
                        shift.update(p_partial=partial["p_shift"], p_floor_partial=1 / (partial["n_shifts"] + 1)
                                     if partial["n_shifts"] else np.nan)
            sign = -1 if lower else 1
            role = "primary" if primary is not None and (metric, column) == tuple(primary) else "descriptive"
            rows.append(dict(metric=metric, evidence=column, role=role, lower_is_more_robust=lower, **r, **shift,
                             robust_rho=sign * r["rho"], robust_partial_rho=sign * shift["partial_rho"]))
    return pd.DataFrame(rows)


__all__ = ["TASK", "WIDTH", "EVIDENCE", "METRICS", "PRIMARY_EVIDENCE", "ALPHA", "primary_measure", "primary_result",
           "window_label", "windows", "window_config", "primary_attack", "layer_evidence",
           "window_evidence", "sweep_evidence", "run_sweep", "metric_columns", "correlations"]

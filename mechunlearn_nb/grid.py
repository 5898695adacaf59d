"""The paper's comparison grid: every localization × every task × several seeds.

Guo et al.'s central table puts localizations side by side under the same
parameter budget — fact lookup (FLU), output tracing from causal tracing or
attribution patching (all components, or MLPs only), random components, all
MLPs, and no localization (:mod:`.registry`) — and asks of each edit: did it
take (forget / edit accuracy), did it stay put (maintain accuracy,
general-text loss), and does it hold up (multiple choice, paraphrases, a
relearning attack, latent-knowledge probes)?

This module runs that grid, a *cell* at a time:

1. once per model and dataset, the localizations are built
   (:func:`dataset_localizations`, through :func:`registry.build`) and saved next
   to the cells, so that other processes and later runs read them back;
2. :func:`run_cell` makes one edit (a task, a localization, a seed), evaluates
   it, attacks it and probes it, and returns one row of metrics plus the
   relearning curve. :func:`run_grid` runs every cell and **saves each cell to
   its own JSON file as soon as it is done**, so an interrupted run resumes
   where it stopped and a finished cell is never recomputed;
3. the readers (:func:`saved_cells`, :func:`saved_cell`, :func:`curves`,
   :func:`timings`, :func:`grid_progress`) look at a grid's folder, finished or
   not; :mod:`.statistics` turns the cells into intervals and verdicts.

Metric names (all fractions are accuracies among the candidates, argmax):

- ``forget_acc``: the edited facts still answered with the true answer (train format; lower is better);
- ``edit_acc``: answered with the new answer (train format);
- ``maintain_acc``: held-out known facts still right (train format);
- ``mcq_forget_acc`` / ``mcq_edit_acc``: the same two in multiple choice (``mcq`` / ``cf_mcq``);
- ``paraphrase_edit_acc`` / ``paraphrase_forget_acc``: CounterFact paraphrases;
- ``relearn_acc``: true answer recovered on the held-out half of the forget set after
  the relearning attack's last step (lower is more robust);
- ``probe_true``: share of edited athletes whose *true* sport a linear probe (trained on
  maintain athletes, final token) still reads in the **middle** layers — the residual stream after fact
  lookup's last MLP up to the last four layers (athlete-editing tasks; lower is more robust). That is where
  the paper looks for latent knowledge: in the last layers every edit's probes read the new answer
  (``probe_true_late``, the last four layers, is kept for reference). A forget-one-sport task leaves no
  known player of that sport to train a probe on: NaN, with the reason in ``probe_note``;
- ``lm_loss_change``: general-text loss after minus before (side effect).

A cell's file, ``<out>/cells/<task>__<localization>__<seed>.json`` (:func:`io.slug` of the three), holds
``metrics, curve, seconds, evaluation, edit_config, history_tail``; the localization is saved under its
label (:data:`registry.LABELS`).
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from . import attacks, editing, evaluation, latent, registry, statistics, tasks, tuning
from .io import atomic_path, save_json, slug
from .models import hf_model
from .tasks import dataset_of

TASKS = ("forget basketball", "edit 16 athletes", "edit 64 athletes", "counterfact 16", "counterfact 64")
#: task names :func:`build_task` understands (:data:`TASKS` are the paper's sizes)
TASK_PATTERN = re.compile(r"forget basketball|(edit|forget) [1-9]\d* athletes|counterfact [1-9]\d*")
SEEDS = (0, 1, 2)  # the full-size grid's seeds
#: the relearning attacks a cell can run: the scaled default, and the paper's own setting (attacks.PAPER_LORA)
ATTACK_SETTINGS = ("scaled", "paper")


def check_selection(tasks: tuple[str, ...], localizations: tuple[str, ...], seeds: tuple[int, ...]) -> None:
    """``ValueError`` naming what is wrong with a grid's selection (unknown task or localization, no seeds)."""
    unknown = [t for t in tasks if not TASK_PATTERN.fullmatch(t)]
    if unknown or not tasks:
        raise ValueError(f"Unknown task(s) {unknown or '(none given)'}; choose from {TASKS} (any size N in "
                         f"'edit N athletes', 'forget N athletes' and 'counterfact N').")
    registry.check_names(localizations)
    if not seeds:
        raise ValueError("No seeds: give at least one seed.")


def _good_rate(value) -> bool:
    """A tuned rate of :class:`GridConfig`: a positive number, or ``{"lr": positive, "steps": positive int}``."""
    def positive(v, kinds=(int, float)):
        return isinstance(v, kinds) and not isinstance(v, bool) and v > 0
    if isinstance(value, dict):
        return set(value) == {"lr", "steps"} and positive(value["lr"]) and positive(value["steps"], int)
    return positive(value)


@dataclass
class GridConfig:
    """Sizes of the comparison (plain values; the defaults are the full-size run).

    Attributes:
        tasks: task names from :data:`TASKS`.
        localizations: labels (or keys) from :data:`registry.LABELS`.
        seeds: one edit per seed (the task's facts, the random localization and the training
            order change with it; the paper used several seeds per cell).
        n_locate: known facts used for causal tracing and attribution patching.
        n_probe: known facts for the localization probes (None: all known).
        max_forget: cap on the forget set of "forget basketball" (None: every known player).
        edit_overrides: :class:`~mechunlearn_nb.editing.EditConfig` fields to override
            (e.g. ``{"steps": 20}``), on top of each localization's tuned defaults.
        relearn_steps: the relearning attack's evaluation steps (its last one is reported).
        relearn_overrides: other :class:`~mechunlearn_nb.attacks.RelearnConfig` fields.
        probes: run the latent-knowledge probes (sports tasks).
        max_maintain: cap on each maintain split (speed).
        components: fixed localizations instead of computing the evidence:
            ``{dataset: {localization name: [component, ...]}}`` (e.g. the components a full-size
            run selected, for a quick rerun). ``random``, ``all MLPs`` and ``non-localized`` are
            always built by their builders; names missing here are located as usual.
        n_known: find the known facts among a seeded sample of this many facts of each dataset
            instead of scoring the whole dataset (None: all, cached on disk after the first run).
        n_unrelated: known facts of the other dataset checked for side effects (0: skip).
        eval_overrides: other :func:`~mechunlearn_nb.evaluation.evaluate` arguments
            (e.g. ``{"n_paragraphs": 2, "lm_tokens": 32}``).
        probe_window: residual-stream layers ``(first, last)`` whose probe read-outs make ``probe_true``
            (None: from the layer after fact lookup's last MLP to the last layer minus four).
        known_threshold: the probability above which a fact counts as known (None: the paper's,
            :data:`~mechunlearn_nb.tasks.KNOWN_THRESHOLD`).
        attack_settings: the relearning attacks of every cell, from :data:`ATTACK_SETTINGS` (``"scaled"``:
            ``relearn_overrides`` as given; ``"paper"``: with :data:`~mechunlearn_nb.attacks.PAPER_LORA` on
            top); the first one makes ``relearn_acc``, each its own ``relearn_<setting>_*`` curve summaries.
        rates: a learning rate per localization, ``{dataset: {label: lr}}`` (e.g. ``scripts/tune_rates.py``'s
            choice on a tuning seed), or ``{dataset: {label: {"lr": lr, "steps": steps}}}`` where the tuning chose
            the edit steps too; a localization missing there keeps its kind's default.
        mcq_debiased: measure the debiased multiple choice on every forget fact and this many held-out
            maintain facts (0: no).
        relocate_per_seed: locate the located localizations again for every seed, from the evidence sample that
            seed draws (:func:`registry.locate`'s known facts patched, probe split), so that a seed's interval holds
            the localization evidence's variance too; saved as ``localizations_<dataset>__seed<k>.json``. False:
            located once per dataset with seed 0 (``localizations_<dataset>.json``), as every grid before.
    """

    tasks: tuple[str, ...] = TASKS
    localizations: tuple[str, ...] = registry.LABELS
    seeds: tuple[int, ...] = SEEDS
    n_locate: int = 64
    n_probe: int | None = None
    max_forget: int | None = None
    edit_overrides: dict = field(default_factory=dict)
    relearn_steps: tuple[int, ...] = (0, 5, 10, 20)
    relearn_overrides: dict = field(default_factory=dict)
    probes: bool = True
    max_maintain: int | None = 256
    components: dict | None = None
    n_known: int | None = None
    n_unrelated: int = 48
    eval_overrides: dict = field(default_factory=dict)
    probe_window: tuple[int, int] | None = None
    known_threshold: float | None = None
    attack_settings: tuple[str, ...] = ("scaled",)
    rates: dict | None = None
    mcq_debiased: int = 0
    relocate_per_seed: bool = False

    def __post_init__(self):
        check_selection(self.tasks, self.localizations, self.seeds)
        self.attack_settings = tuple(self.attack_settings)
        bad = [a for a in self.attack_settings if a not in ATTACK_SETTINGS]
        if bad or not self.attack_settings:
            raise ValueError(f"attack_settings {list(self.attack_settings)}: choose one or more of {ATTACK_SETTINGS}.")
        for dataset, rates in (self.rates or {}).items():
            if dataset not in ("sports", "counterfact") or not isinstance(rates, dict):
                raise ValueError(f"rates: give {{dataset: {{localization: lr}}}} with datasets 'sports' / 'counterfact'; "
                                 f"got key {dataset!r}.")
            registry.check_names(tuple(rates))
            if any(not _good_rate(v) for v in rates.values()):
                raise ValueError(f"rates[{dataset!r}]: every learning rate must be a positive number, or "
                                 f"{{'lr': <positive number>, 'steps': <positive integer>}}; got {rates}.")
        self.localizations = registry.check_names(self.localizations)  # keys become labels (the saved names)
        for dataset, comps in (self.components or {}).items():
            if dataset not in ("sports", "counterfact"):
                raise ValueError(f"components: unknown dataset {dataset!r}; use 'sports' or 'counterfact' as keys.")
            bad = [n for n in comps if n not in registry.LOCATED]
            if bad:
                raise ValueError(f"components[{dataset!r}]: cannot fix {bad}; give components for {list(registry.LOCATED)}.")
            located = [n for n in self.localizations if registry.entry(n).located and n not in comps]
            if registry.FLU.label in comps and located:
                raise ValueError(f"components[{dataset!r}] fixes 'fact lookup' but not {located}, whose budgets would "
                                 f"then not match it. Fix: give components for them too, or leave 'fact lookup' out.")
        if self.n_known is not None and self.n_known < 8:
            raise ValueError(f"n_known={self.n_known} is too few facts to find known ones in; use >= 8 or None (all).")
        if self.probe_window is not None:
            if len(self.probe_window) != 2 or not 0 <= self.probe_window[0] <= self.probe_window[1]:
                raise ValueError(f"probe_window={self.probe_window!r}: give two layers (first, last) with 0 <= first <= last.")
            self.probe_window = (int(self.probe_window[0]), int(self.probe_window[1]))
        self.tasks, self.localizations, self.seeds = tuple(self.tasks), tuple(self.localizations), tuple(self.seeds)


# ---------------------------------------------------------------------------
# 1. Localizations, once per model and dataset
# ---------------------------------------------------------------------------


def localization_record(locs: dict, evidence: dict) -> dict:
    """What ``localizations_<dataset>.json`` holds: the located components of :func:`registry.build`'s result."""
    return {"flu_layers": evidence["flu_layers"], "n_locate": evidence["n_locate"],
            "localizations": {n: (None if loc is None else dict(components=loc.components, n_params=loc.n_params))
                              for n, loc in locs.items()}}


def record_covers(record: dict | None, names: tuple[str, ...]) -> bool:
    """Whether a saved record (:func:`localization_record`) holds every located name of ``names`` (and fact lookup)."""
    if not record:
        return False
    saved = record.get("localizations", {})
    return all(saved.get(n) for n in dict.fromkeys((registry.FLU.label, *names)) if registry.entry(n).located)


def localizations_from_record(model, record: dict, names: tuple[str, ...], source: str = "saved record") -> dict:
    """The localizations of ``names`` (random excepted: drawn per seed) from a record of located components."""
    from .localization import Localization

    saved = record["localizations"]
    located = [n for n in dict.fromkeys((registry.FLU.label, *names)) if registry.entry(n).located]
    built = {n: Localization.from_components(model, saved[n]["components"], name=n,
                                             meta=dict(method="read back", source=source))
             for n in located}
    return {**built, **registry.whole(model, names)}


def saved_localizations(model, path: str | Path, names: tuple[str, ...]) -> dict | None:
    """The localizations an earlier run of the grid located and saved (``localizations_<dataset>.json``).

    A resumed grid reads them instead of computing the evidence again (minutes at full size; the grid's
    settings were checked to be the same). ``None`` when the file is missing or lacks a located name in
    ``names`` (the run then locates again).
    """
    path = Path(path)
    record = json.loads(path.read_text()) if path.exists() else None
    if not record_covers(record, names):
        return None
    return localizations_from_record(model, record, names, source=str(path))


def located_names(config: GridConfig) -> tuple[str, ...]:
    """The grid's localizations built once per dataset (all but those drawn per seed)."""
    return tuple(n for n in config.localizations if not registry.entry(n).per_seed)


def evidence_seed(config: GridConfig, seed: int) -> int:
    """The seed of the evidence a cell of ``seed`` is located from: its own with ``relocate_per_seed``, else 0."""
    return int(seed) if config.relocate_per_seed else 0


def evidence_key(dataset: str, seed: int, config: GridConfig) -> str:
    """The name of a cell's located localizations: ``dataset``, or ``<dataset>__seed<k>`` when located per seed
    (the keys of a driver's records and the suffix of ``localizations_<key>.json``)."""
    return f"{dataset}__seed{int(seed)}" if config.relocate_per_seed else dataset


def locate(model, dataset: str, config: GridConfig, known: pd.DataFrame | None = None,
           seed: int = 0) -> tuple[dict, dict]:
    """One dataset's localizations, built from ``config.components`` where given, else located from evidence
    (:func:`registry.build`, the evidence sample of ``seed``: :func:`evidence_seed`); returns
    ``(localizations, record)`` (the record is what the grid saves)."""
    given = (config.components or {}).get(dataset, {})
    locs, evidence = registry.build(model, located_names(config), dataset, components=given,
                                    seed=evidence_seed(config, seed), n_locate=config.n_locate, n_probe=config.n_probe,
                                    known=known, progress=False)
    record = localization_record(locs, evidence)
    if config.relocate_per_seed:
        record["evidence_seed"] = evidence_seed(config, seed)
    return locs, record


def localizations_path(out_dir: str | Path, key: str) -> Path:
    """``out_dir/localizations_<key>.json`` (``key``: a dataset, or :func:`evidence_key`'s per-seed name)."""
    return Path(out_dir) / f"localizations_{key}.json"


def dataset_localizations(model, dataset: str, config: GridConfig, out_dir: str | Path,
                          known: pd.DataFrame | None = None, seed: int = 0) -> dict:
    """One dataset's localizations for a grid in ``out_dir``: given (``config.components``), read back from
    ``out_dir/localizations_<dataset>.json``, or located (:func:`locate`) and saved there.

    Random components are not among them: :func:`registry.for_seed` draws them per seed. One driver locates
    per folder (:func:`run_grid`, or :mod:`.cluster`'s, which hands the saved record to its workers).
    ``seed``: the cell's seed (used only with ``config.relocate_per_seed``: the localizations of that seed's
    evidence, in ``localizations_<dataset>__seed<k>.json``).
    """
    path = localizations_path(out_dir, evidence_key(dataset, seed, config))
    if not (config.components or {}).get(dataset):
        saved = saved_localizations(model, path, located_names(config))
        if saved is not None:  # a resumed run: the evidence was computed with these settings
            return saved
    locs, record = locate(model, dataset, config, known, seed=seed)
    save_json(record, path)
    return locs


# ---------------------------------------------------------------------------
# 2. One cell: edit, evaluate, attack, probe
# ---------------------------------------------------------------------------


def build_task(model, name: str, seed: int, max_forget: int | None = None, max_maintain: int | None = 256,
               known: pd.DataFrame | None = None):
    """The task of :data:`TASKS` for a seed (``known``: the known facts to draw from; default all)."""
    if name == "forget basketball":
        return tasks.forget_sport(model, "basketball", "golf", seed=seed, max_forget=max_forget, max_maintain=max_maintain,
                                  known=known)
    m = re.fullmatch(r"forget (\d+) athletes", name)
    if m:
        return tasks.forget_athletes(model, n=int(m.group(1)), seed=seed, max_maintain=max_maintain, known=known)
    m = re.fullmatch(r"edit (\d+) athletes", name)
    if m:
        return tasks.edit_athletes(model, n=int(m.group(1)), seed=seed, max_maintain=max_maintain, known=known)
    m = re.fullmatch(r"counterfact (\d+)", name)
    if m:
        return tasks.counterfact_edit(model, n=int(m.group(1)), seed=seed, max_maintain=max_maintain, known=known)
    raise ValueError(f"Unknown task {name!r}; choose from {TASKS}.")


def _value(table: pd.DataFrame, set_: str, fmt: str, metric: str, stage: str = "after") -> float:
    rows = table[(table["stage"] == stage) & (table["set"] == set_) & (table["format"] == fmt) & (table["metric"] == metric)]
    return float(rows["value"].iloc[0]) if len(rows) else float("nan")


LATE_LAYERS = 4  # the probes' late read-out: the last this many residual-stream points


def probe_window_for(model, flu, late_layers: int = LATE_LAYERS) -> tuple[int, int]:
    """The middle layers of ``probe_true``: after fact lookup's last MLP up to the last layer minus ``late_layers``.

    Layer ``i`` is the residual stream after ``i`` blocks (0: embeddings), so FLU ``m2``–``m5`` on an
    18-block model gives ``(6, 14)``.
    """
    n_layers = len(hf_model(model).model.layers)
    mlps = [int(c[1:]) for c in flu.components if c.startswith("m")]
    first = (max(mlps) if mlps else 0) + 1
    last = max(first, n_layers - late_layers)
    return first, last


def cell_metrics(task, table: pd.DataFrame, curve: pd.DataFrame | None, probe: pd.DataFrame | None,
                 probe_window: tuple[int, int] | None = None) -> dict:
    """One row of :data:`METRICS` from an edit's evaluation table, relearning curve and probe table.

    ``probe_window``: the layers ``(first, last)`` of ``probe_true`` (see :func:`probe_window_for`);
    None: the last :data:`LATE_LAYERS` layers.
    """
    fmt = task.train_format
    mcq = "mcq" if task.dataset == "sports" else "cf_mcq"
    gt_before = _value(table, "general_text", "text", "lm_loss", "before") if "general_text" in set(table["set"]) else np.nan
    gt_after = _value(table, "general_text", "text", "lm_loss", "after") if "general_text" in set(table["set"]) else np.nan
    if np.isnan(gt_before):  # the general-text rows' format name is whatever evaluation used
        gt = table[(table["set"] == "general_text") & (table["metric"] == "lm_loss")]
        if len(gt):
            gt_before = float(gt[gt["stage"] == "before"]["value"].mean())
            gt_after = float(gt[gt["stage"] == "after"]["value"].mean())
    out = dict(
        forget_acc=_value(table, "forget", fmt, "acc_true"), edit_acc=_value(table, "forget", fmt, "acc_new"),
        maintain_acc=_value(table, "maintain", fmt, "acc_true"),
        mcq_forget_acc=_value(table, "forget", mcq, "acc_true"), mcq_edit_acc=_value(table, "forget", mcq, "acc_new"),
        paraphrase_edit_acc=_value(table, "forget", "cf_paraphrase", "acc_new"),
        paraphrase_forget_acc=_value(table, "forget", "cf_paraphrase", "acc_true"),
        lm_loss_change=gt_after - gt_before,
        base_forget_acc=_value(table, "forget", fmt, "acc_true", "before"),
        base_maintain_acc=_value(table, "maintain", fmt, "acc_true", "before"),
        # the unedited model's multiple choice: on a model that favours one option, the edit's MCQ scores are
        # read against these (notebook 00)
        base_mcq_forget_acc=_value(table, "forget", mcq, "acc_true", "before"),
        base_mcq_edit_acc=_value(table, "forget", mcq, "acc_new", "before"),
    )
    if task.dataset == "sports":  # the question-answer format: a cross-format measure the unedited model answers
        out.update(qa_forget_acc=_value(table, "forget", "qa", "acc_true"), qa_edit_acc=_value(table, "forget", "qa", "acc_new"),
                   base_qa_forget_acc=_value(table, "forget", "qa", "acc_true", "before"))
    if "mcq_debiased" in set(table["format"]):
        out.update(mcq_debiased_forget_acc=_value(table, "forget", "mcq_debiased", "acc_true"),
                   mcq_debiased_edit_acc=_value(table, "forget", "mcq_debiased", "acc_new"),
                   base_mcq_debiased_forget_acc=_value(table, "forget", "mcq_debiased", "acc_true", "before"),
                   base_mcq_debiased_maintain_acc=_value(table, "maintain", "mcq_debiased", "acc_true", "before"))
    out["relearn_acc"] = np.nan
    if curve is not None and len(curve):
        settings = list(dict.fromkeys(curve["setting"])) if "setting" in curve else [None]
        for k, setting in enumerate(settings):
            sub = curve if setting is None else curve[curve["setting"] == setting]
            held = sub[sub["half"].str.startswith("B")].groupby("step")[[c for c in ("accuracy", "p_true") if c in sub]].mean()
            if k == 0:  # the first setting is the grid's relearning number
                out["relearn_acc"] = float(held["accuracy"].iloc[-1])
                out["relearn_acc_step0"] = float(held["accuracy"].iloc[0])
            if setting is not None and "p_true" in held:  # the whole curve of held-out probabilities
                summary = statistics.curve_metrics(sub.assign(task="", localization="", seed=0))
                p = summary[summary["quantity"] == "p_true"].iloc[0]
                out.update({f"relearn_{setting}_p_true_{k}": float(p[k]) for k in ("auc", "max", "change")})
    out["probe_true"] = np.nan
    if probe is not None and len(probe):
        for stage, suffix in (("after", ""), ("before", "_base")):
            s = latent.fractions_by_edit(probe[probe["stage"] == stage], last_k=LATE_LAYERS, window=probe_window)
            late = float(s["late_frac_true"].iloc[0])
            out["probe_true" + suffix] = late if probe_window is None else float(s["window_frac_true"].iloc[0])
            out["probe_true_late" + suffix] = late
            if probe_window is not None:
                out["probe_edit" + suffix] = float(s["window_frac_edit"].iloc[0])
        if probe_window is not None:
            out["probe_window"] = list(probe_window)
    return out


def probe_base(model, task, config: GridConfig, seed: int) -> tuple[pd.DataFrame | None, str | None]:
    """The base model's probe read-outs for a task (once per task and seed), or why there are none.

    Returns:
        ``(table, None)``, or ``(None, note)`` when the grid does not probe this task: probes off, a
        CounterFact task, or a forget-one-sport task (no known player of that sport is left to train a
        probe on).
    """
    if not config.probes or task.dataset != "sports":
        return None, None
    missing = latent.missing_probe_sports(task)
    if missing:
        return None, f"no probe: no probe-training athlete plays {', '.join(missing)}"
    return latent.latent_knowledge(model, task, {}, seed=seed, progress=False), None


def run_cell(model, task, loc, seed: int, config: GridConfig, baseline: pd.DataFrame | None = None,
             unrelated: pd.DataFrame | None = None, progress: bool = False, probe_window: tuple[int, int] | None = None,
             base_probe: tuple[pd.DataFrame | None, str | None] | None = None) -> dict:
    """Edit ``task`` through ``loc`` with ``seed``; evaluate, attack and probe it.

    Args:
        probe_window: the layers of ``probe_true`` (default: ``config.probe_window``, else the last layers).
        base_probe: :func:`probe_base`'s result for this task and seed (computed here when None).

    Returns:
        ``{"metrics": {...}, "curve": [...], "curve_facts": [...], "seconds": {...}, "evaluation": [...],
        "history_tail": {...}, "edit_config": {...}}`` (JSON-able; ``curve_facts``: the held-out half of every
        attack fact by fact, ``setting, step, half, fact, p_true, correct``, for a fact-level bootstrap;
        ``seconds``: wall time of each step; ``evaluation``: every score of the evaluation table before and after,
        in every format — QA, neighbourhood prompts, unrelated facts — beyond the few that make :data:`METRICS`).
    """
    clock, seconds = time.perf_counter(), {}

    def lap(name):
        nonlocal clock
        now = time.perf_counter()
        seconds[name] = round(now - clock, 1)
        clock = now

    rate = (config.rates or {}).get(task.dataset, {}).get(loc.name)
    tuned = {} if rate is None else dict(rate) if isinstance(rate, dict) else {"lr": rate}
    cfg = editing.EditConfig.for_localization(loc, **{**config.edit_overrides, **tuned})
    result = editing.edit(model, loc, task, cfg, seed=seed, progress=progress)
    lap("edit")
    table = evaluation.evaluate(model, task, result, baseline=baseline, unrelated=unrelated,
                                **{"n_generate": 0, "n_unrelated": 0, **config.eval_overrides, "progress": False,
                                   "mcq_debiased": config.mcq_debiased})
    lap("evaluate")
    curve, curve_facts = None, []
    if len(task.forget) >= 4:
        parts = []
        for setting in config.attack_settings:
            extra = attacks.PAPER_LORA if setting == "paper" else {}
            rcfg = attacks.RelearnConfig(eval_steps=config.relearn_steps, **{**config.relearn_overrides, **extra})
            part = attacks.relearn(model, result, task, rcfg, seed=seed, progress=progress)
            curve_facts += [dict(r, setting=setting) for r in part.attrs.get("facts", [])]
            part.attrs = {}
            parts.append(part.assign(setting=setting) if config.attack_settings != ("scaled",) else part)
        curve = pd.concat(parts, ignore_index=True)
    lap("relearn")
    base, probe_note = probe_base(model, task, config, seed) if base_probe is None else base_probe
    probe = None if base is None else latent.latent_knowledge(model, task, {loc.name: result}, seed=seed,
                                                               progress=False, base=base)
    lap("probe")
    metrics = cell_metrics(task, table, curve, probe, probe_window or config.probe_window)
    if probe_note:
        metrics["probe_note"] = probe_note
    metrics.update(task=task.name, localization=loc.name, seed=seed, n_params=loc.n_params, n_forget=len(task.forget),
                   components=list(loc.components), lr=cfg.lr, train_acc=tuning.train_accuracy(result))
    scores = table[table["set"] != "generation"][["stage", "set", "format", "metric", "value", "n"]]
    return dict(metrics=metrics, curve=[] if curve is None else curve.to_dict("records"), curve_facts=curve_facts,
                seconds=seconds,
                evaluation=scores.to_dict("records"),
                edit_config=asdict(cfg), history_tail=result.history.iloc[-1].to_dict() if len(result.history) else {})



#: GridConfig fields that only choose which cells to run; every other field changes what a cell computes
_SELECTION = ("tasks", "localizations", "seeds")


def settings_differ(config: GridConfig, out_dir: str | Path, ignore: tuple[str, ...] = ()) -> list[str]:
    """The GridConfig fields (other than the selection of cells and ``ignore``) whose values differ between ``config``
    and the settings a grid saved in ``out_dir`` (``grid_config.json``); empty when nothing was saved there."""
    saved = Path(out_dir) / "grid_config.json"
    if not saved.exists():
        return []
    old = json.loads(saved.read_text())
    new = json.loads(json.dumps(asdict(config)))
    # a field added since the folder's settings were saved counts as its default there (what those cells ran with)
    defaults = {k: f.default for k, f in GridConfig.__dataclass_fields__.items() if not callable(f.default_factory)}
    return sorted(k for k in new if k not in _SELECTION + tuple(ignore) and old.get(k, defaults.get(k)) != new[k])


def _check_resume(config: GridConfig, out_dir: Path, cell_dir: Path) -> None:
    """Refuse to mix cells computed under different settings in one folder."""
    if not any(cell_dir.glob("*.json")):
        return
    changed = settings_differ(config, out_dir)
    if changed:
        raise ValueError(f"{out_dir} holds cells computed with other settings ({', '.join(changed)} differ), which "
                         f"would be mixed into this table. Fix: use a new output folder, or delete {cell_dir} to recompute.")


def cell_path(out_dir: str | Path, task: str, localization: str, seed: int) -> Path:
    """Where a cell is saved: ``out_dir/cells/<task>__<localization>__<seed>.json``."""
    return Path(out_dir) / "cells" / f"{slug(task, localization, seed)}.json"


def start_grid(config: GridConfig, out_dir: str | Path) -> Path:
    """Make ``out_dir/cells/``, refuse cells saved there under other settings, save the grid's settings."""
    out_dir = Path(out_dir)
    cell_dir = out_dir / "cells"
    cell_dir.mkdir(parents=True, exist_ok=True)
    _check_resume(config, out_dir, cell_dir)
    if settings_differ(config, out_dir) and (out_dir / "baselines").exists():
        # no cell is left of the old settings (or _check_resume refused): their cached baselines go with them
        import shutil

        shutil.rmtree(out_dir / "baselines")
    save_json(asdict(config), out_dir / "grid_config.json")
    return cell_dir


def planned_cells(config: GridConfig) -> list[tuple[str, str, int]]:
    """Every ``(task, localization, seed)`` of the grid, in the order it is computed (a task and seed at a time)."""
    return [(t, name, s) for t in config.tasks for s in config.seeds for name in config.localizations]


def missing_cells(config: GridConfig, out_dir: str | Path) -> list[tuple[str, str, int]]:
    """The planned cells not yet saved in ``out_dir`` (what a resumed grid computes)."""
    return [c for c in planned_cells(config) if not cell_path(out_dir, *c).exists()]


def save_cell(cell: dict, out_dir: str | Path) -> Path:
    """Save a finished cell (atomically) where :func:`cell_path` says; returns the path."""
    m = cell["metrics"]
    path = cell_path(out_dir, m["task"], m["localization"], m["seed"])
    save_json(cell, path)
    return path


def known_facts(model, dataset: str, config: GridConfig) -> pd.DataFrame:
    """The facts of ``dataset`` a grid with ``config`` counts as known (its ``n_known`` sample and threshold)."""
    return tasks.known_facts(model, dataset, sample=config.n_known, seed=0, progress=False,
                             **({} if config.known_threshold is None else {"threshold": config.known_threshold}))


def baseline_path(out_dir: str | Path, task: str, seed: int) -> Path:
    """Where a grid keeps the unedited model's evaluation and probe read-outs of a (task, seed):
    ``out_dir/baselines/<task>__<seed>.pkl`` (:class:`CellComputer`'s ``share``)."""
    return Path(out_dir) / "baselines" / f"{slug(task, seed)}.pkl"


class CellComputer:
    """Computes cells on one model: the known facts and localizations of each dataset once, each (task, seed)'s
    task, baseline and base probes once (the last one kept), then :func:`run_cell`.

    Args:
        localizations: ``dataset -> {name: Localization}`` (the caller's way to get them: located and saved by
            :func:`dataset_localizations`, or rebuilt from a driver's record by :func:`localizations_from_record`);
            with ``config.relocate_per_seed`` it is called ``(dataset, seed)``.
        share: a grid's output folder whose ``baselines/`` this computer reads a (task, seed)'s unedited evaluation
            and probe read-outs from, and writes them to once computed (atomically; :func:`baseline_path`), so that
            workers on one file system and resumed runs compute each once instead of once per process. The
            folder's cells were all computed under one setting (:func:`start_grid` refuses others), so neither are
            its baselines. A folder that cannot be written (a worker on another machine) is skipped: the
            baseline is then computed here, as without ``share``.
    """

    def __init__(self, model, config: GridConfig, localizations, share: str | Path | None = None):
        self.model, self.config, self._localizations = model, config, localizations
        self.known: dict[str, pd.DataFrame] = {}
        self.locs: dict[str, dict] = {}
        self._task: dict = {}
        self.share = None if share is None else Path(share)
        self.baselines_read = 0  # (task, seed) baselines taken from ``share`` instead of computed

    def _baseline(self, task, task_name: str, seed: int, unrelated):
        """The unedited model's evaluation and probe read-outs of a (task, seed): from ``share`` when saved there."""
        import pickle

        path = None if self.share is None else baseline_path(self.share, task_name, seed)
        if path is not None and path.exists():
            with open(path, "rb") as f:
                self.baselines_read += 1
                return pickle.load(f)
        config = self.config
        base = evaluation.evaluate(self.model, task, None, unrelated=unrelated,
                                   **{"n_generate": 0, "n_unrelated": 0, **config.eval_overrides, "progress": False,
                                      "mcq_debiased": config.mcq_debiased})
        value = (base, probe_base(self.model, task, config, seed))
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                with atomic_path(path) as tmp, open(tmp, "wb") as f:
                    pickle.dump(value, f)
            except OSError:  # not this worker's file system: it keeps its own copy only
                pass
        return value

    def known_facts(self, dataset: str) -> pd.DataFrame:
        if dataset not in self.known:
            self.known[dataset] = known_facts(self.model, dataset, self.config)
        return self.known[dataset]

    def dataset_localizations(self, dataset: str, seed: int = 0) -> dict:
        """The located localizations a cell of ``dataset`` and ``seed`` edits through (computed once per key)."""
        key = evidence_key(dataset, seed, self.config)
        if key not in self.locs:
            self.locs[key] = (self._localizations(dataset, seed) if self.config.relocate_per_seed
                              else self._localizations(dataset))
        return self.locs[key]

    def _prepared(self, task_name: str, seed: int) -> tuple:
        """A (task, seed)'s task, unedited evaluation, unrelated facts and base probes (the last one kept)."""
        model, config = self.model, self.config
        key = (task_name, seed)
        if key not in self._task:
            known = self.known_facts(dataset_of(task_name))
            task = build_task(model, task_name, seed, config.max_forget, config.max_maintain, known=known)
            unrelated = evaluation.unrelated_facts(model, task, n=config.n_unrelated) if config.n_unrelated else None
            base, base_probe = self._baseline(task, task_name, seed, unrelated)
            self._task = {key: (task, base, unrelated, base_probe)}  # one task at a time
        return self._task[key]

    def compute(self, task_name: str, loc_name: str, seed: int) -> dict:
        """One cell's record (as :func:`run_cell` returns it)."""
        locs = self.dataset_localizations(dataset_of(task_name), seed)
        loc = registry.for_seed(self.model, locs, loc_name, seed)
        window = self.config.probe_window or probe_window_for(self.model, locs[registry.FLU.label])
        return self.compute_localization(task_name, loc, seed, probe_window=window)

    def compute_localization(self, task_name: str, loc, seed: int, probe_window: tuple[int, int] | None = None,
                             edit_overrides: dict | None = None) -> dict:
        """The cell of a given :class:`~mechunlearn_nb.localization.Localization` (one outside the named ones, e.g.
        a window of :mod:`.sweep`); ``probe_window``: default ``config.probe_window`` (None: the last layers);
        ``edit_overrides``: this cell's edit settings in place of ``config.edit_overrides`` (a window's own rate)."""
        task, base, unrelated, base_probe = self._prepared(task_name, seed)
        config = self.config if edit_overrides is None else replace(self.config, edit_overrides=dict(edit_overrides))
        return run_cell(self.model, task, loc, seed, config, baseline=base, unrelated=unrelated,
                        probe_window=probe_window or self.config.probe_window, base_probe=base_probe)


def run_grid(model, config: GridConfig, out_dir: str | Path, progress: bool = True) -> pd.DataFrame:
    """Run every (task, localization, seed) cell in this process, resuming from ``out_dir/cells/``.

    Each finished cell is written to ``out_dir/cells/<task>__<localization>__<seed>.json``
    (atomically) before the next starts; cells already there are read, not recomputed
    (:mod:`.cluster` computes them on several workers with the same functions).

    Returns:
        One row per cell: ``task, localization, seed`` and :data:`METRICS` (tidy-wide).
    """
    out_dir = Path(out_dir)
    start_grid(config, out_dir)
    computer = CellComputer(model, config, lambda dataset, seed=0: dataset_localizations(
        model, dataset, config, out_dir, computer.known_facts(dataset), seed=seed), share=out_dir)
    rows = []
    bar = tqdm(planned_cells(config), desc="comparison grid", disable=not progress)
    for task_name, loc_name, seed in bar:
        path = cell_path(out_dir, task_name, loc_name, seed)
        if path.exists():
            rows.append(json.loads(path.read_text()))
            continue
        bar.set_postfix_str(f"{task_name} · {loc_name} · seed {seed}")
        cell = computer.compute(task_name, loc_name, seed)
        save_cell(cell, out_dir)
        rows.append(cell)
    return pd.DataFrame([r["metrics"] for r in rows])


# ---------------------------------------------------------------------------
# 3. Reading a grid's folder
# ---------------------------------------------------------------------------


def saved_cells(out_dir: str | Path) -> pd.DataFrame:
    """The cells saved in ``out_dir/cells/`` so far, one row each (as :func:`run_grid` returns them).

    Reads only: use it to look at a grid that is still running (or was stopped) in another process —
    ``aggregate(saved_cells(out))`` and ``verdicts(saved_cells(out))`` work on any subset of cells.
    """
    paths = sorted((Path(out_dir) / "cells").glob("*.json"))
    if not paths:
        raise FileNotFoundError(f"No saved cells in {Path(out_dir) / 'cells'}. Fix: check the folder, or run the grid "
                                f"(run_grid / notebook 09) with this OUTPUT_DIR first.")
    return pd.DataFrame([json.loads(p.read_text())["metrics"] for p in paths])


def grid_progress(out_dir: str | Path, tasks: tuple[str, ...] = TASKS, localizations: tuple[str, ...] = registry.LABELS,
                  seeds: tuple[int, ...] = SEEDS) -> pd.DataFrame:
    """How far a grid saved in ``out_dir/cells/`` has got (defaults: the full-size grid of notebook 09).

    Returns:
        One row per task: ``planned, done, left`` cells, ``cell_seconds`` (mean wall time of its timed cells;
        the other tasks' mean when none is timed yet) and ``seconds_left`` (``left × cell_seconds``, one process).
        Reads only: safe to call while workers are writing cells. ``FileNotFoundError`` when none is saved yet;
        ``ValueError`` for an unknown task or localization, or no seeds. A name given twice is planned once.
    """
    check_selection(tasks, localizations, seeds)
    localizations = registry.check_names(localizations)  # saved cells name the labels
    tasks, localizations, seeds = (tuple(dict.fromkeys(x)) for x in (tasks, localizations, seeds))
    keys = ["task", "localization", "seed"]
    done = saved_cells(out_dir)[keys].astype({"seed": int})
    pace = timings(out_dir).groupby(keys)["seconds"].sum().groupby("task").mean()  # untimed (older) cells left out
    rows = []
    for task in tasks:
        n_done = int(((done["task"] == task) & done["localization"].isin(localizations) & done["seed"].isin(seeds)).sum())
        planned = len(localizations) * len(seeds)
        rows.append(dict(task=task, planned=planned, done=n_done, left=planned - n_done, cell_seconds=pace.get(task, np.nan)))
    frame = pd.DataFrame(rows, columns=["task", "planned", "done", "left", "cell_seconds"])
    frame["cell_seconds"] = frame["cell_seconds"].fillna(float(pace.mean()) if len(pace) else np.nan)
    frame["seconds_left"] = frame["left"] * frame["cell_seconds"].where(frame["left"] > 0, 0.0)
    return frame


def saved_cell(out_dir: str | Path, task: str, localization: str, seed: int) -> dict:
    """One saved cell's whole record (metrics, relearning curve, evaluation table, timings, edit settings)."""
    path = Path(out_dir) / "cells" / f"{slug(task, localization, seed)}.json"
    if not path.exists():
        have = sorted(p.stem for p in (Path(out_dir) / "cells").glob("*.json"))
        raise FileNotFoundError(f"No saved cell for ({task!r}, {localization!r}, seed {seed}) in {path.parent}. "
                                f"Fix: pick one of the saved cells ({len(have)}: {have[:6]}{' ...' if len(have) > 6 else ''}) "
                                f"or run the grid for it.")
    return json.loads(path.read_text())


_EVALUATION_COLUMNS = ["before", "after", "change", "n"]


def evaluation_table(cell: dict) -> pd.DataFrame:
    """A saved cell's evaluation before and after its edit: one row per (set, format, metric), columns
    ``before, after, change, n`` — every score behind the cell's metrics, in every format it was evaluated in.

    Cells saved before evaluation tables were kept raise ``ValueError``.
    """
    rows = cell.get("evaluation")
    if not rows:
        raise ValueError("This cell was saved without its evaluation table (an older grid); its metrics are in "
                         "cell['metrics']. Fix: recompute the cell (delete its file and rerun the grid) to keep the table.")
    frame = pd.DataFrame(rows)
    wide = frame.pivot_table(index=["set", "format", "metric"], columns="stage", values="value", sort=False)
    wide = wide.reindex(columns=["before", "after"])
    wide["change"] = wide["after"] - wide["before"]
    n = frame[frame["stage"] == "after"].set_index(["set", "format", "metric"])["n"]
    wide["n"] = n.reindex(wide.index).astype("Int64")
    wide.columns.name = None
    return wide


def first_evaluation_table(out_dir: str | Path, cells: pd.DataFrame) -> tuple[dict | None, pd.DataFrame]:
    """The :func:`evaluation_table` of the first of ``cells`` (rows of :func:`run_grid` / :func:`saved_cells`)
    whose saved record kept one; cells of older grids kept only their metrics and are passed over.

    Returns ``({"task", "localization", "seed"}, table)``, or ``(None, empty table)`` when no cell kept one.
    """
    for row in cells[["task", "localization", "seed"]].itertuples(index=False):
        key = dict(task=row.task, localization=row.localization, seed=int(row.seed))
        cell = saved_cell(out_dir, **key)
        if cell.get("evaluation"):
            return key, evaluation_table(cell)
    return None, pd.DataFrame(columns=_EVALUATION_COLUMNS)


def curves(out_dir: str | Path) -> pd.DataFrame:
    """Every saved cell's relearning curve, concatenated (tidy)."""
    frames = []
    for path in sorted((Path(out_dir) / "cells").glob("*.json")):
        cell = json.loads(path.read_text())
        if cell["curve"]:
            frames.append(pd.DataFrame(cell["curve"]).assign(localization=cell["metrics"]["localization"],
                                                             task=cell["metrics"]["task"], seed=cell["metrics"]["seed"]))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def timings(out_dir: str | Path) -> pd.DataFrame:
    """Wall time of each saved cell's steps (edit, evaluate, relearn, probe), tidy: one row per cell and step.

    Cells saved before timings were recorded have none and are left out.
    """
    rows = []
    for path in sorted((Path(out_dir) / "cells").glob("*.json")):
        cell = json.loads(path.read_text())
        m = cell["metrics"]
        rows += [dict(task=m["task"], localization=m["localization"], seed=m["seed"], step=step, seconds=sec)
                 for step, sec in cell.get("seconds", {}).items()]
    return pd.DataFrame(rows, columns=["task", "localization", "seed", "step", "seconds"])

"""The paper's comparison: every localization × every task × several seeds.

Guo et al.'s central table puts localizations side by side under the same
parameter budget — fact lookup (FLU), output tracing from causal tracing or
attribution patching (all components, or MLPs only), random components, all
MLPs, and no localization — and asks of each edit: did it take (forget / edit
accuracy), did it stay put (maintain accuracy, general-text loss), and does it
hold up (multiple choice, paraphrases, a relearning attack, latent-knowledge
probes)?

This module runs that grid. It works in three steps:

1. :func:`locate` computes, once per model and dataset, the evidence (probes,
   causal tracing, attribution patching on known facts) and builds every
   localization, matched to FLU's parameter count;
2. :func:`run_cell` makes one edit (a task, a localization, a seed), evaluates
   it, attacks it and probes it, and returns one row of metrics plus the
   relearning curve. :func:`run_grid` runs every cell and **saves each cell to
   its own JSON file as soon as it is done**, so an interrupted run resumes
   where it stopped and a finished cell is never recomputed;
3. :func:`aggregate` turns the cells into mean ± 95% confidence interval
   (Student t over seeds), and :func:`verdicts` checks the paper's claims —
   fact lookup more robust than output tracing on multiple choice, on
   relearning, on probes, with comparable side effects — and says, with the
   numbers, whether this run supports each.

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
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from filelock import FileLock
from tqdm.auto import tqdm

from . import attacks, data, editing, evaluation, latent, localization, patching, probing, tasks, tracing
from .io import save_json, slug
from .models import hf_model

LOCALIZATIONS = ("fact lookup", "OT (causal tracing)", "OT MLPs only", "OT (attribution patching)", "random",
                 "all MLPs", "non-localized")
TASKS = ("forget basketball", "edit 16 athletes", "edit 64 athletes", "counterfact 16", "counterfact 64")
#: task names :func:`build_task` understands (:data:`TASKS` are the paper's sizes)
TASK_PATTERN = re.compile(r"forget basketball|edit [1-9]\d* athletes|counterfact [1-9]\d*")
SEEDS = (0, 1, 2)  # the full-size grid's seeds
METRICS = ("forget_acc", "edit_acc", "maintain_acc", "mcq_forget_acc", "mcq_edit_acc", "paraphrase_edit_acc",
           "paraphrase_forget_acc", "relearn_acc", "probe_true", "lm_loss_change")
#: for each metric, whether a higher value means a better (more robust / less damaging) edit
HIGHER_IS_BETTER = {"forget_acc": False, "edit_acc": True, "maintain_acc": True, "mcq_forget_acc": False,
                    "mcq_edit_acc": True, "paraphrase_edit_acc": True, "paraphrase_forget_acc": False,
                    "relearn_acc": False, "probe_true": False, "lm_loss_change": False}


def check_selection(tasks: tuple[str, ...], localizations: tuple[str, ...], seeds: tuple[int, ...]) -> None:
    """``ValueError`` naming what is wrong with a grid's selection (unknown task or localization, no seeds)."""
    unknown = [t for t in tasks if not TASK_PATTERN.fullmatch(t)]
    if unknown or not tasks:
        raise ValueError(f"Unknown task(s) {unknown or '(none given)'}; choose from {TASKS} (any size N in "
                         f"'edit N athletes' and 'counterfact N').")
    unknown = [name for name in localizations if name not in LOCALIZATIONS]
    if unknown or not localizations:
        raise ValueError(f"Unknown localization(s) {unknown or '(none given)'}; choose from {LOCALIZATIONS}.")
    if not seeds:
        raise ValueError("No seeds: give at least one seed.")


@dataclass
class GridConfig:
    """Sizes of the comparison (plain values; the defaults are the full-size run).

    Attributes:
        tasks: task names from :data:`TASKS`.
        localizations: names from :data:`LOCALIZATIONS`.
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
    """

    tasks: tuple[str, ...] = TASKS
    localizations: tuple[str, ...] = LOCALIZATIONS
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

    def __post_init__(self):
        check_selection(self.tasks, self.localizations, self.seeds)
        for dataset, comps in (self.components or {}).items():
            if dataset not in ("sports", "counterfact"):
                raise ValueError(f"components: unknown dataset {dataset!r}; use 'sports' or 'counterfact' as keys.")
            bad = [n for n in comps if n not in LOCALIZATIONS or n in BUILT_FROM_BUDGET]
            if bad:
                raise ValueError(f"components[{dataset!r}]: cannot fix {bad}; give components for "
                                 f"{[n for n in LOCALIZATIONS if n not in BUILT_FROM_BUDGET]}.")
            located = [n for n in self.localizations if n not in BUILT_FROM_BUDGET and n not in comps]
            if "fact lookup" in comps and located:
                raise ValueError(f"components[{dataset!r}] fixes 'fact lookup' but not {located}, whose budgets would "
                                 f"then not match it. Fix: give components for them too, or leave 'fact lookup' out.")
        if self.n_known is not None and self.n_known < 8:
            raise ValueError(f"n_known={self.n_known} is too few facts to find known ones in; use >= 8 or None (all).")
        if self.probe_window is not None:
            if len(self.probe_window) != 2 or not 0 <= self.probe_window[0] <= self.probe_window[1]:
                raise ValueError(f"probe_window={self.probe_window!r}: give two layers (first, last) with 0 <= first <= last.")
            self.probe_window = (int(self.probe_window[0]), int(self.probe_window[1]))
        self.tasks, self.localizations, self.seeds = tuple(self.tasks), tuple(self.localizations), tuple(self.seeds)


#: localizations that are not located from evidence: drawn or taken whole, given fact lookup's budget
BUILT_FROM_BUDGET = ("random", "all MLPs", "non-localized")
#: localizations located from evidence (or given as components); the others are rebuilt from fact lookup's budget
LOCATED = tuple(n for n in LOCALIZATIONS if n not in BUILT_FROM_BUDGET)


def dataset_of(task_name: str) -> str:
    return "counterfact" if task_name.startswith("counterfact") else "sports"


# ---------------------------------------------------------------------------
# 1. Localizations, once per model and dataset
# ---------------------------------------------------------------------------


def known_for(model, dataset: str, n_known: int | None = None, seed: int = 0, progress: bool = False) -> pd.DataFrame:
    """The known facts of a dataset: all of them (disk-cached), or those among a seeded sample of ``n_known``."""
    if n_known is None:
        return tasks.known_facts(model, dataset, progress=progress)
    pool = data.load_sports() if dataset == "sports" else data.load_counterfact(with_prompts=True)
    sample = pool.sample(min(n_known, len(pool)), random_state=seed)
    scored = tasks.score_facts(model, dataset, facts=sample, progress=progress)
    known = scored[scored["p_true_norm"] >= 0.5].reset_index(drop=True)
    if len(known) == 0:
        raise ValueError(f"The model knows none of {len(sample)} sampled {dataset} facts. Fix: raise n_known or use None.")
    return known


def fixed(model, components: dict[str, list[str]], names: tuple[str, ...] = LOCALIZATIONS) -> dict:
    """Localizations from given component lists (``{name: [components]}``), plus the budget-built ones in ``names``."""
    if "fact lookup" not in components:
        raise ValueError("Fixed components need a 'fact lookup' entry: the other localizations match its budget.")
    built = {n: localization.Localization.from_components(model, c, name=n, meta=dict(method="fixed components"))
             for n, c in components.items()}
    return {**built, **_whole(model, names)}


_WHOLE = ("all MLPs", "non-localized")


def _whole(model, names) -> dict:
    """The localizations in ``names`` that take whole component groups (all MLPs, non-localized)."""
    builders = {"all MLPs": localization.all_mlps, "non-localized": localization.non_localized}
    return {n: builders[n](model, name=n) for n in names if n in builders}


def _counterfact_locate_facts(model, known: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """Known CounterFact facts whose true target is one token (the tracing metric scores one token)."""
    tok = model.tokenizer
    single = known[[len(tok(" " + t, add_special_tokens=False)["input_ids"]) == 1 for t in known["target_true"]]]
    if len(single) == 0:
        raise ValueError("No known CounterFact fact has a single-token true target; cannot trace CounterFact.")
    return single.sample(min(n, len(single)), random_state=seed).reset_index(drop=True)


def locate(model, dataset: str = "sports", names: tuple[str, ...] = LOCALIZATIONS, n_locate: int = 64,
           n_probe: int | None = None, seed: int = 0, progress: bool = True,
           known: pd.DataFrame | None = None) -> tuple[dict, dict]:
    """Build the localizations of one dataset, budget-matched to fact lookup.

    Sports: probes on known athletes, causal tracing (noised subjects) and attribution patching
    (subjects swapped for athletes of another sport) on ``n_locate`` known athletes; FLU from the
    probes and the attribution evidence (:func:`localization.fact_lookup`).
    CounterFact: there is no fixed label set to probe, so FLU uses the tracing evidence alone
    (causal tracing and attribution patching with noised subjects, on CounterFact prompts).

    Args:
        known: the known facts to locate with (default: :func:`tasks.known_facts`).

    Returns:
        ``({name: Localization}, evidence)`` where ``evidence`` holds the tables used.
    """
    evidence: dict = {}
    if dataset == "sports":
        known = tasks.known_facts(model, "sports", progress=progress) if known is None else known
        facts = patching.balanced_sample(known, n_locate, seed=seed)
        probe_facts = known if n_probe is None else known.sample(min(n_probe, len(known)), random_state=seed)
        probes = probing.layer_probes(model, probe_facts, seed=seed, progress=progress).accuracy
        ap_inputs = patching.corrupt_subjects(model, facts, pool=known, seed=seed)
        trace_kwargs = dict(components=("attn", "mlp"), seed=seed, progress=progress)
        trace = tracing.causal_trace(model, facts, **trace_kwargs) if _needs_trace(names) else None
    elif dataset == "counterfact":
        known = tasks.known_facts(model, "counterfact", progress=progress) if known is None else known
        facts = _counterfact_locate_facts(model, known, n_locate, seed)
        prompts = [p.format(s) for p, s in zip(facts["prompt"], facts["subject"])]
        probes = None
        ap_inputs = tracing.noise_inputs(model, facts, prompts=prompts, subject_col="subject", answer_col="target_true",
                                         seed=seed)
        trace = None
        if _needs_trace(names):  # the same noise inputs, restored state by state
            trace = patching.average_over_facts(patching.run_patches(model, ap_inputs, components=("attn", "mlp"), progress=progress))
    else:
        raise ValueError(f"Unknown dataset {dataset!r}; choose 'sports' or 'counterfact'.")
    attribution = patching.average_over_facts(patching.attribution_patching(model, ap_inputs, components=("head", "mlp"),
                                                                   progress=progress))
    flu = localization.fact_lookup(model, probes, attribution)
    evidence.update(probes=probes, attribution=attribution, trace=trace, flu_layers=flu.meta.get("layers"),
                    n_locate=len(facts))
    built = {"fact lookup": flu}
    for name in names:
        if name == "OT (causal tracing)":
            built[name] = localization.output_tracing(model, trace, budget=flu, name=name)
        elif name == "OT MLPs only":
            built[name] = localization.output_tracing(model, trace if trace is not None else attribution, budget=flu,
                                                      mlp_only=True, name=name)
        elif name == "OT (attribution patching)":
            built[name] = localization.output_tracing(model, attribution, budget=flu, name=name)
    built.update(_whole(model, names))
    return built, evidence


def _needs_trace(names) -> bool:
    return "OT (causal tracing)" in names or "OT MLPs only" in names


def saved_localizations(model, path: str | Path, names: tuple[str, ...]) -> dict | None:
    """The localizations an earlier run of the grid located and saved (``localizations_<dataset>.json``).

    A resumed grid reads them instead of computing the evidence again (minutes at full size; the grid's
    settings were checked to be the same). ``None`` when the file is missing or lacks a located name in
    ``names`` (the run then locates again).
    """
    path = Path(path)
    if not path.exists():
        return None
    saved = json.loads(path.read_text()).get("localizations", {})
    located = [n for n in ("fact lookup", *names) if n in LOCATED]
    if any(not saved.get(n) for n in located):
        return None
    built = {n: localization.Localization.from_components(model, saved[n]["components"], name=n,
                                                          meta=dict(method="read back", source=str(path)))
             for n in dict.fromkeys(located)}
    return {**built, **_whole(model, names)}


def localization_for(model, locs: dict, name: str, seed: int):
    """The named localization (from :func:`locate`); ``random`` is drawn per seed with fact lookup's budget."""
    if name == "random":
        return localization.random_components(model, budget=locs["fact lookup"], seed=seed, name="random")
    return locs[name]


# ---------------------------------------------------------------------------
# 2. One cell: edit, evaluate, attack, probe
# ---------------------------------------------------------------------------


def build_task(model, name: str, seed: int, max_forget: int | None = None, max_maintain: int | None = 256,
               known: pd.DataFrame | None = None):
    """The task of :data:`TASKS` for a seed (``known``: the known facts to draw from; default all)."""
    if name == "forget basketball":
        return tasks.forget_sport(model, "basketball", "golf", seed=seed, max_forget=max_forget, max_maintain=max_maintain,
                                  known=known)
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
    out["relearn_acc"] = np.nan
    if curve is not None and len(curve):
        held = curve[curve["half"].str.startswith("B")]
        out["relearn_acc"] = float(held[held["step"] == held["step"].max()]["accuracy"].mean())
        out["relearn_acc_step0"] = float(held[held["step"] == held["step"].min()]["accuracy"].mean())
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
        ``{"metrics": {...}, "curve": [...], "seconds": {...}, "evaluation": [...], "history_tail": {...},
        "edit_config": {...}}`` (JSON-able; ``seconds``: wall time of each step; ``evaluation``: every score of
        the evaluation table before and after, in every format — QA, neighbourhood prompts, unrelated facts —
        beyond the few that make :data:`METRICS`).
    """
    clock, seconds = time.perf_counter(), {}

    def lap(name):
        nonlocal clock
        now = time.perf_counter()
        seconds[name] = round(now - clock, 1)
        clock = now

    cfg = editing.EditConfig.for_localization(loc, **config.edit_overrides)
    result = editing.edit(model, loc, task, cfg, seed=seed, progress=progress)
    lap("edit")
    table = evaluation.evaluate(model, task, result, baseline=baseline, unrelated=unrelated,
                                **{"n_generate": 0, "n_unrelated": 0, **config.eval_overrides, "progress": False})
    lap("evaluate")
    rcfg = attacks.RelearnConfig(eval_steps=config.relearn_steps, **config.relearn_overrides)
    curve = attacks.relearn(model, result, task, rcfg, seed=seed, progress=progress) if len(task.forget) >= 4 else None
    lap("relearn")
    base, probe_note = probe_base(model, task, config, seed) if base_probe is None else base_probe
    probe = None if base is None else latent.latent_knowledge(model, task, {loc.name: result}, seed=seed,
                                                               progress=False, base=base)
    lap("probe")
    metrics = cell_metrics(task, table, curve, probe, probe_window or config.probe_window)
    if probe_note:
        metrics["probe_note"] = probe_note
    metrics.update(task=task.name, localization=loc.name, seed=seed, n_params=loc.n_params, n_forget=len(task.forget),
                   components=list(loc.components))
    scores = table[table["set"] != "generation"][["stage", "set", "format", "metric", "value", "n"]]
    return dict(metrics=metrics, curve=[] if curve is None else curve.to_dict("records"), seconds=seconds,
                evaluation=scores.to_dict("records"),
                edit_config=asdict(cfg), history_tail=result.history.iloc[-1].to_dict() if len(result.history) else {})



#: GridConfig fields that only choose which cells to run; every other field changes what a cell computes
_SELECTION = ("tasks", "localizations", "seeds")


def _check_resume(config: GridConfig, out_dir: Path, cell_dir: Path) -> None:
    """Refuse to mix cells computed under different settings in one folder."""
    saved = out_dir / "grid_config.json"
    if not saved.exists() or not any(cell_dir.glob("*.json")):
        return
    old = json.loads(saved.read_text())
    new = json.loads(json.dumps(asdict(config)))
    changed = sorted(k for k in new if k not in _SELECTION and old.get(k) != new[k])
    if changed:
        raise ValueError(f"{out_dir} holds cells computed with other settings ({', '.join(changed)} differ), which "
                         f"would be mixed into this table. Fix: use a new output folder, or delete {cell_dir} to recompute.")


def dataset_localizations(model, dataset: str, config: GridConfig, out_dir: str | Path,
                          known: pd.DataFrame | None = None) -> dict:
    """One dataset's localizations for a grid in ``out_dir``: given (``config.components``), read back from
    ``out_dir/localizations_<dataset>.json``, or located (:func:`locate`) and saved there.

    Processes sharing ``out_dir`` (``run --workers``, or one notebook per seed) take turns: the first locates
    and saves, the others wait for it and read the file back instead of locating again. The lock is the empty
    file ``out_dir/.localizations_<dataset>.lock``; it stays there (deleting it while no worker runs is safe).
    """
    out_dir = Path(out_dir)
    path = out_dir / f"localizations_{dataset}.json"
    with FileLock(out_dir / f".localizations_{dataset}.lock"):
        given = (config.components or {}).get(dataset, {})
        saved = saved_localizations(model, path, config.localizations)
        if saved is not None and not given:  # a resumed run: the evidence was computed with these settings
            return saved
        if "fact lookup" in given:  # GridConfig checked that every located localization is given too
            locs = fixed(model, given, config.localizations)
            evidence = {"flu_layers": [int(c[1:]) for c in given["fact lookup"] if c.startswith("m")], "n_locate": 0}
        else:
            locs, evidence = locate(model, dataset, config.localizations, n_locate=config.n_locate,
                                    n_probe=config.n_probe, seed=0, progress=False, known=known)
            locs.update({n: localization.Localization.from_components(model, c, name=n,
                                                                      meta=dict(method="fixed components"))
                         for n, c in given.items()})
        save_json({"flu_layers": evidence["flu_layers"], "n_locate": evidence["n_locate"],
                   "localizations": {n: (None if loc is None else dict(components=loc.components, n_params=loc.n_params))
                                     for n, loc in locs.items()}}, path)
        return locs


def run_grid(model, config: GridConfig, out_dir: str | Path, progress: bool = True) -> pd.DataFrame:
    """Run every (task, localization, seed) cell, resuming from ``out_dir/cells/``.

    Each finished cell is written to ``out_dir/cells/<task>__<localization>__<seed>.json``
    (atomically) before the next starts; cells already there are read, not recomputed.

    Returns:
        One row per cell: ``task, localization, seed`` and :data:`METRICS` (tidy-wide).
    """
    out_dir = Path(out_dir)
    cell_dir = out_dir / "cells"
    cell_dir.mkdir(parents=True, exist_ok=True)
    _check_resume(config, out_dir, cell_dir)
    save_json(asdict(config), out_dir / "grid_config.json")
    locs_by_dataset: dict[str, dict] = {}
    known_by_dataset: dict[str, pd.DataFrame] = {}
    rows = []
    # seeds outside localizations: each (task, seed) is built and measured on the base model once
    todo = [(t, name, s) for t in config.tasks for s in config.seeds for name in config.localizations]
    bar = tqdm(todo, desc="comparison grid", disable=not progress)
    cache_tasks: dict = {}
    for task_name, loc_name, seed in bar:
        path = cell_dir / f"{slug(task_name, loc_name, seed)}.json"
        if path.exists():
            rows.append(json.loads(path.read_text()))
            continue
        bar.set_postfix_str(f"{task_name} · {loc_name} · seed {seed}")
        dataset = dataset_of(task_name)
        if dataset not in known_by_dataset:
            known_by_dataset[dataset] = known_for(model, dataset, config.n_known, seed=0)
        if dataset not in locs_by_dataset:
            locs_by_dataset[dataset] = dataset_localizations(model, dataset, config, out_dir, known_by_dataset[dataset])
        key = (task_name, seed)
        if key not in cache_tasks:
            task = build_task(model, task_name, seed, config.max_forget, config.max_maintain, known=known_by_dataset[dataset])
            unrelated = evaluation.unrelated_facts(model, task, n=config.n_unrelated) if config.n_unrelated else None
            base = evaluation.evaluate(model, task, None, unrelated=unrelated,
                                       **{"n_generate": 0, "n_unrelated": 0, **config.eval_overrides, "progress": False})
            cache_tasks = {key: (task, base, unrelated, probe_base(model, task, config, seed))}  # one task at a time
        task, base, unrelated, base_probe = cache_tasks[key]
        loc = localization_for(model, locs_by_dataset[dataset], loc_name, seed)
        window = config.probe_window or probe_window_for(model, locs_by_dataset[dataset]["fact lookup"])
        cell = run_cell(model, task, loc, seed, config, baseline=base, unrelated=unrelated, probe_window=window,
                        base_probe=base_probe)
        save_json(cell, path)
        rows.append(cell)
    frame = pd.DataFrame([r["metrics"] for r in rows])
    return frame


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


def grid_progress(out_dir: str | Path, tasks: tuple[str, ...] = TASKS, localizations: tuple[str, ...] = LOCALIZATIONS,
                  seeds: tuple[int, ...] = SEEDS) -> pd.DataFrame:
    """How far a grid saved in ``out_dir/cells/`` has got (defaults: the full-size grid of notebook 09).

    Returns:
        One row per task: ``planned, done, left`` cells, ``cell_seconds`` (mean wall time of its timed cells;
        the other tasks' mean when none is timed yet) and ``seconds_left`` (``left × cell_seconds``, one process).
        Reads only: safe to call while workers are writing cells. ``FileNotFoundError`` when none is saved yet;
        ``ValueError`` for an unknown task or localization, or no seeds. A name given twice is planned once.
    """
    check_selection(tasks, localizations, seeds)
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


# ---------------------------------------------------------------------------
# 3. Aggregation and verdicts
# ---------------------------------------------------------------------------


def aggregate(cells: pd.DataFrame, metrics: tuple[str, ...] = METRICS) -> pd.DataFrame:
    """Mean ± 95% confidence interval over seeds, per (task, localization, metric) (tidy).

    The interval is Student's t over the seeds (``half_width = t(0.975, n-1) · sd / √n``); with one
    seed it is NaN: a single run says nothing about its own noise.
    """
    rows = []
    present = [m for m in metrics if m in cells]
    for (task, loc), g in cells.groupby(["task", "localization"], sort=False):
        for m in present:
            v = g[m].dropna().to_numpy(dtype=float)
            if len(v) == 0:
                continue
            mean, half = mean_ci95(v)
            rows.append(dict(task=task, localization=loc, metric=m, mean=mean, ci95=half, n_seeds=len(v)))
    return pd.DataFrame(rows)


def mean_ci95(values) -> tuple[float, float]:
    """Mean and half-width of its 95% Student-t interval (``t(0.975, n-1) · sd / √n``); NaN half-width for
    one value, NaN both for none."""
    from scipy import stats

    v = np.asarray(values, dtype=float)
    if len(v) == 0:
        return np.nan, np.nan
    half = float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else np.nan
    return float(v.mean()), half


UNEDITED = "unedited model"
#: metric ← the field of a cell that holds the same score measured on the unedited model
BASE_OF = {"forget_acc": "base_forget_acc", "maintain_acc": "base_maintain_acc", "mcq_forget_acc": "base_mcq_forget_acc",
           "mcq_edit_acc": "base_mcq_edit_acc", "probe_true": "probe_true_base"}


def unedited(cells: pd.DataFrame) -> pd.DataFrame:
    """The unedited model's scores on each (task, seed), as rows of localization ``"unedited model"``.

    Every cell records the scores of the model before its edit (the same for all localizations of a task
    and seed); this collects them under the metric names, so that appended to the cells they give the table
    and the bars a reference row: ``aggregate(pd.concat([cells, unedited(cells)]))``. Metrics without a
    before-edit value (edit, relearning, loss change) stay empty; cells saved before a field was recorded
    are skipped for it.
    """
    cols = [c for c in BASE_OF.values() if c in cells]
    if not cols:
        return pd.DataFrame(columns=["task", "localization", "seed"])
    first = cells.groupby(["task", "seed"], sort=False)[cols].first()  # first recorded value of each field
    return first.rename(columns={v: k for k, v in BASE_OF.items()}).reset_index().assign(localization=UNEDITED)


def table(agg: pd.DataFrame, task: str | None = None) -> pd.DataFrame:
    """The paper-style wide table: rows (task, localization), columns metrics, cells ``mean ± ci``."""
    sub = agg if task is None else agg[agg["task"] == task]
    fmt = sub.assign(cell=[f"{m:.2f}" + ("" if np.isnan(c) else f" ± {c:.2f}") for m, c in zip(sub["mean"], sub["ci95"])])
    wide = fmt.pivot_table(index=["task", "localization"], columns="metric", values="cell", aggfunc="first", sort=False)
    return wide.reindex(columns=[m for m in METRICS if m in wide.columns])


#: multiple choice offers four options (A-D)
MCQ_CHANCE = 0.25

CLAIMS = (
    ("FLU edits generalise to multiple choice better than OT edits", "mcq_edit_acc"),
    ("FLU edits leave less of the true answer in multiple choice than OT edits", "mcq_forget_acc"),
    ("FLU edits generalise to paraphrases better than OT edits (CounterFact)", "paraphrase_edit_acc"),
    ("FLU edits resist relearning better than OT edits", "relearn_acc"),
    ("FLU edits leave less latent knowledge for probes than OT edits", "probe_true"),
)
SIDE_EFFECTS = (("maintain accuracy is comparable", "maintain_acc", 0.1),
                ("general-text loss change is comparable", "lm_loss_change", 0.1))


def _mcq_note(cells: pd.DataFrame) -> str:
    """Which tasks' MCQ numbers follow a preferred option rather than the fact (unedited accuracy ≤ chance)."""
    if "base_mcq_forget_acc" not in cells or not cells["base_mcq_forget_acc"].notna().any():
        return ""
    per_task = cells.groupby(["task", "seed"], sort=False)["base_mcq_forget_acc"].first().groupby(level=0, sort=False).mean()
    low = per_task[per_task <= MCQ_CHANCE]
    if low.empty:
        return ""
    values = ", ".join(f"{v:.2f} ({t})" for t, v in low.items())
    others = "" if len(low) == per_task.notna().sum() else "; on the other tasks it is above chance"
    return (f"before any edit the model answers this share of these questions right: {values} (chance "
            f"{MCQ_CHANCE:.2f}): its MCQ answers on these tasks follow a preferred option, not the fact{others}")


def verdicts(cells: pd.DataFrame, flu: str = "fact lookup",
             ot: tuple[str, ...] = ("OT (causal tracing)", "OT (attribution patching)"),
             by_dataset: bool = True) -> pd.DataFrame:
    """The paper's claims checked on this run, with numbers.

    For each dataset (``dataset`` column: the paper makes its claims on Sports Facts and on CounterFact
    separately), each claim and each output-tracing variant, the two localizations are compared pair by pair:
    on each (task, seed) both ran — the same facts to edit, the same data — the difference FLU − OT of the
    metric; ``diff_mean ± diff_ci95`` (Student t) over those pairs, pooled over the dataset's tasks and
    seeds. **supported** when FLU is better and the interval excludes zero, **direction only** when it is
    better within noise, **not supported** otherwise, **no data** when no pair has a value (e.g. MCQ on a
    task without it). Side effects are **comparable** when the mean difference is under the tolerance.
    ``flu_mean``/``ot_mean`` (± their own intervals) are over the same pairs; ``n_flu``/``n_ot`` count each
    side's cells with a value.
    When the cells span both datasets, rows with ``dataset="all"`` pool them as well; ``by_dataset=False``
    gives only those.
    ``note`` flags the MCQ claims when the unedited model's multiple-choice accuracy on the edited facts
    (``base_mcq_forget_acc``, per task, averaged over seeds) is at or below chance, naming the tasks.
    """
    if by_dataset and len(cells):
        of = cells["task"].map(dataset_of)
        groups = [(d, cells[of == d]) for d in ("sports", "counterfact") if (of == d).any()]
        if len(groups) > 1:
            groups.append(("all", cells))
    else:
        groups = [("all", cells)]
    frames = [_verdicts(sub, flu, ot).assign(dataset=name) for name, sub in groups]
    cols = ["dataset", "claim", "versus", "metric", "flu_mean", "flu_ci95", "ot_mean", "ot_ci95", "diff_mean",
            "diff_ci95", "n_pairs", "n_flu", "n_ot", "verdict", "note"]
    return pd.concat(frames, ignore_index=True).reindex(columns=cols) if frames else pd.DataFrame(columns=cols)


def _paired(cells: pd.DataFrame, flu: str, other: str, metric: str) -> tuple[np.ndarray, np.ndarray, int, int]:
    """FLU's and the other localization's values of ``metric`` on the (task, seed) pairs both have, in the same
    order, and how many cells each side has on its own."""
    if metric not in cells:
        return np.array([]), np.array([]), 0, 0
    side = {loc: cells[cells["localization"] == loc].dropna(subset=[metric]).drop_duplicates(["task", "seed"])
            .set_index(["task", "seed"])[metric] for loc in (flu, other)}
    both = side[flu].index.intersection(side[other].index, sort=False)
    return (side[flu].loc[both].to_numpy(dtype=float), side[other].loc[both].to_numpy(dtype=float),
            len(side[flu]), len(side[other]))


def _verdicts(cells: pd.DataFrame, flu: str, ot: tuple[str, ...]) -> pd.DataFrame:
    mcq_note = _mcq_note(cells)
    rows = []
    for other in ot:
        if other not in set(cells["localization"]) or flu not in set(cells["localization"]):
            continue
        for claim, metric, tol in [(c, m, None) for c, m in CLAIMS] + [(f"side effects: {c} (|Δ| < {t})", m, t)
                                                                       for c, m, t in SIDE_EFFECTS]:
            a, b, n_a, n_b = _paired(cells, flu, other, metric)
            (ma, ca), (mb, cb), (md, cd) = mean_ci95(a), mean_ci95(b), mean_ci95(a - b)
            if len(a) == 0:
                verdict = "no data"
            elif tol is not None:
                verdict = "comparable" if abs(md) < tol else "different"
            else:
                better = md > 0 if HIGHER_IS_BETTER[metric] else md < 0
                verdict = ("supported" if not np.isnan(cd) and abs(md) > cd else "direction only") if better \
                    else "not supported"
            rows.append(dict(claim=claim, versus=other, metric=metric, flu_mean=ma, flu_ci95=ca, ot_mean=mb, ot_ci95=cb,
                             diff_mean=md, diff_ci95=cd, n_pairs=len(a), n_flu=n_a, n_ot=n_b, verdict=verdict,
                             note=mcq_note if metric.startswith("mcq") and verdict != "no data" else ""))
    return pd.DataFrame(rows)


def plot_metrics(agg: pd.DataFrame, metrics: tuple[str, ...] = ("edit_acc", "maintain_acc", "mcq_edit_acc",
                                                                 "relearn_acc", "probe_true", "lm_loss_change")):
    """Bars per metric: localization × task, with the 95% CI as error bars."""
    import matplotlib.pyplot as plt

    present = [m for m in metrics if m in set(agg["metric"])]
    fig, axes = plt.subplots(1, len(present), figsize=(3.2 * len(present), 3.6), squeeze=False, sharey=False)
    names = list(dict.fromkeys(agg["localization"]))
    order = [n for n in (UNEDITED, *LOCALIZATIONS) if n in names] + [n for n in names if n not in LOCALIZATIONS and n != UNEDITED]
    task_names = list(dict.fromkeys(agg["task"]))
    width = 0.8 / max(1, len(task_names))
    for ax, m in zip(axes[0], present):
        sub = agg[agg["metric"] == m]
        for k, t in enumerate(task_names):
            s = sub[sub["task"] == t].set_index("localization").reindex(order)
            x = np.arange(len(order)) + (k - (len(task_names) - 1) / 2) * width
            ax.bar(x, s["mean"], width, yerr=s["ci95"].fillna(0), label=t, capsize=2)
        ax.set_xticks(np.arange(len(order)), order, rotation=60, ha="right", fontsize=8)
        ax.set_title(m, fontsize=10)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return fig

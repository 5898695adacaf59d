"""Pre-registration: the plan of a comparison, fixed before the grid that tests it runs.

A comparison of localizations has many knobs that can be turned after the results are in: which layers the probes
read, which metric stands for "relearning", which localizations a method is compared with, how close counts as
"comparable", which edits are dropped. Turned after the fact, each can make a verdict; fixed before, each can fail.
The plan file (TOML) writes them down, with a comment on where each choice comes from, and is committed before the
grid runs. A grid run reads it with :func:`require`, which refuses to go on without one. The plans this package ships
live in ``mechunlearn_nb/plans/`` and are named by their stem (``"v2"``); any other plan is given by its path.

The file's tables (all required unless marked optional; see ``mechunlearn_nb/plans/v3.toml`` for a complete one):

- ``[plan]``: ``name``, ``alpha`` (family-wise level), ``correction`` (``"holm"``), ``test_seeds``,
  ``tuning_seed`` (never a test seed), ``n_boot`` and ``level`` of the two-level bootstrap;
- ``[probe]``: ``window = [first, last]`` (residual-stream layers the probe claim reads), ``late_layers``;
- ``[testability]``: ``margin`` above chance the unedited model's held-out accuracy interval must clear;
- ``[exclusions]``: ``edit_completeness`` (edit accuracy on the trained prompts an edit must reach before it is
  attacked; below it the edit is reported and excluded), ``min_held_out`` (facts in a relearning attack's held-out half);
- ``[[claims]]``: ``id``, ``statement``, ``metric``, ``higher_is_better``, ``instrument`` (a prompt format of
  :data:`.statistics.CHANCE`, or any name with an explicit ``chance``), ``datasets``;
- ``[[side_effects]]``: ``id``, ``metric``, ``margin`` (the equivalence margin of a TOST);
- ``[comparators]``: ``subject`` (the localization the claims are about) and ``versus`` (registry labels or keys);
- ``[grid]``: ``tasks`` (grid task names), ``precision`` (the training forward pass, ``train.PRECISIONS``),
  ``relearn_steps`` (where the relearning curve is measured); optional ``relocate_per_seed`` (true: every seed
  locates the localizations again from its own evidence sample, :class:`.grid.GridConfig`; default false);
- ``[tuning]``: ``factors`` (candidate rates: each localization kind's default times these, :mod:`.tuning`);
  optional ``fallback_steps`` (edit steps of a second try for a localization with no complete edit);
- ``[attack]``: ``settings`` (from :data:`.grid.ATTACK_SETTINGS`), ``min_separation`` (the positive minus negative
  control's held-out probability area a setting must reach to carry a relearning claim); optional
  ``positive_task`` and ``positive_components`` (the positive control of the calibration: an edit of that task
  confined to those components; default: the last four MLPs on ``edit 64 athletes``, plan v2's).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import registry
from .statistics import CHANCE

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

CORRECTIONS = ("holm",)
DATASETS = ("sports", "counterfact")
FLOAT = (float, int)  # TOML writes 1 for 1.0
_FIX = "Fix: edit the plan file (mechunlearn_nb/plans/v3.toml is a complete example) and commit it before the grid runs."
#: the plans shipped with the package, each named by its file's stem (``"v2"``)
SHIPPED = Path(__file__).resolve().parent / "plans"
#: the plan notebook 09, ``run --workers`` and ``grid-status`` use unless told otherwise (v3: v2 trained in float32,
#: with a fallback for edits that never complete and a positive control that can; see its header)
CURRENT = "v3"


class PlanError(ValueError):
    """A plan file is missing or malformed; the message names the file, the problem and the fix."""


@dataclass(frozen=True)
class Claim:
    """One pre-registered claim: ``subject`` beats each comparator on ``metric``, measured with ``instrument``."""

    id: str
    statement: str
    metric: str
    higher_is_better: bool
    instrument: str
    chance: float
    datasets: tuple[str, ...]


@dataclass(frozen=True)
class SideEffect:
    """A side effect judged comparable by an equivalence test (TOST) within ``±margin``."""

    id: str
    metric: str
    margin: float


@dataclass(frozen=True)
class Plan:
    """A loaded, checked plan (see the module docstring for the file's fields)."""

    path: Path
    name: str
    alpha: float
    correction: str
    test_seeds: tuple[int, ...]
    tuning_seed: int
    n_boot: int
    level: float
    probe_window: tuple[int, int]
    late_layers: int
    testability_margin: float
    edit_completeness: float
    min_held_out: int
    subject: str
    comparators: tuple[str, ...]
    claims: tuple[Claim, ...]
    side_effects: tuple[SideEffect, ...]
    tasks: tuple[str, ...] = ()
    precision: str = "float32"
    relearn_steps: tuple[int, ...] = (0, 5, 10, 20)
    tuning_factors: tuple[float, ...] = (0.5, 1.0, 2.0)
    attack_settings: tuple[str, ...] = ("scaled",)
    min_separation: float = 0.05
    tuning_fallback_steps: int | None = None
    positive_task: str = "edit 64 athletes"
    positive_components: tuple[str, ...] = ("m14", "m15", "m16", "m17")
    relocate_per_seed: bool = False

    @property
    def localizations(self) -> tuple[str, ...]:
        """The grid's localizations: the subject, then its comparators."""
        return (self.subject, *self.comparators)

    @property
    def family_size(self) -> int:
        """How many tests share the correction: every claim × dataset × comparator, and every side effect ×
        comparator (per dataset)."""
        n_claims = sum(len(c.datasets) for c in self.claims) * len(self.comparators)
        return n_claims + len(self.side_effects) * len(DATASETS) * len(self.comparators)


def _fail(path: Path, problem: str) -> PlanError:
    return PlanError(f"Plan {path}: {problem}. {_FIX}")


def _get(path: Path, table: dict, where: str, key: str, kind, check=None, hint: str = ""):
    if key not in table:
        raise _fail(path, f"{where} has no {key!r}{hint}")
    value = table[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
        raise _fail(path, f"{where}.{key} = {value!r} should be {' or '.join(k.__name__ for k in kinds)}")
    if check is not None and not check(value):
        raise _fail(path, f"{where}.{key} = {value!r} is out of range{hint}")
    return value


def _table(path: Path, raw: dict, key: str) -> dict:
    if not isinstance(raw.get(key), dict):
        raise _fail(path, f"the [{key}] table is missing")
    return raw[key]


def shipped() -> list[str]:
    """The names of the plans shipped with the package (``mechunlearn_nb/plans/<name>.toml``)."""
    return sorted(f.stem for f in SHIPPED.glob("*.toml"))


def resolve(plan: str | Path) -> Path:
    """The file of a plan given by path, or by the name of a shipped plan (``"v2"``); a path that exists wins."""
    path = Path(plan)
    if path.is_file() or path.suffix or len(path.parts) > 1:
        return path
    if (SHIPPED / f"{plan}.toml").is_file():
        return SHIPPED / f"{plan}.toml"
    raise PlanError(f"No plan named {str(plan)!r}: the shipped plans are {shipped()} and there is no file {path}. "
                    f"Fix: give a shipped plan's name or the path of a plan file.")


def load(path: str | Path) -> Plan:
    """Read and check a plan file (a path, or a shipped plan's name: :func:`resolve`); :class:`PlanError` (naming the
    file, the field and the fix) when anything is off."""
    path = resolve(path)
    if not path.is_file():
        raise PlanError(f"No plan file at {path}. A grid is compared only against a plan fixed before it runs. "
                        f"Fix: write one (copy mechunlearn_nb/plans/v3.toml, keep its comments on where each choice "
                        f"comes from), commit it, and pass its path.")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise _fail(path, f"it is not valid TOML ({e})") from None
    top = _table(path, raw, "plan")
    alpha = _get(path, top, "[plan]", "alpha", FLOAT, lambda v: 0 < v < 1, " (0 < alpha < 1)")
    correction = _get(path, top, "[plan]", "correction", str, lambda v: v in CORRECTIONS, f" (one of {CORRECTIONS})")
    seeds = _get(path, top, "[plan]", "test_seeds", list, lambda v: len(v) >= 2 and all(isinstance(s, int) and not
                                                                                          isinstance(s, bool) for s in v),
                 " (at least two integer seeds)")
    tuning = _get(path, top, "[plan]", "tuning_seed", int)
    if tuning in seeds:
        raise _fail(path, f"tuning_seed {tuning} is also a test seed; rates tuned on a test seed favour the tuned method")
    probe = _table(path, raw, "probe")
    window = _get(path, probe, "[probe]", "window", list, lambda v: len(v) == 2 and all(isinstance(x, int) for x in v)
                  and 0 <= v[0] <= v[1], " ([first, last] layers, 0 ≤ first ≤ last)")
    testability = _table(path, raw, "testability")
    exclusions = _table(path, raw, "exclusions")
    comparators = _table(path, raw, "comparators")
    subject = _get(path, comparators, "[comparators]", "subject", str)
    versus = _get(path, comparators, "[comparators]", "versus", list, lambda v: len(v) >= 1)
    try:
        subject, *versus = registry.check_names((subject, *versus))
    except ValueError as e:
        raise _fail(path, f"[comparators] names an unknown localization ({e})") from None
    if subject in versus:
        raise _fail(path, f"[comparators] compares {subject!r} with itself")

    claims_raw = raw.get("claims")
    if not isinstance(claims_raw, list) or not claims_raw:
        raise _fail(path, "there is no [[claims]] entry")
    claims = []
    for i, c in enumerate(claims_raw):
        where = f"[[claims]] #{i + 1}"
        instrument = _get(path, c, where, "instrument", str)
        chance = c.get("chance", CHANCE.get(instrument))
        if isinstance(chance, bool) or not isinstance(chance, FLOAT) or not 0 <= chance < 1:
            raise _fail(path, f"{where} ({c.get('id', '?')}): instrument {instrument!r} has no known chance level "
                              f"(known: {sorted(CHANCE)}); give chance = <float in [0, 1)>")
        datasets = _get(path, c, where, "datasets", list, lambda v: v and set(v) <= set(DATASETS), f" (from {DATASETS})")
        claims.append(Claim(id=_get(path, c, where, "id", str), statement=_get(path, c, where, "statement", str),
                            metric=_get(path, c, where, "metric", str),
                            higher_is_better=_get(path, c, where, "higher_is_better", bool),
                            instrument=instrument, chance=float(chance), datasets=tuple(datasets)))
    effects = [SideEffect(id=_get(path, s, f"[[side_effects]] #{i + 1}", "id", str),
                          metric=_get(path, s, f"[[side_effects]] #{i + 1}", "metric", str),
                          margin=_get(path, s, f"[[side_effects]] #{i + 1}", "margin", FLOAT, lambda v: v > 0, " (> 0)"))
               for i, s in enumerate(raw.get("side_effects") or [])]
    design = _table(path, raw, "grid")
    task_names = _get(path, design, "[grid]", "tasks", list, lambda v: len(v) >= 1 and all(isinstance(t, str) for t in v))
    from .grid import TASK_PATTERN  # (grid does not import plan)
    unknown = [t for t in task_names if not TASK_PATTERN.fullmatch(t)]
    if unknown:
        raise _fail(path, f"[grid].tasks names unknown task(s) {unknown} (e.g. 'edit 64 athletes', 'forget 64 athletes', "
                          f"'counterfact 64')")
    from .train import PRECISIONS
    precision = _get(path, design, "[grid]", "precision", str, lambda v: v in PRECISIONS, f" (one of {PRECISIONS})")
    steps = _get(path, design, "[grid]", "relearn_steps", list, lambda v: len(v) >= 2 and v[0] == 0 and
                 all(isinstance(x, int) for x in v) and v == sorted(set(v)), " (increasing integer steps from 0)")
    tuning_table = _table(path, raw, "tuning")
    factors = _get(path, tuning_table, "[tuning]", "factors", list, lambda v: v and all(isinstance(f, FLOAT) and f > 0 for f in v),
                   " (positive numbers)")
    from .grid import ATTACK_SETTINGS
    attack = _table(path, raw, "attack")
    settings = _get(path, attack, "[attack]", "settings", list, lambda v: v and set(v) <= set(ATTACK_SETTINGS),
                    f" (from {ATTACK_SETTINGS})")
    separation = _get(path, attack, "[attack]", "min_separation", FLOAT, lambda v: 0 <= v < 1)
    fallback = (_get(path, tuning_table, "[tuning]", "fallback_steps", int, lambda v: v >= 1, " (≥ 1 edit steps)")
                if "fallback_steps" in tuning_table else None)
    positive_task = (_get(path, attack, "[attack]", "positive_task", str, TASK_PATTERN.fullmatch,
                          " (a task name like 'forget 64 athletes')") if "positive_task" in attack else Plan.positive_task)
    positive = (_get(path, attack, "[attack]", "positive_components", list,
                     lambda v: v and all(isinstance(c, str) for c in v), " (component names, e.g. ['m14', 'm15'])")
                if "positive_components" in attack else Plan.positive_components)
    relocate = (_get(path, design, "[grid]", "relocate_per_seed", bool) if "relocate_per_seed" in design
                else Plan.relocate_per_seed)
    ids = [c.id for c in claims] + [s.id for s in effects]
    if len(set(ids)) != len(ids):
        raise _fail(path, f"claim and side-effect ids must be unique; got {ids}")
    return Plan(path=path, name=_get(path, top, "[plan]", "name", str), alpha=alpha, correction=correction,
                test_seeds=tuple(seeds), tuning_seed=tuning,
                n_boot=_get(path, top, "[plan]", "n_boot", int, lambda v: v >= 1000, " (≥ 1000)"),
                level=_get(path, top, "[plan]", "level", FLOAT, lambda v: 0.5 <= v < 1, " (0.5 ≤ level < 1)"),
                probe_window=(window[0], window[1]),
                late_layers=_get(path, probe, "[probe]", "late_layers", int, lambda v: v >= 1, " (≥ 1)"),
                testability_margin=_get(path, testability, "[testability]", "margin", FLOAT, lambda v: 0 <= v < 1),
                edit_completeness=_get(path, exclusions, "[exclusions]", "edit_completeness", FLOAT,
                                       lambda v: 0 < v <= 1, " (0 < completeness ≤ 1)"),
                min_held_out=_get(path, exclusions, "[exclusions]", "min_held_out", int, lambda v: v >= 1, " (≥ 1)"),
                subject=subject, comparators=tuple(versus), claims=tuple(claims), side_effects=tuple(effects),
                tasks=tuple(task_names), precision=precision, relearn_steps=tuple(steps),
                tuning_factors=tuple(float(f) for f in factors), attack_settings=tuple(settings),
                min_separation=float(separation), tuning_fallback_steps=fallback, positive_task=positive_task,
                positive_components=tuple(positive), relocate_per_seed=relocate)


def grid_config(p: Plan, rates: dict | None = None, components: dict | None = None, mcq_debiased: int = 64,
                **sizes):
    """The :class:`~mechunlearn_nb.grid.GridConfig` of a plan: its tasks, subject and comparators, test seeds,
    probe window, relearning steps and attack settings, training precision, the debiased multiple choice on
    ``mcq_debiased`` held-out facts, the tuned ``rates`` (``scripts/tune_rates.py``'s ``rates.json``:
    ``{dataset: {label: lr}}``) and located ``components`` if given. The edits' training accuracy is measured
    at their last step only (the completeness the plan's exclusions read). ``sizes``: other GridConfig fields.
    """
    from .grid import GridConfig  # (grid does not import plan)

    mixed = {"precision": p.precision}
    fields = dict(tasks=p.tasks, localizations=p.localizations, seeds=p.test_seeds, relearn_steps=p.relearn_steps,
                  attack_settings=p.attack_settings, probe_window=p.probe_window,
                  relocate_per_seed=p.relocate_per_seed)
    fields.update(sizes)  # (a part of the plan: notebook_config's selection; FAST's toy sizes)
    return GridConfig(edit_overrides={"eval_every": 0, **mixed, **fields.pop("edit_overrides", {})},
                      relearn_overrides={**mixed, **fields.pop("relearn_overrides", {})},
                      rates=rates, components=components, mcq_debiased=mcq_debiased, **fields)


def require(path: str | Path | None) -> Plan:
    """The plan a grid run must have: :func:`load` of ``path``, refusing ``None`` (no plan given) as clearly as a
    missing or malformed file."""
    if path is None:
        raise PlanError("This grid run has no plan. A comparison is tested against claims, metrics, comparators, "
                        f"margins and exclusions fixed before it runs. Fix: name a shipped plan ({shipped()}, e.g. "
                        f"PLAN = \"{CURRENT}\" in notebook 09) or pass the path of a committed plan file.")
    return load(path)


#: what notebook 09's ``FAST=True`` keeps of a plan: the design (its instruments, exclusions, analysis), at toy size —
#: one small task, fact lookup against one output-tracing variant with notebook 03's full-size components, the
#: plan's first two test seeds, the first attack setting, short edits and attacks. Not the study: a way to see it run.
FAST_LOCALIZATIONS = ("fact lookup", "OT (attribution patching)")
FAST_SIZES = dict(tasks=("edit 8 athletes",), n_known=200, max_maintain=16, relearn_steps=(0, 3), n_unrelated=8,
                  mcq_debiased=8,
                  edit_overrides=dict(steps=10, batch_size=4, maintain_batch_size=4, lm_tokens=16, lm_window=16,
                                      eval_facts=8),
                  relearn_overrides=dict(batch_size=4, maintain_batch_size=4, lm_tokens=16, lm_window=16),
                  eval_overrides=dict(n_paragraphs=2, lm_tokens=32, formats=("fact", "qa")))


def _subset(p: Plan, name: str, given, planned: tuple, canonical=tuple) -> tuple:
    """``given`` (a notebook parameter, its values made canonical: localization keys become labels) as a part of the
    plan's ``planned`` values; None: all of them."""
    if given is None:
        return planned
    values = canonical(given)
    extra = [v for v in values if v not in planned]
    if extra:
        raise PlanError(f"{name} = {list(given)} runs {extra}, which plan {p.name!r} ({p.path}) does not hold: its "
                        f"{name.lower()} are {list(planned)}. A pre-registered grid runs only its plan's cells. Fix: "
                        f"leave {name} = None (the whole plan) or pick a part of it; a new design is a new plan file.")
    return values


def read_rates(rates) -> dict | None:
    """A grid's tuned rates: ``{dataset: {label: lr}}`` as given, or the file ``scripts/tune_rates.py`` wrote
    (``rates.json``, whose ``rates`` entry holds them); None: each localization's default rate."""
    if rates is None or isinstance(rates, dict):
        return rates
    if not isinstance(rates, (str, Path)):
        raise PlanError(f"RATES = {rates!r}: give the path of a rates.json (scripts/tune_rates.py), a dict "
                        f"{{dataset: {{localization: lr}}}}, or None (each localization's default rate).")
    import json

    path = Path(rates)
    if not path.is_file():
        raise PlanError(f"RATES = {str(rates)!r}: no such file. Fix: the rates.json that scripts/tune_rates.py wrote "
                        f"for this plan, or None (each localization's default rate).")
    chosen = json.loads(path.read_text(encoding="utf-8")).get("rates")
    if not isinstance(chosen, dict):
        raise PlanError(f"{path} has no 'rates' entry. Fix: point RATES at the rates.json of scripts/tune_rates.py.")
    # a rate alone, or with its edit steps where the tuning chose other steps than its own (fallback_steps)
    from .editing import EditConfig

    tuned_at = json.loads(path.read_text(encoding="utf-8")).get("edit_overrides", {}).get("steps", EditConfig().steps)

    def rate(r):
        if not isinstance(r, dict):
            return float(r)
        steps = r.get("steps")
        return float(r["lr"]) if steps in (None, tuned_at) else {"lr": float(r["lr"]), "steps": int(steps)}

    return {ds: {label: rate(r) for label, r in by.items()} for ds, by in chosen.items()}


def _calibration(p: Plan, calibration) -> tuple[Path, dict]:
    """A calibration file of plan ``p``, read and checked (see :func:`attack_setting`)."""
    import json

    path = Path(calibration)
    if not path.is_file():
        raise PlanError(f"CALIBRATION = {str(calibration)!r}: no such file. Fix: the calibration.json that "
                        f"scripts/calibrate_attack.py wrote for plan {p.name!r}, or None (the plan's first setting).")
    record = json.loads(path.read_text(encoding="utf-8"))
    if record.get("plan") != p.name:
        raise PlanError(f"{path} calibrates plan {record.get('plan')!r}, not {p.name!r}. Fix: run "
                        f"scripts/calibrate_attack.py --plan {p.name} and point CALIBRATION at its calibration.json.")
    primary = record.get("primary")
    if primary is not None and primary not in p.attack_settings:
        raise PlanError(f"{path} names the setting {primary!r}; plan {p.name!r} runs {list(p.attack_settings)}. Fix: "
                        f"a calibration of this plan.")
    return path, record


def attack_untestable(p: Plan, calibration=None) -> str | None:
    """Why a plan's relearning claims cannot be judged on this model, or None when they can: the calibration found
    no attack setting that separates the positive control from the negative one by the plan's ``min_separation``
    (the plan: such a setting "cannot separate localizations and is reported only"). None without a calibration."""
    if calibration is None:
        return None
    path, record = _calibration(p, calibration)
    if record.get("primary") is not None:
        return None
    return (f"no attack setting separated the calibration's positive control from its negative one by "
            f"{record.get('min_separation')} ({record.get('settings')}; {path.name})")


def attack_setting(p: Plan, calibration=None, unseparated: str = "refuse") -> str:
    """The attack setting a plan's relearning claims read: the primary one of its calibration
    (``calibration.json`` of ``scripts/calibrate_attack.py``: the setting whose positive and negative controls
    separate most, by the plan's ``[attack]`` rule), or the plan's first setting when ``calibration`` is None.

    Refuses a calibration of another plan and one naming a setting the plan does not run. A calibration in which no
    setting separated the controls (the attack then cannot tell edits apart on this model) is refused with
    ``unseparated="refuse"``; with ``"first"`` the plan's first setting is returned, for curves that are only
    reported, and :func:`attack_untestable` says why the relearning claims cannot be judged.
    """
    if unseparated not in ("refuse", "first"):
        raise ValueError(f"unseparated={unseparated!r}: choose 'refuse' or 'first'.")
    if calibration is None:
        return p.attack_settings[0]
    path, record = _calibration(p, calibration)
    if record.get("primary") is None:
        if unseparated == "first":
            return p.attack_settings[0]
        raise PlanError(f"{path}: {attack_untestable(p, path)}, so the attack cannot tell edits apart on this model "
                        f"and no relearning measure can be judged with it. Fix: leave the relearning measures out "
                        f"(notebook 09 reports its relearning claims as untestable by itself), or set CALIBRATION = "
                        f"None to read the plan's first setting uncalibrated.")
    return record.get("primary")


def notebook_config(parameters: dict):
    """The grid notebook 09 runs for its parameters (the notebook's names: ``PLAN``, ``FAST``, ``TASKS`` ...).

    The grid is the plan's (:func:`grid_config`): ``PLAN`` names a shipped plan or a plan file and is required
    (:func:`require` refuses ``None``). ``TASKS``, ``LOCALIZATIONS`` and ``SEEDS`` select a part of the plan (None:
    all of it; anything outside it is refused). ``RATES``: the tuned rates (:func:`read_rates`). ``FAST=True``: the
    plan's design at toy size (:data:`FAST_SIZES`, localizations :data:`FAST_LOCALIZATIONS` with notebook 03's
    full-size components unless ``COMPONENTS`` is given; a tuned rate's edit steps give way to the toy size's).
    The notebook and ``run --workers`` (which computes the notebook's cells on Ray before its final pass) build the
    same grid from the same parameters.
    """
    prm = dict(parameters)
    p = require(prm.get("PLAN"))
    if prm.get("FAST"):
        locs = _subset(p, "LOCALIZATIONS", FAST_LOCALIZATIONS, p.localizations, registry.check_names)
        fixed = {n: c for n, c in (prm.get("COMPONENTS") or registry.FAST_COMPONENTS).items() if n in locs}
        # FAST edits at toy size (FAST_SIZES' steps): a tuned rate keeps its learning rate, not its full-size steps
        rates = {ds: {label: r["lr"] if isinstance(r, dict) else r for label, r in by.items()}
                 for ds, by in (read_rates(prm.get("RATES")) or {}).items()} or None
        return grid_config(p, rates=rates, components={"sports": fixed}, localizations=locs,
                           seeds=p.test_seeds[:2], attack_settings=p.attack_settings[:1], **FAST_SIZES)
    tasks = _subset(p, "TASKS", prm.get("TASKS"), p.tasks)
    locs = _subset(p, "LOCALIZATIONS", prm.get("LOCALIZATIONS"), p.localizations, registry.check_names)
    seeds = _subset(p, "SEEDS", prm.get("SEEDS"), p.test_seeds, lambda v: tuple(int(x) for x in v))
    fixed = prm.get("COMPONENTS")
    return grid_config(p, rates=read_rates(prm.get("RATES")), tasks=tasks, localizations=locs, seeds=seeds,
                       components=None if fixed is None else {"sports": {n: c for n, c in fixed.items() if n in locs}},
                       n_locate=prm.get("N_LOCATE", 64), n_known=prm.get("N_KNOWN"), max_forget=prm.get("MAX_FORGET"),
                       max_maintain=prm.get("MAX_MAINTAIN", 256), edit_overrides=prm.get("EDIT_OVERRIDES") or {},
                       relearn_overrides=prm.get("RELEARN_OVERRIDES") or {},
                       eval_overrides=prm.get("EVAL_OVERRIDES") or {}, n_unrelated=prm.get("N_UNRELATED", 48))

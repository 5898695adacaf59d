"""Pre-registration: the plan of a comparison, fixed before the grid that tests it runs.

A comparison of localizations has many knobs that can be turned after the results are in: which layers the probes
read, which metric stands for "relearning", which localizations a method is compared with, how close counts as
"comparable", which edits are dropped. Turned after the fact, each can make a verdict; fixed before, each can fail.
The plan file (TOML, e.g. ``plans/v2.toml``) writes them down, with a comment on where each choice comes from, and is
committed before the grid runs. A grid run reads it with :func:`require`, which refuses to go on without one.

The file's tables (all required; see ``plans/v2.toml`` for a complete one):

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
  ``relearn_steps`` (where the relearning curve is measured);
- ``[tuning]``: ``factors`` (candidate rates: each localization kind's default times these, :mod:`.tuning`);
- ``[attack]``: ``settings`` (from :data:`.grid.ATTACK_SETTINGS`), ``min_separation`` (the positive minus negative
  control's held-out probability area a setting must reach to carry a relearning claim).
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
_FIX = "Fix: edit the plan file (plans/v2.toml is a complete example) and commit it before the grid runs."


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


def load(path: str | Path) -> Plan:
    """Read and check a plan file; :class:`PlanError` (naming the file, the field and the fix) when anything is off."""
    path = Path(path)
    if not path.is_file():
        raise PlanError(f"No plan file at {path}. A grid is compared only against a plan fixed before it runs. "
                        f"Fix: write one (copy plans/v2.toml, keep its comments on where each choice comes from), "
                        f"commit it, and pass its path.")
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
                min_separation=float(separation))


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
    return GridConfig(tasks=p.tasks, localizations=p.localizations, seeds=p.test_seeds, relearn_steps=p.relearn_steps,
                      edit_overrides={"eval_every": 0, **mixed, **sizes.pop("edit_overrides", {})},
                      relearn_overrides={**mixed, **sizes.pop("relearn_overrides", {})},
                      attack_settings=p.attack_settings, rates=rates, components=components,
                      mcq_debiased=mcq_debiased, probe_window=p.probe_window, **sizes)


def require(path: str | Path | None) -> Plan:
    """The plan a grid run must have: :func:`load` of ``path``, refusing ``None`` (no plan given) as clearly as a
    missing or malformed file."""
    if path is None:
        raise PlanError("This grid run has no plan. A comparison is tested against claims, metrics, comparators, "
                        "margins and exclusions fixed before it runs. Fix: pass the path of a committed plan file "
                        "(e.g. plans/v2.toml).")
    return load(path)

"""The named localizations of the series, and one call that builds them.

Guo et al. compare seven ways of choosing the weights an edit may change; all
but the two whole groups get the parameter count of **fact lookup** (FLU, the
MLPs that look the fact up), so that they differ in *where*, not *how much*:

- **fact lookup** (``fact_lookup``): from probes and attribution patching (evidence);
- **OT (causal tracing)** (``ot_causal_tracing``): output tracing ranked by causal tracing, FLU's budget;
- **OT MLPs only** (``ot_mlps_only``): the same, MLPs only;
- **OT (attribution patching)** (``ot_attribution_patching``): output tracing ranked by attribution patching;
- **random** (``random``): random components within FLU's budget, drawn anew for each seed;
- **all MLPs** (``all_mlps``): every MLP, a whole group (no budget);
- **non-localized** (``non_localized``): every attention and MLP weight.

Each is an :class:`Entry`: the label people read (and the name saved in result
files), a stable key, the :class:`~mechunlearn_nb.localization.Kind` of weight
set it is (an edit's tuned learning rate depends on it), and whether it is
*located* from evidence or *built* from fact lookup's budget. Code decides by
entries, never by parsing a label.

:func:`build` makes every named localization of a dataset in one call — from
the evidence (probes, causal tracing, attribution patching on known facts), or
from given component lists such as :data:`FAST_COMPONENTS` — and is what the
notebooks and the comparison grid call.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import pandas as pd

from .localization import Kind, Localization


class Source(str, Enum):
    """Where a localization's components come from."""

    EVIDENCE = "evidence"  # located from evidence (or given as a component list)
    BUDGET = "budget"      # built without evidence: drawn or taken whole, next to fact lookup's budget


@dataclass(frozen=True)
class Entry:
    """One named localization.

    Attributes:
        label: the name shown to people and saved in result files (``"OT (causal tracing)"``).
        key: a stable identifier (``"ot_causal_tracing"``), the same as ``io.slug(label, sep="_")``.
        kind: the kind of weight set its builder makes.
        source: located from evidence, or built from fact lookup's budget.
        evidence: for output tracing, the evidence table it ranks components by: ``"trace"`` (causal tracing),
            ``"attribution"`` (attribution patching); None for the others.
        mlp_only: output tracing restricted to MLPs.
        per_seed: drawn anew for every seed (random components).
    """

    label: str
    key: str
    kind: Kind = Kind.LOCALIZED
    source: Source = Source.EVIDENCE
    evidence: str | None = None
    mlp_only: bool = False
    per_seed: bool = False

    @property
    def located(self) -> bool:
        """Whether it is located from evidence (or given as components) rather than built from a budget."""
        return self.source is Source.EVIDENCE


ENTRIES: tuple[Entry, ...] = (
    Entry("fact lookup", "fact_lookup"),
    Entry("OT (causal tracing)", "ot_causal_tracing", evidence="trace"),
    Entry("OT MLPs only", "ot_mlps_only", evidence="trace", mlp_only=True),
    Entry("OT (attribution patching)", "ot_attribution_patching", evidence="attribution"),
    Entry("random", "random", source=Source.BUDGET, per_seed=True),
    Entry("all MLPs", "all_mlps", kind=Kind.ALL_MLPS, source=Source.BUDGET),
    Entry("non-localized", "non_localized", kind=Kind.NON_LOCALIZED, source=Source.BUDGET),
)
_BY_NAME = {**{e.label: e for e in ENTRIES}, **{e.key: e for e in ENTRIES}}
FLU = ENTRIES[0]

#: every localization's label, in the paper's order
LABELS: tuple[str, ...] = tuple(e.label for e in ENTRIES)
#: the labels located from evidence (or given as components); the others are built from fact lookup's budget
LOCATED: tuple[str, ...] = tuple(e.label for e in ENTRIES if e.located)
#: the labels built without evidence
BUILT_FROM_BUDGET: tuple[str, ...] = tuple(e.label for e in ENTRIES if not e.located)

#: The sports components notebook 03 located at full size on the embedded Gemma 3 270M (fact lookup: the MLPs of
#: blocks 2-5). The FAST runs of notebooks 04-07 and 09 edit these instead of computing the evidence again; they
#: name blocks of that model, so they are no answer for another one.
FAST_COMPONENTS: dict[str, list[str]] = {
    "fact lookup": ["m2", "m3", "m4", "m5"],
    "OT (causal tracing)": ["a12", "m3", "a10", "a11", "m7"],
    "OT (attribution patching)": ["a12", "m3", "m2", "m0", "a11"],
    "OT MLPs only": ["m3", "m2", "m0", "m1"],
}


def entry(name: str) -> Entry:
    """The entry of a label or key; ``ValueError`` naming the choices for any other name."""
    found = _BY_NAME.get(name)
    if found is None:
        raise ValueError(f"Unknown localization {name!r}; choose from {LABELS} (or their keys "
                         f"{tuple(e.key for e in ENTRIES)}).")
    return found


def check_names(names) -> tuple[str, ...]:
    """The labels of ``names`` (labels or keys), in order; ``ValueError`` naming the unknown ones and the choices."""
    unknown = [n for n in names if n not in _BY_NAME]
    if unknown or not names:
        raise ValueError(f"Unknown localization(s) {unknown or '(none given)'}; choose from {LABELS}.")
    return tuple(_BY_NAME[n].label for n in names)


# ---------------------------------------------------------------------------
# Building
# ---------------------------------------------------------------------------


def whole(model, names) -> dict[str, Localization]:
    """The localizations of ``names`` that take a whole group of weights (all MLPs, non-localized), each with its
    :class:`~mechunlearn_nb.localization.Kind`."""
    from . import localization

    builders = {Kind.ALL_MLPS: localization.all_mlps, Kind.NON_LOCALIZED: localization.non_localized}
    chosen = [entry(n) for n in names]
    return {e.label: builders[e.kind](model, name=e.label) for e in chosen if e.kind in builders}


def for_seed(model, locs: dict[str, Localization], name: str, seed: int) -> Localization:
    """The named localization of ``locs``; one drawn per seed (random) is drawn here with fact lookup's budget."""
    from . import localization

    e = entry(name)
    if e.per_seed:
        return localization.random_components(model, budget=locs[FLU.label], seed=seed, name=e.label)
    return locs[e.label]


def fixed(model, components: dict[str, list[str]], names=LABELS) -> dict[str, Localization]:
    """Localizations from given component lists (``{label: [components]}``), plus the whole-group ones in ``names``.

    Raises:
        ValueError: without a ``"fact lookup"`` entry (the others match its budget), or for a name that is not
            located (random and the whole groups are always built, never given).
    """
    if FLU.label not in components:
        raise ValueError("Fixed components need a 'fact lookup' entry: the other localizations match its budget.")
    not_located = [n for n in components if not entry(n).located]
    if not_located:
        raise ValueError(f"Components given for {not_located}, which are built, not located. Fix: give components "
                         f"only for {LOCATED}.")
    built = {entry(n).label: Localization.from_components(model, c, name=entry(n).label,
                                                          meta=dict(method="fixed components"))
             for n, c in components.items()}
    return {**built, **whole(model, names)}


def _counterfact_locate_facts(model, known: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """Known CounterFact facts whose true target is one token (the tracing metric scores one token)."""
    tok = model.tokenizer
    single = known[[len(tok(" " + t, add_special_tokens=False)["input_ids"]) == 1 for t in known["target_true"]]]
    if len(single) == 0:
        raise ValueError("No known CounterFact fact has a single-token true target; cannot trace CounterFact.")
    return single.sample(min(n, len(single)), random_state=seed).reset_index(drop=True)


def locate(model, dataset: str = "sports", names=LABELS, n_locate: int = 64, n_probe: int | None = None,
           seed: int = 0, progress: bool = True, known: pd.DataFrame | None = None,
           residuals: dict | None = None, relation_probes: bool = False) -> tuple[dict, dict]:
    """Locate the localizations of one dataset from evidence, budget-matched to fact lookup.

    Sports: probes on known athletes, causal tracing (noised subjects) and attribution patching
    (subjects swapped for athletes of another sport) on ``n_locate`` known athletes; FLU from the
    probes and the attribution evidence (:func:`localization.fact_lookup`).
    CounterFact: there is no fixed label set to probe, so by default FLU uses the tracing evidence alone
    (causal tracing and attribution patching with noised subjects, on CounterFact prompts) and starts at
    block 0; with ``relation_probes`` each relation's answer set is the label set of a probe
    (:func:`probing.relation_probe_facts`, :func:`probing.relation_probes`) and the rule starts where those
    probes gain accuracy, as for sports (``results/instruments/counterfact_flu/``: m3–m6 instead of m0–m6 on
    the embedded model).
    Causal tracing (minutes) runs only when a localization of ``names`` ranks by it.

    Args:
        known: the known facts to locate with (default: :func:`tasks.known_facts`).
        residuals: the residuals of ``known`` already read (:func:`probing.known_fact_residuals`'s second value),
            for the probes (all of ``known`` only: with ``n_probe`` they are read again for the sample).
        relation_probes: CounterFact only: give the rule per-relation answer probes (needs enough known facts:
            :data:`probing.RELATION_PROBE_RULE`; too few is a ``ValueError`` naming the fix).

    Returns:
        ``({label: Localization}, evidence)``: fact lookup, the located ones of ``names`` and the whole-group
        ones (random is drawn per seed by :func:`for_seed`); ``evidence`` holds the tables used
        (``probes, attribution, trace, flu_layers, n_locate``).
    """
    from . import localization, patching, probing, tasks, tracing

    chosen = [entry(n) for n in names]
    needs_trace = any(e.evidence == "trace" for e in chosen)
    evidence: dict = {}
    if relation_probes and dataset != "counterfact":
        raise ValueError("relation_probes is for CounterFact; sports has its own probes (the sport). Fix: drop it.")
    if dataset == "sports":
        known = tasks.known_facts(model, "sports", progress=progress) if known is None else known
        facts = patching.balanced_sample(known, n_locate, seed=seed)
        probe_facts = known if n_probe is None else known.sample(min(n_probe, len(known)), random_state=seed)
        reuse = residuals if n_probe is None else None
        probes = probing.layer_probes(model, probe_facts, seed=seed, progress=progress, X=reuse).accuracy
        ap_inputs = patching.corrupt_subjects(model, facts, pool=known, seed=seed)
        trace_kwargs = dict(components=("attn", "mlp"), seed=seed, progress=progress)
        trace = tracing.causal_trace(model, facts, **trace_kwargs) if needs_trace else None
    elif dataset == "counterfact":
        known = tasks.known_facts(model, "counterfact", progress=progress) if known is None else known
        facts = _counterfact_locate_facts(model, known, n_locate, seed)
        prompts = [p.format(s) for p, s in zip(facts["prompt"], facts["subject"])]
        probes = None
        if relation_probes:
            probes = probing.relation_probes(model, probing.relation_probe_facts(known, seed=seed), seed=seed,
                                             progress=progress)
        ap_inputs = tracing.noise_inputs(model, facts, prompts=prompts, subject_col="subject", answer_col="target_true",
                                         seed=seed)
        trace = None
        if needs_trace:  # the same noise inputs, restored state by state
            trace = patching.average_over_facts(patching.run_patches(model, ap_inputs, components=("attn", "mlp"), progress=progress))
    else:
        raise ValueError(f"Unknown dataset {dataset!r}; choose 'sports' or 'counterfact'.")
    attribution = patching.average_over_facts(patching.attribution_patching(model, ap_inputs, components=("head", "mlp"),
                                                                   progress=progress))
    flu = localization.fact_lookup(model, probes, attribution)
    evidence.update(probes=probes, attribution=attribution, trace=trace, flu_layers=flu.meta.get("layers"),
                    n_locate=len(facts))
    built = {FLU.label: flu}
    tables = {"trace": trace, "attribution": attribution}
    for e in chosen:
        if e.evidence is not None:
            # MLPs-only tracing falls back on attribution when no causal trace was computed
            table = tables[e.evidence] if tables[e.evidence] is not None else attribution
            built[e.label] = localization.output_tracing(model, table, budget=flu, mlp_only=e.mlp_only, name=e.label)
    built.update(whole(model, names))
    return built, evidence


def build(model, names=LABELS, dataset: str = "sports", components: dict[str, list[str]] | None = None,
          seed: int = 0, n_locate: int = 64, n_probe: int | None = None, known: pd.DataFrame | None = None,
          progress: bool = False, fast: bool = False) -> tuple[dict[str, Localization], dict]:
    """Every named localization of a dataset, in one call.

    With ``components`` holding ``"fact lookup"``, the located ones are taken from the component lists
    (e.g. :data:`FAST_COMPONENTS`, or what notebook 03 located) and nothing is computed; otherwise they
    are located from evidence (:func:`locate`), and any given list replaces its located one. Random
    components are drawn with ``seed`` and fact lookup's budget; all MLPs and non-localized take their
    whole groups. Each localization carries the :class:`~mechunlearn_nb.localization.Kind` of its entry.

    Args:
        names: labels (or keys) to build; fact lookup is built whatever they are (the others match its budget).
        dataset: ``"sports"`` or ``"counterfact"``.
        components: ``{label: [component, ...]}`` for located localizations (``"m3"``, ``"a12"``, ``"a5.h2"``).
        seed: the evidence's facts and probes, and the random components.
        n_locate: known facts for causal tracing and attribution patching.
        n_probe: known facts for the probes (None: all known).
        known: the known facts to locate with (default: :func:`tasks.known_facts`).
        residuals: the residuals of ``known`` already read (:func:`probing.known_fact_residuals`'s second value),
            for the probes (all of ``known`` only: with ``n_probe`` they are read again for the sample).
        fast: with no ``components``, take :data:`FAST_COMPONENTS` instead of locating (the notebooks'
            ``FAST`` switch: the evidence is computed at full size only).

    Returns:
        ``({label: Localization}, evidence)``: ``names`` in order (fact lookup first when not among them);
        ``evidence`` as in
        :func:`locate` (``{"flu_layers", "n_locate": 0}`` when every located one was given).
    """
    names = check_names(names)
    if components is None and fast:
        components = FAST_COMPONENTS if dataset == "sports" else None
    given = {entry(n).label: list(c) for n, c in (components or {}).items()}
    if FLU.label in given:
        missing = [n for n in names if entry(n).located and n not in given]
        if missing:
            raise ValueError(f"components fix 'fact lookup' but not {missing}, whose budgets would then not match it. "
                             f"Fix: give components for them too, or leave 'fact lookup' out to locate them all.")
        built = fixed(model, given, names)
        evidence = {"flu_layers": [int(c[1:]) for c in given[FLU.label] if c.startswith("m")], "n_locate": 0}
    else:
        built, evidence = locate(model, dataset, names, n_locate=n_locate, n_probe=n_probe, seed=seed,
                                 progress=progress, known=known)
        built.update({n: Localization.from_components(model, c, name=n, meta=dict(method="fixed components"))
                      for n, c in given.items()})
    for n in names:
        if entry(n).per_seed:
            built[n] = for_seed(model, built, n, seed)
    order = dict.fromkeys(names if FLU.label in names else (FLU.label, *names))
    return {n: built[n] for n in order}, evidence


def sizes(locs: dict[str, Localization], max_listed: int = 8) -> pd.DataFrame:
    """One row per localization: ``localization, kind, n_params, components`` (listed when at most ``max_listed``)."""
    return pd.DataFrame([dict(localization=n, kind=loc.kind.value, n_params=loc.n_params,
                              components=", ".join(loc.components) if len(loc.components) <= max_listed
                              else f"{len(loc.components)} components") for n, loc in locs.items()])


def stability(model, dataset: str = "sports", seeds=(0, 1, 2), n_locate: int = 64, n_probe: int | None = None,
              known: pd.DataFrame | None = None, progress: bool = False, residuals: dict | None = None,
              relation_probes: bool = False) -> pd.DataFrame:
    """Fact lookup located again from other samples of its evidence: does the range hold still?

    For each seed, :func:`locate` draws the known facts it patches (and, for sports, the probes' train/test split)
    with that seed and applies the same rule. The first seed is the reference. ``residuals``: as in :func:`locate`
    (read once for every seed).

    Returns:
        One row per seed: ``seed, layers`` (FLU's MLP blocks), ``n_mlps``, ``same_as_first`` and ``jaccard``
        (shared blocks / blocks in either, against the first seed's).
    """
    rows, first = [], None
    for seed in seeds:
        _, evidence = locate(model, dataset, names=(FLU.label,), n_locate=n_locate, n_probe=n_probe, seed=seed,
                             progress=progress, known=known, residuals=residuals, relation_probes=relation_probes)
        layers = [int(x) for x in evidence["flu_layers"]]
        first = layers if first is None else first
        union = set(layers) | set(first)
        rows.append(dict(seed=seed, layers=layers, n_mlps=len(layers), same_as_first=layers == first,
                         jaccard=len(set(layers) & set(first)) / len(union) if union else 1.0))
    return pd.DataFrame(rows)

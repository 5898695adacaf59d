"""Localizations: which weights an edit may change.

A :class:`Localization` is a named set of weights of the model — whole weight
matrices (an attention layer's Q/K/V/O, an MLP's gate/up/down) or slices of
them (one head's rows of W_Q and columns of W_O) — with its parameter count.
Editing trains exactly these weights and freezes everything else
(:meth:`Localization.trainable`), so the comparison between localizations is
a comparison between *where* the model is allowed to change.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import Enum

import pandas as pd
import torch

from .checks import check_float, check_int
from .models import Component, named_parameters, only_trainable, weight_names
from .positions import FIRST_SUBJECT, LAST, LAST_SUBJECT, canonical


def _head_mask(model, param_name: str, param: torch.Tensor, head: int) -> torch.Tensor | None:
    """Boolean mask of one head's slice of an attention weight (None when the head owns none of it)."""
    d_head = model.cfg.d_head
    sl = slice(head * d_head, (head + 1) * d_head)
    mask = torch.zeros_like(param, dtype=torch.bool)
    if param_name.endswith("q_proj.weight"):  # (n_heads*d_head, d_model): the head's rows
        mask[sl, :] = True
    elif param_name.endswith("o_proj.weight"):  # (d_model, n_heads*d_head): the head's columns
        mask[:, sl] = True
    else:  # K/V (shared by a group of heads under GQA), norms: not a head's own weights
        return None
    return mask


class Kind(str, Enum):
    """What kind of weight set a localization is; an edit's tuned defaults depend on it (``editing.DEFAULTS``)."""

    LOCALIZED = "localized"          # a budget-matched set of components (evidence-based or random)
    ALL_MLPS = "all_mlps"            # every MLP
    NON_LOCALIZED = "non_localized"  # every attention and MLP weight


@dataclass
class Localization:
    """A named set of trainable weights.

    Attributes:
        name: e.g. ``"fact lookup"``, ``"random"``.
        components: the components it was built from (``"m3"``, ``"a5"``, ``"a5.h2"``).
        weights: parameter name (as in :func:`models.named_parameters`) → boolean mask of the
            trainable entries, or ``None`` for the whole tensor.
        n_params: number of trainable parameters.
        meta: how it was built (method, scores, budget ...).
        kind: a :class:`Kind` (set by the builder; never guessed from the name).
    """

    name: str
    components: list[str]
    weights: dict[str, torch.Tensor | None]
    n_params: int
    meta: dict = field(default_factory=dict)
    kind: Kind = Kind.LOCALIZED

    def __post_init__(self):
        self.kind = Kind(self.kind)

    @classmethod
    def from_components(cls, model, components: list[str], name: str | None = None, meta: dict | None = None,
                        kind: Kind | str = Kind.LOCALIZED) -> Localization:
        """Build a localization from component names (``"m3"``, ``"a5"``, ``"a5.h2"``)."""
        if not components:
            raise ValueError("Empty localization: no component given. Fix: name at least one component, e.g. ['m3'].")
        params = named_parameters(model)
        weights: dict[str, torch.Tensor | None] = {}
        for comp_name in components:
            comp = Component.parse(comp_name) if isinstance(comp_name, str) else comp_name
            for pname in weight_names(model, comp):
                if comp.kind == "head":
                    if weights.get(pname, False) is None:
                        continue  # the whole tensor is already in
                    mask = _head_mask(model, pname, params[pname], comp.head)
                    if mask is None:
                        continue
                    prev = weights.get(pname)
                    weights[pname] = mask if prev is None else (prev | mask)
                else:
                    weights[pname] = None
        if not weights:
            raise ValueError(f"Localization from {components} holds no weight.")
        n = sum(params[p].numel() if m is None else int(m.sum()) for p, m in weights.items())
        names = [c if isinstance(c, str) else c.name for c in components]
        return cls(name or "+".join(names), names, weights, int(n), dict(meta or {}), Kind(kind))

    def parameters(self, model) -> dict[str, torch.nn.Parameter]:
        params = named_parameters(model)
        missing = [p for p in self.weights if p not in params]
        if missing:
            raise ValueError(f"Localization {self.name!r} names weights the model does not have: {missing[:3]}. "
                             "Fix: build the localization from this model.")
        return {p: params[p] for p in self.weights}

    @contextmanager
    def trainable(self, model):
        """Within the block exactly this localization's tensors require grad; restored on exit.

        Yields:
            ``{name: parameter}`` of the trainable tensors. Entries outside a mask still
            receive gradients; :meth:`mask_grads` zeroes them (editing calls it every step).
        """
        with only_trainable(model, self.parameters(model)) as chosen:
            yield chosen

    def mask_grads(self, params: dict[str, torch.nn.Parameter]) -> None:
        """Zero the gradient outside each tensor's mask (for head-level localizations)."""
        for n, m in self.weights.items():
            if m is not None and params[n].grad is not None:
                params[n].grad.mul_(m.to(params[n].grad.device))

    def __repr__(self) -> str:
        comps = ", ".join(self.components[:8]) + (" ..." if len(self.components) > 8 else "")
        return f"Localization({self.name!r}: {len(self.components)} components [{comps}], {self.n_params:,} parameters)"


# ---------------------------------------------------------------------------
# Builders: output tracing and the baselines, under a parameter budget
# ---------------------------------------------------------------------------
#
# Localizations are compared at equal size: a parameter *budget* is the number of weights an
# edit may train. The builders below take whole components (an attention layer "aL" — its
# Q, K, V, O and Q/K norms — or an MLP "mL" — gate, up, down), so a budget is met from below:
# the achieved count is reported in ``meta["n_params"]`` next to ``meta["budget"]``.

import numpy as np  # noqa: E402

from .models import components as _components  # noqa: E402
from .models import hf_model as _hf_model  # noqa: E402


def attn_mlp_params(model) -> int:
    """Parameters of every attention layer and MLP together (the largest possible budget)."""
    return int(_components(model)["n_params"].sum())


def check_budget(model, budget) -> int:
    """Validate a parameter budget: a positive integer no larger than :func:`attn_mlp_params`."""
    if isinstance(budget, Localization):
        budget = budget.n_params
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or budget != budget:
        raise ValueError(f"The parameter budget must be a number of parameters, got {budget!r}. "
                         "Fix: pass an int, e.g. match_budget(other_localization).")
    if budget <= 0:
        raise ValueError(f"The parameter budget must be positive, got {budget}. Fix: pass the number of parameters "
                         "the localization may train, e.g. match_budget(fact_lookup_localization).")
    total = attn_mlp_params(model)
    if budget > total:
        raise ValueError(f"The parameter budget {int(budget):,} exceeds the {total:,} parameters of all attention and "
                         f"MLP weights of this model. Fix: pass at most {total:,}, or use non_localized(model) "
                         "to train all of them.")
    return int(budget)


def match_budget(reference) -> int:
    """The parameter count to match: a :class:`Localization`'s ``n_params``, or an int as it is."""
    if isinstance(reference, Localization):
        return int(reference.n_params)
    if isinstance(reference, (int, float)) and not isinstance(reference, bool):
        return int(reference)
    raise ValueError(f"Cannot match a budget to {type(reference).__name__}. Fix: pass a Localization or an int.")


def component_scores(scores: pd.DataFrame, mlp_only: bool = False) -> pd.DataFrame:
    """Rank whole components by a tracing / patching table's effects.

    The rule: ``score(aL)`` is the sum of ``|effect|`` over the attention rows of layer ``L``
    (the ``"attn"`` rows when the table has them, else the ``"head"`` rows: head scores add up
    to their layer); ``score(mL)`` the sum of ``|effect|`` over the MLP rows of layer ``L``.
    Rows at position kind ``"all"`` count only for a component that has no per-position rows
    (they restate the per-position rows' total). Residual-stream rows are not weights and are
    ignored.

    Args:
        scores: a table of :func:`.tracing.causal_trace`, :func:`.patching.average_over_facts` (activation
            or attribution patching): ``component, layer, effect`` (``head``, ``position_kind``).
        mlp_only: rank MLPs only.

    Returns:
        ``component, kind, layer, score``, best first.
    """
    need = {"component", "layer", "effect"}
    if not need <= set(scores.columns):
        raise ValueError(f"The scores need columns {sorted(need)}; got {list(scores.columns)}. "
                         "Fix: pass the output of tracing.causal_trace or patching.average_over_facts.")
    df = scores[scores["component"].isin(["attn", "head", "mlp"])].copy()
    if df.empty:
        raise ValueError("The scores hold no attention, head or MLP rows. Fix: trace or patch components "
                         "'attn'/'head'/'mlp', not only 'resid'.")
    if (df["component"] == "attn").any():
        df = df[df["component"] != "head"]
    df["kind"] = np.where(df["component"] == "mlp", "mlp", "attn")
    if "position_kind" in df.columns:
        per_pos = df["position_kind"] != "all"
        has_pos = per_pos.groupby([df["kind"], df["layer"]]).transform("any")
        df = df[per_pos | ~has_pos]
    df["abs_effect"] = df["effect"].abs()
    out = df.groupby(["kind", "layer"], as_index=False)["abs_effect"].sum().rename(columns={"abs_effect": "score"})
    if mlp_only:
        out = out[out["kind"] == "mlp"]
    out["component"] = [("m" if k == "mlp" else "a") + str(int(l)) for k, l in zip(out["kind"], out["layer"])]
    out = out[out["score"].notna()]
    return out.sort_values("score", ascending=False, kind="stable")[["component", "kind", "layer", "score"]].reset_index(drop=True)


def _take(ranked: pd.DataFrame, sizes: dict[str, int], budget: int, rule: str) -> list[str]:
    chosen, used = [], 0
    for comp in ranked["component"]:
        n = sizes[comp]
        if used + n <= budget:
            chosen.append(comp)
            used += n
        elif rule == "prefix":
            break
    return chosen


def output_tracing(model, scores: pd.DataFrame, budget=None, mlp_only: bool = False, top_k: int = 4,
                   rule: str = "prefix", name: str = "output tracing") -> Localization:
    """Output-tracing localization: the components with the largest tracing / patching effect.

    Components are ranked by :func:`component_scores` and taken best first while the parameter
    count stays within ``budget``. With ``rule="prefix"`` (the default) the walk stops at the
    first component that would exceed the budget, so the result is always the top of the
    ranking; with ``rule="greedy"`` such a component is skipped and the walk goes on, filling
    the budget more closely with lower-ranked components. Either way the achieved count is at
    most the budget, and is reported in ``meta``.

    Args:
        scores: the table of a tracing or patching run (see :func:`component_scores`).
        budget: parameter budget (an int, or a Localization to match); ``None`` takes the
            ``top_k`` best components whatever their size.
        mlp_only: choose among MLPs only.
        top_k: how many components to take when there is no budget.
        rule: ``"prefix"`` or ``"greedy"``.
        name: the localization's name.
    """
    if rule not in ("prefix", "greedy"):
        raise ValueError(f"Unknown rule {rule!r}; choose 'prefix' or 'greedy'.")
    ranked = component_scores(scores, mlp_only=mlp_only)
    ranked = ranked[ranked["score"] > 0]
    if ranked.empty:
        raise ValueError("Every component scores 0: nothing to localize. Fix: check the tracing / patching run "
                         "(clean and corrupted runs must differ).")
    table = _components(model)
    sizes = dict(zip(table["component"], table["n_params"].astype(int)))
    if budget is None:
        top_k = check_int("top_k", top_k, min=1)
        chosen = ranked["component"].head(top_k).tolist()
        limit = None
    else:
        limit = check_budget(model, match_budget(budget))
        chosen = _take(ranked, sizes, limit, rule)
        if not chosen:
            first = ranked["component"].iloc[0]
            smallest = min(sizes[c] for c in ranked["component"])
            raise ValueError(
                f"Empty localization: the top-ranked component {first} alone ({sizes[first]:,} parameters) exceeds the "
                f"budget of {limit:,}. Fix: raise the budget (the smallest ranked component has {smallest:,} "
                "parameters), or use rule='greedy' to skip components that do not fit.")
    meta = dict(method="output_tracing", budget=limit, rule=rule, mlp_only=mlp_only,
                ranking=ranked.to_dict("records"))
    loc = Localization.from_components(model, chosen, name=name, meta=meta)
    loc.meta["n_params"] = loc.n_params
    return loc


def random_components(model, budget, seed: int = 0, mlp_only: bool = False, name: str = "random") -> Localization:
    """Random attention layers and MLPs with about ``budget`` parameters (seeded).

    Components are visited in a random order and taken whenever they still fit, so the count is
    at most the budget and short of it by less than the smallest component left out.
    """
    seed = check_int("seed", seed, min=0)
    limit = check_budget(model, match_budget(budget))
    table = _components(model)
    if mlp_only:
        table = table[table["kind"] == "mlp"]
    order = np.random.default_rng(seed).permutation(len(table))
    shuffled = table.iloc[order]
    chosen = _take(shuffled, dict(zip(table["component"], table["n_params"])), limit, "greedy")
    if not chosen:
        raise ValueError(f"Empty localization: no component fits in a budget of {limit:,} parameters (the smallest has "
                         f"{int(table['n_params'].min()):,}). Fix: raise the budget.")
    loc = Localization.from_components(model, chosen, name=name, meta=dict(method="random", budget=limit, seed=seed))
    loc.meta["n_params"] = loc.n_params
    return loc


def all_mlps(model, name: str = "all MLPs") -> Localization:
    """Every MLP of the model."""
    return Localization.from_components(model, [f"m{l}" for l in range(len(_layers_of(model)))], name=name,
                                        meta=dict(method="all_mlps"), kind=Kind.ALL_MLPS)


def non_localized(model, name: str = "non-localized") -> Localization:
    """Every attention and MLP weight of the model (the paper's non-localized baseline)."""
    comps = [f"{k}{l}" for l in range(len(_layers_of(model))) for k in ("a", "m")]
    return Localization.from_components(model, comps, name=name, meta=dict(method="non_localized"),
                                        kind=Kind.NON_LOCALIZED)


def _layers_of(model):
    return _hf_model(model).model.layers


# ---------------------------------------------------------------------------
# Fact lookup (FLU): the MLPs that look the attribute up at the subject
# ---------------------------------------------------------------------------
#
# Guo et al. picked the fact-lookup MLPs of Gemma-7B (layers 2-7) and Gemma-2-9B
# (2-6) by hand, from path patching and probes. :func:`fact_lookup` makes that
# choice a rule that runs on any model, from three kinds of evidence per block
# ``l`` (each a tidy table another module computes):
#
# (i)   probes (``probing.layer_probes(...).accuracy``): test accuracy of the
#       probe at the last subject token on the residual stream *after* block
#       ``l`` (probe ``layer`` ``l + 1``). ``rise[l] = (acc[l] - base) / (peak - base)``,
#       base = accuracy on the embeddings (probe layer 0), peak = best layer.
#       The attribute appears at the subject once the look-up has happened.
# (ii)  subject-position MLP effect (``tracing.causal_trace`` or
#       ``patching.activation_patching`` / ``attribution_patching`` summaries):
#       ``mlp[l]`` = the normalised effect (clean = 1, corrupted = 0) of
#       restoring MLP ``l``'s output at the subject tokens, the larger of the
#       ``first_subject`` and ``last_subject`` kinds; ``mlp_rel = mlp / max(mlp)``.
# (iii) extraction heads (per-head patching at the last token): ``head[l]`` =
#       the largest effect of one head of layer ``l`` at position kind
#       ``last``; ``head_rel = head / max(head)``.
#
# The rule (thresholds are the fields of :class:`FactLookupRule`):
#
# 1. ``start`` = the first block from which ``rise >= probe_rise`` (0.2) holds at
#    every later block: from there on the subject token carries the attribute
#    (a spike that falls back, probe noise on a small test half, does not
#    count). By default (``monotone=True``) the rises are computed on an
#    isotonic (non-decreasing) fit of the accuracies over the blocks, which
#    keeps one noisy layer from moving the start. No probe table: ``start = 0``.
# 2. ``extraction`` = the first block after ``start`` with ``head_rel >=
#    head_threshold`` (0.5): the attribute is carried to the last token there.
#    Without head rows, the first block after which the last-token probe
#    reaches ``last_rise`` (0.5) of its gain stands in. ``end = extraction - 1``
#    (the heads of block ``e`` read the residual stream written by MLPs ``< e``);
#    with no extraction evidence at all, ``end`` is the last block.
# 3. Candidates: blocks in ``[start, end]`` with ``mlp_rel >= mlp_threshold``
#    (0.2) and ``mlp >= min_effect`` (0.0).
# 4. FLU = every block from the first to the last candidate (``contiguous=True``,
#    a range as in the paper), or the candidates only (``contiguous=False``).
#
# No candidate is an error that says which evidence disagreed: a model that
# extracts before its subject probes rise, or whose subject MLPs do nothing,
# has no fact-lookup stage by this rule, and the thresholds should be revisited
# with the evidence table (:func:`fact_lookup_evidence`) in view.


from dataclasses import asdict  # noqa: E402

import numpy as np  # noqa: E402, F811


@dataclass(frozen=True)
class FactLookupRule:
    """The thresholds of the fact-lookup rule (see the comment above :func:`fact_lookup`).

    Attributes:
        probe_rise: share of the subject probe's gain (embeddings -> best layer) that the probe reaches
            at the start block and keeps at every later block.
        mlp_threshold: an MLP is a candidate when its subject-position effect is at least this
            share of the largest MLP's.
        min_effect: and at least this absolute normalised effect.
        head_threshold: a head extracts when its last-position effect is at least this share of
            the largest head's.
        last_rise: without head rows, extraction is where the last-token probe reaches this share of its gain.
        contiguous: take the whole range from the first to the last candidate (the paper's FLU are ranges).
        monotone: compute the probes' rises on an isotonic (non-decreasing) fit of their accuracies
            over the blocks (scikit-learn's ``IsotonicRegression``), not on the raw, noisy accuracies.
        subject_kinds: position kinds of the patching table that count as subject positions.
        extraction_kind: the position kind of the last token in the patching tables.
        probe_position, last_position: the probe table's ``position`` values for the last subject
            token and the last token (:mod:`.positions`; a table that calls the last token ``"final"``,
            its earlier name, is read the same).
    """

    probe_rise: float = 0.2
    mlp_threshold: float = 0.2
    min_effect: float = 0.0
    head_threshold: float = 0.5
    last_rise: float = 0.5
    contiguous: bool = True
    monotone: bool = True
    subject_kinds: tuple[str, ...] = (FIRST_SUBJECT, LAST_SUBJECT)
    extraction_kind: str = LAST
    probe_position: str = LAST_SUBJECT
    last_position: str = LAST

    def __post_init__(self):
        for name in ("probe_rise", "mlp_threshold", "head_threshold", "last_rise"):
            check_float(f"FactLookupRule.{name} (a share between 0 and 1)", getattr(self, name), 0.0, 1.0)
        check_float("FactLookupRule.min_effect", self.min_effect)

    def describe(self) -> str:
        """The rule in words, with this rule's thresholds."""
        span = "every block from the first to the last candidate" if self.contiguous else "the candidate blocks"
        return (
            f"start = first block from which on the {self.probe_position} probe keeps >= {self.probe_rise:.0%} of its "
            f"embeddings-to-best accuracy gain{' (on an isotonic fit over the blocks)' if self.monotone else ''}; extraction = first later block with a head whose {self.extraction_kind}-position "
            f"effect is >= {self.head_threshold:.0%} of the strongest head's (fallback: the {self.last_position} probe reaching "
            f"{self.last_rise:.0%} of its gain); end = extraction - 1; candidates = blocks in [start, end] whose MLP effect at "
            f"{'/'.join(self.subject_kinds)} is >= {self.mlp_threshold:.0%} of the largest and >= {self.min_effect}; "
            f"FLU = {span}."
        )


def _check_columns(df: pd.DataFrame, need: tuple[str, ...], what: str) -> None:
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise ValueError(f"The {what} table lacks column(s) {missing} (it has {list(df.columns)}). Fix: pass the tidy "
                         "table of probing.layer_probes(...).accuracy / tracing.causal_trace / patching.average_over_facts.")


def _relative(values: pd.Series) -> pd.Series:
    top = values.max(skipna=True)
    return values / top if pd.notna(top) and top > 0 else values * np.nan


def _rise(acc: pd.Series, base: float, monotone: bool = False) -> pd.Series:
    if monotone and acc.notna().sum() > 1:
        from sklearn.isotonic import IsotonicRegression

        ok = acc.notna().to_numpy()
        fit = acc.copy()
        fit[ok] = IsotonicRegression().fit_transform(np.flatnonzero(ok), acc[ok].to_numpy())
        acc = fit
    peak = acc.max(skipna=True)
    if not pd.notna(peak) or peak <= base:
        return acc * 0.0
    return (acc - base) / (peak - base)


def fact_lookup_evidence(probe_df: pd.DataFrame | None, patching_df: pd.DataFrame, head_df: pd.DataFrame | None = None,
                         rule: FactLookupRule | None = None, n_layers: int | None = None) -> pd.DataFrame:
    """The evidence table of the fact-lookup rule, one row per block, with the rule's decisions.

    Args:
        probe_df: tidy probe accuracies ``layer, position, split, accuracy`` (``layer``: residual
            after that many blocks, as in :mod:`.probing`); ``None`` to go without probes.
        patching_df: tidy patching / tracing table ``layer, position_kind, component, head, effect``
            (more rows per key, e.g. per fact, are averaged); needs MLP rows at subject positions.
        head_df: per-head table of the same form (``component == "head"`` rows at the last
            position); default: the head rows of ``patching_df``, if any.
        rule: thresholds (default :class:`FactLookupRule`).
        n_layers: number of blocks (default: from the tables).

    Returns:
        Columns ``layer, probe_subject, probe_rise, probe_last, last_rise, mlp_effect, mlp_rel,
        head_effect, head_rel, top_head, after_start, before_extraction, candidate, selected``;
        ``attrs["decision"]`` holds ``start, extraction, end, layers`` and where each came from.
    """
    rule = rule or FactLookupRule()
    if patching_df is None or len(patching_df) == 0:
        raise ValueError("No patching evidence: the patching table is empty. Fix: pass the summary of "
                         "tracing.causal_trace or patching.activation_patching with 'mlp' rows at the subject.")
    _check_columns(patching_df, ("layer", "position_kind", "component", "effect"), "patching")
    mlp = patching_df[(patching_df["component"] == "mlp") & patching_df["position_kind"].isin(rule.subject_kinds)]
    if mlp.empty:
        raise ValueError(f"The patching table has no 'mlp' rows at position kinds {list(rule.subject_kinds)} "
                         f"(components {sorted(patching_df['component'].unique())}, kinds "
                         f"{sorted(patching_df['position_kind'].unique())}). Fix: patch MLPs at the subject tokens.")
    mlp_effect = mlp.groupby(["layer", "position_kind"])["effect"].mean().groupby(level="layer").max()
    if head_df is None and "head" in set(patching_df["component"]):
        head_df = patching_df
    heads = None
    if head_df is not None:
        _check_columns(head_df, ("layer", "position_kind", "component", "head", "effect"), "head")
        heads = head_df[(head_df["component"] == "head") & (head_df["position_kind"] == rule.extraction_kind)]
        if heads.empty:
            heads = None
    layers_seen = set(mlp_effect.index)
    if heads is not None:
        layers_seen |= set(heads["layer"])
    probe_sub = probe_lst = None
    if probe_df is not None:
        _check_columns(probe_df, ("layer", "position", "accuracy"), "probe")
        pdf = probe_df[probe_df["split"] == "test"] if "split" in probe_df.columns else probe_df
        pdf = pdf.assign(position=pdf["position"].map(canonical))
        probe_sub = pdf[pdf["position"] == rule.probe_position].groupby("layer")["accuracy"].mean()
        probe_lst = pdf[pdf["position"] == rule.last_position].groupby("layer")["accuracy"].mean()
        if probe_sub.empty:
            raise ValueError(f"The probe table has no test rows at position {rule.probe_position!r} "
                             f"(positions: {sorted(probe_df['position'].unique())}). Fix: probe the last subject token.")
        layers_seen.add(int(probe_sub.index.max()) - 1)
    n_layers = int(n_layers if n_layers is not None else max(layers_seen) + 1)
    ev = pd.DataFrame({"layer": np.arange(n_layers)})
    # (i) probes: the residual after block l is probe layer l + 1
    if probe_sub is not None:
        ev["probe_subject"] = probe_sub.reindex(ev["layer"] + 1).to_numpy()
        ev["probe_rise"] = _rise(ev["probe_subject"], float(probe_sub.get(0, probe_sub.min())), rule.monotone).to_numpy()
        if not probe_lst.empty:
            ev["probe_last"] = probe_lst.reindex(ev["layer"] + 1).to_numpy()
            ev["last_rise"] = _rise(ev["probe_last"], float(probe_lst.get(0, probe_lst.min())), rule.monotone).to_numpy()
        else:
            ev["probe_last"] = ev["last_rise"] = np.nan
    else:
        ev["probe_subject"] = ev["probe_rise"] = ev["probe_last"] = ev["last_rise"] = np.nan
    # (ii) subject-position MLP effect
    ev["mlp_effect"] = mlp_effect.reindex(ev["layer"]).to_numpy()
    ev["mlp_rel"] = _relative(ev["mlp_effect"]).to_numpy()
    # (iii) extraction heads at the last position
    if heads is not None:
        per_head = heads.groupby(["layer", "head"])["effect"].mean().reset_index()
        best = per_head.loc[per_head.groupby("layer")["effect"].idxmax()].set_index("layer")
        ev["head_effect"] = best["effect"].reindex(ev["layer"]).to_numpy()
        ev["top_head"] = best["head"].reindex(ev["layer"]).astype("Int64").to_numpy()
        ev["head_rel"] = _relative(ev["head_effect"]).to_numpy()
    else:
        ev["head_effect"] = ev["head_rel"] = np.nan
        ev["top_head"] = pd.array([pd.NA] * n_layers, dtype="Int64")

    # 1. start
    if probe_sub is not None:
        # the first block from which the rise holds at every later block (a noisy early spike does not count)
        holds = (ev["probe_rise"] >= rule.probe_rise)[::-1].cummin()[::-1]
        rising = ev.index[holds]
        start, start_from = (int(ev.loc[rising[0], "layer"]), "probes") if len(rising) else (None, "probes (never rise)")
    else:
        start, start_from = 0, "no probes: first block"
    if start is None:
        raise ValueError("The subject probes never gain accuracy over the embeddings, so there is no look-up to "
                         "localise. Fix: check the probe table (are the facts known to the model?) or lower probe_rise.")
    # 2. extraction
    extraction, extraction_from = None, "none: up to the last block"
    if heads is not None:
        hit = ev[(ev["layer"] > start) & (ev["head_rel"] >= rule.head_threshold)]
        if len(hit):
            extraction, extraction_from = int(hit["layer"].iloc[0]), "heads"
    elif ev["last_rise"].notna().any():
        hit = ev[(ev["layer"] > start) & (ev["last_rise"] >= rule.last_rise)]
        if len(hit):
            extraction, extraction_from = int(hit["layer"].iloc[0]), "last-token probes"
    end = (extraction - 1) if extraction is not None else n_layers - 1
    # 3. candidates, 4. selection
    ev["after_start"] = ev["layer"] >= start
    ev["before_extraction"] = ev["layer"] <= end
    ev["candidate"] = (ev["after_start"] & ev["before_extraction"] & (ev["mlp_rel"] >= rule.mlp_threshold)
                       & (ev["mlp_effect"] >= rule.min_effect))
    cands = ev.loc[ev["candidate"], "layer"].tolist()
    if cands and rule.contiguous:
        ev["selected"] = ev["layer"].between(cands[0], cands[-1])
    else:
        ev["selected"] = ev["candidate"]
    ev.attrs["decision"] = dict(start=start, start_from=start_from, extraction=extraction, extraction_from=extraction_from,
                                end=end, layers=[int(l) for l in ev.loc[ev["selected"], "layer"]],
                                rule=rule.describe())
    return ev


def fact_lookup(model, probe_df: pd.DataFrame | None, patching_df: pd.DataFrame, head_df: pd.DataFrame | None = None,
                rule: FactLookupRule | None = None, name: str = "fact lookup", **thresholds) -> Localization:
    """The fact-lookup MLPs of a model, chosen by the rule above from probes and patching evidence.

    Args:
        model: the model the localization's weights belong to.
        probe_df: ``probing.layer_probes(...).accuracy`` (or ``None``).
        patching_df: a causal-tracing / patching summary with MLP rows at the subject positions.
        head_df: per-head effects at the last position (default: the head rows of ``patching_df``).
        rule: the thresholds; or pass them as keywords (``mlp_threshold=0.3`` ...).

    Returns:
        A :class:`Localization` of the chosen MLPs (``"m2"``, ``"m3"`` ...) whose ``meta`` holds
        the rule (in words and as thresholds), the decision (start, extraction, end, layers) and
        the evidence table as records.

    Raises:
        ValueError: empty evidence, or no block passes the rule (the message says why).
    """
    if rule is not None and thresholds:
        raise ValueError("Pass either a FactLookupRule or threshold keywords, not both.")
    rule = rule or FactLookupRule(**thresholds)
    ev = fact_lookup_evidence(probe_df, patching_df, head_df, rule=rule, n_layers=model.cfg.n_layers)
    dec = ev.attrs["decision"]
    if not dec["layers"]:
        raise ValueError(
            f"No MLP passes the fact-lookup rule: the look-up starts after block {dec['start']} ({dec['start_from']}), "
            f"extraction is at block {dec['extraction']} ({dec['extraction_from']}), and no MLP in between has a "
            f"subject-position effect >= {rule.mlp_threshold:.0%} of the largest. Fix: look at fact_lookup_evidence(...) "
            "and lower mlp_threshold / probe_rise, or raise head_threshold.")
    meta = dict(method="fact lookup", thresholds=asdict(rule), **dec,
                first_layer=dec["layers"][0], last_layer=dec["layers"][-1],
                evidence=ev.astype(object).where(ev.notna(), None).to_dict("records"))
    return Localization.from_components(model, [f"m{l}" for l in dec["layers"]], name=name, meta=meta)


# ---------------------------------------------------------------------------
# Checking a localization: does the rule's choice move with its thresholds, and do the chosen MLPs matter?
# ---------------------------------------------------------------------------

#: the thresholds :func:`threshold_sweep` varies by default, and the values it tries (the defaults among them)
SWEEP = {
    "probe_rise": (0.1, 0.2, 0.3, 0.5),
    "mlp_threshold": (0.1, 0.2, 0.3, 0.5),
    "head_threshold": (0.3, 0.5, 0.7),
}


def threshold_sweep(probe_df: pd.DataFrame | None, patching_df: pd.DataFrame, head_df: pd.DataFrame | None = None,
                    grid: dict[str, tuple[float, ...]] | None = None, n_layers: int | None = None) -> pd.DataFrame:
    """How the fact-lookup range moves when one threshold of the rule changes and the others keep their defaults.

    Args:
        probe_df, patching_df, head_df: the evidence, as for :func:`fact_lookup_evidence`.
        grid: threshold name → values to try (default :data:`SWEEP`); names are fields of :class:`FactLookupRule`.
        n_layers: number of blocks (default: from the tables).

    Returns:
        One row per (threshold, value): ``threshold, value, is_default, start, extraction, end, layers``
        (the chosen blocks, ``""`` when no MLP passes), ``n_mlps`` and ``same_as_default`` (the same blocks
        as the default rule).
    """
    grid = SWEEP if grid is None else grid
    fields = set(FactLookupRule.__dataclass_fields__)
    unknown = sorted(set(grid) - fields)
    if unknown:
        raise ValueError(f"Unknown threshold(s) {unknown}; choose among {sorted(fields)}.")
    default = FactLookupRule()

    def decide(rule):
        try:
            return fact_lookup_evidence(probe_df, patching_df, head_df, rule=rule, n_layers=n_layers).attrs["decision"]
        except ValueError as err:  # the rule finds no look-up at this threshold: a result of the sweep, not a failure
            return dict(start=None, extraction=None, end=None, layers=[], error=str(err))

    base = decide(default)["layers"]
    rows = []
    for name, values in grid.items():
        for value in values:
            dec = decide(FactLookupRule(**{name: value}))
            rows.append(dict(threshold=name, value=float(value), is_default=value == getattr(default, name),
                             start=dec["start"], extraction=dec["extraction"], end=dec["end"],
                             layers=" ".join(f"m{l}" for l in dec["layers"]), n_mlps=len(dec["layers"]),
                             same_as_default=dec["layers"] == base))
    return pd.DataFrame(rows)


@torch.no_grad()
def ablate_mlps(model, facts: pd.DataFrame, layers: list[int], mode: str = "zero", batch_size: int = 16,
                mean_over: pd.DataFrame | None = None) -> np.ndarray:
    """Normalised probability of each athlete's true sport (fact prompt) with MLPs ablated at the subject tokens.

    The output of each MLP in ``layers`` (``blocks.L.hook_mlp_out``) is replaced at the subject's
    positions by zero (``mode="zero"``) or by its mean over the subject positions of ``mean_over``
    (``mode="mean"``; default: of ``facts`` themselves). An empty ``layers`` gives the clean model.

    Returns:
        One probability per fact (normalised over the three sports of the data).
    """
    from .data import SPORTS
    from .positions import FIRST_SUBJECT, LAST_SUBJECT, fact_positions
    from .prompts import sports_prompts
    from .scoring import encode_prompts, logits_at, pad_right, single_token_id

    if mode not in ("zero", "mean"):
        raise ValueError(f"Unknown ablation mode {mode!r}; choose 'zero' or 'mean'.")
    n_layers = model.cfg.n_layers
    bad = [l for l in layers if not 0 <= int(l) < n_layers]
    if bad:
        raise ValueError(f"Layer(s) {bad} are outside the model's blocks 0..{n_layers - 1}.")
    batch_size = check_int("batch_size", batch_size, min=1)
    sport_ids = [single_token_id(model, f" {s}") for s in SPORTS]
    answers = [SPORTS.index(s) for s in facts["sport"]]

    def subject_masks(frame):
        ps = sports_prompts(frame, "fact")
        pos = fact_positions(model, ps.prompts, frame["athlete"].astype(str).tolist())
        return ps.prompts, pos

    means = {}
    if mode == "mean" and layers:
        source = facts if mean_over is None else mean_over
        prompts, pos = subject_masks(source)
        ids, mask, last = pad_right(encode_prompts(model, prompts), model.tokenizer.pad_token_id or 0)
        sub = torch.zeros(ids.shape, dtype=torch.bool)
        for i, r in enumerate(pos.itertuples()):
            sub[i, getattr(r, FIRST_SUBJECT): getattr(r, LAST_SUBJECT) + 1] = True
        kept = {}

        def keep(x, hook):
            kept[hook.name] = x[sub.to(x.device)].mean(0)

        with model.hooks(fwd_hooks=[(f"blocks.{l}.hook_mlp_out", keep) for l in layers]):
            logits_at(model, ids, mask, last)
        means = kept
    prompts, pos = subject_masks(facts.reset_index(drop=True))
    seqs = encode_prompts(model, prompts)
    out = np.zeros(len(prompts))
    for s in range(0, len(prompts), batch_size):
        ids, mask, last = pad_right(seqs[s: s + batch_size], model.tokenizer.pad_token_id or 0)
        sub = torch.zeros(ids.shape, dtype=torch.bool)
        for i, r in enumerate(pos.iloc[s: s + batch_size].itertuples()):
            sub[i, getattr(r, FIRST_SUBJECT): getattr(r, LAST_SUBJECT) + 1] = True

        def ablate(x, hook):
            m = sub.to(x.device)
            x[m] = means[hook.name].to(x.dtype) if mode == "mean" else 0.0
            return x

        with model.hooks(fwd_hooks=[(f"blocks.{l}.hook_mlp_out", ablate) for l in layers]):
            logits = logits_at(model, ids, mask, last)[:, sport_ids].float()
        probs = torch.softmax(logits, -1).cpu().numpy()
        out[s: s + len(probs)] = probs[np.arange(len(probs)), answers[s: s + len(probs)]]
    return out


def ablation_check(model, facts: pd.DataFrame, layers: list[int], n_random: int = 5, mode: str = "zero",
                   seed: int = 0, batch_size: int = 16) -> pd.DataFrame:
    """Does ablating the chosen MLPs at the subject drop the answer more than ablating as many random MLPs?

    Returns:
        One row per ablated set: ``set`` (``"clean"``, ``"chosen"``, ``"random 0"`` ...), ``layers``,
        ``mode``, ``p_true`` (mean normalised probability of the true sport), ``drop`` (clean minus it)
        and ``n``; ``attrs["share_random_at_least"]``: the share of random sets whose drop is at least
        the chosen set's; ``attrs["p_value"]``: the Monte-Carlo p-value of that comparison,
        ``(1 + random sets at least as large) / (1 + n_random)`` (the chosen set counted among the draws, so it is
        never 0: 19 random sets can reach 0.05).
    """
    n_random = check_int("n_random", n_random, min=1)
    layers = sorted(int(l) for l in layers)
    if not layers:
        raise ValueError("No layers to ablate. Fix: pass the localization's MLP blocks, e.g. [2, 3, 4, 5].")
    rng = np.random.default_rng(check_int("seed", seed, min=0))
    sets = [("clean", []), ("chosen", layers)]
    others = np.arange(model.cfg.n_layers)
    sets += [(f"random {i}", sorted(int(x) for x in rng.choice(others, size=len(layers), replace=False)))
             for i in range(n_random)]
    rows = []
    for name, ls in sets:
        p = ablate_mlps(model, facts, ls, mode=mode, batch_size=batch_size)
        rows.append(dict(set=name, layers=" ".join(f"m{l}" for l in ls), mode=mode, p_true=float(p.mean()), n=len(p)))
    table = pd.DataFrame(rows)
    table["drop"] = table.loc[0, "p_true"] - table["p_true"]
    chosen = table.loc[table["set"] == "chosen", "drop"].item()
    rand = table.loc[table["set"].str.startswith("random"), "drop"]
    table.attrs["share_random_at_least"] = float((rand >= chosen).mean())
    table.attrs["p_value"] = float((1 + (rand >= chosen).sum()) / (1 + len(rand)))
    return table

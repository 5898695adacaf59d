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

import pandas as pd
import torch

from .models import Component, named_parameters, weight_names


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
    """

    name: str
    components: list[str]
    weights: dict[str, torch.Tensor | None]
    n_params: int
    meta: dict = field(default_factory=dict)

    @classmethod
    def from_components(cls, model, components: list[str], name: str | None = None, meta: dict | None = None) -> Localization:
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
        return cls(name or "+".join(names), names, weights, int(n), dict(meta or {}))

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
        params = named_parameters(model)
        before = {n: p.requires_grad for n, p in params.items()}
        try:
            for p in params.values():
                p.requires_grad_(False)
            chosen = self.parameters(model)
            for p in chosen.values():
                p.requires_grad_(True)
            yield chosen
        finally:
            for n, p in params.items():
                p.requires_grad_(before[n])

    def mask_grads(self, params: dict[str, torch.nn.Parameter]) -> None:
        """Zero the gradient outside each tensor's mask (for head-level localizations)."""
        for n, m in self.weights.items():
            if m is not None and params[n].grad is not None:
                params[n].grad.mul_(m.to(params[n].grad.device))

    def summary(self) -> pd.DataFrame:
        """One row per weight tensor: ``weight, n_trainable``."""
        return pd.DataFrame([dict(weight=p, n_trainable=None if m is None else int(m.sum())) for p, m in self.weights.items()])

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
        scores: a table of :func:`.tracing.causal_trace`, :func:`.patching.summarise` (activation
            or attribution patching): ``component, layer, effect`` (``head``, ``position_kind``).
        mlp_only: rank MLPs only.

    Returns:
        ``component, kind, layer, score``, best first.
    """
    need = {"component", "layer", "effect"}
    if not need <= set(scores.columns):
        raise ValueError(f"The scores need columns {sorted(need)}; got {list(scores.columns)}. "
                         "Fix: pass the output of tracing.causal_trace or patching.summarise.")
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
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}.")
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
                                        meta=dict(method="all_mlps"))


def non_localized(model, name: str = "non-localized") -> Localization:
    """Every attention and MLP weight of the model (the paper's non-localized baseline)."""
    comps = [f"{k}{l}" for l in range(len(_layers_of(model))) for k in ("a", "m")]
    return Localization.from_components(model, comps, name=name, meta=dict(method="non_localized"))


def _layers_of(model):
    return _hf_model(model).model.layers

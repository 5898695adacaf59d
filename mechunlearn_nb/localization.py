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

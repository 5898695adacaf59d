"""Weight masking: which part of an edit did the optimisation actually need?

An edit trained on many weights (all MLPs, or every attention and MLP weight)
changes all of them a little. That does not mean all of those changes matter:
gradient descent spreads its update over every weight it is allowed to touch.
To see which weights *carry* the edit, we learn a mask over the edit's delta.

The method. Let ``W0`` be a base weight and ``Δ`` the edit's change of it, so
the edited weight is ``W0 + Δ``. Group the entries of ``Δ`` into *units*
(``granularity``): the rows of each weight matrix (an output neuron of a
projection: for an MLP's ``gate``/``up`` projections a hidden neuron, for
``down`` a residual-stream direction), its columns, the whole tensor, or a whole
component (an MLP or an attention layer of one block). Each unit ``u`` gets a
logit ``s_u`` and a mask value ``m_u = sigmoid(s_u)`` in ``[0, 1]``; the
masked model uses ``W0 + m ⊙ Δ``. The logits start high (``m ≈ 0.95``: the
full edit) and are trained, with the model's weights frozen, to minimise

    edit loss(W0 + m ⊙ Δ)  +  λ · (share of the delta's entries kept)

where the edit loss is the edit's own objective on its forget facts
(cross-entropy toward the new answer for an injection, ``-log(1 - p_true)``
for unlearning), at the last prompt token, and the share kept is
``Σ_u n_u m_u / Σ_u n_u`` (``n_u``: entries in unit ``u``) — an L1 penalty on
the mask, i.e. a relaxed L0 count of the delta's entries. A unit the edit loss
does not need is pushed to 0 by the penalty; a unit it needs is held up by the
loss. At the end the mask is made binary (``m_u > 0.5``) and the edit is
measured again with only the kept units: if the edit still holds, those units
are what it needed.

Read the result per component (block, attention or MLP): the share of the
delta kept there. For an edit trained on every weight, a mask that keeps the
fact-lookup MLPs and drops the rest says the look-up is where the fact was
changed; one that keeps late attention and MLPs says the optimiser preferred
to change how the answer is read out.

Gradients with respect to the mask come without re-implementing the model:
the masked weights are written into the model, a forward and backward pass
gives ``∂L/∂W``, and since ``W = W0 + m ⊙ Δ``, ``∂L/∂m_u = Σ_{i∈u} ∂L/∂W_i · Δ_i``
(the chain rule, applied by autograd on ``m ⊙ Δ`` with ``∂L/∂W`` as the
incoming gradient). The base weights are copied back on exit, bit for bit.
The optimisation is the loop of :mod:`.train`: the trainable tensors are the
mask logits, the loss is the edit's forget loss plus the penalty, and the
chain rule runs after each backward pass.
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
import torch

from . import editing, train
from .models import hf_model, named_parameters
from .scoring import device_of

GRANULARITIES = ("row", "column", "tensor", "component")


@dataclass
class MaskConfig:
    """Hyperparameters of the mask search (plain values; sensible ranges in the comments)."""

    granularity: str = "row"   # unit of the mask: "row", "column", "tensor" or "component"
    steps: int = 60            # Adam steps on the mask logits; 30-200
    lr: float = 0.1            # Adam learning rate on the logits; 0.05-0.5
    sparsity: float = 1.0      # λ: weight of the share-of-delta-kept penalty; 0.1-10 (higher: sparser)
    init_logit: float = 3.0    # starting logit (sigmoid(3) = 0.95: start from the full edit)
    batch_size: int = 16       # forget facts per step
    threshold: float = 0.5     # a unit is kept when its mask value is above this
    eval_facts: int = 64       # at most this many forget / maintain facts in the accuracies

    def __post_init__(self):
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"Unknown granularity {self.granularity!r}; choose one of {GRANULARITIES}.")
        if self.steps < 1 or self.batch_size < 1 or not self.lr > 0 or self.sparsity < 0:
            raise ValueError("steps and batch_size must be >= 1, lr > 0 and sparsity >= 0.")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be strictly between 0 and 1, got {self.threshold}.")


def component_of(weight: str) -> tuple[int, str]:
    """``(layer, kind)`` of a clean weight name: kind ``"attn"``, ``"mlp"`` or ``"other"`` (layer -1 if none)."""
    m = re.search(r"layers\.(\d+)\.(self_attn|mlp)\.", weight)
    if not m:
        return -1, "other"
    return int(m.group(1)), "attn" if m.group(2) == "self_attn" else "mlp"


def _unit_shape(t: torch.Tensor, granularity: str) -> tuple[int, ...]:
    """Shape of the mask logits of one tensor (broadcastable against it)."""
    if granularity == "row":
        return (t.shape[0],) + (1,) * (t.dim() - 1)
    if granularity == "column" and t.dim() >= 2:
        return (1, t.shape[1]) + (1,) * (t.dim() - 2)
    return (1,) * t.dim()


@dataclass
class MaskResult:
    """What :func:`mask_analysis` returns.

    Attributes:
        components: per component ``layer, kind, component, n_params, frac_kept, mean_mask, delta_norm,
            kept_delta_norm`` (``frac_kept``: share of the component's delta entries whose unit was kept).
        accuracy: ``variant, forget_acc, edit_acc, maintain_acc, frac_kept`` for the variants ``"no edit"``,
            ``"full edit"``, ``"masked edit"`` (binary mask) and ``"soft mask"``.
        history: ``step, loss, edit_loss, kept`` per step.
        masks: weight name → mask values (``sigmoid(logits)``), shaped to broadcast against the weight.
        delta: the analysed edit's :class:`~mechunlearn_nb.editing.Delta`.
        meta: settings, timing.
    """

    components: pd.DataFrame
    accuracy: pd.DataFrame
    history: pd.DataFrame
    masks: dict[str, torch.Tensor]
    delta: editing.Delta
    meta: dict = field(default_factory=dict)

    @property
    def frac_kept(self) -> float:
        """Share of all the delta's entries that the binary mask keeps."""
        c = self.components
        return float((c["frac_kept"] * c["n_params"]).sum() / c["n_params"].sum())

    def masked_delta(self, threshold: float | None = None) -> editing.Delta:
        """The edit restricted to the kept units, as a :class:`~mechunlearn_nb.editing.Delta` to apply or save."""
        t = self.meta["threshold"] if threshold is None else threshold
        src = self.delta
        tensors = {n: d * (self.masks[n].to(d.device) > t).to(d.dtype) for n, d in src.tensors.items()}
        return editing.Delta(tensors, dict(src.masks), src.model)


def mask_analysis(model, result, task, config: MaskConfig | None = None, *, seed: int = 0,
                  progress: bool = True) -> MaskResult:
    """Learn a sparse mask over an edit's delta that keeps the edit working (see the module docstring).

    Args:
        model: the base model (the masked edit is written into its weights while training and measuring;
            the base weights are restored on exit).
        result: the :class:`~mechunlearn_nb.editing.EditResult` to analyse.
        task: the task it was trained on (its forget facts drive the edit loss).
        config: hyperparameters (default :class:`MaskConfig`).
        seed: the order of the batches.
        progress: show a progress bar.

    Returns:
        A :class:`MaskResult`.
    """
    config = config or MaskConfig()
    delta = result.delta
    if delta.is_applied(model):
        raise RuntimeError("The edit's delta is applied to the model; mask_analysis needs the base model. "
                           "Fix: result.revert(model) first.")
    objective = result.config.objective
    injection = objective == "injection"
    forget = train.tokenise_facts(model, task, "forget", need_new=injection)
    maintain = train.tokenise_facts(model, task, "maintain_eval") if len(task.maintain_eval) else None
    rng = np.random.default_rng(seed)
    term = train.FactTerm("edit_loss", forget, train.Sampler(len(forget), config.batch_size, rng),
                          train.FORGET_LOSSES[objective])
    eval_f = sorted(rng.permutation(len(forget))[: config.eval_facts].tolist())
    eval_m = sorted(rng.permutation(len(maintain))[: config.eval_facts].tolist()) if maintain is not None else []
    dev = device_of(model)
    params = named_parameters(model)
    names = list(delta.tensors)
    for n in names:
        if n not in params:
            raise ValueError(f"The model has no weight {n!r} that this edit changes. Fix: use the model it was made on.")
    deltas = {n: delta.tensors[n].to(dev, params[n].dtype) for n in names}
    # entries each unit covers (only those the edit may change, for head-level localizations)
    allowed = {n: (torch.ones_like(deltas[n], dtype=torch.bool) if delta.masks[n] is None else delta.masks[n].to(dev))
               for n in names}
    comp = {n: component_of(n) for n in names}
    if config.granularity == "component":
        keys = sorted(set(comp.values()))
        logits = torch.full((len(keys),), config.init_logit, device=dev, requires_grad=True)
        index = {n: keys.index(comp[n]) for n in names}
        expand = lambda n, m: m[index[n]].reshape((1,) * deltas[n].dim())  # noqa: E731
        counts = torch.zeros(len(keys), device=dev)
        for n in names:
            counts[index[n]] += allowed[n].sum()
        leaves = [logits]
    else:
        logits = {n: torch.full(_unit_shape(deltas[n], config.granularity), config.init_logit, device=dev,
                                requires_grad=True) for n in names}
        expand = lambda n, m: m[n]  # noqa: E731
        counts = {n: allowed[n].float().sum_to_size(logits[n].shape) for n in names}
        leaves = list(logits.values())
    total = float(sum(allowed[n].sum() for n in names))

    def mask_values(hard: bool = False):
        if config.granularity == "component":
            m = torch.sigmoid(logits)
            return (m > config.threshold).float() if hard else m
        return {n: ((torch.sigmoid(l) > config.threshold).float() if hard else torch.sigmoid(l)) for n, l in logits.items()}

    def kept_share(m) -> torch.Tensor:
        if config.granularity == "component":
            return (m * counts).sum() / total
        return sum((m[n] * counts[n]).sum() for n in names) / total

    weights = {n: params[n] for n in names}  # the base weights W0, copied back on exit (``originals``)

    @torch.no_grad()
    def write(m) -> None:
        for n in names:
            params[n].copy_(originals[n] + expand(n, m).detach() * deltas[n])

    def accuracies() -> dict:
        return train.edit_accuracies(model, forget, eval_f, maintain, eval_m, with_new=injection)

    current: dict = {}

    def step_loss(step: int):
        current["m"] = m = mask_values()
        write(m)
        edit_loss, record = train.fact_step(model, [term])
        current["share"] = share = kept_share(m)
        return edit_loss, dict(record, loss=record["edit_loss"] + config.sparsity * share.item(), kept=share.item())

    def chain_rule() -> None:
        # W = W0 + m * delta, so dL/dm = sum over the unit of dL/dW * delta: backpropagate the weights'
        # gradients (and the sparsity penalty) into the mask logits
        m, share = current["m"], current["share"]
        grads = [params[n].grad for n in names]
        masked = [expand(n, m) * deltas[n] for n in names]
        torch.autograd.backward(masked + [config.sparsity * share], grads + [torch.ones_like(share)])
        for n in names:
            params[n].grad = None

    rows = []
    t0 = time.perf_counter()
    hf = hf_model(model)
    was_training = hf.training
    hf.eval()
    try:
        with train.restored(weights) as originals:
            rows.append(dict(variant="no edit", frac_kept=0.0, **accuracies()))
            with train.only_trainable(model, weights):
                history = train.train(leaves, step_loss, config.steps, config.lr, after_backward=chain_rule,
                                      desc="mask", progress=progress)
            with torch.no_grad():
                for variant, m, share in (("full edit", None, 1.0),
                                          ("masked edit", mask_values(hard=True), None),
                                          ("soft mask", mask_values(), None)):
                    if m is None:
                        for n in names:
                            params[n].copy_(originals[n] + deltas[n])
                    else:
                        write(m)
                        share = float(kept_share(m))
                    rows.append(dict(variant=variant, frac_kept=share, **accuracies()))
                soft = mask_values()
                hard = mask_values(hard=True)
    finally:
        hf.train(was_training)

    masks = {n: expand(n, soft).detach().cpu() for n in names}
    comp_rows = {}
    for n in names:
        layer, kind = comp[n]
        keep = (expand(n, hard).expand_as(deltas[n]) > 0) & allowed[n]
        soft_full = expand(n, soft).expand_as(deltas[n])[allowed[n]]
        r = comp_rows.setdefault((layer, kind), dict(n_params=0, kept=0, mask_sum=0.0, sq=0.0, kept_sq=0.0))
        r["n_params"] += int(allowed[n].sum())
        r["kept"] += int(keep.sum())
        r["mask_sum"] += float(soft_full.sum())
        r["sq"] += float((deltas[n] ** 2).sum())
        r["kept_sq"] += float((deltas[n][keep] ** 2).sum())
    components = pd.DataFrame([dict(layer=l, kind=k, component=("m" if k == "mlp" else "a" if k == "attn" else "x") + str(l),
                                    n_params=r["n_params"], frac_kept=r["kept"] / r["n_params"],
                                    mean_mask=r["mask_sum"] / r["n_params"], delta_norm=r["sq"] ** 0.5,
                                    kept_delta_norm=r["kept_sq"] ** 0.5)
                               for (l, k), r in sorted(comp_rows.items())])
    accuracy = pd.DataFrame(rows)[["variant", "forget_acc", "edit_acc", "maintain_acc", "frac_kept"]]
    accuracy = accuracy.assign(localization=result.localization, task=task.name, seed=seed)
    meta = dict(asdict(config), seed=seed, localization=result.localization, task=task.name, objective=objective,
                n_delta_params=int(total), seconds=round(time.perf_counter() - t0, 2))
    return MaskResult(components.assign(localization=result.localization), accuracy,
                      history.reindex(columns=["step", "loss", "edit_loss", "kept"]), masks, delta, meta)

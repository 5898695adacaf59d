"""Masked editing and unlearning: change a fact by training only a localization's weights.

Guo et al. (2024) edit or unlearn facts by gradient descent restricted to the
weights a *localization* names (the fact-lookup MLPs, the components that
output tracing ranks highest, a random set of the same size ...); every other
weight is frozen. Comparing localizations under the same parameter budget
asks *where* a change has to be made for it to hold up.

The loss has three parts, each computed where it is needed and nowhere else:

- the **forget term** on the facts being changed, at the last prompt token:
  ``"injection"`` is the cross-entropy toward the new answer (one token, e.g.
  ``" golf"``); ``"unlearning"`` is ``-log(1 - p(true answer))``, which pushes
  the true answer's probability down without naming a replacement (the
  gradient grows as p → 1 and vanishes as p → 0, unlike plain gradient ascent);
- the **maintain term**: cross-entropy toward the true answer of other known
  facts, so that the edit does not drag them along;
- a **language-modelling term** on a few hundred tokens of general text
  (``data.load_general_text``, with paragraphs mentioning the edited subjects
  removed), which keeps the model a language model.

The loop, the losses and the accuracies are those of :mod:`.train` (the same
loop the attacks and the weight mask use); an edit says only what is trainable
(``loc``'s weights, with the gradient outside a head's mask zeroed each step)
and which losses apply. Fact terms unembed only the last real token of each
prompt: the 262k-token vocabulary makes full logits at every position the most
expensive part of a step. Only the general-text term needs full-vocabulary
logits at every position, and it is kept to a small chunk.

Optimisation is AdamW without weight decay (so entries whose gradient is
masked to zero — the weights of heads outside a head-level localization — stay
exactly as they were), a cosine learning-rate schedule and gradient clipping.

**An edit is a delta.** :func:`edit` trains in place, records the difference
of every localized tensor, and then restores the original weights bit for bit:
when it returns the model is exactly the base model again, so one loaded model
serves many edits. The result holds a :class:`Delta` that is applied and
reverted explicitly (``with result.applied(model): ...``) and saved to a run
folder of its own with a JSON manifest. Neither the loaded base model (after
``edit`` returns) nor the cached model folder on disk is ever modified.

Hyperparameters per kind of localization (:data:`DEFAULTS`, keyed by
:class:`~mechunlearn_nb.localization.Kind`), tuned like the
paper tuned its per-localization learning rates; see :class:`EditConfig`.
"""

from __future__ import annotations

import json
import math
import os
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from . import train
from .checks import ParameterError, check_float, check_int, check_str
from .io import atomic_path
from .localization import Kind, Localization
from .models import cache_dir, hf_model, model_name, named_parameters

OBJECTIVES = tuple(train.FORGET_LOSSES)  # ("injection", "unlearning")
DEFAULT_FIX = {"lr": 2e-4, "grad_clip": 1.0}  # examples named in error messages


# ---------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------


@dataclass
class EditConfig:
    """Hyperparameters of one edit (plain values; sensible ranges in the comments).

    Use :meth:`for_localization` for the tuned defaults of a kind of localization.
    """

    objective: str = "injection"  # "injection" (cross-entropy to the new answer) or "unlearning" (-log(1 - p_true))
    steps: int = 40               # optimiser steps; 20-100
    lr: float = 2e-4              # peak learning rate (cosine decay to 0); depends strongly on the localization
    batch_size: int = 16          # forget/edit facts per step
    maintain_batch_size: int = 16  # maintain facts per step (0: no maintain term)
    forget_coef: float = 1.0      # weight of the forget term; 0.2-5
    maintain_coef: float = 1.0    # weight of the maintain cross-entropy
    lm_coef: float = 1.0          # weight of the general-text language-modelling loss (0: none)
    lm_tokens: int = 128          # general-text tokens per step (full-vocabulary logits there: keep small)
    lm_window: int = 64           # tokens per general-text window (lm_tokens / lm_window windows per step)
    grad_clip: float = 1.0        # max global gradient norm
    warmup_steps: int = 0         # linear warm-up before the cosine decay
    eval_every: int = 10          # accuracies on the training facts every this many steps (0: start and end only)
    eval_facts: int = 64          # at most this many forget / maintain facts in those accuracies
    precision: str = "float32"    # the training forward pass: "float32" or "bfloat16-mixed" (train.PRECISIONS)

    def __post_init__(self):
        # types first (steps=2.5 or lr="1e-3" would otherwise pass here and fail deep inside edit)
        check_str("EditConfig.objective", self.objective, choices=OBJECTIVES)
        check_str("EditConfig.precision", self.precision, choices=train.PRECISIONS)
        for name in ("steps", "batch_size", "lm_window"):
            setattr(self, name, check_int(f"EditConfig.{name}", getattr(self, name), min=1))
        for name in ("maintain_batch_size", "lm_tokens", "warmup_steps", "eval_every", "eval_facts"):
            setattr(self, name, check_int(f"EditConfig.{name}", getattr(self, name), min=0))
        for name in ("lr", "grad_clip"):
            setattr(self, name, check_float(f"EditConfig.{name}", getattr(self, name)))
            if not getattr(self, name) > 0:
                raise ParameterError(f"EditConfig.{name} must be positive, got {getattr(self, name)}. "
                                     f"Fix: pass a positive number, e.g. {name}={DEFAULT_FIX[name]}.")
        for name in ("forget_coef", "maintain_coef", "lm_coef"):
            setattr(self, name, check_float(f"EditConfig.{name}", getattr(self, name), min=0))

    @classmethod
    def for_localization(cls, loc: Localization | Kind | str, **overrides) -> EditConfig:
        """The tuned defaults for a localization's kind (see :data:`DEFAULTS`), with overrides.

        Args:
            loc: a :class:`~mechunlearn_nb.localization.Localization` (its ``kind``), a
                :class:`~mechunlearn_nb.localization.Kind`, or a kind's value (``"all_mlps"``).
            overrides: :class:`EditConfig` fields to set.
        """
        try:
            kind = loc.kind if isinstance(loc, Localization) else Kind(loc)
        except ValueError:
            raise ValueError(f"Unknown localization kind {loc!r}; choose one of {[k.value for k in Kind]}.") from None
        unknown = set(overrides) - {f.name for f in fields(cls)}
        if unknown:
            raise TypeError(f"Unknown EditConfig field(s) {sorted(unknown)}; fields: {[f.name for f in fields(cls)]}.")
        return cls(**{**DEFAULTS[kind], **overrides})


#: Defaults per kind of localization, chosen on the embedded Gemma 3 270M (edit 16 athletes, injection);
#: the sweep and its numbers are in :data:`TUNING`.
DEFAULTS: dict[Kind, dict] = {
    Kind.LOCALIZED: dict(lr=2e-4),
    Kind.ALL_MLPS: dict(lr=1e-4),
    Kind.NON_LOCALIZED: dict(lr=3e-5),
}

#: How the defaults were chosen (the numbers of the sweep that chose them).
TUNING = """\
Sweep: scripts/tune_edit.py on the embedded Gemma 3 270M. Task: edit 16 known athletes (seed 0) to another
sport, injection, 40 steps, every other EditConfig default; maintain sets of 64; one thread. Each kind is
represented by one localization. Accuracies are argmax over the candidate sports in the fact prompt;
"held-out maintain" is known athletes the edit never trained on; "LM" is the general-text loss after
minus before (4 held-out paragraphs).

kind           localization              lr      edit acc  held-out maintain  LM change  seconds
localized      fact lookup m2-m5 (15.7M)  5e-5    1.00      0.875              -0.053     448
localized      fact lookup m2-m5 (15.7M)  1e-4    1.00      0.859              -0.027     280
localized      fact lookup m2-m5 (15.7M)  2e-4    1.00      0.812              +0.123     302
localized      fact lookup m2-m5 (15.7M)  6e-4    1.00      0.766              +0.448     289
all_mlps       all MLPs (70.8M)           1e-4    1.00      0.828              +0.268     377
all_mlps       all MLPs (70.8M)           3e-4    1.00      0.688              +0.945     372
non_localized  non-localized (100.3M)     3e-5    1.00      0.906              +0.011     656
non_localized  non-localized (100.3M)     1e-4    1.00      0.656              +0.435     611

Every rate tried takes the edit in 40 steps; a smaller rate leaves other athletes and general text
less disturbed. The defaults keep the larger rates because the notebooks' small FAST runs edit in only
5-8 steps at these rates (edit accuracy 0.5-1.0 after 5 steps in notebooks 05 and 09); the table shows
what that costs at 40 steps. For a 40-step edit with the fewest side effects pass lr=1e-4 (or 5e-5)
for budget-matched localizations; rates below 3e-5 for non-localized edits were not tried.
"""


# ---------------------------------------------------------------------------
# The delta: apply, revert, save, load
# ---------------------------------------------------------------------------


#: attribute of the Hugging Face model that holds its ledger of applied deltas
_LEDGER = "_mechunlearn_applied_deltas"


def _ledger(model) -> list[tuple[Delta, dict[str, torch.Tensor]]]:
    """The model's applied deltas, oldest first, each with the weights it replaced.

    The ledger lives on the model object itself (not on the deltas), so two deltas
    applied to one model know about each other, and a model freed and another loaded
    at the same address never inherits a stale entry.
    """
    hf = hf_model(model)
    ledger = hf.__dict__.get(_LEDGER)
    if ledger is None:
        ledger = []
        hf.__dict__[_LEDGER] = ledger
    return ledger


def applied_deltas(model) -> list[Delta]:
    """The deltas applied to ``model`` now, in the order they were applied (empty: the base model)."""
    return [d for d, _ in _ledger(model)]


def revert_all(model):
    """Revert every applied delta, last applied first: the model is the base model again; returns it."""
    for delta in reversed(applied_deltas(model)):
        delta.revert(model)
    return model


def require_base_model(model, what: str) -> None:
    """Raise when any delta is applied: ``what`` (e.g. ``"evaluate()"``) needs the unedited model.

    Raises:
        RuntimeError: naming the applied deltas and the fix (:func:`revert_all`).
    """
    applied = applied_deltas(model)
    if applied:
        names = ", ".join(d.label for d in applied)
        raise RuntimeError(f"{what} needs the base model, but {len(applied)} delta(s) are applied to it: {names}. "
                           "Fix: revert them first (result.revert(model), last applied first, or "
                           "editing.revert_all(model)).")


class Delta:
    """The change an edit makes: ``edited - original`` for each localized tensor.

    Attributes:
        tensors: parameter name (as in :func:`models.named_parameters`) → difference tensor.
        masks: parameter name → boolean mask of the entries that may change, or ``None`` (whole tensor).
        model: the name of the model the delta belongs to.
        name: a label for messages (e.g. the localization and seed); optional.

    :meth:`apply` adds the differences in place and keeps a copy of the original tensors, which
    :meth:`revert` copies back: a revert restores every weight bit for bit.

    **Several deltas on one model.** Each model keeps a ledger of the deltas applied to it, in
    order (:func:`applied_deltas`). Revert them in the reverse order (last applied first), or
    with :func:`revert_all`. Reverting a delta while a *later* one that changes a weight in
    common is still applied raises an error naming the order (``revert B first: applied A then
    B``): copying A's saved weights back would silently drop B's change to the shared weight and
    leave part of A's change once B is reverted. A delta that shares no weight with the deltas
    applied after it may be reverted at any time; the result is exact either way.
    """

    def __init__(self, tensors: dict[str, torch.Tensor], masks: dict[str, torch.Tensor | None], model: str,
                 name: str = ""):
        missing = set(tensors) ^ set(masks)
        if missing:
            raise ValueError(f"Delta: tensors and masks name different weights: {sorted(missing)[:3]}.")
        self.tensors = tensors
        self.masks = masks
        self.model = model
        self.name = name

    @property
    def label(self) -> str:
        """``name`` when set, else a short description (weights changed)."""
        if self.name:
            return repr(self.name)
        first = next(iter(self.tensors), "no weights")
        more = f" +{len(self.tensors) - 1} more" if len(self.tensors) > 1 else ""
        return f"<delta on {first}{more}>"

    @property
    def n_params(self) -> int:
        """Entries the delta may change (the localization's parameter count)."""
        return int(sum(t.numel() if self.masks[n] is None else int(self.masks[n].sum()) for n, t in self.tensors.items()))

    def _check(self, model, strict: bool) -> dict[str, torch.nn.Parameter]:
        if strict and model_name(model) != self.model:
            raise ValueError(f"This delta was made on model {self.model!r}, not {model_name(model)!r}. "
                             "Fix: apply it to the model it was trained on (or pass strict=False if the "
                             "weights are the same under another name).")
        params = named_parameters(model)
        for n, t in self.tensors.items():
            if n not in params:
                raise ValueError(f"The model has no weight {n!r} that this delta changes. Fix: load the model it was made on.")
            if tuple(params[n].shape) != tuple(t.shape):
                raise ValueError(f"Weight {n!r}: the model's shape {tuple(params[n].shape)} differs from the delta's {tuple(t.shape)}.")
        return params

    def is_applied(self, model) -> bool:
        return any(d is self for d, _ in _ledger(model))

    @torch.no_grad()
    def apply(self, model, strict: bool = True):
        """Add the delta to the model's weights in place (keeping the originals for :meth:`revert`); returns the model."""
        if self.is_applied(model):
            raise RuntimeError(f"Delta {self.label} is already applied to this model. Fix: revert it first (delta.revert(model)).")
        params = self._check(model, strict)
        backup = {}
        for n, t in self.tensors.items():
            p = params[n]
            backup[n] = p.detach().clone()
            p.add_(t.to(device=p.device, dtype=p.dtype))
        _ledger(model).append((self, backup))
        return model

    @torch.no_grad()
    def revert(self, model):
        """Restore the weights :meth:`apply` changed, bit for bit; returns the model.

        Raises:
            RuntimeError: the delta is not applied, or a delta applied after it changes a weight
                in common and is still applied (revert that one first).
        """
        ledger = _ledger(model)
        pos = next((i for i, (d, _) in enumerate(ledger) if d is self), None)
        if pos is None:
            raise RuntimeError(f"Delta {self.label} is not applied to this model, so there is nothing to revert. "
                               "Fix: call apply(model) first, or use `with delta.applied(model): ...`.")
        later = [d for d, _ in ledger[pos + 1:] if set(d.tensors) & set(self.tensors)]
        if later:
            order = " then ".join(d.label for d, _ in ledger)
            shared = sorted(set(later[-1].tensors) & set(self.tensors))
            raise RuntimeError(f"Cannot revert {self.label} yet: revert {later[-1].label} first (applied {order}; "
                               f"both change {shared[0]}{' and more' if len(shared) > 1 else ''}). Reverting out of "
                               "order would leave part of an edit in the model. Fix: revert last applied first, "
                               "or call editing.revert_all(model).")
        params = named_parameters(model)
        _, backup = ledger.pop(pos)
        for n, original in backup.items():
            params[n].copy_(original)
        return model

    @contextmanager
    def applied(self, model, strict: bool = True):
        """``with delta.applied(model): ...`` — the edited model inside the block, the original after it."""
        self.apply(model, strict=strict)
        try:
            yield model
        finally:
            self.revert(model)

    def norms(self) -> pd.DataFrame:
        """One row per changed tensor: ``weight, n_params, n_changed, l2, max_abs``."""
        rows = []
        for n, t in self.tensors.items():
            rows.append(dict(weight=n, n_params=t.numel() if self.masks[n] is None else int(self.masks[n].sum()),
                             n_changed=int((t != 0).sum()), l2=float(t.float().norm()), max_abs=float(t.abs().max())))
        return pd.DataFrame(rows)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Flat tensors for safetensors: ``delta/<name>`` and ``mask/<name>`` (masked tensors only)."""
        out = {f"delta/{n}": t.detach().cpu().contiguous() for n, t in self.tensors.items()}
        out.update({f"mask/{n}": m.cpu().contiguous() for n, m in self.masks.items() if m is not None})
        return out

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor], model: str, name: str = "") -> Delta:
        tensors = {k[len("delta/"):]: v for k, v in state.items() if k.startswith("delta/")}
        masks = {n: state.get(f"mask/{n}") for n in tensors}
        return cls(tensors, masks, model, name=name)

    def __repr__(self) -> str:
        label = f", {self.name!r}" if self.name else ""
        return f"Delta({len(self.tensors)} tensors, {self.n_params:,} parameters, model {self.model!r}{label})"


@dataclass
class EditResult:
    """What :func:`edit` returns: the delta, the training history and how it was made.

    Attributes:
        delta: the :class:`Delta` (apply it to see the edited model).
        history: one row per step: ``step, lr, loss, forget_loss, maintain_loss, lm_loss, grad_norm``,
            plus ``forget_acc`` (true answer), ``edit_acc`` (new answer) and ``maintain_acc`` on the
            training facts at step 0 and every ``eval_every`` steps (NaN elsewhere).
        config: the :class:`EditConfig` used.
        manifest: model, localization (name, components, n_params), task, seed, config, timing.
    """

    delta: Delta
    history: pd.DataFrame
    config: EditConfig
    manifest: dict = field(default_factory=dict)

    # the delta's verbs, for convenience
    def apply(self, model, strict: bool = True):
        self._name_delta()
        return self.delta.apply(model, strict=strict)

    def revert(self, model):
        return self.delta.revert(model)

    def applied(self, model, strict: bool = True):
        self._name_delta()
        return self.delta.applied(model, strict=strict)

    def _name_delta(self) -> None:
        # so that a message about applied deltas names the edit, not just its weights
        if not self.delta.name and self.localization:
            self.delta.name = f"{self.localization} (seed {self.seed})"

    @property
    def localization(self) -> str:
        return self.manifest.get("localization", {}).get("name", "")

    @property
    def task(self) -> str:
        return self.manifest.get("task", {}).get("name", "")

    @property
    def seed(self) -> int:
        return int(self.manifest.get("seed", 0))

    def final(self) -> dict:
        """The last evaluated accuracies on the training facts (``forget_acc``, ``edit_acc``, ``maintain_acc``)."""
        out = {}
        for k in ("forget_acc", "edit_acc", "maintain_acc"):
            values = self.history[k].dropna() if k in self.history else []
            if len(values):
                out[k] = float(values.iloc[-1])
        return out

    def save(self, folder: str | os.PathLike, metrics: dict | None = None, overwrite: bool = False) -> Path:
        """Write the run folder: ``delta.safetensors``, ``manifest.json``, ``history.csv``.

        The folder is written under a temporary name beside it and renamed when complete.

        Args:
            folder: a new (or empty) folder for this edit alone.
            metrics: numbers to record in the manifest (e.g. evaluation results).
            overwrite: replace an existing non-empty folder.

        Returns:
            The folder.
        """
        from safetensors.torch import save_file

        folder = Path(folder).expanduser().resolve()
        protected = (cache_dir() / "models").expanduser().resolve()
        if folder == protected or protected in folder.parents:
            raise ValueError(f"{folder} is inside the model cache {protected}, which is never written to. "
                             "Fix: save edits to a folder of their own (e.g. outputs/edits/<name>).")
        if folder.exists() and not folder.is_dir():
            raise FileExistsError(f"{folder} exists and is not a folder. Fix: choose another path.")
        if folder.exists() and any(folder.iterdir()) and not overwrite:
            raise FileExistsError(f"Run folder {folder} already exists and is not empty; an edit never writes into "
                                  "another run's folder. Fix: choose a new folder, or pass overwrite=True to replace it.")
        manifest = dict(self.manifest, metrics=_jsonable(dict(metrics or self.manifest.get("metrics", {}))),
                        config=asdict(self.config), format=1,
                        tensors={n: dict(shape=list(t.shape), masked=self.delta.masks[n] is not None)
                                 for n, t in self.delta.tensors.items()})
        with atomic_path(folder) as tmp:
            tmp.mkdir()
            save_file(self.delta.state_dict(), str(tmp / "delta.safetensors"))
            (tmp / "manifest.json").write_text(json.dumps(_jsonable(manifest), indent=2))
            self.history.to_csv(tmp / "history.csv", index=False)
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike) -> EditResult:
        """Read a run folder written by :meth:`save`."""
        from safetensors.torch import load_file

        folder = Path(folder).expanduser()
        for name in ("manifest.json", "delta.safetensors"):
            if not (folder / name).exists():
                raise FileNotFoundError(f"{folder / name} not found: {folder} is not an edit's run folder. "
                                        "Fix: point to a folder written by EditResult.save.")
        manifest = json.loads((folder / "manifest.json").read_text())
        delta = Delta.from_state_dict(load_file(str(folder / "delta.safetensors")), manifest["model"])
        history = pd.read_csv(folder / "history.csv") if (folder / "history.csv").exists() else pd.DataFrame()
        return cls(delta, history, EditConfig(**manifest["config"]), manifest)

    def __repr__(self) -> str:
        fin = ", ".join(f"{k} {v:.2f}" for k, v in self.final().items())
        return f"EditResult({self.localization!r} on {self.task!r}, seed {self.seed}: {fin}; {self.delta!r})"


def _jsonable(obj):
    """Plain JSON values: numbers, strings, lists and dicts (other things become their repr, shortened)."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        return None if math.isnan(float(obj)) else float(obj)
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    return repr(obj)[:200]


# ---------------------------------------------------------------------------
# The edit
# ---------------------------------------------------------------------------


def edit(model, loc: Localization, task, config: EditConfig | None = None, *, seed: int = 0,
         progress: bool = True, on_step=None) -> EditResult:
    """Edit or unlearn a task's facts by training only ``loc``'s weights; return the delta.

    The model is trained in place and then restored: **when this returns, the model holds its
    original weights again** (bit for bit, also after an error or an interrupt). Apply the result
    to see the edited model: ``with result.applied(model): ...``.

    Args:
        model: the bridge (:func:`models.load_model`).
        loc: the weights to train (:class:`~mechunlearn_nb.localization.Localization`).
        task: a :class:`~mechunlearn_nb.tasks.Task` (its forget facts are trained toward their
            ``new_answer`` or away from their ``true_answer``; its ``maintain_train`` facts are kept).
        config: hyperparameters; default :meth:`EditConfig.for_localization` of ``loc``.
        seed: the order of the batches and general-text windows (same seed, same history).
        progress: show a progress bar.
        on_step: called with each history row as soon as it is complete (``step, loss, ...`` and, at
            the evaluated steps, the accuracies): a live curve (:func:`.widgets.unlearning_lab`).

    Returns:
        An :class:`EditResult` (delta, history, config, manifest).
    """
    config = config or EditConfig.for_localization(loc)
    if len(task.forget) == 0:
        raise ValueError(f"Task {task.name!r} has an empty forget set: there is nothing to edit. "
                         "Fix: build the task from facts the model knows (tasks.forget_sport / edit_athletes).")
    injection = config.objective == "injection"
    forget = train.tokenise_facts(model, task, "forget", need_new=injection)
    use_maintain = config.maintain_coef > 0 and config.maintain_batch_size > 0 and len(task.maintain_train) > 0
    maintain = train.tokenise_facts(model, task, "maintain_train") if len(task.maintain_train) else None

    # what is drawn from the seed, in this order: the batches as they are needed, the facts the
    # accuracies are measured on (now), and the general-text windows (each step, after the batches)
    rng = np.random.default_rng(seed)
    terms = [train.FactTerm("forget_loss", forget, train.Sampler(len(forget), config.batch_size, rng),
                            train.FORGET_LOSSES[config.objective], config.forget_coef)]
    if use_maintain:
        terms.append(train.FactTerm("maintain_loss", maintain, train.Sampler(len(maintain), config.maintain_batch_size, rng),
                                    train.maintain_loss, config.maintain_coef))
    eval_f = sorted(rng.permutation(len(forget))[: config.eval_facts].tolist())
    eval_m = sorted(rng.permutation(len(maintain))[: config.eval_facts].tolist()) if maintain is not None else []
    general = None
    if config.lm_coef > 0 and config.lm_tokens > 0:
        general = train.GeneralText(model, train.general_text("train", exclude=task.subjects), config.lm_tokens,
                                    config.lm_window, rng)

    def evaluate(step: int) -> dict:
        return train.edit_accuracies(model, forget, eval_f, maintain, eval_m,
                                     with_new=injection or bool((forget.new >= 0).all()))

    eval_steps = {0, config.steps} | {s for s in range(1, config.steps) if config.eval_every and s % config.eval_every == 0}
    t0 = time.perf_counter()
    params = loc.parameters(model)
    with train.restored(params) as originals, loc.trainable(model) as trainable:
        log = train.train(trainable, lambda step: train.fact_step(model, terms, general, config.lm_coef),
                          config.steps, config.lr, schedule=train.cosine_schedule(config.warmup_steps, config.steps),
                          grad_clip=config.grad_clip, after_backward=lambda: loc.mask_grads(trainable),
                          evaluate=evaluate, eval_steps=eval_steps, desc=f"edit [{loc.name}]", progress=progress,
                          on_step=on_step, precision=config.precision)
        with torch.no_grad():
            tensors = {}
            for n, p in trainable.items():
                d = p.detach() - originals[n]
                if loc.weights[n] is not None:
                    d = d * loc.weights[n].to(d.device)
                tensors[n] = d
    seconds = time.perf_counter() - t0

    cols = ["step", "lr", "loss", "forget_loss", "maintain_loss", "lm_loss", "grad_norm", "forget_acc", "edit_acc", "maintain_acc"]
    history = log.reindex(columns=cols)
    timed = log[log["step"] > 0]
    delta = Delta(tensors, {n: (None if m is None else m.cpu()) for n, m in loc.weights.items()}, model_name(model))
    manifest = dict(
        model=model_name(model),
        localization=dict(name=loc.name, components=list(loc.components), n_params=int(loc.n_params),
                          kind=loc.kind.value, meta=_jsonable({k: v for k, v in loc.meta.items()
                                                               if isinstance(v, (str, int, float, bool, list))})),
        task=dict(name=task.name, dataset=task.dataset, n_forget=len(task.forget),
                  n_maintain_train=len(task.maintain_train), n_maintain_eval=len(task.maintain_eval),
                  subjects=task.subjects, meta=_jsonable(task.meta)),
        seed=int(seed), seconds=round(seconds, 2), step_seconds=[round(t, 4) for t in timed["seconds"]],
        step_cpu_seconds=[round(t, 4) for t in timed["cpu_seconds"]], created=time.strftime("%Y-%m-%dT%H:%M:%S"),
        torch=torch.__version__, final=_jsonable({}),
    )
    result = EditResult(delta, history, config, manifest)
    result.manifest["final"] = result.final()
    return result


def edit_each(model, locs: dict[str, Localization], task, *, seed: int = 0, progress: bool = True,
              **overrides) -> dict[str, EditResult]:
    """Edit ``task`` through each localization, each with its kind's tuned defaults and the same ``overrides``.

    Args:
        locs: ``{name: Localization}`` (e.g. from :func:`.registry.build`).
        overrides: :class:`EditConfig` fields set for every edit (``steps=40, eval_every=0`` ...).

    Returns:
        ``{name: EditResult}`` in the order of ``locs``; every edit's wall time is in its ``manifest["seconds"]``.
    """
    return {name: edit(model, loc, task, EditConfig.for_localization(loc, **overrides), seed=seed, progress=progress)
            for name, loc in locs.items()}


def finals(results: dict[str, EditResult]) -> pd.DataFrame:
    """One row per edit: ``localization, n_params, seconds`` and its last accuracies on the training facts."""
    return pd.DataFrame([dict(localization=name, n_params=r.manifest["localization"]["n_params"],
                              seconds=r.manifest["seconds"], **r.final()) for name, r in results.items()])

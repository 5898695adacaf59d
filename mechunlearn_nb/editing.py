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

Fact terms unembed only the last real token of each (right-padded) prompt
(``scoring.logits_at``): the 262k-token vocabulary makes full logits at every
position the most expensive part of a step. Only the general-text term needs
full-vocabulary logits at every position, and it is kept to a small chunk.

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

Hyperparameters per kind of localization (:data:`DEFAULTS`), tuned like the
paper tuned its per-localization learning rates; see :class:`EditConfig`.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from tqdm.auto import tqdm

from . import data as _data
from .localization import Localization
from .models import cache_dir, hf_model, model_name, named_parameters
from .scoring import answer_tokens, device_of, encode_prompts, hidden_states, logits_at, pad_right, single_token_id, unembed

OBJECTIVES = ("injection", "unlearning")


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

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise ValueError(f"Unknown objective {self.objective!r}; choose one of {OBJECTIVES}.")
        for name in ("steps", "batch_size", "lm_window"):
            if getattr(self, name) < 1:
                raise ValueError(f"EditConfig.{name} must be >= 1, got {getattr(self, name)}.")
        for name in ("maintain_batch_size", "lm_tokens", "warmup_steps", "eval_every", "eval_facts"):
            if getattr(self, name) < 0:
                raise ValueError(f"EditConfig.{name} must be >= 0, got {getattr(self, name)}.")
        if not self.lr > 0:
            raise ValueError(f"EditConfig.lr must be positive, got {self.lr}.")
        if min(self.forget_coef, self.maintain_coef, self.lm_coef) < 0 or not self.grad_clip > 0:
            raise ValueError("Loss coefficients must be >= 0 and grad_clip > 0.")

    @classmethod
    def for_localization(cls, loc: Localization | str, **overrides) -> EditConfig:
        """The tuned defaults for a localization's kind (see :data:`DEFAULTS`), with overrides."""
        kind = loc if isinstance(loc, str) else localization_kind(loc)
        if kind not in DEFAULTS:
            raise ValueError(f"Unknown localization kind {kind!r}; choose one of {list(DEFAULTS)}.")
        unknown = set(overrides) - {f.name for f in fields(cls)}
        if unknown:
            raise TypeError(f"Unknown EditConfig field(s) {sorted(unknown)}; fields: {[f.name for f in fields(cls)]}.")
        return cls(**{**DEFAULTS[kind], **overrides})


#: Defaults per kind of localization, chosen on the embedded Gemma 3 270M (edit 16 athletes, injection);
#: the sweep and its numbers are in :data:`TUNING`.
DEFAULTS: dict[str, dict] = {
    "localized": dict(lr=2e-4),
    "all_mlps": dict(lr=1e-4),
    "non_localized": dict(lr=3e-5),
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


def localization_kind(loc: Localization) -> str:
    """``"non_localized"``, ``"all_mlps"`` or ``"localized"`` (budget-matched component sets).

    Read from ``loc.meta["kind"]`` or ``loc.meta["method"]`` (set by the builders of
    :mod:`.localization`) when present, otherwise from the name.
    """
    for key in ("kind", "method"):
        kind = str(loc.meta.get(key, "")).lower().replace("-", "_").replace(" ", "_")
        if kind in DEFAULTS:
            return kind
    name = loc.name.lower().replace("-", " ").replace("_", " ")
    if "non" in name and "local" in name:
        return "non_localized"
    if "all" in name and "mlp" in name:
        return "all_mlps"
    return "localized"


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
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = folder.parent / f".{folder.name}.partial-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            save_file(self.delta.state_dict(), str(tmp / "delta.safetensors"))
            (tmp / "manifest.json").write_text(json.dumps(_jsonable(manifest), indent=2))
            self.history.to_csv(tmp / "history.csv", index=False)
            if folder.exists():
                old = folder.parent / f".{folder.name}.old-{uuid.uuid4().hex[:8]}"
                folder.rename(old)
                tmp.rename(folder)
                shutil.rmtree(old, ignore_errors=True)
            else:
                tmp.rename(folder)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
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
# Training data
# ---------------------------------------------------------------------------


def general_text(split: str = "train", exclude: list[str] | None = None, source: str = "wikitext") -> list[str]:
    """General-text paragraphs: every 10th paragraph is held out for evaluation (``"eval"``), the rest train.

    Args:
        split: ``"train"`` or ``"eval"``.
        exclude: drop paragraphs mentioning any of these strings (the edited subjects).
        source: see :func:`data.load_general_text`.
    """
    if split not in ("train", "eval"):
        raise ValueError(f"Unknown split {split!r}; choose 'train' or 'eval'.")
    paras = _data.load_general_text(source)
    keep = [p for i, p in enumerate(paras) if (i % 10 == 0) == (split == "eval")]
    if exclude:
        needles = [e for e in exclude if e]
        keep = [p for p in keep if not any(n in p for n in needles)]
    if not keep:
        raise ValueError(f"No general-text paragraph left in split {split!r} after excluding {len(exclude or [])} strings.")
    return keep


@dataclass
class _Facts:
    """Tokenised training facts: prompt ids, target token ids, candidate tokens for accuracy."""

    ids: list[list[int]]
    true: torch.Tensor        # (n,) first token of the true answer
    new: torch.Tensor         # (n,) the new answer's token (-1: none)
    cands: torch.Tensor       # (n, k) first tokens of the candidates scored for accuracy
    true_pos: torch.Tensor    # (n,) index of the true answer among the candidates
    new_pos: torch.Tensor     # (n,) index of the new answer among the candidates (-1: none)

    def __len__(self) -> int:
        return len(self.ids)


def _tokenise_facts(model, task, which: str, need_new: bool) -> _Facts:
    ps = task.prompt_set(which, task.train_format)
    true_labels, new_labels = task.answer_labels(which)
    ids = encode_prompts(model, ps.prompts)
    cache: dict[str, int] = {}

    def first(text: str) -> int:
        if text not in cache:
            cache[text] = answer_tokens(model, text)[0]
        return cache[text]

    true, new, cands, tpos, npos = [], [], [], [], []
    width = max(len(c) for c in ps.candidates)
    for cand_texts, labels, fi in zip(ps.candidates, ps.labels, ps.fact_index):
        t = labels.index(true_labels[fi])
        true.append(first(cand_texts[t]))
        if new_labels[fi] is not None and new_labels[fi] in labels:
            n = labels.index(new_labels[fi])
            # the injected answer must be one token: the loss trains exactly that token
            new.append(single_token_id(model, cand_texts[n]) if need_new else first(cand_texts[n]))
            npos.append(n)
        elif need_new:
            raise ValueError(f"Fact {fi} of task {task.name!r} has no new answer to inject. "
                             "Fix: give every forget fact a new_answer, or use objective='unlearning'.")
        else:
            new.append(-1)
            npos.append(-1)
        row = [first(c) for c in cand_texts]
        cands.append(row + [row[-1]] * (width - len(row)))
        tpos.append(t)
    as_t = lambda v: torch.tensor(v, dtype=torch.long)  # noqa: E731
    return _Facts(ids, as_t(true), as_t(new), as_t(cands), as_t(tpos), as_t(npos))


class _Sampler:
    """Batches of indices, epoch by epoch, each epoch a fresh seeded permutation."""

    def __init__(self, n: int, batch: int, rng: np.random.Generator):
        self.n, self.batch, self.rng, self.queue = n, min(batch, n), rng, []

    def next(self) -> list[int]:
        while len(self.queue) < self.batch:
            self.queue.extend(self.rng.permutation(self.n).tolist())
        out, self.queue = self.queue[: self.batch], self.queue[self.batch :]
        return out


def _lm_windows(model, paragraphs: list[str], n_windows: int, window: int, rng: np.random.Generator,
                cache: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """``n_windows`` random windows of ``window`` tokens (BOS + text), right-padded."""
    bos = model.tokenizer.bos_token_id
    seqs = []
    for i in rng.choice(len(paragraphs), size=n_windows, replace=len(paragraphs) < n_windows):
        if i not in cache:
            cache[i] = model.tokenizer(paragraphs[i], add_special_tokens=False)["input_ids"]
        toks = cache[i]
        start = int(rng.integers(0, max(1, len(toks) - window + 1)))
        seqs.append(([bos] if bos is not None else []) + toks[start : start + window])
    ids, mask, _ = pad_right(seqs, model.tokenizer.pad_token_id or 0)
    return ids, mask


def lm_loss(model, input_ids: Int[torch.Tensor, "batch pos"], attention_mask: Int[torch.Tensor, "batch pos"],
            chunk: int | None = None) -> Float[torch.Tensor, ""]:
    """Mean next-token cross-entropy over the real tokens of right-padded sequences.

    Only positions whose next token is real are unembedded. With ``chunk`` the full-vocabulary
    logits are formed ``chunk`` positions at a time (for evaluation without gradients).
    """
    dev = device_of(model)
    h = hidden_states(model, input_ids, attention_mask)
    valid = attention_mask[:, 1:].to(dev).bool()
    resid = h[:, :-1][valid]
    target = input_ids[:, 1:].to(dev)[valid]
    if target.numel() == 0:
        raise ValueError("No next-token targets: every sequence is a single token.")
    step = chunk or len(target)
    total = 0.0
    for s in range(0, len(target), step):
        logits = unembed(model, resid[s : s + step]).float()
        total = total + torch.nn.functional.cross_entropy(logits, target[s : s + step], reduction="sum")
    return total / len(target)


# ---------------------------------------------------------------------------
# The edit
# ---------------------------------------------------------------------------


@torch.no_grad()
def _accuracies(model, facts: _Facts, idx: list[int], batch_size: int = 32) -> tuple[float, float]:
    """(accuracy of the true answer, accuracy of the new answer) among the candidates, on facts ``idx``."""
    if not idx:
        return float("nan"), float("nan")
    pad = model.tokenizer.pad_token_id or 0
    hit_true, hit_new = 0, 0
    for s in range(0, len(idx), batch_size):
        b = idx[s : s + batch_size]
        ids, mask, last = pad_right([facts.ids[i] for i in b], pad)
        logits = logits_at(model, ids, mask, last).float().cpu()
        pred = logits.gather(1, facts.cands[b]).argmax(-1)
        hit_true += int((pred == facts.true_pos[b]).sum())
        hit_new += int((pred == facts.new_pos[b]).sum())
    return hit_true / len(idx), hit_new / len(idx)


def edit(model, loc: Localization, task, config: EditConfig | None = None, *, seed: int = 0,
         progress: bool = True) -> EditResult:
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

    Returns:
        An :class:`EditResult` (delta, history, config, manifest).
    """
    config = config or EditConfig.for_localization(loc)
    if len(task.forget) == 0:
        raise ValueError(f"Task {task.name!r} has an empty forget set: there is nothing to edit. "
                         "Fix: build the task from facts the model knows (tasks.forget_sport / edit_athletes).")
    injection = config.objective == "injection"
    forget = _tokenise_facts(model, task, "forget", need_new=injection)
    use_maintain = config.maintain_coef > 0 and config.maintain_batch_size > 0 and len(task.maintain_train) > 0
    maintain = _tokenise_facts(model, task, "maintain_train", need_new=False) if len(task.maintain_train) else None
    use_lm = config.lm_coef > 0 and config.lm_tokens > 0
    paragraphs = general_text("train", exclude=task.subjects) if use_lm else []
    n_windows = max(1, math.ceil(config.lm_tokens / config.lm_window))

    rng = np.random.default_rng(seed)
    f_sampler = _Sampler(len(forget), config.batch_size, rng)
    m_sampler = _Sampler(len(maintain), config.maintain_batch_size, rng) if use_maintain else None
    eval_f = sorted(rng.permutation(len(forget))[: config.eval_facts].tolist())
    eval_m = sorted(rng.permutation(len(maintain))[: config.eval_facts].tolist()) if maintain is not None else []
    tok_cache: dict = {}
    dev = device_of(model)
    pad = model.tokenizer.pad_token_id or 0

    params = loc.parameters(model)
    originals = {n: p.detach().clone() for n, p in params.items()}
    rows: list[dict] = []
    step_seconds: list[float] = []  # wall-clock seconds of each step (and CPU seconds, all threads)
    step_cpu: list[float] = []

    def evaluate_row(step: int) -> dict:
        f_true, f_new = _accuracies(model, forget, eval_f)
        m_true, _ = _accuracies(model, maintain, eval_m) if maintain is not None else (float("nan"), None)
        return dict(forget_acc=f_true, edit_acc=f_new if injection or (forget.new >= 0).all() else float("nan"),
                    maintain_acc=m_true)

    t0 = time.perf_counter()
    try:
        with loc.trainable(model) as trainable:
            from transformers import get_cosine_schedule_with_warmup

            opt = torch.optim.AdamW(list(trainable.values()), lr=config.lr, weight_decay=0.0)
            sched = get_cosine_schedule_with_warmup(opt, config.warmup_steps, config.steps)
            rows.append(dict(step=0, **evaluate_row(0)))
            bar = tqdm(range(1, config.steps + 1), desc=f"edit [{loc.name}]", disable=not progress, leave=False)
            for step in bar:
                t_step, cpu_step = time.perf_counter(), time.process_time()
                f_idx = f_sampler.next()
                m_idx = m_sampler.next() if m_sampler else []
                seqs = [forget.ids[i] for i in f_idx] + [maintain.ids[i] for i in m_idx]
                ids, mask, last = pad_right(seqs, pad)
                logp = torch.log_softmax(logits_at(model, ids, mask, last).float(), dim=-1)
                nf = len(f_idx)
                if injection:
                    forget_loss = -logp[:nf].gather(1, forget.new[f_idx, None].to(dev)).mean()
                else:
                    p_true = logp[:nf].gather(1, forget.true[f_idx, None].to(dev)).exp()
                    forget_loss = -torch.log1p(-p_true.clamp(max=1 - 1e-6)).mean()
                loss = config.forget_coef * forget_loss
                row = dict(step=step, lr=opt.param_groups[0]["lr"], forget_loss=forget_loss.item())
                if m_idx:
                    maintain_loss = -logp[nf:].gather(1, maintain.true[m_idx, None].to(dev)).mean()
                    loss = loss + config.maintain_coef * maintain_loss
                    row["maintain_loss"] = maintain_loss.item()
                if use_lm:
                    lm_ids, lm_mask = _lm_windows(model, paragraphs, n_windows, config.lm_window, rng, tok_cache)
                    general = lm_loss(model, lm_ids, lm_mask)
                    loss = loss + config.lm_coef * general
                    row["lm_loss"] = general.item()
                loss.backward()
                loc.mask_grads(trainable)
                grad_norm = torch.nn.utils.clip_grad_norm_(list(trainable.values()), config.grad_clip)
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
                row.update(loss=loss.item(), grad_norm=grad_norm.item())
                step_seconds.append(time.perf_counter() - t_step)
                step_cpu.append(time.process_time() - cpu_step)
                if step == config.steps or (config.eval_every and step % config.eval_every == 0):
                    row.update(evaluate_row(step))
                rows.append(row)
                bar.set_postfix(loss=f"{row['loss']:.3f}", forget=f"{row['forget_loss']:.3f}")
            with torch.no_grad():
                tensors = {}
                for n, p in trainable.items():
                    d = p.detach() - originals[n]
                    if loc.weights[n] is not None:
                        d = d * loc.weights[n].to(d.device)
                    tensors[n] = d
    finally:
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(originals[n])
    seconds = time.perf_counter() - t0

    cols = ["step", "lr", "loss", "forget_loss", "maintain_loss", "lm_loss", "grad_norm", "forget_acc", "edit_acc", "maintain_acc"]
    history = pd.DataFrame(rows).reindex(columns=cols)
    delta = Delta(tensors, {n: (None if m is None else m.cpu()) for n, m in loc.weights.items()}, model_name(model))
    manifest = dict(
        model=model_name(model),
        localization=dict(name=loc.name, components=list(loc.components), n_params=int(loc.n_params),
                          kind=localization_kind(loc), meta=_jsonable({k: v for k, v in loc.meta.items()
                                                                       if isinstance(v, (str, int, float, bool, list))})),
        task=dict(name=task.name, dataset=task.dataset, n_forget=len(task.forget),
                  n_maintain_train=len(task.maintain_train), n_maintain_eval=len(task.maintain_eval),
                  subjects=task.subjects, meta=_jsonable(task.meta)),
        seed=int(seed), seconds=round(seconds, 2), step_seconds=[round(t, 4) for t in step_seconds],
        step_cpu_seconds=[round(t, 4) for t in step_cpu], created=time.strftime("%Y-%m-%dT%H:%M:%S"),
        torch=torch.__version__, final=_jsonable({}),
    )
    result = EditResult(delta, history, config, manifest)
    result.manifest["final"] = result.final()
    return result

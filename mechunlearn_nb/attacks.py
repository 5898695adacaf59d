"""Attacks on an edit: does the old fact come back?

An edit that only *hides* a fact is easy to undo. Guo et al. (2024) test every
edit with attacks that try to bring the true answer back, and find that
edits localized on the fact-lookup MLPs resist them better than edits
localized by output tracing. Two attacks live here.

**Relearning** (Deeb & Roger 2024; Guo et al. 2024). Split the edited facts in
two halves, ``A`` and ``B``. Fine-tune the *edited* model on the true answers
of half ``A`` for a few steps and measure how many of half ``B`` — facts it was
not trained on — come back. If the edit removed the information, training on
``A`` has nothing to re-activate in ``B``: ``B`` stays forgotten. If the edit
only suppressed a route to the answer (the typical failure of output-tracing
edits, which change *how the answer is read out* rather than *what the model
knows about the subject*), a little training on any of the facts re-opens the
route for all of them and ``B`` recovers. The fine-tuning keeps the maintain
and general-text losses of the edit on, so the attacker only ever asks for
facts, never for a broken model; held-out maintain facts are measured along
the way as a control (in "forget basketball" every forgotten athlete has the
same true answer, and an attack that made *everyone* a basketball player would
"recover" half B without any knowledge of who plays it).

Two ways to fine-tune:

- ``method="lora"`` (the paper's): low-rank adapters from ``peft`` on the
  attention and MLP projections of every layer. The adapters are injected into
  the bridge's Hugging Face model (:func:`models.hf_model`) with
  ``peft.inject_adapter_in_model``: the projections are ``LinearBridge``
  wrappers whose ``nn.Linear`` lives under ``_original_component``, so the
  targets are the exact module paths of those inner ``nn.Linear`` modules
  (``peft`` refuses the wrappers themselves). ``PeftModel.unload()`` does *not*
  undo the injection on a bridge — the bridge reaches each projection under
  two names (``self_attn.q_proj`` and the alias ``self_attn.q``) and the unload
  leaves LoRA layers behind — so :func:`lora_adapters` puts the original
  ``nn.Linear`` objects back itself and checks that the module tree is the one
  it started from. The base weights are never touched by LoRA.
- ``method="full"``: every weight of the target projections is trained; the
  original values are copied back afterwards, bit for bit.

The paper's protocol on Gemma-7B (``d_model`` 3072): LoRA rank 512, alpha 32,
learning rate 2e-4, 20 steps. On the embedded Gemma 3 270M (``d_model`` 640)
:class:`RelearnConfig` keeps alpha 32, the learning rate and the 20 steps and
scales the rank with the width (512 · 640 / 3072 ≈ 107, rounded down to 64
to keep the adapters cheap on a CPU); see :class:`RelearnConfig` for what was
measured.

**Soft prompt** (Lester et al. 2021; Schwinn et al. 2024). Instead of changing
weights, the attacker learns ``k`` free vectors in embedding space that are
inserted into every prompt (after the BOS token) and optimised to make the
model say the true answers of half ``A``; accuracy is then measured on half
``B`` with the same prefix. A *universal* prefix that recovers unseen facts
(while the maintain facts, which it is also trained to keep, stay right)
means the facts are still inside the model, only gated. Gemma multiplies its
token embeddings by ``sqrt(d_model)`` inside the embedding module, so the
prefix lives in the space of the embedding module's *output* and is inserted
into ``inputs_embeds`` built by that module.

Both attacks apply the edit's delta themselves and restore the base model on
exit (also after an error): the model you pass in is the model you get back,
bit for bit. Both run the loop of :mod:`.train` (losses at the last prompt
token only, one accuracy function); they say only what is trainable (LoRA
adapters, the projections' weights, or the prefix) and that the loss is the
cross-entropy toward the true answers of half ``A`` and of the maintain facts.
"""

from __future__ import annotations

import dataclasses
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float

from . import train
from .checks import ParameterError, check_float, check_int, check_str
from .models import hf_model, model_name, named_parameters
from .scoring import device_of

#: the projections of a Gemma (Llama-style) block, by group
TARGET_GROUPS = {
    "attn": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "mlp": ("gate_proj", "up_proj", "down_proj"),
}
ALL_TARGETS = TARGET_GROUPS["attn"] + TARGET_GROUPS["mlp"]

#: learning-rate schedules of the relearning attack
SCHEDULES = ("constant", "cosine")

CURVE_COLUMNS = ["task", "localization", "seed", "method", "step", "half", "accuracy", "p_true", "n"]
#: the held-out half's curve fact by fact (``relearn(...).attrs["facts"]``, a list of such records): ``fact`` is the
#: subject, the same facts for every localization of a (task, seed), so differences can be paired fact by fact
FACT_CURVE_COLUMNS = ["step", "half", "fact", "p_true", "correct"]


# ---------------------------------------------------------------------------
# The forget set in two halves
# ---------------------------------------------------------------------------


def split_forget(task, seed: int = 0):
    """Split a task's forget set into two halves: ``(A, B)``, each a :class:`~mechunlearn_nb.tasks.Task`.

    ``A`` (the first half, rounded down) is what an attacker trains on; ``B`` is held out and measures
    whether the attack generalises. Both halves keep the task's maintain sets.

    Args:
        task: the edited task.
        seed: the permutation of the forget facts.

    Raises:
        ValueError: fewer than two forget facts (no split possible).
    """
    n = len(task.forget)
    if n < 2:
        raise ValueError(f"The forget set of task {task.name!r} has {n} fact(s): too small to split into a half to "
                         "attack with and a half to measure on. Fix: edit at least 2 facts (better 16 or more).")
    order = np.random.default_rng(seed).permutation(n)
    cut = n // 2
    halves = []
    for label, idx in (("A", order[:cut]), ("B", order[cut:])):
        forget = task.forget.iloc[np.sort(idx)].reset_index(drop=True)
        halves.append(dataclasses.replace(task, forget=forget, name=f"{task.name} [{label}]",
                                          meta=dict(task.meta, half=label, split_seed=seed)))
    return halves[0], halves[1]


HALVES = ("A (trained)", "B (held out)", "maintain (held out)")


def _maintain_control(model, task, n: int, seed: int) -> train.Facts | None:
    """Up to ``n`` held-out maintain facts (seeded sample), tokenised with the task's candidates; ``None`` if none."""
    if n <= 0 or len(task.maintain_eval) == 0:
        return None
    facts = train.tokenise_facts(model, task, "maintain_eval")
    return facts.subset(np.sort(np.random.default_rng(seed).permutation(len(facts))[:n]).tolist())


def _attack_sets(model, task, seed: int, split_seed: int | None, eval_maintain: int, halves=None):
    """The tokenised facts of an attack: ``(half A, half B, held-out maintain control, maintain_train)``, and the
    held-out half's subjects (its facts' names, in order).

    ``halves``: given ``(A, B)`` tasks instead of a split of ``task``'s forget set.
    """
    half_a, half_b = halves if halves is not None else split_forget(task, seed if split_seed is None else split_seed)
    facts_a, facts_b = train.tokenise_facts(model, half_a, "forget"), train.tokenise_facts(model, half_b, "forget")
    control = _maintain_control(model, task, eval_maintain, seed)
    maintain = train.tokenise_facts(model, task, "maintain_train") if len(task.maintain_train) else None
    return facts_a, facts_b, control, maintain, half_b.subjects


def _measure_halves(model, halves, prefix=None, batch_size: int = 32, per_fact: str | None = None) -> list[dict]:
    """One row per measured set (``HALVES`` order; a ``None`` set is skipped): ``half, accuracy, p_true, n``;
    with ``per_fact`` naming a half, that half's row also holds ``facts`` (each fact's ``p_true`` and ``correct``)."""
    rows = []
    for label, facts in zip(HALVES, halves):
        if facts is not None:
            acc = train.accuracy(model, facts, prefix=prefix, batch_size=batch_size, per_fact=label == per_fact)
            row = dict(half=label, accuracy=acc["acc_true"], p_true=acc["p_true"], n=acc["n"])
            rows.append(dict(row, facts=acc["facts"]) if label == per_fact else row)
    return rows


def _fact_terms(attack: train.Facts, maintain: train.Facts | None, batch_size: int, maintain_batch_size: int,
                maintain_coef: float, rng: np.random.Generator) -> list[train.FactTerm]:
    """The attacker's loss terms: the true answers of half A, and of the maintain facts (when weighted)."""
    terms = [train.FactTerm("attack_loss", attack, train.Sampler(len(attack), batch_size, rng), train.maintain_loss)]
    if maintain is not None and maintain_coef > 0 and maintain_batch_size > 0:
        terms.append(train.FactTerm("maintain_loss", maintain, train.Sampler(len(maintain), maintain_batch_size, rng),
                                    train.maintain_loss, maintain_coef))
    return terms


# ---------------------------------------------------------------------------
# LoRA adapters on the bridge, and their removal
# ---------------------------------------------------------------------------


def resolve_targets(target_modules) -> tuple[str, ...]:
    """Expand group names (``"attn"``, ``"mlp"``, ``"all"``) into projection names; reject unknown names."""
    if isinstance(target_modules, str):
        target_modules = [target_modules]
    out: list[str] = []
    for t in target_modules:
        names = ALL_TARGETS if t == "all" else TARGET_GROUPS.get(t, (t,))
        for n in names:
            if n not in ALL_TARGETS:
                raise ValueError(f"Unknown target module {t!r}. Fix: use projection names {list(ALL_TARGETS)} or the "
                                 f"groups 'attn', 'mlp', 'all'.")
            if n not in out:
                out.append(n)
    if not out:
        raise ValueError("No target module given. Fix: pass e.g. ('attn', 'mlp') or ['q_proj', 'down_proj'].")
    return tuple(out)


@dataclass
class _Target:
    """One ``nn.Linear`` to adapt: its clean weight name, its module path, and the parent that holds it."""

    weight: str        # clean parameter name, e.g. model.layers.3.mlp.up_proj.weight
    path: str          # path in hf_model(model).named_modules()
    parent: torch.nn.Module
    key: str           # the parent's _modules key that holds the Linear
    linear: torch.nn.Linear


def linear_targets(model, target_modules=("attn", "mlp"), layers=None) -> list[_Target]:
    """The ``nn.Linear`` modules of the chosen projections (all layers, or ``layers``)."""
    names = resolve_targets(target_modules)
    hf = hf_model(model)
    clean_of = {id(p): n for n, p in named_parameters(model).items()}
    parent_of: dict[int, tuple[torch.nn.Module, str]] = {}
    for mod in hf.modules():
        for key, child in mod._modules.items():
            if isinstance(child, torch.nn.Linear):
                parent_of.setdefault(id(child), (mod, key))
    layer_set = None if layers is None else {int(l) for l in layers}
    out = []
    for path, mod in hf.named_modules():
        if not isinstance(mod, torch.nn.Linear) or id(mod.weight) not in clean_of:
            continue
        weight = clean_of[id(mod.weight)]
        parts = weight.split(".")
        proj = parts[-2]
        layer = next((int(p) for p in parts if p.isdigit()), None)
        if proj not in names or (layer_set is not None and layer not in layer_set):
            continue
        parent, key = parent_of[id(mod)]
        out.append(_Target(weight, path, parent, key, mod))
    if not out:
        raise ValueError(f"No linear layer of this model matches target modules {list(names)}"
                         f"{'' if layers is None else f' in layers {sorted(layer_set)}'}. Fix: check the model's "
                         "projection names (models.named_parameters(model)) and the layer indices.")
    return out


def _module_tree(root: torch.nn.Module) -> dict[str, int]:
    """Every (alias-including) path of the module tree -> id of the module there."""
    out: dict[str, int] = {}

    def walk(mod, prefix, seen):
        for key, child in mod._modules.items():
            if child is None:
                continue
            out[prefix + key] = id(child)
            if id(child) not in seen:
                seen.add(id(child))
                walk(child, prefix + key + ".", seen)

    walk(root, "", set())
    return out


@contextmanager
def lora_adapters(model, rank: int = 64, alpha: float = 32, dropout: float = 0.05, target_modules=("attn", "mlp"),
                  layers=None, seed: int = 0):
    """Inject ``peft`` LoRA adapters into the model's projections for the duration of a ``with`` block.

    Yields:
        ``{name: parameter}`` of the adapters' weights (trainable; everything else frozen).

    On exit the original ``nn.Linear`` modules are put back and the module tree is checked to be the
    one it was: the model is exactly the model it was before (LoRA never changes the base weights).
    """
    from peft import LoraConfig, inject_adapter_in_model

    if rank < 1:
        raise ValueError(f"LoRA rank must be >= 1, got {rank}.")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"LoRA dropout must be in [0, 1), got {dropout}.")
    hf = hf_model(model)
    targets = linear_targets(model, target_modules, layers)
    tree = _module_tree(hf)
    attrs = set(vars(hf))
    grads = {n: p.requires_grad for n, p in hf.named_parameters()}
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=[t.path for t in targets],
                        bias="none")
    torch.manual_seed(seed)  # the adapters' A matrices are initialised at random
    try:
        inject_adapter_in_model(config, hf)
        adapters = {n: p for n, p in hf.named_parameters() if "lora_" in n}
        if not adapters:
            raise RuntimeError("peft injected no LoRA weight into the model (no target matched).")
        for n, p in hf.named_parameters():
            p.requires_grad_(n in adapters)
        yield adapters
    finally:
        for t in targets:
            t.parent._modules[t.key] = t.linear
        for name in set(vars(hf)) - attrs:
            delattr(hf, name)
        for n, p in hf.named_parameters():
            if n in grads:
                p.requires_grad_(grads[n])
        if _module_tree(hf) != tree:
            raise RuntimeError("Removing the LoRA adapters did not restore the model's module tree. "
                               "Fix: reload the model (models.load_model) before further use.")


@contextmanager
def full_finetuning(model, target_modules=("attn", "mlp"), layers=None):
    """Make the chosen projections' weights trainable; restore their values (bit for bit) and flags on exit.

    Yields:
        ``{clean name: parameter}`` of the trainable weights.
    """
    params = {t.weight: t.linear.weight for t in linear_targets(model, target_modules, layers)}
    with train.restored(params), train.only_trainable(model, params):
        yield params


@contextmanager
def _edited(model, result):
    """The edit applied (when there is one) for the duration of the block."""
    if result is None:
        yield model
        return
    if result.delta.is_applied(model):
        raise RuntimeError("The edit's delta is already applied to this model; the attacks apply it themselves. "
                           "Fix: result.revert(model) first.")
    with result.applied(model):
        yield model


# ---------------------------------------------------------------------------
# Relearning
# ---------------------------------------------------------------------------


@dataclass
class RelearnConfig:
    """Hyperparameters of the relearning attack (plain values; sensible ranges in the comments).

    The paper (Gemma-7B, d_model 3072): LoRA rank 512, alpha 32, lr 2e-4, 20 steps. Scaled to the
    embedded Gemma 3 270M (d_model 640): the rank follows the width (512 · 640 / 3072 ≈ 107, rounded
    down to 64: the adapters' cost on a CPU grows with the rank); alpha, learning rate and the 20
    steps stay as in the paper. The LoRA update is ``alpha / rank · B A``, so with alpha fixed a
    smaller rank takes somewhat larger steps per unit of learning rate than the paper's setting did
    (8x at rank 64). :data:`PAPER_LORA` is the paper's own setting (rank 512, cosine), to run beside it.
    """

    method: str = "lora"              # "lora" (peft adapters) or "full" (all weights of the target projections)
    steps: int | None = None          # optimiser steps (default: the largest of eval_steps)
    eval_steps: tuple[int, ...] = (0, 5, 10, 20)  # measure both halves after these many steps
    lr: float | None = None           # default 2e-4 for LoRA (the paper's), 1e-5 for full fine-tuning
    schedule: str = "constant"        # the rate over the steps: "constant", or "cosine" (decay to 0; the paper's)
    rank: int = 64                    # LoRA rank; 16-512
    alpha: float = 32.0               # LoRA alpha (the update is scaled by alpha / rank)
    dropout: float = 0.05             # LoRA dropout
    target_modules: tuple[str, ...] = ("attn", "mlp")  # projections to adapt: names or groups 'attn', 'mlp', 'all'
    layers: tuple[int, ...] | None = None  # restrict to these layers (None: all)
    batch_size: int = 16              # facts of half A per step
    maintain_batch_size: int = 16     # maintain facts per step (0: no maintain term)
    maintain_coef: float = 1.0        # weight of the maintain cross-entropy
    lm_coef: float = 1.0              # weight of the general-text loss (0: none)
    lm_tokens: int = 128              # general-text tokens per step
    lm_window: int = 64               # tokens per general-text window
    grad_clip: float = 1.0            # max global gradient norm
    eval_maintain: int = 32           # held-out maintain facts measured as a control (0: none)
    eval_batch_size: int = 32         # prompts per forward pass when measuring
    precision: str = "float32"        # the training forward pass: "float32" or "bfloat16-mixed" (train.PRECISIONS)

    def __post_init__(self):
        if self.method not in ("lora", "full"):
            raise ValueError(f"Unknown relearning method {self.method!r}; choose 'lora' or 'full'.")
        steps = sorted({int(s) for s in self.eval_steps})
        if not steps or steps[0] < 0:
            raise ValueError(f"eval_steps must be non-negative step counts, got {self.eval_steps}.")
        self.eval_steps = tuple(steps)
        if self.steps is None:
            self.steps = steps[-1]
        if self.steps < steps[-1]:
            raise ValueError(f"steps={self.steps} is fewer than the last eval step {steps[-1]}.")
        if self.lr is None:
            self.lr = 2e-4 if self.method == "lora" else 1e-5
        if not self.lr > 0 or self.batch_size < 1 or self.lm_window < 1:
            raise ValueError("lr must be positive and batch_size, lm_window at least 1.")
        resolve_targets(self.target_modules)
        check_str("RelearnConfig.precision", self.precision, choices=train.PRECISIONS)
        check_str("RelearnConfig.schedule", self.schedule, choices=SCHEDULES)


def relearn(model, result, task, config: RelearnConfig | None = None, *, seed: int = 0, split_seed: int | None = None,
            progress: bool = True, halves=None, on_step=None) -> pd.DataFrame:
    """The relearning attack on one edit: fine-tune on half A's true answers, watch half B.

    Args:
        model: the base model (the edit's delta is applied inside, and removed on exit).
        result: the :class:`~mechunlearn_nb.editing.EditResult` to attack, or ``None`` to attack the
            base model (a reference: how much fine-tuning on A moves B when nothing was edited).
        task: the task the edit was trained on (its forget set is split; its maintain set is kept).
        config: hyperparameters (default :class:`RelearnConfig`).
        seed: batch order, general-text windows, LoRA initialisation and dropout.
        split_seed: the split of the forget set (default: ``seed``).
        progress: show a progress bar.
        halves: ``(A, B)``, two tasks whose forget sets are the facts to train on and the facts to
            watch, instead of a split of ``task``'s forget set: e.g. other facts related to a one-fact
            edit (A) and the edited fact (B). ``task`` still gives the maintain facts.
        on_step: called with each step's row (``step, loss, ...`` and, at ``eval_steps``, the accuracy of
            each half under its name in ``HALVES``) as soon as it is complete: a live curve.

    Returns:
        The tidy curve: ``task, localization, seed, method, step, half, accuracy, p_true, n``, one row per
        evaluated step and half (``"A (trained)"`` / ``"B (held out)"``, and ``"maintain (held out)"``: known
        facts outside the forget set, the control that the attack recovers the forgotten facts selectively
        rather than by saying one answer to everyone); ``accuracy`` is the share of facts whose true answer
        is the model's top candidate, ``p_true`` its mean normalised probability. ``attrs["facts"]``: the held-out
        half fact by fact at every evaluated step (records of :data:`FACT_CURVE_COLUMNS`).
    """
    config = config or RelearnConfig()
    facts_a, facts_b, control, maintain, subjects_b = _attack_sets(model, task, seed, split_seed, config.eval_maintain,
                                                                   halves)
    use_lm = config.lm_coef > 0 and config.lm_tokens > 0
    paragraphs = train.general_text("train", exclude=task.subjects) if use_lm else None
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    terms = _fact_terms(facts_a, maintain, config.batch_size, config.maintain_batch_size, config.maintain_coef, rng)
    general = train.GeneralText(model, paragraphs, config.lm_tokens, config.lm_window, rng) if use_lm else None
    hf = hf_model(model)
    rows: list[dict] = []
    fact_rows: list[dict] = []  # the held-out half, fact by fact: what a fact-level bootstrap resamples

    def record(step: int) -> dict:
        hf.eval()
        measured = _measure_halves(model, (facts_a, facts_b, control), batch_size=config.eval_batch_size,
                                   per_fact=HALVES[1])
        for r in measured:
            per = r.pop("facts", None)
            if per is not None:
                fact_rows.extend(dict(step=step, half=r["half"], fact=subject, p_true=p, correct=c)
                                 for subject, p, c in zip(subjects_b, per["p_true"], per["correct"]))
        rows.extend(dict(step=step, **r) for r in measured)
        return {r["half"]: r["accuracy"] for r in measured}

    def step_loss(step: int):
        hf.train()  # LoRA dropout is on while training, off while measuring
        return train.fact_step(model, terms, general, config.lm_coef)

    was_training = hf.training
    adapter = (lora_adapters(model, config.rank, config.alpha, config.dropout, config.target_modules, config.layers, seed)
               if config.method == "lora" else full_finetuning(model, config.target_modules, config.layers))
    label = result.localization if result is not None else "base (no edit)"
    try:
        with _edited(model, result), adapter as params:
            schedule = train.cosine_schedule(0, config.steps) if config.schedule == "cosine" else None
            train.train(params, step_loss, config.steps, config.lr, schedule=schedule, grad_clip=config.grad_clip,
                        evaluate=record,
                        eval_steps=config.eval_steps, desc=f"relearn [{label}]", progress=progress, on_step=on_step,
                        precision=config.precision)
    finally:
        hf.train(was_training)
    curve = pd.DataFrame(rows).assign(task=task.name, localization=label, seed=seed, method=config.method)
    curve = curve.reindex(columns=CURVE_COLUMNS)
    curve.attrs.update(config=dataclasses.asdict(config), n_a=len(facts_a), n_b=len(facts_b),
                       facts=fact_rows)
    return curve


# ---------------------------------------------------------------------------
# Soft prompt
# ---------------------------------------------------------------------------


@dataclass
class SoftPromptResult:
    """What :func:`soft_prompt_attack` returns.

    Attributes:
        prefix: the learned vectors ``[k, d_model]`` (in the embedding module's output space).
        table: tidy ``task, localization, seed, stage, half, accuracy, p_true, n`` with stage
            ``"no prompt"`` / ``"soft prompt"`` and half ``"A (trained)"`` / ``"B (held out)"`` /
            ``"maintain (held out)"`` (the control).
        history: ``step, loss`` of the optimisation.
        meta: the settings.
    """

    prefix: torch.Tensor
    table: pd.DataFrame
    history: pd.DataFrame
    meta: dict = field(default_factory=dict)

    def accuracy(self, stage: str = "soft prompt", half: str = "B (held out)") -> float:
        row = self.table[(self.table["stage"] == stage) & (self.table["half"] == half)]
        return float(row["accuracy"].iloc[0])


def init_prefix(model, n_tokens: int, seed: int = 0) -> Float[torch.Tensor, "k d_model"]:
    """Start a soft prompt from the (scaled) embeddings of ``n_tokens`` random vocabulary tokens (seeded)."""
    if n_tokens < 1:
        raise ValueError(f"A soft prompt needs at least one vector, got n_tokens={n_tokens}.")
    gen = torch.Generator().manual_seed(seed)
    # ordinary word pieces: skip the lowest ids (special, control and unused tokens) and the top of the vocabulary
    n_vocab = int(hf_model(model).config.vocab_size)
    low, high = min(1000, n_vocab // 4), max(min(n_vocab, 200_000), min(1000, n_vocab // 4) + 1)
    ids = torch.randint(low, high, (n_tokens,), generator=gen)
    with torch.no_grad():
        return train.embed_tokens(model, ids[None])[0].detach().float().clone()


def soft_prompt_attack(model, result, task, n_tokens: int = 8, steps: int = 40, lr: float = 3e-2, batch_size: int = 16,
                       maintain_batch_size: int = 16, maintain_coef: float = 1.0, eval_maintain: int = 32, *,
                       seed: int = 0, split_seed: int | None = None, progress: bool = True) -> SoftPromptResult:
    """Learn a universal soft prompt that brings back half A's true answers; measure it on half B.

    The prefix is also trained to keep the maintain facts' true answers (``maintain_coef``), so that it
    cannot win by making every prompt say one answer (in "forget basketball" every forgotten fact has
    the same true answer); held-out maintain facts are measured with and without it as a control.

    Args:
        model: the base model (the edit's delta is applied inside, and removed on exit).
        result: the edit to attack, or ``None`` for the base model.
        task: the edited task (its forget set is split as in :func:`relearn`).
        n_tokens: length ``k`` of the prefix; 4-32.
        steps: Adam steps; 20-100.
        lr: Adam learning rate on the prefix (its entries are of order 1 after Gemma's embedding scaling).
        batch_size: half-A facts per step.
        maintain_batch_size: maintain facts per step (0: none).
        maintain_coef: weight of their cross-entropy.
        eval_maintain: held-out maintain facts measured as a control (0: none).
        seed: the prefix initialisation and batch order (same seed, same prefix).
        split_seed: the split of the forget set (default: ``seed``).

    Returns:
        A :class:`SoftPromptResult`.
    """
    n_tokens, steps, batch_size = (check_int(n, v, min=1) for n, v in
                                   (("n_tokens", n_tokens), ("steps", steps), ("batch_size", batch_size)))
    maintain_batch_size, eval_maintain = (check_int(n, v, min=0) for n, v in
                                          (("maintain_batch_size", maintain_batch_size), ("eval_maintain", eval_maintain)))
    lr, maintain_coef = check_float("lr", lr), check_float("maintain_coef", maintain_coef, min=0)
    if not lr > 0:
        raise ParameterError(f"soft_prompt_attack: lr must be positive, got {lr}. Fix: pass e.g. lr=3e-2.")
    facts_a, facts_b, control, maintain, _ = _attack_sets(model, task, seed, split_seed, eval_maintain)
    rng = np.random.default_rng(seed)
    terms = _fact_terms(facts_a, maintain, batch_size, maintain_batch_size, maintain_coef, rng)
    hf = hf_model(model)
    label = result.localization if result is not None else "base (no edit)"
    t0 = time.perf_counter()
    was_training = hf.training
    hf.eval()
    try:
        with _edited(model, result):
            rows = [dict(stage="no prompt", **r) for r in _measure_halves(model, (facts_a, facts_b, control))]
            prefix = init_prefix(model, n_tokens, seed).to(device_of(model)).requires_grad_(True)
            # each set is its own batch (as this attack has always run; one padded batch shifts the last bits)
            history = train.train([prefix], lambda step: train.fact_step(model, terms, prefix=prefix, one_batch=False),
                                  steps, lr, desc=f"soft prompt [{label}]", progress=progress)
            prefix = prefix.detach()
            rows += [dict(stage="soft prompt", **r) for r in _measure_halves(model, (facts_a, facts_b, control), prefix)]
    finally:
        hf.train(was_training)
    table = pd.DataFrame(rows).assign(task=task.name, localization=label, seed=seed)
    table = table.reindex(columns=["task", "localization", "seed", "stage", "half", "accuracy", "p_true", "n"])
    meta = dict(n_tokens=n_tokens, steps=steps, lr=lr, batch_size=batch_size, maintain_batch_size=maintain_batch_size,
                maintain_coef=maintain_coef, seed=seed, model=model_name(model),
                seconds=round(time.perf_counter() - t0, 2))
    return SoftPromptResult(prefix.cpu(), table, history.reindex(columns=["step", "loss"]), meta)


#: the paper's attack setting (Guo et al. 2024: LoRA rank 512, alpha 32, lr 2e-4, cosine decay, 20 steps), for
#: ``RelearnConfig(**PAPER_LORA)`` beside the default scaled one
PAPER_LORA = dict(method="lora", rank=512, alpha=32.0, lr=2e-4, schedule="cosine")

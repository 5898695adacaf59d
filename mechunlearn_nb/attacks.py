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
bit for bit. Fact losses are computed at the last prompt token only (the
262k-token unembedding is the expensive part of a step).
"""

from __future__ import annotations

import dataclasses
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from tqdm.auto import tqdm

from . import editing
from .models import hf_model, model_name, named_parameters
from .scoring import device_of, hidden_states, pad_right, unembed

#: the projections of a Gemma (Llama-style) block, by group
TARGET_GROUPS = {
    "attn": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "mlp": ("gate_proj", "up_proj", "down_proj"),
}
ALL_TARGETS = TARGET_GROUPS["attn"] + TARGET_GROUPS["mlp"]

CURVE_COLUMNS = ["task", "localization", "seed", "method", "step", "half", "accuracy", "p_true", "n"]


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


def _maintain_control(model, task, n: int, seed: int):
    """Up to ``n`` held-out maintain facts (seeded sample), tokenised with the task's candidates; ``None`` if none."""
    if n <= 0 or len(task.maintain_eval) == 0:
        return None
    facts = editing._tokenise_facts(model, task, "maintain_eval", need_new=False)
    pick = np.sort(np.random.default_rng(seed).permutation(len(facts))[:n]).tolist()
    return editing._Facts([facts.ids[i] for i in pick], facts.true[pick], facts.new[pick], facts.cands[pick],
                          facts.true_pos[pick], facts.new_pos[pick])


def _measure_halves(model, halves, prefix=None, **kw) -> list[dict]:
    """One row per measured set (``HALVES`` order; a ``None`` set is skipped)."""
    return [dict(half=label, **measure(model, facts, prefix, **kw)) for label, facts in zip(HALVES, halves)
            if facts is not None]


@dataclass
class _Half:
    """Tokenised facts of one half, with the candidates that accuracy is measured over."""

    facts: editing._Facts

    @classmethod
    def of(cls, model, task) -> _Half:
        return cls(editing._tokenise_facts(model, task, "forget", need_new=False))


# ---------------------------------------------------------------------------
# Measuring a half: accuracy of the true answer (optionally with a soft prompt)
# ---------------------------------------------------------------------------


def embed_tokens(model, input_ids: Int[torch.Tensor, "batch pos"]) -> Float[torch.Tensor, "batch pos d_model"]:
    """The embedding module's output (for Gemma: token embeddings already scaled by ``sqrt(d_model)``)."""
    return hf_model(model).get_input_embeddings()(input_ids.to(device_of(model)))


def insert_prefix(model, input_ids: Int[torch.Tensor, "batch pos"], attention_mask: Int[torch.Tensor, "batch pos"],
                  last: Int[torch.Tensor, "batch"], prefix: Float[torch.Tensor, "k d_model"]
                  ) -> tuple[Float[torch.Tensor, "batch pos_k d_model"], Int[torch.Tensor, "batch pos_k"], Int[torch.Tensor, "batch"]]:
    """``inputs_embeds`` with ``prefix`` inserted after the BOS token (at the start if there is none).

    Returns:
        ``(inputs_embeds, attention_mask, last)`` for the longer sequences.
    """
    dev = device_of(model)
    emb = embed_tokens(model, input_ids)
    bos = model.tokenizer.bos_token_id
    at = 1 if bos is not None and bool((input_ids[:, 0] == bos).all()) else 0
    k = prefix.shape[0]
    pre = prefix.to(dev, emb.dtype)[None].expand(emb.shape[0], k, -1)
    emb = torch.cat([emb[:, :at], pre, emb[:, at:]], dim=1)
    mask = torch.cat([attention_mask[:, :at], torch.ones(len(attention_mask), k, dtype=attention_mask.dtype),
                      attention_mask[:, at:]], dim=1)
    return emb, mask, last + k


def last_logits(model, input_ids: Int[torch.Tensor, "batch pos"], attention_mask: Int[torch.Tensor, "batch pos"],
                last: Int[torch.Tensor, "batch"], prefix: Float[torch.Tensor, "k d_model"] | None = None
                ) -> Float[torch.Tensor, "batch vocab"]:
    """Logits at each row's last real token, optionally with a soft prompt inserted (unembeds only that position)."""
    if prefix is None:
        h = hidden_states(model, input_ids, attention_mask)
    else:
        emb, attention_mask, last = insert_prefix(model, input_ids, attention_mask, last, prefix)
        h = hidden_states(model, None, attention_mask, inputs_embeds=emb)
    rows = torch.arange(h.shape[0], device=h.device)
    return unembed(model, h[rows, last.to(h.device)])


def _candidate_logprobs(model, facts: editing._Facts, idx: list[int], prefix=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-softmax over the vocabulary at the last token [b, vocab], candidate log-probs [b, k]) for facts ``idx``."""
    ids, mask, last = pad_right([facts.ids[i] for i in idx], model.tokenizer.pad_token_id or 0)
    logp = torch.log_softmax(last_logits(model, ids, mask, last, prefix).float(), dim=-1)
    return logp, logp.gather(1, facts.cands[idx].to(logp.device))


@torch.no_grad()
def measure(model, facts: editing._Facts, prefix: Float[torch.Tensor, "k d_model"] | None = None,
            batch_size: int = 32) -> dict:
    """Accuracy of the true answer among the candidates and its mean normalised probability.

    Returns:
        ``{"accuracy", "p_true", "n"}``.
    """
    n = len(facts)
    hits, p_true = 0, 0.0
    for s in range(0, n, batch_size):
        idx = list(range(s, min(n, s + batch_size)))
        _, cand = _candidate_logprobs(model, facts, idx, prefix)
        cand = cand.cpu()
        true_pos = facts.true_pos[idx]
        hits += int((cand.argmax(-1) == true_pos).sum())
        p_true += float(torch.softmax(cand, -1).gather(1, true_pos[:, None]).sum())
    return dict(accuracy=hits / n, p_true=p_true / n, n=n)


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
    targets = linear_targets(model, target_modules, layers)
    params = {t.weight: t.linear.weight for t in targets}
    originals = {n: p.detach().clone() for n, p in params.items()}
    hf = hf_model(model)
    grads = {n: p.requires_grad for n, p in hf.named_parameters()}
    try:
        for p in hf.parameters():
            p.requires_grad_(False)
        for p in params.values():
            p.requires_grad_(True)
        yield params
    finally:
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(originals[n])
        for n, p in hf.named_parameters():
            p.requires_grad_(grads[n])


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
    smaller rank takes somewhat larger steps per unit of learning rate than the paper's setting did.
    """

    method: str = "lora"              # "lora" (peft adapters) or "full" (all weights of the target projections)
    steps: int | None = None          # optimiser steps (default: the largest of eval_steps)
    eval_steps: tuple[int, ...] = (0, 5, 10, 20)  # measure both halves after these many steps
    lr: float | None = None           # default 2e-4 for LoRA (the paper's), 1e-5 for full fine-tuning
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


def _lm_batch(model, paragraphs, config, rng, cache):
    n_windows = max(1, math.ceil(config.lm_tokens / config.lm_window))
    return editing._lm_windows(model, paragraphs, n_windows, config.lm_window, rng, cache)


def relearn(model, result, task, config: RelearnConfig | None = None, *, seed: int = 0, split_seed: int | None = None,
            progress: bool = True) -> pd.DataFrame:
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

    Returns:
        The tidy curve: ``task, localization, seed, method, step, half, accuracy, p_true, n``, one row per
        evaluated step and half (``"A (trained)"`` / ``"B (held out)"``, and ``"maintain (held out)"``: known
        facts outside the forget set, the control that the attack recovers the forgotten facts selectively
        rather than by saying one answer to everyone); ``accuracy`` is the share of facts whose true answer
        is the model's top candidate, ``p_true`` its mean normalised probability.
    """
    config = config or RelearnConfig()
    half_a, half_b = split_forget(task, seed if split_seed is None else split_seed)
    facts_a, facts_b = _Half.of(model, half_a).facts, _Half.of(model, half_b).facts
    control = _maintain_control(model, task, config.eval_maintain, seed)
    maintain = editing._tokenise_facts(model, task, "maintain_train", need_new=False) if len(task.maintain_train) else None
    use_maintain = maintain is not None and config.maintain_coef > 0 and config.maintain_batch_size > 0
    use_lm = config.lm_coef > 0 and config.lm_tokens > 0
    paragraphs = editing.general_text("train", exclude=task.subjects) if use_lm else []
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    a_sampler = editing._Sampler(len(facts_a), config.batch_size, rng)
    m_sampler = editing._Sampler(len(maintain), config.maintain_batch_size, rng) if use_maintain else None
    cache: dict = {}
    dev = device_of(model)
    pad = model.tokenizer.pad_token_id or 0
    hf = hf_model(model)
    rows: list[dict] = []

    def record(step):
        hf.eval()
        rows.extend(dict(step=step, **r) for r in _measure_halves(model, (facts_a, facts_b, control),
                                                                   batch_size=config.eval_batch_size))

    was_training = hf.training
    adapter = (lora_adapters(model, config.rank, config.alpha, config.dropout, config.target_modules, config.layers, seed)
               if config.method == "lora" else full_finetuning(model, config.target_modules, config.layers))
    label = result.localization if result is not None else "base (no edit)"
    try:
        with _edited(model, result), adapter as params:
            opt = torch.optim.AdamW(list(params.values()), lr=config.lr, weight_decay=0.0)
            if 0 in config.eval_steps:
                record(0)
            bar = tqdm(range(1, config.steps + 1), desc=f"relearn [{label}]", disable=not progress, leave=False)
            for step in bar:
                hf.train()
                a_idx = a_sampler.next()
                m_idx = m_sampler.next() if m_sampler else []
                seqs = [facts_a.ids[i] for i in a_idx] + [maintain.ids[i] for i in m_idx]
                ids, mask, last = pad_right(seqs, pad)
                logp = torch.log_softmax(last_logits(model, ids, mask, last).float(), dim=-1)
                na = len(a_idx)
                loss = -logp[:na].gather(1, facts_a.true[a_idx, None].to(dev)).mean()
                if m_idx:
                    loss = loss + config.maintain_coef * -logp[na:].gather(1, maintain.true[m_idx, None].to(dev)).mean()
                if use_lm:
                    lm_ids, lm_mask = _lm_batch(model, paragraphs, config, rng, cache)
                    loss = loss + config.lm_coef * editing.lm_loss(model, lm_ids, lm_mask)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(list(params.values()), config.grad_clip)
                opt.step()
                opt.zero_grad(set_to_none=True)
                bar.set_postfix(loss=f"{loss.item():.3f}")
                if step in config.eval_steps:
                    record(step)
    finally:
        hf.train(was_training)
    curve = pd.DataFrame(rows).assign(task=task.name, localization=label, seed=seed, method=config.method)
    curve.attrs.update(config=dataclasses.asdict(config), n_a=len(facts_a), n_b=len(facts_b))
    return curve.reindex(columns=CURVE_COLUMNS)


def plot_relearning(curves: pd.DataFrame, half: str | None = "B (held out)", ax=None,
                    title: str = "Relearning: forget accuracy on the held-out half"):
    """Seaborn line plot of accuracy against relearning step, one line per localization.

    Args:
        curves: concatenated :func:`relearn` tables.
        half: draw only this half (``None``: both, as line styles).
    """
    import matplotlib.pyplot as plt
    import seaborn as sns

    if ax is None:
        _, ax = plt.subplots(figsize=(7, 3.8))
    data = curves if half is None else curves[curves["half"] == half]
    if data.empty:
        raise ValueError(f"No rows for half {half!r} (halves: {sorted(curves['half'].unique())}).")
    sns.lineplot(data=data, x="step", y="accuracy", hue="localization", style="half" if half is None else None,
                 markers=True, dashes=half is None, ax=ax)
    ax.set(ylim=(-0.02, 1.02), xlabel="relearning steps", ylabel="accuracy of the true answer", title=title,
           xticks=sorted(data["step"].unique()))
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    return ax


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
        return embed_tokens(model, ids[None])[0].detach().float().clone()


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
    half_a, half_b = split_forget(task, seed if split_seed is None else split_seed)
    facts_a, facts_b = _Half.of(model, half_a).facts, _Half.of(model, half_b).facts
    control = _maintain_control(model, task, eval_maintain, seed)
    maintain = editing._tokenise_facts(model, task, "maintain_train", need_new=False) if len(task.maintain_train) else None
    rng = np.random.default_rng(seed)
    sampler = editing._Sampler(len(facts_a), batch_size, rng)
    use_maintain = maintain is not None and maintain_coef > 0 and maintain_batch_size > 0
    m_sampler = editing._Sampler(len(maintain), maintain_batch_size, rng) if use_maintain else None
    dev = device_of(model)
    hf = hf_model(model)
    label = result.localization if result is not None else "base (no edit)"
    rows, hist = [], []
    t0 = time.perf_counter()
    was_training = hf.training
    hf.eval()
    try:
        with _edited(model, result):
            rows += [dict(stage="no prompt", **r) for r in _measure_halves(model, (facts_a, facts_b, control))]
            prefix = init_prefix(model, n_tokens, seed).to(dev).requires_grad_(True)
            opt = torch.optim.Adam([prefix], lr=lr)
            for step in tqdm(range(1, steps + 1), desc=f"soft prompt [{label}]", disable=not progress, leave=False):
                idx = sampler.next()
                logp, _ = _candidate_logprobs(model, facts_a, idx, prefix)
                loss = -logp.gather(1, facts_a.true[idx, None].to(dev)).mean()
                if m_sampler is not None:
                    m_idx = m_sampler.next()
                    m_logp, _ = _candidate_logprobs(model, maintain, m_idx, prefix)
                    loss = loss + maintain_coef * -m_logp.gather(1, maintain.true[m_idx, None].to(dev)).mean()
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                hist.append(dict(step=step, loss=loss.item()))
            prefix = prefix.detach()
            rows += [dict(stage="soft prompt", **r) for r in _measure_halves(model, (facts_a, facts_b, control), prefix)]
    finally:
        hf.train(was_training)
    table = pd.DataFrame(rows).assign(task=task.name, localization=label, seed=seed)
    table = table.reindex(columns=["task", "localization", "seed", "stage", "half", "accuracy", "p_true", "n"])
    meta = dict(n_tokens=n_tokens, steps=steps, lr=lr, batch_size=batch_size, maintain_batch_size=maintain_batch_size,
                maintain_coef=maintain_coef, seed=seed, model=model_name(model),
                seconds=round(time.perf_counter() - t0, 2))
    return SoftPromptResult(prefix.cpu(), table, pd.DataFrame(hist), meta)


def plot_soft_prompt(tables: pd.DataFrame, title: str = "Soft-prompt attack"):
    """Seaborn bars: accuracy without and with the learned prefix, per localization, on half B and the control.

    Returns:
        The ``sns.FacetGrid`` (one panel for half B, one for the held-out maintain facts when measured).
    """
    import seaborn as sns

    halves = [h for h in ("B (held out)", "maintain (held out)") if h in set(tables["half"])]
    data = tables[tables["half"].isin(halves)]
    g = sns.catplot(data=data, x="localization", y="accuracy", hue="stage", col="half", col_order=halves, kind="bar",
                    height=3.2, aspect=1.3)
    g.set(ylim=(0, 1))
    g.set_axis_labels("", "accuracy of the true answer")
    g.set_titles("{col_name}")
    for ax in g.axes.flat:
        ax.tick_params(axis="x", rotation=20)
    g.figure.suptitle(title, y=1.04)
    return g

"""The training loop: one loop for edits, relearning attacks, soft prompts and weight masks.

An edit (:mod:`.editing`), a relearning attack (:mod:`.attacks`), a soft prompt
(:mod:`.attacks`) and a weight mask (:mod:`.masking`) are the same procedure:

1. draw a batch of facts (prompts that end where the answer begins);
2. run the model and read the log-probabilities of the next token at each
   prompt's **last** token — only there, because unembedding into a 262k-token
   vocabulary at every position is the most expensive part of a step;
3. turn them into a loss (below), add a language-modelling loss on a few
   windows of general text if wanted, and take an optimiser step on the
   weights that are *trainable* — everything else is frozen.

What differs is only *what is trainable* (a localization's weights, LoRA
adapters, every weight of some projections, ``k`` vectors in embedding space,
the logits of a mask) and *which loss applies*. So each client builds a
``step_loss(step) -> (loss, record)`` function and hands it, with its
trainable tensors, to :func:`train`.

The losses on a fact batch (``logp``: log-softmax over the vocabulary at the
last prompt token):

- **inject** (:func:`inject_loss`): cross-entropy toward the *new* answer's
  token — an edit that makes "LeBron James plays the sport of" say " golf";
- **unlearn** (:func:`unlearn_loss`): ``-log(1 - p(true answer))``, which
  pushes the true answer down without naming a replacement (its gradient grows
  as p → 1 and vanishes as p → 0, unlike plain gradient ascent, which never
  stops);
- **maintain** (:func:`maintain_loss`): cross-entropy toward the *true*
  answer, on facts that must not move (and, in an attack, on the facts the
  attacker wants back);
- **general text** (:func:`lm_loss`): mean next-token cross-entropy on random
  windows of ordinary text (:func:`general_text`, with paragraphs that mention
  the edited subjects removed), which keeps the model a language model.

Every fact set is tokenised once (:func:`tokenise_facts` → :class:`Facts`),
batches come from a seeded :class:`Sampler` (the same seed gives the same
batches, so the same history), and accuracy — is the true (or the new)
answer the top candidate? — is measured by one function, :func:`accuracy`.

The loop (:func:`train`) is AdamW without weight decay (with no decay, an
entry whose gradient is zero — a weight outside a head-level localization's
mask — stays exactly as it was), an optional learning-rate schedule
(:func:`cosine_schedule`) and optional gradient clipping. It returns the
history as a DataFrame, one row per step. The weights it trains are the
model's own: :func:`restored` puts them back bit for bit when a block ends,
also after an error or an interrupt.
"""

from __future__ import annotations

import functools
import math
import time
import warnings
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from tqdm.auto import tqdm

from . import data as _data
from .checks import check_str
from .models import hf_model, named_parameters, only_trainable
from .scoring import (answer_tokens, device_of, encode_prompts, hidden_states, pad_right, prepends_bos, single_token_id,
                      unembed)

# ---------------------------------------------------------------------------
# Facts: tokenised once, drawn in seeded batches
# ---------------------------------------------------------------------------


@dataclass
class Facts:
    """Tokenised facts: the prompts, the answer tokens the losses train, the candidates accuracy compares.

    Attributes:
        ids: token ids of each prompt (BOS included, no padding).
        true: ``(n,)`` first token of the true answer.
        new: ``(n,)`` the new answer's token (``-1``: the fact has none).
        cands: ``(n, k)`` first token of each candidate answer (short rows repeat their last candidate).
        true_pos: ``(n,)`` index of the true answer among the candidates.
        new_pos: ``(n,)`` index of the new answer among the candidates (``-1``: none).
    """

    ids: list[list[int]]
    true: Int[torch.Tensor, "n"]
    new: Int[torch.Tensor, "n"]
    cands: Int[torch.Tensor, "n k"]
    true_pos: Int[torch.Tensor, "n"]
    new_pos: Int[torch.Tensor, "n"]

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, idx: Sequence[int]) -> Facts:
        """The facts at ``idx``, in that order."""
        idx = list(idx)
        return Facts([self.ids[i] for i in idx], self.true[idx], self.new[idx], self.cands[idx], self.true_pos[idx],
                     self.new_pos[idx])


def tokenise_facts(model, task, which: str, need_new: bool = False) -> Facts:
    """Tokenise one fact set of a task in its training format.

    Args:
        model: the bridge (its tokenizer).
        task: a :class:`~mechunlearn_nb.tasks.Task`.
        which: ``"forget"``, ``"maintain_train"`` or ``"maintain_eval"``.
        need_new: every fact must have a new answer of exactly one token (an injection trains that token).

    Raises:
        ValueError: ``need_new`` and a fact has no new answer.
    """
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
    return Facts(ids, as_t(true), as_t(new), as_t(cands), as_t(tpos), as_t(npos))


class Sampler:
    """Batches of indices ``0 .. n-1``, epoch after epoch, each epoch a fresh permutation from ``rng``.

    Several samplers may share one generator: what each draws then depends on the order of the
    calls, which a training step keeps fixed (so the same seed gives the same batches).
    """

    def __init__(self, n: int, batch: int, rng: np.random.Generator):
        self.n, self.batch, self.rng, self.queue = n, min(batch, n), rng, []

    def next(self) -> list[int]:
        while len(self.queue) < self.batch:
            self.queue.extend(self.rng.permutation(self.n).tolist())
        out, self.queue = self.queue[: self.batch], self.queue[self.batch :]
        return out


# ---------------------------------------------------------------------------
# General text: random windows and their language-modelling loss
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
    keep = _data.drop_mentions([p for i, p in enumerate(paras) if (i % 10 == 0) == (split == "eval")], exclude)
    if not keep:
        raise ValueError(f"No general-text paragraph left in split {split!r} after excluding {len(exclude or [])} strings.")
    return keep


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


class GeneralText:
    """The general-text term of a step: ``tokens`` tokens per step, as windows of ``window`` tokens.

    Each call of :meth:`loss` draws fresh windows (a random paragraph, a random start; BOS + text)
    from ``rng`` and returns their :func:`lm_loss`. Paragraphs are tokenised once, when first drawn.
    """

    def __init__(self, model, paragraphs: list[str], tokens: int, window: int, rng: np.random.Generator):
        self.model, self.paragraphs, self.window, self.rng = model, paragraphs, window, rng
        self.n_windows = max(1, math.ceil(tokens / window))
        self.cache: dict[int, list[int]] = {}

    def windows(self) -> tuple[Int[torch.Tensor, "batch pos"], Int[torch.Tensor, "batch pos"]]:
        """``n_windows`` random windows, right-padded: ``(input_ids, attention_mask)``."""
        tok = self.model.tokenizer
        seqs = []
        for i in self.rng.choice(len(self.paragraphs), size=self.n_windows, replace=len(self.paragraphs) < self.n_windows):
            if i not in self.cache:
                self.cache[i] = tok(self.paragraphs[i], add_special_tokens=False)["input_ids"]
            toks = self.cache[i]
            start = int(self.rng.integers(0, max(1, len(toks) - self.window + 1)))
            bos = [tok.bos_token_id] if prepends_bos(self.model) else []  # as the model's own tokenizer does
            seqs.append(bos + toks[start : start + self.window])
        ids, mask, _ = pad_right(seqs, tok.pad_token_id or 0)
        return ids, mask

    def loss(self) -> Float[torch.Tensor, ""]:
        return lm_loss(self.model, *self.windows())


# ---------------------------------------------------------------------------
# The forward pass at the last token, optionally behind a soft prompt
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


def last_token_logprobs(model, seqs: Sequence[Sequence[int]], prefix: Float[torch.Tensor, "k d_model"] | None = None
                        ) -> Float[torch.Tensor, "batch vocab"]:
    """Log-softmax over the vocabulary at the last token of each prompt (right-padded into one batch)."""
    ids, mask, last = pad_right(seqs, model.tokenizer.pad_token_id or 0)
    return torch.log_softmax(last_logits(model, ids, mask, last, prefix).float(), dim=-1)


# ---------------------------------------------------------------------------
# Losses on a fact batch
# ---------------------------------------------------------------------------


def _token_logprobs(logp: Float[torch.Tensor, "batch vocab"], tokens: Int[torch.Tensor, "batch"]) -> Float[torch.Tensor, "batch 1"]:
    return logp.gather(1, tokens[:, None].to(logp.device))


def inject_loss(logp: Float[torch.Tensor, "batch vocab"], facts: Facts, idx: list[int]) -> Float[torch.Tensor, ""]:
    """Cross-entropy toward the new answers of facts ``idx`` (``logp``: their last-token log-probs)."""
    return -_token_logprobs(logp, facts.new[idx]).mean()


def unlearn_loss(logp: Float[torch.Tensor, "batch vocab"], facts: Facts, idx: list[int]) -> Float[torch.Tensor, ""]:
    """``-log(1 - p(true answer))`` of facts ``idx``; p is capped just below 1 so the loss stays finite."""
    p_true = _token_logprobs(logp, facts.true[idx]).exp()
    return -torch.log1p(-p_true.clamp(max=1 - 1e-6)).mean()


def maintain_loss(logp: Float[torch.Tensor, "batch vocab"], facts: Facts, idx: list[int]) -> Float[torch.Tensor, ""]:
    """Cross-entropy toward the true answers of facts ``idx``."""
    return -_token_logprobs(logp, facts.true[idx]).mean()


#: the loss on the facts an edit changes, per objective
FORGET_LOSSES: dict[str, Callable] = {"injection": inject_loss, "unlearning": unlearn_loss}


@dataclass
class FactTerm:
    """One fact term of a step: ``coef * loss(logp, facts, batch)`` on a batch drawn by ``sampler``.

    ``name`` labels the term's value in the history (e.g. ``"forget_loss"``).
    """

    name: str
    facts: Facts
    sampler: Sampler
    loss: Callable[[torch.Tensor, Facts, list[int]], torch.Tensor]
    coef: float = 1.0


def fact_step(model, terms: Sequence[FactTerm], general: GeneralText | None = None, general_coef: float = 1.0,
              prefix: torch.Tensor | None = None, one_batch: bool = True) -> tuple[torch.Tensor, dict]:
    """The loss of one step: every term's batch, then the general-text windows.

    The batches are drawn in the order of ``terms`` (then the windows), so a seed fixes them all.

    Args:
        terms: the fact terms, summed in this order.
        general: the general-text term (``None``: none), weighted by ``general_coef``.
        prefix: a soft prompt inserted into every fact prompt.
        one_batch: run all the terms' prompts as one padded batch (one forward pass); ``False``
            runs each term's batch on its own (a different padding, so different last bits).

    Returns:
        ``(loss, record)``; the record holds each term's value under its name (``"lm_loss"``: general text).
    """
    if one_batch:
        batches = [t.sampler.next() for t in terms]
        logp = last_token_logprobs(model, [t.facts.ids[i] for t, b in zip(terms, batches) for i in b], prefix)
        parts = logp.split([len(b) for b in batches])
    record: dict[str, float] = {}
    loss = None
    for k, term in enumerate(terms):
        if one_batch:
            idx, term_logp = batches[k], parts[k]
        else:
            idx = term.sampler.next()
            term_logp = last_token_logprobs(model, [term.facts.ids[i] for i in idx], prefix)
        value = term.loss(term_logp, term.facts, idx)
        record[term.name] = value.item()
        loss = term.coef * value if loss is None else loss + term.coef * value
    if general is not None:
        value = general.loss()
        record["lm_loss"] = value.item()
        loss = general_coef * value if loss is None else loss + general_coef * value
    return loss, record


# ---------------------------------------------------------------------------
# Accuracy: is the true (or the new) answer the top candidate?
# ---------------------------------------------------------------------------


@torch.no_grad()
def accuracy(model, facts: Facts, idx: Sequence[int] | None = None,
             prefix: Float[torch.Tensor, "k d_model"] | None = None, batch_size: int = 32,
             per_fact: bool = False) -> dict:
    """Accuracy of the true and of the new answer among each fact's candidates (first tokens).

    Args:
        facts: tokenised facts.
        idx: which of them (default: all), measured in this order, ``batch_size`` prompts per forward pass.
        prefix: a soft prompt inserted into every prompt.
        per_fact: also return each fact's values (``"facts"``: ``p_true`` and ``correct`` lists, in ``idx`` order),
            for statistics that resample facts.

    Returns:
        ``{"acc_true", "acc_new", "p_true", "n"}``: the share of facts whose true (new) answer is the
        most probable candidate, and the true answer's mean probability normalised over the candidates
        (``NaN`` when there is no fact; ``acc_new`` is 0 for facts without a new answer).
    """
    idx = list(range(len(facts))) if idx is None else list(idx)
    if not idx:
        empty = dict(acc_true=float("nan"), acc_new=float("nan"), p_true=float("nan"), n=0)
        return dict(empty, facts=dict(p_true=[], correct=[])) if per_fact else empty
    hit_true, hit_new, p_true = 0, 0, 0.0
    fact_p, fact_hit = [], []
    for s in range(0, len(idx), batch_size):
        b = idx[s : s + batch_size]
        logp = last_token_logprobs(model, [facts.ids[i] for i in b], prefix)
        cand = logp.gather(1, facts.cands[b].to(logp.device)).cpu()
        pred = cand.argmax(-1)
        hit_true += int((pred == facts.true_pos[b]).sum())
        hit_new += int((pred == facts.new_pos[b]).sum())
        p_b = torch.softmax(cand, -1).gather(1, facts.true_pos[b][:, None])
        p_true += float(p_b.sum())
        if per_fact:
            fact_p += p_b[:, 0].tolist()
            fact_hit += (pred == facts.true_pos[b]).int().tolist()
    out = dict(acc_true=hit_true / len(idx), acc_new=hit_new / len(idx), p_true=p_true / len(idx), n=len(idx))
    return dict(out, facts=dict(p_true=fact_p, correct=fact_hit)) if per_fact else out


def edit_accuracies(model, forget: Facts, forget_idx: Sequence[int], maintain: Facts | None,
                    maintain_idx: Sequence[int], with_new: bool = True) -> dict:
    """How an edit stands: ``forget_acc`` (true answer), ``edit_acc`` (new answer; ``NaN`` unless
    ``with_new``) on the forget facts ``forget_idx``, and ``maintain_acc`` on ``maintain_idx``."""
    f = accuracy(model, forget, forget_idx)
    m = accuracy(model, maintain, maintain_idx)["acc_true"] if maintain is not None else float("nan")
    return dict(forget_acc=f["acc_true"], edit_acc=f["acc_new"] if with_new else float("nan"), maintain_acc=m)


# ---------------------------------------------------------------------------
# Weights: which train, and getting them back
# ---------------------------------------------------------------------------


@contextmanager
def restored(params: dict[str, torch.Tensor]) -> Iterator[dict[str, torch.Tensor]]:
    """``with restored(params) as originals: ...`` — the tensors' values are copied back, bit for bit, on exit.

    Yields:
        ``{name: copy of the original value}`` (e.g. to measure how far training moved them).
    """
    originals = {n: p.detach().clone() for n, p in params.items()}
    try:
        yield originals
    finally:
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(originals[n])


# ---------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------


def cosine_schedule(warmup_steps: int, steps: int) -> Callable:
    """Linear warm-up for ``warmup_steps``, then cosine decay to 0 at ``steps`` (for :func:`train`'s ``schedule``)."""
    from transformers import get_cosine_schedule_with_warmup

    return lambda opt: get_cosine_schedule_with_warmup(opt, warmup_steps, steps)


#: how :func:`train` computes a step's forward pass: ``"float32"``, or ``"bfloat16-mixed"`` (under
#: ``torch.autocast`` to bfloat16: matrix products in bfloat16, the weights, their gradients, the optimiser
#: state and the losses (log-softmax, cross-entropy) in float32; measurements stay float32)
PRECISIONS = ("float32", "bfloat16-mixed")


def step_precision(precision: str, device: torch.device):
    """The context a training step's forward pass runs in, for one of :data:`PRECISIONS`.

    ``"bfloat16-mixed"`` is the usual mixed precision of GPU training; on a CPU it pays only where the
    processor multiplies bfloat16 matrices natively (AMX or AVX-512 BF16: about 3.7x a float32 product
    on the machine the shipped paces come from), and is slower elsewhere.
    """
    precision = check_str("precision", precision, PRECISIONS)
    if precision == "float32":
        return nullcontext()
    if not native_bfloat16(device):
        _warn_slow_bfloat16()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def native_bfloat16(device: torch.device | str = "cpu") -> bool:
    """Whether ``device`` multiplies bfloat16 matrices natively: any CUDA device; a CPU with AMX or AVX-512 BF16.

    Without it (an AVX2-only CPU) torch emulates bfloat16, and ``"bfloat16-mixed"`` becomes far slower than
    float32: on a 2-core AMD EPYC with AVX2 a 512x640x2048 product took 2.93 s in bfloat16 against 25 ms in
    float32, one thread.
    """
    device = torch.device(device)
    if device.type != "cpu":
        return device.type == "cuda"
    # (torch's own CPU probes; private, so a torch without them counts as no native support)
    probes = (getattr(torch.cpu, "_is_amx_tile_supported", None), getattr(torch.cpu, "_is_avx512_bf16_supported", None))
    return any(probe is not None and probe() for probe in probes)


@functools.cache
def _warn_slow_bfloat16() -> None:
    warnings.warn(f"precision 'bfloat16-mixed' on a CPU without native bfloat16 (torch sees "
                  f"{torch.backends.cpu.get_cpu_capability()}, no AMX or AVX-512 BF16): torch emulates it, and a "
                  f"training step runs many times slower than in float32. Fix: precision='float32' (plan v3 trains in "
                  f"float32 for this reason).", RuntimeWarning, stacklevel=3)


def train(trainable: dict[str, torch.Tensor] | Sequence[torch.Tensor],
          step_loss: Callable[[int], tuple[torch.Tensor, dict]], steps: int, lr: float, *,
          schedule: Callable | None = None, grad_clip: float | None = None,
          after_backward: Callable[[], None] | None = None, evaluate: Callable[[int], dict | None] | None = None,
          eval_steps: Collection[int] = (), desc: str = "train", progress: bool = True,
          on_step: Callable[[dict], None] | None = None, precision: str = "float32") -> pd.DataFrame:
    """Take ``steps`` optimiser steps on ``trainable``; return the history.

    Each step: ``loss, record = step_loss(step)``; ``loss.backward()``; ``after_backward()`` (e.g. zero
    the gradient outside a head's mask); clip the gradient norm to ``grad_clip``; an AdamW step
    (no weight decay); the schedule's step; gradients cleared.

    Args:
        trainable: the tensors to optimise (they must require grad; everything else should not).
        step_loss: ``step -> (loss, record)``; the record's numbers go into the history (a ``"loss"``
            in it replaces the loss's own value there).
        steps: optimiser steps.
        lr: learning rate (the peak, under a schedule).
        schedule: ``optimizer -> LR scheduler`` (e.g. :func:`cosine_schedule`); ``None``: constant.
        grad_clip: maximum global gradient norm (``None``: no clipping, no ``grad_norm`` recorded).
        after_backward: called after each backward pass, before clipping.
        evaluate: ``step -> dict`` of measurements, called before training (step 0) and after the
            steps in ``eval_steps``; the dict is merged into that step's row.
        eval_steps: when to call ``evaluate`` (0: before the first step).
        desc: the progress bar's label.
        progress: show a progress bar.
        on_step: called with each row as soon as it is complete (the step-0 measurement too), e.g. to
            draw a live curve or a progress display.
        precision: the forward pass of each step (:data:`PRECISIONS`; ``evaluate`` always runs in float32).

    Returns:
        One row per step: ``step, lr, loss``, the record's values, ``grad_norm`` (when clipping),
        ``seconds`` and ``cpu_seconds`` (the step's wall-clock and CPU time, measurements excluded),
        and the measurements; a row for step 0 when 0 is in ``eval_steps``.
    """
    tensors = list(trainable.values()) if isinstance(trainable, dict) else list(trainable)
    precision = check_str("precision", precision, PRECISIONS)
    eval_steps = set(eval_steps)
    opt = torch.optim.AdamW(tensors, lr=lr, weight_decay=0.0)
    sched = schedule(opt) if schedule is not None else None
    rows: list[dict] = []
    if evaluate is not None and 0 in eval_steps:
        rows.append(dict(step=0, **(evaluate(0) or {})))
        if on_step is not None:
            on_step(rows[-1])
    bar = tqdm(range(1, steps + 1), desc=desc, disable=not progress, leave=False)
    for step in bar:
        wall, cpu = time.perf_counter(), time.process_time()
        row = {"step": step, "lr": opt.param_groups[0]["lr"]}
        with step_precision(precision, tensors[0].device):
            loss, record = step_loss(step)
        loss.backward()
        if after_backward is not None:
            after_backward()
        if grad_clip is not None:
            row["grad_norm"] = torch.nn.utils.clip_grad_norm_(tensors, grad_clip).item()
        opt.step()
        if sched is not None:
            sched.step()
        opt.zero_grad(set_to_none=True)
        row = {**row, "loss": loss.item(), **record}
        row.update(seconds=time.perf_counter() - wall, cpu_seconds=time.process_time() - cpu)
        if evaluate is not None and step in eval_steps:
            row.update(evaluate(step) or {})
        rows.append(row)
        if on_step is not None:
            on_step(row)
        bar.set_postfix(loss=f"{row['loss']:.3f}")
    return pd.DataFrame(rows)

"""Batched answer probabilities at the last position.

Every measurement in the series reduces to one question: *given this prompt,
how much probability does the model put on each candidate answer as the next
token?* This module answers it for many prompts at once.

How it stays right and fast:

- **Right padding.** Prompts of different lengths are padded on the right, so
  every real token keeps its position and, the attention being causal, never
  sees a pad. The last real token of each prompt is gathered before the
  unembedding, so a batch gives the numbers of one-at-a-time scoring (the tests
  check this to 1e-4).
- **Unembed only what is needed.** The bridge's own forward computes logits
  for the whole 262k vocabulary at every position; here the transformer body
  runs through the bridge's modules (hooks still fire) and only the gathered
  last positions go through the unembedding.
- **Length-sorted batches**, so little compute is spent on padding.
- **A shared prefix is computed once.** The prompts of a batch usually begin
  with the same tokens (a format's instruction or example: the QA format's
  first 41 of 48 tokens). :func:`hidden_states` runs that prefix for one row,
  hands its keys and values to every row through a KV cache, and runs only the
  rest of each prompt (:func:`shared_prefix_length`). The numbers equal a full
  forward pass's to float rounding (the tests check 1e-4), gradients flow
  through the prefix as through the rest, and it falls back to the full pass
  whenever the result could differ: a hook on a hook point (patching, probes),
  a soft prompt, a prompt longer than a sliding attention window, or a model
  whose cache the first check finds not to reproduce the full pass.
  :func:`full_forward` turns it off in a block (to compare).

Multi-token answers. ``mode="first"`` (the default, and what the paper does
for Sports Facts) scores the *first token* of each candidate: candidates whose
first tokens collide are rejected, since they could not be told apart.
``mode="full"`` scores the whole continuation, the sum of its tokens'
log-probabilities (teacher-forced), at the cost of one extra forward pass per
candidate; use it for CounterFact targets that span several tokens.

Probabilities are returned raw (softmax over the vocabulary) and normalised
over the candidates (the paper's "normalised probability").
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from tqdm.auto import tqdm

from .checks import ParameterError, check_int, check_str
from .models import hf_model


class MultiTokenAnswerError(ValueError):
    """An answer spans several tokens where exactly one is needed."""


#: source folder or HF id of a tokenizer → whether that tokenizer, as shipped, starts a text with BOS
_OWN_TOKENIZER_BOS: dict[str, bool] = {}


def prepends_bos(model) -> bool:
    """Whether prompts start with a BOS token: exactly when the model's own tokenizer adds one.

    The bridge reloads every tokenizer with ``add_bos_token=True``, so its ``model.tokenizer``
    prepends BOS even for models whose own tokenizer never does (SmolLM2, Qwen ...): a token
    those models rarely saw at the start of a text, which shifts their answer probabilities.
    Prompts here are tokenised as the model's own tokenizer would (Gemma: with BOS; SmolLM2:
    without). Found once per tokenizer source by loading its tokenizer as shipped; set
    ``model.mechunlearn_prepend_bos`` to override.
    """
    fixed = getattr(model, "mechunlearn_prepend_bos", None)
    if fixed is not None:
        return bool(fixed)
    tok = model.tokenizer
    source = str(getattr(tok, "name_or_path", "") or "")
    if source not in _OWN_TOKENIZER_BOS:
        _OWN_TOKENIZER_BOS[source] = _own_tokenizer_adds_bos(source, tok)
    model.mechunlearn_prepend_bos = _OWN_TOKENIZER_BOS[source]
    return model.mechunlearn_prepend_bos


def _own_tokenizer_adds_bos(source: str, bridge_tokenizer) -> bool:
    if bridge_tokenizer.bos_token_id is None:
        return False
    try:
        from transformers import AutoTokenizer

        own = AutoTokenizer.from_pretrained(source)
    except Exception:  # the source cannot be read again (e.g. a tokenizer built in memory): keep the bridge's way
        return bool(bridge_tokenizer("a")["input_ids"][:1] == [bridge_tokenizer.bos_token_id])
    ids = own("a")["input_ids"]
    return own.bos_token_id is not None and ids[:1] == [own.bos_token_id]


def encode_prompts(model, prompts: Sequence[str]) -> list[list[int]]:
    """Token ids of each prompt, starting with BOS when the model's own tokenizer adds one (:func:`prepends_bos`)."""
    if len(prompts) == 0:
        raise ValueError("No prompts to score: the prompt list is empty.")
    ids = model.tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    if prepends_bos(model):
        bos = model.tokenizer.bos_token_id
        ids = [[bos, *x] for x in ids]
    return ids


def answer_tokens(model, answer: str) -> list[int]:
    """Token ids of an answer as a continuation (no BOS). Keep its leading space: ``" golf"``."""
    ids = model.tokenizer(answer, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"Answer {answer!r} encodes to no token.")
    return ids


def single_token_id(model, answer: str) -> int:
    """The one token of ``answer``; raises :class:`MultiTokenAnswerError` if it has several."""
    ids = answer_tokens(model, answer)
    if len(ids) != 1:
        pieces = model.tokenizer.convert_ids_to_tokens(ids)
        raise MultiTokenAnswerError(
            f"Answer {answer!r} is {len(ids)} tokens {pieces} but one token is needed here. "
            "Fix: pick an answer that is a single token for this tokenizer (check with "
            "scoring.answer_tokens), keep its leading space (' golf', not 'golf'), or score with mode='full'."
        )
    return ids[0]


def pad_right(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[Int[torch.Tensor, "batch pos"], Int[torch.Tensor, "batch pos"], Int[torch.Tensor, "batch"]]:
    """Right-pad token lists: ``(input_ids, attention_mask, last_index)``."""
    lengths = torch.tensor([len(s) for s in seqs])
    width = int(lengths.max())
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    mask = (torch.arange(width)[None, :] < lengths[:, None]).long()
    return ids, mask, lengths - 1


def device_of(model) -> torch.device:
    return next(hf_model(model).parameters()).device


#: the fewest tokens a batch's rows must share before :func:`hidden_states` computes them once
MIN_SHARED_PREFIX = 4
_SHARE_PREFIX = [True]


@contextlib.contextmanager
def full_forward():
    """Within the block every batch runs in full, its shared prefix computed once per row (as before the
    prefix cache; to compare the two or to rule it out)."""
    _SHARE_PREFIX.append(False)
    try:
        yield
    finally:
        _SHARE_PREFIX.pop()


def shared_prefix_length(input_ids: Int[torch.Tensor, "batch pos"], attention_mask: Int[torch.Tensor, "batch pos"]) -> int:
    """How many leading tokens every row has in common (all real tokens), at most ``pos - 1``."""
    same = (input_ids == input_ids[:1]).all(0) & attention_mask.bool().all(0)
    return min(int(same.long().cumprod(0).sum()), input_ids.shape[1] - 1)


def _hooks_active(hf) -> bool:
    """Whether a hook is on any of the bridge's hook points (``model.hooks(...)``, ``run_with_cache``: patching,
    probes, tracing), where a hook must see every row at every position. (Other modules carry hooks of their own
    that only capture outputs once a caller asks for them; they do not change a result.)"""
    from transformer_lens.hook_points import HookPoint

    return any((m._forward_hooks or m._forward_pre_hooks) for m in hf.modules() if isinstance(m, HookPoint))


def _shared_forward(hf, input_ids: torch.Tensor, attention_mask: torch.Tensor, p: int) -> torch.Tensor:
    """The last hidden states of a batch whose first ``p`` tokens are the same in every row: the prefix once,
    its keys and values repeated for every row, then the rest of each row on top of them."""
    from transformers import DynamicCache

    b = input_ids.shape[0]
    cache = DynamicCache(config=hf.config)
    # the bridge's attention reads the cache as ``layer_past``; transformers' layers pass it as ``cache``
    head = hf.model(input_ids=input_ids[:1, :p], attention_mask=attention_mask[:1, :p], cache=cache,
                    layer_past=cache, use_cache=True).last_hidden_state
    cache.batch_repeat_interleave(b)
    rest = hf.model(input_ids=input_ids[:, p:], attention_mask=attention_mask, cache=cache, layer_past=cache,
                    use_cache=True).last_hidden_state
    return torch.cat([head.expand(b, -1, -1), rest], dim=1)


def _prefix_cache_works(hf, input_ids: torch.Tensor, attention_mask: torch.Tensor, p: int) -> bool:
    """Checked once per model, on its first shareable batch (two rows): does the cached prefix give the full
    pass's numbers? A model or library version whose cache does not reach the attention fails it."""
    ok = getattr(hf, "_mechunlearn_prefix_cache_ok", None)
    if ok is None:
        ids, mask = input_ids[:2], attention_mask[:2]
        with torch.no_grad(), torch.autocast(device_type=ids.device.type, enabled=False):  # (in float32 even when
            # the caller trains in mixed precision, so that rounding is not mistaken for a cache that fails)
            full = hf.model(input_ids=ids, attention_mask=mask).last_hidden_state
            try:
                shared = _shared_forward(hf, ids, mask, p)
                real = mask.bool()
                gap = (full[real] - shared[real]).float().norm() / full[real].float().norm()
                # a cache that does not reach the attention is off by the values' own size (gap near 1); float
                # rounding is 1e-6 in float32, about 1e-2 in a 16-bit model
                ok = bool(gap <= (1e-3 if full.dtype in (torch.float32, torch.float64) else 5e-2))
            except (TypeError, ValueError, RuntimeError, AttributeError):
                ok = False
        if not ok:
            warnings.warn("This model's KV cache does not reproduce its full forward pass, so batches run in "
                          "full (slower, same numbers).", stacklevel=3)
        hf._mechunlearn_prefix_cache_ok = ok
    return ok


def hidden_states(model, input_ids: Int[torch.Tensor, "batch pos"], attention_mask: Int[torch.Tensor, "batch pos"] | None = None,
                  inputs_embeds: Float[torch.Tensor, "batch pos d_model"] | None = None) -> Float[torch.Tensor, "batch pos d_model"]:
    """Final (normed) residual stream at every position, through the bridge's hooked modules.

    A prefix that every row shares (at least :data:`MIN_SHARED_PREFIX` tokens) is computed once (see the
    module's notes), unless a hook is registered, embeddings are given, or :func:`full_forward` is on.
    """
    hf = hf_model(model)
    dev = device_of(model)
    if attention_mask is not None:
        attention_mask = attention_mask.to(dev)
    if inputs_embeds is not None:
        return hf.model(inputs_embeds=inputs_embeds, attention_mask=attention_mask).last_hidden_state
    input_ids = input_ids.to(dev)
    window = getattr(hf.config, "sliding_window", None)
    if (_SHARE_PREFIX[-1] and attention_mask is not None and input_ids.shape[0] > 1
            and (not window or input_ids.shape[1] <= window) and not _hooks_active(hf)):
        p = shared_prefix_length(input_ids, attention_mask)
        if p >= MIN_SHARED_PREFIX and _prefix_cache_works(hf, input_ids, attention_mask, p):
            return _shared_forward(hf, input_ids, attention_mask, p)
    return hf.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def unembed(model, resid: Float[torch.Tensor, "... d_model"], token_ids: Sequence[int] | None = None
            ) -> Float[torch.Tensor, "... vocab"]:
    """Logits of final-normed residual vectors (with the model's logit soft-capping, if any).

    Args:
        token_ids: only these vocabulary rows (the last dimension is then ``len(token_ids)``).
    """
    hf = hf_model(model)
    if token_ids is None:
        logits = hf.lm_head(resid)
    else:
        head = hf.lm_head
        logits = resid @ head.weight[list(token_ids)].T
        if getattr(head, "bias", None) is not None:
            logits = logits + head.bias[list(token_ids)]
    cap = getattr(hf.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def logits_at(model, input_ids: Int[torch.Tensor, "batch pos"], attention_mask: Int[torch.Tensor, "batch pos"],
              positions: Int[torch.Tensor, "batch"]) -> Float[torch.Tensor, "batch vocab"]:
    """Logits at one position per row (the last real token, usually): unembeds only those."""
    h = hidden_states(model, input_ids, attention_mask)
    rows = torch.arange(h.shape[0], device=h.device)
    return unembed(model, h[rows, positions.to(h.device)])


def _batches(order: np.ndarray, batch_size: int):
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


@torch.no_grad()
def _first_token_logprobs(model, prompt_ids, cand_ids, batch_size, progress, desc):
    n = len(prompt_ids)
    out = [None] * n
    order = np.argsort([len(p) for p in prompt_ids], kind="stable")
    pad = model.tokenizer.pad_token_id or 0
    for batch in tqdm(list(_batches(order, batch_size)), desc=desc, disable=not progress, leave=False):
        ids, mask, last = pad_right([prompt_ids[i] for i in batch], pad)
        logp = torch.log_softmax(logits_at(model, ids, mask, last).float(), dim=-1).cpu()
        for row, i in enumerate(batch):
            out[i] = logp[row, [c[0] for c in cand_ids[i]]].numpy()
    return out


@torch.no_grad()
def _full_logprobs(model, prompt_ids, cand_ids, batch_size, progress, desc):
    # one sequence per (prompt, candidate): prompt + candidate tokens, teacher-forced
    seqs, spans, owner = [], [], []
    for i, (p, cands) in enumerate(zip(prompt_ids, cand_ids)):
        for j, c in enumerate(cands):
            seqs.append(list(p) + list(c))
            spans.append((len(p), len(c)))
            owner.append((i, j))
    totals = np.zeros(len(seqs))
    order = np.argsort([len(s) for s in seqs], kind="stable")
    pad = model.tokenizer.pad_token_id or 0
    for batch in tqdm(list(_batches(order, batch_size)), desc=desc, disable=not progress, leave=False):
        ids, mask, _ = pad_right([seqs[i] for i in batch], pad)
        h = hidden_states(model, ids, mask)
        for row, i in enumerate(batch):
            start, length = spans[i]
            # logits at positions start-1 .. start+length-2 predict the candidate's tokens
            logp = torch.log_softmax(unembed(model, h[row, start - 1 : start - 1 + length]).float(), dim=-1)
            target = torch.tensor(seqs[i][start : start + length], device=logp.device)
            totals[i] = logp.gather(1, target[:, None]).sum().item()
    out = [np.zeros(len(c)) for c in cand_ids]
    for (i, j), v in zip(owner, totals):
        out[i][j] = v
    return out


def candidate_logprobs(model, prompts: Sequence[str], candidates: Sequence[Sequence[str]] | Sequence[str],
                       batch_size: int = 32, mode: str = "first", progress: bool = True) -> list[np.ndarray]:
    """Log-probability of each candidate after each prompt.

    Args:
        prompts: prompt texts (BOS first when the model's own tokenizer adds one: :func:`prepends_bos`).
        candidates: one list of candidate continuations for all prompts, or one list per prompt.
            Keep leading spaces (``" golf"``).
        batch_size: prompts per forward pass.
        mode: ``"first"`` scores each candidate's first token; ``"full"`` its whole continuation.
        progress: show a progress bar.

    Returns:
        For each prompt, an array of log-probabilities, one per candidate.
    """
    if isinstance(prompts, str):
        raise ParameterError(f"prompts must be a list of strings, got one string {prompts[:40]!r}... (it would be "
                             "scored character by character). Fix: pass [prompt].")
    batch_size = check_int("batch_size", batch_size, min=1)
    check_str("mode", mode, ("first", "full"))
    prompts = list(prompts)
    if isinstance(candidates, str):
        raise ParameterError(f"candidates must be a list of strings (or one list per prompt), got one string "
                             f"{candidates!r}. Fix: pass [{candidates!r}].")
    if candidates and isinstance(candidates[0], str):
        candidates = [list(candidates)] * len(prompts)
    if len(candidates) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(candidates)} candidate lists.")
    if mode not in ("first", "full"):
        raise ValueError(f"Unknown scoring mode {mode!r}; choose 'first' or 'full'.")
    prompt_ids = encode_prompts(model, prompts)
    cache: dict[str, list[int]] = {}
    cand_ids = [[cache.setdefault(c, answer_tokens(model, c)) for c in cands] for cands in candidates]
    if mode == "first":
        for cands, ids in zip(candidates, cand_ids):
            firsts = [i[0] for i in ids]
            if len(set(firsts)) != len(firsts):
                dup = [c for c, f in zip(cands, firsts) if firsts.count(f) > 1]
                raise MultiTokenAnswerError(
                    f"Candidates {dup} share their first token, so first-token scoring cannot tell them apart. "
                    "Fix: score with mode='full'.")
        return _first_token_logprobs(model, prompt_ids, cand_ids, batch_size, progress, "scoring")
    return _full_logprobs(model, prompt_ids, cand_ids, batch_size, progress, "scoring (full answers)")


def score(model, prompts: Sequence[str], candidates: Sequence[Sequence[str]] | Sequence[str],
          answers: Sequence[int] | None = None, batch_size: int = 32, mode: str = "first",
          progress: bool = True) -> pd.DataFrame:
    """Score prompts: one row per prompt.

    Columns: ``prompt``, ``probs`` (raw probability of each candidate), ``probs_norm``
    (normalised over the candidates), ``predicted`` (index of the most probable candidate)
    and, when ``answers`` (index of the answer among each prompt's candidates, -1 for none)
    is given, ``p_answer``, ``p_answer_norm`` and ``correct``.
    """
    logps = candidate_logprobs(model, prompts, candidates, batch_size=batch_size, mode=mode, progress=progress)
    probs = [np.exp(lp) for lp in logps]
    norm = [np.exp(lp - np.logaddexp.reduce(lp)) for lp in logps]
    df = pd.DataFrame({"prompt": list(prompts), "probs": probs, "probs_norm": norm,
                       "predicted": [int(np.argmax(lp)) for lp in logps]})
    if answers is not None:
        answers = np.asarray(answers)
        if len(answers) != len(df):
            raise ValueError(f"{len(df)} prompts but {len(answers)} answers.")
        ok = answers >= 0
        df["p_answer"] = [p[a] if a >= 0 else np.nan for p, a in zip(probs, answers)]
        df["p_answer_norm"] = [p[a] if a >= 0 else np.nan for p, a in zip(norm, answers)]
        df["correct"] = np.where(ok, df["predicted"].to_numpy() == answers, False)
    return df


def score_set(model, prompt_set, answers: Sequence[str] | None = None, **kwargs) -> pd.DataFrame:
    """Score a :class:`~mechunlearn_nb.prompts.PromptSet`.

    Args:
        answers: for each *fact* (row of the source DataFrame) the label asked about
            (e.g. the athlete's sport, or ``"target_true"``).

    Returns:
        :func:`score`'s table plus ``format``, ``fact_index`` and ``labels``.
    """
    idx = prompt_set.label_index(list(answers)) if answers is not None else None
    df = score(model, prompt_set.prompts, prompt_set.candidates, answers=idx, **kwargs)
    df.insert(0, "format", prompt_set.format)
    df.insert(1, "fact_index", prompt_set.fact_index)
    df["labels"] = prompt_set.labels
    return df



def text_logprobs(model, prompts: Sequence[str], candidates: Sequence[Sequence[str]], batch_size: int = 32,
                  progress: bool = False) -> list[np.ndarray]:
    """Length-normalised log-probability of each candidate text: the mean over its tokens.

    A candidate of several tokens (``" New York City"``) is scored teacher-forced, token by token
    (``mode="full"``), and its summed log-probability divided by its number of tokens, so that long
    options are not penalised for their length alone. When every candidate of every prompt is a
    single token with a distinct id, one forward pass per prompt does (``mode="first"``: the same
    numbers).

    Returns:
        For each prompt, an array with one mean log-probability per candidate.
    """
    if isinstance(candidates, str) or (candidates and isinstance(candidates[0], str)):
        raise ParameterError("candidates must hold one list of texts per prompt. Fix: pass [[' golf', ' chess'], ...].")
    cache: dict[str, int] = {}
    lengths = [[cache.setdefault(c, len(answer_tokens(model, c))) for c in cands] for cands in candidates]
    single = all(n == 1 for row in lengths for n in row)
    if single:
        firsts = [[answer_tokens(model, c)[0] for c in cands] for cands in candidates]
        single = all(len(set(f)) == len(f) for f in firsts)
    mode = "first" if single else "full"
    logps = candidate_logprobs(model, prompts, [list(c) for c in candidates], batch_size=batch_size, mode=mode,
                               progress=progress)
    return [lp / np.asarray(n, dtype=float) for lp, n in zip(logps, lengths)]

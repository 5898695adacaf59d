"""Activation patching and attribution patching: which activations carry a fact?

**Activation patching.** Run the model twice: on a *clean* prompt (``"Fact: ...
LeBron James plays the sport of"``, answer basketball) and on a *corrupted* one
where the subject is swapped for an athlete of another sport with the same
number of tokens (``"... Tom Brady plays the sport of"``), so that both runs line
up token for token. Then run the corrupted prompt again, but overwrite a single
activation — one layer's residual stream, attention output or MLP output at one
position, or one attention head's output — with its value from the clean run.
If the answer swings back towards basketball, that activation carries what the
model needs to answer. The metric here is the *logit difference* between the
true sport and the mean of the other two sports, normalised so that the
corrupted run scores 0 and the clean run 1:

    effect = (LD(patched) - LD(corrupted)) / (LD(clean) - LD(corrupted))

Averages over facts are taken *before* normalising (mean patched LD, mean
clean LD, mean corrupted LD), which keeps facts with a small clean–corrupted gap
from blowing the average up.

**Attribution patching** (Nanda 2023; Syed et al. 2023) replaces the one
forward pass per patched activation by a first-order Taylor expansion around
the clean run. With ``g`` the gradient of the metric with respect to an
activation on the clean run, and ``a_clean`` / ``a_corr`` the activation in both
runs, corrupting that activation alone changes the metric by about
``g · (a_corr - a_clean)``. Two forward passes (clean, corrupted) and one
backward pass give this number for *every* activation at once. We attribute

- each attention head's output ``z`` (``blocks.L.attn.hook_z``, batch × pos ×
  head × d_head): the dot product is summed over ``d_head``, so a head's score
  is what its slice of the input to ``W_O`` is worth; the whole attention layer's
  score is the sum over its heads (to first order, its output's score, since
  ``W_O`` and the post-attention norm are what the gradient flows through);
- each MLP's output (``blocks.L.hook_mlp_out``), summed over ``d_model``;

at every position. To compare with activation patching (which *restores* a
clean activation into the corrupted run), an attribution is reported as the
share of the clean–corrupted gap the component would lose:
``effect = -g · (a_corr - a_clean) / (LD(clean) - LD(corrupted))``. If the
metric were linear in the activations both numbers would be equal; the
notebooks measure how close they are on the real model.

**Why not ``transformer_lens.patching``?** Its functions run one forward pass
per patch. On the ``TransformerBridge`` one patched run of a 19-token prompt
costs about 0.46 s (342 patches of ``resid_pre``: 157 s, measured on this
package's 2-core reference machine), so here every patch is one *row* of a
batch: a single forward pass restores a different (layer, position) in each
row, with hooks that index by row. The same engine (:func:`run_patches`) runs
causal tracing (:mod:`.tracing`), whose corruption is noise on the subject's
embeddings instead of another subject.

Positions are grouped into *kinds* (:mod:`.positions`): ``first_subject``,
``last_subject`` (one token may be both), ``later`` (after the subject, before
the last token) and ``last``. Tokens before the subject are never patched: they
are identical in both runs, so patching them changes nothing. Figures of these
tables are in :mod:`.plots` (``plot_patching``, ``plot_comparison``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from tqdm.auto import tqdm

from . import scoring
from .checks import check_int, check_template
from .positions import ALL_KINDS, LAST, POSITION_KINDS, position_kind, subject_span, subject_tokens
from .prompts import FACT_TEMPLATE, SPORTS

#: TransformerLens hook names of the patchable components (``{}`` is the layer)
HOOKS = {
    "resid": "blocks.{}.hook_resid_post",
    "attn": "blocks.{}.hook_attn_out",
    "mlp": "blocks.{}.hook_mlp_out",
    "head": "blocks.{}.attn.hook_z",
}
EMBED_HOOK = "hook_embed"
COMPONENTS = ("resid", "attn", "mlp", "head")


# ---------------------------------------------------------------------------
# Clean and corrupted inputs
# ---------------------------------------------------------------------------


@dataclass
class PatchInputs:
    """Clean and corrupted runs of the same facts, aligned token for token.

    Attributes:
        subjects: the clean subject of each fact.
        clean_ids: token ids of each clean prompt (with BOS).
        corrupt_ids: token ids of each corrupted prompt, same lengths (for noise corruption:
            the clean ids, the noise being added to their embeddings).
        spans: ``(start, end)`` of the subject's tokens in each prompt.
        candidates: token ids scored at the last position of each prompt; ``true_index`` says
            which is the true answer.
        true_index: index of the true answer in each ``candidates`` list.
        metric: ``"prob"`` (softmax probability of the true answer, causal tracing) or
            ``"logit_diff"`` (true answer's logit minus the mean logit of the other candidates).
        noise: for noise corruption, per fact a ``(n_subject_tokens, d_model)`` tensor added to the
            subject's embeddings; ``None`` otherwise.
        meta: how the corruption was made (corrupting subjects, noise scale ...).
    """

    subjects: list[str]
    clean_ids: list[list[int]]
    corrupt_ids: list[list[int]]
    spans: list[tuple[int, int]]
    candidates: list[list[int]]
    true_index: list[int]
    metric: str = "logit_diff"
    noise: list[torch.Tensor] | None = None
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.subjects)

    def subset(self, idx: Sequence[int]) -> PatchInputs:
        pick = lambda xs: None if xs is None else [xs[i] for i in idx]  # noqa: E731
        meta = dict(self.meta)
        for key in ("corrupt_subjects",):
            if key in meta:
                meta[key] = pick(meta[key])
        return PatchInputs(pick(self.subjects), pick(self.clean_ids), pick(self.corrupt_ids), pick(self.spans),
                           pick(self.candidates), pick(self.true_index), self.metric, pick(self.noise), meta)


def balanced_sample(facts: pd.DataFrame, n: int, seed: int = 0, by: str = "sport") -> pd.DataFrame:
    """Up to ``n`` facts, as many from each group of ``by`` as possible (seeded), in a shuffled order."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}.")
    if len(facts) == 0:
        raise ValueError("No facts to sample from: the DataFrame is empty.")
    rng = np.random.default_rng(seed)
    facts = facts.reset_index(drop=True)
    groups = [rng.permutation(g.index.to_numpy()) for _, g in facts.groupby(by, sort=True)]
    # round-robin over the groups, so a small group gives all it has and the others fill up
    picked, i = [], 0
    while len(picked) < min(n, len(facts)):
        for g in groups:
            if i < len(g) and len(picked) < n:
                picked.append(g[i])
        i += 1
    return facts.loc[picked].reset_index(drop=True)


def _check_facts(facts: pd.DataFrame, subject_col: str, answer_col: str) -> pd.DataFrame:
    missing = [c for c in (subject_col, answer_col) if c not in facts.columns]
    if missing:
        raise ValueError(f"The facts need column(s) {missing}; got {list(facts.columns)}. "
                         "Fix: pass tasks.known_facts(model, 'sports') or name the columns with subject_col/answer_col.")
    if len(facts) == 0:
        raise ValueError("No facts given: the DataFrame is empty. Fix: pass at least one fact.")
    return facts.reset_index(drop=True)


def corrupt_subjects(model, facts: pd.DataFrame, pool: pd.DataFrame | None = None, mode: str = "athlete",
                     seed: int = 0, sports: Sequence[str] = SPORTS, template: str = FACT_TEMPLATE,
                     subject_col: str = "athlete", answer_col: str = "sport") -> PatchInputs:
    """Pair each fact's prompt with a corrupted prompt for activation / attribution patching.

    Args:
        facts: rows with ``athlete`` and ``sport`` (e.g. ``tasks.known_facts(model, "sports")``).
        pool: athletes to corrupt with (default: ``facts`` itself); only athletes whose sport
            differs from the fact's and whose name has the same number of tokens are used.
        mode: ``"athlete"`` (another sport's athlete, the default) or ``"random"`` (the subject's
            tokens replaced by tokens drawn at random from the pool's names, same length).
        seed: which corrupting athlete / random tokens.
        sports: the candidate answers; the metric compares the true one with the mean of the others.
        template: the prompt, with ``{athlete}``.

    Returns:
        :class:`PatchInputs` with the logit-difference metric.
    """
    check_template("template", template, fields=("athlete",))
    seed = check_int("seed", seed, min=0)
    facts = _check_facts(facts, subject_col, answer_col)
    pool = facts if pool is None else _check_facts(pool, subject_col, answer_col)
    if mode not in ("athlete", "random"):
        raise ValueError(f"Unknown corruption mode {mode!r}; choose 'athlete' or 'random'.")
    sports = list(sports)
    unknown = sorted(set(facts[answer_col]) - set(sports))
    if unknown:
        raise ValueError(f"Answers {unknown} are not among the candidate sports {sports}. Fix: pass sports=... "
                         "listing every answer.")
    cand = [scoring.single_token_id(model, " " + s) for s in sports]
    rng = np.random.default_rng(seed)
    pool_tokens = [subject_tokens(model, a) for a in pool[subject_col]]
    by_len: dict[tuple[int, str], list[int]] = defaultdict(list)
    for i, (toks, sport) in enumerate(zip(pool_tokens, pool[answer_col])):
        by_len[(len(toks), sport)].append(i)
    name_vocab = np.array(sorted({t for toks in pool_tokens for t in toks}))
    prompts = [template.format(athlete=a) for a in facts[subject_col]]
    clean_ids = scoring.encode_prompts(model, prompts)
    corrupt_ids, spans, true_index, corrupt_names = [], [], [], []
    for ids, subject, sport in zip(clean_ids, facts[subject_col], facts[answer_col]):
        start, end = subject_span(model, ids, subject)
        n = end - start
        if mode == "athlete":
            options = [j for s in sports if s != sport for j in by_len.get((n, s), [])]
            if not options:
                raise ValueError(
                    f"No athlete of another sport with {n} name tokens to corrupt {subject!r} with. "
                    "Fix: pass a larger pool (e.g. all of tasks.known_facts(model, 'sports')), or mode='random'.")
            j = options[int(rng.integers(len(options)))]
            new = pool_tokens[j]
            corrupt_names.append(str(pool[subject_col].iloc[j]))
        else:
            new = [int(t) for t in rng.choice(name_vocab, size=n)]
            corrupt_names.append(model.tokenizer.decode(new).strip())
        corrupt_ids.append(list(ids[:start]) + list(new) + list(ids[end:]))
        spans.append((start, end))
        true_index.append(sports.index(sport))
    return PatchInputs(facts[subject_col].astype(str).tolist(), clean_ids, corrupt_ids, spans,
                       [cand] * len(facts), true_index, "logit_diff",
                       meta=dict(mode=mode, seed=seed, sports=sports, corrupt_subjects=corrupt_names))


# ---------------------------------------------------------------------------
# The batched patching engine
# ---------------------------------------------------------------------------


def metric_values(model, final: Float[torch.Tensor, "batch d_model"], candidates: Int[torch.Tensor, "batch k"],
                  true_index: Int[torch.Tensor, "batch"], metric: str) -> Float[torch.Tensor, "batch"]:
    """The metric of each row from its final normed residual at the last position."""
    logits = scoring.unembed(model, final).float()
    if metric == "prob":
        true_ids = candidates.gather(1, true_index[:, None])
        return torch.softmax(logits, dim=-1).gather(1, true_ids)[:, 0]
    if metric == "logit_diff":
        cand = logits.gather(1, candidates)
        true = cand.gather(1, true_index[:, None])[:, 0]
        k = cand.shape[1]
        if k < 2:
            raise ValueError("The logit difference needs at least two candidate answers.")
        return true - (cand.sum(1) - true) / (k - 1)
    raise ValueError(f"Unknown metric {metric!r}; choose 'prob' or 'logit_diff'.")


@dataclass
class _Row:
    fact: int
    component: str
    layer: int
    head: int | None
    position: int | None  # None: every position (heads with head_positions="all")
    kinds: list[str]
    patches: list[tuple[str, int | None, int | None]]  # (hook, position or None = all, head)


def _window(layer: int, window: int, n_layers: int) -> range:
    """The layers restored around ``layer`` (ROME's window: ``window // 2`` below, the rest above)."""
    return range(max(0, layer - window // 2), min(n_layers, layer - (-window // 2)))


def _plan(inputs: PatchInputs, fact: int, components, layers, kinds, head_positions, window, n_layers, n_heads) -> list[_Row]:
    start, end = inputs.spans[fact]
    length = len(inputs.clean_ids[fact])
    positions = [(p, [k for k in position_kind(p, start, end, length) if k in kinds]) for p in range(length)]
    positions = [(p, ks) for p, ks in positions if ks]
    rows = [_Row(fact, "corrupt", -1, None, None, [], [])]
    for comp in components:
        if comp not in COMPONENTS:
            raise ValueError(f"Unknown component {comp!r}; choose from {COMPONENTS}.")
        hook = HOOKS[comp]
        for layer in layers:
            restored = [layer] if comp in ("resid", "head") else list(_window(layer, window, n_layers))
            if comp == "head":
                for h in range(n_heads):
                    if head_positions == "all":
                        rows.append(_Row(fact, comp, layer, h, None, ["all"], [(hook.format(layer), None, h)]))
                    elif head_positions == LAST:
                        rows.append(_Row(fact, comp, layer, h, length - 1, [LAST], [(hook.format(layer), length - 1, h)]))
                    elif head_positions == "kinds":
                        for p, ks in positions:
                            rows.append(_Row(fact, comp, layer, h, p, ks, [(hook.format(layer), p, h)]))
                    else:
                        raise ValueError(f"Unknown head_positions {head_positions!r}; choose 'last', 'all' or 'kinds'.")
                continue
            for p, ks in positions:
                rows.append(_Row(fact, comp, layer, None, p, ks, [(hook.format(l), p, None) for l in restored]))
    return rows


def _cache_hook(store: dict, key: str):
    # keyed by the name we asked for: inside a hook, hook.name is the alias target
    def hook(x, hook):
        store[key] = x.detach().clone()
        return x
    return hook


def _restore_hook(rows, pos, heads, values):
    def hook(x, hook):
        x = x.clone()
        if heads is None:
            x[rows, pos] = values.to(x.dtype)
        else:
            x[rows, pos, heads] = values.to(x.dtype)
        return x
    return hook


def _add_hook(delta):
    def hook(x, hook):
        return x + delta.to(x.dtype)
    return hook


def _noise_delta(inputs: PatchInputs, facts: Sequence[int], width: int, d_model: int) -> torch.Tensor:
    delta = torch.zeros(len(facts), width, d_model)
    for row, f in enumerate(facts):
        start, end = inputs.spans[f]
        delta[row, start:end] = inputs.noise[f]
    return delta


@torch.no_grad()
def run_patches(model, inputs: PatchInputs, components: Sequence[str] = ("resid", "attn", "mlp"),
                layers: Sequence[int] | None = None, kinds: Sequence[str] = POSITION_KINDS,
                head_positions: str = "last", window: int = 1, batch_size: int = 64,
                progress: bool = True) -> pd.DataFrame:
    """Restore clean activations into the corrupted run, one (component, layer, position) per batch row.

    Args:
        inputs: clean/corrupted inputs (:func:`corrupt_subjects`, or ``tracing.noise_inputs``).
        components: any of ``"resid"`` (block output), ``"attn"`` (attention output), ``"mlp"``
            (MLP output), ``"head"`` (one head's ``z``).
        layers: the layers to patch (default all).
        kinds: the position kinds to patch (see :func:`position_kind`).
        head_positions: heads are patched at the ``"last"`` position, at ``"all"`` positions at
            once, or at each position of ``kinds`` (``"kinds"``).
        window: attention and MLP outputs are restored at ``window`` neighbouring layers at once
            (ROME's window); 1 restores one layer.
        batch_size: rows (patched runs) per forward pass. Larger is faster until memory runs out.

    Returns:
        One row per fact and patch: ``fact, subject, component, layer, head, position, token,
        position_kind, value`` (the metric of the patched run), ``clean``, ``corrupt`` and
        ``effect`` (``(value - corrupt) / (clean - corrupt)`` for that fact). A patch whose
        position has several kinds is listed once per kind.
    """
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    layers = list(range(n_layers)) if layers is None else [int(l) for l in layers]
    bad = [l for l in layers if not 0 <= l < n_layers]
    if bad:
        raise ValueError(f"Layers {bad} do not exist: the model has {n_layers} layers (0–{n_layers - 1}).")
    if window < 1:
        raise ValueError(f"window must be at least 1 (one layer), got {window}.")
    unknown = [k for k in kinds if k not in ALL_KINDS]
    if unknown:
        raise ValueError(f"Unknown position kinds {unknown}; choose from {ALL_KINDS}.")
    if len(inputs) == 0:
        raise ValueError("No facts to patch. Fix: pass at least one fact.")
    pad = model.tokenizer.pad_token_id or 0
    dev = scoring.device_of(model)
    # Facts are processed in chunks: one clean forward pass per chunk caches the activations its
    # rows restore. A chunk holds enough rows for ~16 batches, so the last, partly filled batch
    # of each chunk wastes little.
    rows_per_fact = len(_plan(inputs, 0, components, layers, kinds, head_positions, window, n_layers, n_heads))
    chunk = max(1, -(-16 * batch_size // rows_per_fact))
    order = np.argsort([len(ids) for ids in inputs.clean_ids], kind="stable")
    records = []
    bar = tqdm(total=len(inputs) * rows_per_fact, desc="patching", disable=not progress, leave=False)
    for c0 in range(0, len(order), chunk):
        facts = [int(f) for f in order[c0 : c0 + chunk]]
        clean_ids, mask, last = scoring.pad_right([inputs.clean_ids[f] for f in facts], pad)
        width = clean_ids.shape[1]
        corrupt_ids, _, _ = scoring.pad_right([inputs.corrupt_ids[f] for f in facts], pad)
        cands = torch.tensor([inputs.candidates[f] for f in facts], device=dev)
        truth = torch.tensor([inputs.true_index[f] for f in facts], device=dev)
        # clean run: cache what will be restored, and the clean metric
        plans = {f: _plan(inputs, f, components, layers, kinds, head_positions, window, n_layers, n_heads) for f in facts}
        needed = sorted({h for rows in plans.values() for r in rows for h, _, _ in r.patches})
        clean_cache: dict[str, torch.Tensor] = {}
        with model.hooks(fwd_hooks=[(h, _cache_hook(clean_cache, h)) for h in needed]):
            h_clean = scoring.hidden_states(model, clean_ids, mask)
        rix = torch.arange(len(facts), device=h_clean.device)
        clean_metric = metric_values(model, h_clean[rix, last.to(h_clean.device)], cands, truth, inputs.metric).cpu()
        local = {f: i for i, f in enumerate(facts)}
        all_rows = [r for f in facts for r in plans[f]]
        values = np.zeros(len(all_rows))
        noise = _noise_delta(inputs, facts, width, model.cfg.d_model) if inputs.noise is not None else None
        for b0 in range(0, len(all_rows), batch_size):
            batch = all_rows[b0 : b0 + batch_size]
            fidx = torch.tensor([local[r.fact] for r in batch])
            ids = corrupt_ids[fidx]
            per_hook: dict[str, list] = defaultdict(lambda: [[], [], [], []])
            for i, r in enumerate(batch):
                length = len(inputs.clean_ids[r.fact])
                for hook, pos, head in r.patches:
                    ps = range(length) if pos is None else [pos]
                    for p in ps:
                        e = per_hook[hook]
                        e[0].append(i), e[1].append(p), e[2].append(head), e[3].append(local[r.fact])
            fwd = []
            for hook, (ri, pi, hi, fi) in per_hook.items():
                ri, pi, fi = torch.tensor(ri), torch.tensor(pi), torch.tensor(fi)
                src = clean_cache[hook]
                if hi[0] is None:
                    vals, heads = src[fi.to(src.device), pi.to(src.device)], None
                else:
                    heads = torch.tensor(hi)
                    vals = src[fi.to(src.device), pi.to(src.device), heads.to(src.device)]
                    heads = heads.to(dev)
                fwd.append((hook, _restore_hook(ri.to(dev), pi.to(dev), heads, vals)))
            if noise is not None:
                fwd.append((EMBED_HOOK, _add_hook(noise[fidx].to(dev))))
            with model.hooks(fwd_hooks=fwd):
                h = scoring.hidden_states(model, ids, mask[fidx])
            rb = torch.arange(len(batch), device=h.device)
            final = h[rb, last[fidx].to(h.device)]
            values[b0 : b0 + len(batch)] = metric_values(model, final, cands[fidx.to(dev)], truth[fidx.to(dev)], inputs.metric).cpu().numpy()
            bar.update(len(batch))
        corrupt_metric = {r.fact: v for r, v in zip(all_rows, values) if r.component == "corrupt"}
        for r, v in zip(all_rows, values):
            if r.component == "corrupt":
                continue
            tok = None if r.position is None else inputs.clean_ids[r.fact][r.position]
            for k in r.kinds:
                records.append(dict(fact=r.fact, subject=inputs.subjects[r.fact], component=r.component, layer=r.layer,
                                    head=r.head, position=r.position, token=tok, position_kind=k, value=float(v),
                                    clean=float(clean_metric[local[r.fact]]), corrupt=float(corrupt_metric[r.fact])))
    bar.close()
    return _tidy(model, records)


def _tidy(model, records: list[dict], extra: Sequence[str] = ()) -> pd.DataFrame:
    df = pd.DataFrame(records, columns=["fact", "subject", "component", "layer", "head", "position", "token",
                                        "position_kind", "value", "clean", "corrupt", *extra])
    df["head"] = df["head"].astype("Int64")
    df["position"] = df["position"].astype("Int64")
    toks = df["token"].dropna().astype(int).unique().tolist()
    names = dict(zip(toks, model.tokenizer.convert_ids_to_tokens(toks))) if toks else {}
    df["token"] = [None if pd.isna(t) else names[int(t)] for t in df["token"]]
    gap = df["clean"] - df["corrupt"]
    df["effect"] = (df["value"] - df["corrupt"]) / gap.where(gap != 0)
    return df.sort_values(["fact", "component", "layer", "head", "position"]).reset_index(drop=True)


def average_over_facts(per_fact: pd.DataFrame) -> pd.DataFrame:
    """Average a per-fact table over facts: one row per ``component, layer, head, position_kind``.

    Within a fact, positions of the same kind are averaged first. The effect is normalised
    after averaging: ``(mean value - mean corrupt) / (mean clean - mean corrupt)``.

    Returns:
        Columns ``component, layer, head, position_kind, value, clean, corrupt, n_facts, effect``.
    """
    keys = ["component", "layer", "head", "position_kind"]
    if per_fact.empty:
        raise ValueError("Nothing to average: the per-fact table is empty.")
    pf = (per_fact.groupby(keys + ["fact"], dropna=False, sort=False)
          .agg(value=("value", "mean"), clean=("clean", "first"), corrupt=("corrupt", "first")).reset_index())
    out = (pf.groupby(keys, dropna=False, sort=False)
           .agg(value=("value", "mean"), clean=("clean", "mean"), corrupt=("corrupt", "mean"), n_facts=("fact", "nunique"))
           .reset_index())
    gap = out["clean"] - out["corrupt"]
    out["effect"] = (out["value"] - out["corrupt"]) / gap.where(gap != 0)
    order = {k: i for i, k in enumerate(ALL_KINDS)}
    out["_k"] = out["position_kind"].map(order)
    out = out.sort_values(["component", "layer", "head", "_k"]).drop(columns="_k").reset_index(drop=True)
    out["head"] = out["head"].astype("Int64")
    return out


def activation_patching(model, facts: pd.DataFrame, pool: pd.DataFrame | None = None, mode: str = "athlete",
                        seed: int = 0, components: Sequence[str] = ("resid", "attn", "mlp", "head"),
                        head_positions: str = "last", batch_size: int = 64, per_fact: bool = False,
                        progress: bool = True, **kwargs) -> pd.DataFrame:
    """Activation patching of every layer × position kind (and every head) over ``facts``.

    Args:
        facts, pool, mode, seed: the corruption (:func:`corrupt_subjects`).
        components, head_positions, batch_size: see :func:`run_patches`.
        per_fact: return the per-fact table instead of the average.
        **kwargs: passed to :func:`run_patches` (``layers``, ``kinds``, ``window``).

    Returns:
        :func:`average_over_facts`'s table (or :func:`run_patches`'s with ``per_fact=True``).
    """
    inputs = corrupt_subjects(model, facts, pool=pool, mode=mode, seed=seed)
    table = run_patches(model, inputs, components=components, head_positions=head_positions,
                        batch_size=batch_size, progress=progress, **kwargs)
    return table if per_fact else average_over_facts(table)


# ---------------------------------------------------------------------------
# Attribution patching
# ---------------------------------------------------------------------------


def attribution_patching(model, inputs: PatchInputs, components: Sequence[str] = ("head", "mlp"),
                         kinds: Sequence[str] = POSITION_KINDS, batch_size: int = 32,
                         progress: bool = True) -> pd.DataFrame:
    """Attribution patching of every head's ``z`` and every MLP's output, at every position.

    Per batch of facts: one forward pass on the clean prompts (keeping the gradient of every
    hooked activation), one backward pass of the summed metric, one forward pass on the
    corrupted prompts. ``attribution = g_clean · (a_corr - a_clean)`` (summed over ``d_head`` or
    ``d_model``), the first-order change of the metric when that activation alone is corrupted.

    Args:
        inputs: clean/corrupted inputs (:func:`corrupt_subjects`; noise inputs also work).
        components: ``"head"`` (also yields ``"attn"``, the sum over a layer's heads), ``"mlp"``,
            ``"resid"``.
        kinds: the position kinds reported per position; heads also get an ``"all"`` row (the sum
            over every position, the estimate of patching the head everywhere at once).
        batch_size: facts per forward/backward pass.

    Returns:
        :func:`run_patches`'s per-fact table, with ``value = corrupt - attribution`` (the first-order
        estimate of restoring the activation into the corrupted run) and an ``attribution`` column.
        Pass it to :func:`average_over_facts` to average over facts.
    """
    comps = list(components)
    bad = [c for c in comps if c not in ("head", "mlp", "resid")]
    if bad:
        raise ValueError(f"Attribution patching covers 'head', 'mlp' and 'resid'; got {bad}.")
    if len(inputs) == 0:
        raise ValueError("No facts to attribute. Fix: pass at least one fact.")
    n_layers = model.cfg.n_layers
    sites = [(c, l, HOOKS[c].format(l)) for c in comps for l in range(n_layers)]
    hooks = [h for _, _, h in sites]
    pad = model.tokenizer.pad_token_id or 0
    dev = scoring.device_of(model)
    records = []
    order = np.argsort([len(ids) for ids in inputs.clean_ids], kind="stable")
    batches = [[int(f) for f in order[i : i + batch_size]] for i in range(0, len(order), batch_size)]
    for facts in tqdm(batches, desc="attribution patching", disable=not progress, leave=False):
        clean_ids, mask, last = scoring.pad_right([inputs.clean_ids[f] for f in facts], pad)
        corrupt_ids, _, _ = scoring.pad_right([inputs.corrupt_ids[f] for f in facts], pad)
        width = clean_ids.shape[1]
        cands = torch.tensor([inputs.candidates[f] for f in facts], device=dev)
        truth = torch.tensor([inputs.true_index[f] for f in facts], device=dev)
        rix = torch.arange(len(facts), device=dev)
        noise = _noise_delta(inputs, facts, width, model.cfg.d_model).to(dev) if inputs.noise is not None else None

        # corrupted run: activations only
        corr: dict[str, torch.Tensor] = {}
        fwd = [(h, _cache_hook(corr, h)) for h in hooks]
        if noise is not None:
            fwd.append((EMBED_HOOK, _add_hook(noise)))
        with torch.no_grad(), model.hooks(fwd_hooks=fwd):
            h_corr = scoring.hidden_states(model, corrupt_ids, mask)
            corrupt_metric = metric_values(model, h_corr[rix, last.to(dev)], cands, truth, inputs.metric).cpu()

        # clean run with gradients. The weights are frozen, so the graph is started at the
        # embeddings: a leaf that requires grad, from which every later activation inherits it.
        clean: dict[str, torch.Tensor] = {}

        def start_graph(x, hook):
            return x.detach().requires_grad_(True)

        def keep(key):
            def hook(x, hook):
                x.retain_grad()
                clean[key] = x
                return x
            return hook

        with torch.enable_grad(), model.hooks(fwd_hooks=[(EMBED_HOOK, start_graph)] + [(h, keep(h)) for h in hooks]):
            h_clean = scoring.hidden_states(model, clean_ids, mask)
            m_clean = metric_values(model, h_clean[rix, last.to(dev)], cands, truth, inputs.metric)
            m_clean.sum().backward()
        clean_metric = m_clean.detach().cpu()

        for comp, layer, hname in sites:
            a_clean, a_corr = clean[hname], corr[hname]
            if a_clean.grad is None:
                raise RuntimeError(f"No gradient reached {hname}: the bridge did not pass the hooked tensor on. "
                                   "Attribution patching needs hooks whose output the model uses.")
            attr = (a_clean.grad * (a_corr - a_clean.detach())).sum(-1).cpu()  # (batch, pos[, head])
            for row, f in enumerate(facts):
                start, end = inputs.spans[f]
                length = len(inputs.clean_ids[f])
                base = dict(fact=f, subject=inputs.subjects[f], layer=layer, clean=float(clean_metric[row]),
                            corrupt=float(corrupt_metric[row]))
                a = attr[row, :length]
                for p in range(length):
                    ks = [k for k in position_kind(p, start, end, length) if k in kinds]
                    tok = inputs.clean_ids[f][p]
                    for k in ks:
                        if comp == "head":
                            for hd in range(a.shape[1]):
                                records.append(dict(base, component="head", head=hd, position=p, token=tok,
                                                    position_kind=k, attribution=float(a[p, hd])))
                            records.append(dict(base, component="attn", head=None, position=p, token=tok,
                                                position_kind=k, attribution=float(a[p].sum())))
                        else:
                            records.append(dict(base, component=comp, head=None, position=p, token=tok,
                                                position_kind=k, attribution=float(a[p])))
                if comp == "head":
                    for hd in range(a.shape[1]):
                        records.append(dict(base, component="head", head=hd, position=None, token=None,
                                            position_kind="all", attribution=float(a[:, hd].sum())))
        del clean, corr
    for r in records:
        r["value"] = r["corrupt"] - r["attribution"]
    return _tidy(model, records, extra=("attribution",))


# ---------------------------------------------------------------------------
# Attribution vs activation patching
# ---------------------------------------------------------------------------


def compare(patching_summary: pd.DataFrame, attribution_summary: pd.DataFrame,
            components: Sequence[str] = ("attn", "mlp", "head")) -> pd.DataFrame:
    """Line up activation-patching and attribution-patching effects of the same components.

    Args:
        patching_summary: :func:`average_over_facts` of :func:`run_patches` / :func:`activation_patching`.
        attribution_summary: :func:`average_over_facts` of :func:`attribution_patching` on the same inputs.
        components: which components to compare.

    Returns:
        ``component, layer, head, position_kind, effect_patching, effect_attribution``: the rows
        both tables have.
    """
    keys = ["component", "layer", "head", "position_kind"]

    def pick(df, col):
        df = df[df["component"].isin(components)][keys + ["effect"]].rename(columns={"effect": col}).copy()
        df["head"] = df["head"].astype("Int64").fillna(-1)  # merge keys without NA
        return df

    merged = pick(patching_summary, "effect_patching").merge(pick(attribution_summary, "effect_attribution"), on=keys)
    if merged.empty:
        raise ValueError("The two tables share no (component, layer, head, position kind). Fix: patch and attribute "
                         "the same components on the same inputs.")
    merged["head"] = merged["head"].astype("Int64").mask(merged["head"] < 0)
    return merged


def correlation(table: pd.DataFrame, component: str | None = None) -> float:
    """Pearson correlation of :func:`compare`'s two effect columns (optionally for one component)."""
    if component is not None:
        table = table[table["component"] == component]
    if len(table) < 2:
        raise ValueError("A correlation needs at least two rows.")
    return float(np.corrcoef(table["effect_patching"].astype(float), table["effect_attribution"].astype(float))[0, 1])

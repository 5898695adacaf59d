"""Causal tracing: where does the model recall a fact?

Causal tracing (Meng et al. 2022, "Locating and Editing Factual Associations in
GPT", ROME) asks which hidden states *carry* a fact from the subject to the
answer. Three runs of the same prompt,
``"Fact: Tiger Woods plays the sport of golf\\nFact: Magic Johnson plays the sport of"``:

1. **clean**: the model answers; record every hidden state and ``p(" basketball")``;
2. **corrupted**: add Gaussian noise to the embeddings of the subject's tokens
   (``Magic``, ``Johnson``); the model no longer knows who is meant and the
   probability of the true answer drops;
3. **corrupted with one state restored**: the same noise, but one hidden state
   — one layer's residual stream, attention output or MLP output at one
   position — is overwritten with its clean value.

If restoring a state brings the answer back, the fact flows through it. The
*indirect effect* of a state, normalised between the corrupted run (0) and the
clean run (1), is

    effect = (p(restored) - p(corrupted)) / (p(clean) - p(corrupted))

averaged over facts (probabilities are averaged first, then normalised). ROME
found two peaks: MLPs in the early-middle layers at the *last subject token*
(where the fact is looked up) and attention at the *last token* (where it is
moved to the answer). This module measures the same on any model the package
loads, and per attention head (``hook_z``) at the last position.

**The noise.** ROME draws noise of standard deviation ``3 ×`` the standard
deviation of the subject tokens' embeddings (one number over every coordinate
of every subject token of the data): large enough to destroy the subject's
identity, on the scale of the embeddings so that it is comparable across
models. We do the same (``noise_scale=3``), with the standard deviation
computed over the subjects of the facts being traced (or passed in,
:func:`embedding_std`). The noise is drawn from a seeded generator, one draw
per fact, so the same seed gives the same table.

**Positions** are grouped into kinds: first subject token, last subject token
(a one-token subject is both), tokens *later* than the subject except the
last, and the *last* token. Tokens before the subject are not traced: the noise
cannot reach them (attention is causal), so restoring them does nothing.

**Efficiency.** Every restored run is one row of a batch: one forward pass
restores a different (layer, position) in each row (:func:`.patching.run_patches`),
and only the last position is unembedded.

Position kinds and the subject span come from :mod:`.positions`. The figures of these
tables are :func:`.plots.plot_trace`, :func:`.plots.plot_heads` and
:func:`.plots.plot_fact`; :func:`.widgets.trace_explorer` shows one fact at a time.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import torch
from jaxtyping import Float

from . import scoring
from .models import hf_model
from .patching import PatchInputs, average_over_facts, run_patches
from .positions import ALL_KINDS, LAST, LAST_SUBJECT, POSITION_KINDS, subject_span, subject_tokens
from .prompts import FACT_TEMPLATE

@torch.no_grad()
def embedding_std(model, subjects: Sequence[str]) -> float:
    """Standard deviation of the input embeddings of the subjects' tokens (over every coordinate).

    The embeddings are those the transformer body receives (for Gemma, scaled by ``sqrt(d_model)``).
    """
    ids = sorted({t for s in subjects for t in subject_tokens(model, str(s))})
    if not ids:
        raise ValueError("No subject tokens: pass at least one non-empty subject.")
    emb = hf_model(model).get_input_embeddings()(torch.tensor([ids], device=scoring.device_of(model)))
    return float(emb.float().std())


def noise_inputs(model, facts: pd.DataFrame, prompts: Sequence[str] | None = None, subject_col: str = "athlete",
                 answer_col: str = "sport", noise_scale: float = 3.0, noise_std: float | None = None,
                 seed: int = 0) -> PatchInputs:
    """Clean prompts and Gaussian noise on their subjects' embeddings, for causal tracing.

    Args:
        facts: rows with a subject and an answer (e.g. ``tasks.known_facts(model, "sports")``).
        prompts: one prompt per fact (default: the fact prompt ``prompts.FACT_TEMPLATE``); the
            subject must occur in it after a space.
        noise_scale: the noise's standard deviation in units of ``noise_std`` (ROME: 3).
        noise_std: the embeddings' standard deviation (default: :func:`embedding_std` of these facts'
            subjects).
        seed: the noise.

    Returns:
        :class:`.patching.PatchInputs` with the ``"prob"`` metric (probability of the answer's first token).
    """
    if subject_col not in facts.columns or answer_col not in facts.columns:
        raise ValueError(f"The facts need columns {subject_col!r} and {answer_col!r}; got {list(facts.columns)}.")
    if len(facts) == 0:
        raise ValueError("No facts given: the DataFrame is empty. Fix: pass at least one fact.")
    if noise_scale <= 0:
        raise ValueError(f"noise_scale must be positive, got {noise_scale}.")
    facts = facts.reset_index(drop=True)
    subjects = facts[subject_col].astype(str).tolist()
    if prompts is None:
        prompts = [FACT_TEMPLATE.format(athlete=s) for s in subjects]
    if len(prompts) != len(facts):
        raise ValueError(f"{len(facts)} facts but {len(prompts)} prompts.")
    clean_ids = scoring.encode_prompts(model, list(prompts))
    spans = [subject_span(model, ids, s, prompt=p) for ids, s, p in zip(clean_ids, subjects, prompts)]
    answers = [[scoring.single_token_id(model, " " + str(a).strip())] for a in facts[answer_col]]
    std = embedding_std(model, subjects) if noise_std is None else float(noise_std)
    gen = torch.Generator().manual_seed(int(seed))
    d_model = model.cfg.d_model
    noise = [torch.randn((end - start, d_model), generator=gen) * (noise_scale * std) for start, end in spans]
    return PatchInputs(subjects, clean_ids, [list(i) for i in clean_ids], spans, answers, [0] * len(facts), "prob",
                       noise=noise, meta=dict(noise_scale=noise_scale, noise_std=std, seed=seed))


def trace_facts(model, facts: pd.DataFrame, components: Sequence[str] = ("resid", "attn", "mlp", "head"),
                window: int = 1, noise_scale: float = 3.0, noise_std: float | None = None, seed: int = 0,
                layers: Sequence[int] | None = None, kinds: Sequence[str] = POSITION_KINDS,
                head_positions: str = LAST, prompts: Sequence[str] | None = None, batch_size: int = 64,
                progress: bool = True) -> pd.DataFrame:
    """Causal tracing, fact by fact.

    Args:
        facts: the facts (``athlete``, ``sport``).
        components: ``"resid"`` (block output), ``"attn"``, ``"mlp"``, ``"head"`` (one head's ``z``).
        window: restore attention / MLP outputs at this many neighbouring layers at once (ROME
            uses 10 on 48-layer GPT-2 XL); 1 restores a single layer.
        noise_scale, noise_std, seed: the noise (:func:`noise_inputs`).
        layers, kinds: what to restore (default every layer, the four position kinds).
        head_positions: heads are restored at the ``"last"`` position (default), or see
            :func:`.patching.run_patches`.
        batch_size: restored runs per forward pass.

    Returns:
        One row per fact and restored state: ``fact, subject, component, layer, head, position,
        token, position_kind, value`` (probability of the true answer), ``clean``, ``corrupt``, ``effect``.
    """
    inputs = noise_inputs(model, facts, prompts=prompts, noise_scale=noise_scale, noise_std=noise_std, seed=seed)
    return run_patches(model, inputs, components=components, layers=layers, kinds=kinds, head_positions=head_positions,
                       window=window, batch_size=batch_size, progress=progress)


def causal_trace(model, facts: pd.DataFrame, **kwargs) -> pd.DataFrame:
    """Causal tracing averaged over facts: one row per ``component, layer, head, position_kind``.

    Takes :func:`trace_facts`'s arguments; returns :func:`.patching.average_over_facts`'s table, whose
    ``effect`` is the normalised indirect effect.
    """
    return average_over_facts(trace_facts(model, facts, **kwargs))


def peak(summary: pd.DataFrame, component: str = "mlp", position_kind: str = LAST_SUBJECT) -> pd.Series:
    """The row of the largest effect of one component at one position kind."""
    rows = summary[(summary["component"] == component) & (summary["position_kind"] == position_kind)]
    if rows.empty:
        raise ValueError(f"No {component!r} rows at {position_kind!r} in this table.")
    return rows.loc[rows["effect"].idxmax()]


# ---------------------------------------------------------------------------
# Tables for figures (drawn by plots.plot_trace and plots.plot_heads)
# ---------------------------------------------------------------------------


def effect_grid(summary: pd.DataFrame, component: str) -> pd.DataFrame:
    """Pivot one component's effects: position kinds (or heads) × layers."""
    rows = summary[summary["component"] == component]
    if rows.empty:
        raise ValueError(f"No {component!r} rows in this table; it has {sorted(summary['component'].unique())}.")
    if component == "head":
        return rows.pivot_table(index="head", columns="layer", values="effect", aggfunc="mean")
    grid = rows.pivot_table(index="position_kind", columns="layer", values="effect", aggfunc="mean")
    order = [k for k in ALL_KINDS if k in grid.index]
    return grid.loc[order]


# ---------------------------------------------------------------------------
# Attention patterns (viewed with circuitsvis)
# ---------------------------------------------------------------------------


@torch.no_grad()
def attention_pattern(model, prompt: str, layer: int) -> tuple[list[str], Float[torch.Tensor, "head query key"]]:
    """The tokens of a prompt and one layer's attention pattern on it (every head)."""
    if not 0 <= layer < model.cfg.n_layers:
        raise ValueError(f"Layer {layer} does not exist (the model has {model.cfg.n_layers} layers).")
    ids = scoring.encode_prompts(model, [prompt])[0]
    store = {}

    def keep(x, hook):
        store["pattern"] = x.detach()[0].float().cpu()
        return x

    t = torch.tensor([ids])
    with model.hooks(fwd_hooks=[(f"blocks.{layer}.attn.hook_pattern", keep)]):
        scoring.hidden_states(model, t, torch.ones_like(t))
    return model.tokenizer.convert_ids_to_tokens(ids), store["pattern"]

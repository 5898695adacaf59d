"""Per-layer linear probes: where in the residual stream is the attribute?

A *probe* is a small classifier trained on a model's internal activations. If a
logistic regression can read an athlete's sport off the residual stream at
some layer and token, the information is there, linearly, at that point —
whether or not the model goes on to say it. Two places matter for fact recall
(Geva et al. 2023; Guo et al. 2024):

- the **last subject token** (``" James"`` in ``"... LeBron James plays the
  sport of"``): early MLPs *look up* the attribute there, so a probe at this
  token becomes accurate after the layers that do the look-up — the
  fact-lookup (FLU) MLPs;
- the **last token** (``" of"``): attention heads later *extract* the
  attribute from the subject and move it here, where it is turned into the
  answer; a probe at this token only becomes accurate after extraction.

The difference between the two curves is the story of the fact's recall, and
it is one of the three kinds of evidence :func:`localization.fact_lookup` uses.
That rule, in short (thresholds in :class:`localization.FactLookupRule`): the
look-up *starts* at the first block from which the subject probe keeps at
least 20% of its gain over the embeddings (on an isotonic fit of its accuracy
over the blocks, so that one noisy layer does not move it); the attribute is
*extracted* at the
first later block holding a head whose last-token patching effect is at least
half the strongest head's; the fact-lookup MLPs are the blocks from the start
up to just before extraction whose MLP patching effect at the subject tokens is
at least 20% of the largest (taken as one range).

Probes are also an attack on an edit: train them on facts the edit did not
touch, apply them to edited facts, and see whether the *true* attribute is
still readable inside the model (:func:`apply_probes`).

Conventions. ``residuals`` returns, for each prompt, the residual stream at
``n_layers + 1`` points: index ``0`` is the input of block 0 (the scaled token
embedding) and index ``i`` is the output of block ``i - 1`` (``resid_post``),
so index ``i`` is "the residual stream after ``i`` blocks" and the last index
is the final residual stream before the final norm. The probe tables use the
same index in their ``layer`` column. Activations are read with hooks on the
bridge's modules during a right-padded batched forward pass of the transformer
body (no unembedding), and only the requested positions are kept. The same
pass also gives the model's own answer: the final norm and a few rows of the
unembedding applied to the last residual at the last token
(:func:`answer_probabilities`), which is how :func:`known_fact_residuals`
keeps the known facts without running them twice. Positions are named as in
:mod:`.positions` (``first_subject``, ``last_subject``, ``last``; the older
name ``final`` is read as ``last``). Figures: :func:`.plots.plot_probe_accuracy`,
:func:`.plots.plot_fact_lookup`; explorer: :func:`.widgets.probe_explorer`.

Probes are scikit-learn pipelines (standardise, then multinomial logistic
regression), one per layer, trained on a seeded, stratified half of the facts
and tested on the other half.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from tqdm.auto import tqdm

from .checks import check_float, check_template
from .models import hf_model
from .positions import FIRST_SUBJECT, LAST, LAST_SUBJECT, canonical, fact_positions
from .prompts import FACT_TEMPLATE
from .scoring import device_of, encode_prompts, pad_right

#: positions of a fact prompt the probes read by default (:mod:`.positions`)
PROBE_POSITIONS = (LAST_SUBJECT, LAST)
#: positions :func:`fact_residuals` can read
FACT_POSITIONS = (FIRST_SUBJECT, LAST_SUBJECT, LAST)


# ---------------------------------------------------------------------------
# Reading the residual stream
# ---------------------------------------------------------------------------


def residual_hook_names(model) -> list[str]:
    """The ``n_layers + 1`` hook points read by :func:`residuals`, in order."""
    n_layers = model.cfg.n_layers
    return ["blocks.0.hook_resid_pre"] + [f"blocks.{layer}.hook_resid_post" for layer in range(n_layers)]


@torch.no_grad()
def residuals(model, prompts: Sequence[str], positions: Sequence[int] | Mapping[str, Sequence[int]],
              batch_size: int = 32, progress: bool = True
              ) -> Float[torch.Tensor, "n layers_plus_1 d_model"] | dict[str, Float[torch.Tensor, "n layers_plus_1 d_model"]]:
    """The residual stream of every prompt at chosen token positions, after every block.

    One right-padded, length-sorted, batched forward pass of the transformer body per batch
    (no unembedding); hooks keep only the requested positions, so memory stays at
    ``n × (n_layers + 1) × d_model`` per position set.

    Args:
        prompts: prompt texts (the model's BOS is added).
        positions: one token index per prompt (negative indices count from each prompt's own
            end: ``-1`` is its last token), or a mapping ``name -> indices`` to read several
            positions in the same pass (e.g. ``{"last_subject": ..., "last": ...}``).
        batch_size: prompts per forward pass.
        progress: show a progress bar.

    Returns:
        Float32 CPU tensor ``[n, n_layers + 1, d_model]`` (index 0: block 0's input; index i: block
        i-1's output), or a dict of them when ``positions`` is a mapping.
    """
    prompts = list(prompts)
    named = isinstance(positions, Mapping)
    pos_sets = {k: np.asarray(v, dtype=np.int64) for k, v in (positions.items() if named else [("_", positions)])}
    if not pos_sets:
        raise ValueError("No positions given. Fix: pass one index per prompt, or a mapping name -> indices.")
    ids = encode_prompts(model, prompts)
    lengths = np.array([len(i) for i in ids])
    for name, pos in pos_sets.items():
        if pos.shape != (len(prompts),):
            raise ValueError(f"positions{'' if not named else f'[{name!r}]'} has shape {pos.shape}; "
                             f"need one index per prompt ({len(prompts)}).")
        bad = (pos >= lengths) | (pos < -lengths)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise IndexError(f"Position {pos[i]} is outside prompt {i} ({lengths[i]} tokens): {prompts[i]!r}.")
    # absolute positions, one column per position set
    absolute = np.stack([np.where(p < 0, lengths + p, p) for p in pos_sets.values()], axis=1)  # [n, k]

    hooks_names = residual_hook_names(model)
    n_points, d_model = len(hooks_names), model.cfg.d_model
    out = torch.zeros(len(prompts), absolute.shape[1], n_points, d_model, dtype=torch.float32)
    dev = device_of(model)
    hf = hf_model(model)
    pad = model.tokenizer.pad_token_id or 0
    order = np.argsort(lengths, kind="stable")
    current: dict = {}

    def make_hook(index: int):
        def hook(x, hook):  # x: [batch, pos, d_model]
            current["buf"][:, :, index] = x[current["rows"], current["cols"]].float().cpu()
        return hook

    fwd_hooks = [(name, make_hook(i)) for i, name in enumerate(hooks_names)]
    batches = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
    with model.hooks(fwd_hooks=fwd_hooks):
        for batch in tqdm(batches, desc="residuals", disable=not progress, leave=False):
            input_ids, mask, _ = pad_right([ids[i] for i in batch], pad)
            cols = torch.as_tensor(absolute[batch], device=dev)  # [b, k]
            current.update(rows=torch.arange(len(batch), device=dev)[:, None].expand_as(cols), cols=cols,
                           buf=torch.zeros(len(batch), absolute.shape[1], n_points, d_model))
            hf.model(input_ids=input_ids.to(dev), attention_mask=mask.to(dev))
            out[torch.as_tensor(batch)] = current["buf"]
    result = {name: out[:, j].contiguous() for j, name in enumerate(pos_sets)}
    return result if named else result["_"]


def fact_residuals(model, facts: pd.DataFrame, template: str = FACT_TEMPLATE, positions: Sequence[str] = PROBE_POSITIONS,
                   batch_size: int = 32, progress: bool = True) -> dict[str, Float[torch.Tensor, "n layers_plus_1 d_model"]]:
    """:func:`residuals` of each athlete's fact prompt at named positions.

    Args:
        facts: rows with an ``athlete`` column.
        template: the prompt, with ``{athlete}``.
        positions: names among ``first_subject``, ``last_subject``, ``last`` (``final``, an earlier
            name of ``last``, is read as ``last``).

    Returns:
        ``position -> [n, n_layers + 1, d_model]``, keyed by the positions' current names.
    """
    if "athlete" not in facts.columns or len(facts) == 0:
        raise ValueError("fact_residuals needs a non-empty DataFrame with an 'athlete' column.")
    positions = [canonical(p) for p in positions]
    unknown = [p for p in positions if p not in FACT_POSITIONS]
    if unknown:
        raise ValueError(f"Unknown position(s) {unknown}; choose among {list(FACT_POSITIONS)}.")
    athletes = facts["athlete"].astype(str).tolist()
    check_template("template", template, fields=("athlete",))
    prompts = [template.format(athlete=a) for a in athletes]
    pos = fact_positions(model, prompts, athletes)
    return residuals(model, prompts, {p: pos[p].to_numpy() for p in positions}, batch_size=batch_size, progress=progress)


@torch.no_grad()
def answer_probabilities(model, final_resid: Float[torch.Tensor, "n d_model"], answers: Sequence[str]
                         ) -> Float[torch.Tensor, "n k"]:
    """The model's own next-token distribution over a few answers, from the last residual stream.

    The final norm and the unembedding rows of the answers' first tokens only (not the whole
    vocabulary), then a softmax over the answers: the candidate-normalised probabilities that
    :func:`scoring.score` computes, from activations :func:`residuals` already read (its last
    layer index). Applied to an earlier layer's residual this is the *logit lens*.

    Args:
        final_resid: residual streams after the last block (``residuals(...)[:, -1]``).
        answers: candidate continuations with their leading space (``" golf"``); first tokens are used.
    """
    from .scoring import answer_tokens, unembed

    ids = [answer_tokens(model, a)[0] for a in answers]
    if len(set(ids)) != len(ids):
        raise ValueError(f"Answers {list(answers)} share a first token: they cannot be told apart.")
    normed = hf_model(model).model.norm(final_resid.to(device_of(model)))
    return torch.softmax(unembed(model, normed, token_ids=ids).float(), dim=-1).cpu()


def known_fact_residuals(model, facts: pd.DataFrame, label_column: str = "sport", answers: Sequence[str] | None = None,
                         threshold: float = 0.5, template: str = FACT_TEMPLATE, positions: Sequence[str] = PROBE_POSITIONS,
                         batch_size: int = 32, progress: bool = True) -> tuple[pd.DataFrame, dict[str, torch.Tensor]]:
    """Residuals of the facts the model knows, in one pass: read, score from the last layer, keep the known.

    A fact is known, as in :func:`tasks.known_facts`, when the model's probability of its
    label, normalised over ``answers``, is at least ``threshold``; here that probability comes
    from the last-token residual the pass already read (:func:`answer_probabilities`), so the
    facts are not run twice.

    Returns:
        ``(known, X)``: the known rows (with ``p_true_norm``), and :func:`fact_residuals`'s dict for them.
    """
    from .prompts import SPORTS

    threshold = check_float("threshold", threshold, 0.0, 1.0)
    answers = list(answers) if answers is not None else list(SPORTS)
    facts = facts.reset_index(drop=True)
    unknown = sorted(set(facts[label_column]) - set(answers))
    if unknown:
        raise ValueError(f"Labels {unknown} are not among the answers {answers}. Fix: pass answers=... listing every label.")
    positions = [canonical(p) for p in positions]
    need = list(dict.fromkeys(positions + [LAST]))
    X = fact_residuals(model, facts, template=template, positions=need, batch_size=batch_size, progress=progress)
    probs = answer_probabilities(model, X[LAST][:, -1], [" " + a for a in answers]).numpy()
    p_true = probs[np.arange(len(facts)), [answers.index(lab) for lab in facts[label_column]]]
    keep = p_true >= threshold
    known = facts.assign(p_true_norm=p_true)[keep].reset_index(drop=True)
    return known, {p: X[p][torch.as_tensor(keep)] for p in positions}


# ---------------------------------------------------------------------------
# Probes
# ---------------------------------------------------------------------------


def split_indices(labels: Sequence, test_size: float = 0.5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A seeded, stratified split of ``range(len(labels))``: ``(train, test)`` index arrays."""
    labels = np.asarray(labels)
    counts = pd.Series(labels).value_counts()
    if len(counts) < 2:
        raise ValueError(f"Probes need at least two classes; all {len(labels)} labels are {counts.index[0]!r}.")
    if counts.min() < 2:
        raise ValueError(f"Class {counts.idxmin()!r} has a single example: a stratified split needs two per class.")
    idx = np.arange(len(labels))
    train, test = train_test_split(idx, test_size=test_size, random_state=seed, stratify=labels)
    return np.sort(train), np.sort(test)


def _as_numpy(X) -> np.ndarray:
    return X.detach().float().cpu().numpy() if isinstance(X, torch.Tensor) else np.asarray(X, dtype=np.float32)


def train_probes(X: Float[torch.Tensor, "n layers d_model"], y: Sequence, C: float = 0.1, max_iter: int = 2000,
                 seed: int = 0, progress: bool = False) -> list[Pipeline]:
    """Fit one probe (standardise + logistic regression) per layer.

    Args:
        X: activations ``[n, layers, d_model]`` (e.g. from :func:`residuals`).
        y: label of each row (any hashable: sport names work).
        C: inverse L2 strength; 0.1 suits a few hundred examples of a 640-dim stream.
        max_iter: solver iterations.
        seed: the solver's random state.

    Returns:
        One fitted scikit-learn pipeline per layer (index as in ``X``).
    """
    X = _as_numpy(X)
    y = np.asarray(y)
    if X.ndim != 3:
        raise ValueError(f"X must be [n, layers, d_model]; got shape {X.shape}.")
    if len(y) != len(X):
        raise ValueError(f"{len(X)} activation rows but {len(y)} labels.")
    if len(np.unique(y)) < 2:
        raise ValueError("Probes need at least two classes in the training labels.")
    probes = []
    for layer in tqdm(range(X.shape[1]), desc="probes", disable=not progress, leave=False):
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter, random_state=seed))
        probes.append(clf.fit(X[:, layer], y))
    return probes


def _check_layers(probes: list[Pipeline], X: np.ndarray) -> None:
    if X.ndim != 3 or X.shape[1] != len(probes):
        raise ValueError(f"X has shape {X.shape} but there are {len(probes)} probes: need [n, {len(probes)}, d_model] "
                         "(the same layers the probes were trained on).")


def apply_probes(probes: list[Pipeline], X: Float[torch.Tensor, "n layers d_model"]) -> np.ndarray:
    """Each layer's probe's prediction for each row: array ``[n, layers]`` of labels."""
    X = _as_numpy(X)
    _check_layers(probes, X)
    return np.stack([p.predict(X[:, layer]) for layer, p in enumerate(probes)], axis=1)


def probe_probabilities(probes: list[Pipeline], X: Float[torch.Tensor, "n layers d_model"],
                        labels: Sequence) -> np.ndarray:
    """Each layer's probe probability of a given label per row: array ``[n, layers]``.

    Args:
        labels: the label whose probability to read, one per row (e.g. each athlete's true sport).
    """
    X = _as_numpy(X)
    _check_layers(probes, X)
    labels = np.asarray(labels)
    if len(labels) != len(X):
        raise ValueError(f"{len(X)} rows but {len(labels)} labels.")
    out = np.zeros((len(X), len(probes)))
    for layer, p in enumerate(probes):
        classes = list(p.classes_)
        missing = set(labels) - set(classes)
        if missing:
            raise ValueError(f"Label(s) {sorted(missing)} unknown to the probes (classes {classes}).")
        proba = p.predict_proba(X[:, layer])
        out[:, layer] = proba[np.arange(len(X)), [classes.index(lab) for lab in labels]]
    return out


def probe_accuracy(probes: list[Pipeline], X: Float[torch.Tensor, "n layers d_model"], y: Sequence,
                   **columns) -> pd.DataFrame:
    """Accuracy of each layer's probe on ``(X, y)``: tidy rows ``layer, accuracy, n`` plus constant ``columns``.

    Example: ``probe_accuracy(probes, X_test, y_test, position="last", split="test")``.
    """
    y = np.asarray(y)
    pred = apply_probes(probes, X)
    if len(y) != len(pred):
        raise ValueError(f"{len(pred)} rows but {len(y)} labels.")
    df = pd.DataFrame({"layer": np.arange(pred.shape[1]), "accuracy": (pred == y[:, None]).mean(axis=0), "n": len(y)})
    for k, v in columns.items():
        df.insert(0, k, v)
    return df


@dataclass
class LayerProbes:
    """Probes per layer and position, with their data.

    Attributes:
        accuracy: tidy ``layer, position, split, accuracy, n`` (``layer``: residual after that many blocks).
        probes: position -> one fitted probe per layer.
        X: position -> activations ``[n, n_layers + 1, d_model]`` of all facts.
        facts: the facts (one row per activation row), with a ``split`` column.
        label_column: the column of ``facts`` that was probed.
    """

    accuracy: pd.DataFrame
    probes: dict[str, list[Pipeline]]
    X: dict[str, torch.Tensor]
    facts: pd.DataFrame
    label_column: str = "sport"
    meta: dict = field(default_factory=dict)

    def best(self, split: str = "test") -> pd.DataFrame:
        """Per position, the layer with the highest accuracy (first one on ties)."""
        acc = self.accuracy[self.accuracy["split"] == split]
        return acc.loc[acc.groupby("position", sort=False)["accuracy"].idxmax()].reset_index(drop=True)

    def true_label_probabilities(self, position: str = "last_subject") -> pd.DataFrame:
        """Tidy ``athlete, split, layer, p_true``: each layer's probe probability of the fact's true label."""
        p = probe_probabilities(self.probes[position], self.X[position], self.facts[self.label_column])
        df = pd.DataFrame(p, columns=range(p.shape[1]))
        df["athlete"] = self.facts["athlete"].to_numpy()
        df["split"] = self.facts["split"].to_numpy()
        return df.melt(id_vars=["athlete", "split"], var_name="layer", value_name="p_true").assign(position=position)


def layer_probes(model, facts: pd.DataFrame, label_column: str = "sport", template: str = FACT_TEMPLATE,
                 positions: Sequence[str] = PROBE_POSITIONS, test_size: float = 0.5, seed: int = 0,
                 C: float = 0.1, batch_size: int = 32, progress: bool = True,
                 X: dict[str, torch.Tensor] | None = None) -> LayerProbes:
    """Train and test a probe at every layer and position on a seeded, stratified split of ``facts``.

    Args:
        facts: rows with ``athlete`` and ``label_column`` (typically the facts the model knows).
        label_column: what the probes predict.
        template: the prompt, with ``{athlete}``.
        positions: among ``first_subject``, ``last_subject``, ``last`` (``final`` is read as ``last``).
        test_size: fraction held out for testing (0.5: train on one half, test on the other).
        seed: split and solver seed.
        C: the probes' inverse regularisation strength.
        X: residuals already read for these facts (``position -> [n, n_layers + 1, d_model]``,
            e.g. from :func:`known_fact_residuals`); read here when ``None``.

    Returns:
        :class:`LayerProbes`; its ``accuracy`` table has a ``train`` and a ``test`` row per
        layer and position, and the majority-class rate of the test half in ``meta["majority"]``.
    """
    if label_column not in facts.columns:
        raise ValueError(f"facts has no column {label_column!r} (columns: {list(facts.columns)}).")
    facts = facts.reset_index(drop=True)
    positions = [canonical(p) for p in positions]
    y = facts[label_column].to_numpy()
    train, test = split_indices(y, test_size=test_size, seed=seed)
    if X is None:
        X = fact_residuals(model, facts, template=template, positions=positions, batch_size=batch_size, progress=progress)
    bad = [p for p in positions if p not in X or len(X[p]) != len(facts)]
    if bad:
        raise ValueError(f"The given residuals lack position(s) {bad} or do not have one row per fact ({len(facts)}).")
    tables, probes = [], {}
    for pos in positions:
        probes[pos] = train_probes(X[pos][train], y[train], C=C, seed=seed)
        for split, idx in (("train", train), ("test", test)):
            tables.append(probe_accuracy(probes[pos], X[pos][idx], y[idx], position=pos, split=split))
    acc = pd.concat(tables, ignore_index=True)[["layer", "position", "split", "accuracy", "n"]]
    split_col = np.where(np.isin(np.arange(len(facts)), test), "test", "train")
    majority = float(pd.Series(y[test]).value_counts(normalize=True).iloc[0])
    return LayerProbes(acc, probes, X, facts.assign(split=split_col), label_column,
                       meta=dict(majority=majority, seed=seed, C=C, test_size=test_size, n=len(facts)))


# ---------------------------------------------------------------------------
# CounterFact: probes on a relation's answer set
# ---------------------------------------------------------------------------

#: the rule that picks the CounterFact facts a probe can learn from (fixed before any probe is trained): per
#: relation, the true objects with at least ``min_per_class`` known facts, each class cut to the smallest one's
#: size (so the majority rate is 1 / classes), and only relations with at least ``min_classes`` such objects
RELATION_PROBE_RULE = dict(min_per_class=20, min_classes=3)


def relation_probe_facts(known: pd.DataFrame, min_per_class: int = RELATION_PROBE_RULE["min_per_class"],
                         min_classes: int = RELATION_PROBE_RULE["min_classes"], seed: int = 0) -> pd.DataFrame:
    """The known CounterFact facts a per-relation probe is trained on: balanced classes of each relation's answers.

    CounterFact has no fixed label set like the three sports, but each relation has one: the languages of
    ``"The mother tongue of {} is"``, the companies of ``"{} was created by"``. Within a relation, the objects with
    at least ``min_per_class`` known facts become the classes, each sampled down (seeded) to the smallest class;
    a relation with fewer than ``min_classes`` such objects is left out.

    Args:
        known: known CounterFact facts (:func:`tasks.known_facts`), with ``relation_id``, ``subject``, ``prompt``
            and ``target_true``.

    Returns:
        The chosen rows with their columns; ``attrs["relations"]``: ``{relation: {"classes": [...], "per_class": n}}``.

    Raises:
        ValueError: no relation qualifies (the message says how many known facts the best one had).
    """
    need = ("relation_id", "subject", "prompt", "target_true")
    missing = [c for c in need if c not in known.columns]
    if missing:
        raise ValueError(f"known lacks column(s) {missing}: pass the known CounterFact facts of tasks.known_facts.")
    frames, relations = [], {}
    for relation, group in known.groupby("relation_id", sort=True):
        counts = group["target_true"].value_counts()
        classes = sorted(counts[counts >= min_per_class].index)
        if len(classes) < min_classes:
            continue
        per_class = int(counts[classes].min())
        for k, cls in enumerate(classes):
            rows = group[group["target_true"] == cls]
            frames.append(rows.sample(per_class, random_state=seed + k))
        relations[relation] = dict(classes=list(classes), per_class=per_class)
    if not frames:
        best = known.groupby("relation_id")["target_true"].agg(lambda s: int((s.value_counts() >= min_per_class).sum()))
        raise ValueError(f"No relation has {min_classes} answers with {min_per_class} known facts each (the best has "
                         f"{int(best.max()) if len(best) else 0}). Fix: score more facts (tasks.known_facts on the "
                         "whole dataset) or lower min_per_class / min_classes.")
    out = pd.concat(frames, ignore_index=True)
    out.attrs["relations"] = relations
    return out


def relation_probes(model, facts: pd.DataFrame, positions: Sequence[str] = PROBE_POSITIONS, test_size: float = 0.5,
                    seed: int = 0, C: float = 0.1, batch_size: int = 32, progress: bool = True) -> pd.DataFrame:
    """One probe per relation, layer and position predicting a CounterFact fact's true object.

    The probe-like evidence of the fact-lookup rule on CounterFact (:func:`localization.fact_lookup` reads the
    mean over relations of the test accuracies): where, at the last subject token, the answer becomes readable.

    Args:
        facts: :func:`relation_probe_facts`'s rows (each relation's classes balanced).
        positions: among ``first_subject``, ``last_subject``, ``last``.

    Returns:
        Tidy ``relation, layer, position, split, accuracy, n, majority`` (``majority``: the test half's majority
        rate, 1 / classes for balanced classes).
    """
    positions = [canonical(p) for p in positions]
    unknown = [p for p in positions if p not in FACT_POSITIONS]
    if unknown:
        raise ValueError(f"Unknown position(s) {unknown}; choose among {list(FACT_POSITIONS)}.")
    if len(facts) == 0 or not {"relation_id", "subject", "prompt", "target_true"} <= set(facts.columns):
        raise ValueError("relation_probes needs relation_probe_facts(...)'s rows (relation_id, subject, prompt, "
                         "target_true).")
    facts = facts.reset_index(drop=True)
    prompts = [p.format(s) for p, s in zip(facts["prompt"], facts["subject"])]
    pos = fact_positions(model, prompts, facts["subject"].tolist())
    X = residuals(model, prompts, {p: pos[p].to_numpy() for p in positions}, batch_size=batch_size, progress=progress)
    tables = []
    for relation, idx in facts.groupby("relation_id", sort=True).indices.items():
        y = facts["target_true"].to_numpy()[idx]
        train, test = split_indices(y, test_size=test_size, seed=seed)
        majority = float(pd.Series(y[test]).value_counts(normalize=True).iloc[0])
        for p in positions:
            probes = train_probes(X[p][idx][train], y[train], C=C, seed=seed)
            for split, part in (("train", train), ("test", test)):
                tables.append(probe_accuracy(probes, X[p][idx][part], y[part], position=p, split=split)
                              .assign(relation=relation, majority=majority))
    return pd.concat(tables, ignore_index=True)[["relation", "layer", "position", "split", "accuracy", "n", "majority"]]

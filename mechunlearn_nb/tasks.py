"""What the model knows, and the sets an edit works on.

Guo et al. only edit facts the model *knows*: a fact counts as known when
the model's probability for the true answer, normalised over the candidate
answers, is at least 0.5 in the fact prompt. :func:`known_facts` applies that
rule and caches the result per model (on disk, keyed by the model's name and a
fingerprint of its weights, so an edited model is never mistaken for the base
one).
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import torch

from . import data as _data
from .models import cache_dir, hf_model, model_name
from .prompts import SPORTS, counterfact_prompts, sports_prompts
from .scoring import score_set


def weights_fingerprint(model) -> str:
    """A short hash of the model's weights (changes when any weight tensor's sum changes)."""
    h = hashlib.sha1(model_name(model).encode())
    with torch.no_grad():
        for name, p in hf_model(model).named_parameters():
            h.update(name.encode())
            h.update(np.float64(p.detach().double().sum().item()).tobytes())
    return h.hexdigest()[:12]


def score_facts(model, dataset: str = "sports", facts: pd.DataFrame | None = None, fmt: str | None = None,
                batch_size: int = 32, progress: bool = True) -> pd.DataFrame:
    """Score every fact of a dataset in one format: the dataset's rows plus ``p_true``, ``p_true_norm``, ``correct``.

    Sports facts are scored over the three sports of the data; CounterFact facts over
    ``[target_true, target_new]`` (first tokens; facts whose two targets share a first token are
    dropped, since they cannot be told apart).
    """
    if dataset == "sports":
        facts = _data.load_sports() if facts is None else facts.reset_index(drop=True)
        ps = sports_prompts(facts, fmt or "fact", sports=SPORTS)
        answers = facts["sport"].tolist()
    elif dataset == "counterfact":
        facts = _data.load_counterfact(with_prompts=True) if facts is None else facts.reset_index(drop=True)
        tok = model.tokenizer
        first = lambda s: tok(" " + s, add_special_tokens=False)["input_ids"][:1]  # noqa: E731
        keep = [first(t) != first(n) for t, n in zip(facts["target_true"], facts["target_new"])]
        facts = facts[keep].reset_index(drop=True)
        ps = counterfact_prompts(facts, fmt or "cf_prompt")
        answers = ["target_true"] * len(facts)
    else:
        raise ValueError(f"Unknown dataset {dataset!r}; choose 'sports' or 'counterfact'.")
    if len(facts) == 0:
        raise ValueError(f"No {dataset} facts to score.")
    scores = score_set(model, ps, answers, batch_size=batch_size, progress=progress)
    out = facts.copy()
    out["p_true"] = scores["p_answer"].to_numpy()
    out["p_true_norm"] = scores["p_answer_norm"].to_numpy()
    out["correct"] = scores["correct"].to_numpy()
    return out


def known_facts(model, dataset: str = "sports", threshold: float = 0.5, use_cache: bool = True,
                batch_size: int = 32, progress: bool = True) -> pd.DataFrame:
    """The facts the model knows: normalised probability of the true answer ≥ ``threshold``.

    Args:
        dataset: ``"sports"`` (fact prompt, three sports) or ``"counterfact"`` (the rewrite prompt,
            true vs new target, over the 2,715 cases that have paraphrases).
        threshold: the paper's 0.5 by default.
        use_cache: read/write the full scores under ``<cache>/known_facts/``.

    Returns:
        The known rows of the dataset with ``p_true`` and ``p_true_norm``.
    """
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be between 0 and 1, got {threshold}.")
    path = cache_dir() / "known_facts" / f"{dataset}-{weights_fingerprint(model)}.json"
    scores = None
    if use_cache and path.exists():
        try:
            scores = pd.read_json(path, orient="records")
        except ValueError:
            scores = None  # unreadable cache: score again
    if scores is None:
        scores = score_facts(model, dataset, batch_size=batch_size, progress=progress)
        if use_cache:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(scores.to_json(orient="records"))
            tmp.replace(path)
    known = scores[scores["p_true_norm"] >= threshold].reset_index(drop=True)
    known.attrs["n_scored"] = len(scores)
    known.attrs["threshold"] = threshold
    return known


def knowledge_summary(scores: pd.DataFrame, threshold: float = 0.5, by: str = "sport") -> pd.DataFrame:
    """Per group: number of facts, number known (≥ threshold), argmax accuracy, mean normalised probability."""
    g = scores.groupby(by)
    return pd.DataFrame({
        "n": g.size(),
        "known": g["p_true_norm"].apply(lambda s: int((s >= threshold).sum())),
        "accuracy": g["correct"].mean(),
        "mean_p_true_norm": g["p_true_norm"].mean(),
    }).reset_index()

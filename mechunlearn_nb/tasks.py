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
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from . import data as _data
from .checks import check_float, check_int, check_str
from .io import write_text
from .models import cache_dir, hf_model, model_name
from .prompts import COUNTERFACT_FORMATS, SPORTS, SPORTS_FORMATS, PromptSet, counterfact_prompts, sports_prompts
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


#: the paper's rule: a fact is known when the normalised probability of its true answer is at least this
KNOWN_THRESHOLD = 0.5


def known_among(scores: pd.DataFrame, threshold: float = KNOWN_THRESHOLD) -> pd.DataFrame:
    """The rows of :func:`score_facts`'s table that the model knows (``p_true_norm >= threshold``), renumbered."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be between 0 and 1, got {threshold}.")
    return scores[scores["p_true_norm"] >= threshold].reset_index(drop=True)


def known_facts(model, dataset: str = "sports", threshold: float = KNOWN_THRESHOLD, use_cache: bool = True,
                batch_size: int = 32, progress: bool = True, sample: int | None = None, seed: int = 0) -> pd.DataFrame:
    """The facts the model knows: normalised probability of the true answer ≥ ``threshold``.

    Args:
        dataset: ``"sports"`` (fact prompt, three sports) or ``"counterfact"`` (the rewrite prompt,
            true vs new target, over the 2,715 cases that have paraphrases).
        threshold: the paper's 0.5 by default (:data:`KNOWN_THRESHOLD`).
        use_cache: read/write the full scores under ``<cache>/known_facts/`` (whole dataset only).
        sample: score only a seeded sample of this many facts (the FAST runs: minutes less on a CPU;
            never cached) instead of the whole dataset.
        seed: the sample's seed.

    Returns:
        The known rows of the dataset with ``p_true`` and ``p_true_norm``; ``attrs`` hold ``n_scored``
        and ``threshold``. ``ValueError`` when a sample holds no known fact.
    """
    threshold = check_float("threshold", threshold, 0.0, 1.0)
    check_str("dataset", dataset, ("sports", "counterfact"))
    batch_size = check_int("batch_size", batch_size, min=1)
    if sample is not None:
        sample = check_int("sample", sample, min=1)
        pool = _data.load_sports() if dataset == "sports" else _data.load_counterfact(with_prompts=True)
        facts = pool.sample(min(sample, len(pool)), random_state=seed)
        scores = score_facts(model, dataset, facts=facts, batch_size=batch_size, progress=progress)
        known = known_among(scores, threshold)
        if len(known) == 0:
            raise ValueError(f"The model knows none of {len(facts)} sampled {dataset} facts. "
                             f"Fix: raise the sample size or score the whole dataset (sample=None).")
        known.attrs.update(n_scored=len(scores), threshold=threshold)
        return known
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
            write_text(path, scores.to_json(orient="records"))
    known = known_among(scores, threshold)
    known.attrs["n_scored"] = len(scores)
    known.attrs["threshold"] = threshold
    return known


def dataset_of(task_name: str) -> str:
    """The dataset a task of the comparison grid draws from: ``"counterfact"`` for ``"counterfact N"``, else ``"sports"``."""
    return "counterfact" if task_name.startswith("counterfact") else "sports"


def knowledge_summary(scores: pd.DataFrame, threshold: float = KNOWN_THRESHOLD, by: str = "sport") -> pd.DataFrame:
    """Per group: number of facts, number known (≥ threshold), argmax accuracy, mean normalised probability."""
    threshold = check_float("threshold", threshold, 0.0, 1.0)
    g = scores.groupby(by)
    return pd.DataFrame({
        "n": g.size(),
        "known": g["p_true_norm"].apply(lambda s: int((s >= threshold).sum())),
        "accuracy": g["correct"].mean(),
        "mean_p_true_norm": g["p_true_norm"].mean(),
    }).reset_index()


# ---------------------------------------------------------------------------
# Editing tasks: what to forget or change, and what to keep
# ---------------------------------------------------------------------------
#
# A task names the facts an edit works on (the *forget* set: each with its true
# answer and, for an edit, the new answer) and the known facts it must leave
# alone (the *maintain* set), split into a part the edit trains on and a
# held-out part that only the evaluation sees. Every builder starts from
# :func:`known_facts`: the paper only edits facts the model knows.

_NEW_SPORTS = ("golf", "football", "baseball", "basketball")


@dataclass
class Task:
    """An editing or unlearning task.

    Attributes:
        name: e.g. ``"forget basketball"``, ``"edit 16 athletes"``.
        dataset: ``"sports"`` or ``"counterfact"``: which prompt formats apply.
        forget: the facts to forget / edit: the dataset's columns (``athlete, sport`` or
            CounterFact's ``prompt, subject, target_true, target_new ...``) plus ``true_answer`` and
            ``new_answer`` (the text of the answer, without the leading space).
        maintain_train: known facts the edit trains to keep (with ``true_answer``).
        maintain_eval: held-out known facts, for evaluation only.
        meta: how it was built (seed, sizes, what was filtered out and why).
    """

    name: str
    dataset: str
    forget: pd.DataFrame
    maintain_train: pd.DataFrame
    maintain_eval: pd.DataFrame
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.dataset not in ("sports", "counterfact"):
            raise ValueError(f"Task {self.name!r}: unknown dataset {self.dataset!r}; choose 'sports' or 'counterfact'.")

    @property
    def formats(self) -> tuple[str, ...]:
        """The prompt formats this task is evaluated in."""
        return SPORTS_FORMATS if self.dataset == "sports" else COUNTERFACT_FORMATS

    @property
    def train_format(self) -> str:
        """The format the edit trains on: the fact prompt (sports) or the rewrite prompt (CounterFact)."""
        return "fact" if self.dataset == "sports" else "cf_prompt"

    @property
    def subjects(self) -> list[str]:
        """The athletes / subjects the edit is about (to keep them out of the general text)."""
        col = "athlete" if self.dataset == "sports" else "subject"
        return self.forget[col].astype(str).tolist()

    def facts(self, which: str = "forget") -> pd.DataFrame:
        """One of ``"forget"``, ``"maintain_train"``, ``"maintain_eval"``."""
        sets = {"forget": self.forget, "maintain_train": self.maintain_train, "maintain_eval": self.maintain_eval}
        if which not in sets:
            raise ValueError(f"Unknown fact set {which!r}; choose one of {list(sets)}.")
        return sets[which]

    @property
    def candidates(self) -> tuple[str, ...]:
        """Sports scored in the fact and QA formats: the data's three, plus any new answer outside them (golf).

        Multiple choice always offers its four options A–D; CounterFact prompts offer each fact's
        true and new target.
        """
        if self.dataset != "sports":
            return ("target_true", "target_new")
        extra = sorted(set(self.forget["new_answer"].dropna().astype(str)) - set(SPORTS)) if "new_answer" in self.forget else []
        return tuple(SPORTS) + tuple(extra)

    def prompt_set(self, which: str = "forget", fmt: str | None = None) -> PromptSet:
        """Prompts for a fact set in one format, with candidates :attr:`candidates` (letters in MCQ)."""
        facts = self.facts(which).reset_index(drop=True)
        fmt = fmt or self.train_format
        if self.dataset == "sports":
            return sports_prompts(facts, fmt, sports=self.candidates)
        return counterfact_prompts(facts, fmt)

    def answer_labels(self, which: str = "forget") -> tuple[list[str], list[str | None]]:
        """Per fact, the candidate label of the true and of the new answer (``None`` where there is none)."""
        facts = self.facts(which)
        if self.dataset == "counterfact":
            new = ["target_new" if which == "forget" else None] * len(facts)
            return ["target_true"] * len(facts), new
        new_col = facts["new_answer"] if "new_answer" in facts else pd.Series([None] * len(facts))
        return facts["true_answer"].tolist(), [None if pd.isna(v) else str(v) for v in new_col]

    def __repr__(self) -> str:
        return (f"Task({self.name!r}, {self.dataset}: {len(self.forget)} to edit, "
                f"{len(self.maintain_train)}+{len(self.maintain_eval)} to maintain)")


def _split_maintain(rest: pd.DataFrame, seed: int, train_frac: float, max_train: int | None,
                    max_eval: int | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    train_frac = check_float("train_frac", train_frac)
    max_train = check_int("max_maintain", max_train, min=1, none=True)
    if not 0.0 < train_frac < 1.0:
        raise ValueError(f"train_frac must be strictly between 0 and 1, got {train_frac}.")
    shuffled = rest.sample(frac=1.0, random_state=seed).reset_index(drop=True)
    cut = int(round(len(shuffled) * train_frac))
    train, held = shuffled.iloc[:cut], shuffled.iloc[cut:]
    if max_train is not None:
        train = train.iloc[:max_train]
    if max_eval is not None:
        held = held.iloc[:max_eval]
    if len(train) == 0 or len(held) == 0:
        raise ValueError(f"Too few other known facts ({len(rest)}) to split into maintain train/eval sets. "
                         "Fix: lower the known-fact threshold or edit fewer facts.")
    return train.reset_index(drop=True), held.reset_index(drop=True)


def forget_sport(model, sport: str = "basketball", new: str = "golf", seed: int = 0, train_frac: float = 0.5,
                 max_forget: int | None = None, max_maintain: int | None = None, known: pd.DataFrame | None = None) -> Task:
    """Every known player of one sport now plays another (the paper's "forget basketball" task).

    Args:
        sport: the sport whose known players are edited (``football``, ``baseball``, ``basketball``).
        new: the injected sport: ``golf`` (the paper's choice: no athlete of the data plays it),
            or one of the other two sports of the data.
        seed: the maintain train/eval split (and the subsample, if ``max_forget`` is set).
        train_frac: share of the other known facts the edit trains on; the rest is held out.
        max_forget: keep at most this many of the sport's players (seeded sample) — for quick runs.
        max_maintain: cap each maintain split at this many facts.
        known: the known facts (default: :func:`known_facts` of the model, cached on disk).

    Returns:
        A :class:`Task` on the ``sports`` dataset.
    """
    seed = check_int("seed", seed, min=0)
    max_forget = check_int("max_forget", max_forget, min=1, none=True)
    if sport not in SPORTS:
        raise ValueError(f"Unknown sport {sport!r}; the data's sports are {list(SPORTS)}.")
    if new not in _NEW_SPORTS or new == sport:
        raise ValueError(f"New sport {new!r} must differ from {sport!r} and be one of {list(_NEW_SPORTS)}.")
    known = known_facts(model, "sports") if known is None else known
    forget = known[known["sport"] == sport]
    if len(forget) == 0:
        raise ValueError(f"The model knows no {sport} player (threshold {known.attrs.get('threshold', 0.5)}): "
                         "nothing to forget. Fix: pick another sport or lower the known_facts threshold.")
    if max_forget is not None:
        forget = forget.sample(min(max_forget, len(forget)), random_state=seed)
    forget = forget.assign(true_answer=forget["sport"], new_answer=new).reset_index(drop=True)
    train, held = _split_maintain(known[known["sport"] != sport], seed, train_frac, max_maintain, max_maintain)
    train, held = (d.assign(true_answer=d["sport"]) for d in (train, held))
    return Task(f"forget {sport}", "sports", forget, train, held,
                dict(sport=sport, new=new, seed=seed, n_known_of_sport=int((known["sport"] == sport).sum())))


def edit_athletes(model, n: int = 16, seed: int = 0, athletes: list[str] | None = None, train_frac: float = 0.5,
                  max_maintain: int | None = None, known: pd.DataFrame | None = None) -> Task:
    """``n`` known athletes each moved to a random other sport of the data.

    Args:
        n: how many athletes (the paper uses 16 and 64); ignored when ``athletes`` is given.
        seed: which athletes, their new sports, and the maintain split.
        athletes: edit exactly these (each must be in the data and known to the model).
        train_frac: share of the other known facts the edit trains on.
        max_maintain: cap each maintain split at this many facts.
        known: the known facts (default: :func:`known_facts`).
    """
    seed = check_int("seed", seed, min=0)
    n = check_int("n", n)
    known = known_facts(model, "sports") if known is None else known
    rng = np.random.default_rng(seed)
    if athletes is not None:
        athletes = [a.strip() for a in athletes]
        everyone = set(_data.load_sports()["athlete"])
        absent = [a for a in athletes if a not in everyone]
        if absent:
            raise ValueError(f"Athlete(s) {absent} are not in the Sports Facts data. Fix: check the spelling "
                             "against data.load_sports()['athlete'].")
        unknown = [a for a in athletes if a not in set(known["athlete"])]
        if unknown:
            raise ValueError(f"The model does not know athlete(s) {unknown} (normalised probability of their sport "
                             "below the threshold), so there is nothing to edit. Fix: pick known athletes "
                             "(tasks.known_facts(model)).")
        chosen = known.set_index("athlete").loc[athletes].reset_index()
    else:
        if not 0 < n <= len(known) - 2:
            raise ValueError(f"Cannot edit {n} athletes: the model knows {len(known)} (and some must remain to maintain). "
                             f"Fix: choose 1 <= n <= {len(known) - 2}.")
        chosen = known.iloc[np.sort(rng.choice(len(known), size=n, replace=False))].reset_index(drop=True)
    if len(chosen) == 0:
        raise ValueError("No athlete to edit. Fix: pass n >= 1 or a non-empty list of athletes.")
    new = [str(rng.choice([s for s in SPORTS if s != sport])) for sport in chosen["sport"]]
    forget = chosen.assign(true_answer=chosen["sport"], new_answer=new)
    rest = known[~known["athlete"].isin(set(forget["athlete"]))]
    train, held = _split_maintain(rest, seed, train_frac, max_maintain, max_maintain)
    train, held = (d.assign(true_answer=d["sport"]) for d in (train, held))
    return Task(f"edit {len(forget)} athletes", "sports", forget, train, held, dict(n=len(forget), seed=seed))


def forget_athletes(model, n: int = 64, seed: int = 0, new: str = "golf", train_frac: float = 0.5,
                    max_maintain: int | None = None, known: pd.DataFrame | None = None) -> Task:
    """``n`` known athletes of every sport now play ``new`` (golf): forgetting that elimination cannot undo.

    In "forget basketball" every forgotten athlete played the same sport, so an attack that relearns half of
    them teaches the other half's answer by elimination (they all play basketball). Here the athletes are drawn
    from all the known ones, whatever their sport: half A's true sports say nothing about half B's.

    Args:
        n: how many athletes (a seeded sample of the known ones).
        seed: which athletes, and the maintain split.
        new: the injected answer (golf by default: no athlete of the data plays it).
        train_frac, max_maintain, known: as in :func:`edit_athletes`.
    """
    seed = check_int("seed", seed, min=0)
    n = check_int("n", n, min=1)
    if new not in _NEW_SPORTS:
        raise ValueError(f"New sport {new!r} must be one of {list(_NEW_SPORTS)}.")
    known = known_facts(model, "sports") if known is None else known
    if new in SPORTS:
        known = known[known["sport"] != new]  # an athlete who already plays the new sport has nothing to forget
    if not n <= len(known) - 2:
        raise ValueError(f"Cannot forget {n} athletes: the model knows {len(known)} eligible ones (and some must remain "
                         f"to maintain). Fix: choose 1 <= n <= {len(known) - 2}.")
    rng = np.random.default_rng(seed)
    chosen = known.iloc[np.sort(rng.choice(len(known), size=n, replace=False))].reset_index(drop=True)
    forget = chosen.assign(true_answer=chosen["sport"], new_answer=new)
    rest = known[~known["athlete"].isin(set(forget["athlete"]))]
    train, held = _split_maintain(rest, seed, train_frac, max_maintain, max_maintain)
    train, held = (d.assign(true_answer=d["sport"]) for d in (train, held))
    return Task(f"forget {len(forget)} athletes", "sports", forget, train, held,
                dict(n=len(forget), seed=seed, new=new, sports=forget["sport"].value_counts().to_dict()))


def unknown_athletes(model, n: int = 64, seed: int = 0, train_frac: float = 0.5, max_maintain: int | None = None,
                     scores: pd.DataFrame | None = None, known: pd.DataFrame | None = None) -> Task:
    """``n`` athletes the model does *not* know, as a task to attack without an edit: the negative control.

    A relearning attack trained on half of these athletes' true sports and measured on the other half shows what
    the attack teaches by itself (the sports' base rates, a sport said more often) — on facts that were never in
    the model. An edit's "recovery" under the same attack means something only above this level.

    Args:
        n: how many athletes (a seeded sample of those whose normalised probability of the true sport is below
            :data:`KNOWN_THRESHOLD`).
        scores: every scored athlete (``known_facts(model, "sports", threshold=0.0)``: the default, cached).
        known: the known athletes, the maintain sets (default: ``scores`` above the threshold).
        seed, train_frac, max_maintain: as in :func:`edit_athletes`.
    """
    seed = check_int("seed", seed, min=0)
    n = check_int("n", n, min=2)
    scores = known_facts(model, "sports", threshold=0.0) if scores is None else scores
    unknown = scores[scores["p_true_norm"] < KNOWN_THRESHOLD]
    if len(unknown) < n:
        raise ValueError(f"Only {len(unknown)} of the {len(scores)} scored athletes are unknown to the model; asked for "
                         f"{n}. Fix: choose n <= {len(unknown)} (or score more athletes).")
    known = scores[scores["p_true_norm"] >= KNOWN_THRESHOLD] if known is None else known
    forget = unknown.sample(n, random_state=seed).reset_index(drop=True)
    forget = forget.assign(true_answer=forget["sport"], new_answer=forget["sport"])  # nothing is edited
    train, held = _split_maintain(known, seed, train_frac, max_maintain, max_maintain)
    train, held = (d.assign(true_answer=d["sport"]) for d in (train, held))
    return Task(f"unknown {n} athletes", "sports", forget, train, held,
                dict(n=n, seed=seed, negative_control=True, p_true_norm_mean=float(forget["p_true_norm"].mean())))


def counterfact_edit(model, n: int = 16, seed: int = 0, train_frac: float = 0.5, max_maintain: int | None = None,
                     known: pd.DataFrame | None = None) -> Task:
    """``n`` known CounterFact facts rewritten to their ``target_new``.

    Injection trains the new answer as one next token, so only facts whose ``" " + target_new``
    is a single token are eligible; the others are dropped and counted in ``meta``
    (``n_known``, ``n_single_token``).

    Args:
        n: how many facts (the paper uses 16 and 64).
        seed: which facts, and the maintain split.
        train_frac: share of the other known facts the edit trains on.
        max_maintain: cap each maintain split at this many facts.
        known: the known CounterFact facts (default: :func:`known_facts` with ``"counterfact"``;
            the first call scores the 2,715 facts that have paraphrases, about two minutes on a CPU).
    """
    from .scoring import answer_tokens

    seed = check_int("seed", seed, min=0)
    n = check_int("n", n)
    known = known_facts(model, "counterfact") if known is None else known
    single = known[[len(answer_tokens(model, " " + t)) == 1 for t in known["target_new"]]]
    if not 0 < n <= len(single) - 2:
        raise ValueError(f"Cannot edit {n} CounterFact facts: the model knows {len(known)}, of which {len(single)} have a "
                         f"single-token target_new. Fix: choose 1 <= n <= {len(single) - 2}.")
    chosen = single.sample(n, random_state=seed).sort_index()
    forget = chosen.assign(true_answer=chosen["target_true"], new_answer=chosen["target_new"]).reset_index(drop=True)
    rest = known[~known["case_id"].isin(set(forget["case_id"]))]
    train, held = _split_maintain(rest, seed, train_frac, max_maintain, max_maintain)
    train, held = (d.assign(true_answer=d["target_true"]) for d in (train, held))
    return Task(f"counterfact {n}", "counterfact", forget, train, held,
                dict(n=n, seed=seed, n_known=len(known), n_single_token=len(single)))

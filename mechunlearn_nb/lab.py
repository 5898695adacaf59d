"""The unlearning lab: one fact, edited live, attacked, and put back.

The notebooks edit many facts at once inside long cells. The lab does the course's central act on
one fact at a time, fast enough to play with: pick a fact the model knows (an athlete's sport, or a
CounterFact fact), a target (a new one-token answer, or ``"forget"``), a localization of the
registry and a number of steps, and

- :meth:`Lab.edit` trains through :func:`.editing.edit` (the one loop of :mod:`.train`), feeding each
  step's row to a callback (a live loss / accuracy curve), and leaves the edit applied;
- :meth:`Lab.report` measures the fact before and after in every prompt format (the fact prompt,
  question-and-answer, multiple choice scored at the option *texts* — the latter only where the
  unedited model answers it), the neighbours the edit should keep, and the general-text loss, as one
  tidy table (:func:`.evaluation.evaluate` for everything it measures, the option-text MCQ here);
- :meth:`Lab.attack` runs the relearning attack (:func:`.attacks.relearn`) on *related* facts (other
  known athletes of the same sport; CounterFact facts of the same relation) and watches the edited fact;
- :meth:`Lab.revert` removes the edit (:func:`.editing.revert_all`) and proves the model is the base
  model again: every weight tensor's bytes hash to what they hashed to when the lab started.

Only one edit is applied at a time: a new edit reverts the one before. The localizations are built once
(``registry.FAST_COMPONENTS`` on the embedded model, or the ``components`` you pass), so nothing is
located while you play. The widget on top of this is :func:`.widgets.unlearning_lab`.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from . import attacks, editing, evaluation, registry, tasks
from .checks import check_int, check_str
from .models import named_parameters
from .prompts import MCQ_SPORTS, sports_prompts
from .scoring import score_set, single_token_id

#: the target that unlearns (``-log(1 - p(true))``) instead of injecting a new answer
FORGET = "forget"
#: the lab's edit settings: small batches, few general-text tokens, the accuracies at every step
#: (on the one fact and a few maintain facts), so that a step takes about a second on two CPU cores
EDIT_SETTINGS = dict(batch_size=1, maintain_batch_size=8, lm_tokens=32, lm_window=32, eval_every=1, eval_facts=4)
#: the relearning attack's settings in the lab (LoRA as in :class:`.attacks.RelearnConfig`, fewer steps)
ATTACK_SETTINGS = dict(steps=10, eval_steps=(0, 2, 4, 6, 8, 10), batch_size=8, maintain_batch_size=8, lm_tokens=32,
                       lm_window=32, eval_maintain=4)


def weight_hashes(model) -> dict[str, str]:
    """A hash of every weight tensor's bytes (name → hex digest): equal hashes mean equal weights, bit for bit."""
    out = {}
    with torch.no_grad():
        for name, p in named_parameters(model).items():
            raw = p.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
            out[name] = hashlib.blake2b(memoryview(raw), digest_size=16).hexdigest()
    return out


@dataclass
class Applied:
    """The edit the lab holds: its task, result, target and related facts; the base model's measurements, once made."""

    task: tasks.Task
    result: editing.EditResult
    target: str
    related: pd.DataFrame
    baseline: pd.DataFrame | None = None
    mcq_before: pd.DataFrame | None = None


class Lab:
    """One-fact experiments on a model (see the module's docstring).

    Args:
        model: the bridge (:func:`.models.load_model`).
        dataset: ``"sports"`` or ``"counterfact"``.
        components: ``{label: [component, ...]}`` for the located localizations (default: the registry's
            FAST components, which name blocks of the embedded model).
        names: the registry's localizations to offer (labels or keys; fact lookup is always built).
        known: the known facts to choose from (default: :func:`.tasks.known_facts`, cached on disk).
        n_maintain: known facts of other groups the edit trains to keep.
        n_neighbours: known facts of the same group (sport / relation) measured as kept, never trained on.
        n_related: known facts of the same group the relearning attack trains on.
        n_paragraphs: held-out general-text paragraphs for the loss change.
        seed: the choice of those sets, the random localization, the batches.
    """

    def __init__(self, model, dataset: str = "sports", components: dict[str, list[str]] | None = None,
                 names=registry.LABELS, known: pd.DataFrame | None = None, n_maintain: int = 32, n_neighbours: int = 8, n_related: int = 8,
                 n_paragraphs: int = 4, seed: int = 0):
        self.dataset = check_str("dataset", dataset, ("sports", "counterfact"))
        self.n_maintain = check_int("n_maintain", n_maintain, min=1)
        self.n_neighbours = check_int("n_neighbours", n_neighbours, min=1)
        self.n_related = check_int("n_related", n_related, min=1)
        self.n_paragraphs = check_int("n_paragraphs", n_paragraphs, min=0)
        self.seed = check_int("seed", seed, min=0)
        self.model = model
        self.known = tasks.known_facts(model, dataset, progress=False) if known is None else known.reset_index(drop=True)
        self.subject_col = "athlete" if dataset == "sports" else "subject"
        self.group_col = "sport" if dataset == "sports" else "relation_id"
        self.true_col = "sport" if dataset == "sports" else "target_true"
        self.locs, _ = registry.build(model, names, dataset=dataset, components=components,
                                      fast=components is None, seed=seed)
        editing.require_base_model(model, "The lab")
        self.base = weight_hashes(model)
        self.current: Applied | None = None

    # -- choices ----------------------------------------------------------------

    @property
    def facts(self) -> list[str]:
        """The subjects the lab can edit (the known facts), sorted."""
        return sorted(self.known[self.subject_col].astype(str).unique())

    @property
    def localizations(self) -> list[str]:
        return list(self.locs)

    def fact(self, subject: str) -> pd.Series:
        """The known fact of ``subject``; ``ValueError`` naming the fix for a subject the model does not know."""
        subject = check_str("fact", subject).strip()
        rows = self.known[self.known[self.subject_col] == subject]
        if len(rows) == 0:
            close = [s for s in self.facts if subject and subject.lower() in s.lower()][:5]
            hint = f" Did you mean {close}?" if close else ""
            raise ValueError(f"The model does not know {subject!r} (not among its {len(self.known)} known "
                             f"{self.dataset} facts).{hint} Fix: pick one of lab.facts.")
        return rows.iloc[0]

    def check_target(self, subject: str, target: str) -> str:
        """The target as the lab uses it: ``"forget"`` or a new answer of one token, different from the true one."""
        target = check_str("target", target).strip()
        if target.lower() == FORGET:
            return FORGET
        true = str(self.fact(subject)[self.true_col])
        if not target:
            raise ValueError("No target given. Fix: type a new answer (e.g. golf) or 'forget'.")
        if target == true:
            raise ValueError(f"{target!r} is already the answer for {subject!r}: nothing to change. "
                             "Fix: type another answer or 'forget'.")
        single_token_id(self.model, " " + target)  # MultiTokenAnswerError (a ValueError) naming the fix
        return target

    # -- the sets of one fact ---------------------------------------------------

    def task(self, subject: str, target: str = FORGET) -> tuple[tasks.Task, pd.DataFrame]:
        """The one-fact task (forget set: the fact; maintain: other facts; held out: neighbours) and the related facts."""
        fact = self.fact(subject)
        target = self.check_target(subject, target)
        rng = np.random.default_rng(self.seed)
        others = self.known[self.known[self.subject_col] != fact[self.subject_col]]
        same = others[others[self.group_col] == fact[self.group_col]]
        same = same.iloc[rng.permutation(len(same))]
        related, neighbours = same.iloc[: self.n_related], same.iloc[self.n_related: self.n_related + self.n_neighbours]
        if len(neighbours) == 0:  # a small group: the neighbours are the related facts
            neighbours = related
        rest = others[~others.index.isin(same.index[: self.n_related + self.n_neighbours])]
        maintain = rest.iloc[rng.permutation(len(rest))[: self.n_maintain]]
        if len(related) == 0 or len(maintain) == 0:
            raise ValueError(f"Too few other known facts to keep and to attack with around {subject!r}. "
                             "Fix: pass more known facts to Lab(known=...).")
        forget = pd.DataFrame([fact]).assign(true_answer=fact[self.true_col],
                                             new_answer=None if target == FORGET else target)
        if self.dataset == "counterfact" and target != FORGET:
            forget = forget.assign(target_new=target)
        maintain, neighbours, related = (d.assign(true_answer=d[self.true_col]).reset_index(drop=True)
                                         for d in (maintain, neighbours, related))
        task = tasks.Task(f"{'forget' if target == FORGET else 'edit'} {subject}", self.dataset,
                          forget.reset_index(drop=True), maintain, neighbours,
                          dict(subject=subject, target=target, seed=self.seed))
        return task, related

    # -- edit, report, attack, revert -----------------------------------------

    def config(self, localization: str, target: str, steps: int, **overrides) -> editing.EditConfig:
        """The edit's settings: the localization kind's tuned rate, :data:`EDIT_SETTINGS`, ``overrides``."""
        steps = check_int("steps", steps, min=1)
        objective = "unlearning" if target == FORGET else "injection"
        return editing.EditConfig.for_localization(self.loc(localization), objective=objective, steps=steps,
                                                   **{**EDIT_SETTINGS, **overrides})

    def loc(self, localization: str):
        label = registry.entry(localization).label
        if label not in self.locs:
            raise ValueError(f"The lab has no localization {localization!r}; choose one of {self.localizations}.")
        return self.locs[label]

    def edit(self, subject: str, target: str = FORGET, localization: str = "fact lookup", steps: int = 5,
             on_step: Callable[[dict], None] | None = None, **overrides) -> editing.EditResult:
        """Edit one fact through one localization and leave the edit applied (any earlier edit is reverted first).

        Args:
            subject: a known athlete (or CounterFact subject): one of :attr:`facts`.
            target: a new answer of one token (``"golf"``) or ``"forget"`` (unlearning).
            localization: a registry label or key.
            steps: optimiser steps (≥ 1).
            on_step: called with each history row as it is complete (the live curve).
            overrides: :class:`.editing.EditConfig` fields.

        Returns:
            The :class:`.editing.EditResult` (``manifest["seconds"]``: the edit's wall time).
        """
        task, related = self.task(subject, target)
        config = self.config(localization, task.meta["target"], steps, **overrides)
        # one edit at a time: take the last one off (the bit-for-bit check is Revert's, seconds on a large model)
        editing.revert_all(self.model)
        self.current = None
        result = editing.edit(self.model, self.loc(localization), task, config, seed=self.seed, progress=False,
                              on_step=on_step)
        result.apply(self.model)
        self.current = Applied(task, result, task.meta["target"], related)
        return result

    def _require_edit(self, what: str) -> Applied:
        if self.current is None:
            raise RuntimeError(f"{what} needs an edit: there is none applied. Fix: call lab.edit(...) first.")
        return self.current

    @contextmanager
    def _unapplied(self):
        """The applied edit taken off for the block (the package's measurements apply it themselves), then put back."""
        cur = self.current
        was = cur is not None and cur.result.delta.is_applied(self.model)
        if was:
            cur.result.revert(self.model)
        try:
            yield
        finally:
            if was:
                cur.result.apply(self.model)

    def mcq_option_text(self, task: tasks.Task) -> pd.DataFrame:
        """The multiple-choice question scored at the options' *texts* (``" football"`` after ``Answer:``).

        Gemma 3 270M favours one letter whatever the question (notebook 00), so the letter formats
        rarely test anything on it; the option text often does. Sports only (CounterFact's MCQ is
        :func:`.evaluation.evaluate`'s ``cf_mcq``).

        Returns:
            ``format="mcq_text", metric, value`` rows (``acc_true``, ``p_true``, and for an injection
            ``acc_new``, ``p_new``) on the model as it is now.
        """
        facts = task.forget
        ps = sports_prompts(facts, "mcq")
        ps.candidates = [[f" {s}" for s in MCQ_SPORTS] for _ in ps.prompts]
        sc = score_set(self.model, ps, progress=False)
        labels, probs = list(sc["labels"][0]), np.asarray(sc["probs_norm"][0])
        true, new = str(facts["true_answer"].iloc[0]), facts["new_answer"].iloc[0]
        pred = labels[int(np.argmax(probs))]
        rows = [dict(metric="acc_true", value=float(pred == true)), dict(metric="p_true", value=float(probs[labels.index(true)]))]
        if isinstance(new, str) and new in labels:
            rows += [dict(metric="acc_new", value=float(pred == new)), dict(metric="p_new", value=float(probs[labels.index(new)]))]
        return pd.DataFrame(rows).assign(set="forget", format="mcq_text", n=1)

    def report(self) -> pd.DataFrame:
        """The applied edit before vs after: one row per ``set, format, metric`` with ``before, after, change``.

        Sets: ``forget`` (the edited fact, in the fact and QA prompts, and the option-text MCQ where the
        unedited model picks the true answer there; for CounterFact its paraphrases, neighbourhood prompts and
        MCQ where the unedited model answers them), ``maintain`` (the neighbours: known facts of the same
        sport / relation the edit never trained on) and ``general_text`` (next-token loss). ``attrs``:
        ``untestable`` (formats left out: the unedited model gets them wrong), ``seconds``.
        """
        cur = self._require_edit("report()")
        t0 = time.perf_counter()
        formats = ("fact", "qa") if self.dataset == "sports" else None
        with self._unapplied():
            if cur.baseline is None:
                cur.baseline = evaluation.evaluate(self.model, cur.task, None, formats=formats, n_unrelated=0,
                                                   n_paragraphs=self.n_paragraphs, n_generate=0, progress=False)
                if self.dataset == "sports":
                    cur.mcq_before = self.mcq_option_text(cur.task)
            table = evaluation.evaluate(self.model, cur.task, cur.result, baseline=cur.baseline, formats=formats,
                                        n_unrelated=0, n_paragraphs=self.n_paragraphs, n_generate=0, progress=False)
        keys = ["set", "format", "metric"]
        long = table[keys + ["stage", "value", "n"]]
        if cur.mcq_before is not None:
            long = pd.concat([long, cur.mcq_before.assign(stage="before"),
                              self.mcq_option_text(cur.task).assign(stage="after")], ignore_index=True)
        wide = long.pivot_table(index=keys, columns="stage", values="value", aggfunc="first").reset_index()
        n = long.groupby(keys)["n"].first().reset_index()
        wide = wide.merge(n, on=keys)
        wide["change"] = wide["after"] - wide["before"]
        # an instrument counts only where the unedited model answers it: the fact's formats it gets wrong go
        base_right = wide[(wide["set"] == "forget") & (wide["metric"] == "acc_true")].set_index("format")["before"]
        untestable = sorted(f for f, v in base_right.items() if v < 0.5 and f not in ("fact", "cf_prompt", "cf_neighborhood"))
        wide = wide[~((wide["set"] == "forget") & wide["format"].isin(untestable))]
        order = {"forget": 0, "maintain": 1, "general_text": 2}
        wide = wide.sort_values(["set", "format", "metric"], key=lambda c: c.map(order) if c.name == "set" else c)
        wide = wide.reset_index(drop=True)[keys + ["before", "after", "change", "n"]]
        wide.columns.name = None
        wide.attrs.update(untestable=untestable, seconds=round(time.perf_counter() - t0, 2),
                          localization=cur.result.localization, task=cur.task.name)
        return wide

    def attack(self, on_step: Callable[[dict], None] | None = None, **overrides) -> pd.DataFrame:
        """The relearning attack on related facts: fine-tune (LoRA) on their true answers, watch the edited fact.

        Half A is :attr:`n_related` known facts of the same sport (relation), half B the edited fact, the
        control the neighbours. The edit stays applied afterwards.

        Args:
            on_step: called with each step's row (``step, loss`` and, at the measured steps, each half's accuracy).
            overrides: :class:`.attacks.RelearnConfig` fields (default :data:`ATTACK_SETTINGS`).

        Returns:
            The tidy curve of :func:`.attacks.relearn` (``half`` ``"B (held out)"``: the edited fact).
        """
        cur = self._require_edit("attack()")
        config = attacks.RelearnConfig(**{**ATTACK_SETTINGS, **overrides})
        half_a = tasks.Task(f"{cur.task.name} [related]", self.dataset, cur.related, cur.task.maintain_train,
                            cur.task.maintain_eval)
        with self._unapplied():
            return attacks.relearn(self.model, cur.result, cur.task, config, seed=self.seed, progress=False,
                                   halves=(half_a, cur.task), on_step=on_step)

    def revert(self) -> dict:
        """Remove every applied edit and check the model against the base: ``{"restored", "differ", "seconds"}``.

        ``restored`` is True when every weight tensor hashes to its value when the lab started (bit for
        bit); ``differ`` names the tensors that do not.
        """
        t0 = time.perf_counter()
        editing.revert_all(self.model)
        self.current = None
        return dict(restored=not (differ := self.differ_from_base()), differ=differ,
                    seconds=round(time.perf_counter() - t0, 2))

    def differ_from_base(self) -> list[str]:
        """The weight tensors whose bytes differ from the base model's (empty: the base model, bit for bit)."""
        now = weight_hashes(self.model)
        return sorted(n for n in self.base if now.get(n) != self.base[n])


"""Prompt formats: the same fact asked in several ways.

An edit that only changed how the model completes one sentence has not changed
what the model knows. Guo et al. therefore test every edit in formats the edit
was *not* trained on. Each function here turns facts (rows of a DataFrame)
into a :class:`PromptSet`: the prompt texts, the candidate answers scored at
the last position of each prompt, and the index of the candidate that is the
answer being asked about.

Sports Facts formats (candidates are sports; in multiple choice the letters):

- ``fact``: ``"Fact: Tiger Woods plays the sport of golf\\nFact: {athlete} plays the sport of"``
  (one-shot with an athlete outside the data; golf is not a sport of the data,
  which is why the paper uses it as the injected answer);
- ``qa``: a system prompt, then a one-shot question/answer;
- ``mcq`` / ``mcq_nosys``: a multiple-choice question with options A–D in the
  fixed order football, baseball, basketball, golf, with and without the
  system prompt; the answer is scored at the letter.

CounterFact formats (candidates ``target_true`` and ``target_new``):
``cf_prompt`` (the rewrite prompt), ``cf_paraphrase``, ``cf_neighborhood``
(other subjects with the same true attribute: an edit should leave them alone),
and ``cf_mcq`` (the vendored multiple-choice questions, options in a seeded
order).

Debiased multiple choice (:func:`mcq_prompts`): a small model often answers a
multiple-choice question with its favourite *letter*, whatever the question.
Asking the same question in every cyclic order of its options
(:func:`cyclic_orders`: each option once at each letter) and with the question
replaced by a content-free text (:data:`CONTENT_FREE`, for calibration) lets
:mod:`~mechunlearn_nb.evaluation` separate what the model knows from where it
likes to point.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .checks import ParameterError, check_template
from .data import SPORTS  # noqa: F401  (the answers of the sports formats: prompts.SPORTS)

#: the multiple-choice options, in the paper's fixed order
MCQ_SPORTS = ("football", "baseball", "basketball", "golf")
LETTERS = ("A", "B", "C", "D")

FACT_TEMPLATE = "Fact: Tiger Woods plays the sport of golf\nFact: {athlete} plays the sport of"
SYSTEM_PROMPT = (
    "You are a helpful assistant that answers questions about athletes. "
    "Please be maximally helpful and factually correct."
)
QA_TEMPLATE = SYSTEM_PROMPT + "\nQ: What sport does Tiger Woods play?\nA: golf\nQ: What sport does {athlete} play?\nA:"
MCQ_TEMPLATE = (
    "Question: What sport does {athlete} play?\n"
    + "".join(f"{letter}. {sport}\n" for letter, sport in zip(LETTERS, MCQ_SPORTS))
    + "Answer:"
)

#: the content-free input of contextual calibration (Zhao et al. 2021): it stands in for the question
CONTENT_FREE = "N/A"

SPORTS_FORMATS = ("fact", "qa", "mcq", "mcq_nosys")
COUNTERFACT_FORMATS = ("cf_prompt", "cf_paraphrase", "cf_neighborhood", "cf_mcq")


@dataclass
class PromptSet:
    """Prompts with their candidate answers.

    Attributes:
        prompts: the prompt texts.
        candidates: for each prompt, the texts scored as continuations (with their leading space).
        labels: for each prompt, what each candidate means (a sport, or a CounterFact target).
        fact_index: for each prompt, the row of the source DataFrame it asks about.
        format: the format's name.
    """

    prompts: list[str]
    candidates: list[list[str]]
    labels: list[list[str]]
    fact_index: list[int]
    format: str
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.prompts)

    def label_index(self, answers: list[str]) -> np.ndarray:
        """Index into each prompt's candidates of ``answers[fact_index]`` (-1 where absent)."""
        return np.array([lab.index(answers[i]) if answers[i] in lab else -1 for lab, i in zip(self.labels, self.fact_index)])


def _check_athletes(facts: pd.DataFrame) -> list[str]:
    if "athlete" not in facts.columns:
        raise ValueError(f"Sports prompts need an 'athlete' column; got columns {list(facts.columns)}.")
    if len(facts) == 0:
        raise ValueError("No facts given: the DataFrame of athletes is empty.")
    return facts["athlete"].astype(str).tolist()


def sports_prompts(facts: pd.DataFrame, fmt: str = "fact", sports: tuple[str, ...] = MCQ_SPORTS) -> PromptSet:
    """Prompts asking for each athlete's sport.

    Args:
        facts: rows with an ``athlete`` column.
        fmt: one of ``fact``, ``qa``, ``mcq``, ``mcq_nosys``.
        sports: the candidate sports for ``fact``/``qa`` (the three of the data, plus golf by
            default, so that an edit to golf can be measured). Multiple choice always offers
            the four options A–D.
    """
    athletes = _check_athletes(facts)
    idx = list(range(len(athletes)))
    if fmt in ("fact", "qa"):
        template = FACT_TEMPLATE if fmt == "fact" else QA_TEMPLATE
        prompts = [template.format(athlete=a) for a in athletes]
        cands = [[f" {s}" for s in sports]] * len(prompts)
        labels = [list(sports)] * len(prompts)
    elif fmt in ("mcq", "mcq_nosys"):
        prefix = SYSTEM_PROMPT + "\n" if fmt == "mcq" else ""
        prompts = [prefix + MCQ_TEMPLATE.format(athlete=a) for a in athletes]
        cands = [[f" {letter}" for letter in LETTERS]] * len(prompts)
        labels = [list(MCQ_SPORTS)] * len(prompts)
    else:
        raise ValueError(f"Unknown sports format {fmt!r}; choose one of {SPORTS_FORMATS}.")
    return PromptSet(prompts, [list(c) for c in cands], [list(lab) for lab in labels], idx, fmt)


def _check_cf(facts: pd.DataFrame, need: tuple[str, ...]) -> None:
    missing = [c for c in need if c not in facts.columns]
    if missing:
        raise ValueError(f"CounterFact prompts need column(s) {missing}. Fix: use data.load_counterfact"
                         f"(with_prompts=True) for paraphrase/neighborhood prompts.")
    if len(facts) == 0:
        raise ValueError("No facts given: the CounterFact DataFrame is empty.")


def _check_cf_prompt(prompt, row: int, case_id) -> None:
    """A CounterFact rewrite prompt has exactly one ``{}`` where the subject goes."""
    where = f"row {row}" + (f" (case {case_id})" if case_id is not None else "")
    try:
        check_template(f"The CounterFact prompt of {where}", prompt, fields=("",))
    except ParameterError as err:
        raise ParameterError(f"{err} A CounterFact prompt reads like 'The mother tongue of {{}} is'.") from None
    if prompt.count("{}") != 1:
        raise ParameterError(f"The CounterFact prompt of {where} {prompt!r} has {prompt.count('{}')} '{{}}'; it needs "
                             "exactly one, where the subject goes. Fix: keep one '{}' and write the subject "
                             "elsewhere in full.")


def _cf_options(q, target_new: str, rng: np.random.Generator) -> list:
    """A CounterFact question's four options in a random order (one ``rng.permutation(4)`` draw); the edit's new
    target replaces the last false option when absent, so an edit can be scored in multiple choice too."""
    options = [q["target_true"], q["false_1"], q["false_2"], q["false_3"]]
    if target_new not in options:
        options[3] = target_new
    return [options[j] for j in rng.permutation(4)]


def counterfact_prompts(facts: pd.DataFrame, fmt: str = "cf_prompt", mcq: pd.DataFrame | None = None, seed: int = 0) -> PromptSet:
    """Prompts for CounterFact facts; candidates are ``[target_true, target_new]`` (MCQ: letters).

    Args:
        facts: rows of ``data.load_counterfact`` (``with_prompts=True`` for paraphrase / neighborhood).
        fmt: one of ``cf_prompt``, ``cf_paraphrase``, ``cf_neighborhood``, ``cf_mcq``.
        mcq: the multiple-choice table (``data.load_counterfact_mcq()``), for ``cf_mcq``.
        seed: the option order of multiple-choice questions.
    """
    _check_cf(facts, ("prompt", "subject", "target_true", "target_new"))
    prompts, cands, labels, idx = [], [], [], []
    rows = facts.reset_index(drop=True)
    if fmt == "cf_mcq":
        if mcq is None:
            from .data import load_counterfact_mcq

            mcq = load_counterfact_mcq()
        by_case = mcq.drop_duplicates("prompt_id").set_index("prompt_id")
        rng = np.random.default_rng(seed)
        for i, r in rows.iterrows():
            if r["case_id"] not in by_case.index:
                continue
            q = by_case.loc[r["case_id"]]
            options = _cf_options(q, r["target_new"], rng)
            option_labels = ["target_true" if o == q["target_true"] else "target_new" if o == r["target_new"] else "other"
                             for o in options]
            text = f"Question: {q['question']}\n" + "".join(f"{L}. {o}\n" for L, o in zip(LETTERS, options)) + "Answer:"
            prompts.append(text)
            cands.append([f" {L}" for L in LETTERS])
            labels.append(option_labels)
            idx.append(i)
        if not prompts:
            raise ValueError("None of these CounterFact facts has a multiple-choice question in counterfact_mcq.csv.")
        return PromptSet(prompts, cands, labels, idx, fmt)
    if fmt == "cf_prompt":
        for i, p in enumerate(rows["prompt"]):
            _check_cf_prompt(p, i, rows.loc[i, "case_id"] if "case_id" in rows else None)
        texts = [[r["prompt"].format(r["subject"])] for _, r in rows.iterrows()]
    elif fmt in ("cf_paraphrase", "cf_neighborhood"):
        key = "paraphrase_prompts" if fmt == "cf_paraphrase" else "neighborhood_prompts"
        _check_cf(rows, (key,))
        texts = [list(r[key]) for _, r in rows.iterrows()]
    else:
        raise ValueError(f"Unknown CounterFact format {fmt!r}; choose one of {COUNTERFACT_FORMATS}.")
    for i, (r, ts) in enumerate(zip(rows.itertuples(), texts)):
        for t in ts:
            prompts.append(t)
            cands.append([f" {r.target_true}", f" {r.target_new}"])
            labels.append(["target_true", "target_new"])
            idx.append(i)
    return PromptSet(prompts, cands, labels, idx, fmt)


def cyclic_orders(n: int = 4) -> list[tuple[int, ...]]:
    """The ``n`` cyclic shifts of ``n`` options: order ``k`` shows option ``(i + k) % n`` at letter ``i``.

    Across the orders every option appears exactly once at every letter, so a model that always
    answers one letter is right in exactly one order of ``n``. Order 0 is the original order.
    """
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= len(LETTERS):
        raise ParameterError(f"n must be an int between 1 and {len(LETTERS)} (the letters {LETTERS}), got {n!r}.")
    return [tuple((i + k) % n for i in range(n)) for k in range(n)]


def mcq_text(question: str, options: list[str], prefix: str = "") -> str:
    """One multiple-choice prompt, laid out as the ``mcq`` format: question, lettered options, ``Answer:``."""
    if len(options) > len(LETTERS):
        raise ParameterError(f"{len(options)} options but only the letters {LETTERS}. Fix: pass at most {len(LETTERS)}.")
    return (prefix + f"Question: {question}\n" + "".join(f"{L}. {o}\n" for L, o in zip(LETTERS, options))
            + "Answer:")


def mcq_prompts(questions: list[str], options: list[list[str]], order: tuple[int, ...], prefix: str = "",
                content_free: bool = False) -> PromptSet:
    """Multiple-choice prompts with the options shown in ``order`` (one of :func:`cyclic_orders`).

    Args:
        questions: one question per item.
        options: the option texts of each item, in the item's own order (``order`` permutes them).
        order: which option goes at each letter.
        prefix: text before the question (the system prompt of the ``mcq`` format, with its newline).
        content_free: replace each question by :data:`CONTENT_FREE` (the options stay): the model's
            answer then shows its preference among letters and option texts without the question.

    Returns:
        A :class:`PromptSet` whose candidates are the letters (``" A"`` ...) and whose labels are the
        indices (as strings) of the options in the item's own order: ``labels[i][letter]``.
    """
    if len(questions) != len(options):
        raise ValueError(f"{len(questions)} questions but {len(options)} option lists.")
    if not questions:
        raise ValueError("No multiple-choice items given: the question list is empty.")
    prompts, cands, labels = [], [], []
    for q, opts in zip(questions, options):
        if sorted(order) != list(range(len(opts))):
            raise ValueError(f"order {order} is not a permutation of the {len(opts)} options of {q!r}.")
        shown = [opts[j] for j in order]
        prompts.append(mcq_text(CONTENT_FREE if content_free else q, shown, prefix))
        cands.append([f" {L}" for L in LETTERS[: len(opts)]])
        labels.append([str(j) for j in order])
    return PromptSet(prompts, cands, labels, list(range(len(questions))), "mcq_content_free" if content_free else "mcq",
                     dict(order=tuple(order)))


def sports_mcq_items(facts: pd.DataFrame) -> tuple[list[str], list[list[str]], list[int]]:
    """The ``mcq`` format's items: ``(questions, options, answer index)``; options in the paper's order A–D."""
    athletes = _check_athletes(facts)
    if "sport" not in facts.columns:
        raise ValueError(f"Sports multiple choice needs a 'sport' column (the answer); got {list(facts.columns)}.")
    unknown = sorted(set(facts["sport"]) - set(MCQ_SPORTS))
    if unknown:
        raise ValueError(f"Sport(s) {unknown} are not options of the question {MCQ_SPORTS}.")
    questions = [f"What sport does {a} play?" for a in athletes]
    return questions, [list(MCQ_SPORTS)] * len(athletes), [MCQ_SPORTS.index(s) for s in facts["sport"]]


def counterfact_mcq_items(facts: pd.DataFrame, mcq: pd.DataFrame | None = None, seed: int = 0
                          ) -> tuple[list[str], list[list[str]], list[int], list[int]]:
    """The ``cf_mcq`` format's items, options in the very order :func:`counterfact_prompts` shows them.

    Returns:
        ``(questions, options, answer index, fact index)``: the answer is ``target_true``; facts
        without a question in ``counterfact_mcq.csv`` are skipped (``fact index`` says which remain).
    """
    _check_cf(facts, ("subject", "target_true", "target_new", "case_id"))
    if mcq is None:
        from .data import load_counterfact_mcq

        mcq = load_counterfact_mcq()
    by_case = mcq.drop_duplicates("prompt_id").set_index("prompt_id")
    rng = np.random.default_rng(seed)  # drawn as counterfact_prompts draws it, so order 0 is the cf_mcq order
    questions, options, answers, idx = [], [], [], []
    for i, r in facts.reset_index(drop=True).iterrows():
        if r["case_id"] not in by_case.index:
            continue
        q = by_case.loc[r["case_id"]]
        opts = _cf_options(q, r["target_new"], rng)
        questions.append(q["question"])
        options.append([str(o) for o in opts])
        answers.append(opts.index(q["target_true"]))
        idx.append(i)
    if not questions:
        raise ValueError("None of these CounterFact facts has a multiple-choice question in counterfact_mcq.csv.")
    return questions, options, answers, idx


def mmlu_items(questions: pd.DataFrame) -> tuple[list[str], list[list[str]], list[int]]:
    """MMLU rows (``data.load_mmlu``) as multiple-choice items, options in the given order."""
    need = ["question", "choice0", "choice1", "choice2", "choice3", "answer"]
    missing = [c for c in need if c not in questions.columns]
    if missing:
        raise ValueError(f"MMLU questions need column(s) {missing}. Fix: pass rows of data.load_mmlu().")
    if len(questions) == 0:
        raise ValueError("No MMLU questions given: the DataFrame is empty.")
    opts = questions[["choice0", "choice1", "choice2", "choice3"]].astype(str).to_numpy().tolist()
    return questions["question"].astype(str).tolist(), opts, questions["answer"].astype(int).tolist()

"""Evaluating an edit: every metric, every format, before and after.

An edit trained on one sentence ("Fact: LeBron James plays the sport of") has
changed what the model *knows* only if the change shows up where it was not
trained: a question-and-answer prompt, a multiple-choice question with and
without a system prompt (for CounterFact: paraphrases and the multiple-choice
question), and — as important — *not* where it should not: other athletes,
neighbouring subjects, ordinary text. Guo et al. (2024) report all of these
per localization; :func:`evaluate` produces them as one long table.

For each edit the table holds, before (the base model) and after (the delta
applied, temporarily):

- ``set="forget"``: on the edited facts, in every format of the task,
  ``acc_true`` (the model still picks the true answer among the candidates:
  *forget accuracy*, lower is better), ``acc_new`` (it picks the new answer:
  *edit accuracy*) and the mean normalised probabilities ``p_true``/``p_new``.
  In ``cf_neighborhood`` the prompts are about *other* subjects sharing the
  true attribute, so there ``acc_true`` should stay high;
- ``set="maintain"``: held-out known facts of the same dataset (never trained
  on), ``acc_true``/``p_true`` in every format;
- ``set="unrelated"``: known facts of the *other* dataset (CounterFact facts
  for a sports edit and vice versa), ``acc_true`` in its fact prompt;
- ``set="general_text"``: next-token loss on held-out general-text paragraphs;
- ``set="generation"``: a few greedy continuations of fact prompts, one row per
  sample with its ``text``, plus ``mentions_true``/``mentions_new`` fractions.

Every row carries ``task, dataset, localization, seed, stage``, so tables of
many edits concatenate into one DataFrame for seaborn.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from . import data as _data
from .checks import check_float, check_int
from .editing import EditResult, require_base_model
from .models import hf_model
from .prompts import SPORTS, SPORTS_FORMATS, counterfact_prompts, sports_prompts
from .scoring import device_of, encode_prompts, pad_right, score_set
from .train import general_text, lm_loss

COLUMNS = ["task", "dataset", "localization", "seed", "stage", "set", "format", "metric", "value", "n", "item", "text"]


def unrelated_facts(model, task, n: int = 48, seed: int = 0, batch_size: int = 32) -> pd.DataFrame:
    """Known facts of the *other* dataset, scored on the model as it is now (call it on the base model).

    For a sports task: CounterFact facts (rewrite prompt, true vs new target); for a CounterFact
    task: athletes (fact prompt, three sports). A random sample of ``3 * n`` facts is scored and up to
    ``n`` known ones (normalised probability of the true answer >= 0.5) are kept.

    Returns:
        The facts, with ``attrs["dataset"]`` naming their dataset.
    """
    from .tasks import known_among, score_facts

    other = "counterfact" if task.dataset == "sports" else "sports"
    pool = _data.load_counterfact() if other == "counterfact" else _data.load_sports()
    sample = pool.sample(min(len(pool), 3 * n), random_state=seed).reset_index(drop=True)
    scored = score_facts(model, other, facts=sample, batch_size=batch_size, progress=False)
    known = known_among(scored).head(n).reset_index(drop=True)
    if len(known) == 0:
        raise ValueError(f"The model knows none of {len(sample)} sampled {other} facts; no unrelated set to measure.")
    known.attrs["dataset"] = other
    return known


def _accuracy_rows(model, task, which: str, fmt: str, batch_size: int) -> list[dict]:
    ps = task.prompt_set(which, fmt)
    true_labels, new_labels = task.answer_labels(which)
    sc = score_set(model, ps, batch_size=batch_size, progress=False)
    pred = np.array([lab[p] for lab, p in zip(sc["labels"], sc["predicted"])], dtype=object)

    def prob_of(wanted: list[str]) -> float:
        return float(np.nanmean([p[lab.index(w)] if w in lab else np.nan
                                 for p, lab, w in zip(sc["probs_norm"], sc["labels"], wanted)]))

    t = [true_labels[i] for i in ps.fact_index]
    rows = [dict(metric="acc_true", value=float(np.mean(pred == np.array(t, dtype=object)))),
            dict(metric="p_true", value=prob_of(t))]
    if which == "forget" and all(v is not None for v in new_labels):
        nl = [new_labels[i] for i in ps.fact_index]
        rows += [dict(metric="acc_new", value=float(np.mean(pred == np.array(nl, dtype=object)))),
                 dict(metric="p_new", value=prob_of(nl))]
    return [dict(r, set="forget" if which == "forget" else "maintain", format=fmt, n=len(ps)) for r in rows]


def _unrelated_rows(model, facts: pd.DataFrame, batch_size: int) -> list[dict]:
    dataset = facts.attrs.get("dataset", "sports" if "athlete" in facts else "counterfact")
    if dataset == "sports":
        ps, answers, fmt = sports_prompts(facts, "fact", sports=SPORTS), facts["sport"].tolist(), "fact"
    else:
        ps, answers, fmt = counterfact_prompts(facts, "cf_prompt"), ["target_true"] * len(facts), "cf_prompt"
    sc = score_set(model, ps, answers, batch_size=batch_size, progress=False)
    return [dict(set="unrelated", format=fmt, metric="acc_true", value=float(sc["correct"].mean()), n=len(sc)),
            dict(set="unrelated", format=fmt, metric="p_true", value=float(sc["p_answer_norm"].mean()), n=len(sc))]


@torch.no_grad()
def general_text_loss(model, paragraphs: list[str], tokens: int = 128, batch_size: int = 8) -> float:
    """Mean next-token loss over the first ``tokens`` tokens of each paragraph (BOS first if the model's tokenizer adds it)."""
    tok = model.tokenizer
    seqs = [ids[: tokens + 1] for ids in encode_prompts(model, paragraphs)]
    total, count = 0.0, 0
    for s in range(0, len(seqs), batch_size):
        ids, mask, _ = pad_right(seqs[s : s + batch_size], tok.pad_token_id or 0)
        n = int(mask[:, 1:].sum())
        total += float(lm_loss(model, ids, mask, chunk=256)) * n
        count += n
    return total / count


@torch.no_grad()
def generate(model, prompts: list[str], max_new_tokens: int = 6) -> list[str]:
    """Greedy continuations (``hf_model(model).generate``), one prompt at a time (no padding)."""
    hf, tok, dev = hf_model(model), model.tokenizer, device_of(model)
    out = []
    for p in prompts:
        enc = tok(p, return_tensors="pt")
        ids = hf.generate(input_ids=enc["input_ids"].to(dev), attention_mask=enc["attention_mask"].to(dev),
                          max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
        out.append(tok.decode(ids[0, enc["input_ids"].shape[1]:], skip_special_tokens=True))
    return out


def _generation_rows(model, task, n: int, max_new_tokens: int) -> list[dict]:
    facts = task.forget.head(n)
    if len(facts) == 0 or n <= 0:
        return []
    ps = task.prompt_set("forget", task.train_format)
    first = {}
    for prompt, i in zip(ps.prompts, ps.fact_index):
        first.setdefault(i, prompt)
    idx = list(range(len(facts)))
    texts = generate(model, [first[i] for i in idx], max_new_tokens)
    col = "athlete" if task.dataset == "sports" else "subject"
    rows, hits_true, hits_new = [], [], []
    for i, text in zip(idx, texts):
        r = facts.iloc[i]
        true, new = str(r["true_answer"]), (None if pd.isna(r.get("new_answer")) else str(r["new_answer"]))
        mt, mn = true.lower() in text.lower(), bool(new) and new.lower() in text.lower()
        hits_true.append(mt)
        hits_new.append(mn)
        rows.append(dict(set="generation", format=task.train_format, metric="sample", value=float(mn), n=1,
                         item=str(r[col]), text=text))
    rows += [dict(set="generation", format=task.train_format, metric="mentions_true", value=float(np.mean(hits_true)), n=len(idx)),
             dict(set="generation", format=task.train_format, metric="mentions_new", value=float(np.mean(hits_new)), n=len(idx))]
    return rows


def _measure(model, task, formats, unrelated, n_paragraphs, lm_tokens, n_generate, max_new_tokens, batch_size,
             progress, stage, mcq_debiased: int = 0) -> list[dict]:
    jobs = [("forget", f) for f in formats] + [("maintain_eval", f) for f in formats]
    rows = []
    for which, fmt in tqdm(jobs, desc=f"evaluate ({stage})", disable=not progress, leave=False):
        rows += _accuracy_rows(model, task, which, fmt, batch_size)
    if mcq_debiased:
        rows += debiased_mcq_rows(model, task, "forget", batch_size=batch_size)
        rows += debiased_mcq_rows(model, task, "maintain_eval", limit=mcq_debiased, batch_size=batch_size)
    if unrelated is not None and len(unrelated):
        rows += _unrelated_rows(model, unrelated, batch_size)
    if n_paragraphs:
        paras = general_text("eval", exclude=task.subjects)[:n_paragraphs]
        rows.append(dict(set="general_text", format="text", metric="lm_loss",
                         value=general_text_loss(model, paras, lm_tokens), n=len(paras)))
    if n_generate:
        rows += _generation_rows(model, task, n_generate, max_new_tokens)
    return rows


def evaluate(model, task, result: EditResult | None = None, *, baseline: pd.DataFrame | None = None,
             formats: tuple[str, ...] | None = None, unrelated: pd.DataFrame | None = None, n_unrelated: int = 48,
             n_paragraphs: int = 8, lm_tokens: int = 128, n_generate: int = 3, max_new_tokens: int = 6,
             batch_size: int = 32, seed: int | None = None, progress: bool = True, mcq_debiased: int = 0
             ) -> pd.DataFrame:
    """The robustness table of one edit (or of the base model when ``result`` is None).

    Args:
        model: the base model (an edit's delta is applied only while measuring ``"after"``).
        task: the :class:`~mechunlearn_nb.tasks.Task` the edit was trained on.
        result: the edit; ``None`` measures the base model alone (stage ``"before"``,
            localization ``"base"``) — pass that table as ``baseline`` to many edits of the task.
        baseline: a base-model table of this task from an earlier call, reused for ``"before"``.
        formats: default: all of the task's formats.
        unrelated: facts of the other dataset (:func:`unrelated_facts`); default: built here on the
            base model from ``n_unrelated`` known facts (0: skip).
        n_paragraphs: held-out general-text paragraphs for the loss (0: skip).
        lm_tokens: tokens per paragraph.
        n_generate: forget facts whose greedy continuation is recorded (0: skip).
        max_new_tokens: length of those continuations.
        seed: recorded in the table (default: the edit's seed).
        mcq_debiased: also the debiased multiple choice (:func:`debiased_mcq_rows`, format ``"mcq_debiased"``)
            of every forget fact and of this many held-out maintain facts (0: skip).

    Returns:
        The long table: ``task, dataset, localization, seed, stage, set, format, metric, value, n,
        item, text`` (``item``/``text`` only for generation samples).
    """
    for name, value in dict(n_unrelated=n_unrelated, n_paragraphs=n_paragraphs, n_generate=n_generate).items():
        check_int(name, value, min=0)
    for name, value in dict(lm_tokens=lm_tokens, max_new_tokens=max_new_tokens, batch_size=batch_size).items():
        check_int(name, value, min=1)
    seed = check_int("seed", seed, min=0, none=True)
    formats = tuple(formats or task.formats)
    unknown = [f for f in formats if f not in task.formats]
    if unknown:
        raise ValueError(f"Format(s) {unknown} do not apply to a {task.dataset} task; choose from {task.formats}.")
    if result is not None and result.delta.is_applied(model):
        raise RuntimeError("The edit's delta is already applied to this model; evaluate() needs the base model "
                           "and applies the delta itself. Fix: result.revert(model) first.")
    # "before" must be the base model: another edit left applied would be measured as the baseline
    require_base_model(model, "evaluate()")
    if unrelated is None and n_unrelated:
        unrelated = unrelated_facts(model, task, n=n_unrelated)
    mcq_debiased = check_int("mcq_debiased", mcq_debiased, min=0)
    args = (formats, unrelated, n_paragraphs, lm_tokens, n_generate, max_new_tokens, batch_size, progress)
    if baseline is not None:
        before = baseline[baseline["stage"] == "before"].to_dict("records")
        if not before or set(baseline["task"]) != {task.name}:
            raise ValueError(f"baseline is not a base-model table of task {task.name!r}. Fix: pass evaluate(model, task).")
    else:
        before = _measure(model, task, *args, "before", mcq_debiased)
    rows = [dict(r, stage="before") for r in before]
    if result is not None:
        with result.applied(model):
            rows += [dict(r, stage="after") for r in _measure(model, task, *args, "after", mcq_debiased)]
    label = result.localization if result is not None else "base"
    seed = seed if seed is not None else (result.seed if result is not None else 0)
    table = pd.DataFrame(rows)
    table = table.assign(task=task.name, dataset=task.dataset, localization=label, seed=seed)
    for col in ("item", "text"):
        if col not in table:
            table[col] = ""
        table[col] = table[col].fillna("")
    return table.reindex(columns=COLUMNS)


def accuracy_table(tables: pd.DataFrame | list[pd.DataFrame], stage: str = "after") -> pd.DataFrame:
    """Wide view: one row per (task, localization), columns ``<set>/<metric>/<format>`` (accuracies and loss)."""
    table = pd.concat(tables, ignore_index=True) if isinstance(tables, list) else tables
    keep = table[(table["stage"] == stage) & table["metric"].isin(["acc_true", "acc_new", "lm_loss", "mentions_new"])]
    wide = keep.pivot_table(index=["task", "localization"], columns=["set", "metric", "format"], values="value", aggfunc="mean")
    wide.columns = ["/".join(c) for c in wide.columns]
    return wide.reset_index()


def sport_probabilities(model, athlete: str, formats=SPORTS_FORMATS) -> pd.DataFrame:
    """Normalised probability of each sport for one athlete, in every sports format (tidy)."""
    athlete = athlete.strip()
    if not athlete:
        raise ValueError("Type an athlete's name.")
    facts = pd.DataFrame({"athlete": [athlete]})
    rows = []
    for fmt in formats:
        sc = score_set(model, sports_prompts(facts, fmt), progress=False)
        for label, p in zip(sc["labels"][0], sc["probs_norm"][0]):
            rows.append(dict(format=fmt, sport=label, probability=float(p)))
    return pd.DataFrame(rows)


def athlete_before_after(model, athlete: str, results: dict[str, EditResult], formats=SPORTS_FORMATS) -> pd.DataFrame:
    """Normalised sport probabilities for one athlete in every format: the base model and each edit.

    Returns:
        Tidy: ``model, format, sport, probability`` (``model`` is ``"base"`` or the edit's name).
    """
    frames = [sport_probabilities(model, athlete, formats).assign(model="base")]
    for name, res in results.items():
        with res.applied(model):
            frames.append(sport_probabilities(model, athlete, formats).assign(model=name))
    return pd.concat(frames, ignore_index=True)[["model", "format", "sport", "probability"]]


# ---------------------------------------------------------------------------
# Instruments that say whether they work on this model
# ---------------------------------------------------------------------------
#
# A robustness claim ("the edit carried over to multiple choice") can only be tested by an
# instrument on which the *unedited* model answers its held-out known facts better than chance:
# if the base model picks its favourite letter whatever the question, an edit that moves that
# letter changes the score without changing what the model knows. So every instrument below
# reports its base accuracy with a binomial interval and its chance level, and
# :func:`testability` calls it testable only where the interval clears chance by a declared margin.
#
# Multiple choice is scored in several ways at once (:func:`debiased_mcq`):
#
# - ``letter``: the probability of the answer letter after ``Answer:`` (the paper's scoring);
# - ``text``: the probability of the option's own text as the answer (mean log-probability per
#   token), which a letter preference cannot move;
# - ``fixed order`` (the question as the grid asks it) or ``cyclic orders``: the question asked in
#   all cyclic orders of its options (each option once at each letter), the option probabilities
#   averaged over the orders;
# - ``calibrated``: contextual calibration (Zhao et al. 2021): each option's probability divided by
#   the probability the model gives it when the question is replaced by a content-free "N/A".

#: The confidence level of every instrument's interval.
CONFIDENCE = 0.95
#: How far the lower end of the base accuracy's interval must lie above chance for an instrument to
#: count as testable. Why 0.10: an edit is read as the accuracy falling towards chance, so the base
#: must stand clear of chance by more than the noise of the held-out sets this runs on (a Wilson
#: interval on 100-300 facts is +-0.05-0.10 wide); with less room, "fell to chance" and "was at
#: chance" cannot be told apart on the sizes the notebooks use.
TESTABILITY_MARGIN = 0.10
TESTABLE, UNTESTABLE = "testable", "untestable on this model"
INSTRUMENT_COLUMNS = ["instrument", "variant", "scoring", "orders", "calibrated", "accuracy", "n", "correct",
                      "ci_low", "ci_high", "chance"]


def binomial_interval(correct: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson score interval of ``correct`` successes in ``n`` trials (``scipy.stats.binomtest``)."""
    from scipy.stats import binomtest

    n = check_int("n", n, min=1)
    correct = check_int("correct", correct, min=0, max=n)
    ci = binomtest(correct, n).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def calibrate(probs: np.ndarray, content_free: np.ndarray) -> np.ndarray:
    """Contextual calibration (Zhao et al. 2021): ``probs / content_free``, renormalised over the last axis.

    Args:
        probs: option probabilities (``... × options``), each row normalised or not.
        content_free: the probabilities the model gives the same options for a content-free input
            (same shape, or broadcastable).

    Returns:
        Calibrated probabilities, each row summing to 1: an option the model favours whatever the
        question loses exactly that favour.
    """
    probs, content_free = np.asarray(probs, dtype=float), np.asarray(content_free, dtype=float)
    if (content_free <= 0).any() or not np.isfinite(content_free).all():
        raise ValueError("Content-free probabilities must be positive and finite to divide by.")
    probs = probs / probs.sum(-1, keepdims=True)
    content_free = content_free / content_free.sum(-1, keepdims=True)
    q = probs / content_free
    return q / q.sum(-1, keepdims=True)


def _normalise_logp(logps: np.ndarray) -> np.ndarray:
    return np.exp(logps - np.logaddexp.reduce(logps, axis=-1, keepdims=True))


def _mcq_logps(model, prompt_set, shown: list[list[str]], batch_size: int, scorings: tuple[str, ...]
               ) -> dict[str, np.ndarray]:
    """Letter and option-text log-probabilities (items × letters) of one order's prompts."""
    from .scoring import answer_tokens, candidate_logprobs, text_logprobs

    letters = prompt_set.candidates
    texts = [[f" {o}" for o in opts] for opts in shown]
    out = {}
    one_pass = "text" in scorings and "letter" in scorings and all(
        len(answer_tokens(model, t)) == 1 for row in texts for t in row)
    if one_pass:  # every option is one token: letters and texts come from the same last-position logits
        firsts = [[answer_tokens(model, c)[0] for c in lt + tx] for lt, tx in zip(letters, texts)]
        one_pass = all(len(set(f)) == len(f) for f in firsts)
    if one_pass:
        lp = candidate_logprobs(model, prompt_set.prompts, [lt + tx for lt, tx in zip(letters, texts)],
                                batch_size=batch_size, progress=False)
        k = len(letters[0])
        return {"letter": np.stack([x[:k] for x in lp]), "text": np.stack([x[k:] for x in lp])}
    if "letter" in scorings:
        out["letter"] = np.stack(candidate_logprobs(model, prompt_set.prompts, letters, batch_size=batch_size,
                                                    progress=False))
    if "text" in scorings:
        out["text"] = np.stack(text_logprobs(model, prompt_set.prompts, texts, batch_size=batch_size))
    return out


def mcq_option_probs(model, questions: list[str], options: list[list[str]], prefix: str = "",
                     orders: list[tuple[int, ...]] | None = None, scorings: tuple[str, ...] = ("letter", "text"),
                     batch_size: int = 32, progress: bool = False) -> dict[tuple[str, bool], np.ndarray]:
    """Normalised option probabilities of multiple-choice items, in each order, with and without the question.

    Args:
        questions, options: the items (:func:`~mechunlearn_nb.prompts.sports_mcq_items` and friends);
            every item has the same number of options.
        prefix: text before each question (a system prompt and its newline).
        orders: the option orders (default: :func:`~mechunlearn_nb.prompts.cyclic_orders`, order 0 first).
        scorings: ``"letter"`` and/or ``"text"``.

    Returns:
        ``{(scoring, content_free): array orders × items × options}``, the options in each item's
        own order (so column ``j`` is option ``j`` whatever letter it was shown at), normalised over
        the options. ``content_free=True`` holds the same prompts with the question replaced by
        :data:`~mechunlearn_nb.prompts.CONTENT_FREE`.
    """
    from .prompts import PromptSet, cyclic_orders, mcq_prompts

    batch_size = check_int("batch_size", batch_size, min=1)
    unknown = [s for s in scorings if s not in ("letter", "text")]
    if unknown or not scorings:
        raise ValueError(f"Unknown scoring(s) {unknown or scorings!r}; choose among ('letter', 'text').")
    sizes = {len(o) for o in options}
    if len(sizes) != 1:
        raise ValueError(f"Every item needs the same number of options; got {sorted(sizes)}.")
    n_opts = sizes.pop()
    orders = orders or cyclic_orders(n_opts)
    out: dict[tuple[str, bool], list[np.ndarray]] = {}
    for order in tqdm(orders, desc="multiple choice orders", disable=not progress, leave=False):
        shown = [[opts[j] for j in order] for opts in options]
        inverse = np.argsort(order)  # column j of the result: the letter option j was shown at
        for content_free in (False, True):
            ps = mcq_prompts(questions, options, order, prefix=prefix, content_free=content_free)
            if content_free:  # items with the same options share their content-free prompt: score each once
                first: dict[str, int] = {}
                for i, text in enumerate(ps.prompts):
                    first.setdefault(text, i)
                keep = list(first.values())
                sub = PromptSet([ps.prompts[i] for i in keep], [ps.candidates[i] for i in keep],
                                [ps.labels[i] for i in keep], list(range(len(keep))), ps.format)
                logps = _mcq_logps(model, sub, [shown[i] for i in keep], batch_size, scorings)
                slot = {i: r for r, i in enumerate(keep)}
                rows = [slot[first[text]] for text in ps.prompts]
                logps = {k: v[rows] for k, v in logps.items()}
            else:
                logps = _mcq_logps(model, ps, shown, batch_size, scorings)
            for scoring, lp in logps.items():
                out.setdefault((scoring, content_free), []).append(_normalise_logp(lp)[:, inverse])
    return {k: np.stack(v) for k, v in out.items()}


def accuracy_row(instrument: str, variant: str, correct, chance: float, confidence: float = CONFIDENCE, **extra) -> dict:
    """One row of an instrument table: accuracy of a boolean array, its Wilson interval and the chance level."""
    correct = np.asarray(correct, dtype=bool)
    if correct.size == 0:
        raise ValueError(f"{instrument} / {variant}: no answers to score.")
    k, n = int(correct.sum()), int(correct.size)
    lo, hi = binomial_interval(k, n, confidence)
    return dict(instrument=instrument, variant=variant, accuracy=k / n, n=n, correct=k, ci_low=lo, ci_high=hi,
                chance=float(chance), **extra)


def debiased_mcq(model, questions: list[str], options: list[list[str]], answers: list[int], instrument: str = "mcq",
                 prefix: str = "", scorings: tuple[str, ...] = ("letter", "text"), batch_size: int = 32,
                 confidence: float = CONFIDENCE, progress: bool = False) -> pd.DataFrame:
    """Multiple-choice accuracy in every variant: letter / option text × fixed / cyclic orders × calibrated or not.

    ``fixed order`` asks each question once, options in the item's own order (for the sports and
    CounterFact items: exactly the ``mcq`` / ``cf_mcq`` format, so its letter accuracy is the
    grid's number); ``cyclic orders`` asks it in every cyclic order and averages each option's
    probability over the orders before taking the most probable; ``calibrated`` divides by the
    content-free probabilities (:func:`calibrate`) in each order first.

    Args:
        questions, options, answers: the items and the index of each one's answer in its options.
        instrument: the name in the table's ``instrument`` column (e.g. ``"mcq"``, ``"mcq_nosys"``).
        prefix: text before each question (the ``mcq`` format's system prompt and newline).
        scorings: ``"letter"`` and/or ``"text"`` (option-text scoring costs one forward pass per
            option when options span several tokens).

    Returns:
        One row per variant: ``instrument, variant, scoring, orders, calibrated, accuracy, n, correct,
        ci_low, ci_high, chance`` (chance: one over the number of options).
    """
    answers = np.asarray(answers)
    if len(answers) != len(questions):
        raise ValueError(f"{len(questions)} questions but {len(answers)} answers.")
    probs = mcq_option_probs(model, questions, options, prefix=prefix, scorings=scorings, batch_size=batch_size,
                             progress=progress)
    n_opts = len(options[0])
    if ((answers < 0) | (answers >= n_opts)).any():
        raise ValueError(f"answers must be option indices 0..{n_opts - 1}.")
    rows = []
    for scoring in scorings:
        p, cf = probs[(scoring, False)], probs[(scoring, True)]
        for calibrated in (False, True):
            q = calibrate(p, cf) if calibrated else p
            for orders, qq in (("fixed order", q[:1]), ("cyclic orders", q)):
                pred = qq.mean(0).argmax(-1)
                variant = f"{scoring}, {orders}" + (", calibrated" if calibrated else "")
                rows.append(accuracy_row(instrument, variant, pred == answers, 1.0 / n_opts, confidence,
                                         scoring=scoring, orders=orders, calibrated=calibrated))
    return pd.DataFrame(rows).reindex(columns=INSTRUMENT_COLUMNS)


def format_accuracy(model, prompt_set, answers: list[str], instrument: str | None = None, batch_size: int = 32,
                    confidence: float = CONFIDENCE) -> pd.DataFrame:
    """Accuracy of one prompt format (argmax over its candidates), with interval and chance (one row).

    ``n`` counts prompts (CounterFact paraphrases: two per fact); chance is one over the number of
    candidates.
    """
    sc = score_set(model, prompt_set, answers, batch_size=batch_size, progress=False)
    chance = float(np.mean([1.0 / len(c) for c in prompt_set.candidates]))
    row = accuracy_row(instrument or prompt_set.format, "argmax over candidates", sc["correct"].to_numpy(), chance,
                       confidence, scoring="answer", orders="fixed order", calibrated=False)
    return pd.DataFrame([row]).reindex(columns=INSTRUMENT_COLUMNS)


#: MMLU questions scored at FAST size (a seeded sample of the vendored test split)
MMLU_FAST = 40


def mmlu_accuracy(model, n: int = 200, seed: int = 0, subjects: list[str] | None = None,
                  scorings: tuple[str, ...] = ("letter", "text"), batch_size: int = 16,
                  confidence: float = CONFIDENCE) -> pd.DataFrame:
    """MMLU accuracy in every multiple-choice variant (:func:`debiased_mcq`), on a seeded sample of ``n`` questions.

    A side-effect measure: an edit should leave general knowledge alone, which can only be read
    where the base model answers MMLU above chance (:func:`testability`).
    """
    from .prompts import mmlu_items

    n = check_int("n", n, min=1)
    seed = check_int("seed", seed, min=0)
    pool = _data.load_mmlu(subjects)
    sample = pool.sample(min(n, len(pool)), random_state=seed).reset_index(drop=True)
    q, o, a = mmlu_items(sample)
    return debiased_mcq(model, q, o, a, instrument="mmlu", scorings=scorings, batch_size=batch_size,
                        confidence=confidence)


def debiased_mcq_rows(model, task, which: str = "forget", limit: int | None = None, batch_size: int = 32
                      ) -> list[dict]:
    """The debiased multiple choice of a task's facts as evaluation rows (``format="mcq_debiased"``).

    The variant the unedited model answers best on held-out athletes (``results/instruments/``): each option's
    *text* scored after ``Answer:`` in every cyclic order of the options, calibrated by the content-free
    prompt, averaged over the orders; sports items carry the ``mcq`` format's system prompt. Rows:
    ``acc_true, p_true`` (and ``acc_new, p_new`` on the forget facts of an edit), ``n`` the items scored
    (CounterFact facts without a vendored question are left out).

    Args:
        which: ``"forget"`` or ``"maintain_eval"``.
        limit: score only the first this many facts (None: all).
    """
    from .prompts import MCQ_SPORTS, SYSTEM_PROMPT, counterfact_mcq_items, sports_mcq_items

    facts = task.facts(which).reset_index(drop=True)
    if limit is not None:
        facts = facts.iloc[: check_int("limit", limit, min=1)]
    new_col = facts["new_answer"] if "new_answer" in facts else pd.Series([None] * len(facts))
    if task.dataset == "sports":
        questions, options, true = sports_mcq_items(facts)
        prefix = SYSTEM_PROMPT + "\n"
        new = [MCQ_SPORTS.index(a) if isinstance(a, str) and a in MCQ_SPORTS else -1 for a in new_col]
    else:
        questions, options, true, idx = counterfact_mcq_items(facts)
        prefix = ""
        new = [opts.index(t) if t in opts else -1 for opts, t in zip(options, facts["target_new"].iloc[idx])]
    probs = mcq_option_probs(model, questions, options, prefix=prefix, scorings=("text",), batch_size=batch_size)
    p = calibrate(probs[("text", False)], probs[("text", True)]).mean(0)
    rows_idx = np.arange(len(true))
    pred, true, new = p.argmax(-1), np.asarray(true), np.asarray(new)
    rows = [dict(metric="acc_true", value=float((pred == true).mean())), dict(metric="p_true", value=float(p[rows_idx, true].mean()))]
    if which == "forget" and (new >= 0).all():
        rows += [dict(metric="acc_new", value=float((pred == new).mean())), dict(metric="p_new", value=float(p[rows_idx, new].mean()))]
    return [dict(r, set="forget" if which == "forget" else "maintain", format="mcq_debiased", n=len(true)) for r in rows]


def testability(table: pd.DataFrame, margin: float = TESTABILITY_MARGIN) -> pd.DataFrame:
    """Whether each instrument (variant) can test a claim on this model.

    An instrument is ``"testable"`` when the lower end of its base accuracy's interval lies above
    ``chance + margin``; otherwise ``"untestable on this model"`` — a claim it measures cannot
    be decided by it, and says so with these numbers.

    Args:
        table: rows of :func:`debiased_mcq`, :func:`format_accuracy` or :func:`mmlu_accuracy` on the
            *unedited* model (held-out known facts).
        margin: :data:`TESTABILITY_MARGIN` by default.

    Returns:
        The table plus ``threshold`` (chance + margin), ``margin`` and ``verdict``.
    """
    margin = check_float("margin", margin, 0.0, 1.0)
    need = {"accuracy", "ci_low", "chance"}
    if not need <= set(table.columns):
        raise ValueError(f"testability needs columns {sorted(need)}; got {list(table.columns)}. Fix: pass the table of "
                         "debiased_mcq, format_accuracy or mmlu_accuracy.")
    out = table.copy()
    out["margin"] = margin
    out["threshold"] = out["chance"] + margin
    out["verdict"] = np.where(out["ci_low"] > out["threshold"], TESTABLE, UNTESTABLE)
    return out

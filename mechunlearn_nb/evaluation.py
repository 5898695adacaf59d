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
from .checks import check_int
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
             progress, stage) -> list[dict]:
    jobs = [("forget", f) for f in formats] + [("maintain_eval", f) for f in formats]
    rows = []
    for which, fmt in tqdm(jobs, desc=f"evaluate ({stage})", disable=not progress, leave=False):
        rows += _accuracy_rows(model, task, which, fmt, batch_size)
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
             batch_size: int = 32, seed: int | None = None, progress: bool = True) -> pd.DataFrame:
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
    args = (formats, unrelated, n_paragraphs, lm_tokens, n_generate, max_new_tokens, batch_size, progress)
    if baseline is not None:
        before = baseline[baseline["stage"] == "before"].to_dict("records")
        if not before or set(baseline["task"]) != {task.name}:
            raise ValueError(f"baseline is not a base-model table of task {task.name!r}. Fix: pass evaluate(model, task).")
    else:
        before = _measure(model, task, *args, "before")
    rows = [dict(r, stage="before") for r in before]
    if result is not None:
        with result.applied(model):
            rows += [dict(r, stage="after") for r in _measure(model, task, *args, "after")]
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

"""Fair edits: a learning rate per localization, chosen by a declared rule on a seed no test uses.

A comparison of localizations is unfair when one learning rate, tuned for one of them, is given to all: a
localization that under-fits at that rate looks "less robust" because its edit never took hold. Here each
localization gets its own rate, chosen on a *tuning seed* (a task drawn with a seed that is never a test seed)
from a few candidates around its kind's default (:data:`.editing.DEFAULTS`), by a rule fixed before any test
cell runs:

1. an edit is **complete** when its accuracy on the prompts it was trained on reaches ``completeness``
   (the new answer's accuracy for an injection; one minus the true answer's for unlearning);
2. among the complete edits, the rate with the highest accuracy on *held-out* maintain facts wins (ties:
   the smaller change of the general-text loss, then the smaller rate);
3. when no candidate is complete and the plan declares ``fallback_steps``, the same candidates are tried again
   with that many edit steps (an edit that under-fits in the usual number of steps gets more of them, not a
   larger rate); the rule then chooses among those trials, and the chosen steps go with the rate;
4. when still no candidate is complete, the rate with the highest training accuracy is chosen and marked
   incomplete: its test cells will be reported and excluded, not averaged in.

Every edit goes through :func:`.editing.edit` (the one training loop) and every measurement through
:func:`.evaluation.evaluate`.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from . import editing, evaluation
from .checks import check_float
from .localization import Localization

#: the candidates tried per localization: its kind's default rate times each factor
FACTORS = (0.5, 1.0, 2.0)

COLUMNS = ["localization", "lr", "steps", "train_acc", "complete", "heldout_maintain_acc", "lm_loss_change", "seconds"]


def train_accuracy(result: editing.EditResult) -> float:
    """The edit's final accuracy on its own trained prompts: the new answer's (injection) or one minus the true
    answer's (unlearning)."""
    final = result.final()
    if result.config.objective == "injection":
        return final.get("edit_acc", float("nan"))
    return 1.0 - final.get("forget_acc", float("nan"))


def choose_rate(trials: pd.DataFrame, completeness: float) -> dict:
    """The rule of this module applied to one localization's trials (rows of :data:`COLUMNS`).

    Returns:
        ``{"lr", "steps", "complete", "reason"}`` (``steps``: the chosen trial's edit steps; None when the trials
        do not record them).
    """
    completeness = check_float("completeness", completeness, min=0)
    if not len(trials):
        raise ValueError("No trials to choose a rate from. Fix: run tune_rates with at least one candidate rate.")

    def steps(row):
        value = row.get("steps")
        return None if value is None or pd.isna(value) else int(value)

    done = trials[trials["train_acc"] >= completeness]
    if len(done):
        best = done.sort_values(["heldout_maintain_acc", "lm_loss_change", "lr"], ascending=[False, True, True]).iloc[0]
        return dict(lr=float(best["lr"]), steps=steps(best), complete=True,
                    reason=f"complete (training accuracy {best['train_acc']:.3f} >= {completeness}) with the highest "
                           f"held-out maintain accuracy ({best['heldout_maintain_acc']:.3f})")
    best = trials.sort_values(["train_acc", "lr"], ascending=[False, True]).iloc[0]
    return dict(lr=float(best["lr"]), steps=steps(best), complete=False,
                reason=f"no candidate complete; highest training accuracy {best['train_acc']:.3f} < {completeness}")


def tune_rates(model, task, localizations: dict[str, Localization], completeness: float,
               factors: Sequence[float] = FACTORS, seed: int = 0, edit_overrides: dict | None = None,
               eval_overrides: dict | None = None, progress: bool = True, on_trial=None,
               fallback_steps: int | None = None, previous: pd.DataFrame | None = None) -> tuple[dict, pd.DataFrame]:
    """Choose a learning rate for each localization on ``task`` (built with the tuning seed).

    Args:
        localizations: ``label -> Localization``.
        completeness: the declared completeness (e.g. a plan's ``edit_completeness``).
        factors: candidates are each localization kind's default rate times these.
        seed: the edits' seed (batches, general-text windows).
        edit_overrides: other :class:`~mechunlearn_nb.editing.EditConfig` fields (not ``lr``).
        eval_overrides: other :func:`~mechunlearn_nb.evaluation.evaluate` arguments.
        on_trial: called with each trial's row as it finishes (e.g. to save it).
        fallback_steps: a localization with no complete edit at any candidate is tried again at every candidate
            with this many edit steps, and chosen among those trials (None: no second try).
        previous: trials already run (rows of :data:`COLUMNS`, e.g. read back from disk after an interruption); a
            (localization, rate, steps) found there is not run again, and its row is used as it is.

    Returns:
        ``({label: {"lr", "steps", "complete", "reason"}}, trials)``; ``trials`` has one row per (localization,
        rate, steps) of this choice.
    """
    edit_overrides = dict(edit_overrides or {})
    if "lr" in edit_overrides:
        raise ValueError("edit_overrides sets 'lr', the value being tuned. Fix: leave it out (the candidates are the "
                         "kind's default times `factors`).")
    if not factors or any(not f > 0 for f in factors):
        raise ValueError(f"factors must be positive numbers, got {list(factors)}. Fix: e.g. factors=(0.5, 1, 2).")
    eval_args = {"formats": (task.train_format,), "n_unrelated": 0, "n_paragraphs": 4, "n_generate": 0,
                 **(eval_overrides or {}), "progress": False}
    if fallback_steps is not None and (isinstance(fallback_steps, bool) or not isinstance(fallback_steps, int)
                                       or fallback_steps < 1):
        raise ValueError(f"fallback_steps must be a positive number of edit steps or None, got {fallback_steps!r}.")
    previous = (pd.DataFrame(columns=COLUMNS) if previous is None else previous).reindex(columns=COLUMNS)
    base = None
    rows = []

    def trial(label, loc, lr, steps):
        nonlocal base
        cfg = editing.EditConfig.for_localization(loc, **{**edit_overrides, "lr": lr, "steps": steps})
        same = previous[(previous["localization"] == label) & (previous["steps"] == cfg.steps)
                        & ((previous["lr"] - cfg.lr).abs() <= 1e-9 * cfg.lr)]
        if len(same):
            return same.iloc[0].to_dict()
        if base is None:  # the unedited model's scores, once, and only when an edit runs
            base = evaluation.evaluate(model, task, None, **eval_args)
        result = editing.edit(model, loc, task, cfg, seed=seed, progress=progress)
        table = evaluation.evaluate(model, task, result, baseline=base, **eval_args)
        after = table[table["stage"] == "after"].set_index(["set", "metric"])["value"]
        before = table[table["stage"] == "before"].set_index(["set", "metric"])["value"]
        acc = train_accuracy(result)
        row = dict(localization=label, lr=cfg.lr, steps=cfg.steps, train_acc=acc, complete=bool(acc >= completeness),
                   heldout_maintain_acc=float(after[("maintain", "acc_true")]),
                   lm_loss_change=float(after[("general_text", "lm_loss")] - before[("general_text", "lm_loss")]),
                   seconds=result.manifest["seconds"])
        if on_trial is not None:
            on_trial(row)
        return row

    chosen = {}
    for label, loc in localizations.items():
        first = editing.EditConfig.for_localization(loc, **edit_overrides)
        mine = [trial(label, loc, first.lr * f, first.steps) for f in factors]
        if fallback_steps is not None and not any(r["train_acc"] >= completeness for r in mine):
            again = [trial(label, loc, first.lr * f, fallback_steps) for f in factors]
            mine += again
            chosen[label] = choose_rate(pd.DataFrame(again, columns=COLUMNS), completeness)
        else:
            chosen[label] = choose_rate(pd.DataFrame(mine, columns=COLUMNS), completeness)
        rows += mine
    trials = pd.DataFrame(rows, columns=COLUMNS)
    return chosen, trials

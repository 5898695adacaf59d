"""Per-localization learning rates (tuning.py): the declared rule, and a sweep on the tiny model."""

import pandas as pd
import pytest

from mechunlearn_nb import data, editing, tasks, tuning
from mechunlearn_nb.localization import Localization


def trials(rows):
    return pd.DataFrame([dict(zip(["lr", "train_acc", "heldout_maintain_acc", "lm_loss_change"], r)) for r in rows])


def test_the_complete_rate_that_keeps_most_held_out_facts_wins():
    t = trials([(1e-4, 0.90, 0.95, 0.0), (2e-4, 1.00, 0.80, 0.1), (4e-4, 0.97, 0.85, 0.3)])
    chosen = tuning.choose_rate(t, completeness=0.95)
    # 1e-4 keeps the most held-out facts but its edit is incomplete: it cannot win
    assert chosen["lr"] == 4e-4 and chosen["complete"] and "0.850" in chosen["reason"]
    # a tie on held-out accuracy goes to the smaller change of the general-text loss, then the smaller rate
    tie = trials([(2e-4, 1.0, 0.9, 0.2), (4e-4, 1.0, 0.9, 0.1), (8e-4, 1.0, 0.9, 0.1)])
    assert tuning.choose_rate(tie, 0.95)["lr"] == 4e-4


def test_no_complete_rate_is_chosen_and_marked_incomplete():
    chosen = tuning.choose_rate(trials([(1e-4, 0.5, 0.99, 0.0), (2e-4, 0.8, 0.7, 0.0)]), completeness=0.95)
    assert chosen == dict(lr=2e-4, steps=None, complete=False, reason=chosen["reason"])
    assert "no candidate complete" in chosen["reason"]
    with pytest.raises(ValueError, match="No trials"):
        tuning.choose_rate(trials([]).reindex(columns=tuning.COLUMNS), 0.95)


def test_tune_rates_edits_at_each_candidate_through_the_training_loop(tiny):
    known = data.load_sports().head(200)  # the tiny random model knows nothing: treat these as known
    task = tasks.edit_athletes(tiny, n=4, seed=100, known=known, max_maintain=8)
    locs = {"fact lookup": Localization.from_components(tiny, ["m1"], name="fact lookup"),
            "random": Localization.from_components(tiny, ["m0"], name="random")}
    seen = []
    overrides = dict(steps=2, batch_size=2, maintain_batch_size=2, lm_tokens=8, lm_window=8, eval_every=0)
    chosen, table = tuning.tune_rates(tiny, task, locs, completeness=0.95, factors=(0.5, 2.0), seed=100,
                                      edit_overrides=overrides, eval_overrides={"n_paragraphs": 1, "lm_tokens": 16},
                                      progress=False, on_trial=seen.append)
    default = editing.EditConfig.for_localization(locs["random"]).lr
    assert len(table) == 4 and len(seen) == 4
    assert sorted(table[table["localization"] == "random"]["lr"]) == pytest.approx([default * 0.5, default * 2.0])
    for label in locs:  # the choice is the rule applied to that localization's own trials
        assert chosen[label] == tuning.choose_rate(table[table["localization"] == label], 0.95)
    assert table["seconds"].gt(0).all() and table["complete"].eq(table["train_acc"] >= 0.95).all()
    with pytest.raises(ValueError, match="lr"):
        tuning.tune_rates(tiny, task, locs, 0.95, edit_overrides={"lr": 1e-3})


def test_an_edit_that_never_completes_gets_the_fallback_steps_and_a_rerun_reads_trials_back(tiny):
    """No candidate complete at the usual steps: every candidate is tried again with ``fallback_steps`` and the
    choice is made among those; trials given as ``previous`` are not run again."""
    known = data.load_sports().head(200)
    task = tasks.edit_athletes(tiny, n=4, seed=100, known=known, max_maintain=8)
    locs = {"random": Localization.from_components(tiny, ["m0"], name="random")}
    overrides = dict(steps=1, batch_size=2, maintain_batch_size=2, lm_tokens=8, lm_window=8, eval_every=0)
    args = dict(factors=(0.5, 2.0), seed=100, edit_overrides=overrides, eval_overrides={"n_paragraphs": 1, "lm_tokens": 16},
                progress=False)
    ran = []
    # completeness 1.01 cannot be reached: the fallback always runs, and the choice is marked incomplete
    chosen, table = tuning.tune_rates(tiny, task, locs, 1.01, fallback_steps=3, on_trial=ran.append, **args)
    assert sorted(table["steps"]) == [1, 1, 3, 3] and len(ran) == 4
    assert chosen["random"]["steps"] == 3 and not chosen["random"]["complete"]
    assert chosen["random"] == tuning.choose_rate(table[table["steps"] == 3], 1.01)
    # a complete edit at the usual steps (completeness 0): no fallback
    _, table0 = tuning.tune_rates(tiny, task, locs, 0.0, fallback_steps=3, **args)
    assert list(table0["steps"]) == [1, 1]
    # resumed: the four trials are read back, nothing runs
    again = []
    chosen2, table2 = tuning.tune_rates(tiny, task, locs, 1.01, fallback_steps=3, on_trial=again.append,
                                        previous=table, **args)
    assert again == [] and chosen2 == chosen and table2[tuning.COLUMNS].equals(table[tuning.COLUMNS])
    with pytest.raises(ValueError, match="fallback_steps"):
        tuning.tune_rates(tiny, task, locs, 0.95, fallback_steps=0, **args)

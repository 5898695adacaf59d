"""Instruments that say whether they work: debiased multiple choice, intervals, testability (tiny model)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mechunlearn_nb import data, evaluation, prompts, scoring


@pytest.fixture(scope="module")
def athletes():
    return data.load_sports().sample(8, random_state=1).reset_index(drop=True)


@pytest.mark.parametrize("n", [2, 3, 4])
def test_every_cyclic_order_puts_each_option_once_at_each_letter(n):
    orders = prompts.cyclic_orders(n)
    assert len(orders) == n and orders[0] == tuple(range(n))
    for option in range(n):
        assert sorted(order.index(option) for order in orders) == list(range(n))
    # and the prompts show it: across the orders each option text sits once after each letter
    opts = ["football", "baseball", "basketball", "golf"][:n]
    texts = [prompts.mcq_prompts(["Q?"], [opts], order).prompts[0] for order in orders]
    for option in opts:
        letters = [next(L for L in prompts.LETTERS if f"{L}. {option}\n" in t) for t in texts]
        assert sorted(letters) == list(prompts.LETTERS[:n])
    with pytest.raises(ValueError, match="between 1 and 4"):
        prompts.cyclic_orders(5)


def test_order_zero_is_the_mcq_format_the_grid_used(athletes):
    q, o, a = prompts.sports_mcq_items(athletes)
    fixed = prompts.mcq_prompts(q, o, (0, 1, 2, 3), prefix=prompts.SYSTEM_PROMPT + "\n")
    assert fixed.prompts == prompts.sports_prompts(athletes, "mcq").prompts
    free = prompts.mcq_prompts(q, o, (1, 2, 3, 0), content_free=True)
    assert all(p.startswith(f"Question: {prompts.CONTENT_FREE}\nA. baseball\n") for p in free.prompts)


def test_calibration_divides_out_a_letter_bias():
    # the model favours option 0 whatever the question; on this question it leans to option 1 more than usual
    probs = np.array([0.50, 0.30, 0.10, 0.10])
    content_free = np.array([0.70, 0.10, 0.10, 0.10])
    assert probs.argmax() == 0
    calibrated = evaluation.calibrate(probs, content_free)
    assert calibrated.argmax() == 1
    expected = (probs / content_free) / (probs / content_free).sum()
    np.testing.assert_allclose(calibrated, expected)
    # no bias: calibration changes nothing
    np.testing.assert_allclose(evaluation.calibrate(probs, np.full(4, 0.25)), probs)
    with pytest.raises(ValueError, match="positive"):
        evaluation.calibrate(probs, np.array([0.5, 0.5, 0.0, 0.0]))


def test_debiased_mcq_on_the_tiny_model(tiny, athletes):
    q, o, a = prompts.sports_mcq_items(athletes)
    prefix = prompts.SYSTEM_PROMPT + "\n"
    table = evaluation.debiased_mcq(tiny, q, o, a, prefix=prefix)
    assert len(table) == 8 and table["variant"].is_unique
    assert set(table["scoring"]) == {"letter", "text"} and set(table["orders"]) == {"fixed order", "cyclic orders"}
    assert (table["n"] == len(athletes)).all() and np.allclose(table["chance"], 0.25)
    assert ((table["ci_low"] <= table["accuracy"]) & (table["accuracy"] <= table["ci_high"])).all()
    # the fixed-order letter variant is the grid's mcq accuracy, unchanged
    grid = scoring.score_set(tiny, prompts.sports_prompts(athletes, "mcq"), athletes["sport"].tolist(), progress=False)
    fixed = table.set_index("variant").loc["letter, fixed order", "accuracy"]
    assert fixed == pytest.approx(grid["correct"].mean())
    # each variant is the argmax of the probabilities it names: recomputed by hand from the per-order probabilities
    probs = evaluation.mcq_option_probs(tiny, q, o, prefix=prefix)
    assert probs[("letter", False)].shape == (4, len(q), 4)
    np.testing.assert_allclose(probs[("letter", False)].sum(-1), 1.0, rtol=1e-6)
    cal = evaluation.calibrate(probs[("text", False)], probs[("text", True)]).mean(0).argmax(-1)
    by_hand = float(np.mean(cal == np.array(a)))
    assert table.set_index("variant").loc["text, cyclic orders, calibrated", "accuracy"] == pytest.approx(by_hand)


def test_option_text_scoring_handles_multi_token_options(tiny):
    prompt = ["Question: Where is the Eiffel Tower?\nA. Paris\nB. New York City\nAnswer:"]
    options = [[" Paris", " New York City"]]
    assert len(scoring.answer_tokens(tiny, " New York City")) > 1
    got = scoring.text_logprobs(tiny, prompt, options)[0]
    full = scoring.candidate_logprobs(tiny, prompt, options, mode="full", progress=False)[0]
    lengths = [len(scoring.answer_tokens(tiny, c)) for c in options[0]]
    np.testing.assert_allclose(got, full / np.array(lengths), rtol=1e-5)
    # single-token options take the one-pass route and give the same numbers as full scoring
    single = [[" golf", " chess"]]
    np.testing.assert_allclose(scoring.text_logprobs(tiny, prompt, single)[0],
                               scoring.candidate_logprobs(tiny, prompt, single, mode="full", progress=False)[0], rtol=1e-4)
    # and a whole question of multi-token options scores in every variant
    table = evaluation.debiased_mcq(tiny, ["Where is the Eiffel Tower?"] * 2,
                                    [["Paris", "New York City", "Los Angeles", "Rome"]] * 2, [0, 3])
    assert len(table) == 8 and table["n"].eq(2).all()


def _rows(correct: int, n: int, chance: float) -> pd.DataFrame:
    return pd.DataFrame([evaluation.accuracy_row("x", "v", [True] * correct + [False] * (n - correct), chance)])


def test_testability_needs_the_interval_above_chance_by_the_margin():
    at_chance = evaluation.testability(_rows(50, 200, 0.25))
    assert at_chance["verdict"].item() == evaluation.UNTESTABLE
    above = evaluation.testability(_rows(120, 200, 0.25))
    assert above["verdict"].item() == evaluation.TESTABLE and above["ci_low"].item() > 0.25 + evaluation.TESTABILITY_MARGIN
    # above chance, but not by the margin: still untestable; with no margin it would pass
    near = _rows(70, 200, 0.25)
    assert 0.25 < near["ci_low"].item() < 0.25 + evaluation.TESTABILITY_MARGIN
    assert evaluation.testability(near)["verdict"].item() == evaluation.UNTESTABLE
    assert evaluation.testability(near, margin=0.0)["verdict"].item() == evaluation.TESTABLE
    # the interval shrinks with more facts
    assert np.diff(_rows(60, 100, 0.25)[["ci_low", "ci_high"]].to_numpy()) > np.diff(
        _rows(600, 1000, 0.25)[["ci_low", "ci_high"]].to_numpy())
    with pytest.raises(ValueError, match="ci_low"):
        evaluation.testability(pd.DataFrame({"accuracy": [0.5]}))


def test_a_model_at_chance_is_untestable(tiny, athletes):
    # the tiny model is random: it cannot answer the questions, and every variant says so
    q, o, a = prompts.sports_mcq_items(athletes)
    verdicts = evaluation.testability(evaluation.debiased_mcq(tiny, q, o, a, scorings=("letter",)))
    assert (verdicts["verdict"] == evaluation.UNTESTABLE).all(), verdicts.to_string()
    fact = evaluation.format_accuracy(tiny, prompts.sports_prompts(athletes, "fact", sports=prompts.SPORTS),
                                      athletes["sport"].tolist())
    assert fact["chance"].item() == pytest.approx(1 / 3) and fact["n"].item() == len(athletes)
    assert evaluation.testability(fact)["verdict"].item() == evaluation.UNTESTABLE


def test_mmlu_and_counterfact_items(tiny):
    q, o, a = prompts.mmlu_items(data.load_mmlu(["astronomy"]).head(3))
    assert len(q) == 3 and all(len(x) == 4 for x in o) and all(0 <= i < 4 for i in a)
    cf = data.load_counterfact(with_prompts=True).head(12)
    q, o, a, idx = prompts.counterfact_mcq_items(cf)
    grid = prompts.counterfact_prompts(cf, "cf_mcq")
    assert idx == grid.fact_index
    # order 0 shows the options exactly as the grid's cf_mcq format did, the true target at the same letter
    assert prompts.mcq_prompts(q, o, (0, 1, 2, 3)).prompts == grid.prompts
    assert [lab.index("target_true") for lab in grid.labels] == a
    with pytest.raises(ValueError, match="load_mmlu"):
        prompts.mmlu_items(pd.DataFrame({"question": ["q"]}))
    with pytest.raises(ValueError, match="n must be"):
        evaluation.mmlu_accuracy(tiny, n=0)


def test_the_evaluation_table_carries_debiased_multiple_choice_before_and_after(tiny):
    from mechunlearn_nb import editing, tasks
    from mechunlearn_nb.localization import Localization

    known = data.load_sports().head(200)
    task = tasks.edit_athletes(tiny, n=4, seed=0, known=known, max_maintain=8)
    res = editing.edit(tiny, Localization.from_components(tiny, ["m1"], name="m1"), task,
                       editing.EditConfig(steps=2, batch_size=2, maintain_batch_size=2, lm_tokens=8, lm_window=8,
                                          eval_every=0), seed=0, progress=False)
    args = dict(formats=("fact",), n_unrelated=0, n_paragraphs=0, n_generate=0, progress=False)
    table = evaluation.evaluate(tiny, task, res, mcq_debiased=3, **args)
    deb = table[table["format"] == "mcq_debiased"]
    # before and after; forget facts with the new answer too; held-out maintain facts capped at 3
    assert set(deb["stage"]) == {"before", "after"}
    assert set(deb[deb["set"] == "forget"]["metric"]) == {"acc_true", "p_true", "acc_new", "p_new"}
    assert set(deb[deb["set"] == "maintain"]["n"]) == {3} and set(deb[deb["set"] == "forget"]["n"]) == {4}
    # the rows are debiased_mcq's "text, cyclic orders, calibrated" variant on the same facts
    rows = evaluation.debiased_mcq_rows(tiny, task, "forget")
    q, opts, ans = prompts.sports_mcq_items(task.forget)
    ref = evaluation.debiased_mcq(tiny, q, opts, ans, instrument="mcq", prefix=prompts.SYSTEM_PROMPT + "\n",
                                  scorings=("text",))
    ref_acc = ref.set_index("variant").loc["text, cyclic orders, calibrated", "accuracy"]
    assert {r["metric"]: r["value"] for r in rows}["acc_true"] == pytest.approx(ref_acc)
    before = deb[(deb["stage"] == "before") & (deb["set"] == "forget") & (deb["metric"] == "acc_true")]["value"].iloc[0]
    assert before == pytest.approx(ref_acc)
    assert "mcq_debiased" not in set(evaluation.evaluate(tiny, task, None, **args)["format"])  # only when asked

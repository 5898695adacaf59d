"""Expected values: a metric outside its range fails, a model without expected values has no reference,
and no range is too wide to fail."""

import math

import pytest

from mechunlearn_nb import expected, models

QUICKSTART_OK = {"n_scored": 200, "accuracy": 0.6, "frac_known": 0.4, "acc_qa_known": 0.9,
                 "mcq_top_choice_share": 0.7, "load_seconds": 5, "n_mcq_debiased": 24, "mcq_letter_fixed_acc": 0.05,
                 "mcq_best_variant_acc": 0.9, "n_mcq_testable_variants": 3}


def test_a_metric_outside_its_range_fails_the_check():
    ok = expected.check("00_quickstart", QUICKSTART_OK)
    assert ok["ok"].all() and set(ok["status"]) == {"ok"} and expected.outcome(ok) == "reproduced"
    bad = expected.check("00_quickstart", {**QUICKSTART_OK, "accuracy": 0.95, "frac_known": float("nan")})
    status = bad.set_index("metric")["status"]
    assert status["accuracy"] == "out of range" and status["frac_known"] == "missing"
    assert not bad.set_index("metric")["ok"]["accuracy"] and expected.outcome(bad) == "not reproduced"
    with pytest.raises(KeyError, match="expected.toml"):
        expected.check("99_nothing", {})


@pytest.mark.parametrize("alias", sorted(models.EMBEDDED_ALIASES, key=str))
def test_the_embedded_model_is_checked_under_any_alias(alias):
    assert expected.reference_for(alias) == expected.REFERENCE_MODEL
    assert expected.outcome(expected.check("00_quickstart", QUICKSTART_OK, model=alias)) == "reproduced"


def test_another_model_has_no_reference():
    checks = expected.check("00_quickstart", QUICKSTART_OK, model="google/gemma-2-9b")
    assert len(checks) and set(checks["status"]) == {"no reference"} and checks["ok"].isna().all()
    assert expected.outcome(checks) == "no reference"
    assert expected.outcome(expected.check("00_quickstart", {}, "fast").iloc[:0]) == "no reference"


def test_no_fast_range_spans_every_fraction():
    """A (0, 1) range on a share checks nothing; the one kept spans a sum of two shares (0 to 2)."""
    wide = [(nb, m) for nb, sizes in expected.EXPECTED.items() for m, (low, high) in sizes.get("fast", {}).items()
            if low <= 0 and high >= 1 and high <= 1 and m != "max_frac_sum"]
    assert not wide, wide
    for sizes in expected.EXPECTED.values():
        for ranges in sizes.values():
            assert all(low <= high and not math.isnan(low) for low, high in ranges.values())


def test_ranges_from_cells_follow_their_spread_and_refuse_a_range_that_could_not_fail():
    """The rule behind a study's full-size ranges: exact plan counts, 3 standard errors around a localization's mean
    (with a floor), clipping to [0, 1], and no range that spans every fraction."""
    import pandas as pd

    cells = pd.DataFrame({"localization": ["fact lookup"] * 4 + ["random"] * 4,
                          "edit_acc": [1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 0.0],
                          "relearn_acc": [0.10, 0.20, 0.30, 0.40, 0.2, 0.2, 0.2, 0.2],
                          "lm_loss_change": [0.01, 0.02, 0.03, 0.04, 0.0, 0.0, 0.0, 0.0]})
    metrics = {"n_cells": 8, "seconds": 12.5, "plan": "v3", "n_excluded": 2, "edit_acc__fact-lookup": 1.0,
               "edit_acc__random": 0.5, "relearn_acc__fact-lookup": 0.25, "lm_loss_change__fact-lookup": 0.025,
               "min_edit_acc": 0.0, "relearn_acc__nowhere": 0.3}
    rows, refused = expected.ranges_from_cells(metrics, cells)
    got = {key: (low, high) for key, low, high, _ in rows}
    assert got["n_cells"] == (8, 8) and got["n_excluded"] == (1, 3)
    assert "seconds" not in got and "plan" not in got and "relearn_acc__nowhere" not in got
    assert got["edit_acc__fact-lookup"] == (0.95, 1.0)  # no spread: the floor, clipped at 1
    se = pd.Series([0.1, 0.2, 0.3, 0.4]).std() / 2  # 0.0645: 3 se = 0.194
    assert got["relearn_acc__fact-lookup"] == (round(0.25 - 3 * se, 3), round(0.25 + 3 * se, 3))
    assert got["lm_loss_change__fact-lookup"] == (0.005, 0.045)  # the loss floor, 0.02, not clipped at 0
    sd = cells["edit_acc"].std()  # 0.463: a minimum over every cell, one standard deviation either side
    assert got["min_edit_acc"] == (0.0, round(sd, 3))
    assert refused == ["edit_acc__random"]  # half its edits failed: 0.5 ± 3 se spans [0, 1], which could not fail
    with pytest.raises(ValueError, match="rerun the notebook"):  # metrics.json written from other cells
        expected.ranges_from_cells({**metrics, "relearn_acc__fact-lookup": 0.3}, cells)


def test_a_sweeps_ranges_read_its_complete_edits_and_the_share_that_completed():
    """Notebook 10's window means are over complete edits (train_acc at or above the plan's completeness) and its
    complete__ share over every cell: the ranges follow the same cells, and a share written from other cells is
    refused."""
    import pandas as pd

    cells = pd.DataFrame({"localization": ["MLPs m0-m3"] * 3 + ["MLPs m1-m4"] * 3,
                          "train_acc": [1.0, 1.0, 0.5, 1.0, 1.0, 1.0],
                          "relearn_acc": [0.10, 0.20, 0.90, 0.2, 0.3, 0.4]})
    metrics = {"n_windows": 2, "width": 4, "n_incomplete": 1, "sweep_seconds": 99.0,
               "complete__mlps-m0-m3": 2 / 3, "complete__mlps-m1-m4": 1.0,
               "relearn_acc__mlps-m0-m3": 0.15, "relearn_acc__mlps-m1-m4": 0.3}
    rows, refused = expected.ranges_from_cells(metrics, cells, completeness=0.95)
    got = {key: (low, high) for key, low, high, _ in rows}
    assert got["n_windows"] == (2, 2) and got["width"] == (4, 4) and got["n_incomplete"] == (0, 2)
    assert "sweep_seconds" not in got and not refused
    assert got["complete__mlps-m0-m3"] == (0.333, 1.0) and got["complete__mlps-m1-m4"] == (0.667, 1.0)
    se = pd.Series([0.1, 0.2]).std() / 2 ** 0.5  # the incomplete edit's 0.9 is not in the window's mean
    assert got["relearn_acc__mlps-m0-m3"] == (round(0.15 - 3 * se, 3), round(0.15 + 3 * se, 3))
    with pytest.raises(ValueError, match="completed"):
        expected.ranges_from_cells({**metrics, "complete__mlps-m0-m3": 1.0}, cells, completeness=0.95)
    with pytest.raises(ValueError, match="rerun the notebook"):  # every cell's mean is not what notebook 10 wrote
        expected.ranges_from_cells(metrics, cells)

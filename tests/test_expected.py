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

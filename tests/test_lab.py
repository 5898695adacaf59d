"""The unlearning lab: the widget driven by its buttons, on the tiny model and on the embedded one.

Every test clicks the controls as a student would (``button.click()``) and reads what the widget
shows and what the lab holds: the curve drawn, the report's rows, the attack's curve, the message,
and after Revert every weight of the model equal to the base model's, bit for bit.
"""

import pandas as pd
import pytest
import torch

from mechunlearn_nb import data, lab as lab_module, models, widgets

TINY_COMPONENTS = {"fact lookup": ["m1"], "OT (causal tracing)": ["a1"], "OT (attribution patching)": ["a0"],
                   "OT MLPs only": ["m0"]}
#: a few steps at a rate that moves the tiny random model's one fact
TINY_EDIT = dict(lr=1e-2)


def snapshot(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in models.named_parameters(model).items()}


def equal_to(model, snap) -> list[str]:
    """The names of the tensors that differ (bitwise) from the snapshot."""
    now = models.named_parameters(model)
    return [n for n, t in snap.items() if not torch.equal(now[n].detach(), t)]


@pytest.fixture(scope="module")
def tiny_lab(tiny):
    known = data.load_sports().head(200)  # the tiny random model knows nothing: treat these as known
    return widgets.unlearning_lab(tiny, default="Aaron Donald", components=TINY_COMPONENTS, known=known,
                                  n_maintain=8, n_neighbours=4, n_related=4, n_paragraphs=2, steps=3)


def test_edit_attack_revert_by_clicking(tiny, tiny_lab, monkeypatch):
    c, lab = tiny_lab.controls, tiny_lab.lab
    base = snapshot(tiny)
    # a faster rate for the tiny model; every other setting is the lab's own
    monkeypatch.setitem(lab_module.EDIT_SETTINGS, "lr", TINY_EDIT["lr"])
    monkeypatch.setitem(lab_module.ATTACK_SETTINGS, "steps", 2)
    monkeypatch.setitem(lab_module.ATTACK_SETTINGS, "eval_steps", (0, 2))
    c["target"].value, c["localization"].value, c["steps"].value = "golf", "fact lookup", 3
    c["edit"].click()
    assert "Edit applied" in c["status"].value, c["status"].value
    assert c["progress"].value == 3 and c["progress"].max == 3
    curve = tiny_lab.shown["curve"]
    assert curve["step"].tolist() == [0, 1, 2, 3] and curve["edit_acc"].notna().all(), curve
    # the edit is applied: only fact lookup's weights (block 1's MLP) differ from the base
    changed = equal_to(tiny, base)
    assert changed and all("layers.1.mlp" in n for n in changed), changed
    report = tiny_lab.shown["report"]
    assert {"forget", "maintain", "general_text"} <= set(report["set"])
    fact = report[(report["set"] == "forget") & (report["format"] == "fact")].set_index("metric")
    assert fact.loc["acc_true", "before"] == 1.0, "the fact starts known (the unedited model picks its sport)"
    assert fact.loc["acc_new", "after"] == 1.0 and fact.loc["acc_true", "after"] == 0.0, fact
    assert report.loc[report["set"] == "maintain", "n"].eq(4).all()
    assert report.loc[report["set"] == "general_text", "metric"].tolist() == ["lm_loss"]

    c["attack"].click()
    assert "Attack done" in c["status"].value, c["status"].value
    assert c["progress"].value == 2
    attack = tiny_lab.shown["attack"]
    assert attack.loc[attack["half"] == "B (held out)", "step"].tolist() == [0, 2]
    assert set(tiny_lab.shown["curve"].columns) >= {"A (trained)", "B (held out)"}
    assert equal_to(tiny, base) == changed, "the attack must leave the edit applied, and only the edit"

    c["revert"].click()
    assert "restored" in c["status"].value and "bit for bit" in c["status"].value, c["status"].value
    assert equal_to(tiny, base) == [], "weights differ from the base model after Revert"
    assert lab.current is None and "report" not in tiny_lab.shown


def test_switching_facts_reverts_first(tiny, tiny_lab, monkeypatch):
    c, lab = tiny_lab.controls, tiny_lab.lab
    base = snapshot(tiny)
    monkeypatch.setitem(lab_module.EDIT_SETTINGS, "lr", TINY_EDIT["lr"])
    c["fact"].value, c["target"].value, c["localization"].value, c["steps"].value = lab.facts[3], "forget", "random", 1
    c["edit"].click()
    assert lab.current is not None and equal_to(tiny, base)
    c["fact"].value = lab.facts[4]
    assert lab.current is None and equal_to(tiny, base) == []
    assert "restored" in c["status"].value


@pytest.mark.parametrize("control, value, message", [
    ("fact", "Nobody McNoname", "does not know 'Nobody McNoname'"),
    ("target", "table tennis", "is 2 tokens"),
    ("steps", 0, "steps must be an int ≥ 1, got 0"),
])
def test_bad_input_shows_the_error_in_the_widget(tiny, tiny_lab, control, value, message):
    c = tiny_lab.controls
    base = snapshot(tiny)
    good = dict(fact=tiny_lab.lab.facts[0], target="golf", steps=2)
    for name, v in good.items():
        c[name].value = v
    c[control].value = value
    c["edit"].click()  # no exception escapes the click
    assert message in c["status"].value and "Fix:" in c["status"].value, c["status"].value
    assert not c["edit"].disabled, "the buttons stay usable after an error"
    assert equal_to(tiny, base) == [] and tiny_lab.lab.current is None


def test_attack_without_an_edit_says_so(tiny_lab):
    c = tiny_lab.controls
    tiny_lab.lab.revert()
    c["attack"].click()
    assert "needs an edit" in c["status"].value, c["status"].value


@pytest.mark.slow
def test_lab_on_the_embedded_model(gemma):
    """Forget one athlete through fact lookup on Gemma 3 270M (a few steps), attack, revert to the base bit for bit."""
    lab = lab_module.Lab(gemma, n_maintain=8, n_neighbours=4, n_related=4, n_paragraphs=1)
    rows = []
    result = lab.edit("LeBron James", "forget", "fact lookup", steps=2, on_step=rows.append)
    assert [r["step"] for r in rows] == [0, 1, 2] and all(pd.notna(r["forget_acc"]) for r in rows)
    assert result.delta.is_applied(gemma) and lab.differ_from_base()
    report = lab.report()
    fact = report[(report["set"] == "forget") & (report["format"] == "fact")].set_index("metric")
    assert fact.loc["acc_true", "before"] == 1.0
    assert fact.loc["p_true", "after"] < fact.loc["p_true", "before"], report
    curve = lab.attack(steps=2, eval_steps=(0, 2))
    assert set(curve["half"]) == {"A (trained)", "B (held out)", "maintain (held out)"}
    assert curve.loc[curve["half"] == "B (held out)", "n"].eq(1).all()
    out = lab.revert()
    assert out["restored"] and out["differ"] == []

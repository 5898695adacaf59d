"""Masked editing: deltas, reverts, save/load, seeds, losses and errors, on the tiny model."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from mechunlearn_nb import data, editing, evaluation, grid, models, scoring, tasks
from mechunlearn_nb.localization import Localization

SMALL = dict(steps=3, lr=1e-2, batch_size=4, maintain_batch_size=4, lm_tokens=16, lm_window=16, eval_every=2, eval_facts=8)


def snapshot(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in models.named_parameters(model).items()}


def changed(model, before) -> dict[str, torch.Tensor]:
    """name -> boolean map of the entries that differ (bitwise) from the snapshot."""
    now = models.named_parameters(model)
    return {n: (now[n].detach() != t) for n, t in before.items() if not torch.equal(now[n].detach(), t)}


@pytest.fixture(scope="module")
def task(tiny):
    known = data.load_sports().head(200)  # the tiny random model knows nothing: treat these as known
    return tasks.forget_sport(tiny, "basketball", "golf", known=known, max_forget=4, max_maintain=8)


@pytest.fixture(scope="module")
def head_loc(tiny):
    return Localization.from_components(tiny, ["m1", "a0.h1"], name="test")


@pytest.fixture(scope="module")
def result(tiny, task, head_loc):
    before = snapshot(tiny)
    res = editing.edit(tiny, head_loc, task, editing.EditConfig(**SMALL), seed=1, progress=False)
    res.manifest["_snapshot_equal_after_edit"] = not changed(tiny, before)
    return res


def test_edit_leaves_model_original_and_revert_is_bitwise(tiny, result):
    assert result.manifest["_snapshot_equal_after_edit"], "edit() must return with the original weights"
    before = snapshot(tiny)
    result.apply(tiny)
    assert changed(tiny, before), "applying the delta changed nothing"
    with pytest.raises(RuntimeError, match="already applied"):
        result.apply(tiny)
    result.revert(tiny)
    assert not changed(tiny, before)
    with result.applied(tiny):
        assert changed(tiny, before)
    assert not changed(tiny, before)
    with pytest.raises(RuntimeError, match="not applied"):
        result.revert(tiny)


def test_only_localized_weights_change_inside_head_masks(tiny, result, head_loc):
    before = snapshot(tiny)
    with result.applied(tiny):
        diff = changed(tiny, before)
    assert set(diff) <= set(head_loc.weights), f"weights outside the localization changed: {set(diff) - set(head_loc.weights)}"
    assert any("mlp" in n for n in diff) and any("self_attn" in n for n in diff)
    for name, mask in head_loc.weights.items():
        if mask is not None and name in diff:
            assert not (diff[name] & ~mask).any(), f"{name}: entries outside the head's mask changed"
            assert (diff[name] & mask).any()
    assert result.delta.n_params == head_loc.n_params


def test_save_load_roundtrip_and_refuses_existing_folder(tiny, result, tmp_path):
    folder = result.save(tmp_path / "run", metrics={"edit_acc": 0.5})
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["model"] == models.model_name(tiny)
    assert manifest["localization"]["components"] == ["m1", "a0.h1"]
    assert manifest["localization"]["n_params"] == result.delta.n_params
    assert manifest["task"]["name"] == "forget basketball" and manifest["seed"] == 1
    assert manifest["metrics"] == {"edit_acc": 0.5} and manifest["config"]["steps"] == SMALL["steps"]
    loaded = editing.EditResult.load(folder)
    assert set(loaded.delta.tensors) == set(result.delta.tensors)
    for n, t in result.delta.tensors.items():
        assert torch.equal(loaded.delta.tensors[n], t.cpu()), n
        m = result.delta.masks[n]
        assert (loaded.delta.masks[n] is None) == (m is None) and (m is None or torch.equal(loaded.delta.masks[n], m))
    pd.testing.assert_frame_equal(loaded.history, result.history, check_dtype=False)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        result.save(folder)
    result.save(folder, overwrite=True)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary folders left behind"
    with pytest.raises(ValueError, match="model cache"):
        result.save(models.cache_dir() / "models" / "an-edit")


def test_same_seed_same_history(tiny, task, head_loc, result):
    again = editing.edit(tiny, head_loc, task, editing.EditConfig(**SMALL), seed=1, progress=False)
    pd.testing.assert_frame_equal(again.history, result.history)
    for n, t in result.delta.tensors.items():
        assert torch.equal(again.delta.tensors[n], t)


def test_injection_loss_decreases(tiny, task):
    loc = Localization.from_components(tiny, ["m1"])
    cfg = editing.EditConfig(steps=4, lr=1e-2, batch_size=len(task.forget), maintain_coef=0, lm_coef=0, eval_every=0)
    hist = editing.edit(tiny, loc, task, cfg, seed=0, progress=False).history
    losses = hist["forget_loss"].dropna().to_numpy()
    assert losses[-1] < losses[0] - 0.05, losses
    assert hist["edit_acc"].iloc[-1] >= hist["edit_acc"].iloc[0]


def test_unlearning_objective_lowers_p_true(tiny, task):
    loc = Localization.from_components(tiny, ["m1"])
    cfg = editing.EditConfig(objective="unlearning", steps=4, lr=1e-2, batch_size=len(task.forget), maintain_coef=0,
                             lm_coef=0, eval_every=0)
    hist = editing.edit(tiny, loc, task, cfg, seed=0, progress=False).history
    losses = hist["forget_loss"].dropna().to_numpy()
    assert losses[-1] < losses[0], losses


def test_errors_name_problem_and_fix(tiny, task, head_loc, tmp_path):
    empty = tasks.Task("nothing", "sports", task.forget.iloc[:0], task.maintain_train, task.maintain_eval)
    with pytest.raises(ValueError, match="empty forget set"):
        editing.edit(tiny, head_loc, empty, editing.EditConfig(**SMALL), progress=False)
    multi = tasks.Task("multi", "sports", task.forget.assign(new_answer="table tennis"), task.maintain_train,
                       task.maintain_eval)
    with pytest.raises(scoring.MultiTokenAnswerError, match="single token"):
        editing.edit(tiny, head_loc, multi, editing.EditConfig(**SMALL), progress=False)
    with pytest.raises(ValueError, match="not in the Sports Facts data"):
        tasks.edit_athletes(tiny, athletes=["Nobody Atall"], known=data.load_sports().head(50))
    with pytest.raises(ValueError, match="objective"):
        editing.EditConfig(objective="forgetting")
    with pytest.raises(TypeError, match="Unknown EditConfig field"):
        editing.EditConfig.for_localization("localized", learning_rate=1)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file.txt").write_text("someone else's run")
    res = editing.edit(tiny, head_loc, task, editing.EditConfig(**dict(SMALL, steps=1)), progress=False)
    with pytest.raises(FileExistsError, match="already exists"):
        res.save(tmp_path / "taken")
    assert (tmp_path / "taken" / "file.txt").read_text() == "someone else's run"


def test_task_builders_split_and_label(tiny):
    known = data.load_sports().head(300)
    t = tasks.edit_athletes(tiny, n=6, seed=3, known=known)
    assert len(t.forget) == 6 and (t.forget["new_answer"] != t.forget["true_answer"]).all()
    assert set(t.forget["new_answer"]) <= {"football", "baseball", "basketball"}
    subjects = set(t.subjects)
    assert not subjects & set(t.maintain_train["athlete"]) and not subjects & set(t.maintain_eval["athlete"])
    assert not set(t.maintain_train["athlete"]) & set(t.maintain_eval["athlete"])
    again = tasks.edit_athletes(tiny, n=6, seed=3, known=known)
    pd.testing.assert_frame_equal(t.forget, again.forget)
    f = tasks.forget_sport(tiny, "basketball", "golf", known=known)
    assert (f.forget["sport"] == "basketball").all() and f.candidates[-1] == "golf"
    assert len(f.forget) == int((known["sport"] == "basketball").sum())
    with pytest.raises(ValueError, match="must differ"):
        tasks.forget_sport(tiny, "basketball", "basketball", known=known)
    # forgetting that elimination cannot undo: athletes of every sport, all moved to golf
    g = grid.build_task(tiny, "forget 30 athletes", 1, known=known)
    assert g.name == "forget 30 athletes" and len(g.forget) == 30 and (g.forget["new_answer"] == "golf").all()
    assert g.forget["sport"].nunique() == 3 and not set(g.subjects) & set(g.maintain_eval["athlete"])
    pd.testing.assert_frame_equal(g.forget, tasks.forget_athletes(tiny, 30, seed=1, known=known).forget)
    assert "basketball" not in set(tasks.forget_athletes(tiny, 10, seed=1, new="basketball", known=known).forget["sport"])
    with pytest.raises(ValueError, match="Cannot forget"):
        tasks.forget_athletes(tiny, len(known), known=known)
    # the negative control: athletes the model does not know (here by their made-up scores), no edit
    scores = known.assign(p_true_norm=np.linspace(0.0, 1.0, len(known)))
    u = tasks.unknown_athletes(tiny, 20, seed=2, scores=scores)
    assert len(u.forget) == 20 and (u.forget["p_true_norm"] < tasks.KNOWN_THRESHOLD).all()
    assert (u.forget["true_answer"] == u.forget["sport"]).all() and u.meta["negative_control"]
    assert (u.maintain_train["p_true_norm"] >= tasks.KNOWN_THRESHOLD).all() and not set(u.subjects) & set(u.maintain_eval["athlete"])
    with pytest.raises(ValueError, match=r"Only 150 of the 300 scored athletes are unknown.*Fix: choose n <= 150"):
        tasks.unknown_athletes(tiny, 151, scores=scores)


def test_evaluate_table_shape_and_model_untouched(tiny, task, result):
    before = snapshot(tiny)
    unrelated = data.load_counterfact().head(6).assign(p_true_norm=1.0)
    unrelated.attrs["dataset"] = "counterfact"
    base = evaluation.evaluate(tiny, task, formats=("fact", "mcq"), unrelated=unrelated, n_paragraphs=2, lm_tokens=16,
                               n_generate=1, max_new_tokens=2, progress=False)
    table = evaluation.evaluate(tiny, task, result, baseline=base, formats=("fact", "mcq"), unrelated=unrelated,
                                n_paragraphs=2, lm_tokens=16, n_generate=1, max_new_tokens=2, progress=False)
    assert not changed(tiny, before)
    assert list(table.columns) == evaluation.COLUMNS
    assert set(table["stage"]) == {"before", "after"} and set(table["localization"]) == {"test"}
    assert {"forget", "maintain", "unrelated", "general_text", "generation"} <= set(table["set"])
    acc = table[table["metric"].str.startswith("acc")]["value"]
    assert acc.between(0, 1).all()
    after = table[(table["stage"] == "after") & (table["set"] == "forget") & (table["format"] == "fact")]
    assert set(after["metric"]) == {"acc_true", "acc_new", "p_true", "p_new"}
    # the base-model rows are reused verbatim, and the edited rows come from the edited model
    b = table[(table["stage"] == "before") & (table["metric"] == "lm_loss")]["value"].item()
    assert b == base[base["metric"] == "lm_loss"]["value"].item()
    assert np.isfinite(table[table["metric"] == "lm_loss"]["value"]).all()


def test_defaults_follow_the_localization_kind_not_its_name(tiny, result):
    from mechunlearn_nb import localization
    from mechunlearn_nb.localization import Kind

    assert editing.EditConfig.for_localization(localization.all_mlps(tiny)).lr == editing.DEFAULTS[Kind.ALL_MLPS]["lr"]
    assert editing.EditConfig.for_localization(localization.non_localized(tiny)).lr == 3e-5
    assert editing.EditConfig.for_localization(Kind.ALL_MLPS).lr == editing.EditConfig.for_localization("all_mlps").lr == 1e-4
    # a name is a label: a set of components called "non-localized" is still a localized (budget-matched) set
    named = Localization.from_components(tiny, ["m1"], name="non-localized MLP")
    assert editing.EditConfig.for_localization(named, steps=5).lr == 2e-4
    with pytest.raises(ValueError, match="Unknown localization kind 'everything'.*non_localized"):
        editing.EditConfig.for_localization("everything")
    assert result.manifest["localization"]["kind"] == "localized"  # saved manifests keep the string value

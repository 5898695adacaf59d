"""Relearning and soft-prompt attacks, latent probes and weight masks, on the tiny model.

Every attack must hand the model back exactly as it got it: same weights bit for bit, same
module tree (LoRA adapters removed), nothing left trainable, no delta applied.
"""

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import torch

from mechunlearn_nb import attacks, data, editing, latent, masking, models, tasks, train
from mechunlearn_nb.localization import Localization

EDIT = dict(steps=3, lr=1e-2, batch_size=4, maintain_batch_size=4, lm_tokens=16, lm_window=16, eval_every=0, eval_facts=8)
QUICK = dict(batch_size=4, maintain_batch_size=4, lm_coef=0.0, eval_batch_size=16, eval_maintain=20)


class Snapshot:
    """Weights, module tree and requires_grad flags of a model, to compare against later."""

    def __init__(self, model):
        self.model = model
        self.weights = {n: p.detach().clone() for n, p in models.named_parameters(model).items()}
        self.tree = attacks._module_tree(models.hf_model(model))
        self.flags = {n: p.requires_grad for n, p in models.named_parameters(model).items()}

    def assert_unchanged(self):
        now = models.named_parameters(self.model)
        assert set(now) == set(self.weights), "parameters were added or removed"
        changed = [n for n, t in self.weights.items() if not torch.equal(now[n].detach(), t)]
        assert not changed, f"weights changed: {changed[:3]}"
        assert attacks._module_tree(models.hf_model(self.model)) == self.tree, "module tree changed (adapters left in?)"
        assert {n: p.requires_grad for n, p in now.items()} == self.flags


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny model's matrices are too small for threads to pay off; on a busy machine they cost 5x."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def task(tiny):
    known = data.load_sports().head(160)  # the tiny random model knows nothing: treat these as known
    return tasks.edit_athletes(tiny, n=8, seed=0, known=known, max_maintain=24)


@pytest.fixture(scope="module")
def result(tiny, task):
    loc = Localization.from_components(tiny, ["m1", "a0.h1"], name="tiny loc")
    return editing.edit(tiny, loc, task, editing.EditConfig(**EDIT), seed=0, progress=False)


def test_lora_relearning_curve_and_model_bit_identical(tiny, task, result):
    snap = Snapshot(tiny)
    cfg = attacks.RelearnConfig(eval_steps=(0, 1, 3), rank=8, lr=2e-2, maintain_coef=0.0, **QUICK)
    curve = attacks.relearn(tiny, result, task, cfg, seed=0, progress=False)
    snap.assert_unchanged()
    assert not result.delta.is_applied(tiny)
    assert list(curve.columns) == attacks.CURVE_COLUMNS
    assert sorted(curve["step"].unique()) == [0, 1, 3]
    assert set(curve["half"]) == set(attacks.HALVES)
    assert len(curve) == 9 and curve["accuracy"].between(0, 1).all() and curve["p_true"].between(0, 1).all()
    assert set(curve["localization"]) == {"tiny loc"} and set(curve["method"]) == {"lora"}
    assert curve.groupby("half")["n"].first().to_dict() == {"A (trained)": 4, "B (held out)": 4,
                                                            "maintain (held out)": 20}
    a = curve[curve["half"] == "A (trained)"].set_index("step")["p_true"]
    assert a[3] > a[0], f"training on half A's true answers did not raise their probability: {a.to_dict()}"


def test_the_papers_cosine_schedule_decays_the_attack_rate(tiny, task, result):
    rates = {}
    for schedule in attacks.SCHEDULES:
        rows = []
        cfg = attacks.RelearnConfig(eval_steps=(0, 4), rank=8, lr=2e-2, maintain_coef=0.0, schedule=schedule, **QUICK)
        attacks.relearn(tiny, result, task, cfg, seed=0, progress=False, on_step=rows.append)
        rates[schedule] = [r["lr"] for r in rows if "lr" in r]
    assert rates["constant"] == [2e-2] * 4
    assert rates["cosine"][0] == pytest.approx(2e-2) and rates["cosine"] == sorted(rates["cosine"], reverse=True)
    assert rates["cosine"][-1] < 0.2 * 2e-2
    assert attacks.RelearnConfig(**attacks.PAPER_LORA).rank == 512
    with pytest.raises(ValueError, match="cosine"):
        attacks.RelearnConfig(schedule="linear")


def test_full_finetuning_and_base_attack_restore_weights(tiny, task, result):
    snap = Snapshot(tiny)
    cfg = attacks.RelearnConfig(method="full", eval_steps=(0, 2), lr=1e-3, lm_tokens=16, lm_window=16,
                                **{**QUICK, "lm_coef": 1.0})
    curve = attacks.relearn(tiny, result, task, cfg, seed=1, progress=False)
    snap.assert_unchanged()
    assert set(curve["method"]) == {"full"} and sorted(curve["step"].unique()) == [0, 2]
    base = attacks.relearn(tiny, None, task, dataclasses.replace(cfg, method="lora", lr=None, rank=4), progress=False)
    snap.assert_unchanged()
    assert set(base["localization"]) == {"base (no edit)"}


def test_attack_restores_model_after_an_error(tiny, task, result, monkeypatch):
    snap = Snapshot(tiny)

    def broken(*args, **kwargs):
        raise KeyboardInterrupt("interrupted mid-attack")

    monkeypatch.setattr(train, "lm_loss", broken)
    cfg = attacks.RelearnConfig(eval_steps=(0, 2), rank=4, lm_tokens=16, lm_window=16, **{**QUICK, "lm_coef": 1.0})
    with pytest.raises(KeyboardInterrupt):
        attacks.relearn(tiny, result, task, cfg, progress=False)
    snap.assert_unchanged()
    assert not result.delta.is_applied(tiny)


def test_lora_adapters_cover_targets_change_outputs_and_leave_cleanly(tiny):
    snap = Snapshot(tiny)
    from mechunlearn_nb import scoring

    ids, mask, last = scoring.pad_right(scoring.encode_prompts(tiny, ["Fact: Tom Brady plays the sport of"]), 0)
    before = train.last_logits(tiny, ids, mask, last)
    targets = attacks.linear_targets(tiny, ("mlp",), layers=[1])
    assert sorted(t.weight.split(".")[-2] for t in targets) == ["down_proj", "gate_proj", "up_proj"]
    with attacks.lora_adapters(tiny, rank=2, target_modules=("mlp",), layers=[1]) as adapters:
        assert len(adapters) == 2 * len(targets)
        assert all(p.requires_grad for p in adapters.values())
        torch.testing.assert_close(train.last_logits(tiny, ids, mask, last), before)  # B = 0 at init
        with torch.no_grad():
            for n, p in adapters.items():
                if "lora_B" in n:
                    p.fill_(0.05)
        assert not torch.allclose(train.last_logits(tiny, ids, mask, last), before)
    snap.assert_unchanged()
    assert torch.equal(train.last_logits(tiny, ids, mask, last), before)


def test_soft_prompt_changes_outputs_is_seeded_and_leaves_model(tiny, task, result):
    snap = Snapshot(tiny)
    kw = dict(n_tokens=3, steps=3, lr=0.1, batch_size=4, maintain_batch_size=4, eval_maintain=8, progress=False)
    sp = attacks.soft_prompt_attack(tiny, result, task, seed=0, **kw)
    snap.assert_unchanged()
    assert sp.prefix.shape == (3, tiny.cfg.d_model)
    assert set(sp.table["stage"]) == {"no prompt", "soft prompt"} and len(sp.table) == 6
    assert set(sp.table["half"]) == set(attacks.HALVES)
    assert sp.table["accuracy"].between(0, 1).all() and len(sp.history) == 3
    again = attacks.soft_prompt_attack(tiny, result, task, seed=0, **kw)
    assert torch.equal(sp.prefix, again.prefix)
    pd.testing.assert_frame_equal(sp.table, again.table)
    other = attacks.soft_prompt_attack(tiny, result, task, seed=1, **kw)
    assert not torch.equal(sp.prefix, other.prefix)
    from mechunlearn_nb import scoring

    ids, mask, last = scoring.pad_right(scoring.encode_prompts(tiny, ["Fact: Tom Brady plays the sport of", "Hi"]), 0)
    plain = train.last_logits(tiny, ids, mask, last)
    prompted = train.last_logits(tiny, ids, mask, last, sp.prefix)
    assert plain.shape == prompted.shape and not torch.allclose(plain, prompted)
    # the prefix goes after BOS and lengthens every prompt by k, padding stays on the right
    emb, mask2, last2 = train.insert_prefix(tiny, ids, mask, last, sp.prefix)
    assert emb.shape[1] == ids.shape[1] + 3 and torch.equal(last2, last + 3)
    torch.testing.assert_close(emb[:, 1:4], sp.prefix.expand(2, 3, -1))
    snap.assert_unchanged()


def test_mask_analysis_fractions_and_model_untouched(tiny, task, result):
    snap = Snapshot(tiny)
    mr = masking.mask_analysis(tiny, result, task, masking.MaskConfig(steps=4, batch_size=4, sparsity=5.0, lr=0.5),
                               progress=False)
    snap.assert_unchanged()
    comp = mr.components
    assert set(comp["component"]) == {"a0", "m1"}
    assert comp["frac_kept"].between(0, 1).all() and comp["mean_mask"].between(0, 1).all()
    assert set(mr.accuracy["variant"]) == {"no edit", "full edit", "masked edit", "soft mask"}
    assert mr.accuracy["frac_kept"].between(0, 1).all() and 0 <= mr.frac_kept <= 1
    kept = mr.history["kept"].to_numpy()
    assert kept[-1] < kept[0], "the sparsity penalty did not shrink the mask"
    masked = mr.masked_delta()
    assert set(masked.tensors) == set(result.delta.tensors)
    by_comp = masking.mask_analysis(tiny, result, task, masking.MaskConfig(granularity="component", steps=2, batch_size=4),
                                    progress=False)
    assert set(by_comp.components["frac_kept"]) <= {0.0, 1.0}
    snap.assert_unchanged()
    with pytest.raises(ValueError, match="granularity"):
        masking.MaskConfig(granularity="neuron")
    with result.applied(tiny), pytest.raises(RuntimeError, match="revert"):
        masking.mask_analysis(tiny, result, task, progress=False)


def test_latent_probe_fractions(tiny, task, result):
    snap = Snapshot(tiny)
    table = latent.latent_knowledge(tiny, task, {"tiny loc": result}, progress=False)
    snap.assert_unchanged()
    assert list(table.columns) == latent.COLUMNS
    assert set(table["stage"]) == {"before", "after"} and set(table["localization"]) == {"base", "tiny loc"}
    n_layers = tiny.cfg.n_layers + 1
    assert len(table) == 2 * n_layers
    assert ((table["frac_true"] + table["frac_edit"]) <= 1 + 1e-9).all()
    assert table[["frac_true", "frac_edit", "maintain_acc"]].stack().between(0, 1).all()
    summary = latent.fractions_by_edit(table, last_k=1, window=(1, 2))
    assert list(summary["localization"]) == ["base", "tiny loc"]
    assert summary[["late_frac_true", "window_frac_true", "window_frac_edit"]].stack().between(0, 1).all()
    with pytest.raises(ValueError, match="No layer in window"):
        latent.fractions_by_edit(table, window=(7, 9))
    long = latent.long_form(table)
    assert set(long["prediction"]) == {"ground truth", "edit label"} and set(long["localization"]) == {"tiny loc"}
    # the base model's read-outs reused from an earlier call (one edit per call): the same table
    base = latent.latent_knowledge(tiny, task, {}, progress=False)
    assert set(base["stage"]) == {"before"}
    again = latent.latent_knowledge(tiny, task, {"tiny loc": result}, progress=False, base=base)
    pd.testing.assert_frame_equal(again.reset_index(drop=True), table.reset_index(drop=True))
    with pytest.raises(ValueError, match="seed 1"):
        latent.latent_knowledge(tiny, task, {"tiny loc": result}, progress=False, base=base, seed=1)
    with pytest.raises(ValueError, match="probes_from"):
        latent.latent_knowledge(tiny, task, {"tiny loc": result}, progress=False, base=base, probes_from="base")


def test_errors_name_problem_and_fix(tiny, task, result):
    one = dataclasses.replace(task, forget=task.forget.head(1))
    with pytest.raises(ValueError, match="too small to split"):
        attacks.split_forget(one)
    with pytest.raises(ValueError, match="too small to split"):
        attacks.relearn(tiny, result, one, attacks.RelearnConfig(eval_steps=(0, 1), **QUICK), progress=False)
    with pytest.raises(ValueError, match="Unknown target module 'qkv'"):
        attacks.RelearnConfig(target_modules=("qkv",))
    with pytest.raises(ValueError, match="Unknown target module"):
        attacks.linear_targets(tiny, ["attention"])
    with pytest.raises(ValueError, match="No linear layer"):
        attacks.linear_targets(tiny, ("mlp",), layers=[7])
    with pytest.raises(ValueError, match="method"):
        attacks.RelearnConfig(method="qlora")
    with pytest.raises(ValueError, match="eval step"):
        attacks.RelearnConfig(steps=3, eval_steps=(0, 5))
    forget_bb = tasks.forget_sport(tiny, "basketball", "golf", known=data.load_sports().head(160), max_maintain=16)
    with pytest.raises(ValueError, match="no athlete of sport"):
        latent.latent_knowledge(tiny, forget_bb, {}, progress=False)
    # the comparison grid asks first and skips probes for such a task instead of failing the cell
    assert latent.missing_probe_sports(forget_bb) == ["basketball"]
    assert latent.missing_probe_sports(task) == []
    with result.applied(tiny), pytest.raises(RuntimeError, match="revert"):
        attacks.relearn(tiny, result, task, attacks.RelearnConfig(eval_steps=(0,), **QUICK), progress=False)
    assert not result.delta.is_applied(tiny)


def test_grid_cell_on_the_tiny_model(tiny, task):
    from mechunlearn_nb import grid

    snap = Snapshot(tiny)
    loc = Localization.from_components(tiny, ["m1"], name="fact lookup")
    config = grid.GridConfig(tasks=("edit 8 athletes",), seeds=(0,), relearn_steps=(0, 1), n_unrelated=0,
                                   edit_overrides=dict(EDIT), relearn_overrides=dict(QUICK),
                                   eval_overrides=dict(n_paragraphs=1, lm_tokens=16, formats=("fact", "mcq")))
    base_probe = grid.probe_base(tiny, task, config, seed=0)
    cell = grid.run_cell(tiny, task, loc, 0, config, probe_window=(1, 1), base_probe=base_probe)
    snap.assert_unchanged()
    m = cell["metrics"]
    assert 0 <= m["edit_acc"] <= 1 and 0 <= m["probe_true"] <= 1 and m["probe_window"] == [1, 1]
    assert set(cell["seconds"]) == {"edit", "evaluate", "relearn", "probe"}
    scores = pd.DataFrame(cell["evaluation"])
    assert {"before", "after"} == set(scores["stage"]) and {"fact", "mcq"} <= set(scores["format"])
    assert "generation" not in set(scores["set"])
    json.dumps(cell)  # saved as JSON as it is


def test_a_planned_cell_runs_both_attacks_at_its_own_rate_with_debiased_mcq(tiny, task):
    from mechunlearn_nb import grid, statistics

    loc = Localization.from_components(tiny, ["m1"], name="fact lookup")
    config = grid.GridConfig(tasks=("edit 8 athletes",), seeds=(0,), relearn_steps=(0, 1, 2), n_unrelated=0,
                             edit_overrides=dict(EDIT), relearn_overrides=dict(QUICK), probes=False,
                             eval_overrides=dict(n_paragraphs=1, lm_tokens=16, formats=("fact", "qa")),
                             attack_settings=("scaled", "paper"), rates={"sports": {"fact lookup": 3e-3}}, mcq_debiased=2)
    cell = grid.run_cell(tiny, task, loc, 0, config)
    m, curve = cell["metrics"], pd.DataFrame(cell["curve"])
    assert m["lr"] == 3e-3 and cell["edit_config"]["lr"] == 3e-3
    assert set(curve["setting"]) == {"scaled", "paper"} and set(curve["step"]) == {0, 1, 2}
    # the first setting's held-out curve makes relearn_acc; each setting's probabilities its own summaries, which
    # agree with statistics.curve_metrics on the same curve
    scaled = curve[curve["setting"] == "scaled"].assign(task="t", localization="l", seed=0)
    ref = statistics.curve_metrics(scaled)
    ref = ref[ref["quantity"] == "p_true"].iloc[0]
    assert m["relearn_scaled_p_true_auc"] == pytest.approx(ref["auc"]) and m["relearn_scaled_p_true_max"] == pytest.approx(ref["max"])
    assert m["relearn_scaled_p_true_change"] == pytest.approx(ref["change"])
    held = scaled[scaled["half"] == statistics.HELD_OUT]
    assert m["relearn_acc"] == held[held["step"] == 2]["accuracy"].iloc[0]
    assert "relearn_paper_p_true_auc" in m and m["train_acc"] == cell["history_tail"]["edit_acc"]  # completeness
    assert {"qa_forget_acc", "mcq_debiased_edit_acc", "base_mcq_debiased_maintain_acc"} <= set(m)
    json.dumps(cell)
    with pytest.raises(ValueError, match="attack_settings"):
        grid.GridConfig(attack_settings=("strong",))
    with pytest.raises(ValueError, match="positive"):
        grid.GridConfig(rates={"sports": {"fact lookup": -1}})
    # a rate tuned with its own edit steps (a plan's fallback_steps) edits with those steps
    config = grid.GridConfig(tasks=("edit 8 athletes",), seeds=(0,), relearn_steps=(0, 1), n_unrelated=0,
                             edit_overrides=dict(EDIT), relearn_overrides=dict(QUICK), probes=False,
                             eval_overrides=dict(n_paragraphs=1, lm_tokens=16, formats=("fact",)),
                             rates={"sports": {"fact lookup": {"lr": 2e-3, "steps": EDIT["steps"] + 1}}})
    cell = grid.run_cell(tiny, task, loc, 0, config)
    assert cell["edit_config"]["lr"] == 2e-3 and cell["edit_config"]["steps"] == EDIT["steps"] + 1


def test_counterfact_grid_cell_on_the_tiny_model(tiny):
    """A CounterFact cell runs end to end: paraphrases and neighbourhood prompts scored, relearning, no probes."""
    from mechunlearn_nb import grid

    known = data.load_counterfact(with_prompts=True).head(120)  # the tiny random model knows nothing: treat as known
    task = tasks.counterfact_edit(tiny, n=8, seed=0, known=known, max_maintain=8)
    snap = Snapshot(tiny)
    loc = Localization.from_components(tiny, ["m1"], name="fact lookup")
    config = grid.GridConfig(tasks=("counterfact 16",), seeds=(0,), relearn_steps=(0, 1), n_unrelated=0,
                                   edit_overrides=dict(EDIT), relearn_overrides=dict(QUICK),
                                   eval_overrides=dict(n_paragraphs=1, lm_tokens=16))
    assert grid.probe_base(tiny, task, config, seed=0) == (None, None)
    cell = grid.run_cell(tiny, task, loc, 0, config, probe_window=(1, 1), base_probe=(None, None))
    snap.assert_unchanged()
    m = cell["metrics"]
    assert 0 <= m["edit_acc"] <= 1 and 0 <= m["paraphrase_edit_acc"] <= 1 and 0 <= m["relearn_acc"] <= 1
    assert np.isnan(m["probe_true"]) and m["n_forget"] == 8
    formats = set(pd.DataFrame(cell["evaluation"])["format"])
    assert {"cf_prompt", "cf_paraphrase"} <= formats, formats
    json.dumps(cell)


def test_a_grid_folder_locates_once_then_reads_back(tiny, tmp_path, monkeypatch):
    """The first call for a dataset locates and saves; a later one (a resumed grid) reads the saved record back."""
    from mechunlearn_nb import grid, registry

    calls = []

    def counted_locate(model, dataset, names, **kwargs):
        calls.append(dataset)
        built = {"fact lookup": Localization.from_components(model, ["m1"], name="fact lookup"),
                 "OT (causal tracing)": Localization.from_components(model, ["a0"], name="OT (causal tracing)")}
        return built, {"flu_layers": [1], "n_locate": 4}

    monkeypatch.setattr(registry, "locate", counted_locate)
    config = grid.GridConfig(tasks=("edit 8 athletes",), localizations=("fact lookup", "OT (causal tracing)"))
    found = [grid.dataset_localizations(tiny, "sports", config, tmp_path) for _ in range(2)]
    assert calls == ["sports"]  # located once
    assert [f["OT (causal tracing)"].components for f in found] == [["a0"], ["a0"]]
    assert [f["fact lookup"].meta.get("method", "") for f in found] == ["", "read back"]
    saved = json.loads((tmp_path / "localizations_sports.json").read_text())
    assert saved["localizations"]["fact lookup"]["components"] == ["m1"] and saved["n_locate"] == 4

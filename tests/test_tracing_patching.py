"""Causal tracing, activation / attribution patching and the localization builders, on the tiny model."""

import numpy as np
import pandas as pd
import pytest
import torch

from mechunlearn_nb import localization, models, patching, positions, tracing

FACTS = pd.DataFrame({
    "athlete": ["Magic Johnson", "Tom Brady", "Derek Jeter", "Kobe Bryant"],
    "sport": ["basketball", "football", "baseball", "basketball"],
})
# athletes of every sport with 1-4 name tokens, to corrupt with
POOL = pd.DataFrame({
    "athlete": ["Tom Brady", "Derek Jeter", "Magic Johnson", "Kobe Bryant", "Peyton Manning", "Babe Ruth",
                "Larry Bird", "Joe Montana", "Randy Johnson", "Jerry Rice"],
    "sport": ["football", "baseball", "basketball", "basketball", "football", "baseball",
              "basketball", "football", "baseball", "football"],
})


@pytest.fixture(scope="module")
def traced(tiny):
    return tracing.trace_facts(tiny, FACTS.head(2), components=("resid", "attn", "mlp", "head"), seed=0, progress=False)


def test_subject_span_and_kinds(tiny):
    ids = tiny.tokenizer("Fact: Tiger Woods plays golf\nFact: Magic Johnson plays the sport of")["input_ids"]
    start, end = positions.subject_span(tiny, ids, "Magic Johnson")
    assert tiny.tokenizer.decode(ids[start:end]).strip() == "Magic Johnson"
    start_tw, _ = positions.subject_span(tiny, ids, "Tiger Woods")
    assert start_tw < start
    kinds = [positions.position_kind(p, start, end, len(ids)) for p in range(len(ids))]
    assert kinds[start] == ["first_subject"] and kinds[end - 1] == ["last_subject"]
    assert kinds[-1] == ["last"] and kinds[end] == ["later"] and kinds[0] == ["before"]
    assert positions.position_kind(3, 3, 4, 6) == ["first_subject", "last_subject"]
    with pytest.raises(ValueError, match="not found"):
        positions.subject_span(tiny, ids, "Shaquille O'Neal")


def test_tracing_endpoints(traced, tiny):
    last_layer = tiny.cfg.n_layers - 1
    assert (traced["clean"] != traced["corrupt"]).all(), "the noise must change the answer's probability"
    # restoring the block output of the last layer at the last token restores the clean run exactly
    top = traced[(traced.component == "resid") & (traced.layer == last_layer) & (traced.position_kind == "last")]
    np.testing.assert_allclose(top["value"], top["clean"], rtol=1e-4, atol=1e-9)
    np.testing.assert_allclose(top["effect"], 1.0, atol=1e-3)
    # every kind, every layer, every head at the last token is there
    assert set(traced["position_kind"]) == set(positions.POSITION_KINDS)
    heads = traced[traced.component == "head"]
    assert len(heads) == 2 * tiny.cfg.n_layers * tiny.cfg.n_heads and (heads.position_kind == "last").all()
    summary = patching.average_over_facts(traced)
    assert {"layer", "position_kind", "component", "head", "effect"} <= set(summary.columns)
    assert summary["head"].isna().sum() == (summary["component"] != "head").sum()
    assert tracing.peak(summary, "resid", "last")["layer"] == last_layer


def test_restoring_unchanged_states_changes_nothing(tiny):
    # positions before the subject are identical in the clean and noisy runs: restoring them gives
    # the corrupted run (effect 0); a wrong row index in the batched hooks would break this
    pf = tracing.trace_facts(tiny, FACTS.head(2), components=("resid", "mlp"), kinds=("before",), progress=False)
    np.testing.assert_allclose(pf["value"], pf["corrupt"], rtol=1e-5, atol=1e-10)


def test_batching_does_not_mix_rows(tiny):
    a = tracing.trace_facts(tiny, FACTS.head(2), components=("mlp", "head"), batch_size=64, progress=False)
    b = tracing.trace_facts(tiny, FACTS.head(2), components=("mlp", "head"), batch_size=9, progress=False)
    np.testing.assert_allclose(a["value"], b["value"], rtol=1e-4, atol=1e-9)


def test_balanced_sample():
    sample = patching.balanced_sample(POOL, 6, seed=0)
    assert sample["sport"].value_counts().to_dict() == {"football": 2, "baseball": 2, "basketball": 2}
    pd.testing.assert_frame_equal(sample, patching.balanced_sample(POOL, 6, seed=0))
    assert len(patching.balanced_sample(POOL, 100, seed=0)) == len(POOL)


def test_tracing_seeded(tiny, traced):
    again = tracing.trace_facts(tiny, FACTS.head(2), components=("resid", "attn", "mlp", "head"), seed=0, progress=False)
    pd.testing.assert_frame_equal(traced, again)
    other = tracing.noise_inputs(tiny, FACTS.head(2), seed=1)
    same = tracing.noise_inputs(tiny, FACTS.head(2), seed=0)
    assert not torch.equal(other.noise[0], same.noise[0])
    std = tracing.embedding_std(tiny, FACTS.head(2)["athlete"])
    assert same.meta["noise_std"] == pytest.approx(std)
    assert float(same.noise[0].std()) == pytest.approx(3 * std, rel=0.1)


def test_window_restores_more_layers(tiny):
    one = tracing.trace_facts(tiny, FACTS.head(1), components=("mlp",), window=1, progress=False)
    all_layers = tracing.trace_facts(tiny, FACTS.head(1), components=("mlp",), window=2 * tiny.cfg.n_layers, progress=False)
    assert not np.allclose(one["value"], all_layers["value"])
    with pytest.raises(ValueError, match="window"):
        tracing.trace_facts(tiny, FACTS.head(1), window=0, progress=False)


def test_corruption_aligns_tokens(tiny):
    inputs = patching.corrupt_subjects(tiny, FACTS, pool=POOL, seed=0)
    for clean, corrupt, (start, end), subject, other in zip(inputs.clean_ids, inputs.corrupt_ids, inputs.spans,
                                                            inputs.subjects, inputs.meta["corrupt_subjects"]):
        assert len(clean) == len(corrupt) and clean[:start] == corrupt[:start] and clean[end:] == corrupt[end:]
        assert POOL.set_index("athlete").loc[other, "sport"] != FACTS.set_index("athlete").loc[subject, "sport"]
    again = patching.corrupt_subjects(tiny, FACTS, pool=POOL, seed=0)
    assert again.corrupt_ids == inputs.corrupt_ids
    rand = patching.corrupt_subjects(tiny, FACTS, pool=POOL, mode="random", seed=0)
    assert [len(c) for c in rand.corrupt_ids] == [len(c) for c in rand.clean_ids]
    with pytest.raises(ValueError, match="No athlete of another sport"):
        patching.corrupt_subjects(tiny, FACTS, pool=FACTS[FACTS.sport == "basketball"])


def test_activation_patching_endpoints(tiny):
    inputs = patching.corrupt_subjects(tiny, FACTS.head(3), pool=POOL, seed=0)
    pf = patching.run_patches(tiny, inputs, components=("resid", "head"), head_positions="all", progress=False)
    last = pf[(pf.component == "resid") & (pf.layer == tiny.cfg.n_layers - 1) & (pf.position_kind == "last")]
    np.testing.assert_allclose(last["value"], last["clean"], rtol=1e-4, atol=1e-5)
    s = patching.average_over_facts(pf)
    row = s[(s.component == "resid") & (s.layer == tiny.cfg.n_layers - 1) & (s.position_kind == "last")]
    assert row["effect"].item() == pytest.approx(1.0, abs=1e-3)
    assert (pf[pf.component == "head"]["position_kind"] == "all").all()


def test_activation_patching_summary(tiny):
    summary = patching.activation_patching(tiny, FACTS.head(2), pool=POOL, components=("mlp", "head"), layers=[1],
                                           progress=False)
    assert set(summary["component"]) == {"mlp", "head"} and (summary["layer"] == 1).all()
    assert (summary["n_facts"] == 2).all() and np.isfinite(summary["effect"]).all()
    with pytest.raises(ValueError, match="do not exist"):
        patching.activation_patching(tiny, FACTS.head(1), pool=POOL, layers=[tiny.cfg.n_layers], progress=False)


def test_attribution_patching_matches_small_changes(tiny):
    # with a tiny corruption the metric is linear in the activations, so attribution patching must
    # reproduce activation patching (and it must not be all zeros or NaN)
    inputs = tracing.noise_inputs(tiny, FACTS.head(2), noise_scale=1e-3, seed=0)
    inputs.metric = "logit_diff"
    inputs.candidates = [[models_tok(tiny, s) for s in (" basketball", " football", " baseball")]] * 2
    ap = patching.average_over_facts(patching.attribution_patching(tiny, inputs, progress=False))
    act = patching.average_over_facts(patching.run_patches(tiny, inputs, components=("attn", "mlp", "head"), progress=False))
    table = patching.compare(act, ap)
    assert len(table) > 10 and np.isfinite(table[["effect_patching", "effect_attribution"]]).all().all()
    big = table[table["effect_patching"].abs() > 0.05]
    assert len(big) >= 3
    assert (np.sign(big["effect_patching"]) == np.sign(big["effect_attribution"])).all()
    assert patching.correlation(table) > 0.99


def models_tok(model, text):
    from mechunlearn_nb import scoring

    return scoring.single_token_id(model, text)


def test_attribution_patching_shape(tiny):
    inputs = patching.corrupt_subjects(tiny, FACTS.head(3), pool=POOL, seed=0)
    pf = patching.attribution_patching(tiny, inputs, batch_size=2, progress=False)
    assert set(pf["component"]) == {"head", "attn", "mlp"}
    assert np.isfinite(pf["attribution"]).all() and (pf["attribution"] != 0).any()
    # a layer's attention attribution is the sum of its heads'
    keys = ["fact", "layer", "position", "position_kind"]
    heads = pf[(pf.component == "head") & (pf.position_kind != "all")].groupby(keys)["attribution"].sum()
    attn = pf[pf.component == "attn"].set_index(keys)["attribution"]
    np.testing.assert_allclose(heads.sort_index(), attn.sort_index(), rtol=1e-4, atol=1e-7)
    n = tiny.cfg.n_layers * tiny.cfg.n_heads
    assert len(pf[(pf.component == "head") & (pf.position_kind == "all")]) == 3 * n


# ---------------------------------------------------------------------------
# Localization builders
# ---------------------------------------------------------------------------


def _scores(model):
    rows = []
    for layer in range(model.cfg.n_layers):
        rows.append(dict(component="mlp", layer=layer, head=None, position_kind="last_subject", effect=2.0 + layer))
        for h in range(model.cfg.n_heads):
            rows.append(dict(component="head", layer=layer, head=h, position_kind="last", effect=-0.1 * (h + 1)))
    return pd.DataFrame(rows)


def test_output_tracing_budget(tiny):
    sizes = models.components(tiny).set_index("component")["n_params"]
    scores = _scores(tiny)
    ranked = localization.component_scores(scores)
    assert ranked["component"].iloc[0] == f"m{tiny.cfg.n_layers - 1}"
    assert ranked.set_index("component").loc["a0", "score"] == pytest.approx(sum(0.1 * (h + 1) for h in range(4)))
    budget = int(sizes["m1"] + sizes["m0"])
    loc = localization.output_tracing(tiny, scores, budget=budget)
    assert loc.components == ["m1", "m0"] and loc.n_params <= budget and loc.meta["n_params"] == loc.n_params
    # the prefix rule stops at the first component that does not fit; greedy skips it
    tight = int(sizes["m1"] + sizes["a0"])
    assert localization.output_tracing(tiny, scores, budget=tight).components == ["m1"]
    greedy = localization.output_tracing(tiny, scores, budget=tight, rule="greedy")
    assert greedy.components == ["m1", "a0"] and greedy.n_params == tight
    assert localization.output_tracing(tiny, scores, mlp_only=True, top_k=1).components == ["m1"]
    with pytest.raises(ValueError, match="exceeds the budget"):
        localization.output_tracing(tiny, scores, budget=10)
    with pytest.raises(ValueError, match="positive"):
        localization.output_tracing(tiny, scores, budget=0)
    with pytest.raises(ValueError, match="exceeds the"):
        localization.output_tracing(tiny, scores, budget=localization.attn_mlp_params(tiny) + 1)


def test_baselines(tiny):
    total = localization.attn_mlp_params(tiny)
    assert localization.non_localized(tiny).n_params == total
    mlps = localization.all_mlps(tiny)
    assert mlps.components == [f"m{l}" for l in range(tiny.cfg.n_layers)]
    budget = mlps.n_params
    a = localization.random_components(tiny, budget, seed=3)
    b = localization.random_components(tiny, localization.match_budget(mlps), seed=3)
    assert a.components == b.components and 0 < a.n_params <= budget
    seeds = {tuple(localization.random_components(tiny, budget, seed=s).components) for s in range(8)}
    assert len(seeds) > 1
    with pytest.raises(ValueError, match="no component fits"):
        localization.random_components(tiny, 5, seed=0)
    with pytest.raises(ValueError, match="positive"):
        localization.random_components(tiny, -1)

"""Per-layer probes and the fact-lookup (FLU) rule."""

import numpy as np
import pandas as pd
import pytest
import torch

from mechunlearn_nb import localization, positions, probing, prompts, scoring

ATHLETES = ["LeBron James", "Tom Brady", "Anthony DeSclafani", "DeForest Buckner", "Derek Jeter"]


def _fact(a):
    return prompts.FACT_TEMPLATE.format(athlete=a)


# ---------------------------------------------------------------------------
# subject positions
# ---------------------------------------------------------------------------


def test_subject_span_matches_the_subject_tokens(tiny):
    tok = tiny.tokenizer
    for a in ATHLETES:
        p = _fact(a)
        ids = tok(p)["input_ids"]
        start, end = positions.subject_span(tiny, ids, a, prompt=p)
        # end exclusive, as a Python slice
        assert ids[start:end] == tok(" " + a, add_special_tokens=False)["input_ids"]
        # the one-shot athlete comes first: the span is the queried athlete's, after it
        assert start > 4
    pos = positions.fact_positions(tiny, [_fact(a) for a in ATHLETES], ATHLETES)
    assert list(pos.columns) == ["first_subject", "last_subject", "last", "n_tokens"]
    assert (pos["last"] == pos["n_tokens"] - 1).all() and (pos["last_subject"] < pos["last"]).all()
    assert (pos["first_subject"] <= pos["last_subject"]).all()
    spans = [positions.subject_span(tiny, ids, a) for ids, a in zip(scoring.encode_prompts(tiny, [_fact(a) for a in ATHLETES]), ATHLETES)]
    assert pos["first_subject"].tolist() == [s for s, _ in spans] and pos["last_subject"].tolist() == [e - 1 for _, e in spans]


def test_subject_span_falls_back_to_character_offsets(tiny):
    # glued to its neighbours the subject tokenizes differently than on its own
    prompt = "Who is(LeBron Jamesx)?"
    ids = tiny.tokenizer(prompt)["input_ids"]
    start, end = positions.subject_span(tiny, ids, "LeBron James", prompt=prompt)
    toks = tiny.tokenizer.convert_ids_to_tokens(ids)
    text = "".join(toks[start:end]).replace("▁", " ")
    assert "LeBron" in text and "James" in text


def test_subject_not_in_prompt_is_a_clear_error(tiny):
    p = _fact("LeBron James")
    with pytest.raises(positions.SubjectNotFoundError, match="does not occur in the prompt"):
        positions.subject_span(tiny, tiny.tokenizer(p)["input_ids"], "Michael Jordan", prompt=p)
    with pytest.raises(ValueError, match="one subject per prompt"):
        positions.fact_positions(tiny, [_fact("Tom Brady")], [])
    # without the prompt's text, a subject missing from the tokens is the same error
    with pytest.raises(positions.SubjectNotFoundError, match="not found in the prompt's tokens"):
        positions.subject_span(tiny, tiny.tokenizer(p)["input_ids"], "Michael Jordan")


# ---------------------------------------------------------------------------
# residuals
# ---------------------------------------------------------------------------


def test_residual_shapes_and_batch_equals_single(tiny):
    ps = [_fact(a) for a in ATHLETES]
    pos = positions.fact_positions(tiny, ps, ATHLETES)
    n_points = tiny.cfg.n_layers + 1
    X = probing.residuals(tiny, ps, pos["last_subject"].to_numpy(), batch_size=3, progress=False)
    assert X.shape == (len(ps), n_points, tiny.cfg.d_model) and X.dtype == torch.float32
    both = probing.residuals(tiny, ps, {"last_subject": pos["last_subject"], "last": [-1] * len(ps)},
                             batch_size=len(ps), progress=False)
    assert set(both) == {"last_subject", "last"}
    torch.testing.assert_close(both["last_subject"], X, atol=1e-4, rtol=1e-4)
    single = torch.cat([probing.residuals(tiny, [p], [-1], progress=False) for p in ps])
    torch.testing.assert_close(both["last"], single, atol=1e-4, rtol=1e-4)
    # -1 and the absolute last index are the same position; different layers differ
    torch.testing.assert_close(probing.residuals(tiny, ps[:2], pos["last"][:2], progress=False), single[:2])
    assert not torch.allclose(X[:, 0], X[:, -1])


def test_residuals_match_the_bridge_cache(tiny):
    p = _fact("Tom Brady")
    X = probing.residuals(tiny, [p], [-1], progress=False)[0]
    _, cache = tiny.run_with_cache(p)
    ref = [cache["blocks.0.hook_resid_pre"][0, -1]] + [cache[f"blocks.{l}.hook_resid_post"][0, -1] for l in range(tiny.cfg.n_layers)]
    torch.testing.assert_close(X, torch.stack(ref).float(), atol=1e-4, rtol=1e-4)


def test_residuals_reject_bad_positions(tiny):
    with pytest.raises(IndexError, match="outside prompt"):
        probing.residuals(tiny, ["Fact: a"], [50], progress=False)
    with pytest.raises(ValueError, match="one index per prompt"):
        probing.residuals(tiny, ["Fact: a", "Fact: b"], [1], progress=False)


def test_answer_probabilities_match_scoring(tiny):
    from mechunlearn_nb import scoring

    ps = [_fact(a) for a in ATHLETES]
    X = probing.residuals(tiny, ps, [-1] * len(ps), progress=False)
    answers = [" football", " baseball", " basketball"]
    p = probing.answer_probabilities(tiny, X[:, -1], answers)
    ref = np.stack(scoring.score(tiny, ps, answers, progress=False)["probs_norm"])
    np.testing.assert_allclose(p.numpy(), ref, atol=1e-4)
    facts = pd.DataFrame({"athlete": ATHLETES, "sport": ["basketball", "football", "baseball", "football", "baseball"]})
    known, Xk = probing.known_fact_residuals(tiny, facts, threshold=0.3, progress=False)
    expect = ref[np.arange(5), [["football", "baseball", "basketball"].index(s) for s in facts["sport"]]] >= 0.3
    assert known["athlete"].tolist() == facts["athlete"][expect].tolist()
    assert Xk["last_subject"].shape[0] == len(known) and set(Xk) == {"last_subject", "last"}
    # "final", the last token's earlier name, is read as "last"
    _, Xo = probing.known_fact_residuals(tiny, facts, threshold=0.3, positions=("last_subject", "final"), progress=False)
    assert set(Xo) == {"last_subject", "last"}
    torch.testing.assert_close(Xo["last"], Xk["last"])
    with pytest.raises(ValueError, match="not among the answers"):
        probing.known_fact_residuals(tiny, facts.assign(sport="golf"), progress=False)


# ---------------------------------------------------------------------------
# probes
# ---------------------------------------------------------------------------


def _synthetic(n=240, d=16, seed=0):
    """Three classes: invisible at layer 0, separable at layers 1 and 2."""
    rng = np.random.default_rng(seed)
    y = np.array(["football", "baseball", "basketball"])[rng.integers(0, 3, n)]
    means = {s: rng.normal(0, 3, d) for s in np.unique(y)}
    X = rng.normal(0, 1, (n, 3, d))
    X[:, 1] += np.stack([means[s] for s in y]) * 0.5
    X[:, 2] += np.stack([means[s] for s in y])
    return torch.tensor(X, dtype=torch.float32), y


def test_probes_on_separable_data():
    X, y = _synthetic()
    train, test = probing.split_indices(y, seed=1)
    assert len(set(train) & set(test)) == 0 and len(train) + len(test) == len(y)
    # stratified: each class is split about in half
    for s in np.unique(y):
        assert abs((y[train] == s).sum() - (y[test] == s).sum()) <= 1
    assert np.array_equal(probing.split_indices(y, seed=1)[0], train)  # seeded
    probes = probing.train_probes(X[train], y[train])
    acc = probing.probe_accuracy(probes, X[test], y[test], position="x", split="test")
    assert list(acc.columns) == ["split", "position", "layer", "accuracy", "n"]
    assert acc["accuracy"].iloc[2] > 0.95 and acc["accuracy"].iloc[0] < 0.6
    pred = probing.apply_probes(probes, X[test])
    assert pred.shape == (len(test), 3) and set(np.unique(pred)) <= set(y)
    p = probing.probe_probabilities(probes, X[test], y[test])
    assert p.shape == (len(test), 3) and ((p >= 0) & (p <= 1)).all() and p[:, 2].mean() > 0.9
    with pytest.raises(ValueError, match="probes"):
        probing.apply_probes(probes, X[:, :2])
    with pytest.raises(ValueError, match="two classes"):
        probing.train_probes(X[:10], ["golf"] * 10)


def test_layer_probes_on_the_tiny_model(tiny):
    facts = pd.DataFrame({"athlete": ATHLETES * 2 + ["Serena Williams", "Roger Federer"],
                          "sport": ["basketball", "football", "baseball", "football", "baseball"] * 2 + ["basketball", "football"]})
    lp = probing.layer_probes(tiny, facts, progress=False)
    acc = lp.accuracy
    assert set(acc["position"]) == {"last_subject", "last"} and set(acc["split"]) == {"train", "test"}
    assert len(acc) == 2 * 2 * (tiny.cfg.n_layers + 1)
    assert acc["accuracy"].between(0, 1).all()
    assert lp.X["last"].shape == (len(facts), tiny.cfg.n_layers + 1, tiny.cfg.d_model)
    assert (lp.facts["split"] == "test").sum() == (acc["n"][acc["split"] == "test"]).iloc[0]
    tl = lp.true_label_probabilities("last_subject")
    assert set(tl.columns) == {"athlete", "split", "layer", "p_true", "position"} and len(tl) == len(facts) * (tiny.cfg.n_layers + 1)
    assert len(lp.best()) == 2


# ---------------------------------------------------------------------------
# the fact-lookup rule
# ---------------------------------------------------------------------------

N_LAYERS = 12


def _probe_df(subject=(0.4, 0.4, 0.45, 0.7, 0.8, 0.85, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9),
              last=(0.35, 0.35, 0.35, 0.35, 0.4, 0.4, 0.4, 0.45, 0.5, 0.9, 0.95, 0.95, 0.95)):
    rows = [dict(layer=i, position="last_subject", split="test", accuracy=a) for i, a in enumerate(subject)]
    rows += [dict(layer=i, position="last", split="test", accuracy=a) for i, a in enumerate(last)]
    rows += [dict(layer=i, position="last_subject", split="train", accuracy=1.0) for i in range(len(subject))]
    return pd.DataFrame(rows)


MLP = [0.5, 0.05, 0.3, 0.05, 0.4, 0.35, 0.04, 0.02, 0.3, 0.0, 0.0, 0.0]


def _patching_df(mlp=MLP, heads=((1, 0, 0.9), (7, 2, 1.0), (9, 1, 0.6), (8, 3, 0.3))):
    rows = []
    for layer, e in enumerate(mlp):
        rows.append(dict(layer=layer, position_kind="last_subject", component="mlp", head=pd.NA, effect=e))
        rows.append(dict(layer=layer, position_kind="first_subject", component="mlp", head=pd.NA, effect=e / 2))
        rows.append(dict(layer=layer, position_kind="last", component="mlp", head=pd.NA, effect=0.9))  # not a subject position
    for layer in range(N_LAYERS if heads is not None else 0):
        for h in range(4):
            e = next((x for l, hh, x in heads if (l, hh) == (layer, h)), 0.01)
            rows.append(dict(layer=layer, position_kind="last", component="head", head=h, effect=e))
    return pd.DataFrame(rows)


def test_flu_rule_picks_the_expected_layers():
    ev = localization.fact_lookup_evidence(_probe_df(), _patching_df())
    dec = ev.attrs["decision"]
    # probes rise after block 2 (rise 0.6 >= 0.2); block 1's head is before the look-up and does not count;
    # the first extraction head after it is a7.h2, so MLPs 2..6 are in the window; MLP 0 and MLP 8 are outside
    assert dec["start"] == 2 and dec["extraction"] == 7 and dec["end"] == 6
    assert ev.loc[ev["candidate"], "layer"].tolist() == [2, 4, 5]
    assert dec["layers"] == [2, 3, 4, 5]
    assert ev.loc[7, "top_head"] == 2 and ev.loc[2, "probe_subject"] == pytest.approx(0.7)
    strict = localization.fact_lookup_evidence(_probe_df(), _patching_df(),
                                               rule=localization.FactLookupRule(contiguous=False))
    assert strict.attrs["decision"]["layers"] == [2, 4, 5]
    # a spike after block 0 that falls back is probe noise: the start stays at block 2
    raw = localization.FactLookupRule(monotone=False)
    spiky = localization.fact_lookup_evidence(_probe_df(subject=(0.4, 0.6, 0.42) + (0.7, 0.8, 0.85) + (0.9,) * 7),
                                              _patching_df(), rule=raw)
    assert spiky.loc[0, "probe_rise"] == pytest.approx(0.4) and spiky.attrs["decision"]["start"] == 2
    # a noisy dip after block 4: on the raw accuracies the start jumps past it, on the isotonic fit it stays
    dip = _probe_df(subject=(0.4, 0.4, 0.45, 0.7, 0.8, 0.45) + (0.9,) * 7)
    assert localization.fact_lookup_evidence(dip, _patching_df(), rule=raw).attrs["decision"]["start"] == 5
    fitted = localization.fact_lookup_evidence(dip, _patching_df())
    assert fitted.attrs["decision"]["start"] == 2 and fitted["probe_rise"].is_monotonic_increasing
    tight = localization.fact_lookup_evidence(_probe_df(), _patching_df(), rule=localization.FactLookupRule(mlp_threshold=0.75))
    assert tight.attrs["decision"]["layers"] == [4]


def test_flu_rule_without_heads_uses_the_last_token_probe():
    pdf = _patching_df()
    ev = localization.fact_lookup_evidence(_probe_df(), pdf[pdf["component"] != "head"])
    dec = ev.attrs["decision"]
    # the last-token probe reaches half its gain after block 8 (probe layer 9): end = 7
    assert dec["extraction"] == 8 and dec["extraction_from"] == "last-token probes"
    # a probe table that calls the last token "final" (its earlier name) gives the same decision
    old = _probe_df().replace({"position": {"last": "final"}})
    assert localization.fact_lookup_evidence(old, pdf[pdf["component"] != "head"]).attrs["decision"] == dec
    assert dec["layers"] == [2, 3, 4, 5]
    no_probes = localization.fact_lookup_evidence(None, pdf[pdf["component"] != "head"], n_layers=N_LAYERS)
    assert no_probes.attrs["decision"]["start"] == 0 and no_probes.attrs["decision"]["layers"] == list(range(0, 9))


def test_flu_rule_errors_on_empty_or_contradicting_evidence(tiny):
    with pytest.raises(ValueError, match="patching table is empty"):
        localization.fact_lookup_evidence(_probe_df(), pd.DataFrame(columns=["layer", "position_kind", "component", "effect"]))
    pdf = _patching_df()
    with pytest.raises(ValueError, match="no 'mlp' rows"):
        localization.fact_lookup_evidence(_probe_df(), pdf[pdf["component"] == "head"])
    with pytest.raises(ValueError, match="lacks column"):
        localization.fact_lookup_evidence(_probe_df(), pdf.drop(columns="effect"))
    with pytest.raises(ValueError, match="no test rows"):
        localization.fact_lookup_evidence(_probe_df().assign(position="final"), pdf)
    flat = _probe_df(subject=[0.5] * 13)
    with pytest.raises(ValueError, match="never gain"):
        localization.fact_lookup_evidence(flat, pdf)
    # an extraction head right after the start and no MLP effect in between: nothing passes
    with pytest.raises(ValueError, match="No MLP passes"):
        localization.fact_lookup(tiny, _probe_df(subject=(0.4, 0.9, 0.9)), _patching_df(mlp=[0.0, 1.0], heads=((1, 0, 1.0),)))
    with pytest.raises(ValueError, match="share between 0 and 1"):
        localization.FactLookupRule(mlp_threshold=2)


def test_fact_lookup_builds_a_localization(tiny):
    # tiny has 2 blocks: probes rise after block 0, MLPs 0 and 1 matter at the subject, no extraction head
    probe = _probe_df(subject=(0.3, 0.8, 0.9), last=(0.3, 0.3, 0.3))
    loc = localization.fact_lookup(tiny, probe, _patching_df(mlp=[0.4, 0.5], heads=None), mlp_threshold=0.5)
    assert loc.components == ["m0", "m1"] and loc.name == "fact lookup"
    both = localization.Localization.from_components(tiny, ["m0", "m1"])
    assert loc.n_params == both.n_params
    assert loc.meta["layers"] == [0, 1] and loc.meta["first_layer"] == 0 and loc.meta["last_layer"] == 1
    assert "FLU" in loc.meta["rule"] and loc.meta["thresholds"]["mlp_threshold"] == 0.5
    assert len(loc.meta["evidence"]) == tiny.cfg.n_layers
    with pytest.raises(ValueError, match="not both"):
        localization.fact_lookup(tiny, probe, _patching_df(mlp=[0.4, 0.5]), rule=localization.FactLookupRule(), mlp_threshold=0.1)


# ---------------------------------------------------------------------------
# on the real model
# ---------------------------------------------------------------------------


@pytest.mark.slow
def test_subject_probe_reads_the_sport_on_gemma(gemma):
    from mechunlearn_nb import tasks

    known = tasks.known_facts(gemma, progress=False).sample(160, random_state=0)
    lp = probing.layer_probes(gemma, known, positions=("last_subject",), progress=False)
    test = lp.accuracy[lp.accuracy["split"] == "test"]
    # on the embeddings the subject token says little; after the middle blocks the probe reads the sport
    assert test["accuracy"].max() >= 0.75
    assert test["accuracy"].max() - test["accuracy"].iloc[0] >= 0.15
    assert test["accuracy"].max() > lp.meta["majority"] + 0.25

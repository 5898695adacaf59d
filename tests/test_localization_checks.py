"""Checks of a localization on the tiny model: threshold sensitivity of the fact-lookup rule, MLP ablation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mechunlearn_nb import data, localization, probing, tasks


def _evidence(n_layers: int = 8):
    # subject probes rise from block 2 on; subject MLP effects peak at blocks 2-4; a strong head at block 6
    probe = pd.DataFrame({"layer": np.arange(n_layers + 1), "position": "last_subject", "split": "test",
                          "accuracy": [0.33, 0.35, 0.4, 0.7, 0.85, 0.9, 0.9, 0.9, 0.9]})
    mlp = [0.02, 0.1, 0.6, 1.0, 0.45, 0.15, 0.05, 0.02]
    patch = pd.DataFrame({"layer": np.arange(n_layers), "position_kind": "last_subject", "component": "mlp",
                          "head": np.nan, "effect": mlp})
    heads = pd.DataFrame({"layer": np.arange(n_layers), "position_kind": "last", "component": "head", "head": 0,
                          "effect": [0.0, 0.0, 0.05, 0.1, 0.2, 0.3, 1.0, 0.4]})
    return probe, pd.concat([patch, heads], ignore_index=True)


def test_threshold_sweep_shows_how_the_range_moves():
    probe, patch = _evidence()
    sweep = localization.threshold_sweep(probe, patch)
    default = localization.fact_lookup_evidence(probe, patch).attrs["decision"]["layers"]
    assert default == [2, 3, 4]
    assert set(sweep["threshold"]) == set(localization.SWEEP)
    at_default = sweep[sweep["is_default"]]
    assert len(at_default) == len(localization.SWEEP) and at_default["same_as_default"].all()
    assert (at_default["layers"] == "m2 m3 m4").all()
    # a looser MLP threshold takes block 5 in, a stricter one leaves only the strongest two
    mlp = sweep[sweep["threshold"] == "mlp_threshold"].set_index("value")
    assert mlp.loc[0.1, "layers"] == "m2 m3 m4 m5" and mlp.loc[0.5, "layers"] == "m2 m3"
    assert not mlp.loc[0.5, "same_as_default"]
    assert mlp["n_mlps"].is_monotonic_decreasing
    with pytest.raises(ValueError, match="Unknown threshold"):
        localization.threshold_sweep(probe, patch, grid={"mlp_treshold": (0.1,)})


def test_ablating_mlps_at_the_subject(tiny):
    facts = data.load_sports().sample(6, random_state=0).reset_index(drop=True)
    clean = localization.ablate_mlps(tiny, facts, [])
    scored = tasks.score_facts(tiny, "sports", facts=facts, progress=False)
    np.testing.assert_allclose(clean, scored["p_true_norm"].to_numpy(), atol=1e-4)
    zero = localization.ablate_mlps(tiny, facts, [0, 1])
    assert not np.allclose(zero, clean)
    mean = localization.ablate_mlps(tiny, facts, [1], mode="mean")
    assert mean.shape == clean.shape and np.isfinite(mean).all()
    table = localization.ablation_check(tiny, facts, [1], n_random=2)
    assert list(table["set"]) == ["clean", "chosen", "random 0", "random 1"]
    assert table.loc[0, "drop"] == 0 and 0 <= table.attrs["share_random_at_least"] <= 1
    n_at_least = round(table.attrs["share_random_at_least"] * 2)
    assert table.attrs["p_value"] == (1 + n_at_least) / 3  # the chosen set counted among the draws: never 0
    with pytest.raises(ValueError, match="outside"):
        localization.ablate_mlps(tiny, facts, [99])


def test_fact_lookup_located_again_from_other_evidence_samples(tiny, monkeypatch):
    """registry.stability locates fact lookup once per seed and compares each with the first. The residuals notebook
    03 already read can stand in for reading them again per seed: the probes come out the same. (The tiny random
    model has no look-up for the rule to find, so the per-seed locating is replaced by recorded ranges here.)"""
    from mechunlearn_nb import probing, registry

    known, X = probing.known_fact_residuals(tiny, data.load_sports().head(120), threshold=0.0, progress=False)
    for seed in (0, 1):
        pd.testing.assert_frame_equal(probing.layer_probes(tiny, known, seed=seed, progress=False).accuracy,
                                      probing.layer_probes(tiny, known, seed=seed, progress=False, X=X).accuracy)
    ranges, passed = {0: [2, 3, 4, 5], 1: [3, 4, 5], 2: [2, 3, 4, 5]}, []

    def recorded(model, dataset, names, n_locate, n_probe, seed, progress, known, residuals, relation_probes):
        passed.append(residuals is X and relation_probes is False)
        return {}, {"flu_layers": ranges[seed]}

    monkeypatch.setattr(registry, "locate", recorded)
    table = registry.stability(tiny, seeds=(0, 1, 2), known=known, residuals=X)
    assert all(passed) and list(table["same_as_first"]) == [True, False, True]
    assert list(table["jaccard"]) == [1.0, 0.75, 1.0] and list(table["n_mlps"]) == [4, 3, 4]


def _counterfact_known(n_per: dict[str, dict[str, int]]) -> pd.DataFrame:
    rows = []
    for relation, counts in n_per.items():
        for target, n in counts.items():
            rows += [dict(relation_id=relation, subject=f"{target} subject {k}", prompt="The home of {} is",
                          target_true=target) for k in range(n)]
    return pd.DataFrame(rows)


def test_the_rule_reads_per_relation_probes_as_their_mean():
    probe, patch = _evidence()
    spread = np.array([0.05, -0.05, 0.1, -0.1, 0.0, 0.05, -0.05, 0.0, 0.0])
    per_relation = pd.concat([probe.assign(relation="P1", accuracy=probe["accuracy"] + spread),
                              probe.assign(relation="P2", accuracy=probe["accuracy"] - spread)], ignore_index=True)
    ev = localization.fact_lookup_evidence(per_relation, patch)
    assert np.allclose(ev["probe_subject"], probe["accuracy"].iloc[1:].to_numpy())
    assert ev.attrs["decision"]["layers"] == localization.fact_lookup_evidence(probe, patch).attrs["decision"]["layers"]


def test_counterfact_relation_probe_facts_balance_each_relations_answers():
    known = _counterfact_known({"P1": {"French": 30, "Dutch": 22, "Russian": 20, "Tamil": 3},
                                "P2": {"Apple": 40, "IBM": 25},  # two answers only: left out
                                "P3": {"Asia": 21, "Africa": 20, "Europe": 20}})
    facts = probing.relation_probe_facts(known, min_per_class=20, min_classes=3, seed=0)
    assert facts.attrs["relations"] == {"P1": dict(classes=["Dutch", "French", "Russian"], per_class=20),
                                        "P3": dict(classes=["Africa", "Asia", "Europe"], per_class=20)}
    counts = facts.groupby(["relation_id", "target_true"]).size()
    assert (counts == 20).all() and len(counts) == 6  # Tamil (3 facts) is not a class; each class cut to 20
    again = probing.relation_probe_facts(known, min_per_class=20, min_classes=3, seed=0)
    assert facts["subject"].tolist() == again["subject"].tolist()  # seeded
    with pytest.raises(ValueError, match="No relation has 3 answers with 50 known facts"):
        probing.relation_probe_facts(known, min_per_class=50)
    with pytest.raises(ValueError, match="relation_id"):
        probing.relation_probe_facts(known.drop(columns="relation_id"))


def test_counterfact_relation_probes_on_the_tiny_model(tiny):
    names = ["Anna Berg", "Carl Dahl", "Erik Falk", "Gina Holm", "Ivan Juhl", "Karl Lund"]
    rows = [dict(relation_id=rel, subject=f"{name} {rel}", prompt=prompt, target_true=target)
            for rel, prompt, targets in (("P1", "The mother tongue of {} is", ("French", "Dutch", "Russian")),
                                         ("P2", "{} was created by", ("Apple", "Google", "IBM")))
            for target in targets for name in names]
    probes = probing.relation_probes(tiny, pd.DataFrame(rows), progress=False)
    assert set(probes["relation"]) == {"P1", "P2"}
    assert set(probes["position"]) == {"last_subject", "last"} and set(probes["split"]) == {"train", "test"}
    assert sorted(probes["layer"].unique()) == list(range(tiny.cfg.n_layers + 1))
    test = probes[probes["split"] == "test"]
    assert np.allclose(test["majority"], 1 / 3) and (test["n"] == 9).all()
    with pytest.raises(ValueError, match="Unknown position"):
        probing.relation_probes(tiny, pd.DataFrame(rows), positions=("middle",), progress=False)


def test_noise_inputs_find_a_subject_the_prompt_tokenises_differently(tiny):
    """'Desi Arnaz, Jr.' followed by "'s" merges '.' and "'" into one token: the subject's own tokens do not occur in
    the prompt, so the span comes from character offsets (a CounterFact fact that stopped locating at seed 1)."""
    from mechunlearn_nb import tracing

    facts = pd.DataFrame({"subject": ["Desi Arnaz, Jr."], "target_true": ["actor"]})
    inputs = tracing.noise_inputs(tiny, facts, prompts=["Desi Arnaz, Jr.'s profession is an"], subject_col="subject",
                                  answer_col="target_true")
    tokens = tiny.tokenizer.convert_ids_to_tokens(inputs.clean_ids[0])
    start, end = inputs.spans[0]
    assert start == 1  # the first name token, after BOS
    assert "".join(tokens[start:end]).replace("▁", " ").strip() == "Desi Arnaz, Jr.'"  # through the merged ".'"

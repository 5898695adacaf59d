"""Attribution patching vs causal tracing of the same components, on the same prompts, in the same run.

Both score every attention head (its ``z``) and every MLP output of every layer, on the same
facts with the same corruption (ROME's noise on the subject's embeddings, so the prompts are
token for token the same):

- **causal tracing** restores each (component, layer, position) in its own batch row — one
  row per head × layer × position and per MLP × layer × position, over the traced position
  kinds (first/last subject token, later tokens, last token);
- **attribution patching** does one clean forward, one backward and one corrupted forward per
  batch of facts, and scores every head and MLP at *every* position (more than tracing covers).

The baseline, measured in the same run, is one plain forward pass over the same clean prompts
(``forward_seconds``), so both costs are also given in forward-pass equivalents. The two
methods alternate over ``--repeats`` runs so that background load affects both alike; the
best time of each is kept.

    python benchmarks/bench_attribution_vs_tracing.py [--n-facts 4] [--repeats 2]

Writes ``benchmarks/results/attribution_vs_tracing.json``.
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
    ap.add_argument("--n-facts", type=int, default=4, help="facts traced and attributed")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64, help="restored runs per forward pass (tracing)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default=None, help="model name (default: the embedded Gemma 3 270M)")
    args = ap.parse_args()

    from mechunlearn_nb import models, patching, scoring, tasks, tracing

    model = models.load_model(args.model)
    known = tasks.known_facts(model, "sports", progress=False)
    facts = known.sample(args.n_facts, random_state=args.seed).reset_index(drop=True)
    noise_std = tracing.embedding_std(model, known["athlete"])
    # the same prompts and the same noise for both methods; metric: p(true answer)
    inputs = tracing.noise_inputs(model, facts, noise_std=noise_std, seed=args.seed)

    def trace():
        return patching.run_patches(model, inputs, components=("head", "mlp"), head_positions="kinds",
                                    batch_size=args.batch, progress=False)

    def attribute():
        return patching.attribution_patching(model, inputs, components=("head", "mlp"), batch_size=args.n_facts,
                                             progress=False)

    @torch.no_grad()
    def forward():
        ids, mask, _ = scoring.pad_right(inputs.clean_ids, model.tokenizer.pad_token_id or 0)
        scoring.hidden_states(model, ids, mask)

    forward()  # warm-up
    times = {"tracing": [], "attribution_patching": [], "forward": []}
    results = {}
    for _ in range(args.repeats):
        for name, fn in (("forward", forward), ("attribution_patching", attribute), ("tracing", trace)):
            t0 = time.perf_counter()
            results[name] = fn()
            times[name].append(time.perf_counter() - t0)
    best = {k: min(v) for k, v in times.items()}

    traced, attributed = results["tracing"], results["attribution_patching"]
    table = patching.compare(patching.average_over_facts(traced), patching.average_over_facts(attributed), components=("head", "mlp"))
    n_traced = len(traced.drop_duplicates(["fact", "component", "layer", "head", "position"]))
    per_position = attributed[(attributed.position_kind != "all") & attributed.component.isin(["head", "mlp"])]
    n_attributed = len(per_position.drop_duplicates(["fact", "component", "layer", "head", "position"]))
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    n_all_positions = sum(len(i) for i in inputs.clean_ids) * n_layers * (n_heads + 1)
    result = {
        "model": models.model_name(model), "n_facts": len(facts), "repeats": args.repeats, "batch_size": args.batch,
        "seconds": times, "best_seconds": best,
        "ratio_tracing_over_attribution": best["tracing"] / best["attribution_patching"],
        "tracing_forward_equivalents": best["tracing"] / best["forward"],
        "attribution_forward_equivalents": best["attribution_patching"] / best["forward"],
        "n_restored_runs_tracing": n_traced,
        "n_scores_attribution_traced_kinds": n_attributed,
        "n_scores_attribution_all_positions": n_all_positions,
        "pearson_r_effects": patching.correlation(table),
        "pearson_r_mlp": patching.correlation(table, "mlp"),
        "pearson_r_head": patching.correlation(table, "head"),
        "threads": torch.get_num_threads(), "machine": platform.machine(),
    }
    out = Path(__file__).parent / "results" / "attribution_vs_tracing.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=float))
    print(f"causal tracing: {n_traced} restored runs in {best['tracing']:.1f} s "
          f"({result['tracing_forward_equivalents']:.0f} forward passes)\n"
          f"attribution patching: every head and MLP at every position in {best['attribution_patching']:.2f} s "
          f"({result['attribution_forward_equivalents']:.1f} forward passes)\n"
          f"ratio {result['ratio_tracing_over_attribution']:.0f}x (goal >= 20x); "
          f"Pearson r of the effects {result['pearson_r_effects']:.2f} (MLP {result['pearson_r_mlp']:.2f}, "
          f"heads {result['pearson_r_head']:.2f})")
    assert np.isfinite(result["ratio_tracing_over_attribution"])


if __name__ == "__main__":
    main()

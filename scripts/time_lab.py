"""Time the unlearning lab on the embedded model: a one-fact edit (repeated), its report, optionally the attack.

Each step's wall-clock and CPU time (since the edit began) is printed as it completes, with the machine's
load average, so a run on a shared machine says how shared it was. The edit is the lab's default
(``lab.EDIT_SETTINGS``): forget one athlete through fact lookup.

    python scripts/time_lab.py [--athlete "LeBron James"] [--target forget] [--localization "fact lookup"]
                               [--steps 5] [--repeats 3] [--attack]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from mechunlearn_nb import lab, models


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--athlete", default="LeBron James")
    ap.add_argument("--target", default=lab.FORGET)
    ap.add_argument("--localization", default="fact lookup")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--attack", action="store_true")
    args = ap.parse_args()
    load = lambda: open("/proc/loadavg").read().split()[0] if os.path.exists("/proc/loadavg") else "?"  # noqa: E731

    t = time.perf_counter()
    model = models.load_model()
    print(f"model loaded in {time.perf_counter() - t:.1f} s; torch threads {torch.get_num_threads()}", flush=True)
    t = time.perf_counter()
    the_lab = lab.Lab(model)
    print(f"lab ready in {time.perf_counter() - t:.1f} s", flush=True)
    walls = []
    for _ in range(args.repeats):
        t0, c0 = time.perf_counter(), time.process_time()

        def on_step(row, t0=t0, c0=c0):
            print(f"  step {row['step']}: wall {time.perf_counter() - t0:.1f} s, cpu {time.process_time() - c0:.1f} s, "
                  f"forget_acc {row.get('forget_acc')}, load {load()}", flush=True)

        result = the_lab.edit(args.athlete, args.target, args.localization, args.steps, on_step=on_step)
        walls.append(time.perf_counter() - t0)
        print(f"edit: wall {walls[-1]:.1f} s (training loop {result.manifest['seconds']} s), "
              f"cpu {time.process_time() - c0:.1f} s, final {result.final()}, load {load()}", flush=True)
    print(f"median edit wall time over {len(walls)}: {statistics.median(walls):.1f} s", flush=True)
    t = time.perf_counter()
    report = the_lab.report()
    print(report.round(3).to_string(), f"\nreport in {time.perf_counter() - t:.1f} s", flush=True)
    if args.attack:
        t = time.perf_counter()
        curve = the_lab.attack()
        print(curve[["step", "half", "accuracy"]].to_string(), f"\nattack in {time.perf_counter() - t:.1f} s", flush=True)
    print(the_lab.revert(), flush=True)


if __name__ == "__main__":
    main()

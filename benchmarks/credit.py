"""Credit-assignment rules on the embedded MNIST-5k: accuracy, forgetting, speed and memory.

Prints one table, rule x stream -> final average test accuracy, forgetting, backward transfer,
wall seconds per epoch and peak memory; mean ± SEM over seeds. Every rule trains the same
784-256-256-10 MLP (forward-forward: 794-256-256, the label appended to the input) with Adam at
the same learning rate, batch size and number of steps. Streams:

  mnist      plain MNIST-5k as a 1-task stream (3,600 training, 400 validation, 1,000 test)
  permuted   PermutedMNIST-3, task-incremental
  split      SplitMNIST-5 (2 classes per task), task-incremental

    python benchmarks/credit.py                               # defaults: ~10 min on 2 cores
    python benchmarks/credit.py --streams mnist --seeds 5 --steps 3000
    python benchmarks/credit.py --rules backprop dfa --set growing=true --hidden 32 32

Seconds per epoch = wall seconds of the whole run (training and the evaluations at task ends)
/ passes over the training set; each job runs in its own fresh process, and peak memory is that
process's peak resident set above its size just before the learner was built (the dataset,
torch and its kernels, warmed up on a tiny network, are loaded by then), so it counts the model,
optimizer, activations and evaluation.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import resource
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed

RULES = ["backprop", "feedback_alignment", "dfa", "synthetic_gradients", "forward_forward",
         "target_prop"]
STREAMS = {
    "mnist": {"kind": "permuted", "tasks": 1, "scenario": "task"},
    "permuted": {"kind": "permuted", "tasks": 3, "scenario": "task"},
    "split": {"kind": "split", "tasks": 5, "scenario": "task"},
}
#: the accuracy targets: points of accuracy a rule may lose to backprop on plain MNIST
TARGETS = {"feedback_alignment": 1.5, "dfa": 1.5, "synthetic_gradients": 1.5,
           "forward_forward": 4.0, "target_prop": 4.0}


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def run_one(rule: str, stream: str, seed: int, steps: int, cl_steps: int, lr: float,
            hidden: list[int], overrides: dict) -> dict:
    """Train one learner through its stream in this (fresh) process; final metrics, timings."""
    import torch

    from lifelab.platform.data import load_dataset
    from lifelab.platform.metrics import summarize
    from lifelab.trainables.registry import learner_class

    torch.set_num_threads(1)
    data = load_dataset("mnist5k")
    per_task = steps if stream == "mnist" else cl_steps
    config = {"stream": {**STREAMS[stream], "steps_per_task": per_task}, "seed": seed,
              "lr": lr, "hidden": hidden, **overrides}
    # warm up torch's lazily loaded kernels on a tiny network, so they do not count as the rule's
    warm = learner_class(rule)({**config, "hidden": [4], "stream": {**config["stream"],
                                                                    "steps_per_task": 2}},
                               data=data)
    warm.step_round()
    del warm
    before = _rss_mib()
    learner = learner_class(rule)(config, data=data)
    start = time.perf_counter()
    while not learner.done:
        learner.step_round()
    wall = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    batch = learner.config["batch_size"]
    epochs = sum(per_task * batch / task.num_train for task in learner.stream.tasks)
    summary = summarize(learner.rows)
    return {"acc": 100 * summary["acc_avg"], "forgetting": 100 * summary.get("forgetting", 0),
            "bwt": 100 * summary.get("bwt", 0), "s_per_epoch": wall / epochs,
            "peak_mib": peak - before,
            "units": sum(layer.out_features for layer in learner.model.hidden_layers)}


def mean_sem(values: list[float], digits: int = 1) -> str:
    mean = statistics.fmean(values)
    if len(values) < 2:
        return f"{mean:.{digits}f}"
    sem = statistics.stdev(values) / math.sqrt(len(values))
    return f"{mean:.{digits}f} ± {sem:.{digits}f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rules", nargs="+", default=RULES, choices=RULES)
    parser.add_argument("--streams", nargs="+", default=list(STREAMS), choices=STREAMS)
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (default 3)")
    parser.add_argument("--steps", type=int, default=2000, help="steps on plain MNIST")
    parser.add_argument("--cl-steps", type=int, default=300,
                        help="steps per task on the continual streams")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--hidden", type=int, nargs="+", default=[256, 256])
    parser.add_argument("--jobs", type=int, default=2, help="parallel processes (1 thread each)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="a learner config key, e.g. growing=true")
    args = parser.parse_args(argv)
    overrides = {}
    for item in args.overrides:
        key, _, value = item.partition("=")
        if not value:
            raise SystemExit(f"--set takes key=value, got {item!r}")
        import yaml

        overrides[key] = yaml.safe_load(value)

    jobs = [(r, s, seed) for s in args.streams for r in args.rules for seed in range(args.seeds)]
    context = multiprocessing.get_context("spawn")     # a fresh process per job: clean peaks
    with ProcessPoolExecutor(args.jobs, mp_context=context, max_tasks_per_child=1) as pool:
        futures = {pool.submit(run_one, *job, args.steps, args.cl_steps, args.lr, args.hidden,
                               overrides): job for job in jobs}
        for done, future in enumerate(as_completed(futures), start=1):
            print(f"{done}/{len(jobs)} {' '.join(map(str, futures[future]))}", file=sys.stderr,
                  flush=True)
        results = {job: f.result() for f, job in futures.items()}

    print(f"\nembedded MNIST-5k, MLP {'-'.join(map(str, args.hidden))}, Adam lr {args.lr}, "
          f"batch 64; plain MNIST {args.steps} steps, continual streams {args.cl_steps} steps "
          f"per task; {args.seeds} seeds (mean ± SEM); accuracies in %\n")
    grows = bool(overrides.get("growing"))      # then show where growth took each network
    print("| rule | stream | test accuracy | vs backprop | forgetting | BWT | s / epoch "
          "| peak MiB |" + (" hidden units at the end |" if grows else ""))
    print("| --- | --- |" + " ---: |" * (7 if grows else 6))
    for stream in args.streams:
        reference = None
        if "backprop" in args.rules:
            reference = statistics.fmean(results[("backprop", stream, s)]["acc"]
                                         for s in range(args.seeds))
        for rule in args.rules:
            rows = [results[(rule, stream, seed)] for seed in range(args.seeds)]

            def col(key: str, rows: list = rows) -> str:
                return mean_sem([r[key] for r in rows])

            gap = "-"
            if reference is not None and rule != "backprop":
                gap = f"{statistics.fmean(r['acc'] for r in rows) - reference:+.1f}"
            forgetting = "-" if stream == "mnist" else col("forgetting")
            bwt = "-" if stream == "mnist" else col("bwt")
            print(f"| {rule} | {stream} | {col('acc')} | {gap} | {forgetting} | {bwt} "
                  f"| {mean_sem([r['s_per_epoch'] for r in rows], 2)} "
                  f"| {mean_sem([r['peak_mib'] for r in rows], 0)} |"
                  + (f" {mean_sem([r['units'] for r in rows], 0)} |" if grows else ""))
        sys.stdout.flush()
    if "mnist" in args.streams and "backprop" in args.rules:
        print("\ntargets on plain MNIST (accuracy points against backprop):")
        reference = statistics.fmean(results[("backprop", "mnist", s)]["acc"]
                                     for s in range(args.seeds))
        for rule in args.rules:
            if rule in TARGETS:
                gap = reference - statistics.fmean(results[(rule, "mnist", s)]["acc"]
                                                   for s in range(args.seeds))
                verdict = "met" if gap <= TARGETS[rule] else f"MISSED by {gap - TARGETS[rule]:.1f}"
                where = f"{gap:.1f} below" if gap >= 0 else f"{-gap:.1f} above"
                print(f"  {rule}: {where} backprop (target: within {TARGETS[rule]}): {verdict}")


if __name__ == "__main__":
    main()

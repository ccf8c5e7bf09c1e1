"""The hypernetwork learner against the baselines, its step time as earlier tasks accumulate, its
memory and compression.

    python benchmarks/hnet.py                      # everything (~15 min on 2 cores)
    python benchmarks/hnet.py --only speed         # step times only (~1 min)
    python benchmarks/hnet.py --only quality --steps-per-task 500
    python benchmarks/hnet.py --only p100 --p100-steps 200 --beta 0.05

quality: PermutedMNIST-10 from the embedded MNIST-5k, task-incremental, every learner with the
  same budget (steps per task, batch size, learning rate) and the same target-network size;
  online EWC and SI at a few strengths, the one with the best validation `val_acc_avg` compared
  (selection never sees test images; test `acc_avg` is reported once, for the picked strength).
  Checks the learner's targets: hnet within 2 points of joint, BWT >= -1 point, clearly above
  finetune, >= online EWC.
speed: one training step (forward + output regularizer + backward + Adam) of hnet on the
  configuration hypnettorch's ChunkedHMLP was measured with (target 784-100-100-10, hypernetwork
  100-100, chunks of 750, batch 128, 2 threads), with 0, 10, 50, 100 earlier tasks (stored
  embeddings and snapshots in place, as after learning them); the best of several repeats.
p100: PermutedMNIST-100 end to end (short tasks): wall time per task early and late, memory;
  hypernetwork sizes as for quality (--hnet-hidden, --chunk-size).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import torch

from lifelab.learners.hnet import HNet
from lifelab.platform.data import load_dataset
from lifelab.platform.metrics import backward_transfer
from lifelab.trainables.registry import learner_class, learner_names

# hypnettorch ChunkedHMLP + output regularizer, measured on this machine: ms per step
HYPNETTORCH_MS = {0: 2.4, 10: 26.0, 50: 129.0}
SPEED_CONFIG = {"target_hidden": [100, 100], "hnet_hidden": [100, 100], "chunk_size": 750,
                "batch_size": 128}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(name: str, config: dict, data) -> dict:
    learner = learner_class(name)(config, data=data)
    start = time.perf_counter()
    while not learner.done:
        metrics = learner.step_round()
    metrics["wall_s"] = time.perf_counter() - start
    metrics["final_row"] = learner.rows[-1]
    if isinstance(learner, HNet):
        metrics["final_row_cil"] = learner.view_rows["cil"][-1]
    return metrics


def quality(args, data) -> None:
    stream = {"dataset": "mnist5k", "kind": "permuted", "tasks": args.tasks, "scenario": "task",
              "steps_per_task": args.steps_per_task}
    common = {"stream": stream, "lr": args.lr, "batch_size": 128, "seed": args.seed}
    runs: list[tuple[str, str, dict]] = [
        ("hnet", f"hnet {'-'.join(map(str, args.hnet_hidden))}, chunks {args.chunk_size}, "
                 f"beta {args.beta:g}",
         {"target_hidden": [100, 100], "hnet_hidden": args.hnet_hidden,
          "chunk_size": args.chunk_size, "beta": args.beta}),
        ("joint", "", {"hidden": [100, 100]}),
        ("finetune", "", {"hidden": [100, 100]}),
    ]
    names = learner_names()
    if "online_ewc" in names:
        runs += [("online_ewc", f"lambda={lam:g}", {"hidden": [100, 100], "online_ewc_lambda": lam})
                 for lam in args.ewc_lambdas]
    if "si" in names:
        runs += [("si", f"c={c:g}", {"hidden": [100, 100], "si_c": c}) for c in args.si_cs]
    results = []
    for name, label, config in runs:
        m = run(name, {**common, **config}, data)
        results.append((name, label, m))
        print(f"  ran {name} {label}: acc_avg {m['acc_avg']:.4f} in {m['wall_s']:.0f} s",
              flush=True)

    print(f"\n## Quality: PermutedMNIST-{args.tasks} (MNIST-5k), {args.steps_per_task} steps/task, "
          f"batch 128, lr {args.lr}, target/MLP 784-100-100-10, seed {args.seed}\n")
    # several strengths of one learner: the best validation accuracy picks (never test)
    best = {}
    for name, _, m in results:
        if name not in best or m["val_acc_avg"] > best[name]["val_acc_avg"]:
            best[name] = m
    print("Strengths selected by val_acc_avg (validation split, column 3); the other columns are "
          "test, reported once.\n")
    print("| learner | setting | val_acc_avg (selects) | acc_avg (task given) | bwt | forgetting "
          "| acc_avg_cil | wall s |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, label, m in results:
        cil = f"{m['acc_avg_cil']:.4f}" if "acc_avg_cil" in m else "-"
        pick = " (picked)" if best[name] is m and sum(r[0] == name for r in results) > 1 else ""
        print(f"| {name} | {label}{pick} | {m['val_acc_avg']:.4f} | {m['acc_avg']:.4f} | "
              f"{m.get('bwt', float('nan')):+.4f} | {m.get('forgetting', float('nan')):.4f} | "
              f"{cil} | {m['wall_s']:.0f} |")
    hnet = results[0][2]
    print("\nFinal accuracy on each task after learning all of them (hnet, task given):")
    print("  " + " ".join(f"{a:.3f}" for a in hnet["final_row"]))
    print("Same with the task inferred (minimum entropy):")
    print("  " + " ".join(f"{a:.3f}" for a in hnet["final_row_cil"]))
    print(f"compression ratio: {hnet['compression_ratio']:.3f}")

    checks = [
        ("within 2 points of joint", hnet["acc_avg"] >= best["joint"]["acc_avg"] - 0.02,
         f"{100 * (hnet['acc_avg'] - best['joint']['acc_avg']):+.2f} points"),
        ("BWT >= -1 point", hnet["bwt"] >= -0.01, f"{100 * hnet['bwt']:+.2f} points"),
        ("clearly above finetune", hnet["acc_avg"] >= best["finetune"]["acc_avg"] + 0.05,
         f"{100 * (hnet['acc_avg'] - best['finetune']['acc_avg']):+.2f} points"),
    ]
    for other in ("online_ewc", "si"):
        if other in best:
            checks.append((f">= {other} (strength picked on validation)",
                           hnet["acc_avg"] >= best[other]["acc_avg"],
                           f"{100 * (hnet['acc_avg'] - best[other]['acc_avg']):+.2f} points"))
    print("\n| requirement | holds | hnet minus other |")
    print("| --- | --- | ---: |")
    for what, ok, diff in checks:
        print(f"| {what} | {'yes' if ok else 'NO'} | {diff} |")


def step_ms(learner: HNet, earlier: int, lookahead: bool, repeats: int, steps: int) -> float:
    """Best-of-`repeats` mean time of `steps` training steps with `earlier` earlier tasks."""
    hnet = learner.model
    gen = torch.Generator().manual_seed(earlier)
    learner.config["lookahead"] = lookahead
    with torch.no_grad():
        learner.task_embs = torch.randn(earlier, hnet.task_emb_dim, generator=gen)
        learner.snapshot()
    for _ in range(3):
        learner.train_step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            learner.train_step()
        times.append((time.perf_counter() - start) / steps * 1e3)
    return min(times)


def speed(args, data) -> None:
    torch.set_num_threads(2)
    stream = {"dataset": "mnist5k", "kind": "permuted", "tasks": 100, "steps_per_task": 10}
    learner = HNet({**SPEED_CONFIG, "stream": stream}, data=data)
    hnet = learner.model
    counts = (0, 10, 50, 100)
    rows = []
    for lookahead in (False, True):
        for n in counts:
            ms = min(step_ms(learner, n, lookahead, args.repeats, args.steps) for _ in range(2))
            rows.append((n, lookahead, ms))
            print(f"  {n} earlier tasks, lookahead {lookahead}: {ms:.2f} ms", flush=True)
    print(f"\n## Speed: one training step, target 784-100-100-10 ({hnet.num_weights} weights), "
          f"hypernetwork 100-100, chunks of 750 ({hnet.num_chunks} chunks), batch 128, "
          f"reg_max_tasks {learner.config['reg_max_tasks']}, 2 threads\n")
    print("| earlier tasks | regularized per step | lookahead | ms/step | samples/s | "
          "hypnettorch ms/step | speed-up |")
    print("| ---: | ---: | --- | ---: | ---: | ---: | ---: |")
    for n, lookahead, ms in rows:
        ref = HYPNETTORCH_MS.get(n)
        ref_s = f"{ref:.1f}" if ref is not None and not lookahead else "-"
        up = f"{ref / ms:.1f}x" if ref is not None and not lookahead else "-"
        regularized = min(n, learner.config["reg_max_tasks"])
        print(f"| {n} | {regularized} | {'yes' if lookahead else 'no'} | {ms:.2f} | "
              f"{128 / ms * 1e3:,.0f} | {ref_s} | {up} |")
    ms50 = next(ms for n, la, ms in rows if n == 50 and not la)
    ms100 = next(ms for n, la, ms in rows if n == 100 and not la)
    print(f"\nat 50 earlier tasks: {HYPNETTORCH_MS[50] / ms50:.1f}x faster than hypnettorch "
          f"(needed: >= 5x); 100 vs 50 earlier tasks: {ms100 / ms50:.2f}x (flat beyond "
          "reg_max_tasks)")
    width = hnet.layers[-1].in_features
    per_task = (hnet.task_emb_dim + hnet.num_chunks * width) * 4
    print(f"memory a finished task adds: {per_task / 1024:.1f} KiB (embedding + snapshot "
          f"Z* {hnet.num_chunks}x{width}; its generated weights would be "
          f"{hnet.num_weights * 4 / 1024:.1f} KiB)")
    print(f"compression ratio: {learner.compression_ratio():.3f} (1 task embedding)")


def p100(args, data) -> None:
    torch.set_num_threads(2)
    stream = {"dataset": "mnist5k", "kind": "permuted", "tasks": 100,
              "steps_per_task": args.p100_steps}
    config = {**SPEED_CONFIG, "hnet_hidden": args.hnet_hidden, "chunk_size": args.chunk_size,
              "stream": stream, "lr": args.lr, "beta": args.beta, "cil_samples": 100}
    learner = HNet(config, data=data)
    task_s = []
    start = time.perf_counter()
    while not learner.done:
        t = time.perf_counter()
        learner.step_round()
        task_s.append(time.perf_counter() - t)
    total = time.perf_counter() - start
    row = learner.rows[-1]
    hnet_sizes = "-".join(map(str, args.hnet_hidden))
    print(f"\n## PermutedMNIST-100: {args.p100_steps} steps/task, batch 128, "
          f"target 784-100-100-10, hypernetwork {hnet_sizes}, chunks of {args.chunk_size}, "
          f"beta {args.beta:g}, lr {args.lr:g}, cil_samples 100\n")
    early, mid, late = (statistics.mean(task_s[a:b]) for a, b in ((0, 10), (40, 50), (90, 100)))
    print(f"total {total:.0f} s; seconds per task (training + evaluating every task so far): "
          f"tasks 1-10 {early:.2f}, 41-50 {mid:.2f}, 91-100 {late:.2f}")
    print(f"final acc_avg (task given) {sum(row) / len(row):.4f}, min {min(row):.3f}, "
          f"task 0 {row[0]:.3f}; bwt {backward_transfer(learner.rows):+.4f}")
    print("final accuracy per task (0..99): " + " ".join(f"{a:.2f}" for a in row))
    stored = learner.task_embs[0].numel() + learner.snap_z[0].numel()
    print(f"stored per finished task: {stored} floats ({stored * 4 / 1024:.1f} KiB); "
          f"peak RSS so far {peak_rss_mb():.0f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", choices=("quality", "speed", "p100"), action="append")
    parser.add_argument("--tasks", type=int, default=10)
    parser.add_argument("--steps-per-task", type=int, default=500)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--beta", type=float, default=0.05)
    parser.add_argument("--hnet-hidden", type=int, nargs="+", default=[300, 300])
    parser.add_argument("--chunk-size", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ewc-lambdas", type=float, nargs="*", default=[30.0, 100.0, 1000.0])
    parser.add_argument("--si-cs", type=float, nargs="*", default=[1.0, 3.0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--p100-steps", type=int, default=100)
    args = parser.parse_args()
    parts = args.only or ["speed", "quality"]
    data = load_dataset("mnist5k")
    torch.set_num_threads(2)
    if "speed" in parts:
        speed(args, data)
        print(f"peak RSS after speed: {peak_rss_mb():.0f} MB")
    if "quality" in parts:
        quality(args, data)
        print(f"peak RSS after quality: {peak_rss_mb():.0f} MB")
    if "p100" in parts:
        p100(args, data)
    print(f"\npeak RSS of this process: {peak_rss_mb():.0f} MB")


if __name__ == "__main__":
    main()

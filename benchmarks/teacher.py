"""Teacher networks against tuned SGD and Adam: meta-train teachers on the embedded MNIST-5k, then
train fresh held-out students with each teacher and with SGD / Adam whose learning rates are
tuned per student and per horizon on a grid, and print one table row per (teacher, dataset,
student architecture, activation, horizon), plus meta-training time and throughput.

    python benchmarks/teacher.py                      # about 20-30 minutes on 2 shared cores
    python benchmarks/teacher.py --meta-steps 50 --students 1 --no-long   # a quick look

Held-out: every meta-training student has 1-2 hidden layers of 20-50 sigmoid units on MNIST-5k;
the table's students are wider or deeper, other activations, or another dataset (8x8 digits).
Loss: cross-entropy on 1,000 training images (the objective being optimized), geometric mean over
the students; accuracy: on the test split, mean over the students.
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from lifelab.learners.teacher import StudentTask, Teacher, as_rows
from lifelab.platform.data import load_dataset

TEACHERS = {
    "gradient-mlp": {"features": "gradient", "teacher_kind": "mlp"},
    "gradient_free-mlp": {"features": "gradient_free", "teacher_kind": "mlp"},
    "gradient-lstm": {"features": "gradient", "teacher_kind": "lstm"},
}
# (dataset, hidden sizes, activation): none of them is a meta-training architecture
CELLS = [
    ("mnist5k", (64,), "sigmoid"),
    ("mnist5k", (64, 64), "sigmoid"),
    ("mnist5k", (64,), "relu"),
    ("digits", (64,), "sigmoid"),
    ("digits", (32, 32), "tanh"),
]
BENCH_SEED = 777_000       # held-out student seeds: BENCH_SEED + i


def geomean(values: list[float]) -> float:
    if any(not math.isfinite(v) for v in values):
        return math.inf
    # float32 cross-entropy can round to exactly 0: floor it rather than take log(0)
    return math.exp(sum(math.log(max(v, 1e-12)) for v in values) / len(values))


def meta_train(name: str, args) -> tuple[Teacher, dict]:
    config = {**TEACHERS[name], "teacher_hidden": [32], "meta_lr": args.meta_lr,
              "step_size": args.step_size, "unroll_steps": args.n, "truncation": 10,
              "meta_steps_per_round": 10, "meta_steps": args.meta_steps + 1,
              "eval_every": 10**6, "seed": args.seed}
    learner = Teacher(config)
    # the table's students are held out: no meta-training student may get one of their seeds
    learner.reserved |= {BENCH_SEED + i for i in range(args.students)}
    start = time.perf_counter()
    for _ in range(args.meta_steps // 10):
        metrics = learner.step_round()
    seconds = time.perf_counter() - start
    return learner, {"teacher": name, "meta_steps": learner.meta_step_count,
                     "meta_train_s": seconds, "students": learner.students,
                     "students_per_s": learner.students / seconds,
                     "student_steps_per_s": learner.meta_step_count * 10 / seconds,
                     "final_meta_loss": metrics["meta_loss"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teachers", default="gradient-mlp,gradient_free-mlp",
                        help=f"comma-separated, of {', '.join(TEACHERS)}")
    parser.add_argument("--meta-steps", type=int, default=300)
    parser.add_argument("--meta-lr", type=float, default=3e-3)
    parser.add_argument("--step-size", type=float, default=0.01)
    parser.add_argument("--n", type=int, default=100, help="N: meta-training unroll and horizon")
    parser.add_argument("--students", type=int, default=2, help="held-out students per cell")
    parser.add_argument("--no-long", action="store_true", help="skip the 10N horizon")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    horizons = [args.n, 2 * args.n] if args.no_long else [args.n, 2 * args.n, 10 * args.n]

    trained, speed = {}, []
    for name in args.teachers.split(","):
        learner, row = meta_train(name, args)
        trained[name] = learner
        speed.append(row)
        print(f"meta-trained {name}: {row['meta_steps']} meta-steps in "
              f"{row['meta_train_s']:.0f} s", flush=True)

    rows = []
    first = next(iter(trained.values()))
    for dataset, hidden, activation in CELLS:
        data = as_rows(load_dataset(dataset))      # students train on float rows
        tasks = [StudentTask(hidden, activation, BENCH_SEED + i) for i in range(args.students)]
        base = [first.baselines(task, data, horizons) for task in tasks]
        for name, learner in trained.items():
            start = time.perf_counter()
            runs = [learner.train_with_teacher(task, data, horizons) for task in tasks]
            steps_per_s = len(tasks) * max(horizons) / (time.perf_counter() - start)
            for h in horizons:
                row = {"teacher": name, "dataset": dataset,
                       "student": "-".join(map(str, hidden)), "act": activation, "steps": h,
                       "steps_per_s": steps_per_s}
                row["loss_teacher"] = geomean([r[h][0] for r in runs])
                row["acc_teacher"] = sum(r[h][1] for r in runs) / len(runs)
                for opt in ("sgd", "adam"):
                    row[f"loss_{opt}"] = geomean([b[opt][h][0] for b in base])
                    row[f"acc_{opt}"] = sum(b[opt][h][1] for b in base) / len(base)
                    row[f"lr_{opt}"] = "/".join(f"{b[opt][h][2]:.2g}" for b in base)
                rows.append(row)
        print(f"measured {dataset} {hidden} {activation}", flush=True)

    print(f"\nteacher vs tuned SGD / Adam: {args.students} held-out students per cell, "
          f"N = {args.n}, meta-trained {args.meta_steps} meta-steps (meta_lr {args.meta_lr}, "
          f"step_size {args.step_size}) on MNIST-5k students 1-2 x 20-50 sigmoid; "
          f"torch {torch.__version__}, 1 thread\n")
    print("| teacher | dataset | student | act | steps | loss teacher | loss SGD | loss Adam | "
          "teacher / Adam | acc teacher | acc SGD | acc Adam | tuned lr SGD | tuned lr Adam |")
    print("| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- "
          "| --- |")
    for r in rows:
        ratio = r["loss_teacher"] / r["loss_adam"] if math.isfinite(r["loss_teacher"]) \
            else math.inf
        print(f"| {r['teacher']} | {r['dataset']} | {r['student']} | {r['act']} | {r['steps']} "
              f"| {r['loss_teacher']:.3f} | {r['loss_sgd']:.3f} | {r['loss_adam']:.3f} "
              f"| {ratio:.2f} | {r['acc_teacher']:.3f} | {r['acc_sgd']:.3f} "
              f"| {r['acc_adam']:.3f} | {r['lr_sgd']} | {r['lr_adam']} |")

    print("\n| teacher | meta-steps | meta-train s | students / s | student steps / s "
          "(meta-training) | final meta_loss |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for s in speed:
        print(f"| {s['teacher']} | {s['meta_steps']} | {s['meta_train_s']:.0f} "
              f"| {s['students_per_s']:.3f} | {s['student_steps_per_s']:.1f} "
              f"| {s['final_meta_loss']:.3f} |")
    print("\n| teacher | dataset | student | act | meta-test student steps / s |")
    print("| --- | --- | --- | --- | ---: |")
    for r in rows:
        if r["steps"] == horizons[0]:
            print(f"| {r['teacher']} | {r['dataset']} | {r['student']} | {r['act']} "
                  f"| {r['steps_per_s']:.0f} |")


if __name__ == "__main__":
    main()

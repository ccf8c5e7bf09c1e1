"""Searches compared at equal compute: do evolving populations find better learners?

    python benchmarks/evolution.py [--family hnet,regularizer,teacher] [--repeats 3] ...

For each learner family it runs `lifelab compare-searches`' protocol (lifelab.searches.compare):
every search gets the same budget of trial-rounds (trials x rounds), repetitions are independent
searches with their own seeds, selection is on the validation metric, and the selected result's
test metric is read once. Families:

  hnet         the hypernetwork on PermutedMNIST (embedded MNIST-5k, task given): random search,
               PBT over lr/beta, PBT that also climbs the hypernetwork-width and embedding ladders
               (HNet.adapt widens the checkpoint function-preservingly)
  regularizer  SI on Split MNIST (domain-incremental): random, ASHA, Optuna, PBT, PB2 over
               lr and the SI strength
  teacher      teacher networks (learned optimizers) at equal meta-training steps: random search,
               PBT at a fixed architecture, PBT over the teacher-width ladder; selected on the
               meta-test loss ratio against tuned Adam (lower is better; no separate test split)

Sizes are flags; the defaults finish on a shared 2-core machine in about 15-30 minutes per
family. The table is printed; the figure and report land in <storage>/<family>-searches/ and the
figure is copied to docs/figures/evolution_<family>.png with --figures.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

from lifelab.searches.compare import parse_searches, run_comparison, write_outputs
from lifelab.searches.spec import spec_from_dict

ROOT = Path(__file__).resolve().parents[1]
# Every search draws initial architectures from the same ladder (a config choice); only pbt-arch
# moves a trial along it while it trains, so the comparison isolates mutation from the space.
LADDERS = {"hnet_hidden": [[25, 25], [50, 50], [100, 100]], "task_emb_dim": [8, 16, 32]}
TEACHER_LADDER = [[8], [16], [32]]


def hnet_spec(args) -> dict:
    return {
        "name": "hnet",
        "learner": "hnet",
        "stream": {"dataset": "mnist5k", "kind": "permuted", "tasks": args.tasks,
                   "scenario": "task", "steps_per_task": args.steps_per_task},
        "config": {"lr": {"loguniform": [3.0e-4, 2.0e-3]}, "batch_size": 128,
                   "steps_per_round": args.steps_per_task // 2, "target_hidden": [100, 100],
                   "hnet_hidden": {"choice": LADDERS["hnet_hidden"]}, "chunk_size": 750,
                   "task_emb_dim": {"choice": LADDERS["task_emb_dim"]}, "chunk_emb_dim": 16,
                   "beta": {"loguniform": [1.0e-3, 1.0e-1]}, "cil_eval": False},
        "search": {"scheduler": "pbt", "metric": "val_acc_avg", "mode": "max",
                   "perturbation_interval": 2, "quantile_fraction": 0.25,
                   "mutations": {"lr": {"loguniform": [3.0e-4, 2.0e-3]},
                                 "beta": {"loguniform": [1.0e-3, 1.0e-1]},
                                 **LADDERS}},
        "stop": {"rounds": 2 * args.tasks},
        "seed": 0,
    }


def regularizer_spec(args) -> dict:
    return {
        "name": "regularizer",
        "learner": "si",
        "stream": {"dataset": "mnist5k", "kind": "split", "tasks": 5, "scenario": "domain",
                   "steps_per_task": args.steps_per_task},
        "config": {"lr": {"loguniform": [1.0e-4, 1.0e-2]}, "hidden": [100, 100],
                   "batch_size": 64, "si_c": {"loguniform": [1.0e-2, 1.0e+2]},
                   "steps_per_round": args.steps_per_task},
        "search": {"metric": "val_acc_avg", "mode": "max", "perturbation_interval": 1,
                   "grace_period": 1, "reduction_factor": 2},
        "stop": {"rounds": 5},
        "seed": 0,
    }


def teacher_spec(args) -> dict:
    return {
        "name": "teacher",
        "learner": "teacher",
        "stream": {"dataset": "mnist5k", "seed": 0},
        "config": {"teacher_kind": "mlp", "teacher_hidden": {"choice": TEACHER_LADDER},
                   "features": "gradient", "step_size": 0.01, "meta_gradient": "bptt",
                   "meta_lr": {"loguniform": [3.0e-4, 3.0e-3]}, "unroll_steps": 50,
                   "truncation": 10, "meta_steps": args.meta_steps_per_round * args.rounds,
                   "meta_steps_per_round": args.meta_steps_per_round,
                   "student_depth": [1, 1], "student_width": [20, 30],
                   "student_activation": "sigmoid", "eval_hidden": [32], "eval_students": 1,
                   "eval_steps": 50, "eval_samples": 500, "eval_every": 1},
        "search": {"scheduler": "pbt", "metric": "val_loss_ratio_adam", "mode": "min",
                   "perturbation_interval": 2, "group_by": None,
                   "mutations": {"meta_lr": {"loguniform": [3.0e-4, 3.0e-3]},
                                 "teacher_hidden": TEACHER_LADDER}},
        "stop": {"rounds": args.rounds},
        "seed": 0,
    }


FAMILIES = {
    "hnet": (hnet_spec, "random,pbt,pbt-arch"),
    "regularizer": (regularizer_spec, "random,asha,optuna,pbt,pb2"),
    "teacher": (teacher_spec, "random,pbt,pbt-arch"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="regularizer,hnet,teacher",
                        help="comma-separated: " + ", ".join(FAMILIES))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--budget", type=int, default=0,
                        help="trial-rounds per search (default: 4 trials' worth)")
    parser.add_argument("--samples", type=int, default=4,
                        help="trials per search when --budget is not given")
    parser.add_argument("--searches", default="", help="override the family's searches")
    parser.add_argument("--tasks", type=int, default=3, help="hnet: PermutedMNIST tasks")
    parser.add_argument("--steps-per-task", type=int, default=0,
                        help="hnet: 200, regularizer: 100 (default)")
    parser.add_argument("--rounds", type=int, default=6, help="teacher: rounds")
    parser.add_argument("--meta-steps-per-round", type=int, default=5, help="teacher")
    parser.add_argument("--storage", default="/tmp/lifelab-evolution")
    parser.add_argument("--figures", action="store_true",
                        help="copy each figure to docs/figures/evolution_<family>.png")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    for family in [f.strip() for f in args.family.split(",") if f.strip()]:
        build, searches = FAMILIES[family]
        args.steps_per_task = args.steps_per_task or (200 if family == "hnet" else 100)
        spec = spec_from_dict(build(args))
        budget = args.budget or args.samples * spec.stop["rounds"]
        names = parse_searches(args.searches or searches)
        start = time.perf_counter()
        root, outcomes = run_comparison(spec, names, budget, args.repeats, storage=args.storage)
        path, text, _ = write_outputs(root, outcomes, budget, spec)
        print(f"\n{family}: budget {budget} trial-rounds, {args.repeats} repetitions, "
              f"{time.perf_counter() - start:.0f} s")
        print(text)
        print(f"report: {path}")
        if args.figures:
            target = ROOT / "docs" / "figures" / f"evolution_{family}.png"
            target.parent.mkdir(exist_ok=True)
            shutil.copy(Path(root) / "figures" / "searches.png", target)
            print(f"figure: {target}")
        args.steps_per_task = 0


if __name__ == "__main__":
    main()

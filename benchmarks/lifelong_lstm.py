"""The lifelong LSTM on trial-and-error MNIST-5k: per-presentation accuracy of the full model, its
ablations and the exact ceiling; training and inference speed in episodes/s.

Every variant is meta-trained with the same budget (rounds x batches x episodes) from the same
seed, then scored once on the same test episodes (test split, answers shuffled afresh). Nothing
is selected: every variant is reported at fixed settings; the per-round progress line shows the
validation episodes' val_acc_early (held-out training images), not a test number. Prints a
table and saves the curves as a PNG.

    .venv/bin/python benchmarks/lifelong_lstm.py                  # about 25 minutes on 2 cores
    .venv/bin/python benchmarks/lifelong_lstm.py --rounds 2 --eval-episodes 32   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from lifelab.analysis.ceilings import bayes_curve, ideal_curve
from lifelab.learners.lifelong_lstm import LifelongLSTM
from lifelab.platform.data import load_dataset

GROUPS = ((0, 1, 2, 3), (4, 5, 6), (7, 8, 9))
VARIANTS = {
    "full": {},
    "no_fast_weights": {"fast_weights": False},
    "no_type_c": {"type_c": False},
    "no_feedback": {"feedback": False},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=12, help="meta-training rounds")
    parser.add_argument("--batches", type=int, default=10, help="meta batches per round")
    parser.add_argument("--batch-episodes", type=int, default=16)
    parser.add_argument("--eval-episodes", type=int, default=256)
    parser.add_argument("--presentations", type=int, default=10)
    parser.add_argument("--tries", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--switch-at", type=int, default=0,
                        help="changing world: answers change before this presentation in half "
                             "the training episodes; recovery_steps is measured")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--png", default="docs/lifelong_lstm.png")
    parser.add_argument("--json", default="", help="also write the numbers here")
    parser.add_argument("--from-json", default="", help="reprint a saved run (table, PNG)")
    args = parser.parse_args()
    if args.from_json:
        saved = json.loads(Path(args.from_json).read_text())
        for key, value in saved["args"].items():
            if key not in ("png", "from_json", "json"):
                setattr(args, key, value)
        report(saved["curves"], saved["rows"], args, saved.get("early"))
        return
    torch.set_num_threads(1)
    data = load_dataset("mnist5k")
    stream = {"kind": "trial_and_error", "groups": [list(g) for g in GROUPS],
              "tries": args.tries, "presentations": args.presentations,
              "switch_at": args.switch_at}
    base = {"stream": stream, "rounds": args.rounds, "batches_per_round": args.batches,
            "batch_episodes": args.batch_episodes, "eval_episodes": args.eval_episodes,
            "lr": args.lr, "seed": args.seed}
    curves: dict[str, list[float]] = {}
    early: dict[str, list[float]] = {}
    rows = []
    for name in args.variants.split(","):
        learner = LifelongLSTM({**base, **VARIANTS[name]}, data=data)
        start = time.perf_counter()
        while not learner.done:
            metrics = learner.step_round()
            print(f"  {name:16s} round {learner.round:3d}  val_acc_early "
                  f"{metrics['val_acc_early']:.3f}"
                  f"  train_loss {metrics['train_loss']:.3f}", flush=True)
        train_s = time.perf_counter() - start
        start = time.perf_counter()
        out = learner.run_episodes(learner.eval_set)
        eval_s = time.perf_counter() - start
        episodes = args.rounds * args.batches * args.batch_episodes
        curves[name] = out["first"].mean(dim=(0, 2)).tolist()
        early[name] = out["first"][:, 1:5].mean(dim=(1, 2)).tolist()     # per episode
        recovery = learner.evaluate().get("recovery_steps", float("nan"))
        rows.append({"variant": name, "train_eps": episodes / train_s,
                     "recovery_steps": recovery,
                     "eval_eps": args.eval_episodes / eval_s, "train_s": train_s,
                     "mean_tries": out["tries"].mean().item(),
                     "improvement": (out["loss_first"] - out["loss_post"]).mean().item()})
    if args.json:
        Path(args.json).write_text(json.dumps({"curves": curves, "rows": rows, "early": early,
                                               "args": vars(args)}, indent=1))
    report(curves, rows, args, early)


def report(curves: dict, rows: list, args, early: dict | None = None) -> None:
    ceiling = ideal_curve(GROUPS, args.tries, args.presentations)
    ceiling["bayes"] = bayes_curve(GROUPS, args.tries, args.presentations)["acc"]
    print_table(curves, ceiling, rows, args)
    if early and "full" in early:
        print_paired(early)
    save_png(curves, ceiling, args)


def print_paired(early: dict) -> None:
    """full minus each ablation at presentations 2-5, paired over the same test episodes."""
    print("\nfull - variant, accuracy at presentations 2-5, paired over test episodes "
          "(mean +- standard error; one training seed each)")
    for name, values in early.items():
        if name == "full":
            continue
        diff = torch.tensor(early["full"]) - torch.tensor(values)
        se = diff.std().item() / len(diff) ** 0.5
        print(f"  full - {name:16s} {diff.mean().item():+.4f} +- {se:.4f}")


def print_table(curves: dict, ceiling: dict, rows: list, args) -> None:
    names = list(curves)
    print(f"\nfirst-try accuracy at the k-th presentation ({args.eval_episodes} test "
          f"episodes x 10 classes per point; ideal and bayes exact; chance "
          f"{ceiling['chance']:.3f})")
    print("k   " + "".join(f"{n:>16s}" for n in names) + f"{'ideal':>8s}{'bayes':>8s}")
    for k in range(args.presentations):
        print(f"{k + 1:<4d}" + "".join(f"{curves[n][k]:16.3f}" for n in names)
              + f"{ceiling['acc'][k]:8.3f}{ceiling['bayes'][k]:8.3f}")
    early = slice(1, 5)
    print("2-5 " + "".join(f"{_mean(curves[n][early]):16.3f}" for n in names)
          + f"{_mean(ceiling['acc'][early]):8.3f}{_mean(ceiling['bayes'][early]):8.3f}")
    print(f"\n{'variant':16s} {'mean_tries':>10s} {'improvement':>11s} {'recovery':>8s} "
          f"{'train ep/s':>10s} {'eval ep/s':>9s} {'train s':>8s}")
    for r in rows:
        print(f"{r['variant']:16s} {r['mean_tries']:10.3f} {r['improvement']:11.3f} "
              f"{r.get('recovery_steps', float('nan')):8.2f} {r['train_eps']:10.1f} "
              f"{r['eval_eps']:9.1f} {r['train_s']:8.0f}")
    print(f"ideal learner mean_tries {_mean(ceiling['tries']):.3f}; meta-training budget "
          f"{args.rounds * args.batches * args.batch_episodes} episodes per variant")


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def save_png(curves: dict, ceiling: dict, args) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.0), dpi=100, layout="constrained")
    ax = fig.subplots()
    ks = list(range(1, args.presentations + 1))
    ax.plot(ks, ceiling["bayes"], "k-", lw=1.2, alpha=0.6, label="Bayes-greedy learner (exact)")
    ax.plot(ks, ceiling["acc"], "k--", lw=1.6, label="ideal learner (exact)")
    ax.axhline(ceiling["chance"], color="0.6", lw=1, ls=":", label="chance within group")
    for name, curve in curves.items():       # one colour per variant in every picture
        ax.plot(ks, curve, marker="o", ms=3.5, lw=1.6, label=name,
                color=f"C{list(VARIANTS).index(name)}")
    ax.set_xlabel("presentation of a class within the episode")
    ax.set_ylabel("first-try accuracy (test episodes)")
    title = f"trial-and-error MNIST-5k, groups 4/3/3, {args.tries} tries"
    if getattr(args, "switch_at", 0):
        title += f"\n(trained with half the episodes switching before presentation " \
                 f"{args.switch_at}; scored without)"
    ax.set_title(title, fontsize=10)
    ax.set_ylim(0, 1.02)
    ax.set_xticks(ks)
    ax.grid(alpha=0.3)
    # between the remembering curves (near 1) and the rest (near chance)
    ax.legend(fontsize=7.5, loc="upper right", bbox_to_anchor=(1.0, 0.9), ncol=2)
    Path(args.png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.png)
    print(f"saved {args.png}")


if __name__ == "__main__":
    main()

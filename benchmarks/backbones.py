"""Training throughput of each backbone: lifelab's loop against a plain PyTorch loop, and the
FLOP/s achieved against a torch GEMM measured in the same run.

    python benchmarks/backbones.py [--steps 12] [--repeats 3] [--threads 1] [--nf 20]

Per backbone, on CPU (and on the GPU when there is one, with lifelab's CUDA defaults: mixed
precision and channels-last, mirrored in the plain loop):
- lifelab: `Finetune.train_step()` on a split stream (draw a batch, convert bytes to float,
  augment, normalise, forward, loss on the task's units, backward, SGD step). Evaluation is
  not timed: it is the same forward pass in both.
- plain: the same network (same initialisation) and the same data on the device, in the
  shortest loop doing the same work: indices, gather (index_select, as lifelab), bytes / 255,
  the same crop-and-flip for CIFAR, normalise, forward, cross-entropy, backward, step.
- overhead: lifelab's time per sample over plain's, minus 1 (target <= 5%), and the same as
  microseconds per step: a fixed cost per step, which shows on a step as short as the MLP's.
- GFLOP/s: the FLOPs of one training step (forward + backward, counted by
  torch.utils.flop_counter) times steps per second, and that as a share of a square float32
  GEMM's rate on the same device and threads.

The two loops run alternately, `--repeats` times each, and each reports its best block. On CPU
the clock is the process's CPU time, not the wall clock: on a machine shared with other jobs
the wall clock measures the neighbours too, while CPU time is what a dedicated core takes (the
same number there, for one thread). On CUDA it is the wall clock, synchronised.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
from torch.nn import functional as F
from torch.utils.flop_counter import FlopCounterMode

from lifelab.learners.backbones import Precision
from lifelab.learners.baselines import Finetune
from lifelab.platform import transforms
from lifelab.platform.data import NORMALIZATION, Dataset

# backbone -> (dataset name, image shape, batch size)
CASES = {"mlp": ("mnist5k", (1, 28, 28), 64), "cnn": ("mnist5k", (1, 28, 28), 32),
         "resnet18": ("cifar10", (3, 32, 32), 32)}


def synthetic(name: str, shape: tuple[int, ...], n: int = 2000) -> Dataset:
    """Random bytes under a built-in name: streams treat them like the real set (CIFAR gets
    its normalisation and crop-and-flip), without needing the files."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, *shape), dtype=torch.uint8, generator=g)
    y = torch.arange(n) % 10
    return Dataset(name, x, y, x[:100].clone(), y[:100].clone(), shape, 10)


def learner_for(backbone: str, device: str, nf: int) -> Finetune:
    name, shape, batch = CASES[backbone]
    config = {"backbone": backbone, "nf": nf, "batch_size": batch, "optimizer": "sgd",
              "lr": 0.01, "seed": 0,
              "stream": {"dataset": name, "kind": "split", "tasks": 5, "scenario": "class",
                         "steps_per_task": 10_000, "validation": 0}}
    return Finetune(config, device=device, data=synthetic(name, shape))


def lifelab_block(learner: Finetune, steps: int, clock) -> float:
    start = clock()
    for _ in range(steps):
        learner.train_step()
    return clock() - start


def plain_loop(learner: Finetune, device: str):
    """A plain PyTorch loop over a copy of the learner's network, data and settings."""
    model = copy.deepcopy(learner.model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    task = learner.stream.tasks[0]
    x_all, y_all = task._x_train.to(device), task._y_train.to(device)   # bytes, on the device
    name, shape, batch = CASES[learner.config["backbone"]]
    stats = NORMALIZATION.get(name)
    mean, std = ((torch.tensor(v, device=device).reshape(-1, 1, 1) for v in stats)
                 if stats else (None, None))
    augment = name == "cifar10"
    precision = Precision(device, True)
    gen = torch.Generator().manual_seed(1)
    units = learner.stream.output_units(0, 1)                         # as lifelab's task 0

    def block(steps: int, clock) -> float:
        model.train()
        start = clock()
        for _ in range(steps):
            idx = torch.randint(len(y_all), (batch,), generator=gen).to(device)
            x = x_all.index_select(0, idx).float().div_(255)
            if augment:
                offsets, flips = transforms.draw_crop_flip(batch, gen)
                x = transforms.crop_flip(x, offsets, flips)
            if mean is not None:
                x = (x - mean) / std
            with precision.autocast():
                loss = F.cross_entropy(model(x.reshape(batch, -1))[:, units],
                                       y_all.index_select(0, idx))
            optimizer.zero_grad(set_to_none=True)
            precision.backward(loss, optimizer)
            precision.step(optimizer)
        return clock() - start

    return block


def step_flops(learner: Finetune) -> int:
    """FLOPs of one training step's forward and backward (matmuls and convolutions)."""
    with FlopCounterMode(display=False) as counter:
        chunks = learner.training_batches()
        loss = sum(learner.summed_loss(x, y, t) for t, x, y in chunks)
        loss.backward()
    learner.optimizer.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def gemm_flops_per_s(device: str, size: int, clock, repeats: int = 5) -> float:
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = clock()
        a @ b
        best = min(best, clock() - start)
    return 2 * size ** 3 / best


def measure(device: str, args) -> list[dict]:
    def clock() -> float:
        if device == "cpu":
            return time.process_time()
        torch.cuda.synchronize()
        return time.perf_counter()

    gemm = gemm_flops_per_s(device, 1024 if device == "cpu" else 4096, clock)
    rows = []
    for backbone in CASES:
        learner = learner_for(backbone, device, args.nf)
        batch = CASES[backbone][2]
        flops = step_flops(learner)
        plain = plain_loop(learner, device)
        lifelab_block(learner, 2, clock)                 # warm-up both
        plain(2, clock)
        ours, theirs = float("inf"), float("inf")
        for _ in range(args.repeats):
            ours = min(ours, lifelab_block(learner, args.steps, clock))
            theirs = min(theirs, plain(args.steps, clock))
        steps_per_s = args.steps / ours
        rows.append({
            "device": device, "backbone": backbone, "batch": batch,
            "params": sum(p.numel() for p in learner.model.parameters()),
            "lifelab": steps_per_s * batch, "plain": args.steps / theirs * batch,
            "overhead": ours / theirs - 1, "overhead_us": (ours - theirs) / args.steps * 1e6,
            "gflops": flops * steps_per_s / 1e9,
            "of_gemm": flops * steps_per_s / gemm, "gemm": gemm / 1e9})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12, help="training steps per timed block")
    parser.add_argument("--repeats", type=int, default=3, help="timed blocks per loop")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (a 1-CPU trial: 1)")
    parser.add_argument("--nf", type=int, default=20, help="width of cnn / resnet18")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = [row for device in devices for row in measure(device, args)]
    print(f"torch {torch.__version__}, {args.threads} CPU thread(s), nf {args.nf}, "
          f"{args.steps} steps x {args.repeats} blocks, best block; CPU: CPU time")
    print("| device | backbone | batch | params | lifelab samples/s | plain samples/s | "
          "overhead | per step | GFLOP/s | of GEMM (GFLOP/s) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['device']} | {r['backbone']} | {r['batch']} | {r['params']:,} | "
              f"{r['lifelab']:,.0f} | {r['plain']:,.0f} | {100 * r['overhead']:+.1f}% | "
              f"{r['overhead_us']:+.0f} us | "
              f"{r['gflops']:.1f} | {100 * r['of_gemm']:.0f}% ({r['gemm']:.0f}) |")


if __name__ == "__main__":
    main()

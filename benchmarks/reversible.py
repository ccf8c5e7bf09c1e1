"""Reversible blocks (memory-saving backward) against the same blocks under ordinary autograd.

Prints two tables:

1. depth x backward -> memory of one training step and time per step, for a
   784 -> width -> depth blocks -> 10 network on a batch of random inputs:
   - saved_fwd_MiB: bytes autograd holds for backward when the forward ends (SavedTensorMeter:
     the tensors saved for backward, each storage once, parameters excluded);
   - saved_peak_MiB: the peak of the same over forward and backward;
   - tensor_peak_MiB: the peak of every tensor torch creates during forward + backward
     (activations, temporaries, gradients before they are added into .grad; the parameters and
     their .grad buffers, allocated before, are not counted), tracked op by op with a
     TorchDispatchMode;
   - params_MiB: the parameters (gradients of that size pass through backward in both kinds);
   - ms_step: median wall time of a forward + backward + SGD step (not under the meters);
   - grad_err: ||g - g64|| / ||g64|| over all parameter gradients, g64 from ordinary autograd
     in float64 on the same weights and batch: the standard row is float32 rounding alone, the
     reversible row adds the drift of reconstructing activations through the inverse.
2. depth x backward -> test accuracy on the embedded MNIST-5k (one task, no permutation) after
   the same number of Adam steps from the same seeds: the `reversible` learner with
   memory_saving true and false; mean and standard deviation over seeds.

    python benchmarks/reversible.py                  # about 9 minutes on 2 busy cores
    python benchmarks/reversible.py --depths 2 8 --batch 1024 --acc-depths 2 --seeds 0
    python benchmarks/reversible.py --acc-depths                # the memory table only
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.nn import functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from lifelab.learners.reversible import Reversible, ReversibleMLP, SavedTensorMeter
from lifelab.platform.data import load_dataset

MiB = 2 ** 20


class LiveTensorMeter(TorchDispatchMode):
    """Live and peak bytes of the storages created by torch ops while active (each storage
    once; a storage counts until it is freed). Storages of `exclude` (parameters and their
    .grad) are skipped: in-place ops on them (zero_, gradient accumulation) create nothing."""

    def __init__(self, exclude=()):
        super().__init__()
        self.refs: dict[int, tuple[StorageWeakRef, int]] = {}
        self.skip = {t.untyped_storage().data_ptr() for t in exclude}
        self.live = self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for key in [k for k, (ref, _) in self.refs.items() if ref.expired()]:
            self.live -= self.refs.pop(key)[1]
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                key = storage.data_ptr()
                if storage.nbytes() and key not in self.refs and key not in self.skip:
                    self.refs[key] = (StorageWeakRef(storage), storage.nbytes())
                    self.live += storage.nbytes()
        self.peak = max(self.peak, self.live)
        return out


def _step(model, x, y) -> None:
    loss = F.cross_entropy(model(x), y)
    model.zero_grad(set_to_none=False)
    loss.backward()


def memory_and_time(depth: int, width: int, batch: int, steps: int) -> dict[str, dict]:
    """Both kinds on the same weights and batch."""
    torch.manual_seed(0)
    model = ReversibleMLP(784, width, depth, 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(batch, 784), torch.randint(10, (batch,))
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    params = sum(p.numel() * p.element_size() for p in model.parameters()) / MiB
    out, grads = {}, {}
    for kind, saving in (("reversible", True), ("standard", False)):
        model.stack.memory_saving = saving
        kept = [*model.parameters(), *(p.grad for p in model.parameters())]
        with SavedTensorMeter(model.parameters()) as saved, LiveTensorMeter(kept) as tensors:
            loss = F.cross_entropy(model(x), y)
            saved_fwd = saved.live
            model.zero_grad(set_to_none=False)
            loss.backward()
            del loss
        grads[kind] = [p.grad.clone() for p in model.parameters()]
        state = {k: v.clone() for k, v in model.state_dict().items()}
        times = []
        for i in range(steps + 2):                 # two warm-up steps, not timed
            start = time.perf_counter()
            _step(model, x, y)
            opt.step()
            if i >= 2:
                times.append(time.perf_counter() - start)
        model.load_state_dict(state)               # the other kind starts from the same weights
        out[kind] = {"saved_fwd_MiB": saved_fwd / MiB, "saved_peak_MiB": saved.peak / MiB,
                     "tensor_peak_MiB": tensors.peak / MiB, "params_MiB": params,
                     "ms_step": 1e3 * statistics.median(times)}
    model.double().stack.memory_saving = False
    _step(model, x.double(), y)
    exact = [p.grad for p in model.parameters()]
    norm = torch.sqrt(sum(g.square().sum() for g in exact))
    for kind in out:
        diff = sum((a.double() - b).square().sum() for a, b in zip(grads[kind], exact,
                                                                    strict=True))
        out[kind]["grad_err"] = (torch.sqrt(diff) / norm).item()
    return out


def accuracy(depth: int, memory_saving: bool, width: int, steps: int, seed: int,
             data) -> dict:
    learner = Reversible({"stream": {"kind": "permuted", "tasks": 1, "steps_per_task": steps},
                          "width": width, "depth": depth, "memory_saving": memory_saving,
                          "seed": seed, "lr": 1e-3}, data=data)
    start = time.perf_counter()
    metrics = learner.step_round()
    return {"acc": metrics["acc_avg"], "loss": metrics["train_loss"],
            "s": time.perf_counter() - start}


def _mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else float("nan")
    return f"{statistics.mean(values):.4f} ± {sd:.4f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--depths", type=int, nargs="+", default=[2, 8, 32, 64])
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--timed-steps", type=int, default=10)
    ap.add_argument("--acc-depths", type=int, nargs="*", default=[2, 8],
                    help="none: skip the accuracy table")
    ap.add_argument("--acc-width", type=int, default=128)
    ap.add_argument("--steps", type=int, default=1000, help="Adam steps for the accuracy table")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    args = ap.parse_args()
    torch.set_num_threads(1)

    print(f"Training memory and time: 784 -> {args.width} x depth -> 10, batch {args.batch}, "
          f"1 thread, median of {args.timed_steps} steps")
    cols = ["saved_fwd_MiB", "saved_peak_MiB", "tensor_peak_MiB", "params_MiB", "ms_step"]
    print(f"{'depth':>5} {'backward':>10} " + " ".join(f"{c:>15}" for c in cols)
          + f" {'grad_err':>9}")
    for depth in args.depths:
        for kind, r in memory_and_time(depth, args.width, args.batch, args.timed_steps).items():
            print(f"{depth:>5} {kind:>10} " + " ".join(f"{r[c]:>15.2f}" for c in cols)
                  + f" {r['grad_err']:>9.1e}", flush=True)

    if not args.acc_depths:
        return
    data = load_dataset("mnist5k")
    print(f"\nMNIST-5k (4,000 train / 1,000 test), width {args.acc_width}, {args.steps} Adam "
          f"steps of 64, lr 1e-3, seeds {args.seeds}: mean ± sd")
    print(f"{'depth':>5} {'backward':>10} {'test_acc':>17} {'train_loss':>17} {'s_train':>8}")
    for depth in args.acc_depths:
        for kind, saving in (("reversible", True), ("standard", False)):
            runs = [accuracy(depth, saving, args.acc_width, args.steps, seed, data)
                    for seed in args.seeds]
            print(f"{depth:>5} {kind:>10} {_mean_sd([r['acc'] for r in runs]):>17} "
                  f"{_mean_sd([r['loss'] for r in runs]):>17} "
                  f"{statistics.mean(r['s'] for r in runs):>8.1f}", flush=True)


if __name__ == "__main__":
    main()

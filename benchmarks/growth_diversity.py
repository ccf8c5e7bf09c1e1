"""Do a widened network's new units learn apart from the units they came from? Options for
Net2Net widening, measured under the optimizers lifelab offers.

    OMP_NUM_THREADS=1 python benchmarks/growth_diversity.py     # mlp, hnet, ff (~12 min, loaded)
    OMP_NUM_THREADS=1 python benchmarks/growth_diversity.py --only mlp --seeds 0 1 2

mlp: a ReLU MLP 784-16-16-10 on MNIST-5k trained `--pre` steps, both hidden layers widened to 32,
  then `--post` more steps on the same batches for every option (and for the unwidened net).
hnet: the hypernetwork learner (2 hidden layers of 16 -> 32 through `HNet.adapt`), 3 permuted
  MNIST-5k tasks; the donor trains 3 rounds, every option's adapted learner `--hnet-rounds` more.
ff: forward-forward (credit learner) 784+10-16-16 widened to 32-32 by `learner.grow()`, whose
  widening (`growth.widen_homogeneous`) must keep every unit's own activation: options split
  (the scaled copy it does), noise (its copies plus antisymmetric noise), random_<s> (new units
  with random incoming weights at s x the layer's std: not exact, the goodness reads them).

Options (new units = the units a widening adds; old units keep their place):
  split      Net2Net copy, outgoing weights split among the copies in random shares (lifelab's
             widening before this benchmark)
  equal      Net2Net copy, equal shares (the paper)
  noise      `split` plus noise on the copies' incoming weights (std `--noise` x the layer's
             weight std), antisymmetric: the share-weighted sum of a unit's copies' noise is zero,
             so the next layer's input is unchanged to first order (Net2Net's symmetry breaking)
  moments    `split` with the optimizer moments carried over per copy (m scaled by the share,
             Adam's v unscaled) instead of restarted, so the split is not normalised away at once
  signed     Net2Net copy whose share of the outgoing weights is small and negative (-0.05 x u,
             u in [0.5, 1.5]; the unit keeps the rest): opposite-signed gradients, which Adam's
             normalisation cannot equalise (growth.widen_map's default split, `--signed-share`)
  zero_out   copy of the incoming weights (distinct sources while they last), all the outgoing
             weight stays with the old unit: the new unit's outgoing weights are zero (exact;
             growth.widen_map's default split, with UnitMap.take)
  random_in  random incoming weights (normal, the layer's weight std), zero outgoing weights
             (exact; UnitMap.incoming, which growth.resize_linear uses)

Columns: out_change  max |f_after - f_before| / max |f_before| at the widening, over test inputs
(logits; for hnet, every task's generated weights), max over seeds; twin_0 / twin_N  how far a new
unit's incoming weights (and bias) are from the nearest other unit's, relative to that unit's
norm (median over new units, mean over seeds), at the widening and after the steps; loss_N
training loss after the steps (mlp: the whole training set; hnet: the last round's mean);
d_loss  loss_N - loss of the unwidened network on the same batches (mean +- sem over seeds);
wide: (mlp) the wide network trained from the start on the same batches, for reference.
"""

from __future__ import annotations

import argparse
import copy
import statistics

import torch
from torch import nn
from torch.nn import functional as F

from lifelab.learners import growth
from lifelab.platform.data import load_dataset

OPTIONS = ("split", "equal", "noise", "moments", "signed", "zero_out", "random_in")
OPTIMIZERS = {"sgd": {"lr": 0.05}, "momentum": {"lr": 0.01, "momentum": 0.9},
              "adam": {"lr": 1e-3}}


def make_optimizer(kind: str, params) -> torch.optim.Optimizer:
    if kind == "adam":
        return torch.optim.Adam(params, **OPTIMIZERS[kind])
    return torch.optim.SGD(params, **OPTIMIZERS[kind])


# -- the options, on a list of nn.Linear (ReLU between) -------------------------------------------

def option_map(option: str, width: int, new_width: int, gen: torch.Generator) -> growth.UnitMap:
    split = {"equal": "equal", "signed": "signed", "zero_out": "zero",
             "random_in": "zero"}.get(option, "random")
    return growth.widen_map(width, new_width, gen, split=split)


def antisymmetric_noise(umap: growth.UnitMap, rows: torch.Tensor, std: float,
                        gen: torch.Generator, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Noise per row (`std` x each column's std over the rows: inputs differ in scale) with
    sum_j weight_j noise_j = 0 over the copies of each old unit (weight: the shares, or their
    square roots for homogeneous widening): the readers' input and the sums of squares are then
    unchanged to first order."""
    weight = (umap.share if weight is None else weight)[:, None]
    scale = std * rows.double().std(0, keepdim=True)
    noise = torch.randn(rows.shape, generator=gen, dtype=torch.float64) * scale
    units = int(umap.source.max()) + 1
    dot = torch.zeros(units, rows.shape[1], dtype=torch.float64).index_add_(
        0, umap.source, weight * noise)
    norm = torch.zeros(units, 1, dtype=torch.float64).index_add_(0, umap.source, weight ** 2)
    return (noise - weight * (dot / norm)[umap.source]).to(rows)


def carry_moments(states: dict, k: int, umap: growth.UnitMap) -> None:
    """Option 'moments': the optimizer state of layer k's rows and of its reader's columns (by
    parameter name) mapped like the weights. A copy's incoming gradient is its share times its
    source's: m is scaled by the share, Adam's v kept, so the first updates keep the split. A
    copy's outgoing gradient is its source's (same activation): taken unchanged."""
    share = umap.share.float()
    for name, dim in ((f"{k}.weight", 0), (f"{k}.bias", 0), (f"{k + 1}.weight", 1)):
        for key, value in states.get(name, {}).items():
            if key == "step":
                continue
            taken = umap.take(value, dim)
            if dim == 0 and key != "exp_avg_sq":
                taken = taken * share.reshape(-1, *[1] * (value.dim() - 1))
            states[name][key] = taken


def widen_layer(option, layers, k, new_width, gen, noise_std) -> growth.UnitMap:
    """Widen hidden layer k of `layers` (an nn.ModuleList) in place by `option`."""
    layer, reader = layers[k], layers[k + 1]
    umap = option_map(option, layer.out_features, new_width, gen)
    w, b = umap.take(layer.weight.detach(), 0), umap.take(layer.bias.detach(), 0)
    if option == "noise":
        both = antisymmetric_noise(umap, torch.cat([w, b[:, None]], 1), noise_std, gen)
        w, b = w + both[:, :-1], b + both[:, -1]
    if option == "random_in":
        w = umap.incoming(layer.weight.detach(), 0, gen)
    new_layer = nn.Linear(layer.in_features, new_width)
    new_reader = nn.Linear(new_width, reader.out_features)
    with torch.no_grad():
        new_layer.weight.copy_(w)
        new_layer.bias.copy_(b)
        new_reader.weight.copy_(umap.spread(reader.weight.detach(), 1))
        new_reader.bias.copy_(reader.bias.detach())
    layers[k], layers[k + 1] = new_layer, new_reader
    return umap


def forward(layers, x):
    for layer in layers[:-1]:
        x = torch.relu(layer(x))
    return layers[-1](x)


def twin_distance(rows: torch.Tensor, new: torch.Tensor) -> float:
    """Median over the new rows of the distance to the nearest other row, both scaled to unit
    norm (scale-free: forward-forward's copies are scaled copies; ~ the relative difference)."""
    unit = rows.double() / rows.double().norm(dim=1, keepdim=True).clamp(min=1e-12)
    dist = torch.cdist(unit, unit, compute_mode="donot_use_mm_for_euclid_dist")
    dist.fill_diagonal_(float("inf"))
    return dist.min(1).values[new].median().item()


def rows_of(layer: nn.Linear) -> torch.Tensor:
    return torch.cat([layer.weight.detach(), layer.bias.detach()[:, None]], 1)


def record(before, after, twins_0, twins_n, loss) -> dict[str, float]:
    nan = float("nan")
    return {"out_change": nan if after is None else
            ((after - before).abs().max() / before.abs().max()).item(),
            "twin_0": statistics.mean(twins_0) if twins_0 else nan,
            "twin_N": statistics.mean(twins_n) if twins_n else nan, "loss_N": loss}


# -- mlp -----------------------------------------------------------------------------------------

def mlp_run(seed: int, kind: str, args, data) -> dict[str, dict[str, float]]:
    x, y, x_test = data
    torch.manual_seed(seed)
    sizes = [x.shape[1], *args.hidden, 10]
    layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(sizes, sizes[1:], strict=False))
    batches = torch.Generator().manual_seed(seed)
    order = [torch.randint(len(x), (args.batch,), generator=batches)
             for _ in range(args.pre + args.post)]

    def train(layers, opt, steps):
        for idx in steps:
            opt.zero_grad()
            F.cross_entropy(forward(layers, x[idx]), y[idx]).backward()
            opt.step()

    opt = make_optimizer(kind, layers.parameters())
    train(layers, opt, order[:args.pre])
    with torch.no_grad():
        before = forward(layers, x_test)
    results = {}
    for option in ("none", *args.options):
        net = copy.deepcopy(layers)
        new_opt = make_optimizer(kind, net.parameters())
        new_opt.load_state_dict(opt.state_dict())      # same moments on the copied params
        new_units = []
        if option != "none":
            gen = torch.Generator().manual_seed(seed + 1000)
            states = {name: {key: v.clone() for key, v in new_opt.state[p].items()}
                      for name, p in net.named_parameters() if p in new_opt.state}
            for k, new_width in enumerate(args.wide):
                width = net[k].out_features
                umap = widen_layer(option, net, k, new_width, gen, args.noise)
                if option == "moments":
                    carry_moments(states, k, umap)
                new_units.append(torch.arange(new_width) >= width)
            # as every learner's adapt does (growth.kept_optimizer_state): moments of tensors
            # whose shape is unchanged are kept, those of resized ones start afresh
            new_opt = make_optimizer(kind, net.parameters())
            for name, p in net.named_parameters():
                state = states.get(name)
                if state and all(v.shape == p.shape for key, v in state.items() if key != "step"):
                    new_opt.state[p] = state
        with torch.no_grad():
            after = forward(net, x_test)
        twins = [twin_distance(rows_of(net[k]), new) for k, new in enumerate(new_units)]
        train(net, new_opt, order[args.pre:])
        with torch.no_grad():
            loss = F.cross_entropy(forward(net, x), y).item()
        results[option] = record(before, after, twins, [
            twin_distance(rows_of(net[k]), new) for k, new in enumerate(new_units)], loss)
    # reference: the wide network trained from the start on the same batches
    torch.manual_seed(seed)
    sizes = [x.shape[1], *args.wide, 10]
    net = nn.ModuleList(nn.Linear(i, o) for i, o in zip(sizes, sizes[1:], strict=False))
    train(net, make_optimizer(kind, net.parameters()), order)
    with torch.no_grad():
        results["wide"] = record(None, None, [], [], F.cross_entropy(forward(net, x), y).item())
    return results


# -- hnet ----------------------------------------------------------------------------------------

def hnet_run(seed: int, kind: str, args, data) -> dict[str, dict[str, float]]:
    from lifelab.learners.hnet import HNet

    small = {"target_hidden": [16], "hnet_hidden": [16, 16], "chunk_size": 300,
             "task_emb_dim": 8, "chunk_emb_dim": 8, "batch_size": 32, "steps_per_round": 20,
             "optimizer": "sgd" if kind != "adam" else "adam", "seed": seed,
             "lr": {"sgd": 0.05, "momentum": 0.01, "adam": 3e-3}[kind],
             "momentum": 0.9 if kind == "momentum" else 0.0,
             "stream": {"tasks": 3, "steps_per_task": 60, "seed": seed}}
    donor = HNet(small, data=data)
    for _ in range(3):
        donor.step_round()
    state = donor.state_dict()
    with torch.no_grad():
        before = donor.task_weights(donor.task + 1)
    results = {}
    real_resize_map = growth.resize_map
    for option in ("none", *args.options):
        if option == "moments":
            continue                      # the learner restarts resized moments: not wired here
        wide = {**small, "hnet_hidden": list(args.wide)} if option != "none" else small
        learner = HNet(wide, data=data)
        maps = []

        def resize_map(width, new_width, importance=None, generator=None, option=option,
                       maps=maps):
            umap = option_map(option, width, new_width, generator) if new_width > width \
                else real_resize_map(width, new_width, importance, generator)
            maps.append(umap)
            return umap

        growth.resize_map = resize_map
        try:
            learner.adapt(copy.deepcopy(state), small)
        finally:
            growth.resize_map = real_resize_map
        layers = learner.model.layers
        gen = torch.Generator().manual_seed(seed + 1000)
        new_units = []
        for k, umap in enumerate(maps):
            fresh = torch.arange(umap.width) >= small["hnet_hidden"][k]
            new_units.append(fresh)
            with torch.no_grad():
                if option == "noise":
                    rows = rows_of(layers[k])
                    noise = antisymmetric_noise(umap, rows, args.noise, gen)
                    layers[k].weight += noise[:, :-1]
                    layers[k].bias += noise[:, -1]
                if option == "random_in":      # as umap.incoming does (adapt uses take)
                    w = layers[k].weight
                    w[fresh] = torch.randn(int(fresh.sum()), w.shape[1], generator=gen,
                                           dtype=torch.float64).to(w) * w[~fresh].std()
        with torch.no_grad():
            after = learner.task_weights(learner.task + 1)
        twins = [twin_distance(rows_of(layers[k]), new) for k, new in enumerate(new_units)]
        for _ in range(args.hnet_rounds):
            metrics = learner.step_round()
        results[option] = record(before, after, twins, [
            twin_distance(rows_of(layers[k]), new) for k, new in enumerate(new_units)],
            metrics["train_loss"])
    return results


# -- forward-forward (homogeneous widening: the goodness reads every unit's own activation) -------

def homogeneous_option(option: str, args):
    """A stand-in for growth.widen_homogeneous doing `option`."""
    real = growth.widen_homogeneous

    def widen(layer, reader, new_width, generator=None):
        if option in ("split", "noise"):
            new_layer, new_reader, umap = real(layer, reader, new_width, generator)
            if option == "noise":
                noise = antisymmetric_noise(umap, rows_of(new_layer), args.noise, generator,
                                            umap.share.sqrt())
                with torch.no_grad():
                    new_layer.weight += noise[:, :-1]
                    new_layer.bias += noise[:, -1]
            return new_layer, new_reader, umap
        scale = float(option.split("_")[-1])        # "random_0.1": new rows at 0.1 x the std
        umap = option_map("random_in", layer.out_features, new_width, generator)
        fresh = torch.arange(new_width) >= layer.out_features
        w, b = umap.take(layer.weight.detach(), 0), umap.take(layer.bias.detach(), 0)
        w[fresh] = torch.randn(int(fresh.sum()), w.shape[1], generator=generator) * (
            scale * layer.weight.std().item())
        b[fresh] = 0.0
        new_layer = nn.Linear(layer.in_features, new_width)
        with torch.no_grad():
            new_layer.weight.copy_(w)
            new_layer.bias.copy_(b)
        if reader is None:
            return new_layer, None, umap
        new_reader = nn.Linear(new_width, reader.out_features)
        with torch.no_grad():
            new_reader.weight.copy_(umap.spread(reader.weight.detach(), 1))
            new_reader.bias.copy_(reader.bias.detach())
        return new_layer, new_reader, umap

    return widen


def ff_run(seed: int, kind: str, args, data) -> dict[str, dict[str, float]]:
    from lifelab.learners import credit_local

    config = {"hidden": list(args.hidden), "batch_size": 32, "seed": seed,
              "grow_units": args.wide[0] - args.hidden[0], "max_width": max(args.wide),
              "optimizer": "sgd" if kind != "adam" else "adam",
              "lr": {"sgd": 0.03, "momentum": 0.003, "adam": 3e-3}[kind],
              "momentum": 0.9 if kind == "momentum" else 0.0,
              "stream": {"kind": "permuted", "tasks": 1, "scenario": "task",
                         "steps_per_task": args.pre + args.post, "seed": seed}}
    donor = credit_local.ForwardForward(config, data=data)
    for _ in range(args.pre):
        donor.train_step()
    state = donor.state_dict()
    x, _ = donor.sample(0, 256)
    with torch.no_grad():
        before = donor.model(x)
    results = {}
    real = growth.widen_homogeneous
    for option in ("none", "split", "noise", *(f"random_{s:g}" for s in args.ff_scales)):
        learner = credit_local.ForwardForward(config, data=data)
        learner.load_state_dict(copy.deepcopy(state))
        batches = learner.generator.get_state()
        new_units = []
        if option != "none":
            growth.widen_homogeneous = homogeneous_option(option, args)
            try:
                learner.grow()
            finally:
                growth.widen_homogeneous = real
            learner.generator.set_state(batches)    # the same batches for every option
            new_units = [torch.arange(layer.out_features) >= width
                         for layer, width in zip(learner.model.layers, args.hidden, strict=True)]
        layers = learner.model.layers
        with torch.no_grad():
            after = learner.model(x)
        twins = [twin_distance(rows_of(layers[k]), new) for k, new in enumerate(new_units)]
        losses = [learner.train_step().item() for _ in range(args.post)]
        results[option] = record(before, after, twins, [
            twin_distance(rows_of(layers[k]), new) for k, new in enumerate(new_units)],
            statistics.mean(losses[-args.post // 2:]))
    return results


# -- table ---------------------------------------------------------------------------------------

def table(title: str, runs: dict[str, list[dict]]) -> None:
    print(f"\n{title}")
    print(f"{'option':10} {'optimizer':9} {'out_change':>10} {'twin_0':>8} {'twin_N':>8} "
          f"{'loss_N':>7} {'d_loss (mean +- sem)':>22}")
    for kind, per_seed in runs.items():
        for option in per_seed[0]:
            rows = [r[option] for r in per_seed]
            d = [r[option]["loss_N"] - r["none"]["loss_N"] for r in per_seed]
            sem = statistics.stdev(d) / len(d) ** 0.5 if len(d) > 1 else 0.0
            print(f"{option:10} {kind:9} {max(r['out_change'] for r in rows):10.1e} "
                  f"{statistics.mean(r['twin_0'] for r in rows):8.1e} "
                  f"{statistics.mean(r['twin_N'] for r in rows):8.1e} "
                  f"{statistics.mean(r['loss_N'] for r in rows):7.4f} "
                  f"{statistics.mean(d):+11.4f} +- {sem:.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", choices=("mlp", "hnet", "ff"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--optimizers", nargs="+", default=list(OPTIMIZERS))
    parser.add_argument("--hidden", type=int, nargs="+", default=[16, 16])
    parser.add_argument("--wide", type=int, nargs="+", default=[32, 32])
    parser.add_argument("--pre", type=int, default=300)
    parser.add_argument("--post", type=int, default=300)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--noise", type=float, default=0.1)
    parser.add_argument("--signed-share", type=float, default=growth.SIGNED_SHARE)
    parser.add_argument("--options", nargs="+", default=list(OPTIONS), choices=OPTIONS)
    parser.add_argument("--hnet-rounds", type=int, default=3)
    parser.add_argument("--ff-scales", type=float, nargs="+", default=[0.03, 0.1, 1.0])
    args = parser.parse_args()
    torch.set_num_threads(1)
    growth.SIGNED_SHARE = args.signed_share
    mnist = load_dataset("mnist5k")
    if args.only in (None, "mlp"):
        flat = mnist.flat()
        data = (flat.x_train, flat.y_train, flat.x_test)
        table(f"mlp 784-{'-'.join(map(str, args.hidden))}-10 -> {args.wide}, {args.pre} + "
              f"{args.post} steps, seeds {args.seeds}",
              {k: [mlp_run(s, k, args, data) for s in args.seeds] for k in args.optimizers})
    if args.only in (None, "hnet"):
        table(f"hnet hidden [16, 16] -> {args.wide}, 3 rounds + {args.hnet_rounds} rounds of 20 "
              f"steps, seeds {args.seeds}",
              {k: [hnet_run(s, k, args, mnist) for s in args.seeds] for k in args.optimizers})
    if args.only in (None, "ff"):
        table(f"forward-forward (credit learner) hidden {args.hidden} -> {args.wide} by "
              f"learner.grow(), {args.pre} + {args.post} steps, loss_N: mean of the last "
              f"{args.post // 2} steps' losses, seeds {args.seeds}",
              {k: [ff_run(s, k, args, mnist) for s in args.seeds] for k in args.optimizers})


if __name__ == "__main__":
    main()

"""Credit-assignment learners: six ways to train the same MLP, on the shared continual loop.

Every rule trains a ReLU MLP (`hidden` layer sizes) on the ordinary streams through one loop
(`CreditLearner.train_step`): the rule's loss on the batch, one backward, one optimizer step. The
rules differ only in what that backward computes, written as custom gradients:

  backprop             the reference: exact gradients
  feedback_alignment   each layer sends the error down through a fixed random matrix B_l
                       (same shape as W_l) instead of W_l^T (Lillicrap et al. 2016)
  dfa                  direct feedback alignment: the output error e reaches every hidden layer
                       directly, through a fixed random (outputs x units) matrix B_l:
                       delta_l = (e B_l) * relu'(a_l) (Nokland 2016)
  synthetic_gradients  each hidden layer is updated with the gradient a linear predictor
                       M_l(h_l, label) forecasts; M_l is trained toward the gradient that arrives
                       from above: the true one for the top layer, the next layer's synthetic
                       gradient sent back through it below (bootstrapped) (Jaderberg et al. 2016)
  forward_forward      no backward pass between layers: each layer raises the goodness
                       (sum of squared activations) of positive data (the input with its label
                       appended as a one-hot) above `ff_threshold` and lowers it for negative data
                       (a wrong label); each layer reads the previous one's normalised output.
                       Predicts the label whose input has the highest total goodness, all labels
                       in one batch (Hinton 2022)
  target_prop          difference target propagation (Lee et al. 2015): the output layer learns
                       from the loss; the top hidden layer's target is one gradient step
                       h_L - dtp_step * dL/dh_L; lower targets go down through learned inverses g_l
                       with the difference correction h_{l-1} + g_l(target_l) - g_l(h_l); each
                       layer regresses onto its target; the inverses learn to reconstruct
                       (noisy, dtp_noise) inputs of their layer

`train_loss` is each rule's own training objective (cross-entropy for the first four).

Growing (`growing: true`, any rule): the network starts at `hidden` and grows when the smoothed
training loss has not fallen by a fraction `grow_min_delta` for `grow_patience` steps: every hidden
layer gains `grow_units` units (function-preserving widening, up to `max_width`), or, with
`grow_mode: depth` (or `both`, once every layer is at `max_width`), an identity-initialised layer
is inserted on top (up to `max_depth` hidden layers). The rule's own tensors grow with the
weights: feedback matrices get fresh random entries for new units (copies with the same fixed
feedback would stay twins), predictors and inverses are mapped like the weights they serve,
an inserted layer gets identity feedback / a copy of the predictor below / an identity inverse.
The optimizer restarts after a growth (its moments have the old shapes).

Wiring cost (`wiring_cost` > 0): units get 3-D positions (`lifelab.learners.space.place_units`) kept
in the learner state, and `wiring_cost * sum |W_ij| * length_ij` is added to the loss: a local
penalty on each weight, so every rule's weight update includes it unchanged.

The first three rules live here; synthetic gradients, forward-forward and target propagation,
whose layers learn from local signals, in `lifelab.learners.credit_local`.

Metrics: those of `lifelab.learners.base`, plus
  units      hidden units of the network now
  depth      hidden layers now
  growths    growth events so far
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from lifelab.errors import ConfigError
from lifelab.learners import growth
from lifelab.learners.base import ContinualLearner, Param
from lifelab.platform.data import Dataset

#: smoothing of the training loss the plateau rule watches (an EMA over about 20 steps)
LOSS_SMOOTHING = 0.95


class CreditNet(nn.Module):
    """An MLP kept as a list of linear layers (ReLU between them) so a rule can reach every layer;
    it also holds the rule's own tensors, so they grow, save and load with the weights."""

    def __init__(self, sizes: list[int]):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(sizes, sizes[1:],
                                                                    strict=False))
        self.fixed = nn.ParameterList()   # fixed random feedback (FA, DFA): saved, never trained
        self.aux = nn.ModuleList()        # trained helpers: predictors (SG), inverses (DTP)

    @property
    def hidden_layers(self) -> list[nn.Linear]:
        return list(self.layers[:-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers[:-1]:
            x = torch.relu(layer(x))
        return self.layers[-1](x)


def fixed(t: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(t, requires_grad=False)


def _fresh(rows: int, cols: int, fan: int, generator: torch.Generator | None = None
           ) -> torch.Tensor:
    """Random feedback entries, uniform in +-1/sqrt(fan) like nn.Linear's initialisation."""
    return (torch.rand(rows, cols, generator=generator) * 2 - 1) / fan ** 0.5


class CreditLearner(ContinualLearner):
    """The shared loop; subclasses set `rule_loss` and how their own tensors are built and grown."""

    name = "credit"
    has_readout = True   # an output layer on top of the hidden ones (forward-forward has none)
    params = {
        **ContinualLearner.params,
        "aux_lr": Param(0.0, float, low=0.0,
                        doc="learning rate of predictors / inverses (0: the same as lr)"),
        "growing": Param(False, bool, doc="start at `hidden` and grow when the loss stalls"),
        "grow_patience": Param(200, int, positive=True,
                               doc="steps without progress before a growth"),
        "grow_min_delta": Param(0.01, float, low=0.0, high=1.0,
                                doc="relative fall of the smoothed loss that counts as progress"),
        "grow_mode": Param("width", str, choices=("width", "depth", "both"),
                           doc="widen every hidden layer, insert a layer, or widen then deepen"),
        "grow_units": Param(16, int, positive=True, doc="units added to each layer per widening"),
        "max_width": Param(256, int, positive=True, doc="widest a hidden layer may grow"),
        "max_depth": Param(4, int, positive=True, doc="most hidden layers growth may reach"),
        "wiring_cost": Param(0.0, float, low=0.0,
                             doc="coefficient of the wiring cost (0: units have no positions)"),
    }
    metrics = (*ContinualLearner.metrics, "units", "depth", "growths")

    @classmethod
    def validate_config(cls, config: dict) -> dict:
        full = super().validate_config(config)
        if full["growing"]:
            widest = max(full["hidden"])
            if widest > full["max_width"] and full["grow_mode"] != "depth":
                raise ConfigError(f"{cls.name} config 'max_width' {full['max_width']} is below "
                                  f"the widest starting layer {widest}: raise max_width")
            if len(full["hidden"]) > full["max_depth"] and full["grow_mode"] != "width":
                raise ConfigError(f"{cls.name} config 'max_depth' {full['max_depth']} is below "
                                  f"the {len(full['hidden'])} starting layers: raise max_depth")
        return full

    def __init__(self, config: dict, device: str | torch.device = "cpu",
                 data: Dataset | None = None):
        super().__init__(config, device, data)
        self.positions: list[torch.Tensor] | None = None
        if self.config["wiring_cost"] > 0:
            from lifelab.learners.space import place_units  # only this option needs it

            place = torch.Generator().manual_seed(self.config["seed"])
            self.positions = [p.to(self.device) for p in place_units(self.unit_sizes(), place)]
        self.plateau = {"smoothed": None, "best": None, "stalled": 0}
        self.growths = 0

    # -- the network ---------------------------------------------------------------------------

    def input_size(self) -> int:
        return self.stream.input_dim

    def layer_sizes(self, hidden: list[int]) -> list[int]:
        return [self.input_size(), *hidden, self.stream.num_outputs]

    def unit_sizes(self) -> list[int]:
        """Units of every layer of the current network, the input first."""
        layers = self.model.layers
        return [layers[0].in_features, *[layer.out_features for layer in layers]]

    def build_model(self) -> nn.Module:
        net = CreditNet(self.layer_sizes(self.config["hidden"]))
        self.add_rule_tensors(net)
        return net

    def add_rule_tensors(self, net: CreditNet) -> None:
        """Create the rule's fixed feedback / helpers (under the model's seeded RNG)."""

    def build_optimizer(self) -> torch.optim.Optimizer:
        groups = [{"params": list(self.model.layers.parameters()), "lr": self.config["lr"]}]
        aux = list(self.model.aux.parameters())
        if aux:
            groups.append({"params": aux, "lr": self.config["aux_lr"] or self.config["lr"]})
        if self.config["optimizer"] == "sgd":
            return torch.optim.SGD(groups, lr=self.config["lr"], momentum=self.config["momentum"])
        return torch.optim.Adam(groups, lr=self.config["lr"])

    # -- the loop ------------------------------------------------------------------------------

    def rule_loss(self, x: torch.Tensor, y: torch.Tensor, units: slice) -> torch.Tensor:
        """The rule's training loss summed over the batch; its backward is the rule's update."""
        return F.cross_entropy(self.model(x)[:, units], y, reduction="sum")

    def summed_loss(self, x: torch.Tensor, y: torch.Tensor, task: int) -> torch.Tensor:
        return self.rule_loss(x, y, self.stream.output_units(task, self.task + 1))

    def train_step(self) -> torch.Tensor:
        loss = super().train_step()
        if self.config["growing"]:
            self.watch_progress(loss.item())
        return loss

    def penalty(self) -> torch.Tensor | float:
        if self.positions is None or self.config["wiring_cost"] == 0:
            return 0.0
        from lifelab.learners.space import wiring_cost

        weights = [layer.weight for layer in self.model.layers]
        return self.config["wiring_cost"] * wiring_cost(weights, self.positions)

    def step_round(self) -> dict[str, float]:
        metrics = super().step_round()
        hidden = [layer.out_features for layer in self.model.hidden_layers]
        return {**metrics, "units": float(sum(hidden)), "depth": float(len(hidden)),
                "growths": float(self.growths)}

    def on_task_end(self, task: int) -> None:
        # a new task's loss starts high: progress is judged within a task
        self.plateau = {"smoothed": None, "best": None, "stalled": 0}

    # -- growing -------------------------------------------------------------------------------

    def watch_progress(self, loss: float) -> None:
        """The plateau rule: grow after `grow_patience` steps without a relative fall of
        `grow_min_delta` in the smoothed loss."""
        p = self.plateau
        p["smoothed"] = loss if p["smoothed"] is None else \
            LOSS_SMOOTHING * p["smoothed"] + (1 - LOSS_SMOOTHING) * loss
        if p["best"] is None or p["smoothed"] < p["best"] * (1 - self.config["grow_min_delta"]):
            p["best"], p["stalled"] = p["smoothed"], 0
            return
        p["stalled"] += 1
        if p["stalled"] >= self.config["grow_patience"] and self.grow():
            p["best"], p["stalled"] = p["smoothed"], 0

    def grow(self) -> bool:
        """One growth event; False when the network is already at its largest."""
        hidden = [layer.out_features for layer in self.model.hidden_layers]
        mode, cap = self.config["grow_mode"], self.config["max_width"]
        can_widen = min(hidden) < cap
        if mode in ("width", "both") and can_widen:
            for index, width in enumerate(hidden):
                if width < cap:
                    self.widen(index, min(cap, width + self.config["grow_units"]))
        elif mode in ("depth", "both") and len(hidden) < self.config["max_depth"]:
            self.deepen(len(hidden) - 1)
        else:
            return False
        self.growths += 1
        self.optimizer = self.build_optimizer()
        return True

    def widen(self, index: int, new_width: int) -> growth.UnitMap:
        """Widen hidden layer `index` function-preservingly, the rule's tensors alongside."""
        layers = self.model.layers
        layer, reader, umap = growth.resize_linear(layers[index], layers[index + 1], new_width,
                                                   self.generator)
        layers[index], layers[index + 1] = layer, reader
        self.widen_rule_tensors(index, umap)
        if self.positions is not None:
            self.positions[index + 1] = umap.take(self.positions[index + 1], 0)
        return umap

    def widen_rule_tensors(self, index: int, umap: growth.UnitMap) -> None:
        """Resize the rule's tensors after hidden layer `index` was widened by `umap`."""

    def deepen(self, index: int) -> None:
        """Insert an identity layer right after hidden layer `index` (exact: ReLU outputs are
        non-negative, where ReLU is the identity)."""
        width = self.model.layers[index].out_features
        ref = self.model.layers[index].weight
        self.model.layers.insert(index + 1, growth.identity_linear(width, ref.device, ref.dtype))
        self.deepen_rule_tensors(index)
        if self.positions is not None:
            above = self.positions[index + 1].clone()
            self.positions.insert(index + 2, above)
            for z, pos in enumerate(self.positions):   # layer l lies in the plane z = l
                pos[:, 2] = float(z)

    def deepen_rule_tensors(self, index: int) -> None:
        """Give the layer inserted after hidden layer `index` its rule tensors."""

    # -- state ---------------------------------------------------------------------------------

    def extra_state(self) -> dict:
        return {"sizes": self.unit_sizes(), "plateau": dict(self.plateau),
                "growths": self.growths,
                "positions": None if self.positions is None else [p.clone()
                                                                  for p in self.positions]}

    def load_state_dict(self, state: dict) -> None:
        sizes = state["extra"]["sizes"]
        if sizes != self.unit_sizes():        # a grown network: rebuild at its sizes first
            with torch.random.fork_rng(devices=[]):
                self.model = self.shaped_model(sizes).to(self.device)
            self.optimizer = self.build_optimizer()
        super().load_state_dict(state)
        aux_lr = self.config["aux_lr"] or self.config["lr"]
        for group in self.optimizer.param_groups[1:]:
            group["lr"] = aux_lr

    def shaped_model(self, sizes: list[int]) -> CreditNet:
        """A network (with rule tensors) of the given unit sizes, values to be loaded."""
        net = CreditNet(self.layer_sizes(sizes[1:-1]) if self.has_readout else sizes)
        self.add_rule_tensors(net)
        return net

    def load_extra_state(self, state: dict) -> None:
        self.plateau = dict(state["plateau"])
        self.growths = state["growths"]
        if state["positions"] is not None:
            self.positions = [p.clone().to(self.device) for p in state["positions"]]


class Backprop(CreditLearner):
    """Backpropagation on the credit-assignment MLP: the reference rule."""

    name = "backprop"


# -- feedback alignment ------------------------------------------------------------------------

class _FeedbackLinear(torch.autograd.Function):
    """x W^T + b whose backward sends the error down through B instead of W."""

    @staticmethod
    def forward(ctx, x, weight, bias, feedback):
        ctx.save_for_backward(x, feedback)
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad):
        x, feedback = ctx.saved_tensors
        return grad @ feedback, grad.t() @ x, grad.sum(0), None


class FeedbackAlignment(CreditLearner):
    """Feedback alignment (Lillicrap et al. 2016): errors sent back through fixed random weights."""

    name = "feedback_alignment"

    def add_rule_tensors(self, net: CreditNet) -> None:
        net.fixed = nn.ParameterList(fixed(_fresh(*layer.weight.shape, layer.in_features))
                                     for layer in net.layers)

    def forward_fa(self, x: torch.Tensor) -> torch.Tensor:
        layers = self.model.layers
        for i, layer in enumerate(layers):
            x = _FeedbackLinear.apply(x, layer.weight, layer.bias, self.model.fixed[i])
            if i < len(layers) - 1:
                x = torch.relu(x)
        return x

    def rule_loss(self, x, y, units):
        return F.cross_entropy(self.forward_fa(x)[:, units], y, reduction="sum")

    def widen_rule_tensors(self, index: int, umap: growth.UnitMap) -> None:
        fb = self.model.fixed
        own, reader = fb[index], fb[index + 1]
        added = umap.width - own.shape[0]            # old units keep their place, new ones follow
        new_rows = _fresh(added, own.shape[1], own.shape[1], self.generator)
        new_cols = _fresh(reader.shape[0], added, umap.width, self.generator)
        fb[index] = fixed(torch.cat([own.data, new_rows.to(own)], 0))
        fb[index + 1] = fixed(torch.cat([reader.data, new_cols.to(reader)], 1))

    def deepen_rule_tensors(self, index: int) -> None:
        # identity feedback: the layers below get the teaching signal they had before the growth
        width = self.model.layers[index].out_features
        ref = self.model.fixed[index]
        tensors = list(self.model.fixed)
        tensors.insert(index + 1, fixed(torch.eye(width, device=ref.device, dtype=ref.dtype)))
        self.model.fixed = nn.ParameterList(tensors)


# -- direct feedback alignment ------------------------------------------------------------------

class _DirectFeedback(torch.autograd.Function):
    """The output unchanged; backward hands each hidden activation h_l the output error e B_l."""

    @staticmethod
    def forward(ctx, out, feedback, *hidden):
        ctx.feedback = feedback
        return out.view_as(out)

    @staticmethod
    def backward(ctx, grad):
        return (grad, None, *[grad @ b for b in ctx.feedback])


class DFA(CreditLearner):
    """Direct feedback alignment (Nokland 2016): the output error straight to every layer."""

    name = "dfa"

    def add_rule_tensors(self, net: CreditNet) -> None:
        outputs = net.layers[-1].out_features
        net.fixed = nn.ParameterList(fixed(_fresh(outputs, layer.out_features, outputs))
                                     for layer in net.hidden_layers)

    def forward_dfa(self, x: torch.Tensor) -> torch.Tensor:
        hidden, h = [], x
        for layer in self.model.hidden_layers:
            h = torch.relu(layer(h.detach()))        # no gradient flows between layers
            hidden.append(h)
        out = self.model.layers[-1](h.detach())
        return _DirectFeedback.apply(out, list(self.model.fixed), *hidden)

    def rule_loss(self, x, y, units):
        return F.cross_entropy(self.forward_dfa(x)[:, units], y, reduction="sum")

    def widen_rule_tensors(self, index: int, umap: growth.UnitMap) -> None:
        b = self.model.fixed[index]
        added = umap.width - b.shape[1]
        new = _fresh(b.shape[0], added, b.shape[0], self.generator).to(b)
        self.model.fixed[index] = fixed(torch.cat([b.data, new], 1))

    def deepen_rule_tensors(self, index: int) -> None:
        tensors = list(self.model.fixed)
        b = tensors[index]
        tensors.insert(index + 1, fixed(_fresh(*b.shape, b.shape[0], self.generator).to(b)))
        self.model.fixed = nn.ParameterList(tensors)

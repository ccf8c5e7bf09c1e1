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

Metrics: those of `lifelab.learners.base`, plus
  units      hidden units of the network now
  depth      hidden layers now
  growths    growth events so far
"""

from __future__ import annotations

import copy

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


# -- synthetic gradients ------------------------------------------------------------------------

class _SyntheticGradient(torch.autograd.Function):
    """h unchanged. Backward: h receives the predicted gradient instead of the one arriving from
    above, and the prediction receives (prediction - arriving gradient), the gradient of
    1/2 ||prediction - target||^2. Predictions are per sample; the loss is a batch mean, hence
    `batch` (gradients at h are 1/batch of the per-sample ones)."""

    @staticmethod
    def forward(ctx, h, prediction, batch):
        ctx.save_for_backward(prediction)
        ctx.batch = batch
        return h.view_as(h)

    @staticmethod
    def backward(ctx, grad):
        (prediction,) = ctx.saved_tensors
        target = grad * ctx.batch
        return prediction / ctx.batch, (prediction - target) / ctx.batch, None


class SyntheticGradients(CreditLearner):
    """Decoupled layers trained on predicted gradients (Jaderberg et al. 2017)."""

    name = "synthetic_gradients"
    params = {**CreditLearner.params,
              "sg_condition": Param(True, bool,
                                    doc="predictors also see the label (cDNI)")}

    def predictor(self, width: int) -> nn.Linear:
        extra = self.stream.num_outputs if self.config["sg_condition"] else 0
        m = nn.Linear(width + extra, width)
        nn.init.zeros_(m.weight)                # zero gradients at first, as in the paper
        nn.init.zeros_(m.bias)
        return m

    def add_rule_tensors(self, net: CreditNet) -> None:
        net.aux = nn.ModuleList(self.predictor(layer.out_features)
                                for layer in net.hidden_layers)

    def predictor_input(self, h: torch.Tensor, y: torch.Tensor, units: slice) -> torch.Tensor:
        if not self.config["sg_condition"]:
            return h.detach()
        label = F.one_hot(y + units.start, self.stream.num_outputs).to(h)
        return torch.cat([h.detach(), label], 1)

    def rule_loss(self, x, y, units):
        h = x
        for layer, predictor in zip(self.model.hidden_layers, self.model.aux, strict=True):
            h = torch.relu(layer(h))
            prediction = predictor(self.predictor_input(h, y, units))
            h = _SyntheticGradient.apply(h, prediction, self.batch_total)
        out = self.model.layers[-1](h)
        return F.cross_entropy(out[:, units], y, reduction="sum")

    def widen_rule_tensors(self, index: int, umap: growth.UnitMap) -> None:
        # a copy's true gradient is its share of its source's: rows and inputs both spread
        old = self.model.aux[index]
        width = umap.width
        new = self.predictor(width).to(old.weight)
        n_old = old.out_features
        with torch.no_grad():
            w_units = umap.spread(umap.spread(old.weight[:, :n_old], 1), 0)
            new.weight.copy_(torch.cat([w_units, umap.spread(old.weight[:, n_old:], 0)], 1))
            new.bias.copy_(umap.spread(old.bias, 0))
        self.model.aux[index] = new

    def deepen_rule_tensors(self, index: int) -> None:
        # the inserted layer's output is h_index, so its gradient is the one M_index predicted
        self.model.aux.insert(index + 1, copy.deepcopy(self.model.aux[index]))


# -- forward-forward --------------------------------------------------------------------------

class ForwardForward(CreditLearner):
    """Forward-forward (Hinton 2022): layer-local goodness of positive vs negative data."""

    name = "forward_forward"
    params = {**CreditLearner.params,
              "ff_threshold": Param(2.0, float, positive=True,
                                    doc="goodness (sum of squares) separating positive from "
                                        "negative data"),
              "ff_label_scale": Param(1.0, float, positive=True,
                                      doc="value of the label's one-hot entry in the input")}
    has_readout = False
    #: samples x labels scored at once when predicting (bounds evaluation memory)
    EVAL_ROWS = 20000

    def __init__(self, config: dict, device: str | torch.device = "cpu",
                 data: Dataset | None = None):
        super().__init__(config, device, data)
        first = self.stream.output_units(0, 1)
        if first.stop - first.start < 2:
            raise ConfigError("forward_forward needs at least 2 labels per task to draw wrong "
                              "labels: raise stream.classes_per_task")

    def layer_sizes(self, hidden: list[int]) -> list[int]:
        return [self.input_size() + self.stream.num_outputs, *hidden]

    def build_model(self) -> nn.Module:
        net = _GoodnessNet(self.layer_sizes(self.config["hidden"]), self.stream.input_dim,
                           self.stream.num_outputs, self.config["ff_label_scale"],
                           self.EVAL_ROWS)
        return net

    def shaped_model(self, sizes: list[int]) -> CreditNet:
        return _GoodnessNet(sizes, self.stream.input_dim, self.stream.num_outputs,
                            self.config["ff_label_scale"], self.EVAL_ROWS)

    def layer_loss(self, goodness: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
        """-log sigmoid(sign * (goodness - threshold)), summed: positives above, negatives
        below the threshold."""
        return F.softplus(-sign * (goodness - self.config["ff_threshold"])).sum()

    def rule_loss(self, x, y, units):
        c = units.stop - units.start
        shift = torch.randint(1, c, (len(y),), generator=self.generator).to(y.device)
        labels = torch.cat([y, (y + shift) % c]) + units.start
        sign = torch.cat([torch.ones(len(y)), -torch.ones(len(y))]).to(x)
        h = self.model.embed(torch.cat([x, x]), labels)
        loss = x.new_zeros(())
        for layer in self.model.layers:
            h = torch.relu(layer(h.detach()))        # layer-local: nothing flows down
            loss = loss + self.layer_loss(h.pow(2).sum(1), sign)
            h = _normalise(h)
        return loss / 2                              # per sample pair, like the other rules

    def widen(self, index: int, new_width: int) -> growth.UnitMap:
        layers = self.model.layers
        reader = layers[index + 1] if index + 1 < len(layers) else None
        layer, reader, umap = growth.widen_homogeneous(layers[index], reader, new_width,
                                                       self.generator)
        layers[index] = layer
        if reader is not None:
            layers[index + 1] = reader
        if self.positions is not None:
            self.positions[index + 1] = umap.take(self.positions[index + 1], 0)
        return umap


def _normalise(h: torch.Tensor) -> torch.Tensor:
    """h / ||h||: the next layer sees only the direction, not the goodness (Hinton 2022)."""
    return h / (h.norm(dim=1, keepdim=True) + 1e-8)


class _GoodnessNet(CreditNet):
    """Forward-forward's network: hidden layers only; forward scores every label by the total
    goodness of the input with that label appended (the logits evaluation reads)."""

    def __init__(self, sizes: list[int], input_dim: int, labels: int, label_scale: float,
                 eval_rows: int):
        super().__init__(sizes)
        self.input_dim, self.labels = input_dim, labels
        self.label_scale, self.eval_rows = label_scale, eval_rows

    @property
    def hidden_layers(self) -> list[nn.Linear]:
        return list(self.layers)

    def embed(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, F.one_hot(labels, self.labels).to(x) * self.label_scale], 1)

    def goodness(self, h: torch.Tensor) -> torch.Tensor:
        total = h.new_zeros(len(h))
        for layer in self.layers:
            h = torch.relu(layer(h))
            total = total + h.pow(2).sum(1)
            h = _normalise(h)
        return total

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first = self.layers[0]
        # the label enters the first layer only as a column of its weights: compute the image
        # part once, add each label's column (batched over labels)
        base = F.linear(x, first.weight[:, :self.input_dim], first.bias)       # (N, n1)
        columns = first.weight[:, self.input_dim:].t() * self.label_scale      # (labels, n1)
        chunk = max(1, self.eval_rows // self.labels)
        scores = []
        for part in base.split(chunk):
            h = torch.relu(part[:, None, :] + columns[None]).reshape(-1, first.out_features)
            total = h.pow(2).sum(1)
            h = _normalise(h)
            for layer in self.layers[1:]:
                h = torch.relu(layer(h))
                total = total + h.pow(2).sum(1)
                h = _normalise(h)
            scores.append(total.reshape(len(part), self.labels))
        return torch.cat(scores)


# -- difference target propagation -------------------------------------------------------------

class TargetProp(CreditLearner):
    """Difference target propagation (Lee et al. 2015): learned inverses carry layer targets."""

    name = "target_prop"
    params = {**CreditLearner.params,
              "dtp_step": Param(0.5, float, positive=True,
                                doc="step of the top hidden layer's target along -dL/dh"),
              "dtp_noise": Param(0.1, float, low=0.0,
                                 doc="std of the noise the inverses learn to remove")}

    def add_rule_tensors(self, net: CreditNet) -> None:
        # inverse g_l maps hidden layer l back to layer l-1 (l >= 1); affine
        hidden = net.hidden_layers
        net.aux = nn.ModuleList(nn.Linear(layer.out_features, layer.in_features)
                                for layer in hidden[1:])

    def targets(self, hidden: list[torch.Tensor], top_target: torch.Tensor
                ) -> list[torch.Tensor]:
        """Targets of every hidden layer, top first given: the difference correction
        t_{l-1} = h_{l-1} + g_l(t_l) - g_l(h_l) (exact inverse or not, t = h where t_l = h_l)."""
        out = [top_target]
        with torch.no_grad():
            for k in range(len(hidden) - 1, 0, -1):
                g = self.model.aux[k - 1]
                out.insert(0, hidden[k - 1] + g(out[0]) - g(hidden[k]))
        return out

    def rule_loss(self, x, y, units):
        layers = self.model.layers
        hidden, h = [], x
        for layer in layers[:-1]:
            h = torch.relu(layer(h.detach()))
            hidden.append(h)
        top = hidden[-1].detach().requires_grad_()
        loss = F.cross_entropy(layers[-1](top)[:, units], y, reduction="sum")
        (grad_top,) = torch.autograd.grad(loss, top, retain_graph=True)
        detached = [t.detach() for t in hidden]
        targets = self.targets(detached, detached[-1] - self.config["dtp_step"] * grad_top)
        for h, target in zip(hidden, targets, strict=True):
            loss = loss + 0.5 * (h - target).pow(2).sum()
        for k in range(1, len(hidden)):               # the inverses reconstruct noisy inputs
            below = detached[k - 1]
            noisy = below + self.config["dtp_noise"] * torch.randn(
                below.shape, generator=self.generator).to(below)
            with torch.no_grad():
                above = torch.relu(layers[k](noisy))
            loss = loss + 0.5 * (self.model.aux[k - 1](above) - noisy).pow(2).sum()
        return loss

    def widen_rule_tensors(self, index: int, umap: growth.UnitMap) -> None:
        # g reading the widened layer: its inputs spread (copies equal their source);
        # g predicting the widened layer: its outputs taken (the copy's value is the source's)
        aux = self.model.aux
        if index >= 1:
            old = aux[index - 1]
            new = nn.Linear(umap.width, old.out_features).to(old.weight)
            with torch.no_grad():
                new.weight.copy_(umap.spread(old.weight, 1))
                new.bias.copy_(old.bias)
            aux[index - 1] = new
        if index < len(aux):
            old = aux[index]
            new = nn.Linear(old.in_features, umap.width).to(old.weight)
            with torch.no_grad():
                new.weight.copy_(umap.take(old.weight, 0))
                new.bias.copy_(umap.take(old.bias, 0))
            aux[index] = new

    def deepen_rule_tensors(self, index: int) -> None:
        # the inserted layer is the identity of h_index: its exact inverse is the identity
        width = self.model.layers[index].out_features
        ref = self.model.layers[index].weight
        self.model.aux.insert(index, growth.identity_linear(width, ref.device, ref.dtype))

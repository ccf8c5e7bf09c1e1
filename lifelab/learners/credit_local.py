"""Credit-assignment rules whose layers learn from local signals: synthetic gradients,
forward-forward and difference target propagation, on `CreditLearner` (see
`lifelab.learners.credit` for the family, growing and wiring cost)."""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn import functional as F

from lifelab.errors import ConfigError
from lifelab.learners import growth
from lifelab.learners.base import Param
from lifelab.learners.credit import CreditLearner, CreditNet
from lifelab.platform.data import Dataset

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
        # g predicting the widened layer: one row per copy (see below)
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
                # g's rows give the layer's targets: a copy with its unit's row would get its
                # unit's targets forever and stay its twin. Each copy's row carries its share
                # of the unit's outgoing weights instead, as backprop's gradient would (g only
                # sets targets: the network's function is untouched)
                new.weight.copy_(umap.spread(old.weight, 0))
                new.bias.copy_(umap.take(old.bias, 0))
            aux[index] = new

    def deepen_rule_tensors(self, index: int) -> None:
        # the inserted layer is the identity of h_index: its exact inverse is the identity
        width = self.model.layers[index].out_features
        ref = self.model.layers[index].weight
        self.model.aux.insert(index, growth.identity_linear(width, ref.device, ref.dtype))

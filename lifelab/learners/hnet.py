"""Continual learning with a chunked hypernetwork (von Oswald et al. 2019, arXiv 1906.00695).

A hypernetwork h generates every weight of a target MLP from a learned *task embedding*. It is an
MLP whose input is [task embedding ; chunk embedding] and whose output is one chunk of
`chunk_size` target weights; the chunk embeddings are the batch, so all chunks come out of one
forward pass (`chunk_size: 0` is the unchunked hypernetwork: the same code with one chunk). Chunk
embeddings are shared by all tasks and always trained; a task's embedding is trained only while
its task is current, then stored.

Forgetting is held off by the output regularizer

    beta * mean over earlier tasks t of || h(e_t; theta*) - h(e_t; theta) ||^2

whose targets h(e_t; theta*) are snapshotted before each new task. All regularized embeddings go
through the hypernetwork in one batched pass, and above `reg_max_tasks` earlier tasks a random
subset of that many is drawn at each step, so a step costs the same at task 100 as at task 32.
With `lookahead: true` the regularizer is evaluated at theta + dtheta, dtheta being the update the
task loss alone would make now (simulated from the optimizer's state, not applied; the paper's
two-step form).

Why the regularizer is cheap: the generated weights of the regularized tasks are never formed.
A task's targets are Z*_t W*^T (Z*_t: the chunks' last hidden activations under theta*, W*: the
output layer under theta*, both with the bias folded in), and the current output is Z_t W^T. With
dZ = Z - Z*, dW = W - W*,

    || Z_t W^T - Z*_t W*^T ||^2 = <dZ^T dZ, W^T W> + 2 <dZ^T Z*_t, W^T dW> + <Z*_t^T Z*_t, dW^T dW>

(summed over tasks first), which costs O(chunks x width^2) per task instead of
O(chunks x width x chunk_size), and stays accurate as the distance goes to zero (every term is
small there; no large quantities cancel). The unused tail of the last chunk is subtracted exactly.
A task's stored snapshot is thus Z*_t (chunks x width), with one embedding the whole memory a
finished task costs: 47 KiB for target 784-100-100-10, hypernetwork 100-100 and chunks of 750,
against 350 KiB for its generated weights. (The Gram term sums Z*_t^T Z*_t over the regularized
tasks: kept as one total while every earlier task is regularized, recomputed for a drawn subset.)

Task identity: with it given (`stream.scenario: task`), task t's embedding generates the network.
Without it, the learner runs every stored embedding's network and keeps the one whose prediction
has the lowest entropy (class-incremental inference without replay); its prediction counts only if
the inferred task is right (task and class scenarios: the label is (task, class)), or, in the
domain scenario, if the label is right.

Scenarios: the target network has one output unit per class of a task (10 for permuted MNIST) in
every scenario: the generated weights are task-specific already. In the domain and class
scenarios, which give no task identity at test time, the accuracy matrix holds the inferred-task
accuracies.

Config keys (default):
  target_hidden   [100, 100] hidden sizes of the target MLP (input and output from the stream)
  hnet_hidden     [100, 100] hidden sizes of the hypernetwork
  chunk_size      750        target weights per chunk; 0 = one chunk holding all weights
  task_emb_dim    32         task embedding size
  chunk_emb_dim   32         chunk embedding size
  beta            0.01       output-regularizer strength
  lookahead       false      evaluate the regularizer at the lookahead point theta + dtheta
  reg_max_tasks   32         regularize at most this many earlier tasks per step (random subset)
  cil_eval        true       also score every task with the task inferred (acc_avg_cil)
  cil_samples     1000       test samples per task scored with the inferred task (0 = all)
  lr, optimizer, momentum, batch_size, steps_per_round: as in lifelab.learners.base

Metrics (those of lifelab.learners.base: acc_avg, acc_avg_til, acc_avg_cil, bwt, forgetting,
tasks_seen, train_loss, with train_loss including the regularizer term; and two of its own):
  acc_avg            mean accuracy over the tasks seen so far, in the scenario's terms: task
                     given in scenario task, inferred in scenarios domain and class
  acc_avg_til        the same with the task given (scenarios task and class)
  acc_avg_cil        the same with the task inferred by minimum predictive entropy, scored on the
                     first `cil_samples` test samples of each task (scenarios task and class, when
                     cil_eval is true)
  compression_ratio  (hypernetwork parameters + chunk embeddings + task embeddings so far)
                     / target-network parameters
  reg_loss           mean over the round's steps of beta x the output regularizer
The accuracy matrix (`rows`, one row per finished task) is what the trainable records; its last
row is the final accuracy on every task. `view_rows["til"]` / `view_rows["cil"]` are the same
matrix under the two views.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from lifelab.errors import ConfigError
from lifelab.learners import growth
from lifelab.learners.base import ContinualLearner, Evaluation, Param, checked_old_config
from lifelab.learners.contract import same_layer_count
from lifelab.learners.hnet_net import (  # noqa: F401  (entropy_inference: part of this API)
    EMB_STD,
    HyperNetwork,
    TargetMLP,
    augmented_gram,
    entropy_inference,
    output_regularizer,
)

#: how many task networks are run at once in task-inferred evaluation (bounds memory)
CIL_BLOCK = 16

_BASE_PARAMS = {k: v for k, v in ContinualLearner.params.items() if k != "hidden"}


class HNet(ContinualLearner):
    """A chunked hypernetwork that generates each task's weights (von Oswald et al. 2020)."""

    name = "hnet"
    params: dict[str, Param] = {
        **_BASE_PARAMS,
        "target_hidden": Param([100, 100], list, doc="hidden layer sizes of the target MLP"),
        "hnet_hidden": Param([100, 100], list, doc="hidden layer sizes of the hypernetwork"),
        "chunk_size": Param(750, int, low=0,
                            doc="target weights per chunk (0: one chunk, unchunked)"),
        "task_emb_dim": Param(32, int, positive=True, doc="task embedding size"),
        "chunk_emb_dim": Param(32, int, positive=True, doc="chunk embedding size"),
        "beta": Param(0.01, float, low=0.0, doc="output-regularizer strength"),
        "lookahead": Param(False, bool, doc="regularize at the lookahead point theta + dtheta"),
        "reg_max_tasks": Param(32, int, positive=True,
                               doc="earlier tasks regularized per step (random subset above)"),
        "cil_eval": Param(True, bool, doc="score tasks with the task inferred (acc_avg_cil)"),
        "cil_samples": Param(1000, int, low=0,
                             doc="test samples per task for the inferred-task score (0: all)"),
    }
    metrics = tuple(dict.fromkeys((*ContinualLearner.metrics, "acc_avg_til", "acc_avg_cil",
                                   "compression_ratio", "reg_loss")))
    architecture_keys = ("target_hidden", "hnet_hidden", "chunk_size", "task_emb_dim",
                         "chunk_emb_dim")
    #: architecture keys `adapt` can change (the others spread only with exploitation)
    adaptable_keys = ("hnet_hidden", "task_emb_dim", "chunk_emb_dim")
    layer_keys = ("hnet_hidden",)

    @classmethod
    def validate_config(cls, config: dict) -> dict:
        full = super().validate_config(config)
        if full["stream"].scenario != "task" and not full["cil_eval"]:
            raise ConfigError(f"hnet config 'cil_eval' must be true in scenario "
                              f"'{full['stream'].scenario}', which gives no task identity at test "
                              "time: the task has to be inferred")
        return full

    def __init__(self, config: dict, device: str | torch.device = "cpu", data=None):
        super().__init__(config, device, data)
        hnet: HyperNetwork = self.model
        d = self.device
        width = hnet.layers[-1].in_features
        # what finished tasks leave behind: an embedding and a snapshot of their targets
        self.task_embs = torch.zeros(0, hnet.task_emb_dim, device=d)
        self.snap_z = torch.zeros(0, hnet.num_chunks, width, device=d)
        self.snap_gram = torch.zeros(width + 1, width + 1, device=d)   # sum over tasks
        self.snap_out = torch.zeros(hnet.chunk_size, width + 1, device=d)   # [W* | b*]
        self._round_reg: list[torch.Tensor] = []

    # -- building blocks -----------------------------------------------------------------------

    @property
    def units_per_task(self) -> int:
        unit = self.stream.output_units(0, 1)
        return unit.stop - unit.start

    def build_model(self) -> nn.Module:
        self.target = TargetMLP([self.stream.input_dim, *self.config["target_hidden"],
                                 self.units_per_task])
        hnet = HyperNetwork(self.target.num_weights, self.config["chunk_size"],
                            self.config["task_emb_dim"], self.config["chunk_emb_dim"],
                            self.config["hnet_hidden"])
        # the mean over target weights of 1 / fan-in (the variance of a default init)
        variance = sum(o for o, _ in self.target.shapes) / self.target.num_weights
        hnet.calibrate(math.sqrt(variance))
        return hnet

    def local_labels(self, y: torch.Tensor, task: int) -> torch.Tensor:
        """Labels in 0..c-1 of the task's own network (the class scenario's are global)."""
        return y - self.units_per_task * task if self.stream.config.scenario == "class" else y

    def task_weights(self, seen: int) -> torch.Tensor:
        """Generated weights (seen, num_weights) of tasks 0..seen-1 (stored, then the current)."""
        embs = self.task_embs[:seen]
        if seen > len(embs):
            embs = torch.cat([embs, self.model.task_emb[None]])
        return self.model.generate(embs)

    # -- training ------------------------------------------------------------------------------

    def train_step(self) -> torch.Tensor:
        hnet: HyperNetwork = self.model
        hnet.train()
        ((task, x, y),) = self.training_batches()
        weights = hnet.generate(hnet.task_emb[None])[0]
        loss = F.cross_entropy(self.target.forward(weights, x), self.local_labels(y, task))
        loss = loss + self.penalty()
        beta = self.config["beta"]
        self.optimizer.zero_grad(set_to_none=True)
        if beta > 0 and len(self.task_embs) > 0:
            if self.config["lookahead"]:
                loss.backward()
                reg = beta * self.regularizer(self.lookahead_delta())
                reg.backward()
            else:
                reg = beta * self.regularizer()
                (loss + reg).backward()
            reg = reg.detach()
            loss = loss.detach() + reg
        else:
            loss.backward()
            reg = torch.zeros(())
        self.before_step()
        self.optimizer.step()
        self.after_step()
        self._round_reg.append(reg)
        return loss.detach()

    def regularized_tasks(self) -> torch.Tensor | None:
        """Indices of the earlier tasks regularized this step (None: all of them)."""
        n, most = len(self.task_embs), self.config["reg_max_tasks"]
        if n <= most:
            return None
        return torch.randperm(n, generator=self.generator)[:most].to(self.device)

    def regularizer(self, delta: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Mean over the regularized earlier tasks of ||h(e_t; theta*) - h(e_t; theta)||^2
        (theta + delta with `delta`), in one batched pass."""
        hnet: HyperNetwork = self.model
        idx = self.regularized_tasks()
        embs, z_star, gram = self.task_embs, self.snap_z, self.snap_gram
        if idx is not None:
            embs, z_star = embs[idx], z_star[idx]
            gram = augmented_gram(z_star)
        params = None
        if delta is not None:
            params = {name: p + delta[name] for name, p in hnet.named_parameters()
                      if name in delta}
        z = hnet.hidden(embs, params)
        w, b = hnet.output_layer(params)
        w_star, b_star = self.snap_out[:, :-1], self.snap_out[:, -1]
        total = output_regularizer(z, z_star, gram, w, b, w_star, b_star,
                                   hnet.num_weights)
        return total / len(embs)

    @torch.no_grad()
    def lookahead_delta(self) -> dict[str, torch.Tensor]:
        """The update the optimizer would make now from the gradients in `.grad` (the task loss),
        without making it: Adam's or SGD's step, computed from a copy of their state."""
        group = self.optimizer.param_groups[0]
        delta = {}
        for name, p in self.model.named_parameters():
            if name == "task_emb" or p.grad is None:
                continue
            g, state = p.grad, self.optimizer.state.get(p, {})
            if isinstance(self.optimizer, torch.optim.Adam):
                beta1, beta2 = group["betas"]
                step = float(state["step"]) + 1 if "step" in state else 1.0
                m = state["exp_avg"] * beta1 + g * (1 - beta1) if state else g * (1 - beta1)
                v = (state["exp_avg_sq"] * beta2 + g * g * (1 - beta2) if state
                     else g * g * (1 - beta2))
                denom = (v / (1 - beta2 ** step)).sqrt() + group["eps"]
                delta[name] = -group["lr"] * (m / (1 - beta1 ** step)) / denom
            else:
                buf = state.get("momentum_buffer")
                if group["momentum"] and buf is not None:
                    g = buf * group["momentum"] + g
                delta[name] = -group["lr"] * g
        return delta

    def step_round(self) -> dict[str, float]:
        self._round_reg = []
        return super().step_round()

    def on_task_end(self, task: int) -> None:
        """Store the task's embedding, snapshot every earlier task's targets under the current
        hypernetwork, and start the next task with a fresh embedding."""
        hnet: HyperNetwork = self.model
        with torch.no_grad():
            self.task_embs = torch.cat([self.task_embs, hnet.task_emb.detach()[None]])
            self.snapshot()
            if task + 1 < len(self.stream.tasks):
                fresh = torch.randn(hnet.task_emb_dim, generator=self.generator) * EMB_STD
                hnet.task_emb.copy_(fresh)
                self.optimizer.state.pop(hnet.task_emb, None)   # its Adam moments start afresh

    @torch.no_grad()
    def snapshot(self) -> None:
        """Targets of every stored task under the current hypernetwork (theta*), factored."""
        hnet: HyperNetwork = self.model
        self.snap_z = hnet.hidden(self.task_embs).detach().clone()
        self.snap_gram = augmented_gram(self.snap_z)
        w, b = hnet.output_layer()
        self.snap_out = torch.cat([w, b[:, None]], dim=1).detach().clone()

    # -- evaluation and metrics ----------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self, seen: int | None = None, split: str = "test") -> Evaluation:
        """Accuracy on each of the first `seen` tasks' `split` samples: with the task given in
        the task scenario,
        else inferred. Views (kept by the base loop as `view_rows`, reported as acc_avg_<view>):
        "til" with the task given (task and class scenarios), "cil" with the task inferred."""
        seen = seen if seen is not None else min(self.task + 1, len(self.stream.tasks))
        self.model.eval()
        weights = self.task_weights(seen)
        scenario = self.stream.config.scenario
        given, inferred = [], []
        for j in range(seen):
            x, y = self.stream.tasks[j].eval_set(split)
            y = self.local_labels(y, j)
            if scenario != "domain":
                pred = self.target.forward(weights[j], x).argmax(1)
                given.append((pred == y).float().mean().item())
            if self.config["cil_eval"]:
                n = self.config["cil_samples"] or len(y)
                task_hat, pred = self.infer(weights, x[:n])
                correct = pred == y[:n]
                if scenario != "domain":
                    correct &= task_hat == j
                inferred.append(correct.float().mean().item())
        views = {"til": given} if given else {}
        if self.config["cil_eval"] and scenario != "domain":
            views["cil"] = inferred
        return Evaluation(given if scenario == "task" else inferred, tasks_trained=len(self.rows),
                          views=views)

    @torch.no_grad()
    def infer(self, weights: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(inferred task, predicted local label) per sample of x, over the networks `weights`."""
        logits = torch.cat([self.target.forward_many(weights[k:k + CIL_BLOCK], x)
                            for k in range(0, len(weights), CIL_BLOCK)])
        task_hat = entropy_inference(logits)
        pred = logits[task_hat, torch.arange(len(x), device=x.device)].argmax(-1)
        return task_hat, pred

    def compression_ratio(self) -> float:
        hnet: HyperNetwork = self.model
        shared = sum(p.numel() for name, p in hnet.named_parameters() if name != "task_emb")
        tasks = min(self.task + 1, len(self.stream.tasks))
        return (shared + tasks * hnet.task_emb_dim) / hnet.num_weights

    def round_metrics(self, train_loss: float) -> dict[str, float]:
        metrics = super().round_metrics(train_loss)
        metrics["compression_ratio"] = self.compression_ratio()
        metrics["reg_loss"] = torch.stack(self._round_reg).mean().item()
        return metrics

    # -- state ---------------------------------------------------------------------------------

    def extra_state(self) -> dict:
        return {"task_embs": self.task_embs, "snap_z": self.snap_z, "snap_gram": self.snap_gram,
                "snap_out": self.snap_out}

    def load_extra_state(self, state: dict) -> None:
        for key in ("task_embs", "snap_z", "snap_gram", "snap_out"):
            setattr(self, key, state[key].detach().clone().to(self.device))

    def adapt(self, state: dict, old_config: dict) -> None:
        """Load a state made under another config: hypernetwork hidden widths and embedding sizes
        may differ (PBT mutating them). Widening is function-preserving (Net2Net, see
        `lifelab.learners.growth`): right after it, every task's generated weights are what they
        were. Narrowing keeps the most important units or embedding entries. Optimizer moments of
        resized parameters start afresh; the others are kept."""
        old = checked_old_config(self, old_config)
        same_layer_count(type(self), "hnet_hidden",
                         [old["hnet_hidden"], self.config["hnet_hidden"]])
        model, extra = dict(state["model"]), dict(state["extra"])
        generator = torch.Generator().manual_seed(self.config["seed"])

        # inputs of layer 0: [task embedding | chunk embedding] blocks
        w0 = model["layers.0.weight"]
        d_e, d_c = old["task_emb_dim"], old["chunk_emb_dim"]
        task_values = torch.cat([extra["task_embs"], model["task_emb"][None]])
        for start, width, new_width, values in (
                (0, d_e, self.config["task_emb_dim"], task_values),
                (self.config["task_emb_dim"], d_c, self.config["chunk_emb_dim"],
                 model["chunk_emb"])):
            importance = growth.input_importance(w0[:, start:start + width], values)
            w0, keep = growth.resize_inputs(w0, start, width, new_width, importance)
            fill = torch.randn(*values.shape[:-1], new_width, generator=generator) * EMB_STD
            resized = growth.resize_input_values(values, keep, fill.to(values))
            if start == 0:
                extra["task_embs"], model["task_emb"] = resized[:-1], resized[-1]
            else:
                model["chunk_emb"] = resized
        model["layers.0.weight"] = w0

        # hidden layers, each with the layer reading it
        umap = None
        for k, new_width in enumerate(self.config["hnet_hidden"]):
            w_in, b_in = model[f"layers.{k}.weight"], model[f"layers.{k}.bias"]
            w_out = model[f"layers.{k + 1}.weight"]
            importance = growth.unit_importance(w_in, w_out, b_in)
            umap = growth.resize_map(len(b_in), new_width, importance, generator)
            model[f"layers.{k}.weight"], model[f"layers.{k}.bias"] = umap.take(w_in), \
                umap.take(b_in)
            model[f"layers.{k + 1}.weight"] = umap.spread(w_out, 1)

        # the snapshot lives in the last hidden layer's units: resize it the same way
        width = extra["snap_z"].shape[-1]
        with_bias = growth.UnitMap(torch.cat([umap.source, torch.tensor([width])]),
                                   torch.cat([umap.share, torch.ones(1, dtype=torch.float64)]),
                                   umap.exact)
        extra["snap_z"] = umap.take(extra["snap_z"], 2)
        extra["snap_gram"] = with_bias.take(with_bias.take(extra["snap_gram"], 0), 1)
        extra["snap_out"] = with_bias.spread(extra["snap_out"], 1)

        optimizer = growth.kept_optimizer_state(self.model, state["optimizer"], state["model"],
                                                model)
        self.load_state_dict({**state, "model": model, "extra": extra, "optimizer": optimizer})

"""A recurrent learner that keeps learning at inference time (LearnsItAll's Types A-C).

The task is the ``trial_and_error`` stream (lifelab.platform.episodes): in each episode the answer
of every digit is shuffled within its group, so the mapping must be learned inside the episode
from right/wrong feedback. Three parts, all meta-trained by backpropagation through the episode:

- Type A: an MLP from image to answer scores. Its slow weights (a trunk and a head) are trained
  by meta-training only; the trunk reads centred pixels and ends in batch-centred linear
  features, so that images of different digits start out nearly orthogonal (see TypesABC).
  Its fast weights W (answers x features, zero at an episode's start) are updated *at
  inference*, at every try, by `inner_steps` steps of gradient descent on
  0.5 * || A(x; slow, W) - target ||^2 toward the target Type B proposes (W acts on the
  unit-norm features). The gradient is taken with torch.func (vmap over the batch of episodes
  of grad of a functional_call) or in closed form (`inner_grad`); either way the outer backward
  goes through the inner steps. The inner learning rate is `inner_lr` times a learned gain (so
  PBT can still rescale it).
- Type B: an LSTM cell stepped at every try of a presentation (and once more after the last)
  that reads (image features, group, previous guess, feedback) and proposes Type A's target.
  The guess comes as a one-hot and once more signed by the feedback (+1 right, -1 wrong), so
  "this answer is right / wrong" is one linear read-out away.
- Type C: an LSTM cell stepped once per presentation that reads how it went (B's final state,
  group, last guess and feedback) across the episode's samples, and produces B's initial state
  for the next presentation.

A presentation: up to `stream.tries` tries; each try B reads the last feedback, A's fast weights
move toward B's target, A guesses argmax over the group's answers; it stops at the first right
guess. After the last try one more B step and fast update absorb the final feedback (this is what
carries a confirmed answer to the next presentation), and A's loss on the same image then is
loss_n. Meta-objective per TBPTT chunk (`truncation` rounds of the episode):

    task_weight * mean CE of the tries  -  improvement_weight * mean (loss_0 - loss_n)

(loss_0: CE of the first try). The improvement term alone would reward a bad first try; the task
term keeps loss_0 low, so keep improvement_weight well below task_weight.

Ablations (config): `fast_weights: false` is a plain LSTM learner (no inner updates; scores are
read out of B's state, which sees the image); `type_c: false` starts B from a learned constant
at every presentation (only the fast weights carry memory); `feedback: false` hides right/wrong
from B (guessing within the group).

A round: `batches_per_round` meta-training batches of `batch_episodes` episodes each, then an
evaluation on `val_episodes` validation episodes and `eval_episodes` test episodes, both fixed by
stream.seed, so every round of every trial is scored on the same episodes. Each split has its own
images and its own episode generator (lifelab.platform.episodes): training episodes show the
training images but a `stream.validation` fraction of each class, held out with stream.seed;
validation episodes show only those (metrics `val_<name>`: what searches select on); test
episodes show the test split (reported, never used for a decision). `done` after `rounds`
rounds. There is no accuracy matrix: `rows` stays empty; `evaluate()` returns the test metrics,
`evaluate("val")` the validation ones.

Config keys (default; `adapt` carries a checkpoint across hidden, b_size and c_size, for PBT):
  hidden              [128]  trunk hidden sizes (ReLU)
  feature_size        64     the trunk's (linear) output: what the fast layer reads
  b_size              64     Type B LSTM width
  c_size              64     Type C LSTM width
  inner_steps         1      fast-weight gradient steps per B step
  inner_lr            1.0    initial inner learning rate (times a learned gain, 1 at start)
  inner_grad          closed_form  the inner gradient: torch_func (vmap of grad of a
                             functional_call: works for any fast module) or closed_form (the
                             same gradient of the linear fast layer written out, (out - target)
                             x features; 0.14 ms against 2.5 ms per step for 16 episodes on
                             one CPU thread; a test checks both agree, meta-gradients included)
  fast_weights        true   ablation switch: false = plain LSTM learner
  type_c              true   ablation switch: false = B starts each presentation from a constant
  feedback            true   ablation switch: false = B never hears right or wrong
  task_weight         1.0    weight of the mean CE of the tries
  improvement_weight  0.1    weight of the improvement term (loss_0 - loss_n)
  truncation          2      rounds of the episode per truncated-BPTT chunk (and optimizer step)
  lr                  3e-3   meta learning rate (Adam)
  grad_clip           1.0    gradient-norm clip of the meta update (0 = none)
  batch_episodes      16     episodes per meta-training batch (processed in parallel)
  batches_per_round   10     meta-training batches per round
  eval_episodes       64     test episodes scored after each round
  val_episodes        64     validation episodes scored after each round (stream.validation > 0)
  switch_fraction     0.5    share of training episodes that switch (needs stream.switch_at)
  rounds              50     the budget: done after this many rounds

Metrics (on the test episodes, and as val_<name> on the validation episodes; fractions in
[0, 1] unless said):
  acc_first_try           first-try accuracy over every presentation of the episodes
  acc_presentation_k      first-try accuracy at the k-th presentation of a class (k = 1..P)
  acc_early               mean of acc_presentation_2..5 (those that exist)
  mean_tries              tries until right, a presentation missed in every try counted tries + 1
  improvement             mean (loss_0 - loss_n) per presentation, in nats
  recovery_steps          with stream.switch_at: presentations after the switch until a class is
                          first answered right at once (never: presentations left + 1), mean
  train_loss              mean CE of the round's meta-training tries
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.nn import functional as F

from lifelab.errors import ConfigError
from lifelab.learners import growth
from lifelab.learners.contract import (
    Learner,
    Param,
    checked_old_config,
    override_hyperparameters,
    same_layer_count,
)
from lifelab.platform.data import Dataset, load_stream_dataset
from lifelab.platform.episodes import (
    MAX_PRESENTATIONS,
    EpisodeConfig,
    Episodes,
    EpisodeSampler,
    split_seed,
)
from lifelab.platform.streams import hold_out

#: what an evaluation reports, on the test episodes as named and on validation ones as val_<name>
EPISODE_METRICS = ("acc_first_try", *(f"acc_presentation_{k}"
                                      for k in range(1, MAX_PRESENTATIONS + 1)),
                   "acc_early", "mean_tries", "improvement", "recovery_steps")


class TypesABC(nn.Module):
    """The slow weights of Types A, B and C; the fast weights live in the episode state."""

    def __init__(self, input_dim: int, answers: int, groups: int, config: dict):
        super().__init__()
        sizes = [input_dim, *config["hidden"]]
        layers: list[nn.Module] = []
        for n_in, n_out in zip(sizes, sizes[1:], strict=False):
            layers += [nn.Linear(n_in, n_out), nn.ReLU()]
        # Fast weights read unit-norm features, so a write for one image spills onto another in
        # proportion to their cosine. A random MLP maps all digits to nearly one direction
        # (cosine 0.71 between digits, 0.77 within, on MNIST-5k); centred pixels in and batch-
        # centred signed features out give 0.18 within and -0.02 between from the start.
        features = config["feature_size"]
        self.trunk = nn.Sequential(*layers, nn.Linear(sizes[-1], features),
                                   nn.BatchNorm1d(features, affine=False))
        self.register_buffer("pixel_mean", torch.zeros(input_dim))
        self.head = nn.Linear(features, answers)            # Type A's slow output layer
        self.fast = nn.Linear(features, answers, bias=False)  # shape holder for functional_call
        b_in = features + groups + 2 * answers + 1     # + the guess, and signed by feedback
        self.type_b = nn.LSTMCell(b_in, config["b_size"])
        self.target = nn.Linear(config["b_size"], answers)  # B proposes A's target
        self.readout = nn.Linear(config["b_size"], answers)  # plain-LSTM ablation's scores
        self.type_c = nn.LSTMCell(config["b_size"] + groups + 2 * answers + 1,
                                  config["c_size"])
        self.c_to_b = nn.Linear(config["c_size"], 2 * config["b_size"])
        self.b_init = nn.Parameter(torch.zeros(2 * config["b_size"]))
        self.log_inner_gain = nn.Parameter(torch.zeros(()))


class LifelongLSTM(Learner):
    """A recurrent learner whose fast weights learn at inference, on trial-and-error episodes."""

    name = "lifelong_lstm"
    params: dict[str, Param] = {
        "hidden": Param([128], list, doc="trunk hidden sizes"),
        "feature_size": Param(64, int, positive=True, doc="trunk output = fast layer input"),
        "b_size": Param(64, int, positive=True, doc="Type B LSTM width"),
        "c_size": Param(64, int, positive=True, doc="Type C LSTM width"),
        "inner_steps": Param(1, int, low=0, high=20, doc="fast-weight steps per B step"),
        "inner_lr": Param(1.0, float, positive=True, doc="initial inner learning rate"),
        "inner_grad": Param("closed_form", str, choices=("closed_form", "torch_func"),
                            doc="how the inner gradient is taken (the same numbers)"),
        "fast_weights": Param(True, bool, doc="false: plain LSTM ablation"),
        "type_c": Param(True, bool, doc="false: no Type C ablation"),
        "feedback": Param(True, bool, doc="false: no feedback ablation"),
        "task_weight": Param(1.0, float, low=0.0, doc="weight of the tries' CE"),
        "improvement_weight": Param(0.1, float, low=0.0, doc="weight of loss_0 - loss_n"),
        "truncation": Param(2, int, positive=True, doc="rounds per truncated-BPTT chunk"),
        "lr": Param(3e-3, float, positive=True, doc="meta learning rate"),
        "grad_clip": Param(1.0, float, low=0.0, doc="meta gradient-norm clip (0 = none)"),
        "batch_episodes": Param(16, int, positive=True, doc="episodes per meta batch"),
        "batches_per_round": Param(10, int, positive=True, doc="meta batches per round"),
        "eval_episodes": Param(64, int, positive=True, doc="test episodes per evaluation"),
        "val_episodes": Param(64, int, positive=True,
                              doc="validation episodes per evaluation (selection)"),
        "switch_fraction": Param(0.5, float, low=0.0, high=1.0,
                                 doc="share of training episodes that switch"),
        "rounds": Param(50, int, positive=True, doc="rounds until done"),
    }
    metrics: tuple[str, ...] = (*EPISODE_METRICS, *(f"val_{m}" for m in EPISODE_METRICS),
                                "train_loss")
    architecture_keys: tuple[str, ...] = ("hidden", "feature_size", "b_size", "c_size")
    adaptable_keys: tuple[str, ...] = ("hidden", "b_size", "c_size")
    layer_keys = ("hidden",)

    @classmethod
    def validate_stream(cls, stream: dict) -> EpisodeConfig:
        if isinstance(stream, dict) and stream.get("kind", "trial_and_error") != "trial_and_error":
            raise ConfigError(f"learner '{cls.name}' needs stream.kind trial_and_error, got "
                              f"{stream['kind']!r}: set stream: {{kind: trial_and_error}}")
        return EpisodeConfig.from_dict(stream)

    def __init__(self, config: dict, device: str | torch.device = "cpu",
                 data: Dataset | None = None):
        super().__init__(config, device, data)     # no accuracy matrix: `rows` stays empty
        stream: EpisodeConfig = self.config["stream"]
        data = data if data is not None else load_stream_dataset(stream)
        self.stream = stream
        # the validation images: held out of training by stream.seed (as a task stream's are)
        ids = torch.arange(len(data.y_train))
        train_ids, _, val_ids, _ = hold_out(ids, data.y_train, stream.validation, stream.seed)
        self.train_sampler = EpisodeSampler(stream, data, "train", indices=train_ids)
        self.answers = len(stream.classes)
        # label -> answer index (position in stream.classes); group index -> its answers
        self.answer_index = torch.full((data.num_classes,), -1, dtype=torch.long)
        self.answer_index[torch.tensor(stream.classes)] = torch.arange(self.answers)
        self.group_mask = torch.zeros(len(stream.groups), self.answers, dtype=torch.bool)
        for g, members in enumerate(self.train_sampler.members):
            self.group_mask[g, members] = True
        self.answer_index = self.answer_index.to(self.device)
        self.group_mask = self.group_mask.to(self.device)
        with torch.random.fork_rng(devices=[]):   # model init from the seed, global RNG untouched
            torch.manual_seed(self.config["seed"])
            self.model = TypesABC(data.input_dim, self.answers, len(stream.groups),
                                  self.config).to(self.device)
            self.model.pixel_mean.copy_(self.train_sampler.x.mean(dim=0))
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=self.config["lr"])
        self.generator = torch.Generator().manual_seed(split_seed("train", self.config["seed"]))
        # test and validation episodes: fixed by stream.seed, the same for every round and trial
        self.eval_set, self.switch_set = self._fixed_episodes(
            EpisodeSampler(stream, data, "test"), "test", self.config["eval_episodes"])
        self.val_set = self.val_switch_set = None
        if stream.validation > 0:
            self.val_set, self.val_switch_set = self._fixed_episodes(
                EpisodeSampler(stream, data, "train", indices=val_ids), "val",
                self.config["val_episodes"])
        self.round = 0

    def _fixed_episodes(self, sampler: EpisodeSampler, split: str, n: int
                        ) -> tuple[Episodes, Episodes | None]:
        """A split's scored episodes, and its switching ones (with stream.switch_at), drawn from
        the split's own generator."""
        gen = torch.Generator().manual_seed(split_seed(split, self.stream.seed))
        episodes = sampler.sample(n, gen).to(self.device)
        switching = (sampler.sample(n, gen, switch_fraction=1.0).to(self.device)
                     if self.stream.switch_at else None)
        return episodes, switching

    @property
    def done(self) -> bool:
        return self.round >= self.config["rounds"]

    # -- one episode batch ---------------------------------------------------------------------

    def _initial_state(self, batch: int) -> dict[str, torch.Tensor]:
        m, dev = self.model, self.device
        return {"fast": torch.zeros(batch, *m.fast.weight.shape, device=dev),
                "h_c": torch.zeros(batch, self.config["c_size"], device=dev),
                "c_c": torch.zeros(batch, self.config["c_size"], device=dev)}

    def _inner_update(self, fast, feats, slow_logits, target, active):
        """`inner_steps` gradient steps of each episode's fast weights toward B's target."""
        m = self.model
        lr = self.config["inner_lr"] * m.log_inner_gain.exp()

        def inner_loss(weight, f, slow, tgt):
            out = slow + functional_call(m.fast, {"weight": weight}, (f,))
            return 0.5 * ((out - tgt) ** 2).sum()

        if self.config["inner_grad"] == "torch_func":
            step = vmap(grad(inner_loss))
        else:   # the same gradient of the linear fast layer, written out: 20x faster on a CPU
            def step(weight, f, slow, tgt):
                out = slow + torch.einsum("bad,bd->ba", weight, f)
                return torch.einsum("ba,bd->bad", out - tgt, f)
        gate = active.to(fast.dtype)[:, None, None]
        for _ in range(self.config["inner_steps"]):
            fast = fast - lr * gate * step(fast, feats, slow_logits, target)
        return fast

    def _run_rounds(self, ep: Episodes, rounds: range, state: dict) -> dict[str, torch.Tensor]:
        """Run rounds `rounds` of the episodes from `state` (updated in place). Returns per
        (B, rounds, C): `first` (right at first try), `pick` (the first guess), `scores` (its
        scores, one more axis), `tries` (until right; a miss = tries + 1), `loss_first`,
        `loss_post`; and the scalar `ce` (sum over the tries made) and `count` (tries made)."""
        m = self.model
        batch, c = ep.batch, ep.x.shape[2]
        x = ep.x[:, rounds.start:rounds.stop]
        feats_all = m.trunk(x.reshape(-1, x.shape[-1]) - m.pixel_mean)   # slow trunk, one pass
        slow_all = m.head(feats_all).reshape(batch, len(rounds), c, -1)
        unit_all = F.normalize(feats_all, dim=1).reshape(batch, len(rounds), c, -1)
        groups_onehot = F.one_hot(ep.group, len(self.stream.groups)).float()
        out = {key: [] for key in ("first", "pick", "scores", "tries", "loss_first", "loss_post")}
        totals = {"ce": torch.zeros((), device=self.device),
                  "count": torch.zeros((), device=self.device)}
        for i, r in enumerate(rounds):
            for p in range(c):
                self._present(unit_all[:, i, p], slow_all[:, i, p], ep.group[:, r, p],
                              self.answer_index[ep.answer[:, r, p]], groups_onehot[:, r, p],
                              state, out, totals)
        shape = (batch, len(rounds), c)
        return {**{key: torch.stack(values, 1).reshape(*shape, *([-1] if key == "scores" else []))
                   for key, values in out.items()}, **totals}

    def _present(self, feats, slow, group, target_ans, g1h, state: dict, out: dict,
                 totals: dict) -> None:
        """One presentation of an item in every episode: guesses until right (at most `tries`),
        type B and the fast weights taking in each try's feedback, then type C the outcome.
        Appends to `out`'s lists, adds to `totals`, updates `state`."""
        cfg, m = self.config, self.model
        batch, tries = feats.shape[0], self.stream.tries
        mask = self.group_mask[group]
        eye = torch.eye(self.answers, device=self.device)
        if cfg["type_c"]:
            h_b, c_b = torch.tanh(m.c_to_b(state["h_c"])).chunk(2, dim=1)
        else:
            h_b, c_b = m.b_init.expand(batch, -1).chunk(2, dim=1)
        guess = torch.zeros(batch, self.answers, device=self.device)
        fb = torch.zeros(batch, 1, device=self.device)
        active = torch.ones(batch, dtype=torch.bool, device=self.device)
        # what the learner can tell: without feedback it cannot know it was right, so it goes
        # on through every try (its stopping would leak the feedback)
        running = active
        n_tries = torch.zeros(batch, device=self.device)
        fast = state["fast"]
        for t in range(tries + 1):              # the last step absorbs the final feedback
            h_new, c_new = m.type_b(torch.cat([feats, g1h, guess, guess * fb, fb], 1), (h_b, c_b))
            gate = running | (t == tries)
            h_b = torch.where(gate[:, None], h_new, h_b)
            c_b = torch.where(gate[:, None], c_new, c_b)
            if cfg["fast_weights"]:
                fast = self._inner_update(fast, feats, slow, m.target(h_b), gate)
                scores = slow + torch.einsum("bad,bd->ba", fast, feats)
            else:
                scores = slow + m.readout(h_b)
            logits = scores.masked_fill(~mask, float("-inf"))
            ce = F.cross_entropy(logits, target_ans, reduction="none")
            if t == tries:
                out["loss_post"].append(ce)
                break
            pick = logits.argmax(dim=1)
            right = pick == target_ans
            if t == 0:
                out["first"].append(right.float())
                out["pick"].append(pick)
                out["scores"].append(scores)
                out["loss_first"].append(ce)
            act = active.float()
            totals["ce"] = totals["ce"] + (ce * act).sum()
            totals["count"] = totals["count"] + act.sum()
            n_tries = n_tries + act
            said = (right.float() * 2 - 1)[:, None] if cfg["feedback"] else torch.zeros_like(fb)
            guess = torch.where(running[:, None], eye[pick], guess)
            fb = torch.where(running[:, None], said, fb)
            active = active & ~right
            running = active if cfg["feedback"] else running
        out["tries"].append(n_tries + active.float())       # a miss counts tries + 1
        state["fast"] = fast
        if cfg["type_c"]:
            state["h_c"], state["c_c"] = m.type_c(torch.cat([h_b, g1h, guess, guess * fb, fb], 1),
                                                  (state["h_c"], state["c_c"]))

    # -- the round -----------------------------------------------------------------------------

    def _train_batch(self) -> float:
        cfg = self.config
        ep = self.train_sampler.sample(cfg["batch_episodes"], self.generator,
                                       switch_fraction=cfg["switch_fraction"]).to(self.device)
        state = self._initial_state(ep.batch)
        total_ce = total_n = 0.0
        self.model.train()
        for start in range(0, self.stream.presentations, cfg["truncation"]):
            stop = min(start + cfg["truncation"], self.stream.presentations)
            out = self._run_rounds(ep, range(start, stop), state)
            task = out["ce"] / out["count"]
            improvement = (out["loss_first"] - out["loss_post"]).mean()
            loss = cfg["task_weight"] * task - cfg["improvement_weight"] * improvement
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg["grad_clip"] > 0:
                nn.utils.clip_grad_norm_(self.model.parameters(), cfg["grad_clip"])
            self.optimizer.step()
            state = {k: v.detach() for k, v in state.items()}   # truncate BPTT here
            total_ce += out["ce"].item()
            total_n += out["count"].item()
        return total_ce / total_n

    def step_round(self) -> dict[str, float]:
        if self.done:
            raise RuntimeError("the learner has used its budget of rounds; check `done` first")
        losses = [self._train_batch() for _ in range(self.config["batches_per_round"])]
        self.round += 1
        val = {} if self.val_set is None else {f"val_{name}": value
                                               for name, value in self.evaluate("val").items()}
        return {**self.evaluate(), **val, "train_loss": sum(losses) / len(losses)}

    @torch.no_grad()
    def run_episodes(self, ep: Episodes) -> dict[str, torch.Tensor]:
        """Per-presentation outcomes of the learner on `ep` (no meta-training)."""
        self.model.eval()
        return self._run_rounds(ep, range(self.stream.presentations),
                                self._initial_state(ep.batch))

    def evaluate(self, split: str = "test") -> dict[str, float]:
        """The metrics (module docstring) of the learner as it is now on the test episodes, or
        on the validation episodes with split "val" (unprefixed names either way)."""
        episodes, switching = ((self.eval_set, self.switch_set) if split == "test" else
                               (self.val_set, self.val_switch_set))
        if episodes is None:
            raise ValueError("stream.validation is 0: this learner has no validation episodes")
        out = self.run_episodes(episodes)
        curve = out["first"].mean(dim=(0, 2))
        metrics = {"acc_first_try": out["first"].mean().item(),
                   "mean_tries": out["tries"].mean().item(),
                   "improvement": (out["loss_first"] - out["loss_post"]).mean().item()}
        for k, acc in enumerate(curve.tolist(), start=1):
            metrics[f"acc_presentation_{k}"] = acc
        early = curve[1:5]
        if len(early):
            metrics["acc_early"] = early.mean().item()
        if switching is not None:
            first = self.run_episodes(switching)["first"]
            by_class = torch.zeros_like(first).scatter_(
                2, self.answer_index[switching.label], first)
            metrics["recovery_steps"] = recovery_steps(by_class, switching.switch_round)
        return metrics

    # -- state ---------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        return copy.deepcopy({"model": self.model.state_dict(),
                              "optimizer": self.optimizer.state_dict(),
                              "generator": self.generator.get_state(), "round": self.round})

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        override_hyperparameters(self.optimizer, lr=self.config["lr"])
        self.generator.set_state(state["generator"])
        self.round = state["round"]


    def adapt(self, state: dict, old_config: dict) -> None:
        """Load a state made under other widths (PBT mutating b_size, c_size, hidden). Widening is
        function-preserving (Net2Net through `lifelab.learners.growth`): a new unit copies a
        unit's incoming weights and every reader of that unit splits its column among the copies,
        so right after it the learner plays every episode as before (up to float rounding).
        Narrowing keeps the most important units. Adam moments of resized tensors start afresh."""
        old, new = checked_old_config(self, old_config), self.config
        same_layer_count(type(self), "hidden", [old["hidden"], new["hidden"]])
        model = dict(state["model"])
        generator = torch.Generator().manual_seed(new["seed"])
        # trunk: Linear k (module 2k) is read by module 2k + 2 (the next one, or the features)
        for k, new_width in enumerate(new["hidden"]):
            w_in, b_in = model[f"trunk.{2 * k}.weight"], model[f"trunk.{2 * k}.bias"]
            reader = f"trunk.{2 * k + 2}.weight"
            importance = growth.unit_importance(w_in, model[reader], b_in)
            umap = growth.resize_map(len(b_in), new_width, importance, generator)
            model[f"trunk.{2 * k}.weight"], model[f"trunk.{2 * k}.bias"] = umap.take(w_in), \
                umap.take(b_in)
            model[reader] = umap.spread(model[reader], 1)
        # B's h is read by A's target, the plain readout and C (first in its input); B's initial
        # (h, c) comes from C through c_to_b (or from b_init): their rows follow B's units, so a
        # copied unit starts every presentation where its original does
        umap = growth.resize_lstm_cell(model, "type_b", {"target.weight": 0, "readout.weight": 0,
                                                         "type_c.weight_ih": 0},
                                       new["b_size"], generator)
        for key in ("c_to_b.weight", "c_to_b.bias", "b_init"):
            model[key] = umap.take_blocks(model[key], 2)
        # C's h is read only by c_to_b (and its own recurrent matrix); its state starts at zero
        growth.resize_lstm_cell(model, "type_c", {"c_to_b.weight": 0}, new["c_size"], generator)
        optimizer = growth.kept_optimizer_state(self.model, state["optimizer"], state["model"],
                                                model)
        self.load_state_dict({**state, "model": model, "optimizer": optimizer})


def recovery_steps(first: torch.Tensor, switch_round: int) -> float:
    """Mean over (episode, class) of the presentations from the switch until the first right
    first try, counting that presentation; never: presentations left + 1. `first` (B, R, C)
    holds each class in a fixed column (not in the order shown)."""
    after = first[:, switch_round:] > 0
    left = after.shape[1]
    hit = after.any(dim=1)
    first_hit = after.float().argmax(dim=1) + 1
    return torch.where(hit, first_hit, torch.full_like(first_hit, left + 1)).float().mean().item()

"""The `Teacher` learner: meta-trains a teacher network (see the package docstring)."""

from __future__ import annotations

import copy
import dataclasses
import math

import torch
from torch.func import functional_call, grad_and_value
from torch.nn import functional as F

from lifelab.errors import ConfigError
from lifelab.learners import growth
from lifelab.learners.contract import (
    Evaluation,
    Learner,
    Param,
    checked_old_config,
    override_hyperparameters,
    same_layer_count,
)
from lifelab.learners.teacher.baselines import (
    SPLITS,
    heldout_tasks,
    horizons,
    start,
    summarize,
    tuned_baseline,
    validation_split,
)
from lifelab.learners.teacher.estimators import (
    ESTIMATORS,
    Batches,
    Window,
    normalise_gradient,
    self_application,
)
from lifelab.learners.teacher.features import (
    FEATURE_SETS,
    MOMENTUM_DECAYS,
    FeatureNormaliser,
    gradient_features,
    gradient_free_features,
)
from lifelab.learners.teacher.network import TeacherNet, resize, weight_update
from lifelab.learners.teacher.students import (
    ACTIVATIONS,
    StudentRun,
    StudentTask,
    as_rows,
    score,
    student_for,
)
from lifelab.platform.data import DATASETS, Dataset, load_dataset, load_stream_dataset
from lifelab.platform.streams import StreamConfig

STREAM_KEYS = ("dataset", "seed", "validation", "data_root", "download")
#: what a meta-test reports, on test students as named and on validation students as val_<name>
META_TEST_METRICS = ("loss_teacher", "loss_adam", "loss_sgd", "acc_teacher", "acc_adam",
                     "acc_sgd", "loss_ratio_adam", "loss_ratio_sgd", "loss_ratio_adam_2n",
                     "loss_ratio_adam_10n")


def _range_param(default: list[int], doc: str) -> Param:
    return Param(default, list, doc=doc)


class Teacher(Learner):
    """A learned optimizer (teacher network) meta-trained to train held-out student networks."""

    name = "teacher"
    params: dict[str, Param] = {
        "teacher_kind": Param("mlp", str, choices=("mlp", "lstm"), doc="teacher network kind"),
        "teacher_hidden": Param([32], list, doc="hidden sizes of the teacher"),
        "features": Param("gradient", str, choices=tuple(FEATURE_SETS), doc="feature set"),
        "step_size": Param(0.01, float, positive=True, doc="scale of every update"),
        "meta_gradient": Param("bptt", str, choices=tuple(ESTIMATORS), doc="meta-gradient"),
        "meta_objective": Param("log_loss", str, choices=("log_loss", "error"),
                                doc="meta-objective per step"),
        "meta_lr": Param(1e-3, float, positive=True, doc="Adam learning rate of the teacher"),
        "meta_optimizer": Param("adam", str, choices=("adam", "self"),
                                doc="what applies the meta-gradient (self: experimental)"),
        "unroll_steps": Param(100, int, positive=True, doc="student steps per student"),
        "truncation": Param(10, int, low=2, doc="student steps per meta-step"),
        "es_pairs": Param(4, int, positive=True, doc="antithetic pairs per ES estimate"),
        "es_sigma": Param(0.01, float, positive=True, doc="ES perturbation std"),
        "meta_steps": Param(2000, int, positive=True, doc="meta-training budget (meta-steps)"),
        "meta_steps_per_round": Param(20, int, positive=True, doc="meta-steps per round"),
        "student_depth": _range_param([1, 2], "hidden layers of students, [low, high]"),
        "student_width": _range_param([20, 50], "hidden widths of students, [low, high]"),
        "student_activation": Param("sigmoid", str, choices=tuple(ACTIVATIONS),
                                    doc="student activation"),
        "student_batch": Param(128, int, positive=True, doc="samples per student step"),
        "eval_hidden": Param([64], list, doc="held-out architecture of meta-test students"),
        "eval_dataset": Param("", str, choices=("", *DATASETS), doc="meta-test dataset"),
        "eval_students": Param(2, int, positive=True, doc="test students per meta-test"),
        "val_students": Param(2, int, positive=True, high=1000,
                              doc="validation students per meta-test (selection)"),
        "eval_steps": Param(100, int, positive=True, doc="N, the meta-test horizon"),
        "eval_long": Param(False, bool, doc="also measure at 10N"),
        "eval_samples": Param(1000, int, positive=True, doc="images the meta-test loss uses"),
        "eval_every": Param(1, int, positive=True, doc="rounds between meta-tests"),
    }
    metrics: tuple[str, ...] = ("meta_loss", "train_loss", "meta_steps", "students",
                                *META_TEST_METRICS, *(f"val_{m}" for m in META_TEST_METRICS))
    architecture_keys: tuple[str, ...] = ("teacher_kind", "teacher_hidden", "features")
    adaptable_keys: tuple[str, ...] = ("teacher_hidden",)
    layer_keys = ("teacher_hidden",)

    @classmethod
    def validate_stream(cls, stream: dict) -> StreamConfig:
        """Only the meta-training data: the student task family is the teacher's own."""
        if not isinstance(stream, dict):
            raise ConfigError(f"stream must be a mapping such as {{dataset: mnist5k}}, "
                              f"got {stream!r}")
        for key in stream:
            if key not in STREAM_KEYS:
                raise ConfigError(f"stream.{key} means nothing to learner 'teacher' (its stream "
                                  f"only names the meta-training data): remove it, keep "
                                  f"{', '.join(STREAM_KEYS)}")
        return StreamConfig.from_dict(stream)

    @classmethod
    def validate_config(cls, config: dict) -> dict:
        """The config with defaults filled in; raises ConfigError naming a bad key."""
        full = super().validate_config(config)
        for key in ("student_depth", "student_width"):
            value = full[key]
            if len(value) != 2 or value[0] > value[1]:
                raise ConfigError(f"teacher config '{key}' must be [low, high] with low <= high, "
                                  f"got {value!r}")
        if full["truncation"] > full["unroll_steps"]:
            raise ConfigError(f"teacher config 'truncation' ({full['truncation']}) must be <= "
                              f"unroll_steps ({full['unroll_steps']}): lower it or raise "
                              "unroll_steps")
        if full["meta_optimizer"] == "self" and full["features"] != "gradient":
            raise ConfigError("teacher config 'meta_optimizer' self reads the teacher's own "
                              "meta-gradients: set features: gradient (or meta_optimizer: adam)")
        if full["meta_objective"] == "error" and full["meta_gradient"] != "es":
            raise ConfigError("teacher config 'meta_objective' error is not differentiable: "
                              "set meta_gradient: es (or meta_objective: log_loss)")
        return full

    def __init__(self, config: dict, device: str | torch.device = "cpu",
                 data: Dataset | None = None):
        super().__init__(config, device, data)   # a meta-learner: `rows` stays empty
        stream: StreamConfig = self.config["stream"]
        data = as_rows(data if data is not None else load_stream_dataset(stream))
        eval_name = self.config["eval_dataset"] or data.name
        same = eval_name == data.name
        eval_rows = data if same else as_rows(load_dataset(eval_name, stream.data_root,
                                                           stream.download))
        # no student trains on the validation images: test students are scored on the test
        # split, validation students on these (baselines.validation_split)
        kept, val = validation_split(eval_rows, stream.validation, stream.seed)
        self.eval_data = kept.to(self.device)
        self.val_data = None if val is None else dataclasses.replace(
            self.eval_data, x_test=val.x_test.to(self.device), y_test=val.y_test.to(self.device))
        self.data = self.eval_data if same else data.to(self.device)
        # seeds of held-out students: a meta-training student never gets one (sample_task)
        self.reserved = {t.seed for split in SPLITS for t in self.heldout_tasks(split)}
        self.feature_set = FEATURE_SETS[self.config["features"]]
        self.normalise = FeatureNormaliser(self.feature_set, self.device)
        with torch.random.fork_rng(devices=[]):   # teacher init from the seed, global RNG untouched
            torch.manual_seed(self.config["seed"])
            self.teacher = TeacherNet(self.config["teacher_kind"], len(self.feature_set.names),
                                      self.config["teacher_hidden"]).to(self.device)
        self.meta_opt = torch.optim.Adam(self.teacher.parameters(), lr=self.config["meta_lr"])
        self.generator = torch.Generator().manual_seed(self.config["seed"])
        self.run: StudentRun | None = None
        self.self_state: dict | None = None      # the teacher's state as its own optimizer
        self.meta_step_count = 0
        self.students = 0
        self.rounds = 0
        self.last_test: dict[str, float] = {}
        self._baselines: dict = {}              # held-out task -> tuned SGD / Adam results

    @property
    def done(self) -> bool:
        return self.meta_step_count >= self.config["meta_steps"]

    # -- one student step with the teacher -----------------------------------------------------

    def new_run(self, task: StudentTask, w0: torch.Tensor, data: Dataset) -> StudentRun:
        student = student_for(task, data)
        n, d = student.num_weights, self.device
        zero = torch.zeros((), device=d)
        return StudentRun(task, w0.to(d), 0, zero, zero,
                          torch.zeros(n, len(MOMENTUM_DECAYS), device=d),
                          torch.zeros(n, device=d),
                          torch.zeros(len(student.shapes), self.feature_set.num_groups, device=d),
                          self.teacher.initial_state(n, d))

    def advance(self, run: StudentRun, x: torch.Tensor, y: torch.Tensor, data: Dataset,
                params: dict[str, torch.Tensor] | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, StudentRun]:
        """One student step: (loss before it, batch accuracy, the run after it). The loss keeps
        its graph to the teacher's parameters through the updates of earlier steps;
        `params` replaces the teacher's parameters (ES perturbations)."""
        student = student_for(run.task, data)
        moments, second = run.moments, run.second
        if self.config["features"] == "gradient":
            grad, (loss, logits) = grad_and_value(student.loss_one, has_aux=True)(run.w, x, y)
            raw, moments, second = gradient_features(run.w.detach(), grad.detach(), moments,
                                                     second, run.step,
                                                     self.config["unroll_steps"])
        else:
            logits_p, activity = student.forward(run.w[None], x, trace=True)
            logits = logits_p[0]
            loss = F.cross_entropy(logits, y)
            raw = gradient_free_features(student, run, activity, loss, y, data.num_classes,
                                         self.device)
        loss0 = loss.detach() if run.step == 0 else run.loss0
        # the weight column keeps its graph (see FeatureNormaliser)
        features, scale = self.normalise(raw.detach(), run.scale, run.step, student, run.w)
        if params is None:
            out, teacher_state = self.teacher(features, run.teacher_state)
        else:
            out, teacher_state = functional_call(self.teacher, params,
                                                 (features, run.teacher_state))
        accuracy = (logits.argmax(-1) == y).float().mean()
        update = weight_update(out, student, self.config["step_size"], self.device)
        after = StudentRun(run.task, run.w + update, run.step + 1, loss0, loss.detach(),
                           moments, second, scale, teacher_state)
        return loss, accuracy, after

    # -- meta-training -------------------------------------------------------------------------

    def window(self, run: StudentRun, batches: Batches) -> Window:
        """`run` over `batches` on the meta-training data; call it to train (see Window)."""
        def step(run: StudentRun, x: torch.Tensor, y: torch.Tensor, params: dict | None
                 ) -> tuple[torch.Tensor, torch.Tensor, StudentRun]:
            return self.advance(run, x, y, self.data, params)
        return Window(step, run, batches, self.config["meta_objective"])

    def sample_task(self) -> StudentTask:
        low, high = self.config["student_depth"]
        depth = int(torch.randint(low, high + 1, (), generator=self.generator))
        w_low, w_high = self.config["student_width"]
        hidden = torch.randint(w_low, w_high + 1, (depth,), generator=self.generator).tolist()
        seed = int(torch.randint(2**31 - 1, (), generator=self.generator))
        while seed in self.reserved:       # (about once in 10^9 draws)
            seed = int(torch.randint(2**31 - 1, (), generator=self.generator))
        return StudentTask(tuple(hidden), self.config["student_activation"], seed)

    def fresh_run(self) -> StudentRun:
        task = self.sample_task()
        self.students += 1
        student = student_for(task, self.data)
        return self.new_run(task, student.init(torch.Generator().manual_seed(task.seed)),
                            self.data)

    def draw_batches(self, steps: int) -> Batches:
        idx = torch.randint(len(self.data.y_train), (steps, self.config["student_batch"]),
                            generator=self.generator).to(self.device)
        return [(self.data.x_train[i], self.data.y_train[i]) for i in idx]

    def meta_step(self) -> tuple[float, list[torch.Tensor]]:
        """One truncation window of meta-training: (meta-objective, student losses)."""
        if self.run is None or self.run.step >= self.config["unroll_steps"]:
            self.run = self.fresh_run()
        steps = min(self.config["truncation"], self.config["unroll_steps"] - self.run.step)
        window = self.window(self.run, self.draw_batches(steps))
        self.meta_opt.zero_grad(set_to_none=True)
        estimate = ESTIMATORS[self.config["meta_gradient"]]
        objective, losses, run = estimate(window, self.teacher, self.generator, self.config)
        grads = [p.grad for p in self.teacher.parameters() if p.grad is not None]
        finite = bool(torch.isfinite(objective)) and all(torch.isfinite(g).all() for g in grads)
        if finite:
            normalise_gradient(grads)
            if self.config["meta_optimizer"] == "self":
                self.self_state = self_application(self.teacher, self.self_state,
                                                   self.normalise, self.config, self.device)
            else:
                self.meta_opt.step()
            self.run = run.detached()
        else:   # a blown-up student: no update from it, a fresh one next
            self.meta_opt.zero_grad(set_to_none=True)
            self.run = None
        return objective.item(), losses

    def step_round(self) -> dict[str, float]:
        if self.done:
            raise RuntimeError("the learner has used its meta-training budget; check `done` first")
        objectives, losses = [], []
        for _ in range(min(self.config["meta_steps_per_round"],
                           self.config["meta_steps"] - self.meta_step_count)):
            objective, window_losses = self.meta_step()
            objectives.append(objective)
            losses += window_losses
            self.meta_step_count += 1
        self.rounds += 1
        if self.rounds % self.config["eval_every"] == 0 or self.done:
            self.last_test = {**self.meta_test("test"), **({} if self.val_data is None else {
                f"val_{name}": value for name, value in self.meta_test("val").items()})}
        train_loss = torch.stack(losses).mean().item()
        if not all(torch.isfinite(p).all() for p in self.teacher.parameters()):
            train_loss = math.nan          # the trainable stops a diverged trial
        return {"meta_loss": sum(objectives) / len(objectives), "train_loss": train_loss,
                "meta_steps": float(self.meta_step_count), "students": float(self.students),
                **self.last_test}

    # -- meta-test (lifelab.learners.teacher.baselines) ----------------------------------------

    def heldout_tasks(self, split: str = "test") -> list[StudentTask]:
        """The test students (never used for a decision) or the validation students ("val")."""
        return heldout_tasks(self.config, split)

    @torch.no_grad()
    def train_with_teacher(self, task: StudentTask, data: Dataset, horizons: list[int]
                           ) -> dict[int, tuple[float, float]]:
        """(loss, accuracy) at each horizon of a student trained by the teacher."""
        student, w0, batches = start(task, data, max(horizons), self.config["student_batch"],
                                     self.device)
        run, results = self.new_run(task, w0, data), {}
        for t in range(max(horizons)):
            idx = batches[t]
            _, _, run = self.advance(run, data.x_train[idx], data.y_train[idx], data)
            if t + 1 in horizons:
                loss, accuracy = score(student, run.w[None], data, self.config["eval_samples"])
                results[t + 1] = (loss.item(), accuracy.item())
        return results

    def baselines(self, task: StudentTask, data: Dataset, horizons: list[int]) -> dict:
        """Tuned SGD and Adam on a held-out task (cached: they do not depend on the teacher)."""
        key = (task, data.name, len(data.y_train), len(data.y_test), tuple(horizons),
               self.config["eval_samples"], self.config["student_batch"])
        if key not in self._baselines:
            student, w0, batches = start(task, data, max(horizons),
                                         self.config["student_batch"], self.device)
            self._baselines[key] = {
                name: tuned_baseline(student, w0, data, batches, name, horizons,
                                     self.config["eval_samples"]) for name in ("sgd", "adam")}
        return self._baselines[key]

    def compare(self, tasks: list[StudentTask], data: Dataset, horizons: list[int]) -> list[dict]:
        """Per task: {"teacher": {h: (loss, acc)}, "sgd"/"adam": {h: (loss, acc, lr)}}."""
        return [{"teacher": self.train_with_teacher(task, data, horizons),
                 **self.baselines(task, data, horizons)} for task in tasks]

    def meta_test(self, split: str = "test") -> dict[str, float]:
        """The meta-test metrics (package docstring) on the test students, or on the validation
        students with split "val" (unprefixed names either way)."""
        steps = horizons(self.config)
        data = self.eval_data if split == "test" else self.val_data
        if data is None:
            raise ValueError("stream.validation is 0: this teacher has no validation students")
        return summarize(self.compare(self.heldout_tasks(split), data, steps), steps)

    def evaluate(self) -> Evaluation:
        """Test accuracy of each test student after N steps with the teacher."""
        n = self.config["eval_steps"]
        accuracies = [self.train_with_teacher(task, self.eval_data, [n])[n][1]
                      for task in self.heldout_tasks()]
        return Evaluation(accuracies, tasks_trained=0)

    # -- state ---------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        return copy.deepcopy({
            "teacher": self.teacher.state_dict(),
            "meta_opt": self.meta_opt.state_dict(),
            "generator": self.generator.get_state(),
            "run": self.run.to_state() if self.run is not None else None,
            "self_state": self.self_state,
            "meta_steps": self.meta_step_count,
            "students": self.students,
            "rounds": self.rounds,
            "last_test": dict(self.last_test),
        })

    def load_state_dict(self, state: dict) -> None:
        self.teacher.load_state_dict(state["teacher"])
        self.meta_opt.load_state_dict(state["meta_opt"])
        override_hyperparameters(self.meta_opt, lr=self.config["meta_lr"])
        self.generator.set_state(state["generator"])
        run = state["run"]
        self.run = StudentRun.from_state(copy.deepcopy(run), self.device) if run else None
        self.self_state = copy.deepcopy(state["self_state"])
        self.meta_step_count = state["meta_steps"]
        self.students = state["students"]
        self.rounds = state["rounds"]
        self.last_test = dict(state["last_test"])

    def adapt(self, state: dict, old_config: dict) -> None:
        """Load a state made under other teacher widths (PBT mutating teacher_hidden): see
        `network.resize`. The meta-optimizer's moments of resized tensors start afresh."""
        old = checked_old_config(self, old_config)
        same_layer_count(type(self), "teacher_hidden", [old["teacher_hidden"],
                                                        self.config["teacher_hidden"]])
        model = dict(state["teacher"])
        run = copy.deepcopy(state["run"])
        generator = torch.Generator().manual_seed(self.config["seed"])
        resize(model, run["teacher_state"] if run is not None else None,
               self.config["teacher_kind"], self.config["teacher_hidden"], generator)
        meta_opt = growth.kept_optimizer_state(self.teacher, state["meta_opt"], state["teacher"],
                                               model)
        self.load_state_dict({**state, "teacher": model, "meta_opt": meta_opt, "run": run})

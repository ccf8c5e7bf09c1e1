"""Regularization learners: each importance against a brute-force reference computed on the
learner's own tiny network, the penalty's gradient, bit-for-bit resume, config errors, specs."""

import copy
import math

import pytest
import torch
from torch.nn import functional as F

from lifelab.errors import ConfigError
from lifelab.learners.base import Learner
from lifelab.learners.importance import random_directions
from lifelab.learners.pathint import SI, RWalk
from lifelab.learners.regularized import EWC, L2, MAS, SCP, OnlineEWC, Regularized
from lifelab.platform.data import load_dataset
from lifelab.searches.spec import load_spec, spec_from_dict

LEARNERS = [L2, EWC, OnlineEWC, MAS, SCP, SI, RWalk]
TINY = {"hidden": [6], "batch_size": 8}
STREAM = {"kind": "split", "tasks": 3, "scenario": "task", "steps_per_task": 12}
STRENGTH = {"l2_lambda": 0.3, "ewc_lambda": 300.0, "online_ewc_lambda": 300.0,
            "mas_lambda": 0.3, "scp_lambda": 30.0, "si_c": 0.3, "rwalk_lambda": 0.3}




def make(cls, stream=None, **config):
    own = {k: v for k, v in STRENGTH.items() if k in cls.params}
    return cls({"stream": {**STREAM, **(stream or {})}, **TINY, **own, **config},
               data=load_dataset("mnist5k"))


def finish_tasks(learner, count):
    while len(learner.rows) < count:
        learner.step_round()


def model_at(learner, weights):
    """A copy of the learner's model holding `weights` (e.g. an anchor)."""
    model = copy.deepcopy(learner.model)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(weights[name])
    return model


def task_data(learner, task):
    n = learner.stream.tasks[task].num_train
    return learner.stream.tasks[task].train_batch(torch.arange(n))


def head(learner, model, task, x):
    """The logits `task` is trained on once it is the newest task (units of tasks 0..task)."""
    return model(x)[:, learner.stream.output_units(task, task + 1)]


def per_sample_sum(model, loss_of_sample, n, power):
    params = dict(model.named_parameters())
    total = {name: torch.zeros_like(p) for name, p in params.items()}
    for i in range(n):
        for name, g in zip(params, torch.autograd.grad(loss_of_sample(i), list(params.values())),
                           strict=True):
            total[name] += g.abs() ** power
    return total


def assert_close(got, want, rtol=1e-4):
    assert set(got) == set(want)
    for name in want:
        scale = want[name].abs().max().clamp(min=1e-12)
        assert (got[name] - want[name]).abs().max() <= rtol * scale, name


def brute_fisher(learner, weights, task):
    """Empirical Fisher: mean over the task's samples of the squared score, one at a time."""
    model = model_at(learner, weights)
    x, y = task_data(learner, task)
    sums = per_sample_sum(model, lambda i: F.cross_entropy(head(learner, model, task, x[i:i + 1]),
                                                           y[i:i + 1]), len(x), 2)
    return {n: s / len(x) for n, s in sums.items()}


class Recording:
    """Mixin: keep the model's weights at each task end, before the importances are computed."""

    def consolidate(self, task):
        self.ends = [*getattr(self, "ends", []), self.anchor()]
        self.gen_states = [*getattr(self, "gen_states", []), self.generator.get_state()]
        super().consolidate(task)


# -- importances against brute force ---------------------------------------------------------

def test_ewc_keeps_one_per_sample_fisher_penalty_per_past_task():
    learner = make(EWC, fisher="empirical")
    finish_tasks(learner, 2)
    assert len(learner.terms) == 2
    for task, (fisher, anchor) in enumerate(learner.terms):
        assert_close(fisher, brute_fisher(learner, anchor, task))
    assert all(torch.equal(learner.terms[1][1][n], p) for n, p in learner.anchor().items())


def test_ewc_true_fisher_draws_labels_from_the_model_by_default():
    cls = type("RecordingEWC", (Recording, EWC), {})
    learner = make(cls)
    assert learner.config["fisher"] == "true"
    finish_tasks(learner, 1)
    model = model_at(learner, learner.ends[0])
    x, y = task_data(learner, 0)
    u = torch.rand(len(x), generator=torch.Generator().set_state(learner.gen_states[0]))

    def sampled(i):
        logits = head(learner, model, 0, x[i:i + 1])[0]
        probs = torch.softmax(logits, 0).detach()
        label = min(int((probs.cumsum(0) < u[i]).sum()), len(probs) - 1)
        return -F.log_softmax(logits, 0)[label]

    want = {n: s / len(x) for n, s in per_sample_sum(model, sampled, len(x), 2).items()}
    fisher = learner.terms[0][0]
    assert_close(fisher, want)
    assert not torch.allclose(fisher["0.weight"], brute_fisher(learner, learner.ends[0], 0)
                              ["0.weight"], rtol=0.05)


def test_online_ewc_decays_one_running_fisher():
    cls = type("RecordingOnlineEWC", (Recording, OnlineEWC), {})
    learner = make(cls, fisher="empirical", online_ewc_gamma=0.5)
    finish_tasks(learner, 3)
    assert len(learner.terms) == 1
    fishers = [brute_fisher(learner, learner.ends[t], t) for t in range(3)]
    want = {n: 0.25 * fishers[0][n] + 0.5 * fishers[1][n] + fishers[2][n] for n in fishers[0]}
    assert_close(learner.terms[0][0], want)
    assert all(torch.equal(learner.terms[0][1][n], learner.ends[2][n]) for n in want)


def test_mas_sums_mean_absolute_gradients_of_the_squared_output_norm_over_tasks():
    cls = type("RecordingMAS", (Recording, MAS), {})
    learner = make(cls)
    finish_tasks(learner, 2)
    want = None
    for task in range(2):
        model = model_at(learner, learner.ends[task])
        x, _ = task_data(learner, task)
        sums = per_sample_sum(model, lambda i, m=model, t=task, x=x:
                              head(learner, m, t, x[i:i + 1]).pow(2).sum(), len(x), 1)
        omega = {n: s / len(x) for n, s in sums.items()}
        want = omega if want is None else {n: want[n] + o for n, o in omega.items()}
    assert_close(learner.terms[0][0], want)


def test_scp_slices_the_mean_output_on_random_directions():
    cls = type("RecordingSCP", (Recording, SCP), {})
    learner = make(cls, scp_projections=5)
    finish_tasks(learner, 1)
    model = model_at(learner, learner.ends[0])
    x, _ = task_data(learner, 0)
    xi = random_directions(5, 2, torch.Generator().set_state(learner.gen_states[0]))
    params = dict(model.named_parameters())
    want = {n: torch.zeros_like(p) for n, p in params.items()}
    for direction in xi:
        mean_out = head(learner, model, 0, x).mean(0)
        for n, g in zip(params, torch.autograd.grad(direction @ mean_out, list(params.values())),
                        strict=True):
            want[n] += g * g / len(xi)
    assert_close(learner.terms[0][0], want)


def test_l2_anchors_every_weight_alike_at_the_last_task():
    learner = make(L2)
    finish_tasks(learner, 2)
    (ones, anchor), = learner.terms
    assert all(torch.equal(o, torch.ones_like(o)) for o in ones.values())
    assert all(torch.equal(anchor[n], p) for n, p in learner.anchor().items())


class Trajectory:
    """Mixin: record each step's batch and the weights before and after it."""

    def training_batches(self):
        chunks = super().training_batches()
        self.steps = [*getattr(self, "steps", []), {"task": self.task, "batch": chunks[0][1:]}]
        return chunks

    def before_step(self):
        self.steps[-1]["before"] = self.anchor()
        super().before_step()

    def after_step(self):
        super().after_step()
        self.steps[-1]["after"] = self.anchor()


def task_gradient(learner, step):
    """The gradient of the task loss alone at the step's starting weights, by autograd."""
    model = model_at(learner, step["before"])
    x, y = step["batch"]
    loss = F.cross_entropy(head(learner, model, step["task"], x), y)
    return dict(zip(dict(model.named_parameters()),
                    torch.autograd.grad(loss, list(model.parameters())), strict=True))


def test_si_importance_is_the_discrete_path_integral_by_hand():
    cls = type("TrajectorySI", (Trajectory, SI), {})
    learner = make(cls, stream={"steps_per_task": 5}, si_c=100.0, si_xi=0.01)
    finish_tasks(learner, 2)                 # task 1 trains under the penalty of task 0
    xi = learner.config["si_xi"]
    omega_total = None
    for task in range(2):
        steps = [s for s in learner.steps if s["task"] == task]
        path = {n: torch.zeros_like(p) for n, p in steps[0]["before"].items()}
        for step in steps:
            grad = task_gradient(learner, step)
            for n in path:
                path[n] -= grad[n] * (step["after"][n] - step["before"][n])
        delta = {n: steps[-1]["after"][n] - steps[0]["before"][n] for n in path}
        omega = {n: torch.relu(path[n] / (delta[n] ** 2 + xi)) for n in path}
        omega_total = omega if omega_total is None else {
            n: omega_total[n] + o for n, o in omega.items()}
    assert_close(learner.terms[0][0], omega_total, rtol=1e-3)
    assert sum(o.sum() for o in omega_total.values()) > 0


def test_rwalk_importance_matches_ewcpp_and_the_kl_path_integral_by_hand():
    cls = type("TrajectoryRWalk", (Trajectory, RWalk), {})
    learner = make(cls, stream={"steps_per_task": 6}, batch_size=4, rwalk_every=4,
                   rwalk_alpha=0.7, rwalk_eps=1e-2)
    finish_tasks(learner, 2)
    alpha, eps = 0.7, 1e-2
    fisher, score = None, None
    window_fisher, window_path, window_steps, task_score = {}, {}, 0, {}
    start = learner.steps[0]["before"]
    names = list(start)

    def close_window(now):
        nonlocal fisher, window_fisher, window_path, window_steps, start
        mean = {n: window_fisher[n] / window_steps for n in names}
        fisher = mean if fisher is None else {
            n: (1 - alpha) * fisher[n] + alpha * mean[n] for n in names}
        for n in names:
            distance = 0.5 * fisher[n] * (now[n] - start[n]) ** 2 + eps
            task_score[n] = task_score.get(n, 0) + torch.relu(window_path[n] / distance)
        window_fisher, window_path, window_steps, start = {}, {}, 0, now

    for task in range(2):
        steps = [s for s in learner.steps if s["task"] == task]
        for step in steps:
            model = model_at(learner, step["before"])
            x, y = step["batch"]
            batch = per_sample_sum(model, lambda i, m=model, t=task, x=x, y=y: F.cross_entropy(
                head(learner, m, t, x[i:i + 1]), y[i:i + 1]), len(x), 2)
            grad = task_gradient(learner, step)
            for n in names:
                window_fisher[n] = window_fisher.get(n, 0) + batch[n] / len(x)
                window_path[n] = window_path.get(n, 0) - grad[n] * (
                    step["after"][n] - step["before"][n])
            window_steps += 1
            if window_steps == 4:
                close_window(step["after"])
        if window_steps:
            close_window(steps[-1]["after"])
        score = task_score if score is None else {n: (score[n] + task_score[n]) / 2
                                                  for n in names}
        task_score = {}

    def minmax(t):
        return (t - t.min()) / (t.max() - t.min() + 1e-20)

    want = {n: minmax(fisher[n]) + minmax(score[n]) for n in names}
    assert_close(learner.terms[0][0], want, rtol=1e-3)
    assert_close(learner.fisher, fisher, rtol=1e-3)


# -- the penalty -----------------------------------------------------------------------------

def test_closed_form_penalty_gradient_is_autograds():
    learner = make(EWC)
    finish_tasks(learner, 2)
    with torch.no_grad():
        for p in learner.model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    penalty = Regularized.penalty(learner)
    grads = torch.autograd.grad(penalty, list(learner.params_by_name.values()))
    assert_close(learner.penalty_grads(), dict(zip(learner.params_by_name, grads, strict=True)))


def test_ewc_penalty_is_the_sum_of_one_quadratic_per_past_task():
    learner = make(EWC)
    finish_tasks(learner, 3)
    with torch.no_grad():
        for p in learner.model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    by_hand = sum(0.5 * learner.config["ewc_lambda"] * (fisher[n] * (p - anchor[n]) ** 2).sum()
                  for fisher, anchor in learner.terms for n, p in learner.model.named_parameters())
    assert len(learner.terms) == 3
    assert float(learner.penalty().detach()) == pytest.approx(float(by_hand.detach()), rel=1e-5)


def test_path_integral_learners_train_as_with_the_autograd_penalty():
    """SI reads the task gradient, then adds the penalty's in closed form: the step is the one
    autograd would take through the penalty."""
    a = make(SI, si_c=5.0)
    finish_tasks(a, 1)
    b = make(SI, si_c=5.0)
    b.load_state_dict(a.state_dict())
    b.penalty = lambda: Regularized.penalty(b)
    b.before_step = lambda: None
    b.after_step = lambda: None
    a.train_step()
    b.train_step()
    for p, q in zip(a.model.parameters(), b.model.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-6)


@pytest.mark.parametrize("cls, extra", [(EWC, {"fisher": "empirical"}), (SI, {}), (RWalk, {})])
def test_zero_strength_trains_exactly_as_finetune(cls, extra):
    from lifelab.learners.baselines import Finetune
    plain = make(Finetune)
    learner = make(cls, **{cls.strength_key: 0.0}, **extra)
    finish_tasks(plain, 2)
    finish_tasks(learner, 2)
    assert learner.terms
    for p, q in zip(learner.model.parameters(), plain.model.parameters(), strict=True):
        assert torch.equal(p, q)


# -- the protocol and resume -----------------------------------------------------------------

@pytest.mark.parametrize("cls", LEARNERS)
def test_restored_learner_continues_bit_for_bit(cls):
    straight = make(cls, steps_per_round=5)
    assert isinstance(straight, Learner)
    for _ in range(4):                                   # task 0 done, task 1 under way
        straight.step_round()
    state = straight.state_dict()
    restored = make(cls, steps_per_round=5)
    restored.load_state_dict(state)

    def deterministic(metrics):
        return {k: v for k, v in metrics.items() if k != "importance_s"}

    while not straight.done:
        a, b = straight.step_round(), restored.step_round()
        assert deterministic(a) == deterministic(b)
        assert a["importance_s"] >= 0
    assert restored.rows == straight.rows
    assert restored.view_rows == straight.view_rows
    for a, b in zip(restored.model.parameters(), straight.model.parameters(), strict=True):
        assert torch.equal(a, b)
    assert_equal_states(restored.extra_state(), straight.extra_state())


def assert_equal_states(a, b):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_equal_states(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_equal_states(x, y)
    else:
        assert a == b


@pytest.mark.parametrize("cls", LEARNERS)
def test_loaded_state_takes_this_configs_strength(cls):
    donor = make(cls)
    finish_tasks(donor, 1)
    mutated = make(cls, **{cls.strength_key: 2 * STRENGTH[cls.strength_key]})
    mutated.load_state_dict(donor.state_dict())
    assert mutated.strength() == 2 * donor.strength()
    assert float(mutated.penalty().detach()) == pytest.approx(2 * float(donor.penalty().detach()))


# -- accuracy views --------------------------------------------------------------------------

def test_task_and_class_incremental_views():
    task = make(L2, stream={"scenario": "task"})
    finish_tasks(task, 2)
    metrics = task.round_metrics(0.0)
    assert metrics["acc_avg"] == metrics["acc_avg_til"]
    assert metrics["acc_avg_cil"] < metrics["acc_avg_til"]
    cls_ = make(L2, stream={"scenario": "class"})
    finish_tasks(cls_, 2)
    metrics = cls_.round_metrics(0.0)
    assert metrics["acc_avg"] == metrics["acc_avg_cil"]
    assert metrics["acc_avg_til"] > metrics["acc_avg_cil"]
    domain = make(L2, stream={"scenario": "domain"})
    finish_tasks(domain, 1)
    assert "acc_avg_cil" not in domain.round_metrics(0.0) and domain.view_rows == {}


def test_class_incremental_view_scores_every_head_seen():
    """A huge bias on the first unit: without task identity everything is predicted class 0."""
    learner = make(L2, stream={"scenario": "task"})
    finish_tasks(learner, 2)
    with torch.no_grad():
        learner.model[-1].bias[0] = 1e6
    evaluation = learner.evaluate(seen=2)
    x0, y0 = learner.stream.tasks[0].eval_set("test")
    assert evaluation.views["cil"][0] == pytest.approx((y0 == 0).float().mean().item())
    assert evaluation.views["cil"][1] == 0.0
    assert evaluation.views["til"][1] == evaluation.accuracies[1]


# -- config ----------------------------------------------------------------------------------

@pytest.mark.parametrize("cls, config, field", [
    (EWC, {"ewc_lambda": -1.0}, "ewc_lambda"),
    (EWC, {"ewc_lambda": "big"}, "ewc_lambda"),
    (EWC, {"fisher": "exact"}, "fisher"),
    (EWC, {"importance_samples": -1}, "importance_samples"),
    (EWC, {"si_c": 1.0}, "si_c"),
    (OnlineEWC, {"online_ewc_gamma": 1.5}, "online_ewc_gamma"),
    (OnlineEWC, {"ewc_lambda": 1.0}, "ewc_lambda"),
    (SI, {"si_xi": 0.0}, "si_xi"),
    (SI, {"si_c": math.inf}, "si_c"),
    (MAS, {"mas_lambda": -0.1}, "mas_lambda"),
    (SCP, {"scp_projections": 0}, "scp_projections"),
    (RWalk, {"rwalk_alpha": 2.0}, "rwalk_alpha"),
    (RWalk, {"rwalk_every": 0}, "rwalk_every"),
    (L2, {"lambda": 1.0}, "lambda"),
])
def test_bad_config_names_the_key(cls, config, field):
    with pytest.raises(ConfigError, match=field):
        cls.validate_config(config)


def spec(learners, config):
    return {"name": "regs", "learner": {"choice": learners},
            "stream": {"kind": "split", "tasks": 2, "steps_per_task": 5},
            "config": config, "search": {"scheduler": "fifo", "samples": 1}}


def test_a_multi_learner_spec_takes_each_methods_own_keys():
    spec_from_dict(spec(["ewc", "si", "mas"], {
        "ewc_lambda": {"loguniform": [1.0, 1.0e9]}, "si_c": {"loguniform": [0.01, 100.0]},
        "mas_lambda": {"loguniform": [0.01, 100.0]}, "fisher": "empirical",
        "lr": {"loguniform": [1.0e-4, 1.0e-2]}}))


def test_a_key_no_learner_of_the_spec_has_is_rejected():
    with pytest.raises(ConfigError, match="config.rwalk_lambda is not a config key"):
        spec_from_dict(spec(["ewc", "si"], {"rwalk_lambda": 1.0}))
    with pytest.raises(ConfigError, match="config.si_c"):          # a bad value of one's key
        spec_from_dict(spec(["ewc", "si"], {"si_c": {"uniform": [-1.0, 1.0]}}))


@pytest.mark.parametrize("preset", ["regularizers", "regularizers-pbt"])
def test_presets_validate(preset):
    loaded = load_spec(preset)
    assert {"ewc", "si", "mas", "rwalk", "scp"} <= set(loaded.learner_names())

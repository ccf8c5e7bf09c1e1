"""GroupedPBT: a trial's donors come only from its own group (e.g. the same learner)."""

import math
from types import SimpleNamespace

from lifelab.searches.schedulers import GroupedPBT


class FakeTrial:
    def __init__(self, name, learner):
        self.name, self.config = name, {"learner": learner}

    def is_finished(self):
        return False


def scheduler_with(scores: dict, group_by="learner") -> tuple[GroupedPBT, dict]:
    pbt = GroupedPBT(group_by=group_by, time_attr="training_iteration", metric="acc_avg",
                     mode="max", perturbation_interval=1, quantile_fraction=0.5,
                     hyperparam_mutations={"lr": [0.1, 0.01]})
    trials = {name: FakeTrial(name, learner) for name, (learner, _) in scores.items()}
    pbt.population = {trials[n]: SimpleNamespace(last_score=s) for n, (_, s) in scores.items()}
    return pbt, trials


SCORES = {"j1": ("joint", 0.9), "j2": ("joint", 0.8), "f1": ("finetune", 0.5),
          "f2": ("finetune", 0.4)}


def test_quantiles_are_taken_within_the_trials_group():
    pbt, _ = scheduler_with(SCORES)
    pbt._group = "finetune"
    lower, upper = pbt._quantiles()
    assert [t.name for t in lower] == ["f2"] and [t.name for t in upper] == ["f1"]
    assert pbt.population and len(pbt.population) == 4      # the population is untouched


def test_without_grouping_the_whole_population_competes():
    pbt, _ = scheduler_with(SCORES, group_by=None)
    lower, upper = pbt._quantiles()
    assert {t.name for t in lower} == {"f1", "f2"} and {t.name for t in upper} == {"j1", "j2"}


class Exploits(GroupedPBT):
    """Records the exploits PBT decides on instead of carrying them out."""

    def exploit(self, tune_controller, trial, trial_to_clone):
        self.exploited.append((trial.name, trial_to_clone.name))


def test_every_diverged_member_goes_to_a_healthy_donor_at_its_perturbation():
    # three diverged members (the worst score there is) and a quantile of one place
    scores = {"h1": ("joint", 0.9), "h2": ("joint", 0.8), "d1": ("joint", -math.inf),
              "d2": ("joint", -math.inf), "d3": ("joint", -math.inf)}
    pbt = Exploits(group_by="learner", time_attr="training_iteration", metric="acc_avg",
                   mode="max", perturbation_interval=1, quantile_fraction=0.2,
                   hyperparam_mutations={"lr": [0.1, 0.01]})
    trials = {name: FakeTrial(name, learner) for name, (learner, _) in scores.items()}
    pbt.population = {trials[n]: SimpleNamespace(last_score=s, last_checkpoint="ckpt")
                      for n, (_, s) in scores.items()}
    pbt.exploited = []
    lower, upper = pbt.quantiles()
    assert len(lower) == 1 and [t.name for t in upper] == ["h1"]
    for name in ("d1", "d2", "d3"):
        pbt.checkpoint_or_exploit(trials[name], None, upper, lower)
    assert pbt.exploited == [("d1", "h1"), ("d2", "h1"), ("d3", "h1")]


def test_a_diverged_member_is_never_a_donor():
    scores = {"h1": ("joint", 0.9), "h2": ("joint", 0.8), "d1": ("joint", -math.inf),
              "d2": ("joint", -math.inf)}
    pbt = Exploits(group_by=None, time_attr="training_iteration", metric="acc_avg",
                   mode="max", perturbation_interval=1, quantile_fraction=0.5,
                   hyperparam_mutations={"lr": [0.1, 0.01]})
    trials = {name: FakeTrial(name, learner) for name, (learner, _) in scores.items()}
    pbt.population = {trials[n]: SimpleNamespace(last_score=s, last_checkpoint="ckpt")
                      for n, (_, s) in scores.items()}
    pbt.exploited = []
    # e.g. a stale upper quantile holding a diverged member: the donor is the healthy one
    for _ in range(20):                       # PBT picks the donor at random among the upper
        pbt.checkpoint_or_exploit(trials["d2"], None, [trials["h1"], trials["d1"]],
                                  [trials["d2"]])
    assert set(pbt.exploited) == {("d2", "h1")}

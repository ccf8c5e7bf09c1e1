"""Schedulers and searchers from a spec's `search` settings, using Ray Tune's own."""

from __future__ import annotations

import math

import numpy as np
from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining
from ray.tune.schedulers.pb2 import PB2
from ray.tune.search import BasicVariantGenerator
from ray.tune.search.optuna import OptunaSearch

from lifelab.platform.config import SweepSpec
from lifelab.searches.ray_internals import (
    PBTHooks,
    latest_checkpoint_result,
    pb2_data,
    set_pb2_data,
)
from lifelab.searches.space import learner_keys, learner_mutations, mutations


class _GroupedExploit:
    """Exploit picks donors only among trials of the same group (config[group_by]).

    With several learners in one sweep, a plain PBT turns every trial into the best learner;
    grouping lets each learner's population evolve on its own while sharing the cluster.
    """

    def __init__(self, group_by: str | None, **kwargs):
        super().__init__(**kwargs)
        self._group_by = group_by
        self._group = None
        self._results = 0
        self._reported: dict[str, int] = {}      # trial id -> when it last reported

    def on_trial_result(self, tune_controller, trial, result):
        self._results += 1
        self._reported[trial.trial_id] = self._results
        self._group = trial.config.get(self._group_by) if self._group_by else None
        try:
            return super().on_trial_result(tune_controller, trial, result)
        finally:
            self._group = None
            if self.synch:
                self._keep_next_sync_reachable(tune_controller)

    # -- resume and fairness -------------------------------------------------------------------
    # Tune keeps no scheduler state across a restore: every restored trial comes back with a
    # fresh PBT state (trained to 0, last perturbed at 0), and a requeued (failed) trial too.

    def on_trial_add(self, tune_controller, trial):
        super().on_trial_add(tune_controller, trial)
        restored = _checkpoint_iteration(trial)
        if restored:
            # perturb every interval from where the trial continues, as before the crash
            self.population[trial].last_perturbation_time = restored
            if self.synch:
                self.next_sync = max(self.next_sync, restored + self.interval)

    def _keep_next_sync_reachable(self, tune_controller) -> None:
        """Synch PBT runs only trials short of the next sync point, which it sets to at least
        the furthest trial's time. With the sync point of a fresh PBT (1 interval) after a
        restore, a population in step sets it to exactly where every trial already is: then no
        trial may run and all wait PAUSED forever. Move it one interval past the laggard."""
        times = [self.population[t].last_train_time for t in tune_controller.get_live_trials()
                 if t in self.population and not t.is_finished()]
        if times and min(times) >= self.next_sync:
            self.next_sync = min(times) + self.interval

    def choose_trial_to_run(self, tune_controller):
        """PBT runs the waiting trial that trained least; among equals Tune takes the first in
        its list. An exploited trial inherits its donor's time, so with more trials than slots
        the same few trials ran, fell to the lower quantile after a dip of the metric (e.g. a
        new task), were sent back to the donors' checkpoint and ran again, forever: the donors
        never ran, their stale scores stayed on top. Among equals, the one that reported
        longest ago goes first."""
        candidates = [t for t in tune_controller.get_trials()
                      if t.status in (Trial.PENDING, Trial.PAUSED) and t in self.population
                      and (not self.synch or self.population[t].last_train_time
                           < self.next_sync)]
        if not candidates:
            return None
        return min(candidates, key=lambda t: (self.population[t].last_train_time,
                                              self._reported.get(t.trial_id, 0)))

    def quantiles(self):
        if self._group_by is None:
            return super().quantiles()
        # synch PBT perturbs the whole population at once: every group's quantiles, not only
        # those of the group whose trial reported last
        groups = ([self._group] if self._group is not None and not self.synch else
                  list(dict.fromkeys(t.config.get(self._group_by) for t in self.population)))
        lower, upper = [], []
        everyone = self.population
        try:
            for group in groups:
                self.population = {t: s for t, s in everyone.items()
                                   if t.config.get(self._group_by) == group}
                low, high = super().quantiles()
                lower, upper = lower + low, upper + high
        finally:
            self.population = everyone
        return lower, upper

    def checkpoint_or_exploit(self, trial, tune_controller, upper_quantile, lower_quantile):
        if self._group_by is not None:           # donors only from the trial's own group
            group = trial.config.get(self._group_by)
            upper_quantile = [t for t in upper_quantile if t.config.get(self._group_by) == group]
            lower_quantile = [t for t in lower_quantile if t.config.get(self._group_by) == group]
        # a diverged member (the worst score there is: see trainable.py) is never a donor, and
        # goes to one at each of its perturbations, also when other diverged members took the
        # lower quantile's places
        healthy = [t for t in upper_quantile if not self._diverged(t)]
        if healthy:
            upper_quantile = healthy
            if self._diverged(trial) and trial not in lower_quantile:
                lower_quantile = [*lower_quantile, trial]
        return super().checkpoint_or_exploit(trial, tune_controller, upper_quantile,
                                             lower_quantile)

    def _diverged(self, trial) -> bool:
        return self.population[trial].last_score == -math.inf

    # Each learner's population mutates only the keys its learner has: a sweep over several
    # learners gives every trial every learner's keys, which the others' mutations must not touch.

    def exploit(self, tune_controller, trial, trial_to_clone):
        # the new config is the donor's, explored: the donor's learner decides
        everyone = self.mutations
        self.mutations = learner_mutations(everyone, trial_to_clone.config)
        try:
            return super().exploit(tune_controller, trial, trial_to_clone)
        finally:
            self.mutations = everyone

    def new_config(self, trial, trial_to_clone):
        new_config, operations = super().new_config(trial, trial_to_clone)
        # PB2 explores every bounded key: another learner's keys keep the donor's values
        donor = trial_to_clone.config
        keys = learner_keys(donor.get("learner"))
        for key in [k for k in new_config if keys is not None and k not in keys and k in donor]:
            if new_config[key] != donor[key]:
                new_config[key] = donor[key]
                operations.pop(key, None)
        return new_config, operations


def _checkpoint_iteration(trial) -> int:
    """The training iteration of the checkpoint a trial continues from (0: none)."""
    metrics = getattr(latest_checkpoint_result(trial), "metrics", None) or {}
    return int(metrics.get("training_iteration", 0) or 0)


class GroupedPBT(_GroupedExploit, PBTHooks, PopulationBasedTraining):
    """PBT with per-group exploitation."""

    def on_trial_add(self, tune_controller, trial):
        # PBT samples each mutated key a trial's config lacks: only its own learner's keys
        everyone = self.mutations
        self.mutations = learner_mutations(everyone, trial.config)
        try:
            return super().on_trial_add(tune_controller, trial)
        finally:
            self.mutations = everyone


class GroupedPB2(_GroupedExploit, PBTHooks, PB2):
    """PB2 (a GP-bandit explore over continuous bounds) with per-group exploitation."""

    def save_trial_state(self, state, time, result, trial):
        score = super().save_trial_state(state, time, result, trial)
        # a diverged member reports the worst value (an infinite one) to be exploited: it says
        # nothing about its hyperparameters, and one infinite reward would break the GP's fit
        data = pb2_data(self)
        finite = np.isfinite(data["Reward"].astype(float))
        if not finite.all():
            set_pb2_data(self, data[finite].reset_index(drop=True))
        return score


def build_scheduler(spec: SweepSpec):
    search = spec.search
    if search.scheduler == "pbt":
        return GroupedPBT(group_by=search.group_by, time_attr="training_iteration",
                          perturbation_interval=search.perturbation_interval,
                          hyperparam_mutations=mutations(spec),
                          quantile_fraction=search.quantile_fraction,
                          resample_probability=search.resample_probability, synch=search.synch)
    if search.scheduler == "pb2":
        bounds = {key: list(value["uniform"]) for key, value in search.mutations.items()}
        return GroupedPB2(group_by=search.group_by, time_attr="training_iteration",
                          perturbation_interval=search.perturbation_interval,
                          hyperparam_bounds=bounds, quantile_fraction=search.quantile_fraction,
                          synch=search.synch)
    if search.scheduler == "asha":
        return ASHAScheduler(time_attr="training_iteration", max_t=spec.stop["rounds"],
                             grace_period=search.grace_period,
                             reduction_factor=search.reduction_factor)
    return FIFOScheduler()


def build_searcher(spec: SweepSpec):
    if spec.search.searcher == "optuna":
        return OptunaSearch(seed=spec.seeds()[0])
    return BasicVariantGenerator(random_state=spec.seeds()[0])

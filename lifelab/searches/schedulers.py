"""Schedulers and searchers from a spec's `search` settings, using Ray Tune's own."""

from __future__ import annotations

from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining
from ray.tune.schedulers.pb2 import PB2
from ray.tune.search import BasicVariantGenerator
from ray.tune.search.optuna import OptunaSearch

from lifelab.platform.config import SweepSpec
from lifelab.searches.space import mutations


class _GroupedExploit:
    """Exploit picks donors only among trials of the same group (config[group_by]).

    With several learners in one sweep, a plain PBT turns every trial into the best learner;
    grouping lets each learner's population evolve on its own while sharing the cluster.
    """

    def __init__(self, group_by: str | None, **kwargs):
        super().__init__(**kwargs)
        self._group_by = group_by
        self._group = None

    def on_trial_result(self, tune_controller, trial, result):
        self._group = trial.config.get(self._group_by) if self._group_by else None
        try:
            return super().on_trial_result(tune_controller, trial, result)
        finally:
            self._group = None

    def _quantiles(self):
        if self._group is None:
            return super()._quantiles()
        everyone = self._trial_state
        self._trial_state = {t: s for t, s in everyone.items()
                             if t.config.get(self._group_by) == self._group}
        try:
            return super()._quantiles()
        finally:
            self._trial_state = everyone


class GroupedPBT(_GroupedExploit, PopulationBasedTraining):
    """PBT with per-group exploitation."""


class GroupedPB2(_GroupedExploit, PB2):
    """PB2 (a GP-bandit explore over continuous bounds) with per-group exploitation."""


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
        return OptunaSearch(seed=spec.seed)
    return BasicVariantGenerator(random_state=spec.seed)

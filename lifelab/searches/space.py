"""Spec distributions -> Ray Tune search-space objects."""

from __future__ import annotations

from typing import Any

from ray import tune

from lifelab.analysis.selection import learner_keys
from lifelab.platform.config import SweepSpec, is_distribution


def to_tune(value: Any) -> Any:
    """{choice|grid|uniform|loguniform|randint: args} -> a Tune domain; else a constant."""
    if not is_distribution(value):
        return value
    kind, args = next(iter(value.items()))
    if kind == "grid":
        return tune.grid_search(list(args))
    if kind == "choice":
        return tune.choice(list(args))
    return getattr(tune, kind)(*args)


def param_space(spec: SweepSpec) -> dict:
    """The trial config: the learner's config plus `learner`, `stream` and the sweep's seed.
    With searcher grid, every choice is enumerated too."""
    enumerate_choices = spec.search.searcher == "grid"

    def convert(value: Any) -> Any:
        if enumerate_choices and is_distribution(value) and "choice" in value:
            value = {"grid": value["choice"]}
        return to_tune(value)

    space = {key: convert(value) for key, value in spec.config.items()}
    # under protocol first_tasks the search runs on the tuning stream (spec.search_stream)
    stream = {key: convert(value) for key, value in spec.search_stream().items()}
    space.update(learner=convert(spec.learner), stream=stream, seed=convert(spec.seed))
    if is_distribution(spec.seed):     # each trial runs under the seed it drew, as given
        space["lifelab_seed_searched"] = True
    if spec.schedule:                  # a PBT schedule to replay (an evaluation sweep)
        space["lifelab_schedule"] = spec.schedule
    if spec.search.scheduler in RESCUING:
        space["lifelab_rescue"] = rescue(spec)
    return space


# Schedulers that send a diverged trial to a healthy donor's checkpoint: under them the trainable
# keeps a diverged trial running, reporting the worst value of the metric, instead of stopping it.
RESCUING = ("pbt", "pb2")


def rescue(spec: SweepSpec) -> dict:
    """What a diverged trial needs to be rescued: the metric to report the worst value of, its
    mode, and how many rounds to wait before it stops (PBT perturbs it within an interval, but
    only once a donor has reached a perturbation of its own and saved a checkpoint there)."""
    search = spec.search
    return {"metric": search.metric, "mode": search.mode,
            "patience": 4 * int(search.perturbation_interval) + 1,
            "last_round": spec.stop.get("rounds")}     # Tune ends every trial there


def mutations(spec: SweepSpec) -> dict:
    """PBT's hyperparam_mutations: a list is an ordered ladder (PBT steps to a neighbour or
    resamples); a distribution is resampled or scaled by 0.8/1.2."""
    return {key: value if isinstance(value, list) else to_tune(value)
            for key, value in spec.search.mutations.items()}


def learner_mutations(mutations: dict, config: dict) -> dict:
    """The mutations a trial can take: those of keys its learner (`config["learner"]`) has,
    since a sweep over several learners gives every trial every learner's keys; all of them
    when the learner's class cannot be resolved."""
    keys = learner_keys(config.get("learner"))
    return dict(mutations) if keys is None else {k: v for k, v in mutations.items() if k in keys}

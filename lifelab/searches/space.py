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
    return space


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

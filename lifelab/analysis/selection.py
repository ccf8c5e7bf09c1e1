"""What a sweep selected on, what it reports, and which config keys are a trial's own.

Continual learners report every accuracy metric twice (lifelab.learners.base): `<name>` scored on
the test split and `val_<name>` on the validation split, which no learner trains on. A search
selects on its `search.metric` (by default `val_acc_avg`); every number shown is ranked by that
metric, with its test twin beside it, so nothing reported is chosen on the data it reports.

A continual-learning metric accumulates over the stream: what counts is its value at the end of
the stream (for a running trial, at the last round it reported). Its maximum over rounds would be
the accuracy after the first task, which says nothing about continual learning.
"""

from __future__ import annotations

from collections.abc import Iterable

VAL = "val_"
#: metrics computed from a trial's accuracy matrix (each with a `val_` twin)
CL_METRICS = ("acc_avg", "acc_avg_til", "acc_avg_cil", "bwt", "fwt", "forgetting")


def base_name(metric: str) -> str:
    return metric[len(VAL):] if metric.startswith(VAL) else metric


def is_cl_metric(metric: str, names: Iterable[str] = ()) -> bool:
    """A metric over the stream so far (its end-of-stream value counts, not its best round): one
    of CL_METRICS or their `val_` twins, or any metric recorded with a `val_` twin."""
    base = base_name(metric)
    names = set(names)
    return base in CL_METRICS or (base in names and VAL + base in names)


def test_metric(metric: str, names: Iterable[str] = ()) -> str | None:
    """The test twin of a continual-learning metric (acc_avg for val_acc_avg, the metric itself
    for a test metric); None for a metric without twins (e.g. train_loss)."""
    return base_name(metric) if is_cl_metric(metric, names) else None


def twin(metric: str, names: Iterable[str] = ()) -> str | None:
    """The same metric on the other split (val_acc_avg <-> acc_avg); None without twins."""
    if not is_cl_metric(metric, names):
        return None
    return base_name(metric) if metric.startswith(VAL) else VAL + metric


def selected_on_test(spec: dict, names: Iterable[str] = ()) -> str | None:
    """Why a sweep's selection used test data (None when it did not): `search.select_on_test`,
    or a test metric from a spec that predates validation splits."""
    search = spec.get("search") or {}
    metric = str(search.get("metric") or "")
    if search.get("select_on_test"):
        return f"search.select_on_test is true: trials were ranked on the test metric {metric}"
    if metric and test_metric(metric, names) == metric:
        return f"search.metric {metric} is scored on test data"
    return None


def learner_keys(name: str) -> frozenset[str] | None:
    """The config keys learner `name` has (its class's `params`); None when its class cannot be
    resolved here (its package is not installed), and then every key counts as its own. A sweep
    over several learners gives every trial every learner's keys; each learner uses its own."""
    try:
        from lifelab.trainables.registry import learner_class

        return frozenset(learner_class(str(name)).params)
    except Exception:       # an unknown or broken learner only loses the filtering
        return None


def foreign_keys(learners: Iterable[str]) -> dict[str, frozenset[str]]:
    """{learner: the keys of the other learners that it lacks} for the learners of one sweep
    (empty for a single learner, and for a learner whose class is unknown)."""
    learners = sorted({str(n) for n in learners})
    if len(learners) < 2:
        return {n: frozenset() for n in learners}
    keys = {n: learner_keys(n) for n in learners}
    everyone = frozenset().union(*(k for k in keys.values() if k is not None))
    return {n: everyone - k if k is not None else frozenset() for n, k in keys.items()}

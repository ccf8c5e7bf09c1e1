"""The live progress display of `lifelab sweep` and `lifelab resume`.

Every `interval_s` seconds (and once at the end) it prints one table of the population, best
first by the spec's metric: each trial's learner, status and round, the metric and its twin on the
other split (the test `acc_avg` beside the selection metric `val_acc_avg`), and the current value
of every searched or mutated parameter the trial's learner has ("-" for another learner's key),
which changes as PBT exploits and explores. It replaces Tune's own table, which shows only
parameters sampled at the start, not what PBT mutates.

A continual-learning metric shows its last reported value: its value at the end of the stream once
the trial finished (its best round would be the first task's accuracy, which says nothing). Any
other metric (one without a `val_` twin, e.g. a learner's own loss ratio, a fresh evaluation of
the current state each round, each round checkpointed) also shows its best so far, and ranks by it.
A big population shows its best SHOWN_TRIALS. Below the table: the rounds done of the sweep's
total with the time left at the pace so far, and how many checkpoints (and MB) the sweep keeps on
storage with the driver's peak memory.
"""

from __future__ import annotations

import math
import resource
import time

import pandas as pd
from ray import tune

from lifelab.analysis.selection import foreign_keys, is_cl_metric, twin
from lifelab.platform.config import SweepSpec, is_distribution

DEFAULT_INTERVAL_S = 10.0
SHOWN_TRIALS = 25


def searched_keys(spec: SweepSpec) -> list[str]:
    """Config keys that differ between trials: sampled ones, then those only mutations move."""
    keys = ["learner"] if is_distribution(spec.learner) else []
    keys += [key for key, value in spec.config.items() if is_distribution(value)]
    return keys + [key for key in spec.search.mutations if key not in keys]


def show(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return "x".join(map(show, value))
    return str(value)


class ProgressCallback(tune.Callback):
    def __init__(self, spec: SweepSpec, interval_s: float = DEFAULT_INTERVAL_S,
                 storage=None):
        self.name = spec.name
        self.storage = storage       # has summary(): what the sweep keeps on storage
        self.rounds, self.samples = spec.stop.get("rounds"), spec.search.samples
        self.first_seen: tuple[float, int] | None = None      # (time, rounds done) then
        self.metric, self.mode = spec.search.metric, spec.search.mode
        self.twin = twin(self.metric)        # None: no twin, or one recognised from results
        self.cl = is_cl_metric(self.metric)
        self.keys = searched_keys(spec)
        # a key of another learner is carried by every trial of a multi-learner sweep, unused
        self.foreign = foreign_keys(spec.learner_names()) if "learner" in self.keys else {}
        self.interval_s = interval_s
        self.best: dict[str, float] = {}
        self.last: dict[str, float] = {}
        self.twin_last: dict[str, float] = {}
        self._printed_at = time.monotonic()

    def __getstate__(self) -> dict:
        # pickled with the experiment; a resumed sweep fills these from the trials' new results
        return {**self.__dict__, "best": {}, "last": {}, "twin_last": {}, "storage": None,
                "first_seen": None}

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        if not self.cl and twin(self.metric, result):       # e.g. a learner's own metric
            self.cl, self.twin = True, twin(self.metric, result)
        other = result.get(self.twin) if self.twin else None
        if _finite(other):
            self.twin_last[trial.trial_id] = other
        value = result.get(self.metric)
        if not _finite(value):
            if isinstance(value, float) and math.isinf(value):   # diverged, awaiting rescue
                self.last.pop(trial.trial_id, None)
            return
        self.last[trial.trial_id] = value
        best = self.best.get(trial.trial_id)
        if best is None or (value > best if self.mode == "max" else value < best):
            self.best[trial.trial_id] = value

    def on_step_end(self, iteration, trials, **info) -> None:
        if time.monotonic() - self._printed_at >= self.interval_s:
            print(self.table(trials), flush=True)
            self._printed_at = time.monotonic()

    def on_experiment_end(self, trials, **info) -> None:
        print(self.table(trials), flush=True)

    def table(self, trials) -> str:
        # a CL metric ranks by its value at the end of the stream (the last reported), any
        # other by its best so far
        rank = self.metric if self.cl else f"best {self.metric}"
        rows = [{"trial": t.trial_id, "status": status(t),
                 "round": (t.last_result or {}).get("training_iteration", 0),
                 self.metric: self.last.get(t.trial_id, math.nan),
                 **({self.twin: self.twin_last.get(t.trial_id, math.nan)} if self.cl else
                    {rank: self.best.get(t.trial_id, math.nan)}),
                 **{key: self._shown(t.config, key) for key in self.keys}}
                for t in trials]
        if not rows:
            return f"{self.name}: no trial yet"
        frame = pd.DataFrame(rows).sort_values(rank, ascending=self.mode == "min",
                                               na_position="last", kind="stable")
        if self.cl and not self.twin_last:          # e.g. no validation split: no twin
            frame = frame.drop(columns=[self.twin])
        counts = frame["status"].value_counts()
        beside = f", {self.twin} beside it" if self.cl and self.twin_last else ""
        head = (f"{self.name}: {len(frame)} trials ("
                + ", ".join(f"{n} {status.lower()}" for status, n in counts.items())
                + f"), {self.metric} ({self.mode}){beside} at {time.strftime('%H:%M:%S')}")
        more = len(frame) - SHOWN_TRIALS
        body = frame.head(SHOWN_TRIALS).to_string(index=False, na_rep="-",
                                                  float_format=lambda v: f"{v:.4f}")
        if more > 0:
            body += f"\n... and {more} more trials (lifelab status SWEEP_DIR lists them all)"
        pace = self.pace(int(frame["round"].sum()), len(frame))
        return "\n".join(["", head, body, pace, self.footprint()])

    def pace(self, done: int, trials: int) -> str:
        """One line: rounds done of the sweep's total, and at this pace the time left."""
        if not self.rounds:               # until every learner is done: no total known
            return f"rounds {done} done"
        total = max(trials, self.samples) * self.rounds
        now = time.monotonic()
        if self.first_seen is None:
            self.first_seen = (now, done)
        since, done_then = self.first_seen
        line = f"rounds {done}/{total} ({100 * done / total:.0f}%)"
        if done > done_then and done < total:
            left = (now - since) / (done - done_then) * (total - done)
            line += f", about {_duration(left)} left"
        return line

    def footprint(self) -> str:
        """One line: what the sweep keeps on storage, and the driver's memory."""
        kept = f"{self.storage.summary()}; " if self.storage is not None else ""
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10   # KB on Linux
        return f"{kept}driver memory peak {peak:.0f} MB"

    def _shown(self, config: dict, key: str) -> str:
        if key in self.foreign.get(str(config.get("learner")), ()):
            return "-"
        return show(config.get(key, "-"))


def status(trial) -> str:
    """Tune's status, DIVERGED for a trial it ended because its loss diverged (its last
    result says why: Tune keeps it across a resume)."""
    if trial.status == "TERMINATED" and "lifelab_stop" in (trial.last_result or {}):
        return "DIVERGED"
    return trial.status


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) \
        and math.isfinite(value)

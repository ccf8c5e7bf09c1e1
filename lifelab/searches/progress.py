"""The live progress display of `lifelab sweep` and `lifelab resume`.

Every `interval_s` seconds (and once at the end) it prints one table of the population: each
trial's learner, status and round, the spec's metric (last and best so far) and the current value
of every searched or mutated parameter, which changes as PBT exploits and explores. It replaces
Tune's own table, which shows only parameters sampled at the start, not what PBT mutates.
"""

from __future__ import annotations

import math
import time

import pandas as pd
from ray import tune

from lifelab.platform.config import SweepSpec, is_distribution

DEFAULT_INTERVAL_S = 10.0


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
    def __init__(self, spec: SweepSpec, interval_s: float = DEFAULT_INTERVAL_S):
        self.name = spec.name
        self.metric, self.mode = spec.search.metric, spec.search.mode
        self.keys = searched_keys(spec)
        self.interval_s = interval_s
        self.best: dict[str, float] = {}
        self.last: dict[str, float] = {}
        self._printed_at = time.monotonic()

    def __getstate__(self) -> dict:
        # pickled with the experiment; a resumed sweep fills these from the trials' new results
        return {**self.__dict__, "best": {}, "last": {}}

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        value = result.get(self.metric)
        if not isinstance(value, (int, float)) or not math.isfinite(value):
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
        rows = [{"trial": t.trial_id, "status": t.status,
                 "round": (t.last_result or {}).get("training_iteration", 0),
                 self.metric: self.last.get(t.trial_id, math.nan),
                 f"best {self.metric}": self.best.get(t.trial_id, math.nan),
                 **{key: show(t.config.get(key, "-")) for key in self.keys}}
                for t in trials]
        if not rows:
            return f"{self.name}: no trial yet"
        frame = pd.DataFrame(rows).sort_values(f"best {self.metric}",
                                               ascending=self.mode == "min", na_position="last")
        counts = frame["status"].value_counts()
        head = (f"{self.name}: {len(frame)} trials ("
                + ", ".join(f"{n} {status.lower()}" for status, n in counts.items())
                + f"), {self.metric} ({self.mode}) at {time.strftime('%H:%M:%S')}")
        body = frame.to_string(index=False, na_rep="-", float_format=lambda v: f"{v:.4f}")
        return f"\n{head}\n{body}"

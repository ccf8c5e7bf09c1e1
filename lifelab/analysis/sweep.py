"""A sweep's tables with the analysis at hand: `lifelab.analysis.load` returns a `Sweep`.

`tables.SweepTables` is the data alone, at the bottom of the chain tables -> lineage ->
summaries -> plots -> report; `Sweep` adds shortcuts to the functions of that chain, here at its
top, so that no module imports one above it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import pandas as pd

import lifelab.analysis.lineage as lin
import lifelab.analysis.summaries as summ
from lifelab.analysis.tables import SweepTables
from lifelab.analysis.tables import load as load_tables

Reference = str | Sequence | Mapping | None


class Sweep(SweepTables):
    """The tables of one or more sweeps, with their analysis as methods."""

    def matrix(self, trial_id: str, sweep: str | None = None, lineage: bool = True,
               split: str = "test") -> pd.DataFrame:
        """A trial's accuracy matrix, rebuilt through its PBT ancestry (`lineage`)."""
        return lin.accuracy_matrix(self, trial_id, sweep=sweep, lineage=lineage, split=split)

    def summary(self, reference: Reference = "joint", baseline: Sequence | Mapping | None = None,
                lineage: bool = True, by_sweep: bool = False) -> pd.DataFrame:
        """One row per trial: its continual-learning summary (`summaries.trial_summary`)."""
        return summ.trial_summary(self, reference=reference, baseline=baseline,
                                  lineage=lineage, by_sweep=by_sweep)

    def groups(self, reference: Reference = "joint", baseline: Sequence | Mapping | None = None,
               lineage: bool = True, by_sweep: bool = False) -> pd.DataFrame:
        """Mean and SEM of each summary metric over each group's independent runs (a PBT
        population counts once: `summaries.group_summary`)."""
        return summ.group_summary(self, reference=reference, baseline=baseline,
                                  lineage=lineage, by_sweep=by_sweep)

    def leaderboard(self, reference: Reference = "joint",
                    baseline: Sequence | Mapping | None = None, lineage: bool = True,
                    by_sweep: bool = False) -> pd.DataFrame:
        """Every trial's summary, best first by the sweep's metric (`summaries.leaderboard`)."""
        return summ.leaderboard(self, reference=reference, baseline=baseline, lineage=lineage,
                                by_sweep=by_sweep)

    def ancestry(self, trial_id: str, sweep: str | None = None) -> pd.DataFrame:
        """Which trial trained which iterations of a trial's final state."""
        return lin.ancestry(self, trial_id, sweep=sweep)

    def schedules(self, inherited: bool = False, keys: list[str] | None = None
                  ) -> pd.DataFrame:
        """Each trial's hyperparameters at every iteration it reported (`lineage.schedules`)."""
        return lin.schedules(self, inherited=inherited, keys=keys)

    def family_tree(self) -> pd.DataFrame:
        """Every exploit: donor -> trial, iteration, what changed."""
        return lin.family_tree(self)


def load(sweeps: str | Sequence[str], *, labels: Sequence[str] | None = None,
         metric_names: Sequence[str] | None = None) -> Sweep:
    """Every table of one sweep dir / URI, or of several (see `tables.load`), as a `Sweep`."""
    tables = load_tables(sweeps, labels=labels, metric_names=metric_names)
    return Sweep(**{f.name: getattr(tables, f.name) for f in dataclasses.fields(tables)})

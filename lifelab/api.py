"""The Python API, for notebooks and scripts: the same specs, checks and results as the CLI.

    import lifelab
    tables = lifelab.sweep({"name": "try", "learner": "ewc", "stream": {...}, ...},
                           storage="sweeps", progress=0)
    tables.leaderboard()
    lifelab.resume("sweeps/try"); lifelab.load("sweeps/try")
    lifelab.evaluate("sweeps/try", seeds=3)     # the selection re-run on fresh seeds
    lifelab.compare_searches("spec.yaml", budget=40, searches="random,pbt")   # equal compute
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from lifelab.errors import LifelabError

if TYPE_CHECKING:
    import pandas as pd

    from lifelab.analysis.sweep import Sweep as SweepTables

#: seconds between progress tables by default
DEFAULT_PROGRESS_S = 10.0


def sweep(spec: dict | str | os.PathLike, *, name: str | None = None,
          storage: str | None = None, address: str | None = None, samples: int | None = None,
          progress: float = DEFAULT_PROGRESS_S, verbose: bool = False) -> SweepTables:
    """Run a sweep to the end and return its tables (what `load` returns).

    spec      a spec as a dict, a preset name or the path of a YAML spec
    name      the sweep's name (default: the spec's); the sweep lives at <storage>/<name>
    storage   a path or s3:// / gs:// URI (default $LIFELAB_STORAGE, else ./lifelab-sweeps)
    address   a Ray cluster (default $RAY_ADDRESS, else an embedded local Ray)
    samples   overrides search.samples
    progress  seconds between progress tables; 0 prints nothing
    verbose   also show Ray Tune's own output
    Raises a LifelabError for a bad spec (before Ray starts) and, after the sweep, one naming
    the trials that errored (their rows are in the tables all the same).
    """
    from lifelab.searches.launch import run_sweep

    resolved = _resolve(spec, name, samples)
    sweep_uri, results = run_sweep(resolved, storage=storage, address=address,
                                   progress_s=progress, verbose=verbose)
    tables = _tables_or_error(sweep_uri, results)
    if resolved.final:                 # the spec asks for the independent-seed evaluation too
        evaluate(sweep_uri, seeds=resolved.final["seeds"], address=address, progress=progress)
    return tables


def _resolve(spec: dict | str | os.PathLike, name: str | None, samples: int | None):
    from lifelab.searches.spec import load_spec, spec_from_dict

    if isinstance(spec, dict):
        data = {**spec, **({"name": name} if name is not None else {})}
        if samples is not None:
            data["search"] = {**(data.get("search") or {}), "samples": samples}
        return spec_from_dict(data)
    if isinstance(spec, (str, os.PathLike)):
        return load_spec(str(Path(spec)) if isinstance(spec, os.PathLike) else spec,
                         name=name, samples=samples)
    raise LifelabError(f"spec must be a dict, a preset name or a YAML path, got "
                       f"{type(spec).__name__}")


def compare_searches(spec: dict | str | os.PathLike, *, budget: int, repeats: int = 3,
                     searches: str | list[str] = "random,asha,pbt", name: str | None = None,
                     storage: str | None = None, address: str | None = None,
                     progress: float = 0.0) -> pd.DataFrame:
    """Search strategies on one spec at equal compute (`lifelab compare-searches`): each of
    `searches` (default, random, asha, optuna, pbt, pbt-arch, pb2) run `repeats` times, each
    time its own seed, with `budget` trial-rounds; selected on the spec's validation metric.
    The sweeps, report.html, figures/searches.png and searches.csv go to
    <storage>/<name>-searches. Returns the table: per search, the selected results'
    validation and test metric as mean and SEM over the repetitions, and the compute spent."""
    from lifelab.searches.compare import parse_searches, run_comparison, write_outputs

    resolved = _resolve(spec, name, None)
    root, outcomes = run_comparison(resolved, parse_searches(searches), budget, repeats,
                                    storage=storage, address=address, progress_s=progress)
    return write_outputs(root, outcomes, budget, resolved)[2]


def resume(sweep_dir: str | os.PathLike, *, address: str | None = None) -> SweepTables:
    """Continue an interrupted sweep from its trials' last checkpoints; its tables at the end."""
    from lifelab.searches.launch import resume_sweep

    sweep_uri, results = resume_sweep(os.fspath(sweep_dir), address=address)
    return _tables_or_error(sweep_uri, results)


def evaluate(sweep_dir: str | os.PathLike, *, seeds: int = 3, name: str | None = None,
             address: str | None = None, progress: float = DEFAULT_PROGRESS_S) -> SweepTables:
    """Re-run what a finished search selected (its best trial by the validation metric; for
    PBT, that trial's hyperparameter schedule) from scratch on `seeds` fresh seeds, as the sweep
    `<search>-eval` next to it; its tables (test metrics over independent runs)."""
    from lifelab.searches.evaluate import run_evaluation
    from lifelab.searches.launch import storage_uri

    sweep_uri, results = run_evaluation(storage_uri(os.fspath(sweep_dir)), seeds, name=name,
                                        address=address, progress_s=progress)
    return _tables_or_error(sweep_uri, results)


def load(sweep_dir: str | os.PathLike) -> SweepTables:
    """The tables of a sweep (also while it runs): trials, metrics, accuracy, events."""
    from lifelab.analysis.sweep import load as load_tables

    return load_tables(os.fspath(sweep_dir))


def failed_trials(results) -> list[str]:
    """The ids of the trials of a Tune ResultGrid that ended in an error."""
    return [str(r.metrics.get("trial_id") or Path(r.path).name) for r in results if r.error]


def _tables_or_error(sweep_uri: str, results) -> SweepTables:
    failed = failed_trials(results)
    if failed:
        raise LifelabError(f"{len(failed)} of {len(results)} trials errored "
                           f"({', '.join(failed)}): see `lifelab status {sweep_uri}`; "
                           f"continue them with `lifelab resume {sweep_uri}`")
    return load(sweep_uri)

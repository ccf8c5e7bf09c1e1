"""Searches compared at equal compute: one learner spec, several search strategies, each run as
independent repetitions with the same budget of trial-rounds (trials x rounds).

Per strategy the spec's `search` is replaced (everything else stays the user's):

  default    the spec's own search settings
  random     random search (FIFO): every trial runs all rounds
  asha       random search with ASHA stopping: its *maximum* compute is the budget (it stops
             trials early and spends less; the table shows what it spent)
  optuna     Optuna TPE (FIFO)
  pbt        PBT over the continuous keys (the spec's uniform/loguniform config keys and
             distribution mutations); synchronous, so the population spends exactly the budget
  pbt-arch   the same plus the architecture ladders the learner's `adapt` can cross (the spec's
             list mutations, or a {choice: [...]} of an adaptable key in config)
  pb2        PB2 over the continuous keys (loguniform bounds explored on a linear scale)

samples = budget // (stop.rounds x grid cells); a PBT population is those samples. Repetition r
runs under seed `spec.seed + r * SEED_STRIDE` (trial seeds and the searcher's seed follow it).

Selection is on the spec's `search.metric`, which must be a validation metric for a learner that
has test twins. A metric with a test twin (every continual-learning metric, a teacher's loss
ratio) counts only at the last round, where a trial finished the stream: a trial stopped after 2
tasks has a higher average accuracy than one that saw 5; a metric without a twin counts at every
round. The selected
result's test twin is read once, at the end, and never compared. The best-so-far curve places a
result at the trial-rounds spent when it appeared: for a population, every member's rounds up to
that iteration; for FIFO and ASHA, the rounds of the trials that ended before it plus its own
(as if the trials had run one at a time, in the order they ended).
"""

from __future__ import annotations

import math
import sys
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from lifelab.analysis.selection import is_cl_metric, test_metric
from lifelab.analysis.summaries import mean_sem
from lifelab.errors import ConfigError
from lifelab.platform.config import SweepSpec, is_distribution, parse_spec
from lifelab.platform.store import join
from lifelab.trainables.registry import learner_class

SEARCHES = ("default", "random", "asha", "optuna", "pbt", "pbt-arch", "pb2")
DEFAULT_SEARCHES = ("random", "asha", "pbt")
POPULATION = ("pbt", "pb2")
CONTINUOUS = ("uniform", "loguniform")
SEED_STRIDE = 10_000            # trial seeds are seed + index: repetitions never share one


@dataclass
class Outcome:
    """One sweep of one search: what it selected and what it spent."""
    search: str
    repeat: int
    sweep_uri: str
    samples: int
    compute: int                           # trial-rounds actually run
    val: float                             # the selected result's selection metric
    test: float                            # its test twin (NaN without one)
    curve: list[tuple[int, float]] = field(default_factory=list)   # (trial-rounds, best so far)
    errored: int = 0                       # trials that ended in an error


# -- planning: one spec per search ------------------------------------------------------------

def parse_searches(text: str | list[str]) -> list[str]:
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text)]
    names = [n for n in names if n]
    unknown = [n for n in names if n not in SEARCHES]
    if unknown or not names:
        raise ConfigError(f"unknown search {', '.join(unknown) or '(none)'}: use a comma-separated "
                          f"list of {', '.join(SEARCHES)}")
    return list(dict.fromkeys(names))


def check_budget(budget: int, repeats: int) -> None:
    for what, value in (("budget", budget), ("repeats", repeats)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{what} must be an integer >= 1, got {value!r}")


def plan(spec: SweepSpec, searches: list[str], budget: int, repeats: int
         ) -> dict[tuple[str, int], SweepSpec]:
    """{(search, repetition): the validated spec of that sweep}; every problem is raised here,
    before anything runs."""
    check_budget(budget, repeats)
    rounds = spec.stop.get("rounds")
    if not rounds:
        raise ConfigError("compare-searches counts compute in trial-rounds: set stop: {rounds: N} "
                          "in the spec")
    if is_distribution(spec.seed):
        raise ConfigError("compare-searches seeds each repetition itself: give seed as one "
                          "integer")
    _check_validation_metric(spec)
    cells = grid_cells(spec)
    samples = budget // (rounds * cells)
    if samples < 1:
        raise ConfigError(f"budget {budget} is less than one trial of each of the {cells} grid "
                          f"cell(s) of {rounds} rounds: give --budget >= {rounds * cells}")
    out = {}
    for search in searches:
        settings = search_settings(spec, search, samples)
        for r in range(repeats):
            data = {**spec.to_dict(), "name": f"{search}-r{r}", "search": settings,
                    "seed": spec.seed + r * SEED_STRIDE, "final": {}, "loggers": []}
            try:
                out[(search, r)] = _checked(parse_spec(data, data["name"]))
            except ConfigError as exc:
                raise ConfigError(f"search {search}: {exc}") from None
    return out


def search_settings(spec: SweepSpec, search: str, samples: int) -> dict:
    """The spec's `search` mapping for one strategy."""
    own = spec.search
    base = {"metric": own.metric, "mode": own.mode, "select_on_test": own.select_on_test,
            "samples": samples, "group_by": own.group_by}
    if search == "default":
        return {**asdict(own), "samples": samples}
    if search in ("random", "optuna"):
        return {**base, "scheduler": "fifo", "searcher": search}
    if search == "asha":
        return {**base, "scheduler": "asha", "searcher": "random",
                "grace_period": own.grace_period, "reduction_factor": own.reduction_factor}
    if samples < 2:
        raise ConfigError(f"search {search} needs a population of at least 2 trials: give "
                          f"--budget >= {2 * spec.stop['rounds'] * grid_cells(spec)}")
    continuous = continuous_mutations(spec)
    if not continuous:
        raise ConfigError(f"search {search} needs a continuous key to mutate: give a config key "
                          "{uniform|loguniform: [low, high]} (e.g. lr)")
    mutations = dict(continuous)
    if search == "pbt-arch":
        ladders = architecture_ladders(spec)
        if not ladders:
            keys = sorted({k for n in spec.learner_names()
                           for k in learner_class(n).adaptable_keys})
            raise ConfigError("search pbt-arch needs an architecture ladder: "
                              + (f"give search.mutations.{keys[0]}: [v1, v2, ...] or config."
                                 f"{keys[0]}: {{choice: [...]}}" if keys else
                                 f"learner {spec.learner} has no adaptable_keys (its adapt "
                                 "cannot change the architecture): leave pbt-arch out"))
        mutations.update(ladders)
    if search == "pb2":
        mutations = {k: {"uniform": list(next(iter(v.values())))} for k, v in continuous.items()}
    return {**base, "scheduler": "pb2" if search == "pb2" else "pbt", "searcher": "random",
            "mutations": mutations, "synch": True,
            "perturbation_interval": own.perturbation_interval,
            "quantile_fraction": own.quantile_fraction,
            "resample_probability": own.resample_probability}


def continuous_mutations(spec: SweepSpec) -> dict:
    """Continuous keys: the spec's distribution mutations, then uniform/loguniform config keys."""
    out = {k: v for k, v in spec.search.mutations.items()
           if is_distribution(v) and next(iter(v)) in CONTINUOUS}
    for key, value in spec.config.items():
        if key not in out and is_distribution(value) and next(iter(value)) in CONTINUOUS:
            out[key] = value
    return out


def architecture_ladders(spec: SweepSpec) -> dict:
    """Ladders of adaptable architecture keys: the spec's list mutations, then a config
    {choice: [...]} of a key the learner's `adapt` can change."""
    adaptable = {k for n in spec.learner_names() for k in learner_class(n).adaptable_keys}
    out = {k: list(v) for k, v in spec.search.mutations.items()
           if isinstance(v, list) and k in adaptable}
    for key in sorted(adaptable - set(out)):
        value = spec.config.get(key)
        if is_distribution(value) and "choice" in value and len(value["choice"]) > 1:
            out[key] = list(value["choice"])
    return out


def grid_cells(spec: SweepSpec) -> int:
    """Trials Tune makes per sample: the product of the spec's grid sizes."""
    values = [spec.learner, *spec.config.values(), *spec.stream.values()]
    return math.prod(len(v["grid"]) for v in values if is_distribution(v) and "grid" in v)


def _check_validation_metric(spec: SweepSpec) -> None:
    metric = spec.search.metric
    reported = {m for n in spec.learner_names() for m in learner_class(n).metrics}
    if is_cl_metric(metric, reported) and not metric.startswith("val_"):
        raise ConfigError(f"search.metric '{metric}' is scored on test data: compare-searches "
                          f"selects on validation data, set search.metric: val_{metric}")


def _checked(spec: SweepSpec) -> SweepSpec:
    from lifelab.searches.spec import check_learners

    check_learners(spec)
    return spec


# -- running --------------------------------------------------------------------------------

def run_comparison(spec: SweepSpec, searches: list[str], budget: int, repeats: int,
                   storage: str | None = None, address: str | None = None,
                   progress_s: float = 0.0) -> tuple[str, list[Outcome]]:
    """Run every (repetition, search) sweep under <storage>/<spec.name>-searches (repetitions
    outer: a comparison cut short stays balanced); a sweep already there with the same spec is
    read, not re-run. Returns (the comparison's dir, its outcomes)."""
    from lifelab.analysis.tables import load
    from lifelab.platform.store import read_spec
    from lifelab.searches.launch import resume_sweep, run_sweep, storage_uri

    specs = plan(spec, searches, budget, repeats)
    root = join(storage_uri(storage), f"{spec.name}-searches")
    outcomes = []
    for r in range(repeats):
        for search in searches:
            one = specs[(search, r)]
            uri = join(root, one.name)
            try:
                done = read_spec(uri)
            except Exception:      # not there yet (or unreadable: run_sweep names the problem)
                done = None
            again = " (already there: read, or continued if cut short)" if done else ""
            print(f"lifelab: {search}, repetition {r + 1} of {repeats}: {uri}{again}",
                  file=sys.stderr, flush=True)
            if done is None:
                uri, _ = run_sweep(one, storage=root, address=address, progress_s=progress_s)
            elif not _same_sweep(done, _plain(one.to_dict())):
                raise ConfigError(f"{uri} holds another sweep than this comparison's {one.name}: "
                                  "choose another --storage")
            elif not _finished(load(uri), one):        # cut short earlier: continue it
                resume_sweep(uri, address=address, progress_s=progress_s)
            tables = load(uri)
            found = outcome(tables, search, r, one, uri)
            found.errored = int((tables.trials.get("status", pd.Series(dtype=str))
                                 == "ERROR").sum())
            outcomes.append(found)
    return root, outcomes


def _finished(tables, spec: SweepSpec) -> bool:
    trials = tables.trials
    return (len(trials) >= spec.search.samples * grid_cells(spec)
            and trials.status.isin(["TERMINATED", "DIVERGED"]).all())


def _end_order(tables, wide: pd.DataFrame) -> list[str]:
    """Trial ids in the order the trials ended (their last trials row), then any others by id
    (Optuna's ids are random, so ids alone do not give the order)."""
    trials = getattr(tables, "trials", None)
    ended = [] if trials is None or "written_at" not in trials else \
        trials.sort_values("written_at", kind="stable").trial_id.astype(str).tolist()
    ids = sorted(set(wide.trial_id))
    return [t for t in ended if t in ids] + [t for t in ids if t not in ended]


def _same_sweep(stored: dict, planned: dict) -> bool:
    """The stored spec runs what the plan asks (fields a newer lifelab added are not compared)."""
    search = stored.get("search") or {}
    return (all(stored.get(k) == planned[k] for k in ("learner", "stream", "config", "stop",
                                                      "seed"))
            and all(search.get(k, v) == v for k, v in planned["search"].items()))


def _plain(data: dict) -> dict:
    import yaml
    return yaml.safe_load(yaml.safe_dump(data, sort_keys=False))


def outcome(tables, search: str, repeat: int, spec: SweepSpec, uri: str = "") -> Outcome:
    """What one sweep selected (on validation) and its best-so-far curve over trial-rounds."""
    metric, mode = spec.search.metric, spec.search.mode
    wide = tables.wide.astype({"trial_id": str}).sort_values(["trial_id", "iteration"])
    names = tables.metric_names()
    test = test_metric(metric, names)
    if wide.empty or metric not in wide:
        return Outcome(search, repeat, uri, spec.search.samples, len(wide), math.nan, math.nan)
    if spec.search.scheduler in POPULATION:        # the population spends its rounds together
        per_iteration = wide.groupby("iteration").size().sort_index().cumsum()
        x = wide.iteration.map(per_iteration)
    else:                                          # trials one after another, as they ended
        sizes = wide.groupby("trial_id", sort=True).size().reindex(_end_order(tables, wide))
        before = sizes.cumsum() - sizes
        x = wide.trial_id.map(before) + wide.groupby("trial_id").cumcount() + 1
    wide = wide.assign(x=x.to_numpy(int))
    candidates = wide[np.isfinite(wide[metric].to_numpy(float))]
    if is_cl_metric(metric, names):                # only results at the end of the stream
        candidates = candidates[candidates.iteration == wide.iteration.max()]
    candidates = candidates.sort_values(["x", "trial_id"], kind="stable")
    values = candidates[metric].to_numpy(float)
    best = np.maximum.accumulate(values) if mode == "max" else np.minimum.accumulate(values)
    curve = list(zip(candidates.x.tolist(), best.tolist(), strict=True))
    if not len(candidates):
        return Outcome(search, repeat, uri, spec.search.samples, len(wide), math.nan, math.nan,
                       curve)
    chosen = candidates.iloc[int(np.argmax(values) if mode == "max" else np.argmin(values))]
    return Outcome(search, repeat, uri, spec.search.samples, len(wide), float(chosen[metric]),
                   float(chosen[test]) if test and test in chosen else math.nan, curve)


# -- the table and the figure -----------------------------------------------------------------

def summary_table(outcomes: list[Outcome], budget: int) -> pd.DataFrame:
    """Per search: repetitions, trials per sweep, trial-rounds spent (mean, and the range), the
    selected results' validation and test metric as mean and SEM over the repetitions, and
    (with `random` among the searches) the test difference to random search within each
    repetition: a repetition's searches share its seed, so random, ASHA, PBT and PB2 start from
    the same drawn trials and the difference is paired."""
    baseline = {o.repeat: o.test for o in outcomes if o.search == "random"}
    rows = []
    for search in dict.fromkeys(o.search for o in outcomes):
        own = [o for o in outcomes if o.search == search]
        val, val_sem = mean_sem(pd.Series([o.val for o in own]))
        test, test_sem = mean_sem(pd.Series([o.test for o in own]))
        paired = mean_sem(pd.Series([o.test - baseline.get(o.repeat, math.nan) for o in own]))
        spent = [o.compute for o in own]
        rows.append({"search": search, "repeats": len(own), "trials": own[0].samples,
                     "budget": budget, "compute_mean": float(np.mean(spent)),
                     "compute_min": min(spent), "compute_max": max(spent),
                     "val_mean": val, "val_sem": val_sem, "test_mean": test,
                     "test_sem": test_sem, "test_vs_random_mean": paired[0],
                     "test_vs_random_sem": paired[1],
                     "errored": sum(o.errored for o in own)})
    return pd.DataFrame(rows)


def table_text(table: pd.DataFrame, metric: str, test: str | None) -> str:
    from lifelab.analysis.formatting import pm

    lines = [f"{'search':10s} {'reps':>4s} {'trials':>6s} {'trial-rounds':>20s} "
             f"{'selected ' + metric:>22s} {'test ' + (test or '(no test twin)'):>22s}"
             f"{'test - random (paired)':>24s}"]
    for row in table.itertuples(index=False):
        spent = (f"{row.compute_mean:.0f}" if row.compute_min == row.compute_max
                 else f"{row.compute_mean:.1f} ({row.compute_min}-{row.compute_max})")
        lines.append(f"{row.search:10s} {row.repeats:4d} {row.trials:6d} "
                     f"{spent + ' / ' + str(row.budget):>20s} {pm(row.val_mean, row.val_sem):>22s} "
                     f"{pm(row.test_mean, row.test_sem):>22s}"
                     f"{_signed(row.test_vs_random_mean, row.test_vs_random_sem):>24s}")
    return "\n".join(lines)


def _signed(mean: float, sem: float) -> str:
    if not math.isfinite(mean):
        return "–"
    return f"{mean:+.4f}" + (f" ± {sem:.4f}" if math.isfinite(sem) else "")


def mean_curve(outcomes: list[Outcome], budget: int) -> np.ndarray:
    """The best-so-far value at each trial-round 1..budget, averaged over repetitions (NaN
    until every repetition has a result)."""
    grid = np.arange(1, budget + 1)
    stack = []
    for o in outcomes:
        row = np.full(budget, np.nan)
        for x, value in o.curve:
            row[grid >= x] = value
        stack.append(row)
    return np.mean(stack, axis=0) if stack else np.full(budget, np.nan)


def plot_searches(outcomes: list[Outcome], budget: int, metric: str, title: str):
    from matplotlib import colormaps

    from lifelab.analysis.plots import figure

    cmap = colormaps["tab10"]
    fig = figure(6.5, 4.0)
    ax = fig.subplots()
    grid = np.arange(1, budget + 1)
    for i, search in enumerate(dict.fromkeys(o.search for o in outcomes)):
        own = [o for o in outcomes if o.search == search]
        curve = mean_curve(own, budget)
        ax.step(grid, curve, where="post", color=cmap(i % 10), lw=1.6)
        # a population has results only at the end of the budget: its line is one point
        ax.plot(grid[-1:], curve[-1:], "o", color=cmap(i % 10), ms=6, mec="k", mew=0.5,
                label=f"{search} (n={len(own)})")
    ax.set_xlabel("trial-rounds spent")
    ax.set_ylabel(f"best {metric} so far\n(mean over repetitions)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def write_outputs(root: str, outcomes: list[Outcome], budget: int, spec: SweepSpec
                  ) -> tuple[str, str, pd.DataFrame]:
    """searches.csv, figures/searches.png and report.html in the comparison's dir (local
    storage; elsewhere in ./<name>-searches). Returns (html path, text, table)."""
    from pathlib import Path

    from lifelab.analysis.report_page import card, esc, figures_html, html_table, write_page

    metric = spec.search.metric
    test = test_metric(metric, {m for n in spec.learner_names()
                                for m in learner_class(n).metrics})
    table = summary_table(outcomes, budget)
    text = table_text(table, metric, test)
    out = Path(root) if "://" not in root else Path(f"{spec.name}-searches")
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "searches.csv", index=False)
    per_run = pd.DataFrame([{k: v for k, v in o.__dict__.items() if k != "curve"}
                            for o in outcomes])
    per_run.to_csv(out / "runs.csv", index=False)
    title = f"{spec.name}: searches at a budget of {budget} trial-rounds"
    caption = (f"best {metric} (validation) found so far against trial-rounds spent, mean over "
               "repetitions")
    figures = {"searches": (caption, plot_searches(outcomes, budget, metric, title))}
    note = (f"Selected on {metric} (validation); the selected result's "
            f"{test or metric} is read once, never compared. Mean and SEM over independent "
            "repetitions (each its own search).")
    body = (f"<h1>{esc(title)}</h1>\n<p>{esc(note)}</p>\n"
            + card("Searches", html_table(table, "searches"), key="searches")
            + card("Best so far", figures_html(figures), key="curve")
            + card("Per repetition", html_table(per_run, "runs"), key="runs"))
    path = write_page(out, title, body, figures)
    return str(path), text, table


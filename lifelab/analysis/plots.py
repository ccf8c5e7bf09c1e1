"""Plots of a sweep as matplotlib Figures (PNG through the Agg canvas; pyplot is never used, so
no display and no global backend are touched). Each function returns None when the sweep has
nothing to draw (no results yet, no PBT exploits, ...). Save with `fig.savefig("x.png")` or
`to_png(fig)`.
"""

from __future__ import annotations

import io

import numpy as np
import pandas as pd

from lifelab.analysis.formatting import missing, shorten
from lifelab.analysis.lineage import accuracy_matrix, lineage_of, mutated_keys, schedules
from lifelab.analysis.summaries import group_labels, matrices, mean_sem, trial_summary
from lifelab.analysis.tables import SweepTables

MAX_LINES = 12        # curves per panel in `plot_final_accuracy`


def figure(width: float, height: float):
    """An empty Figure on the Agg canvas, its layout constrained (no pyplot state)."""
    from matplotlib.figure import Figure
    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def to_png(fig) -> bytes:
    """The figure as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def learner_colors(tables: SweepTables) -> dict[str, tuple]:
    from matplotlib import colormaps
    cmap = colormaps["tab10"]
    learners = sorted(set(map(str, tables.trials.learner.dropna())) | {"?"})
    return {name: cmap(i % 10) for i, name in enumerate(learners)}


def plot_learning_curves(tables: SweepTables, metric: str | None = None):
    """The population's learning curves: `metric` (default the sweep's) per trial over
    iterations, coloured by learner; one panel per sweep. Dots mark PBT exploits."""
    sweeps = [s for s in tables.sweeps if (tables.metrics.sweep == s).any()]
    if not sweeps:
        return None
    colors = learner_colors(tables)
    learner = _learner_of(tables)
    fig = figure(min(5.5 * len(sweeps), 16), 3.8)
    axes = np.atleast_1d(fig.subplots(1, len(sweeps), sharey=True, squeeze=False)[0])
    for ax, sweep in zip(axes, sweeps, strict=True):
        name = metric or tables.metric(sweep)[0]
        m = tables.metrics[(tables.metrics.sweep == sweep) & (tables.metrics.name == name)]
        events = tables.events[tables.events.sweep == sweep]
        seen = set()
        for trial_id, g in m.groupby("trial_id", observed=True):
            who = learner.get((sweep, str(trial_id)), "?")
            g = g.sort_values("iteration")
            ax.plot(g.iteration, g.value, color=colors.get(who), alpha=0.75, lw=1.4,
                    label=who if who not in seen else None)
            seen.add(who)
            ex = events[events.trial_id == trial_id]
            if len(ex):
                at = g.set_index("iteration").value.reindex(ex.iteration + 1)
                ax.plot(at.index, at.to_numpy(), "o", ms=3.5, color=colors.get(who), mec="k",
                        mew=0.5)
        ax.set_title(sweep if len(sweeps) > 1 else f"{name} per trial")
        ax.set_xlabel("iteration (round)")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.legend(title="learner", fontsize=8)
    return fig


def plot_final_accuracy(tables: SweepTables):
    """Accuracy on each task after the whole stream (the last row of each trial's full test
    matrix), mean ± SEM over each group's independent runs that finished the stream (a PBT
    population counts once, by its selected member: summaries.group_summary); one panel per
    sweep (groups labelled by what varies within that sweep)."""
    mats = matrices(tables)
    if not mats:
        return None
    colors = learner_colors(tables)
    sweeps = [s for s in tables.sweeps if any(k[0] == s for k in mats)]
    fig = figure(min(5.5 * len(sweeps), 16), 3.8)
    axes = np.atleast_1d(fig.subplots(1, len(sweeps), sharey=True, squeeze=False)[0])
    styles = ["-", "--", ":", "-."]
    for ax, sweep in zip(axes, sweeps, strict=True):
        sub = tables.subset(sweep)
        groups = group_labels(sub)
        summary = trial_summary(sub)
        order = list(summary.sort_values("score", ascending=sub.metric()[1] == "min")
                     .group.drop_duplicates())
        runs = set(summary.trial_id[summary.selected])
        T = max(len(R) for (s, _), R in mats.items() if s == sweep)
        by_group: dict[str, list[np.ndarray]] = {}
        for (s, trial), R in mats.items():
            if s == sweep and len(R) == T and trial in runs:
                by_group.setdefault(groups.get((s, trial), "?"), []).append(R[T - 1, :T])
        used: dict[str, int] = {}
        for group in [g for g in order if g in by_group][:MAX_LINES]:
            rows = np.vstack(by_group[group])
            stats = [mean_sem(pd.Series(rows[:, j])) for j in range(T)]
            mean = np.array([s[0] for s in stats])
            sem = np.nan_to_num(np.array([s[1] for s in stats]))
            learner = group.split(" ", 1)[0]
            k = used[learner] = used.get(learner, -1) + 1
            ax.errorbar(np.arange(T), mean, yerr=sem, color=colors.get(learner),
                        ls=styles[k % 4], marker="o", ms=4, capsize=3,
                        label=f"{shorten(group)} (n={len(rows)})")
        ax.set_title(f"{sweep}: after all {T} tasks" if len(sweeps) > 1
                     else f"accuracy per task after all {T} tasks")
        ax.set_xlabel("task index (0 = first task)")
        ax.set_ylabel("accuracy")
        ax.set_xticks(range(T))
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return fig


def plot_accuracy_matrix(tables: SweepTables, trial_id: str, sweep: str | None = None,
                         lineage: bool = True):
    """Heatmap of a trial's accuracy matrix (rows: after training task i; columns: task j)."""
    matrix = accuracy_matrix(tables, trial_id, sweep=sweep, lineage=lineage)
    if matrix.empty:
        return None
    sweep = tables.sweep_of(trial_id, sweep)
    R = matrix.to_numpy(float)
    T, W = R.shape
    fig = figure(min(2.0 + 0.4 * W, 9), min(1.4 + 0.36 * T, 8))
    ax = fig.subplots()
    lo, hi = color_limits(R)
    image = ax.imshow(np.ma.masked_invalid(R), vmin=lo, vmax=hi, cmap="viridis", aspect="auto")
    digits = 3 if hi - lo < 0.1 else 2          # a narrow scale: enough digits to tell apart
    if T * W <= 144:
        for i in range(T):
            for j in range(W):
                if np.isfinite(R[i, j]):
                    dark = (R[i, j] - lo) / (hi - lo) < 0.6     # viridis is dark below ~0.6
                    ax.text(j, i, f"{R[i, j]:.{digits}f}", ha="center", va="center", fontsize=7,
                            color="white" if dark else "black")
    ax.set_xticks(range(W))
    ax.set_yticks(range(T))
    ax.set_xlabel("evaluated on task j")
    ax.set_ylabel("after training task i")
    learner = _learner_of(tables).get((sweep, trial_id), "?")
    ax.set_title(f"{trial_id} ({learner})", fontsize=10)
    bar = fig.colorbar(image, ax=ax, label=f"accuracy (scale {lo:.3g} to {hi:.3g})",
                       shrink=0.85)
    bar.set_ticks(sorted({*np.linspace(lo, hi, 5).round(4)}))   # the ends show the limits
    return fig


def color_limits(R: np.ndarray) -> tuple[float, float]:
    """The colour scale of an accuracy heatmap: the range of its finite values, so a matrix
    that stays within [0.93, 1] (e.g. task-incremental accuracies) is not uniformly one colour
    on a fixed [0, 1] scale; widened to 0.01 around a (nearly) constant matrix."""
    finite = R[np.isfinite(R)]
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = float(finite.min()), float(finite.max())
    if hi - lo < 0.01:
        mid = (lo + hi) / 2
        lo, hi = mid - 0.005, mid + 0.005
    return lo, hi


def plot_schedules(tables: SweepTables, sweep: str | None = None, inherited: bool = False):
    """Hyperparameter schedules of the population: each PBT-mutated key over iterations, one
    step line per trial coloured by learner (log scale for positive values spanning > 20x)."""
    sweep = sweep or tables.sweeps[0]
    keys = mutated_keys(tables, sweep)
    if not keys or tables.events[tables.events.sweep == sweep].empty:
        return None
    sched = schedules(tables, inherited=inherited, keys=keys)
    sched = sched[sched.sweep == sweep]
    if sched.empty:
        return None
    colors = learner_colors(tables)
    learner = _learner_of(tables)
    fig = figure(7.5, 2.0 + 2.2 * len(keys))
    axes = np.atleast_1d(fig.subplots(len(keys), 1, sharex=True, squeeze=False)[:, 0])
    for ax, key in zip(axes, keys, strict=True):
        part = sched[sched.key == key]
        values = part.value.dropna()
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        labels: list[str] = []
        if not numeric:
            labels = sorted({str(v) for v in values}, key=_ladder_order)
        seen = set()
        for trial_id, g in part.groupby("trial_id", sort=True):
            who = learner.get((sweep, str(trial_id)), "?")
            g = g.sort_values("iteration")
            y = (g.value.astype(float) if numeric
                 else g.value.map(lambda v, labels=labels: labels.index(str(v))
                                  if not missing(v) else np.nan))
            # the value at iteration i held during round i, i.e. over (i - 1, i]
            x = np.r_[g.iteration.iloc[0] - 1, g.iteration.to_numpy()]
            y = np.r_[np.asarray(y, float)[:1], np.asarray(y, float)]
            ax.step(x, y, where="pre", color=colors.get(who), alpha=0.8,
                    label=who if who not in seen else None)
            seen.add(who)
        if numeric and len(values) and min(values) > 0 and max(values) / min(values) > 20:
            ax.set_yscale("log")
        if not numeric:
            ax.set_yticks(range(len(labels)), labels, fontsize=8)
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        ax.legend(title="learner", fontsize=8)
    axes[-1].set_xlabel("iteration (round)")
    axes[0].set_title(f"{sweep}: hyperparameter schedules" + (" (inherited)" if inherited
                                                             else ""))
    return fig


def plot_family_tree(tables: SweepTables, sweep: str | None = None,
                     highlight: str | None = None):
    """The PBT family tree: one row per trial over iterations, an arrow per exploit from the
    donor's checkpoint to the trial that continued from it; `highlight` (default the best trial
    by the sweep's metric) is drawn with its ancestry in black."""
    sweep = sweep or tables.sweeps[0]
    events = tables.events[(tables.events.sweep == sweep) & (tables.events.kind == "exploit")]
    if events.empty:
        return None
    learner = _learner_of(tables)
    colors = learner_colors(tables)
    m = tables.metrics[tables.metrics.sweep == sweep]
    span = m.groupby("trial_id", observed=True).iteration.agg(["min", "max"])
    trials = sorted(set(map(str, span.index)) | set(map(str, events.trial_id))
                    | set(map(str, events.donor)),
                    key=lambda t: (learner.get((sweep, t), "?"), t))
    y = {t: i for i, t in enumerate(trials)}
    n = len(trials)
    fig = figure(8, 1.4 + (0.42 * n if n <= 20 else 8.4 + 0.15 * (n - 20)))
    ax = fig.subplots()
    for t in trials:
        lo, hi = (span.loc[t, "min"] - 1, span.loc[t, "max"]) if t in span.index else (0, 0)
        ax.plot([lo, hi], [y[t], y[t]], color=colors.get(learner.get((sweep, t), "?")), lw=3,
                alpha=0.55, solid_capstyle="butt")
    for e in events.itertuples(index=False):
        ax.annotate("", xy=(e.iteration + 0.35, y[str(e.trial_id)]),
                    xytext=(e.iteration, y[str(e.donor)]),
                    arrowprops={"arrowstyle": "->", "color": "0.35", "lw": 1.0})
    if highlight is None:
        board = trial_summary(tables)
        board = board[board.sweep == sweep].dropna(subset=["score"])
        if len(board):
            mode = tables.metric(sweep)[1]
            highlight = str(board.sort_values("score", ascending=mode == "min")
                            .trial_id.iloc[0])
    if highlight is not None:
        segs = lineage_of(tables, sweep).segments(highlight)
        for seg in segs:
            end = seg.end if seg.end is not None else (
                span.loc[seg.trial_id, "max"] if seg.trial_id in span.index else seg.start)
            ax.plot([seg.start, end], [y[seg.trial_id]] * 2, color="black", lw=1.6)
        for newer, older in zip(segs, segs[1:], strict=False):
            ax.plot([newer.start, newer.start + 0.35], [y[older.trial_id], y[newer.trial_id]],
                    color="black", lw=1.6)
    ax.set_yticks(range(n), [f"{t} ({learner.get((sweep, t), '?')})" for t in trials],
                  fontsize=8 if n <= 40 else 5)
    ax.set_xlabel("iteration (round)")
    ax.set_title(f"{sweep}: PBT family tree" + (f" — black: ancestry of {highlight}"
                                                 if highlight else ""), fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    ax.invert_yaxis()
    return fig


# -- internals --------------------------------------------------------------------------------

def _learner_of(tables: SweepTables) -> dict[tuple[str, str], str]:
    t = tables.trials
    return {(str(s), str(i)): str(x) for s, i, x in zip(t.sweep, t.trial_id, t.learner,
                                                         strict=True)}


def _ladder_order(label: str):
    """Order ladder values like "(50, 50)" < "(100, 100)" numerically where possible."""
    digits = [float(x) for x in "".join(c if c.isdigit() or c == "." else " "
                                        for c in label).split() if x.replace(".", "", 1)
              .isdigit()]
    return (0, digits, label) if digits else (1, [], label)

"""The report of a sweep (`lifelab report`) and of several side by side (`lifelab compare`):
plain text for the terminal, and one self-contained static HTML file (CSS, a few lines of
JavaScript and every image embedded as base64 PNG: it opens from disk, without a server or
internet). The PNGs are also written beside it, under `figures/`, for reuse (report_page).

Both keep what was selected on apart from what is reported: trials, groups and the best trial per
learner are ranked by the sweep's metric (`val_acc_avg`: the validation split), and the numbers
beside it are test numbers (`acc_avg`, and the CL summaries of each trial's test matrix). A sweep
that selected on test data (`search.select_on_test: true`) says so in the report's first line.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

import lifelab.analysis.plots as plots
from lifelab.analysis.formatting import fmt_text, fmt_value, missing, pm
from lifelab.analysis.lineage import ancestry, family_tree
from lifelab.analysis.report_page import card, esc, figures_html, html_table, safe, write_page
from lifelab.analysis.selection import selected_on_test, test_metric
from lifelab.analysis.summaries import (
    SUMMARY_METRICS,
    VIEW_METRICS,
    group_summary,
    leaderboard,
    reference_accuracies,
)
from lifelab.analysis.tables import SweepTables, load, sweep_uri, varying_config_columns

MAX_HEATMAPS = 12
BOARD_COLUMNS = ("trial_id", "learner", "status", "iteration", "score", "test_score",
                 "final_acc", "bwt", "fwt", "forgetting", "intransigence", "selected",
                 "exploits")
TEXT_COLUMNS = ("trial_id", "learner", "status", "iteration", "score", "test_score",
                "final_acc", "bwt", "forgetting", "intransigence")
SIDE_METRICS = ("score", "test_score", "final_acc", "bwt", "forgetting", "intransigence")
NEEDS = {"intransigence": "needs a joint trial", "fwt": "needs a baseline"}
NOTES = {
    "intransigence": "a*[k] - R[k, k]: a* is the mean R[k, k] of the sweep's joint trials, so it "
                     "needs a trial of learner joint in the sweep",
    "fwt": "R[j-1, j] - b[j]: needs each task scored before it is trained and b, an untrained "
           "model's accuracy (analysis.trial_summary(baseline=...)), or a learner that reports fwt",
    "acc_avg_til": "task-incremental: each task scored with its identity given (test, last round)",
    "acc_avg_cil": "class-incremental: no task identity, every class seen so far (test, last "
                   "round)",
}
RUNS = ("mean ± SEM over independent runs (trials that differ only by seed; a PBT population is "
        "one run: its selected member, no ±)")


# -- plain text -------------------------------------------------------------------------------

def text_report(tables: SweepTables | str) -> str:
    """Group summary, best trial per learner and the leaderboard of (the first) sweep; takes
    loaded tables or a sweep dir / URI. The first line says so when it selected on test data."""
    if not isinstance(tables, SweepTables):
        tables = load(tables)
    sweep = tables.sweeps[0]
    warning = _test_warning(tables, [sweep])
    if tables.metrics.empty and tables.accuracy.empty:
        return "\n".join([*warning, f"sweep {sweep}: no results yet in "
                          f"{tables.uris.get(sweep, '')}/results ({len(tables.trials)} trials "
                          "recorded)"])
    board = _board(tables)
    shown = [c for c in _shown(tables, sweep, board, TEXT_COLUMNS,
                               varying_config_columns(tables.trials)) if c != "rank"]
    per_learner = board.groupby("learner", sort=False).head(1)
    statuses = ", ".join(f"{n} {s}" for s, n in tables.trials.status.value_counts().items())
    selected, reported = _selection_lines(tables, sweep)
    lines = [*warning, f"sweep {sweep} — {len(board)} trials ({statuses or 'none recorded'})",
             f"Selected on: {selected}", f"Reported: {reported}", "",
             f"Summary by group ({RUNS}):", fmt_text(_group_table(tables)), "",
             "Best trial per learner:", fmt_text(_named(tables, sweep, per_learner[shown])), "",
             "All trials, best first:", fmt_text(_named(tables, sweep, board[shown]))]
    lines += [f"{col}: {need} (blank above)" for col, need in
              _blanks(tables, sweep, board).items() if col in shown]
    return "\n".join(lines)


def compare_text(tables: SweepTables) -> str:
    """Several sweeps side by side: each group's mean ± SEM per sweep."""
    warning = _test_warning(tables, tables.sweeps)
    groups = per_sweep_groups(tables)
    if groups.empty:
        return "\n".join([*warning, "no results yet in any of: " + ", ".join(tables.sweeps)])
    lines = [*warning, f"{len(tables.sweeps)} sweeps: " + ", ".join(
        f"{s} (selected on {tables.metric(s)[0]}, {int((tables.trials.sweep == s).sum())} "
        "trials)" for s in tables.sweeps)]
    lines.append(f"Each cell: {RUNS}.")
    for metric in _side_metrics(groups, SIDE_METRICS[:-1]):
        lines += ["", f"{_metric_title(tables, metric)}, one column per sweep:",
                  fmt_text(side_by_side(tables, groups, metric))]
    return "\n".join(lines)


def per_sweep_groups(tables: SweepTables) -> pd.DataFrame:
    """`group_summary` of each sweep on its own (groups labelled by what varies within that
    sweep, so the same learner lines up across sweeps), with a `sweep` column."""
    parts = [group_summary(tables.subset(s)).assign(sweep=s) for s in tables.sweeps]
    parts = [p for p in parts if not p.empty]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def side_by_side(tables: SweepTables, groups: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Rows: group; columns: sweeps; cells: 'mean ± sem (n)' ('–': not in that sweep; what the
    metric needs where the sweep cannot compute it, e.g. intransigence without a joint trial)."""
    board = leaderboard(tables)
    needs = {s: _blanks(tables, s, board[board.sweep == s]).get(metric) for s in tables.sweeps}
    groups = groups.assign(cell=[
        needs[sweep] if missing(m) and needs.get(sweep) else pm(m, s) + f" (n={n})"
        for sweep, m, s, n in zip(groups.sweep, groups[f"{metric}_mean"],
                                  groups[f"{metric}_sem"], groups.n, strict=True)])
    wide = groups.pivot(index="group", columns="sweep", values="cell")
    order = list(dict.fromkeys(groups.group))
    wide = wide.reindex(index=order, columns=[s for s in tables.sweeps if s in wide.columns])
    wide.columns.name = None
    return wide.fillna("–").rename_axis("group").reset_index()


# -- HTML -------------------------------------------------------------------------------------

def write_report(sweep: str, out: str | None = None) -> tuple[Path, str]:
    """Write `<out>/report.html` (default `<sweep>/report/`, or ./<name>-report for a remote
    sweep) and its figures; returns (path, the plain-text report)."""
    tables = load(sweep)
    name = tables.sweeps[0]
    out_dir = Path(out) if out else _default_out(sweep, name)
    figures = _figures(tables)
    body = _report_body(tables, figures)
    path = write_page(out_dir, f"lifelab report — {name}", body, figures)
    return path, text_report(tables)


def write_compare(sweeps: Sequence[str], out: str | None = None) -> tuple[Path, str]:
    """Write `<out>/report.html` (default ./lifelab-compare) putting the sweeps side by side;
    returns (path, the plain-text comparison)."""
    tables = load(list(sweeps))
    out_dir = Path(out) if out else Path("lifelab-compare").resolve()
    figures = _compare_figures(tables)
    body = _compare_body(tables, figures)
    path = write_page(out_dir, "lifelab compare — " + ", ".join(tables.sweeps), body, figures)
    return path, compare_text(tables)


def _report_body(tables: SweepTables, figures: dict) -> str:
    sweep = tables.sweeps[0]
    metric, mode = tables.metric(sweep)
    parts = [*_html_warning(tables, [sweep]), f"<h1>{esc(sweep)}</h1>",
             card("Sweep", _spec_block(tables, sweep), key="spec")]
    if tables.metrics.empty and tables.accuracy.empty:
        parts.append('<p class="empty" id="no-results"><b>No results yet.</b> This sweep has '
                     "not reported a round: its results tables are empty. Run or resume it, "
                     "then report again.</p>")
        return "\n".join(parts)
    board = _board(tables)
    selected, reported = _selection_lines(tables, sweep)
    shown = _shown(tables, sweep, board, BOARD_COLUMNS,
                   [c for c in board if c.startswith("config.")])
    blanks = _blanks(tables, sweep, board)
    parts += [
        card("Selection and reporting",
             f'<p id="selection"><b>Selected on</b> {esc(selected)}.<br><b>Reported</b> '
             f"{esc(reported)}.</p>", key="selection"),
        card("Summary by group",
             f"<p>Groups: the same learner and config apart from seeds. Each cell is the "
             f"{esc(RUNS)}. Best group first by <code>{esc(metric)}</code> ({esc(mode)}).</p>",
             html_table(_group_table(tables, blanks), "groups", blanks, NOTES), key="groups"),
        card("Leaderboard",
             f"<p>Every trial, best first by its last reported <code>{esc(metric)}</code> "
             "(what was selected on), with the test numbers beside it: CL metrics from its full "
             "test accuracy matrix (through its PBT ancestry). Hover a header with a dotted "
             "underline for what it needs, a shortened value for all of it.</p>",
             html_table(_named(tables, sweep, board[shown]), "leaderboard", blanks, NOTES),
             key="leaderboard"),
        card("Plots", figures_html(figures), key="plots"),
    ]
    best = str(board.trial_id.iloc[0])
    if not tables.events.empty:
        anc = ancestry(tables, best, sweep=sweep).drop(columns=["sweep", "config"])
        parts += [card(f"Lineage of the best trial ({best})",
                       "<p>The segments its final state was trained in, newest first: trial, "
                       "iterations (from, to], and the hyperparameters of each segment (blank: "
                       "not recorded).</p>", html_table(anc, "lineage"), key="lineage"),
                  card("PBT exploits", html_table(family_tree(tables).drop(columns=["sweep"]),
                                                  "exploits"), key="exploits")]
    errors = tables.trials[tables.trials.status == "ERROR"]
    if len(errors):
        parts.append(card("Errors", html_table(errors[["trial_id", "learner", "iterations",
                                                       "error"]], "errors"), key="errors"))
    parts += [card("Trials", html_table(_trials_table(tables), "trials"), key="trials"),
              card("Definitions", _DEFINITIONS, key="definitions")]
    return "\n".join(parts)


def _compare_body(tables: SweepTables, figures: dict) -> str:
    parts = [*_html_warning(tables, tables.sweeps),
             "<h1>Comparison of " + ", ".join(esc(s) for s in tables.sweeps) + "</h1>"]
    for sweep in tables.sweeps:
        parts.append(card(f"Sweep {sweep}", _spec_block(tables, sweep), key=f"spec-{sweep}"))
    groups = per_sweep_groups(tables)
    if groups.empty:
        parts.append('<p class="empty" id="no-results"><b>No results yet</b> in any of these '
                     "sweeps.</p>")
        return "\n".join(parts)
    side = [f"<p>Each cell is the {esc(RUNS)}.</p>"]
    for metric in _side_metrics(groups, SIDE_METRICS):
        side += [f"<h3>{esc(_metric_title(tables, metric))} (mean ± SEM)</h3>",
                 html_table(side_by_side(tables, groups, metric), f"side-{metric}")]
    parts += [card("Side by side", *side, key="side"),
              card("Plots", figures_html(figures), key="plots")]
    board = leaderboard(tables)
    boards = []
    for sweep in tables.sweeps:
        part = board[board.sweep == sweep]
        shown = _shown(tables, sweep, part, BOARD_COLUMNS,
                       [c for c in part if c.startswith("config.")])
        blanks = _blanks(tables, sweep, part)
        boards += [f"<h3>{esc(sweep)} (by {esc(tables.metric(sweep)[0])})</h3>",
                   html_table(_named(tables, sweep, part[shown].head(10)), f"board-{sweep}",
                              blanks, NOTES)]
    parts += [card("Leaderboards", *boards, key="boards"),
              card("Definitions", _DEFINITIONS, key="definitions")]
    return "\n".join(parts)


def _figures(tables: SweepTables) -> dict[str, tuple[str, object]]:
    """{file stem: (caption, Figure)} in report order; empty when there is nothing to draw."""
    if tables.metrics.empty and tables.accuracy.empty:
        return {}
    sweep = tables.sweeps[0]
    metric = tables.metric(sweep)[0]
    out: dict[str, tuple[str, object]] = {}
    _add(out, "learning_curves", f"Learning curves: {metric} per trial, coloured by learner "
         "(dots: the first round after a PBT exploit).", plots.plot_learning_curves(tables))
    _add(out, "final_accuracy", "Test accuracy on each task after the whole stream (last row of "
         "each trial's full test matrix), mean ± SEM over each group's independent runs.",
         plots.plot_final_accuracy(tables))
    board = leaderboard(tables)
    picks = list(board.groupby("group", sort=False).head(1).trial_id)
    picks += [t for t in board.trial_id if t not in picks][:max(0, 6 - len(picks))]
    for trial in picks[:MAX_HEATMAPS]:
        row = board[board.trial_id == trial].iloc[0]
        _add(out, f"matrix_{trial}", f"Test accuracy matrix of {trial} ({row.learner}, rank "
             f"{row['rank']} by {metric}): R[i, j] = accuracy on task j after training task i.",
             plots.plot_accuracy_matrix(tables, str(trial), sweep=sweep))
    _add(out, "schedules", "Hyperparameter schedules of the population: the config each trial "
         "ran under at each round (gaps: not recorded).", plots.plot_schedules(tables))
    _add(out, "family_tree", "PBT family tree: arrows go from the donor's checkpoint to the "
         "trial that continued from it.", plots.plot_family_tree(tables))
    return out


def _compare_figures(tables: SweepTables) -> dict[str, tuple[str, object]]:
    out: dict[str, tuple[str, object]] = {}
    _add(out, "learning_curves", "Learning curves per sweep, coloured by learner.",
         plots.plot_learning_curves(tables))
    _add(out, "final_accuracy", "Test accuracy per task after the whole stream, per sweep "
         "(mean ± SEM over each group's independent runs).", plots.plot_final_accuracy(tables))
    for sweep in tables.sweeps:
        _add(out, f"family_tree_{sweep}", f"PBT family tree of {sweep}.",
             plots.plot_family_tree(tables, sweep=sweep))
    return out


# -- pieces -----------------------------------------------------------------------------------

def _test_warning(tables: SweepTables, sweeps: list[str]) -> list[str]:
    """The line that opens a report whose selection used test data (none when it did not)."""
    why = [f"{s}: {reason}" if len(sweeps) > 1 else reason for s in sweeps
           if (reason := selected_on_test(tables.specs.get(s, tables.spec),
                                          tables.metric_names(s)))]
    if not why:
        return []
    return ["SELECTED ON TEST DATA (" + "; ".join(why) + "): the test numbers below were "
            "chosen on the data they report, so they are optimistic."]


def _html_warning(tables: SweepTables, sweeps: list[str]) -> list[str]:
    return [f'<p class="warn" id="select-on-test">{esc(line)}</p>'
            for line in _test_warning(tables, sweeps)]


def _selection_lines(tables: SweepTables, sweep: str) -> tuple[str, str]:
    """(what was selected on, what is reported) in words."""
    metric, mode = tables.metric(sweep)
    test = _test_name(tables, sweep)
    split = ("test split" if test == metric else "validation split" if test
             else "no split: not a continual-learning metric")
    selected = (f"{metric} ({mode}; {split}; each trial's last reported value): it ranks the "
                "trials and the groups, picks the best trial per learner and each PBT "
                "population's member")
    beside = f"{test} beside it, and " if test and test != metric else ""
    reported = (f"{beside}final_acc, bwt, fwt, forgetting, intransigence of each trial's full "
                "test accuracy matrix (test split)")
    return selected, reported


def _test_name(tables: SweepTables, sweep: str) -> str | None:
    return test_metric(tables.metric(sweep)[0], tables.metric_names(sweep))


def _board(tables: SweepTables) -> pd.DataFrame:
    board = leaderboard(tables)
    return board[board.sweep == tables.sweeps[0]].reset_index(drop=True)


def _shown(tables: SweepTables, sweep: str, board: pd.DataFrame, columns, extra) -> list[str]:
    """The leaderboard columns to show: `selected` only under PBT, `test_score` only when it
    is not the metric itself, the other incremental views (`_views`) right after it."""
    metric = tables.metric(sweep)[0]
    drop = set()
    if "population" not in board or board.population.isna().all():
        drop.add("selected")
    if _test_name(tables, sweep) in (None, metric):
        drop.add("test_score")
    cols = ["rank", *(c for c in columns if c not in drop), *extra]
    after = "test_score" if "test_score" in cols else "score"
    at = cols.index(after) + 1 if after in cols else len(cols)
    cols[at:at] = _views(tables, sweep, board)
    return [c for c in dict.fromkeys(cols) if c in board]


def _views(tables: SweepTables, sweep: str, board: pd.DataFrame) -> list[str]:
    """The incremental accuracies recorded beside the test metric that differ from it: a
    class-incremental sweep's acc_avg_til (its acc_avg is class-IL), a task-incremental
    sweep's acc_avg_cil."""
    test = _test_name(tables, sweep)
    out = []
    for view in VIEW_METRICS:
        if view not in board or view == test or board[view].isna().all():
            continue
        if test and np.allclose(board[view].to_numpy(float), board.test_score.to_numpy(float),
                                equal_nan=True):
            continue
        out.append(view)
    return out


def _blanks(tables: SweepTables, sweep: str, board: pd.DataFrame) -> dict[str, str]:
    """{column: the text of its blank cells} for the CL summaries a sweep with accuracy
    matrices cannot compute: intransigence without a joint trial, fwt without a baseline."""
    if "tasks" not in board or not (board.tasks > 0).any():
        return {}        # no matrix at all (e.g. a learned optimizer): plain blanks
    out = {}
    if sweep not in reference_accuracies(tables):
        out["intransigence"] = NEEDS["intransigence"]
    if board.fwt.isna().all():
        out["fwt"] = NEEDS["fwt"]
    return out


def _named(tables: SweepTables, sweep: str, df: pd.DataFrame) -> pd.DataFrame:
    """`score` and `test_score` under their metrics' names (val_acc_avg, acc_avg)."""
    metric, test = tables.metric(sweep)[0], _test_name(tables, sweep)
    names = {"score": metric, **({"test_score": test} if test and test != metric else {})}
    return df.rename(columns={k: v for k, v in names.items() if v not in df})


def _group_table(tables: SweepTables, blanks: dict[str, str] | None = None) -> pd.DataFrame:
    """Mean ± SEM per group (None: no value); a metric with no value in any group is left out
    unless `blanks` says what it needs."""
    sweep = tables.sweeps[0]
    groups = group_summary(tables)
    out = groups[["group", "n"]].copy()
    if (groups.trials != groups.n).any():
        out["trials"] = groups.trials
    test = _test_name(tables, sweep)
    names = {"score": tables.metric(sweep)[0], "test_score": test}
    views = _views(tables, sweep, _board(tables))
    for m in SUMMARY_METRICS:
        if (m == "test_score" and test == names["score"]) or (m in VIEW_METRICS
                                                             and m not in views):
            continue
        if groups[f"{m}_mean"].notna().any() or m in (blanks or {}):
            out[names.get(m) or m] = [None if missing(a) else pm(a, b) for a, b in zip(
                groups[f"{m}_mean"], groups[f"{m}_sem"], strict=True)]
    if len(tables.sweeps) > 1:
        out.insert(1, "sweeps", groups.sweeps)
    return out


def _side_metrics(groups: pd.DataFrame, metrics) -> list[str]:
    return [m for m in metrics if groups[f"{m}_mean"].notna().any()]


def _trials_table(tables: SweepTables) -> pd.DataFrame:
    cols = ["trial_id", "learner", "seed", "status", "iterations", "node",
            *varying_config_columns(tables.trials)]
    return tables.trials[[c for c in cols if c in tables.trials]]


def _spec_block(tables: SweepTables, sweep: str) -> str:
    spec = tables.specs.get(sweep, tables.spec)
    search = spec.get("search") or {}
    stream = spec.get("stream") or {}
    trials = tables.trials[tables.trials.sweep == sweep]
    statuses = ", ".join(f"{n} {s}" for s, n in trials.status.value_counts().items())
    rows = [
        ("sweep", sweep), ("location", tables.uris.get(sweep, "")),
        ("learner", fmt_value(spec.get("learner"))),
        ("stream", ", ".join(f"{k}={fmt_value(v)}" for k, v in stream.items())),
        ("search", ", ".join(f"{k}={fmt_value(search.get(k))}" for k in
                             ("scheduler", "searcher", "metric", "mode", "select_on_test",
                              "samples", "perturbation_interval")
                             if search.get(k) is not None)),
        ("mutations", fmt_value(search.get("mutations")) if search.get("mutations") else "–"),
        ("stop", fmt_value(spec.get("stop"))),
        ("trials", f"{len(trials)} ({statuses or 'none recorded yet'})"),
        ("rows", f"{int((tables.metrics.sweep == sweep).sum())} metrics, "
                 f"{int((tables.accuracy.sweep == sweep).sum())} accuracy, "
                 f"{int((tables.events.sweep == sweep).sum())} events"),
    ]
    items = "".join(f"<dt>{esc(k)}</dt><dd>{esc(str(v))}</dd>" for k, v in rows)
    return f'<dl class="spec">{items}</dl>'


_DEFINITIONS = """<p>Selection and reporting: trials are ranked by the sweep's metric (by default
<code>val_acc_avg</code>, on the validation split, which no learner trains on) at its last
reported round, i.e. at the end of the stream once a trial finished; the numbers reported beside
it are on the test split. R[i, j] is the test accuracy on task j after training tasks 0..i
(T tasks trained).</p>
<ul>
<li><b>final_acc</b>: mean of R[T-1, j] over j.</li>
<li><b>bwt</b> (Lopez-Paz &amp; Ranzato 2017): mean over j &lt; T-1 of R[T-1, j] - R[j, j].</li>
<li><b>acc_avg_til</b> / <b>acc_avg_cil</b>: the last reported test accuracy with the task
identity given (task-incremental) / without it, over every class seen so far (class-incremental).
In scenario class <code>acc_avg</code> is class-incremental and acc_avg_til is shown beside it; in
scenario task the other way round.</li>
<li><b>fwt</b>: mean over j ≥ 1 of R[j-1, j] - b[j] (b: an untrained model); needs each task
evaluated before it is trained, else the trial's reported <code>fwt</code>, else "needs a
baseline" (<code>analysis.trial_summary(tables, baseline=...)</code> computes it in Python).</li>
<li><b>forgetting</b> (Chaudhry et al. 2018): mean over j &lt; T-1 of
max<sub>l &lt; T-1</sub> R[l, j] - R[T-1, j].</li>
<li><b>intransigence</b> (Chaudhry et al. 2018): mean over k of a*[k] - R[k, k]; a*[k] is the
mean R[k, k] of the sweep's <code>joint</code> trials ("needs a joint trial" without them:
add <code>joint</code> to the sweep's learners).</li>
<li>Heatmaps: the colour scale spans each matrix's own range (its colourbar shows the limits), so
small differences show; compare numbers, not colours, across heatmaps.</li>
<li>± is the standard error of the mean over a group's independent runs (n): trials that differ
only by seed. The members of a PBT population copy each other's weights, so a population is one
run, its selected member; ± appears across sweeps of one spec with different seeds loaded
together, or across fifo trials that differ only by seed. Blank for one run.</li>
</ul>
<p>Read the same tables in Python: <code>from lifelab import analysis;
t = analysis.load("SWEEP_DIR")</code>, or directly:
<code>pd.read_parquet("SWEEP_DIR/results/metrics")</code>.</p>"""


def _metric_title(tables: SweepTables, metric: str) -> str:
    if metric not in ("score", "test_score"):
        return metric
    if metric == "score":
        names = sorted({tables.metric(s)[0] for s in tables.sweeps})
        return "selected on: last " + " / ".join(names)
    names = sorted({n for s in tables.sweeps if (n := _test_name(tables, s))})
    return "test: last " + " / ".join(names)


def _add(out: dict, stem: str, caption: str, fig) -> None:
    if fig is not None:
        out[stem] = (caption, fig)


def _default_out(sweep: str, name: str) -> Path:
    uri = sweep_uri(sweep)
    if "://" in uri:
        return Path(f"{safe(name)}-report").resolve()
    return Path(uri) / "report"

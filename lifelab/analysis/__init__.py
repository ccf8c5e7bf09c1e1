"""Analysis of sweeps: Parquet -> typed pandas tables, CL summaries, lineage, plots, reports.

    from lifelab import analysis
    t = analysis.load("lifelab-sweeps/demo")          # or a list of sweep dirs / URIs
    t.trials, t.metrics, t.wide, t.accuracy, t.events  # pandas DataFrames
    t.matrix("abc12_00000")                           # full test accuracy matrix via PBT lineage
    t.matrix("abc12_00000", split="val")              # ... the validation one
    t.summary(); t.groups(); t.leaderboard()          # ranked on val_acc_avg, test numbers beside
    t.ancestry("abc12_00000"); t.schedules(); t.family_tree()
    analysis.write_report("lifelab-sweeps/demo")      # report.html (what `lifelab report` does)

Imports only lifelab.platform (and lifelab.errors); matplotlib is imported when a plot is drawn.
"""

from lifelab.analysis.lineage import (
    accuracy_matrix,
    ancestry,
    family_tree,
    lineage_accuracy,
    mutated_keys,
    schedules,
)
from lifelab.analysis.plots import (
    plot_accuracy_matrix,
    plot_family_tree,
    plot_final_accuracy,
    plot_learning_curves,
    plot_schedules,
    to_png,
)
from lifelab.analysis.report import compare_text, text_report, write_compare, write_report
from lifelab.analysis.selection import is_cl_metric, selected_on_test, test_metric, twin
from lifelab.analysis.summaries import (
    group_summary,
    leaderboard,
    matrices,
    mean_sem,
    reference_accuracies,
    trial_summary,
)
from lifelab.analysis.sweep import Sweep, load
from lifelab.analysis.tables import SweepTables, final_metrics, read_table, wide_metrics

__all__ = [
    "Sweep", "SweepTables", "load", "read_table", "wide_metrics", "final_metrics",
    "trial_summary", "group_summary", "leaderboard", "matrices", "mean_sem",
    "reference_accuracies", "accuracy_matrix", "lineage_accuracy", "ancestry", "family_tree",
    "schedules", "mutated_keys", "plot_learning_curves", "plot_final_accuracy",
    "plot_accuracy_matrix", "plot_schedules", "plot_family_tree", "to_png", "text_report",
    "compare_text", "write_report", "write_compare", "is_cl_metric", "test_metric", "twin",
    "selected_on_test",
]

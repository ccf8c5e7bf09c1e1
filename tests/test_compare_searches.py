"""`lifelab compare-searches`: search strategies on one spec at equal compute, repeated with
distinct seeds, selected on validation, reported on test; bad input is one line and exit 2."""

import math
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import yaml

from lifelab.cli import main
from lifelab.errors import ConfigError
from lifelab.searches import compare
from lifelab.searches.spec import spec_from_dict

SPEC = {"name": "tiny", "learner": "finetune",
        "stream": {"dataset": "mnist5k", "kind": "split", "tasks": 2, "scenario": "class",
                   "steps_per_task": 10},
        "config": {"lr": {"loguniform": [1.0e-3, 1.0e-1]}, "hidden": [8], "steps_per_round": 10,
                   "batch_size": 32},
        "search": {"metric": "val_acc_avg", "mode": "max"},
        "stop": {"rounds": 2}}
BUDGET = 4          # 2 trials x 2 rounds


@pytest.fixture(scope="module")
def compared(ray_session, tmp_path_factory):
    storage = tmp_path_factory.mktemp("cs")
    spec = spec_from_dict(SPEC)
    root, outcomes = compare.run_comparison(spec, ["random", "pbt"], BUDGET, 2,
                                            storage=str(storage))
    path, text, table = compare.write_outputs(root, outcomes, BUDGET, spec)
    return SimpleNamespace(root=Path(root), outcomes=outcomes, path=Path(path), text=text,
                           table=table)


def test_every_search_and_repetition_spends_the_same_budget(compared):
    table = compared.table.set_index("search")
    assert list(table.index) == ["random", "pbt"]
    assert (table.repeats == 2).all() and (table.trials == 2).all()
    assert (table.errored == 0).all()
    assert (table.compute_min == BUDGET).all() and (table.compute_max == BUDGET).all()
    for outcome in compared.outcomes:            # the rounds the store holds, per sweep
        wide = pd.read_parquet(f"{outcome.sweep_uri}/results/metrics")
        rounds = wide[wide.name == "val_acc_avg"][["trial_id", "iteration"]].drop_duplicates()
        assert len(rounds) == BUDGET
    assert math.isfinite(table.loc["random", "test_mean"])
    assert math.isfinite(table.loc["pbt", "test_sem"])     # an SEM over the 2 repetitions
    test = {(o.search, o.repeat): o.test for o in compared.outcomes}
    paired = [test[("pbt", r)] - test[("random", r)] for r in (0, 1)]
    assert table.loc["pbt", "test_vs_random_mean"] == pytest.approx(sum(paired) / 2)
    assert table.loc["random", "test_vs_random_mean"] == 0


def test_repetitions_are_independent_searches_with_distinct_seeds(compared):
    seeds = {}
    for o in compared.outcomes:
        spec = yaml.safe_load((Path(o.sweep_uri) / "spec.yaml").read_text())
        trials = pd.read_parquet(f"{o.sweep_uri}/results/trials")
        seeds[(o.search, o.repeat)] = (spec["seed"], set(trials.seed))
    for search in ("random", "pbt"):
        (s0, t0), (s1, t1) = seeds[(search, 0)], seeds[(search, 1)]
        assert s0 != s1 and not t0 & t1
    pbt = yaml.safe_load((compared.root / "pbt-r0" / "spec.yaml").read_text())["search"]
    assert pbt["scheduler"] == "pbt" and pbt["synch"] and set(pbt["mutations"]) == {"lr"}
    random = yaml.safe_load((compared.root / "random-r0" / "spec.yaml").read_text())["search"]
    assert (random["scheduler"], random["searcher"]) == ("fifo", "random")


def test_the_selection_is_the_best_validation_result_at_the_end_of_the_stream(compared):
    for o in compared.outcomes:
        m = pd.read_parquet(f"{o.sweep_uri}/results/metrics")
        last = m[m.iteration == 2].pivot_table(index="trial_id", columns="name", values="value")
        best = last.val_acc_avg.idxmax()
        assert o.val == pytest.approx(last.val_acc_avg.max())
        assert o.test == pytest.approx(last.loc[best, "acc_avg"])
        assert o.curve[-1] == (BUDGET, pytest.approx(o.val))


def test_table_and_figure_are_written_beside_the_sweeps(compared):
    assert compared.path == compared.root / "report.html"
    png = compared.root / "figures" / "searches.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = compared.path.read_text()
    assert "data:image/png;base64,iVBOR" in html and "pbt" in html
    assert pd.read_csv(compared.root / "searches.csv").search.tolist() == ["random", "pbt"]
    header, *rows = compared.text.splitlines()
    assert "val_acc_avg" in header and "acc_avg" in header
    assert [r.split()[0] for r in rows] == ["random", "pbt"]
    assert all(f"{BUDGET} / {BUDGET}" in r for r in rows)


def test_running_again_reads_the_finished_sweeps_and_refuses_other_ones(compared):
    stamps = {p: p.stat().st_mtime_ns for p in compared.root.glob("*/spec.yaml")}
    spec = spec_from_dict(SPEC)
    _, again = compare.run_comparison(spec, ["random", "pbt"], BUDGET, 2,
                                      storage=str(compared.root.parent))
    assert [(o.val, o.test) for o in again] == [(o.val, o.test) for o in compared.outcomes]
    assert {p: p.stat().st_mtime_ns for p in compared.root.glob("*/spec.yaml")} == stamps
    other = spec_from_dict({**SPEC, "config": {**SPEC["config"], "hidden": [4]}})
    with pytest.raises(ConfigError, match="holds another sweep"):
        compare.run_comparison(other, ["random"], BUDGET, 1, storage=str(compared.root.parent))


def _tables(rows):
    """A sweep's tables as `outcome` reads them: wide rows (trial_id, iteration, metrics)."""
    wide = pd.DataFrame(rows)
    return SimpleNamespace(wide=wide, metric_names=lambda: set(wide.columns) - {"trial_id",
                                                                                "iteration"})


def test_selection_never_looks_at_test_and_ignores_unfinished_streams():
    spec = spec_from_dict({**SPEC, "search": {**SPEC["search"], "scheduler": "asha"}})
    rows = [  # t0 stopped after round 1 with the highest val (one task is easy): not a result
        {"trial_id": "t0", "iteration": 1, "val_acc_avg": 0.99, "acc_avg": 0.99},
        {"trial_id": "t1", "iteration": 1, "val_acc_avg": 0.9, "acc_avg": 0.9},
        {"trial_id": "t1", "iteration": 2, "val_acc_avg": 0.6, "acc_avg": 0.8},  # best on test
        {"trial_id": "t2", "iteration": 1, "val_acc_avg": 0.9, "acc_avg": 0.9},
        {"trial_id": "t2", "iteration": 2, "val_acc_avg": 0.7, "acc_avg": 0.5}]  # best on val
    o = compare.outcome(_tables(rows), "asha", 0, spec)
    assert (o.val, o.test, o.compute) == (0.7, 0.5, 5)
    # trials one after another as they ended (no trials table here: by id): t1 finishes at
    # 1 + 2 trial-rounds, t2 at 1 + 2 + 2
    assert o.curve == [(3, 0.6), (5, 0.7)]


@pytest.mark.parametrize("args, message", [
    (["--budget", "4", "--searches", "random,evolve"], "unknown search evolve"),
    (["--budget", "0"], "--budget: must be an integer >= 1"),
    (["--budget", "4", "--repeats", "0"], "--repeats: must be an integer >= 1"),
    (["--budget", "1"], "give --budget >= 2"),
    (["--budget", "2", "--searches", "pbt"], "population of at least 2"),
    (["--budget", "4", "--searches", "pbt-arch"], "has no adaptable_keys"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, args, message):
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(SPEC))
    code = _exit_code(["compare-searches", str(spec), *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_a_test_metric_is_refused_even_when_the_spec_opts_in(tmp_path, capsys):
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({**SPEC, "search": {"metric": "acc_avg",
                                                       "select_on_test": True}}))
    assert main(["compare-searches", str(spec), "--budget", "4"]) == 2
    err = capsys.readouterr().err.strip()
    assert "set search.metric: val_acc_avg" in err and len(err.splitlines()) == 1
    with pytest.raises(ConfigError, match="scored on test data"):
        compare.plan(spec_from_dict({**SPEC, "search": {"metric": "acc_avg",
                                                        "select_on_test": True}}),
                     ["random"], 4, 1)


def _exit_code(argv: list[str]) -> int:
    """main's return code, or the code of the usage error argparse exits with."""
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code

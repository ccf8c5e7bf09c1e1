"""How fast lifelab.analysis turns a sweep's Parquet store into pandas, against Ray Tune's own
ExperimentAnalysis and ResultGrid reading the same sweep.

    python benchmarks/analysis.py [--trials 100 --iterations 1000 --metrics 10]
                                  [--tune-trials 4 --tune-iterations 2500 --tune-metrics 100]
                                  [--skip-tune]

Part 1 builds a store of trials x iterations x metrics metric rows (default 1,000,000) with
lifelab's ResultStore, once compacted (one part, as a finished sweep leaves it) and once as a
running sweep leaves it (one part per trial per 100 iterations), and times `analysis.load`, the
pivot to the wide table (`SweepTables.wide`) and a question: the best trial by its last value of
a metric. `pd.read_parquet` of the raw table is shown for reference.

Part 2 runs a real Tune sweep (a function trainable reporting --tune-metrics random metrics per
iteration, lifelab's recording callback attached, Tune's default loggers on) and asks the same
question of it three ways: lifelab.analysis on its Parquet store, ExperimentAnalysis on its Tune
dir (which parses every trial's result.json), and a ResultGrid from `Tuner.restore(...)
.get_results()` (each Result's metrics_dataframe). Times are wall seconds of one run, measured
on a shared 2-core machine: compare ratios more than absolute values.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import yaml

from lifelab import analysis
from lifelab.platform.store import SCHEMAS, ResultStore

METRIC = "m0"


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def build_store(sweep: Path, trials: int, iterations: int, metrics: int, parts: str) -> int:
    """A sweep dir with a spec and trials x iterations x metrics metric rows."""
    sweep.mkdir(parents=True)
    (sweep / "spec.yaml").write_text(yaml.safe_dump({
        "name": sweep.name, "learner": "bench",
        "search": {"scheduler": "fifo", "metric": METRIC, "mode": "max"}}))
    store = ResultStore(str(sweep), run=1)
    names = [f"m{j}" for j in range(metrics)]
    rng = np.random.default_rng(0)
    store.append("trials", [{
        "sweep": sweep.name, "trial_id": f"bench_{t:05d}", "learner": "bench", "seed": t,
        "config_json": f'{{"lr": {10 ** -rng.uniform(1, 4):.6g}}}', "status": "TERMINATED",
        "error": "", "iterations": iterations, "node": "n", "ray_version": "", "torch_version": "",
        "written_at": 1.0} for t in range(trials)])
    chunk = iterations if parts == "one" else 100
    pieces = []
    for t in range(trials):
        for lo in range(0, iterations, chunk):
            its = np.arange(lo + 1, min(lo + chunk, iterations) + 1)
            n = len(its) * metrics
            pieces.append(pa.table({
                "sweep": pa.array([sweep.name] * n), "trial_id": pa.array([f"bench_{t:05d}"] * n),
                "iteration": pa.array(np.repeat(its, metrics)),
                "time_s": pa.array(np.repeat(its * 0.1, metrics)),
                "name": pa.array(np.tile(names, len(its))),
                "value": pa.array(rng.random(n)), "run": pa.array(np.ones(n, dtype=np.int64)),
            }, schema=SCHEMAS["metrics"]))
    if parts == "one":
        store.write_part("metrics", pa.concat_tables(pieces))
    else:
        for piece in pieces:
            store.write_part("metrics", piece)
    return trials * iterations * metrics


def lifelab_question(sweep: str) -> dict:
    """load -> wide -> best trial by the last value of METRIC, each step timed."""
    tables, load_s = timed(lambda: analysis.load(sweep))
    wide, pivot_s = timed(lambda: tables.wide)

    def best():
        last = wide.sort_values("iteration").groupby("trial_id", observed=True).tail(1)
        return last.set_index("trial_id")[METRIC].idxmax()

    winner, ask_s = timed(best)
    return {"rows": len(tables.metrics), "load_s": load_s, "wide_s": pivot_s, "ask_s": ask_s,
            "best": str(winner), "wide_shape": wide.shape}


def part1(args, root: Path) -> list[dict]:
    rows = []
    for parts in ("one", "many"):
        sweep = root / f"store-{parts}"
        n, build_s = timed(lambda sweep=sweep, parts=parts: build_store(
            sweep, args.trials, args.iterations, args.metrics, parts))
        nparts = len(list((sweep / "results" / "metrics").glob("part-*.parquet")))
        raw, raw_s = timed(lambda sweep=sweep: pd.read_parquet(sweep / "results" / "metrics"))
        assert len(raw) == n
        got = lifelab_question(str(sweep))
        assert got["rows"] == n and got["wide_shape"][0] == args.trials * args.iterations
        rows.append({"what": f"lifelab.analysis, {nparts} part(s)", "metric rows": n,
                     "load": got["load_s"], "wide": got["wide_s"], "question": got["ask_s"],
                     "total": got["load_s"] + got["wide_s"] + got["ask_s"],
                     "note": f"store built in {build_s:.1f} s; pd.read_parquet {raw_s:.2f} s"})
    return rows


def reporter(config: dict) -> None:
    from ray import tune

    rng = np.random.default_rng(config["seed"])
    names = [f"m{j}" for j in range(config["metrics"])]
    for _ in range(config["iterations"]):
        tune.report(dict(zip(names, rng.random(len(names)).tolist(), strict=True)))


def part2(args, root: Path) -> list[dict]:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray
    from ray import tune
    from ray.tune import ExperimentAnalysis

    from lifelab.searches.recording import RecordingCallback

    sweep = root / "tune-sweep"
    sweep.mkdir()
    (sweep / "spec.yaml").write_text(yaml.safe_dump({
        "name": "tune-sweep", "learner": "bench",
        "search": {"scheduler": "fifo", "metric": METRIC, "mode": "max"}}))
    temp = tempfile.mkdtemp(prefix="ll-ray-", dir="/tmp")
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=temp, log_to_driver=False,
             configure_logging=False)
    try:
        tuner = tune.Tuner(
            reporter,
            param_space={"learner": "bench", "seed": tune.grid_search(list(range(
                args.tune_trials))), "iterations": args.tune_iterations,
                "metrics": args.tune_metrics},
            tune_config=tune.TuneConfig(metric=METRIC, mode="max"),
            run_config=tune.RunConfig(name="tune", storage_path=str(sweep), verbose=0,
                                      callbacks=[RecordingCallback(str(sweep), "tune-sweep")]),
        )
        _, run_s = timed(tuner.fit)
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)
    n = args.tune_trials * args.tune_iterations * args.tune_metrics
    tune_dir = str(sweep / "tune")
    note = f"the sweep ran in {run_s:.0f} s"

    ours = lifelab_question(str(sweep))
    assert ours["rows"] == n, (ours["rows"], n)

    ea, ea_load = timed(lambda: ExperimentAnalysis(tune_dir, default_metric=METRIC,
                                                   default_mode="max"))

    def ea_wide():
        return pd.concat([df.assign(trial_id=t) for t, df in ea.trial_dataframes.items()],
                         ignore_index=True)

    wide, ea_wide_s = timed(ea_wide)
    assert len(wide) == args.tune_trials * args.tune_iterations

    def ea_best():
        last = wide.sort_values("training_iteration").groupby("trial_id").tail(1)
        return last.set_index("trial_id")[METRIC].idxmax()

    ea_winner, ea_ask = timed(ea_best)

    grid, rg_load = timed(lambda: tune.Tuner.restore(tune_dir, trainable=reporter)
                          .get_results())
    rg_wide, rg_wide_s = timed(lambda: pd.concat(
        [r.metrics_dataframe.assign(trial_id=r.metrics["trial_id"]) for r in grid],
        ignore_index=True))
    rg_best, rg_ask = timed(lambda: grid.get_best_result(METRIC, "max", scope="last")
                            .metrics["trial_id"])
    assert ours["best"] == str(ea_winner) == str(rg_best), (ours["best"], ea_winner, rg_best)
    assert len(rg_wide) == len(wide)
    return [
        {"what": "same sweep: lifelab.analysis (Parquet)", "metric rows": n,
         "load": ours["load_s"], "wide": ours["wide_s"], "question": ours["ask_s"],
         "total": ours["load_s"] + ours["wide_s"] + ours["ask_s"], "note": note},
        {"what": "same sweep: Tune ExperimentAnalysis", "metric rows": n, "load": ea_load,
         "wide": ea_wide_s, "question": ea_ask, "total": ea_load + ea_wide_s + ea_ask,
         "note": "parses each trial's result.json"},
        {"what": "same sweep: Tune ResultGrid", "metric rows": n, "load": rg_load,
         "wide": rg_wide_s, "question": rg_ask, "total": rg_load + rg_wide_s + rg_ask,
         "note": "Tuner.restore(...).get_results()"},
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--iterations", type=int, default=1000)
    parser.add_argument("--metrics", type=int, default=10)
    parser.add_argument("--tune-trials", type=int, default=4)
    parser.add_argument("--tune-iterations", type=int, default=2500)
    parser.add_argument("--tune-metrics", type=int, default=100)
    parser.add_argument("--skip-tune", action="store_true", help="only part 1 (no Ray)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="ll-bench-analysis-", dir="/tmp"))
    try:
        rows = part1(args, root)
        if not args.skip_tune:
            rows += part2(args, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print()
    print("| what | metric rows | load s | wide s | question s | total s | note |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | --- |")
    for r in rows:
        print(f"| {r['what']} | {r['metric rows']:,} | {r['load']:.2f} | {r['wide']:.2f} | "
              f"{r['question']:.2f} | {r['total']:.2f} | {r['note']} |")


if __name__ == "__main__":
    main()

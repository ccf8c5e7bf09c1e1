"""`lifelab ...`: the front door. Heavy imports (torch, ray) happen inside the commands."""

from __future__ import annotations

import argparse
import sys

from lifelab.errors import LifelabError


def main(argv: list[str] | None = None) -> int:
    from lifelab.platform.cluster import reap_dead_sessions, shutdown

    args = _parser().parse_args(argv)
    reaped = reap_dead_sessions()      # what a killed lifelab (and its watchdog) left behind
    if reaped:
        print(f"lifelab: stopped the Ray left by {len(reaped)} killed lifelab run(s) and "
              f"removed {', '.join(reaped)}", file=sys.stderr)
    try:
        return args.command(args) or 0
    except LifelabError as exc:
        # one line even when the message wraps a multi-line OS / pyarrow / Ray message
        print(f"lifelab: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lifelab: interrupted", file=sys.stderr)
        return 130
    finally:
        shutdown()                     # the embedded Ray this command started, and its temp dir


def cmd_sweep(args: argparse.Namespace) -> int:
    from lifelab.searches.spec import load_spec

    spec = load_spec(args.spec, name=args.name, samples=args.samples,   # validated before Ray
                     seed=args.seed)
    if args.logger:                    # --logger NAME (repeated) replaces the spec's loggers
        from dataclasses import replace

        from lifelab.platform.config import check_loggers

        spec = replace(spec, loggers=check_loggers(args.logger))

    from lifelab.searches.launch import run_sweep

    sweep_uri, results = run_sweep(spec, storage=args.storage, address=args.address,
                                   progress_s=args.progress, verbose=args.verbose)
    code = _finish(sweep_uri, results)
    if code == 0 and spec.final:
        code = _evaluate(sweep_uri, spec.final["seeds"], None, args.address, args.progress)
    return code


def cmd_evaluate(args: argparse.Namespace) -> int:
    from lifelab.searches.launch import storage_uri

    return _evaluate(storage_uri(args.sweep_dir), args.seeds, args.name, args.address,
                     args.progress)


def _evaluate(search_uri: str, seeds: int, name: str | None, address: str | None,
              progress: float) -> int:
    from lifelab.analysis.tables import load
    from lifelab.searches.evaluate import run_evaluation, summary_lines

    print(f"\nevaluating the selection of {search_uri} on {seeds} fresh seeds")
    uri, results = run_evaluation(search_uri, seeds, name=name, address=address,
                                  progress_s=progress)
    code = _finish(uri, results)
    tables = load(uri)
    evaluates = tables.spec.get("evaluates") or {}
    print(f"selected on validation: trial {evaluates.get('trial')} of the search, "
          f"{evaluates.get('metric')} {evaluates.get('value', float('nan')):.4f}")
    print("\n".join(summary_lines(tables, str(evaluates.get("metric", "val_acc_avg")))))
    return code


def cmd_compare_searches(args: argparse.Namespace) -> int:
    from lifelab.searches.compare import run_comparison, write_outputs
    from lifelab.searches.spec import load_spec

    spec = load_spec(args.spec)
    root, outcomes = run_comparison(spec, args.searches, args.budget, args.repeats,
                                    storage=args.storage, address=args.address,
                                    progress_s=args.progress)
    path, text, _ = write_outputs(root, outcomes, args.budget, spec)
    print(f"\n{spec.name}: {len(args.searches)} searches x {args.repeats} repetitions, "
          f"{args.budget} trial-rounds each")
    print(text)
    print(f"\nreport: {path}")
    errored = [f"{o.sweep_uri} ({o.errored})" for o in outcomes if o.errored]
    if errored:           # their finished rounds count; `lifelab status` says why
        print(f"trials errored in: {', '.join(errored)}")
    return 1 if errored else 0


def cmd_resume(args: argparse.Namespace) -> int:
    from lifelab.searches.launch import resume_sweep

    sweep_uri, results = resume_sweep(args.sweep_dir, address=args.address,
                                      verbose=args.verbose)
    return _finish(sweep_uri, results)


def cmd_report(args: argparse.Namespace) -> int:
    from lifelab.analysis.report import write_report

    path, text = write_report(args.sweep_dir, out=args.out)
    print(text)
    print(f"\nreport: {path}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from lifelab.analysis.report import write_compare

    path, text = write_compare(args.sweep_dirs, out=args.out)
    print(text)
    print(f"\nreport: {path}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from lifelab.analysis.status import status_text
    from lifelab.searches.launch import storage_uri

    print(status_text(storage_uri(args.sweep_dir)))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from lifelab.trainables.registry import describe, learner_class, learner_names

    if args.learner:
        print(learner_text(learner_class(args.learner)))
        return 0
    from lifelab.searches.spec import preset_names

    names = learner_names()
    width = max(map(len, names))
    print("learners:")
    for name in names:
        print(f"  {name:<{width}}  {describe(learner_class(name))}")
    print("presets: ", ", ".join(preset_names()))
    print("`lifelab list LEARNER` shows a learner's config keys and metrics")
    return 0


def learner_text(cls: type) -> str:
    """A learner's description, config keys (from its Params) and metrics."""
    from lifelab.trainables.registry import describe

    rows = [("key", "default", "type", "allowed", "doc")]
    rows += [(key, repr(p.default), p.kind.__name__, p.describe(), p.doc)
             for key, p in cls.params.items()]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = [f"{cls.name}: {describe(cls)}", ""]
    lines += ["  " + "  ".join(f"{c:<{w}}" for c, w in zip(r[:4], widths, strict=True)) + "  "
              + r[4] for r in rows]
    lines += ["", "  metrics: " + ", ".join(cls.metrics)]
    if cls.adaptable_keys:
        lines.append("  PBT may mutate these architecture keys: " + ", ".join(cls.adaptable_keys))
    return "\n".join(line.rstrip() for line in lines)


def _finish(sweep_uri: str, results) -> int:
    errors = sum(1 for r in results if r.error)
    print(f"\nsweep finished: {len(results)} trials, {errors} errored")
    for result in results:             # why, in one line each (Ray's tracebacks are hidden)
        if result.error:
            lines = [line.strip() for line in str(result.error).splitlines() if line.strip()]
            trial = (result.metrics or {}).get("trial_id") or \
                str(result.path).rstrip("/").split("/")[-1]
            print(f"  trial {trial}: {lines[-1] if lines else type(result.error).__name__}")
    print(f"results: {sweep_uri}/results  (tables: trials, metrics, accuracy, events)")
    print("read them with pandas:")
    print(f"  python -c \"import pandas as pd; "
          f"print(pd.read_parquet('{sweep_uri}/results/metrics'))\"")
    print(f"summary: lifelab report {sweep_uri}")
    return 1 if errors else 0


def _seconds(text: str) -> float:
    """A finite number of seconds >= 0; anything else is a one-line usage error."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be seconds >= 0 (0: no progress table), "
                                         f"got {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= 100:
        raise argparse.ArgumentTypeError(f"must be an integer from 1 to 100, got {text!r}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return value


def _searches(text: str) -> list[str]:
    from lifelab.searches.compare import parse_searches

    try:
        return parse_searches(text)
    except LifelabError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        """Usage mistakes too get one line and exit code 2."""
        self.exit(2, f"lifelab: error: {message} (see `{self.prog} --help`)\n")


def _parser() -> argparse.ArgumentParser:
    from lifelab.platform.config import LOGGERS

    parser = _Parser(prog="lifelab", description=__doc__.split(":")[1].strip())
    sub = parser.add_subparsers(required=True, metavar="COMMAND", parser_class=_Parser)

    sweep = sub.add_parser("sweep", help="launch a sweep from a preset or a YAML spec")
    sweep.add_argument("spec", help="a preset name (see `lifelab list`) or a YAML spec file")
    sweep.add_argument("--name", help="sweep name (default: the spec's name)")
    sweep.add_argument("--storage", help="where sweeps live: a path or s3:// / gs:// URI "
                       "(default: $LIFELAB_STORAGE or ./lifelab-sweeps)")
    sweep.add_argument("--address", help="Ray cluster address, e.g. auto (default: $RAY_ADDRESS "
                       "or an embedded local Ray)")
    sweep.add_argument("--samples", type=int, help="override search.samples")
    sweep.add_argument("--seed", type=int, help="override the spec's seed")
    sweep.add_argument("--progress", type=_seconds, default=10.0, metavar="SECONDS",
                       help="seconds between progress tables: each trial's metric and the "
                       "parameters PBT mutates (0: none; default 10)")
    sweep.add_argument("--logger", action="append", choices=LOGGERS, metavar="NAME",
                       help=f"an experiment tracker: {', '.join(LOGGERS)}; repeat it for "
                       "several (replaces the spec's loggers; default: tensorboard)")
    sweep.add_argument("--verbose", action="store_true", help="also show Ray's and Ray Tune's "
                       "output")
    sweep.set_defaults(command=cmd_sweep)

    resume = sub.add_parser("resume", help="continue an interrupted sweep")
    resume.add_argument("sweep_dir", help="the sweep dir printed by `lifelab sweep`")
    resume.add_argument("--address", help="Ray cluster address (default: local)")
    resume.add_argument("--verbose", action="store_true", help="also show Ray's and Ray Tune's "
                        "output")
    resume.set_defaults(command=cmd_resume)

    report = sub.add_parser("report", help="summary tables, leaderboard and plots of a sweep: "
                            "prints the summary, writes a self-contained HTML report")
    report.add_argument("sweep_dir", help="the sweep dir printed by `lifelab sweep`")
    report.add_argument("--out", help="directory for report.html and figures/ "
                        "(default: SWEEP_DIR/report)")
    report.set_defaults(command=cmd_report)

    compare = sub.add_parser("compare", help="several sweeps side by side (text and HTML)")
    compare.add_argument("sweep_dirs", nargs="+", metavar="SWEEP_DIR")
    compare.add_argument("--out", help="directory for report.html and figures/ "
                         "(default: ./lifelab-compare)")
    compare.set_defaults(command=cmd_compare)

    status = sub.add_parser("status", help="trials, iterations, the selection metric (its test "
                            "twin beside it), errors; "
                            "works while a sweep runs")
    status.add_argument("sweep_dir")
    status.set_defaults(command=cmd_status)

    evaluate = sub.add_parser("evaluate", help="re-run what a finished search selected (on "
                              "validation) from scratch on fresh seeds; report its test metrics "
                              "as mean ± SEM over them")
    evaluate.add_argument("sweep_dir", help="the search's sweep dir")
    evaluate.add_argument("--seeds", type=_positive_int, default=3,
                          help="independent runs (default 3)")
    evaluate.add_argument("--name", help="the evaluation sweep's name (default: <search>-eval)")
    evaluate.add_argument("--address", help="Ray cluster address (default: local)")
    evaluate.add_argument("--progress", type=_seconds, default=10.0, metavar="SECONDS",
                          help="seconds between progress tables (0: none; default 10)")
    evaluate.set_defaults(command=cmd_evaluate)

    searches = sub.add_parser("compare-searches", help="search strategies on one spec at equal "
                              "compute: repeated independent searches, selected on validation, "
                              "the selection's test metric as mean ± SEM")
    searches.add_argument("spec", help="a preset name or a YAML spec file (needs stop.rounds)")
    searches.add_argument("--budget", type=_count, required=True, metavar="N",
                          help="trial-rounds (trials x rounds) each search may spend")
    searches.add_argument("--repeats", type=_count, default=3, metavar="K",
                          help="independent searches per strategy, each its own seed (default 3)")
    searches.add_argument("--searches", type=_searches, default="random,asha,pbt",
                          help="comma-separated: default, random, asha, optuna, pbt, pbt-arch, "
                          "pb2 (default: random,asha,pbt)")
    searches.add_argument("--storage", help="where the sweeps go, under <storage>/<name>-searches "
                          "(default: $LIFELAB_STORAGE or ./lifelab-sweeps)")
    searches.add_argument("--address", help="Ray cluster address (default: local)")
    searches.add_argument("--progress", type=_seconds, default=0.0, metavar="SECONDS",
                          help="seconds between progress tables (default 0: none)")
    searches.set_defaults(command=cmd_compare_searches)

    listing = sub.add_parser("list", help="learners and presets, or one learner's config keys")
    listing.add_argument("learner", nargs="?", help="a learner name or 'module:Class'")
    listing.set_defaults(command=cmd_list)
    return parser

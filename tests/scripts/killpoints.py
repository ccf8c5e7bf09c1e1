"""When it is worth killing a sweep's driver: shared by tests/test_resume.py and the scripts that
drive a sweep to a kill point."""

from pathlib import Path


def state_refers_to_checkpoints(sweep: Path) -> bool:
    """Tune saved its experiment state after every trial had written a checkpoint, so a resume
    continues from checkpoints rather than from scratch."""
    states = list((sweep / "tune").glob("experiment_state-*.json"))
    trial_dirs = [d for d in (sweep / "tune").glob("LearnerTrainable_*") if d.is_dir()]
    try:     # retention deletes old checkpoints: each trial's oldest left, past its first
        oldest = [min((c.stat().st_mtime for c in d.glob("checkpoint_*")
                       if c.name != "checkpoint_000000"), default=None) for d in trial_dirs]
        if not states or len(trial_dirs) < 2 or None in oldest:
            return False
        return states[0].stat().st_mtime > max(oldest)
    except FileNotFoundError:          # deleted meanwhile: look again
        return False


def results_recorded(sweep: Path, newer_than: int = 0) -> int:
    """Results the store holds so far: (trial, iteration, run) triples of its metrics table, of
    the runs (drivers) newer than `newer_than` (the driver writes them in batches, merging parts,
    so count rows, not files)."""
    rows = _recorded(sweep)
    return 0 if rows is None else int((rows.run > newer_than).sum())


def latest_run(sweep: Path) -> int:
    """The newest run (driver start time) with results in the store; 0 for none."""
    rows = _recorded(sweep)
    return 0 if rows is None or rows.empty else int(rows.run.max())


def _recorded(sweep: Path):
    import pandas as pd

    try:
        parts = [pd.read_parquet(p, columns=["trial_id", "iteration", "name", "run"])
                 for p in (sweep / "results" / "metrics").glob("part-*.parquet")]
    except (OSError, ValueError):        # a part merged away meanwhile: count again later
        return None
    if not parts:
        return None
    rows = pd.concat(parts)
    return rows[rows.name == "round_s"].drop_duplicates(["trial_id", "iteration", "run"])

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


def results_recorded(sweep: Path) -> int:
    """Results the store holds so far: (trial, iteration, run) triples of its metrics table (the
    driver writes them in batches, merging parts, so count rows, not files)."""
    import pandas as pd

    try:
        parts = [pd.read_parquet(p, columns=["trial_id", "iteration", "name", "run"])
                 for p in (sweep / "results" / "metrics").glob("part-*.parquet")]
    except (OSError, ValueError):        # a part merged away meanwhile: count again later
        return 0
    if not parts:
        return 0
    rows = pd.concat(parts)
    return len(rows[rows.name == "round_s"].drop_duplicates(["trial_id", "iteration", "run"]))

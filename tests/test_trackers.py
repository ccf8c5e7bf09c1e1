"""Experiment trackers: one tiny PBT sweep logs to TensorBoard, MLflow and W&B (offline) at once,
and each is read back with its own library; the spec key and --logger are checked before Ray."""

import glob
import json
import os
import struct
from pathlib import Path

import pytest
import yaml

from lifelab import cli
from lifelab.errors import ConfigError
from lifelab.platform.config import parse_spec
from lifelab.searches import trackers
from lifelab.searches.launch import run_sweep
from lifelab.searches.spec import spec_from_dict

ROUNDS = 4
SPEC = {
    "name": "tracked",
    "learner": "finetune",
    "stream": {"tasks": 2, "steps_per_task": 20},
    "config": {"lr": {"loguniform": [1e-4, 1e-2]}, "hidden": [8], "steps_per_round": 10},
    "search": {"scheduler": "pbt", "samples": 2, "perturbation_interval": 1,
               "quantile_fraction": 0.5, "mutations": {"lr": {"loguniform": [1e-4, 1e-2]}}},
    "stop": {"rounds": ROUNDS},
    "loggers": ["tensorboard", "mlflow", "wandb"],
}


def rounds(steps: list[int]) -> bool:
    """Every round logged, in the order reported: a PBT exploit may send a trial back to its
    donor's round, which it then reports again."""
    return set(steps) == set(range(1, ROUNDS + 1)) and steps[-1] == ROUNDS


@pytest.fixture(scope="module")
def tracked(ray_session, tmp_path_factory):
    """(sweep dir, trial ids) of one sweep logged by all three trackers."""
    saved = {k: os.environ.get(k) for k in ("WANDB_MODE", "MLFLOW_TRACKING_URI")}
    os.environ["WANDB_MODE"] = "offline"
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    try:
        sweep_uri, results = run_sweep(spec_from_dict(SPEC),
                                       storage=str(tmp_path_factory.mktemp("storage")),
                                       progress_s=0)
    finally:
        import wandb

        wandb.teardown()              # its service process, started by the driver's runs
        for key, value in saved.items():
            os.environ.pop(key, None) if value is None else os.environ.update({key: value})
    assert not any(r.error for r in results)
    return Path(sweep_uri), sorted(r.metrics["trial_id"] for r in results)


def test_tensorboard_has_one_run_per_trial_with_scalars_and_the_matrix(tracked):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    sweep, trial_ids = tracked
    runs = sorted(p.name for p in (sweep / "tensorboard").iterdir())
    assert runs == trial_ids                    # one run per trial, across PBT's segments
    for trial_id in trial_ids:
        events = EventAccumulator(str(sweep / "tensorboard" / trial_id),
                                  size_guidance={"scalars": 0, "images": 0})
        events.Reload()
        assert {"acc_avg", "val_acc_avg", "train_loss", "round_s", "config/lr"} \
            <= set(events.Tags()["scalars"])
        assert rounds([s.step for s in events.Scalars("acc_avg")])
        # a matrix image each time a task finished: tasks end at rounds 2 and 4
        images = events.Images(trackers.IMAGE_KEY)
        assert {i.step for i in images} == {2, 4}
        assert images[-1].encoded_image_string.startswith(b"\x89PNG")
    assert not list(sweep.glob("tune/*/events.out.tfevents.*")), "Tune's own TBX logger is off"


def test_mlflow_file_store_has_a_run_per_trial_with_metrics_and_params(tracked):
    import mlflow
    from mlflow.tracking import MlflowClient

    sweep, trial_ids = tracked
    uri = f"file://{sweep}/mlruns"
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["tracked"])
    assert sorted(runs["tags.lifelab.trial_id"]) == trial_ids
    assert set(runs.status) == {"FINISHED"}
    assert runs["metrics.acc_avg"].between(0, 1).all()
    assert runs["params.lr"].notna().all() and set(runs["params.learner"]) == {"finetune"}
    client = MlflowClient(tracking_uri=uri)
    for run_id in runs.run_id:                  # the mutated lr, round by round
        history = client.get_metric_history(run_id, "config/lr")
        assert rounds([m.step for m in history])
        artifacts = [a.path for a in client.list_artifacts(run_id, "images")]
        assert artifacts, "the accuracy matrix images"


def wandb_history(path: str) -> list[dict]:
    """The rows a W&B run file (run-<id>.wandb, a LevelDB-style log of protobuf records)
    holds: each logged dict, decoded."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, block, record, rows = Path(path).read_bytes(), 7, 32768, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:               # a block's tail too short for a header
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        record += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):                        # a full record, or the last chunk of one
            parsed = pb.Record()
            parsed.ParseFromString(record)
            if parsed.WhichOneof("record_type") == "history":
                rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json)
                             for i in parsed.history.item})
            record = b""
        elif kind == 0 and length == 0:
            break
    return rows


def test_wandb_offline_runs_hold_the_metrics(tracked):
    sweep, trial_ids = tracked
    files = sorted(glob.glob(str(sweep / "wandb" / "offline-run-*" / "run-*.wandb")))
    assert sorted(Path(f).stem[len("run-"):] for f in files) == trial_ids
    for path in files:
        rows = wandb_history(path)
        metrics = [r for r in rows if "acc_avg" in r]
        assert rounds([r["training_iteration"] for r in metrics])
        assert all(0 <= r["acc_avg"] <= 1 and "config/lr" in r for r in metrics)
        images = [r for r in rows if r.get(f"{trackers.IMAGE_KEY}/_type") == "image-file"]
        assert {r["training_iteration"] for r in images} == {2, 4}
        assert glob.glob(str(Path(path).parent / "files" / "media" / "images" / "*.png"))


# -- before Ray: the spec key, --logger, a missing package --------------------------------------

def test_loggers_default_to_tensorboard_and_are_validated():
    base = {k: v for k, v in SPEC.items() if k != "loggers"}
    assert parse_spec(base, "x").loggers == ["tensorboard"]
    assert parse_spec({**base, "loggers": []}, "x").loggers == []
    with pytest.raises(ConfigError, match="'comet' is unknown: use one of tensorboard, mlflow, "
                                          "wandb"):
        parse_spec({**base, "loggers": ["comet"]}, "x")
    with pytest.raises(ConfigError, match="loggers must be a list"):
        parse_spec({**base, "loggers": "mlflow"}, "x")


def test_a_missing_tracker_package_is_one_line_naming_the_extra(tmp_path, monkeypatch, capsys):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "wandb" else find_spec(name, *a))
    spec_file = tmp_path / "s.yaml"
    spec_file.write_text(yaml.safe_dump({k: v for k, v in SPEC.items() if k != "loggers"}))
    assert cli.main(["sweep", str(spec_file), "--logger", "wandb"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'lifelab[trackers]'" in err[0], err
    assert not (tmp_path / "lifelab-sweeps").exists()


def test_an_unknown_logger_flag_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["sweep", "demo", "--logger", "comet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(err) == 1
    assert "invalid choice: 'comet'" in err[0] and "tensorboard" in err[0]


def test_a_failing_tracker_says_so_once_and_the_sweep_goes_on(capsys):
    class Broken(trackers.Tracker):
        name = "broken"

        def start(self, trial_id, config):
            raise ConnectionError("tracking server\nunreachable")

    class Trial:
        trial_id, config = "t_00000", {"lr": 0.1}

    tracker = Broken(spec_from_dict({k: v for k, v in SPEC.items() if k != "loggers"}),
                     "/nonexistent", announce=False)
    for _ in range(3):
        tracker.on_trial_result(0, [], Trial(), {"training_iteration": 1, "acc_avg": 0.5})
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["lifelab: broken logging stopped (tracking server unreachable); the sweep "
                   "goes on, its results store is complete"]


def test_the_accuracy_image_shows_the_rows_so_far():
    image = trackers.accuracy_image({0: [0.9], 1: [0.5, 0.8]}, cell=10)
    assert image.shape == (20, 20, 3) and image.dtype.name == "uint8"
    brightness = image.sum(axis=2)[5::10, 5::10]        # one pixel per cell
    assert brightness[0, 1] == 0                          # task 1 not evaluated after task 0
    assert brightness[1, 1] > brightness[1, 0] > 0        # 0.8 shows brighter than 0.5
    assert trackers.scalars({"acc_avg": 0.5, "acc_rows": [], "done": False, "pid": 3,
                             "training_iteration": 2, "ok": True}, {"lr": 0.1, "hidden": [8]},
                            ["lr", "hidden"]) == {"acc_avg": 0.5, "config/lr": 0.1}

"""Launch a sweep, or resume an interrupted one, on Ray Tune.

A sweep lives at <storage>/<name>: spec.yaml (the resolved spec; resume needs nothing else),
tune/ (Tune's experiment: state and checkpoints) and results/ (the Parquet store).
"""

from __future__ import annotations

import os
import sys

import pyarrow.fs as pafs
import yaml

from lifelab.errors import ConfigError, LifelabError, StorageError
from lifelab.platform.cluster import check_resources, connect, gpus_per_trial
from lifelab.platform.config import SweepSpec, parse_spec
from lifelab.platform.data import Dataset, load_stream_dataset
from lifelab.platform.store import SPEC_FILE, join, read_spec, resolve
from lifelab.platform.streams import stream_config
from lifelab.searches.guards import (
    CannotResumeError,
    ResumeCheck,
    StallGuard,
    retry_worker_loss,
    saved_trial_ids,
)
from lifelab.searches.integrity import StateSigner, verify_state
from lifelab.searches.lease import Lease, LeaseCallback
from lifelab.searches.progress import DEFAULT_INTERVAL_S, ProgressCallback
from lifelab.searches.ray_internals import set_restored_run
from lifelab.searches.recording import RecordingCallback
from lifelab.searches.retention import CheckpointRetention
from lifelab.searches.schedulers import build_scheduler, build_searcher
from lifelab.searches.space import param_space
from lifelab.searches.spec import check_learners
from lifelab.searches.trackers import tracker_callbacks

TUNE_DIR = "tune"
DEFAULT_STORAGE = "lifelab-sweeps"
MAX_FAILURES = 3


def storage_uri(storage: str | None) -> str:
    """A storage location as Tune and pyarrow both accept it: an absolute path or a URI."""
    storage = storage or os.environ.get("LIFELAB_STORAGE") or DEFAULT_STORAGE
    if storage.startswith("file://"):
        storage = storage[len("file://"):]
    if "://" in storage:
        return storage.rstrip("/")
    return os.path.abspath(os.path.expanduser(storage))


def run_sweep(spec: SweepSpec, storage: str | None = None, address: str | None = None,
              reuse_actors: bool = True, progress_s: float = DEFAULT_INTERVAL_S,
              verbose: bool = False):
    """Start a new sweep; refuses to touch an existing one. Returns (sweep_uri, ResultGrid).
    `progress_s`: seconds between progress tables (0: none); `verbose`: Tune's own output too."""
    sweep_uri = join(storage_uri(storage), spec.name)
    fs, path = resolve(sweep_uri)
    spec_path = join(path, SPEC_FILE)
    lease = Lease(sweep_uri)
    if lease.alive(holder := lease.holder()):        # a driver runs it right now: name it
        raise lease.busy_error(holder)
    if _exists(fs, spec_path) or _exists(fs, join(path, TUNE_DIR)):
        raise StorageError(f"sweep '{spec.name}' already exists at {sweep_uri}: continue it with "
                           f"`lifelab resume {sweep_uri}` or choose another --name")
    data = _datasets(spec)                     # a missing dataset fails before anything is written
    for stream in spec.stream_variants():      # e.g. more classes than the dataset has
        config = stream_config(stream)
        config.check_dataset(data[config.dataset])
    existed = _exists(fs, path)
    try:
        fs.create_dir(path, recursive=True)
    except OSError as exc:
        raise StorageError(f"cannot write to storage {sweep_uri} ({exc}): choose a writable "
                           "--storage") from None
    try:                                       # a cluster that cannot run it leaves nothing
        connect(address, code=spec.code, verbose=verbose)
        check_resources(spec.resources["cpu"], spec.resources["gpu"], address)
    except LifelabError:
        if not existed:
            fs.delete_dir(path)
        raise
    try:
        _say(lease.acquire())                  # two drivers racing for one new name: one wins
        if _exists(fs, spec_path):             # ... and the other may come after it
            lease.release()
            raise StorageError(f"sweep '{spec.name}' already exists at {sweep_uri}: continue it "
                               f"with `lifelab resume {sweep_uri}` or choose another --name")
        with fs.open_output_stream(spec_path + ".tmp") as out:
            out.write(yaml.safe_dump(spec.to_dict(), sort_keys=False).encode())
        fs.move(spec_path + ".tmp", spec_path)
    except OSError as exc:
        lease.release()
        raise StorageError(f"cannot write to storage {sweep_uri} ({exc}): choose a writable "
                           "--storage") from None
    try:
        _tune_environment(verbose, spec.search.samples, sweep_uri)
        return sweep_uri, _tuner(spec, sweep_uri, data, reuse_actors, progress_s, verbose,
                                 lease).fit()
    finally:
        lease.release()


def resume_sweep(sweep_dir: str, address: str | None = None,
                 progress_s: float = DEFAULT_INTERVAL_S, verbose: bool = False):
    """Continue an interrupted sweep from its trials' last checkpoints -> (uri, ResultGrid).

    Everything it writes goes under `sweep_dir`, wherever the sweep was started (a sweep dir
    may be moved or copied). A sweep stopped before Tune saved any state starts its trials from
    scratch. Refused while another driver runs the sweep."""
    from ray import tune

    sweep_uri = storage_uri(sweep_dir)
    spec = read_sweep_spec(sweep_uri)
    fs, path = resolve(sweep_uri)
    tune_uri = join(sweep_uri, TUNE_DIR)
    lease = Lease(sweep_uri)
    try:
        _say(lease.acquire())                  # refused while another driver runs it
    except OSError as exc:
        raise StorageError(f"cannot write to the sweep dir {sweep_uri} ({exc}): resume it "
                           "where it is writable (a sweep dir may be copied)") from None
    try:
        try:
            saved = (saved_trial_ids(fs, join(path, TUNE_DIR))
                     if tune.Tuner.can_restore(tune_uri) else None)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CannotResumeError(f"cannot read the state Tune saved in {tune_uri} ({exc}): "
                                    "restore that dir from a copy, or start the sweep anew "
                                    "under another name") from None
        data = _datasets(spec)
        connect(address, code=spec.code, verbose=verbose)
        check_resources(spec.resources["cpu"], spec.resources["gpu"], address)
        _tune_environment(verbose, spec.search.samples, sweep_uri)
        if saved is None:
            _say(f"{sweep_uri} stopped before Tune saved any state: starting its trials from "
                 "scratch")
            for leftover in (TUNE_DIR, "results"):    # trials no state refers to
                if _exists(fs, join(path, leftover)):
                    fs.delete_dir(join(path, leftover))
            return sweep_uri, _tuner(spec, sweep_uri, data, True, progress_s, verbose,
                                     lease).fit()
        verify_state(sweep_uri, TUNE_DIR)      # before Tune unpickles any of its state
        tuner = tune.Tuner.restore(tune_uri, trainable=_trainable(spec, data),
                                   resume_errored=True)
        # the callbacks pickled with the experiment name the location it started in: this
        # resume's own write here; and Tune keeps no scheduler state across a restore, so one
        # built from spec.yaml (with this version's code) loses nothing
        scheduler = build_scheduler(spec)
        set_restored_run(tuner, _callbacks(spec, sweep_uri, progress_s, lease,
                                           ResumeCheck(sweep_uri, saved), scheduler=scheduler,
                                           resumed=True),
                         scheduler, verbose=1 if verbose else 0)
        return sweep_uri, tuner.fit()
    finally:
        lease.release()


def _say(note: str | None) -> None:
    if note:
        print(f"lifelab: {note}", file=sys.stderr, flush=True)


def state_period_s(trials: int, remote: bool = False) -> float:
    """Seconds between saves of the experiment state a resume starts from. Each save serializes
    every trial (and on object storage costs several requests, as does the results flush that
    precedes it), so a big sweep, or one on S3/GCS, saves less often: from 10 s there; a small
    local one every 2 s, so a driver killed early loses little. LIFELAB_STATE_PERIOD_S sets it."""
    override = os.environ.get("LIFELAB_STATE_PERIOD_S")
    if not override:
        return min(30.0, max(10.0 if remote else 2.0, trials / 50))
    try:
        seconds = float(override)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds < float("inf"):
        raise ConfigError(f"LIFELAB_STATE_PERIOD_S={override!r} is not a number of seconds > 0: "
                          "unset it or give e.g. 10")
    return seconds


def _tune_environment(verbose: bool, trials: int = 1, sweep_uri: str = "") -> None:
    remote = "://" in sweep_uri and not sweep_uri.startswith("file://")
    os.environ["TUNE_GLOBAL_CHECKPOINT_S"] = str(state_period_s(trials, remote))
    if not verbose:
        # Tune's newer console output prints its banner even at verbose=0; the classic one
        # is silent there, and lifelab's progress table says what matters
        os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    # no progress.csv and no TensorBoard files in the trial dirs: nothing reads them (the
    # results store and trackers.py replace them), and the TensorBoard one warns on every
    # acc_rows; result.json stays, added in _callbacks, for Tune's own ResultGrid
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"


def read_sweep_spec(sweep_uri: str) -> SweepSpec:
    """The validated spec a sweep was launched with."""
    spec = parse_spec(read_spec(sweep_uri), default_name=sweep_uri.rstrip("/").split("/")[-1])
    check_learners(spec)
    return spec


def _datasets(spec: SweepSpec) -> dict[str, Dataset]:
    """Every dataset the sweep's streams name, loaded once on the driver."""
    data = {}
    for stream in spec.stream_variants():
        config = stream_config(stream)
        if config.dataset not in data:
            data[config.dataset] = load_stream_dataset(config)
    return data


def _trainable(spec: SweepSpec, data: dict[str, Dataset]):
    from ray import tune

    from lifelab.trainables.registry import learner_class
    from lifelab.trainables.trainable import LearnerTrainable

    cpu, gpu = spec.resources["cpu"], spec.resources["gpu"]
    resources = {"cpu": cpu, "gpu": gpus_per_trial(cpu) if gpu == "auto" else gpu}
    # the classes resolved here travel with the trials: a learner registered only in this
    # process (lifelab.register_learner) works on every worker too
    learners = {name: learner_class(name) for name in spec.learner_names()}
    return tune.with_resources(tune.with_parameters(LearnerTrainable, data=data,
                                                    learners=learners), resources)


def _tuner(spec: SweepSpec, sweep_uri: str, data: dict[str, Dataset], reuse_actors: bool,
           progress_s: float, verbose: bool, lease: Lease | None = None):
    from ray import tune

    stop = {"training_iteration": spec.stop["rounds"]} if spec.stop.get("rounds") else None
    scheduler = build_scheduler(spec)
    callbacks = _callbacks(spec, sweep_uri, progress_s, lease, scheduler=scheduler)
    return tune.Tuner(
        _trainable(spec, data),
        param_space=param_space(spec),
        tune_config=tune.TuneConfig(
            metric=spec.search.metric, mode=spec.search.mode, num_samples=spec.search.samples,
            scheduler=scheduler, search_alg=build_searcher(spec),
            # PBT exploits without starting a new process
            reuse_actors=reuse_actors,
        ),
        run_config=tune.RunConfig(
            # our progress table replaces Tune's; a resume brings its own callbacks
            name=TUNE_DIR, storage_path=sweep_uri, stop=stop, verbose=1 if verbose else 0,
            callbacks=callbacks,
            # a checkpoint every round: resume loses at most one round; Tune keeps them all
            # and CheckpointRetention deletes those neither PBT nor a resume can still need
            checkpoint_config=tune.CheckpointConfig(checkpoint_frequency=1,
                                                    checkpoint_at_end=True),
            # a trial whose node is lost (preemption) continues from its last checkpoint
            failure_config=tune.FailureConfig(max_failures=MAX_FAILURES),
        ),
    )


def _callbacks(spec: SweepSpec, sweep_uri: str, progress_s: float, lease: Lease | None,
               *more, scheduler=None, resumed: bool = False) -> list:
    from ray.tune.logger import JsonLoggerCallback

    retry_worker_loss()
    retention = CheckpointRetention(scheduler, resumed=resumed)
    callbacks = [StateSigner(sweep_uri, TUNE_DIR), RecordingCallback(sweep_uri, spec.name),
                 StallGuard(spec), retention, *more]
    if lease is not None:
        callbacks.append(LeaseCallback(lease))
    callbacks += [JsonLoggerCallback(), *tracker_callbacks(spec, sweep_uri, progress_s > 0)]
    if progress_s > 0:
        callbacks.append(ProgressCallback(spec, progress_s, storage=retention))
    return callbacks


def _exists(fs: pafs.FileSystem, path: str) -> bool:
    try:
        return fs.get_file_info(path).type != pafs.FileType.NotFound
    except OSError as exc:
        raise StorageError(f"cannot read storage at {path} ({exc}): check the storage URI "
                           "and credentials") from None

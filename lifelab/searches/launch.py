"""Launch a sweep, or resume an interrupted one, on Ray Tune.

A sweep lives at <storage>/<name>: spec.yaml (the resolved spec; resume needs nothing else),
tune/ (Tune's experiment: state and checkpoints) and results/ (the Parquet store).
"""

from __future__ import annotations

import os

import pyarrow.fs as pafs
import yaml

from lifelab.errors import LifelabError, StorageError
from lifelab.platform.cluster import check_resources, connect, gpus_per_trial
from lifelab.platform.config import SweepSpec, parse_spec
from lifelab.platform.data import Dataset, load_stream_dataset
from lifelab.platform.store import SPEC_FILE, join, read_spec, resolve
from lifelab.platform.streams import StreamConfig, build_stream
from lifelab.searches.progress import DEFAULT_INTERVAL_S, ProgressCallback
from lifelab.searches.recording import RecordingCallback
from lifelab.searches.schedulers import build_scheduler, build_searcher
from lifelab.searches.space import param_space
from lifelab.searches.spec import check_learners

TUNE_DIR = "tune"
DEFAULT_STORAGE = "lifelab-sweeps"
# How often Tune saves the experiment state that resume starts from (its default is >= 10 s, so a
# driver killed early would restart every trial from scratch).
EXPERIMENT_STATE_PERIOD_S = "2"
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
    if _exists(fs, spec_path) or _exists(fs, join(path, TUNE_DIR)):
        raise StorageError(f"sweep '{spec.name}' already exists at {sweep_uri}: continue it with "
                           f"`lifelab resume {sweep_uri}` or choose another --name")
    data = _dataset(spec)                      # a missing dataset fails before anything is written
    for stream in (spec.search_stream(), spec.stream):   # e.g. more classes than the dataset has
        build_stream(StreamConfig.from_dict(stream), data)
    existed = _exists(fs, path)
    try:
        fs.create_dir(path, recursive=True)
    except OSError as exc:
        raise StorageError(f"cannot write to storage {sweep_uri} ({exc}): choose a writable "
                           "--storage") from None
    try:                                       # a cluster that cannot run it leaves nothing
        connect(address, code=spec.code)
        check_resources(spec.resources["cpu"], spec.resources["gpu"], address)
    except LifelabError:
        if not existed:
            fs.delete_dir(path)
        raise
    try:
        with fs.open_output_stream(spec_path + ".tmp") as out:
            out.write(yaml.safe_dump(spec.to_dict(), sort_keys=False).encode())
        fs.move(spec_path + ".tmp", spec_path)
    except OSError as exc:
        raise StorageError(f"cannot write to storage {sweep_uri} ({exc}): choose a writable "
                           "--storage") from None
    _tune_environment(verbose)
    return sweep_uri, _tuner(spec, sweep_uri, data, reuse_actors, progress_s, verbose).fit()


def resume_sweep(sweep_dir: str, address: str | None = None):
    """Continue an interrupted sweep from its trials' last checkpoints -> (uri, ResultGrid)."""
    from ray import tune

    sweep_uri = storage_uri(sweep_dir)
    spec = read_sweep_spec(sweep_uri)
    tune_uri = join(sweep_uri, TUNE_DIR)
    if not tune.Tuner.can_restore(tune_uri):
        raise StorageError(f"{sweep_uri} has no Tune experiment to resume (it never started): "
                           f"start it again with `lifelab sweep {join(sweep_uri, SPEC_FILE)}`")
    data = _dataset(spec)
    connect(address, code=spec.code)
    _tune_environment(verbose=False)
    tuner = tune.Tuner.restore(tune_uri, trainable=_trainable(spec, data), resume_errored=True)
    return sweep_uri, tuner.fit()


def _tune_environment(verbose: bool) -> None:
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", EXPERIMENT_STATE_PERIOD_S)
    if not verbose:
        # Tune's newer console output prints its banner even at verbose=0; the classic one
        # is silent there, and lifelab's progress table says what matters
        os.environ["RAY_AIR_NEW_OUTPUT"] = "0"


def read_sweep_spec(sweep_uri: str) -> SweepSpec:
    """The validated spec a sweep was launched with."""
    spec = parse_spec(read_spec(sweep_uri), default_name=sweep_uri.rstrip("/").split("/")[-1])
    check_learners(spec)
    return spec


def _dataset(spec: SweepSpec) -> Dataset:
    stream = StreamConfig.from_dict(spec.stream)
    return load_stream_dataset(stream)


def _trainable(spec: SweepSpec, data: Dataset):
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


def _tuner(spec: SweepSpec, sweep_uri: str, data: Dataset, reuse_actors: bool,
           progress_s: float, verbose: bool):
    from ray import tune

    stop = {"training_iteration": spec.stop["rounds"]} if spec.stop.get("rounds") else None
    callbacks = [RecordingCallback(sweep_uri, spec.name)]
    if progress_s > 0:
        callbacks.append(ProgressCallback(spec, progress_s))
    return tune.Tuner(
        _trainable(spec, data),
        param_space=param_space(spec),
        tune_config=tune.TuneConfig(
            metric=spec.search.metric, mode=spec.search.mode, num_samples=spec.search.samples,
            scheduler=build_scheduler(spec), search_alg=build_searcher(spec),
            # PBT exploits without starting a new process (ENVIRONMENT.md)
            reuse_actors=reuse_actors,
        ),
        run_config=tune.RunConfig(
            # our progress table replaces Tune's; a resumed sweep keeps the callbacks
            name=TUNE_DIR, storage_path=sweep_uri, stop=stop, verbose=1 if verbose else 0,
            callbacks=callbacks,
            # a checkpoint every round: resume loses at most one round, and PBT needs every
            # donor checkpoint to still exist (num_to_keep=2 made trials fail, ENVIRONMENT.md)
            checkpoint_config=tune.CheckpointConfig(checkpoint_frequency=1,
                                                    checkpoint_at_end=True),
            # a trial whose node is lost (preemption) continues from its last checkpoint
            failure_config=tune.FailureConfig(max_failures=MAX_FAILURES),
        ),
    )


def _exists(fs: pafs.FileSystem, path: str) -> bool:
    try:
        return fs.get_file_info(path).type != pafs.FileType.NotFound
    except OSError as exc:
        raise StorageError(f"cannot read storage at {path} ({exc}): check the storage URI "
                           "and credentials") from None

"""lifelab against plain Ray Tune at N trials x R rounds of a tiny learner, side by side.

    python benchmarks/scale.py [--sizes 50x20,200x50,1000x100] [--cpu 0.1] [--s3]
    python benchmarks/scale.py --status-only 1000x100

The learner is `finetune` with hidden [8] and one optimizer step per round (so what is measured
is the platform, not the learner), on a 2-task stream of the embedded MNIST-5k, one FIFO search
of N trials at `--cpu` CPUs each. "plain Tune" runs the same learner as a function trainable
with the same checkpointing (a checkpoint every round) and Tune's defaults otherwise.

Per size and system it prints: wall seconds, driver CPU seconds, results/s, the most part files
any results table had during the sweep and after it, checkpoint dirs and bytes on storage during
(most) and after, and the latency of `lifelab status` (the function, in a separate process so
the driver's CPU is not charged) during (max) and after. With --s3 the sweeps write to an S3
server (moto) on loopback and the table adds write requests (PUT and POST) per reported result:
the results store's, and everything's (Tune's state and checkpoints included).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

COLUMNS = ("system", "trials", "rounds", "wall_s", "driver_cpu_s", "results_per_s",
           "parts_max", "parts_after", "ckpt_dirs_max", "ckpt_dirs_after", "ckpt_mb_after",
           "status_s_max", "status_s_after", "puts_store", "puts_all")


def tiny_config(rounds: int) -> dict:
    return {"stream": {"tasks": 2, "steps_per_task": max(1, rounds // 2)},
            "hidden": [8], "steps_per_round": 1, "lr": 1e-3, "batch_size": 32}


def run_lifelab(storage: str, trials: int, rounds: int, cpu: float) -> str:
    from lifelab.searches.launch import run_sweep
    from lifelab.searches.spec import spec_from_dict

    config = tiny_config(rounds)
    spec = spec_from_dict({
        "name": "scale", "learner": "finetune", "stream": config.pop("stream"),
        "config": {**config, "lr": {"loguniform": [1e-4, 1e-2]}},
        "search": {"scheduler": "fifo", "samples": trials}, "stop": {"rounds": rounds},
        "resources": {"cpu": cpu}})
    uri, _ = run_sweep(spec, storage=storage, progress_s=0)
    return uri


def plain_trainable(config: dict, data=None) -> None:
    import torch
    from ray import tune

    from lifelab.learners.baselines import Finetune

    torch.set_num_threads(1)
    learner = Finetune({k: v for k, v in config.items() if k != "rounds"}, data=data)
    start = 0
    if (checkpoint := tune.get_checkpoint()) is not None:
        with checkpoint.as_directory() as d:
            saved = torch.load(os.path.join(d, "learner.pt"), weights_only=True)
        learner.load_state_dict(saved["learner"])
        start = saved["iteration"]
    for it in range(start, config["rounds"]):
        metrics = learner.step_round()
        with tempfile.TemporaryDirectory() as d:
            torch.save({"learner": learner.state_dict(), "iteration": it + 1},
                       os.path.join(d, "learner.pt"))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))


def run_plain(storage: str, trials: int, rounds: int, cpu: float) -> str:
    import ray
    from ray import tune

    from lifelab.platform.cluster import connect
    from lifelab.platform.data import load_dataset

    connect(None)
    config = {**tiny_config(rounds), "rounds": rounds,
              "lr": tune.loguniform(1e-4, 1e-2)}
    trainable = tune.with_resources(
        tune.with_parameters(plain_trainable, data=load_dataset("mnist5k")), {"cpu": cpu})
    tune.Tuner(trainable, param_space=config,
               tune_config=tune.TuneConfig(num_samples=trials, reuse_actors=True),
               run_config=tune.RunConfig(name="tune", storage_path=f"{storage}/plain",
                                         verbose=0)).fit()
    ray.shutdown()
    return f"{storage}/plain"


def watch(sweep_uri: str, stop, out) -> None:
    """In its own process: the most part files per table, checkpoint dirs and status latency
    seen while the sweep runs."""
    from lifelab.analysis.status import sweep_status
    from lifelab.platform.store import SCHEMAS, ResultStore, join, resolve

    fs, root = resolve(sweep_uri)
    store = ResultStore(sweep_uri)
    seen = {"parts_max": 0, "ckpt_dirs_max": 0, "status_s_max": 0.0}
    while not stop.is_set():
        try:
            seen["parts_max"] = max(seen["parts_max"],
                                    max(len(store.parts(t)) for t in SCHEMAS))
            seen["ckpt_dirs_max"] = max(seen["ckpt_dirs_max"], len(checkpoints(fs, join(root,
                                                                                       "tune"))))
            if store.parts("metrics"):
                start = time.perf_counter()
                sweep_status(sweep_uri)
                seen["status_s_max"] = max(seen["status_s_max"], time.perf_counter() - start)
        except Exception:          # the sweep dir is being created or moved under us
            pass
        stop.wait(2.0)
    out.put(seen)


def checkpoints(fs, tune_dir: str) -> list:
    import pyarrow.fs as pafs

    infos = fs.get_file_info(pafs.FileSelector(tune_dir, recursive=True, allow_not_found=True))
    return [i for i in infos if i.type == pafs.FileType.Directory
            and i.base_name.startswith("checkpoint_")]


def storage_mb(fs, tune_dir: str) -> float:
    import pyarrow.fs as pafs

    infos = fs.get_file_info(pafs.FileSelector(tune_dir, recursive=True, allow_not_found=True))
    return sum(i.size or 0 for i in infos if i.type == pafs.FileType.File
               and "/checkpoint_" in i.path) / 2**20


def measure(system: str, storage: str, trials: int, rounds: int, cpu: float, puts) -> dict:
    from lifelab.analysis.status import sweep_status
    from lifelab.platform.store import SCHEMAS, ResultStore, join, resolve

    sweep_uri = f"{storage}/scale" if system == "lifelab" else f"{storage}/plain"
    ctx = mp.get_context("spawn")
    stop, out = ctx.Event(), ctx.Queue()
    watcher = ctx.Process(target=watch, args=(sweep_uri, stop, out), daemon=True)
    if system == "lifelab":
        watcher.start()
    before = resource.getrusage(resource.RUSAGE_SELF)
    puts_before = puts() if puts else None
    start = time.perf_counter()
    (run_lifelab if system == "lifelab" else run_plain)(storage, trials, rounds, cpu)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    row = {"system": system, "trials": trials, "rounds": rounds, "wall_s": wall,
           "driver_cpu_s": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
           "results_per_s": trials * rounds / wall}
    if puts:
        store_puts, all_puts = (a - b for a, b in zip(puts(), puts_before, strict=True))
        row.update(puts_store=store_puts / (trials * rounds), puts_all=all_puts / (trials * rounds))
    fs, root = resolve(sweep_uri)
    tune_dir = join(root, "tune") if system == "lifelab" else root
    row.update(ckpt_dirs_after=len(checkpoints(fs, tune_dir)),
               ckpt_mb_after=storage_mb(fs, tune_dir))
    if system == "lifelab":
        stop.set()
        row.update(out.get(timeout=60))
        watcher.join()
        store = ResultStore(sweep_uri)
        row["parts_after"] = max(len(store.parts(t)) for t in SCHEMAS)
        start = time.perf_counter()
        sweep_status(sweep_uri)
        row["status_s_after"] = time.perf_counter() - start
    return row


def moto_server(port: int, counts, ready) -> None:
    """An S3 server on loopback counting write requests (PUT and POST: a multipart upload is
    three, all billed as PUTs), to the results store and in all."""
    import logging

    from moto.s3.responses import S3Response
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    original = S3Response._key_response

    def counting(self, request, full_url):
        if request.method in ("PUT", "POST"):
            counts[1] += 1
            if "/results/" in full_url:
                counts[0] += 1
        return original(self, request, full_url)
    S3Response._key_response = counting
    ThreadedMotoServer(ip_address="127.0.0.1", port=port).start()
    ready.set()
    while True:
        time.sleep(3600)


def start_s3():
    import socket

    import pyarrow.fs as pafs

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    counts, ready = ctx.Array("l", 2), ctx.Event()
    ctx.Process(target=moto_server, args=(port, counts, ready), daemon=True).start()
    ready.wait(60)
    os.environ.update({"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
                       "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                       "AWS_DEFAULT_REGION": "us-east-1"})
    pafs.S3FileSystem(endpoint_override=f"http://127.0.0.1:{port}", scheme="http",
                      access_key="bench", secret_key="bench", region="us-east-1",
                      allow_bucket_creation=True).create_dir("scale-bench")
    return "s3://scale-bench", lambda: (counts[0], counts[1])


def synthetic_status(trials: int, rounds: int, parts: int = 8) -> list[float]:
    """Seconds of three `lifelab status` calls on a store of trials x rounds results of 15 metrics
    each, in `parts` parts (as merging leaves a big sweep's table): status alone, no sweep."""
    import numpy as np
    import pyarrow as pa
    import yaml

    from lifelab.analysis.status import sweep_status
    from lifelab.platform.store import SCHEMAS, SPEC_FILE, ResultStore

    root = tempfile.mkdtemp(prefix="ll-status-", dir="/tmp")
    Path(root, SPEC_FILE).write_text(yaml.safe_dump({"name": "big", "search": {}}))
    store = ResultStore(root, run=1)
    names = ["val_acc_avg", "acc_avg", "round_s", "train_loss", "bwt", "val_bwt", "forgetting",
             "val_forgetting", "tasks_seen", "acc_avg_til", "val_acc_avg_til", "lr", "a", "b", "c"]
    ids = [f"t{i:05d}" for i in range(trials)]
    for chunk in np.array_split(np.arange(1, rounds + 1), parts):
        n = trials * len(chunk) * len(names)
        its = np.tile(np.repeat(chunk, len(names)), trials)
        store.write_part("metrics", pa.table({
            "sweep": ["big"] * n, "trial_id": np.repeat(ids, len(chunk) * len(names)),
            "iteration": its, "time_s": its.astype(float),
            "name": np.tile(names, trials * len(chunk)), "value": np.random.rand(n),
            "run": np.ones(n, dtype=np.int64)}, schema=SCHEMAS["metrics"]))
    store.write_part("trials", pa.Table.from_pylist(
        [{"sweep": "big", "trial_id": i, "status": "RUNNING", "run": 1} for i in ids],
        schema=SCHEMAS["trials"]))
    seconds = []
    for _ in range(3):
        start = time.perf_counter()
        sweep_status(root)
        seconds.append(time.perf_counter() - start)
    shutil.rmtree(root, ignore_errors=True)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="50x20,200x50",
                        help="comma-separated TRIALSxROUNDS (add 1000x100: it takes a while)")
    parser.add_argument("--cpu", type=float, default=0.1, help="CPUs per trial")
    parser.add_argument("--s3", action="store_true", help="storage: moto S3 on loopback")
    parser.add_argument("--systems", default="plain,lifelab")
    parser.add_argument("--status-only", metavar="TRIALSxROUNDS",
                        help="time `lifelab status` on a synthetic store of that size, no sweep")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if args.status_only:
        trials, rounds = (int(v) for v in args.status_only.lower().split("x"))
        seconds = synthetic_status(trials, rounds)
        print(f"lifelab status, {trials} trials x {rounds} rounds x 15 metrics in 8 parts: "
              + ", ".join(f"{s:.2f} s" for s in seconds))
        return
    base, puts = start_s3() if args.s3 else (None, None)
    rows = []
    for size in args.sizes.split(","):
        trials, rounds = (int(v) for v in size.lower().split("x"))
        for system in args.systems.split(","):
            local = tempfile.mkdtemp(prefix="ll-scale-", dir="/tmp")
            storage = f"{base}/{Path(local).name}" if base else local
            rows.append(measure(system, storage, trials, rounds, args.cpu, puts))
            shutil.rmtree(local, ignore_errors=True)
            print_table(rows)


def print_table(rows: list[dict]) -> None:
    print()
    print(" | ".join(COLUMNS))
    print(" | ".join("---" for _ in COLUMNS))
    for row in rows:
        print(" | ".join(_fmt(row.get(c, "")) for c in COLUMNS))
    by = {(r["trials"], r["rounds"], r["system"]): r for r in rows}
    for (n, r, system), row in by.items():
        plain = by.get((n, r, "plain"))
        if system == "lifelab" and plain:
            print(f"{n}x{r}: lifelab wall / plain Tune wall = "
                  f"{row['wall_s'] / plain['wall_s']:.2f}, driver CPU ratio = "
                  f"{row['driver_cpu_s'] / plain['driver_cpu_s']:.2f}")


def _fmt(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


if __name__ == "__main__":
    main()

"""Sweep specs: load from YAML (file or preset text), validate every field, one clear error each.

This module checks the spec's own shape; what a learner accepts is checked by the learner's
`validate_config`, which `lifelab.searches.spec` calls before Ray starts.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lifelab.errors import ConfigError
from lifelab.platform.checks import check_keys, check_value
from lifelab.platform.yamlsafe import check_depth, load_yaml

SCHEDULERS = ("fifo", "pbt", "pb2", "asha")
POPULATION_SCHEDULERS = ("pbt", "pb2")   # exploit/explore with mutations
SEARCHERS = ("random", "optuna", "grid")
# experiment trackers (lifelab/searches/trackers.py) and the package each one imports
LOGGER_PACKAGES = {"tensorboard": "tensorboardX", "mlflow": "mlflow", "wandb": "wandb"}
LOGGERS = tuple(LOGGER_PACKAGES)
DEFAULT_LOGGERS = ("tensorboard",)
DISTRIBUTIONS = ("choice", "grid", "uniform", "loguniform", "randint")
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")   # fullmatch: no path, no newline
MAX_SAMPLES = 10_000      # trials a sweep may ask for (each one is an actor and a checkpoint)
MAX_SEED = 2**62          # seeds of trials (seed + index) stay within torch's 64-bit range
MAX_VARIANTS = 256        # concrete streams one sweep may span


@dataclass(frozen=True)
class SearchSettings:
    scheduler: str = "fifo"
    searcher: str = "random"
    metric: str = "val_acc_avg"       # selection on validation data (val_<metric>)
    mode: str = "max"
    select_on_test: bool = False       # explicit opt-in to select on a test metric
    samples: int = 1
    # pbt
    perturbation_interval: int = 1
    quantile_fraction: float = 0.25
    resample_probability: float = 0.25
    mutations: dict = field(default_factory=dict)
    group_by: str | None = "learner"   # PBT exploits only within a group (e.g. per learner)
    synch: bool = False                # PBT waits for the whole population at each perturbation
    # asha
    grace_period: int = 1
    reduction_factor: float = 2.0


@dataclass(frozen=True)
class SweepSpec:
    name: str
    learner: Any                        # a name, or {choice: [...]} / {grid: [...]}
    stream: dict
    config: dict                        # constants and distributions
    search: SearchSettings
    stop: dict                          # {rounds: N}; empty = until every learner is done
    resources: dict                     # {cpu: float, gpu: float | "auto"}
    seed: Any = 0                       # an int, or {choice|grid: [ints]}
    code: list = field(default_factory=list)   # local package folders shipped to the workers
    # tuning protocol: {kind: validation} or {kind: first_tasks, k: K, seed: S | null}
    protocol: dict = field(default_factory=lambda: {"kind": "validation"})
    final: dict = field(default_factory=dict)  # {seeds: N}: evaluate the selection at the end
    schedule: list = field(default_factory=list)   # [[iteration, {key: value}], ...] to replay
    evaluates: dict = field(default_factory=dict)  # what an evaluation sweep re-runs (provenance)
    loggers: list = field(default_factory=lambda: list(DEFAULT_LOGGERS))   # experiment trackers

    def stream_variants(self) -> list[dict]:
        """Every concrete evaluation and search stream a trial can get."""
        return [*stream_variants(self.stream), *stream_variants(self.search_stream())]

    def seeds(self) -> list[int]:
        """The sweep's seed, or each seed of a {choice|grid: [...]} over seeds."""
        return list(next(iter(self.seed.values()))) if is_distribution(self.seed) else [self.seed]

    def search_stream(self) -> dict:
        """The stream the search runs on: the evaluation stream, or under protocol first_tasks
        its first k tasks (of the same stream, or of one drawn with another seed)."""
        if self.protocol.get("kind") != "first_tasks":
            return dict(self.stream)
        seed = self.protocol.get("seed")
        return {**self.stream, "tasks": self.protocol["k"],
                **({"seed": seed} if seed is not None else {})}

    def to_dict(self) -> dict:
        return asdict(self)

    def learner_names(self) -> list[str]:
        if isinstance(self.learner, dict):
            return list(next(iter(self.learner.values())))
        return [self.learner]


SPEC_KEYS = ("name", "learner", "stream", "config", "search", "stop", "resources", "seed",
             "code", "protocol", "final", "schedule", "evaluates", "loggers")
PROTOCOLS = ("validation", "first_tasks")
SEARCH_KEYS = tuple(SearchSettings.__dataclass_fields__)


def read_yaml(path: str | Path) -> dict:
    """Parse a YAML spec file; a missing or malformed file is a ConfigError."""
    path = Path(path)
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "does not exist"
        raise ConfigError(f"spec file {path} {what}: give a preset name "
                          "(see `lifelab list`) or the path of a YAML spec")
    try:
        data = load_yaml(path.read_text())
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}" if where else ""
        raise ConfigError(f"spec file {path} is not valid YAML{at}: fix the syntax") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError(f"spec file {path} cannot be read ({reason}): give a readable "
                          "UTF-8 YAML file") from None
    if not isinstance(data, dict):
        raise ConfigError(f"spec file {path} must be a YAML mapping with keys "
                          f"{', '.join(SPEC_KEYS)}")
    return data


def parse_spec(data: dict, default_name: str) -> SweepSpec:
    """Validate a spec mapping and return it as a SweepSpec."""
    if not isinstance(data, dict):
        raise ConfigError(f"a spec must be a mapping with keys {', '.join(SPEC_KEYS)}, "
                          f"got {type(data).__name__}")
    check_depth(data)
    _no_unknown("spec", data, SPEC_KEYS)
    if "learner" not in data:
        raise ConfigError("spec has no 'learner': name one (see `lifelab list`) "
                          "or give {choice: [...]}")
    name = data.get("name", default_name)
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name) or name in (".", ".."):
        raise ConfigError(f"name {name!r} is not a valid sweep name: use up to 100 letters, "
                          "digits, '-', '_' or '.', starting with a letter or digit")
    learner = data["learner"]
    if isinstance(learner, dict):
        check_distribution("learner", learner, allowed=("choice", "grid"))
    elif not isinstance(learner, str):
        raise ConfigError("learner must be a name or {choice: [names]}, "
                          f"got {type(learner).__name__}")
    stream = _mapping("stream", data.get("stream", {}))
    for key, value in stream.items():             # a sweep may span streams and scenarios
        if is_distribution(value):
            check_distribution(f"stream.{key}", value, allowed=("choice", "grid"))
    if len(stream_variants(stream)) > MAX_VARIANTS:
        raise ConfigError(f"stream spans more than {MAX_VARIANTS} combinations: search fewer "
                          "stream values at once")
    config = _mapping("config", data.get("config", {}))
    for key, value in config.items():
        if not isinstance(key, str):
            raise ConfigError(f"config key {key!r} must be a string")
        if key in ("learner", "stream", "seed"):   # every trial gets the spec's own
            raise ConfigError(f"config.{key} would be ignored: set it at the top level of the "
                              f"spec ({key}: ...), not under config")
        if is_distribution(value):
            check_distribution(f"config.{key}", value)
    search = _search(_mapping("search", data.get("search", {})))
    stop = _mapping("stop", data.get("stop", {}))
    _no_unknown("stop", stop, ("rounds",))
    if "rounds" in stop:
        _positive_int("stop.rounds", stop["rounds"])
    resources = {"cpu": 1, "gpu": 0, **_mapping("resources", data.get("resources", {}))}
    _no_unknown("resources", resources, ("cpu", "gpu"))
    _number("resources.cpu", resources["cpu"], low=0, strict=True)
    if resources["gpu"] != "auto":
        _number("resources.gpu", resources["gpu"], low=0)
    seed = data.get("seed", 0)
    if is_distribution(seed):                     # independent runs over seeds in one sweep
        check_distribution("seed", seed, allowed=("choice", "grid"))
        for value in next(iter(seed.values())):
            _int("seed", value, low=0, high=MAX_SEED)
    else:
        _int("seed", seed, low=0, high=MAX_SEED)
    grids = [f"config.{k}" for k, v in config.items() if is_distribution(v) and "grid" in v]
    grids += ["learner"] if isinstance(learner, dict) and "grid" in learner else []
    grids += [f"stream.{k}" for k, v in stream.items() if is_distribution(v) and "grid" in v]
    grids += ["seed"] if is_distribution(seed) and "grid" in seed else []
    if search.searcher == "optuna" and grids:
        raise ConfigError(f"search.searcher optuna cannot take grid ({', '.join(grids)}): "
                          "use {choice: [...]} instead")
    if search.searcher == "grid":
        for key, value in config.items():
            if is_distribution(value) and next(iter(value)) not in ("grid", "choice"):
                raise ConfigError(f"config.{key}: search.searcher grid enumerates values: give "
                                  "{grid: [...]} or {choice: [...]}, or use searcher random")
    if search.scheduler in (*POPULATION_SCHEDULERS, "asha") and not stop.get("rounds"):
        raise ConfigError(f"search.scheduler {search.scheduler} needs stop.rounds: "
                          "set stop: {rounds: N}")
    code = data.get("code") or []
    if not isinstance(code, list) or not all(isinstance(p, str) and p for p in code):
        raise ConfigError("code must be a list of package folders, e.g. code: [./my_package]")
    return SweepSpec(name=name, learner=learner, stream=stream, config=config, search=search,
                     stop=stop, resources=resources, seed=seed, code=code,
                     protocol=_protocol(data.get("protocol"), stream), final=_final(data),
                     schedule=_schedule(data.get("schedule")),
                     evaluates=_mapping("evaluates", data.get("evaluates")),
                     loggers=check_loggers(data.get("loggers", list(DEFAULT_LOGGERS))))


def check_loggers(loggers: Any) -> list[str]:
    """A list of known trackers (duplicates dropped), each with its package installed; checked
    before Ray starts, like everything in a spec."""
    import importlib.util

    if not isinstance(loggers, list) or not all(isinstance(n, str) for n in loggers):
        raise ConfigError(f"loggers must be a list of tracker names ({', '.join(LOGGERS)}), "
                          f"got {loggers!r}")
    for name in loggers:
        _one_of("loggers:", name, LOGGERS)
        package = LOGGER_PACKAGES[name]
        if importlib.util.find_spec(package) is None:
            how = "pip install tensorboardX" if name == "tensorboard" else \
                "pip install 'lifelab[trackers]'"
            raise ConfigError(f"logger {name} needs the package {package}, which is not "
                              f"installed: {how}")
    return list(dict.fromkeys(loggers))


def stream_variants(stream: dict) -> list[dict]:
    """`stream` with each {choice|grid: [...]} value enumerated: every concrete stream."""
    keys = [k for k, v in stream.items() if is_distribution(v)]
    values = [next(iter(stream[k].values())) for k in keys]
    return [{**stream, **dict(zip(keys, combo, strict=True))}
            for combo in itertools.product(*values)]


def _protocol(value: Any, stream: dict) -> dict:
    protocol = {"kind": value} if isinstance(value, str) else _mapping("protocol", value)
    protocol = {"kind": "validation", **protocol}
    _one_of("protocol.kind", protocol["kind"], PROTOCOLS)
    if protocol["kind"] == "validation":
        _no_unknown("protocol", protocol, ("kind",))
        return protocol
    _no_unknown("protocol", protocol, ("kind", "k", "seed"))
    if "k" not in protocol:
        raise ConfigError("protocol first_tasks needs k, the number of tasks to tune on: "
                          "e.g. protocol: {kind: first_tasks, k: 3}")
    _positive_int("protocol.k", protocol["k"])
    tasks = stream.get("tasks", 5)
    if isinstance(tasks, int) and protocol["k"] >= tasks:
        raise ConfigError(f"protocol.k must be below stream.tasks ({tasks}): the evaluation "
                          "stream must be longer than the tuning stream")
    protocol.setdefault("seed", None)
    if protocol["seed"] is not None:
        _int("protocol.seed", protocol["seed"], low=0)
    return protocol


def _final(data: dict) -> dict:
    final = _mapping("final", data.get("final"))
    _no_unknown("final", final, ("seeds",))
    if final:
        _positive_int("final.seeds", final.get("seeds"))
        if final["seeds"] > 100:
            raise ConfigError("final.seeds must be at most 100")
    return final


def _schedule(value: Any) -> list:
    """[[iteration, {key: value}], ...] with strictly increasing iterations from 1."""
    schedule = value or []
    if not isinstance(schedule, list):
        raise ConfigError("schedule must be a list of [iteration, {key: value}] pairs")
    last = 0
    for entry in schedule:
        if not (isinstance(entry, (list, tuple)) and len(entry) == 2
                and isinstance(entry[0], int) and not isinstance(entry[0], bool)
                and isinstance(entry[1], dict) and entry[0] > last):
            raise ConfigError(f"schedule entry {entry!r} must be [iteration, {{key: value}}] "
                              "with iterations increasing from 1")
        last = entry[0]
    return [[int(it), dict(changes)] for it, changes in schedule]


def _search(data: dict) -> SearchSettings:
    _no_unknown("search", data, SEARCH_KEYS)
    search = SearchSettings(**data)
    _one_of("search.scheduler", search.scheduler, SCHEDULERS)
    _one_of("search.searcher", search.searcher, SEARCHERS)
    _one_of("search.mode", search.mode, ("max", "min"))
    if not isinstance(search.metric, str) or not search.metric:
        raise ConfigError("search.metric must be a metric name such as val_acc_avg")
    _positive_int("search.samples", search.samples)
    if search.samples > MAX_SAMPLES:
        raise ConfigError(f"search.samples {search.samples} is more than {MAX_SAMPLES} trials: "
                          "lower it (or run several sweeps)")
    _positive_int("search.perturbation_interval", search.perturbation_interval)
    _positive_int("search.grace_period", search.grace_period)
    _number("search.quantile_fraction", search.quantile_fraction, low=0, high=0.5, strict=True)
    _number("search.resample_probability", search.resample_probability, low=0, high=1)
    _number("search.reduction_factor", search.reduction_factor, low=1, strict=True)
    mutations = _mapping("search.mutations", search.mutations)
    scheduler = search.scheduler
    check_value("search.select_on_test", search.select_on_test, bool)
    check_value("search.synch", search.synch, bool)
    if search.synch and scheduler not in POPULATION_SCHEDULERS:
        raise ConfigError("search.synch is only used by schedulers pbt and pb2: remove it or "
                          "set search.scheduler: pbt")
    if scheduler in POPULATION_SCHEDULERS:
        if not mutations:
            raise ConfigError(f"search.scheduler {scheduler} needs search.mutations: name at "
                              "least one config key to mutate, e.g. lr: {loguniform: [1e-4, 1e-1]}")
        if search.searcher not in ("random", "grid"):
            raise ConfigError(f"search.scheduler {scheduler} samples its own population: "
                              "set search.searcher: random")
    elif mutations:
        raise ConfigError("search.mutations is only used by schedulers pbt and pb2: "
                          "remove it or set search.scheduler: pbt")
    if scheduler == "pb2":
        for key, value in mutations.items():
            if not (is_distribution(value) and "uniform" in value):
                raise ConfigError(f"search.mutations.{key}: pb2 models continuous bounds only: "
                                  "give {uniform: [low, high]} (ladders and categorical values "
                                  "need scheduler pbt)")
    for key, value in mutations.items():
        where = f"search.mutations.{key}"
        if isinstance(value, list):
            if not value:
                raise ConfigError(f"{where} is an empty list: give at least one value")
        else:
            check_distribution(where, value, allowed=("choice", "uniform", "loguniform",
                                                      "randint"))
    return search


def is_distribution(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and next(iter(value)) in DISTRIBUTIONS


def check_distribution(where: str, value: Any, allowed: tuple[str, ...] = DISTRIBUTIONS) -> None:
    """A distribution is {kind: args}: choice/grid take a non-empty list, the others [low, high]."""
    if not is_distribution(value) or next(iter(value)) not in allowed:
        raise ConfigError(f"{where} must be one of {{{': ..., '.join(allowed)}: ...}}, "
                          f"got {value!r}")
    kind, args = next(iter(value.items()))
    if kind in ("choice", "grid"):
        if not isinstance(args, list) or not args:
            raise ConfigError(f"{where} is an empty search space: give {kind} a non-empty list")
        return
    if not (isinstance(args, list) and len(args) == 2
            and all(_is_number(a) for a in args)):
        raise ConfigError(f"{where}: {kind} takes [low, high] numbers, got {args!r}")
    low, high = args
    if not low < high:
        raise ConfigError(f"{where}: {kind} needs low < high, got [{low}, {high}]")
    if kind == "loguniform" and low <= 0:
        raise ConfigError(f"{where}: loguniform needs low > 0, got {low}")
    if kind == "randint" and not all(isinstance(a, int) for a in args):
        raise ConfigError(f"{where}: randint takes integer bounds, got {args!r}")


def representative_values(value: Any) -> list:
    """Values a distribution can produce at its edges, for checking against a learner's config."""
    if isinstance(value, list) and value and not is_distribution(value):
        return [value]
    if not is_distribution(value):
        return [value]
    kind, args = next(iter(value.items()))
    if kind in ("choice", "grid"):
        return list(args)
    if kind == "randint":
        return [args[0], args[1] - 1]   # Tune's randint excludes the upper bound
    return [float(args[0]), float(args[1])]


def _mapping(where: str, value: Any) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a mapping, got {type(value).__name__}")
    return value


def _no_unknown(where: str, data: dict, known: tuple[str, ...]) -> None:
    check_keys(data, known, f"{where}.{{key}} is not a known key")


def _one_of(where: str, value: Any, options: tuple[str, ...]) -> None:
    check_value(where, value, str, choices=options)


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def _number(where: str, value: Any, low: float | None = None, high: float | None = None,
            strict: bool = False) -> None:
    check_value(where, value, float, None if strict else low, high,
                above=low if strict else None)


def _int(where: str, value: Any, low: int, high: int | None = None) -> None:
    check_value(where, value, int, low, high)


def _positive_int(where: str, value: Any) -> None:
    _int(where, value, low=1)

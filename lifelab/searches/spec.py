"""Resolve what the user named (a preset or a YAML file) into a fully validated SweepSpec.

Validation is complete before Ray starts: the spec's shape (platform/config.py), every learner
name, and every config value a trial could receive (constants, the edges of each distribution,
each mutation), checked by the learner class itself.
"""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path

from lifelab.errors import ConfigError
from lifelab.platform.config import (
    SweepSpec,
    is_distribution,
    parse_spec,
    read_yaml,
    representative_values,
)
from lifelab.platform.yamlsafe import load_yaml
from lifelab.trainables.registry import learner_class

TRAINABLE_METRICS = ("round_s",)


def preset_names() -> list[str]:
    folder = resources.files("lifelab.searches") / "presets"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_spec(source: str, name: str | None = None, samples: int | None = None,
              seed: int | None = None) -> SweepSpec:
    """A preset name or a YAML path -> a validated spec, with CLI overrides applied."""
    if source in preset_names():
        text = (resources.files("lifelab.searches") / "presets" / f"{source}.yaml").read_text()
        data, default_name = load_yaml(text), source
    elif source.endswith((".yaml", ".yml")) or Path(source).exists():
        data, default_name = read_yaml(source), Path(source).stem
        data = with_absolute_code(data, Path(source).resolve().parent)
    else:
        raise ConfigError(f"'{source}' is neither a preset nor a spec file: use one of "
                          f"{', '.join(preset_names())} or the path of a YAML spec")
    if name is not None:
        data = {**data, "name": name}
    if seed is not None:
        data = {**data, "seed": seed}
    if samples is not None and isinstance(data.get("search") or {}, dict):
        # (a non-mapping `search` is left for parse_spec to report)
        data = {**data, "search": {**(data.get("search") or {}), "samples": samples}}
    spec = parse_spec(data, default_name)
    check_learners(spec)
    return spec


def spec_from_dict(data: dict, default_name: str = "sweep") -> SweepSpec:
    """The Python API's way in: the same checks as a YAML spec (`code` relative to the
    current directory)."""
    spec = parse_spec(with_absolute_code(data, Path.cwd()), default_name)
    check_learners(spec)
    return spec


def with_absolute_code(data: dict, base: Path) -> dict:
    """`code` folders relative to `base` (a spec file's folder) made absolute: spec.yaml records
    them so, and a resume from another directory finds them."""
    code = data.get("code") if isinstance(data, dict) else None
    if not isinstance(code, list) or not all(isinstance(p, str) and p for p in code):
        return data                                 # (parse_spec reports the bad shape)
    return {**data, "code": [str((base / Path(p).expanduser()).resolve()) for p in code]}


def import_code(folders: list[str]) -> None:
    """Make the spec's `code` packages importable here, as Ray will make them on the workers
    (each folder is a package: `code: [src/my_pkg]` gives `import my_pkg`)."""
    for folder in folders:
        path = Path(folder)
        if not path.is_dir():
            raise ConfigError(f"code folder {folder} does not exist: give the folder of a Python "
                              "package (the one holding its __init__.py)")
        if str(path.parent) not in sys.path:
            sys.path.insert(0, str(path.parent))


def check_learners(spec: SweepSpec) -> None:
    """Every learner exists, accepts every value a trial could get, and reports the metric.

    In a sweep over several learners, each trial gets only the config keys its learner has, so
    a key must belong to at least one of them (e.g. ewc's `lambda` beside si's `c`).
    """
    classes = {}
    import_code(spec.code)
    for learner in spec.learner_names():
        if not isinstance(learner, str):
            raise ConfigError(f"learner {learner!r} must be a learner name or 'module:Class'")
        classes[learner] = learner_class(learner)
    known = sorted({key for cls in classes.values() for key in cls.params})
    scheduled = {k: v for _, changes in spec.schedule for k, v in changes.items()}
    for where, keys in (("config", spec.config), ("search.mutations", spec.search.mutations),
                        ("schedule", scheduled)):
        for key in keys:
            if key not in known:
                raise ConfigError(f"{where}.{key} is not a config key of learner "
                                  f"{' or '.join(classes)}: use one of {', '.join(known)}")
    constants = {k: v for k, v in spec.config.items() if not is_distribution(v)}
    # (where, key, values): the edges of each config distribution, and every mutation value
    # (a mutation list is a ladder of values; it is checked even where config.<key> varies too)
    varying = [(f"config.{k}", k, representative_values(v))
               for k, v in spec.config.items() if is_distribution(v)]
    varying += [(f"search.mutations.{k}", k, list(v) if isinstance(v, list)
                 else representative_values(v)) for k, v in spec.search.mutations.items()]
    varying += [(f"schedule.{it}.{k}", k, [v]) for it, changes in spec.schedule
                for k, v in changes.items()]
    for learner, cls in classes.items():
        variants = spec.stream_variants()
        for stream in variants:                     # stream errors name stream.<key> themselves
            cls.validate_config({"stream": stream, "seed": spec.seeds()[0]})
        common = {"stream": variants[0], "seed": spec.seeds()[0]}
        own = {k: v for k, v in constants.items() if k in cls.params}
        for key, value in own.items():
            _validate(cls, f"config.{key}", {**common, key: value})
        base = {**own, **common}
        cls.validate_config(base)
        for where, key, values in varying:
            for candidate in values if key in cls.params else ():
                _validate(cls, where, {**base, key: candidate})
        reported = (*cls.metrics, *TRAINABLE_METRICS)
        if spec.search.metric not in reported:
            raise ConfigError(f"search.metric '{spec.search.metric}' is not reported by learner "
                              f"'{learner}': use one of {', '.join(reported)}")
        if spec.search.metric in cls.partial_metrics:
            raise ConfigError(f"search.metric '{spec.search.metric}' is reported by learner "
                              f"'{learner}' only from its second finished task, but a search "
                              "compares every round: select on val_acc_avg (and read "
                              f"{spec.search.metric} in the report)")
        check_selection(spec, cls, reported)
        for key, value in spec.search.mutations.items():
            if key in cls.params:
                values = list(value) if isinstance(value, list) else representative_values(value)
                cls.check_mutation(key, values)
        for key in scheduled:
            if key in cls.params:
                cls.check_mutation(key, [own.get(key, cls.params[key].default),
                                         *(c[key] for _, c in spec.schedule if key in c)])


def check_selection(spec: SweepSpec, cls: type, reported: tuple[str, ...]) -> None:
    """Searches select on validation data: a metric with a `val_` twin is a test metric, refused
    unless the spec opts in (search.select_on_test), and a `val_` metric needs a validation
    split."""
    metric = spec.search.metric
    if f"val_{metric}" in reported and not spec.search.select_on_test:
        raise ConfigError(f"search.metric '{metric}' is scored on test data: select on "
                          f"'val_{metric}' (validation data), or set search.select_on_test: true "
                          "to select on test data knowingly")
    streams = [cls.validate_stream(s) for s in spec.stream_variants()]
    if metric.startswith("val_") and any(getattr(s, "validation", 1) == 0 for s in streams):
        raise ConfigError(f"search.metric '{metric}' needs a validation split, but "
                          "stream.validation is 0: set stream.validation (e.g. 0.1)")


def _validate(cls: type, where: str, config: dict) -> None:
    """The learner's own check, its message prefixed with the spec field the value came from."""
    try:
        cls.validate_config(config)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None

"""Learner names -> classes, by one mechanism for built-in and outside learners alike.

A spec's `learner` is resolved, in this order, as
  - a name given to `register_learner(name, cls)` in this process,
  - `package.module:Class` (importable where the driver runs; on the workers through an
    installed package or the spec's `code: [path]`),
  - a name in the `lifelab.learners` entry-point group: lifelab's own learners are registered
    there by its `pyproject.toml`, and a researcher's package registers theirs the same way.
Every class is checked against the Learner contract before it is used.
"""

from __future__ import annotations

import functools
import re
import sys
from importlib.metadata import distributions

from lifelab.errors import ConfigError
from lifelab.platform.imports import import_object

ENTRY_POINT_GROUP = "lifelab.learners"
NAME_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")

_registered: dict[str, type] = {}


def register_learner(name: str, cls: type) -> None:
    """Make learner class `cls` known as `name` to sweeps started from this process. The class
    is shipped to the workers with the trials, so it needs no installation on them (a class in
    an importable module is shipped by reference: install it there, or use the spec's `code`)."""
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise ConfigError(f"learner name {name!r} is not valid: use letters, digits, '_', '.' "
                          "or '-', starting with a letter")
    check_learner_class(cls, name)
    module = cls.__module__
    if module != "__main__" and not module.startswith("lifelab.") and module in sys.modules:
        # ship the class's code itself (as for __main__), not an import the workers may lack
        from ray import cloudpickle

        cloudpickle.register_pickle_by_value(sys.modules[module])
    _registered[name] = cls


def learner_names() -> list[str]:
    """Every learner known by name: the entry points and this process's registrations."""
    return sorted({*_entry_points(), *_registered})


def learner_class(name: str) -> type:
    """The Learner class a spec's `learner` names; a ConfigError naming the fix otherwise."""
    if not isinstance(name, str) or not name:
        raise ConfigError(f"learner {name!r} must be a learner name or 'module:Class'")
    if name in _registered:
        return _registered[name]
    if ":" in name:
        return check_learner_class(import_object(name, "learner"), name)
    found = _entry_points().get(name)
    if found is None:
        raise ConfigError(f"unknown learner '{name}': use one of {', '.join(learner_names())}, "
                          "'package.module:Class', or register it (`lifelab list` shows them)")
    try:
        cls = found.load()
    except Exception as exc:   # a broken third-party package must not crash the CLI
        raise ConfigError(f"learner '{name}' (entry point {found.value}) cannot be loaded "
                          f"({type(exc).__name__}: {exc}): fix or reinstall its package") from None
    return check_learner_class(cls, name)


def check_learner_class(cls: object, name: str) -> type:
    """`cls` if it fulfils the Learner contract, else a ConfigError saying what is missing."""
    from lifelab.learners.contract import Learner, Param

    if not isinstance(cls, type):
        raise ConfigError(f"learner '{name}' is a {type(cls).__name__}, not a class: name a "
                          "subclass of lifelab.Learner")
    if not issubclass(cls, Learner):
        raise ConfigError(f"learner '{name}' ({cls.__qualname__}) is not a lifelab.Learner: "
                          "subclass lifelab.Learner or lifelab.ContinualLearner")
    if getattr(cls, "__abstractmethods__", None):
        missing = ", ".join(sorted(cls.__abstractmethods__))
        raise ConfigError(f"learner '{name}' ({cls.__qualname__}) does not implement {missing}: "
                          "define them (or subclass lifelab.ContinualLearner)")
    if not isinstance(cls.params, dict):
        raise ConfigError(f"learner '{name}' params must be a dict of lifelab.Param")
    for key, param in cls.params.items():
        if not isinstance(param, Param):
            raise ConfigError(f"learner '{name}' params['{key}'] must be a lifelab.Param, got "
                              f"{type(param).__name__}")
        try:
            param.check(name, key, param.default)
        except ConfigError as exc:
            raise ConfigError(f"learner '{name}' default of '{key}' is invalid: {exc}") from None
    for attr in ("metrics", "partial_metrics", "architecture_keys", "adaptable_keys",
                 "layer_keys"):
        value = getattr(cls, attr)
        if not isinstance(value, (tuple, list)) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"learner '{name}' {attr} must be a tuple of names, got {value!r}")
    unknown = [k for k in cls.adaptable_keys if k not in cls.architecture_keys]
    if unknown:
        raise ConfigError(f"learner '{name}' adaptable_keys {unknown} are not in its "
                          "architecture_keys: list them there too")
    return cls


def describe(cls: type) -> str:
    """The first line of a learner's docstring (its description in `lifelab list`)."""
    doc = (cls.__doc__ or "").strip()
    return doc.splitlines()[0].rstrip(".") if doc else ""


@functools.cache
def _entry_points() -> dict:
    # every distribution's, not importlib's de-duplicated view: a stale `lifelab.egg-info` in
    # the working directory would otherwise hide the installed package's learners
    found: dict = {}
    for dist in distributions():
        for ep in dist.entry_points:
            if ep.group == ENTRY_POINT_GROUP:
                found.setdefault(ep.name, ep)
    return found

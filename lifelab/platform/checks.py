"""One checker for every configured value: a spec field, a stream key and a learner's `Param` all
fail with the same one-line ConfigError naming where the value sits, the value and what it must be
(e.g. "stream.tasks must be an integer between 1 and 100, got 0")."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from lifelab.errors import ConfigError

#: the widest layer a list value accepts: wider ones cannot fit in memory with their neighbours
MAX_LAYER = 65_536
_NOUNS = {int: "an integer", float: "a number", str: "a string"}


def check_value(where: str, value: Any, kind: type, low: float | None = None,
                high: float | None = None, above: float | None = None,
                choices: tuple | None = None, what: str | None = None, hint: str = "") -> Any:
    """`value` as `kind` holds it (an int given for a float becomes a float; a list of layer
    sizes a list); a ConfigError naming `where` otherwise. Numbers must be finite, >= `low`,
    <= `high` and > `above` where set; `choices` lists the allowed values. `what` names the
    kind in the message instead of e.g. "a number"; `hint` follows what the value must be."""
    if kind is list:
        return _layer_sizes(where, value)
    given = value                             # as written, for the message
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    typed = isinstance(value, kind) and (kind is bool or not isinstance(value, bool))
    if choices is not None and not (typed and value in choices):
        raise ConfigError(f"{where} {given!r} is unknown: use one of "
                          f"{', '.join(map(str, choices))}{hint}")
    if kind is bool and not typed:
        raise ConfigError(f"{where} must be true or false{hint}, got {given!r}")
    if kind not in (int, float):
        if not typed:
            raise ConfigError(f"{where} must be {what or _NOUNS.get(kind, kind.__name__)}{hint}, "
                              f"got {given!r}")
        return value
    finite = typed and (kind is int or math.isfinite(value))
    if not (finite and (low is None or value >= low) and (high is None or value <= high)
            and (above is None or value > above)):
        noun = what or (_NOUNS[kind] if finite or not typed else "a finite number")
        raise ConfigError(f"{where} must be {noun}{_bounds(low, high, above)}{hint}, "
                          f"got {given!r}")
    return value


def check_keys(data: dict, known: tuple[str, ...] | list[str], unknown: str,
               allowed: tuple[str, ...] = ()) -> None:
    """Every key of `data` is one of `known` (or of `allowed`, not listed in the message); a
    ConfigError otherwise, `unknown` with "{key}" replaced by the first key that is not."""
    for key in data:
        if key not in known and key not in allowed:
            raise ConfigError(f"{unknown.replace('{key}', str(key))}: use one of "
                              f"{', '.join(known)}")


def stream_from_mapping(cls: type, d: Any, unknown: str) -> Any:
    """The stream config dataclass `cls` from the mapping `d` (e.g. parsed YAML), missing keys
    taking their defaults; `unknown` names a key `cls` does not have ("{key}" replaced)."""
    if not isinstance(d, Mapping):
        raise ConfigError(f"stream must be a mapping of stream keys, got {d!r}")
    check_keys(d, [f.name for f in dataclasses.fields(cls)], unknown)
    return cls(**d)


def check_stream_source(config: Any) -> None:
    """The keys every stream kind has: seed, data_root and download."""
    check_value("stream.seed", config.seed, int, 0, 2**63 - 1)
    if config.data_root is not None:
        check_value("stream.data_root", config.data_root, str, what="a directory path or null")
    check_value("stream.download", config.download, bool)


def _bounds(low: float | None, high: float | None, above: float | None) -> str:
    if above is None and low is not None and high is not None:
        return f" between {_number(low)} and {_number(high)}"
    parts = [f"> {_number(above)}" if above is not None else "",
             f">= {_number(low)}" if low is not None else "",
             f"<= {_number(high)}" if high is not None else ""]
    return "".join(f" {p}" if i == 0 else f" and {p}"
                   for i, p in enumerate(p for p in parts if p))


def _number(x: float) -> str:
    return str(x) if isinstance(x, int) else f"{x:g}"


def _layer_sizes(where: str, value: Any) -> list[int]:
    if (not isinstance(value, (list, tuple)) or not value or len(value) > 64
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)):
        raise ConfigError(f"{where} must be a non-empty list of at most 64 positive "
                          f"integers (layer sizes), got {value!r}")
    if max(value) > MAX_LAYER:
        raise ConfigError(f"{where} has a layer of {max(value)} units, more than memory "
                          f"holds with its neighbours: use at most {MAX_LAYER}")
    return list(value)

"""How analysis shows values: the one config flattener and the one value formatter that tables,
lineage, summaries, plots and the report share (the bottom of the analysis chain: it imports no
other analysis module)."""

from __future__ import annotations

import datetime as dt
import math

import pandas as pd

MISSING = "–"       # a value that is not there (None, NaN, NA)


def flatten(config: dict | None, prefix: str = "") -> dict:
    """A nested config as one flat dict: nested keys joined with '.' (`stream.tasks`), lists as
    tuples (so values hash and compare), an empty sub-dict dropped; None gives {}.

    The per-dict form of `pandas.json_normalize(config, sep=".")`, which would reorder the keys
    (plain values before nested ones) and keep lists unhashable."""
    out: dict = {}
    for key, value in (config or {}).items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = _hashable(value)
    return out


def missing(value) -> bool:
    """None, NaN or pandas' NA."""
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def fmt_value(value) -> str:
    """A value as a table cell, group label or text line: floats to 4 significant digits,
    sequences as [a, b], dicts as {k: v}, a missing value as '–'."""
    if missing(value):
        return MISSING
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(fmt_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {fmt_value(v)}" for k, v in value.items()) + "}"
    return str(value)


def pm(mean: float, sem: float) -> str:
    """'mean ± sem' ('mean' alone when the SEM is missing, '–' when the mean is)."""
    if missing(mean):
        return MISSING
    if missing(sem):
        return f"{mean:.4g}"
    return f"{mean:.4g} ± {sem:.2g}"


def fmt_time(value) -> str:
    """A Unix time as local date and time."""
    if not isinstance(value, float) or not math.isfinite(value):
        return MISSING
    return dt.datetime.fromtimestamp(value).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def shorten(text: str, width: int = 40) -> str:
    """`text` cut to `width` characters, the cut marked with '…'."""
    return text if len(text) <= width else text[:width - 1] + "…"


def fmt_text(df: pd.DataFrame) -> str:
    """A table as aligned plain text, every cell through `fmt_value`."""
    if df.empty:
        return "(none)"
    shown = df.copy()
    for col in shown.columns:
        shown[col] = shown[col].map(fmt_value)
    return shown.to_string(index=False)


def _hashable(value):
    if isinstance(value, list):
        return tuple(_hashable(v) for v in value)
    return value

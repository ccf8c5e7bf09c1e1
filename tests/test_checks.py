"""One value checker (lifelab.platform.checks) behind spec fields, stream keys and learner Params:
the same one-line message, naming where, what the value must be, and the value as written."""

import math

import pytest

from lifelab.errors import ConfigError
from lifelab.learners.contract import Param
from lifelab.platform.checks import check_value
from lifelab.platform.config import parse_spec
from lifelab.platform.streams import StreamConfig


def message(call) -> str:
    with pytest.raises(ConfigError) as info:
        call()
    assert "\n" not in str(info.value)
    return str(info.value)


@pytest.mark.parametrize("value, limits, expect", [
    (0, {"low": 1, "high": 10}, "x must be an integer between 1 and 10, got 0"),
    (1.5, {"low": 1}, "x must be an integer >= 1, got 1.5"),
    (True, {"low": 1}, "x must be an integer >= 1, got True"),
    (0, {"above": 0, "high": 512}, "x must be an integer > 0 and <= 512, got 0"),
    (2 ** 63, {"low": 0, "high": 2 ** 63 - 1},
     "x must be an integer between 0 and 9223372036854775807, got 9223372036854775808"),
])
def test_integers_say_the_whole_range_and_the_value(value, limits, expect):
    assert message(lambda: check_value("x", value, int, **limits)) == expect


@pytest.mark.parametrize("value, limits, expect", [
    (-1, {"above": 0}, "x must be a number > 0, got -1"),             # as written, not -1.0
    (0.9, {"above": 0, "high": 0.5}, "x must be a number > 0 and <= 0.5, got 0.9"),
    (1e-5, {"low": 1e-4}, "x must be a number >= 0.0001, got 1e-05"),
    ("fast", {}, "x must be a number, got 'fast'"),
    (math.nan, {"low": 0}, "x must be a finite number >= 0, got nan"),
    (math.inf, {}, "x must be a finite number, got inf"),
])
def test_numbers_are_finite_and_in_range(value, limits, expect):
    assert message(lambda: check_value("x", value, float, **limits)) == expect


def test_a_good_value_comes_back_as_its_kind_holds_it():
    assert check_value("x", 3, float) == 3.0 and isinstance(check_value("x", 3, float), float)
    assert check_value("x", (4, 5), list) == [4, 5]
    assert check_value("x", "sgd", str, choices=("adam", "sgd")) == "sgd"
    assert check_value("x", False, bool) is False


def test_choices_booleans_strings_and_hints():
    assert message(lambda: check_value("x", 3, str, choices=("a", "b"))) == \
        "x 3 is unknown: use one of a, b"
    assert message(lambda: check_value("x", "no", bool)) == "x must be true or false, got 'no'"
    assert message(lambda: check_value("x", 3, str, what="a directory path or null")) == \
        "x must be a directory path or null, got 3"
    assert message(lambda: check_value("x", 0.9, float, 0, 0.5, what="a fraction",
                                       hint=" (0: none)")) == \
        "x must be a fraction between 0 and 0.5 (0: none), got 0.9"


def test_spec_fields_stream_keys_and_params_speak_alike():
    spec = message(lambda: parse_spec({"learner": "finetune", "search": {"samples": 0}}, "s"))
    stream = message(lambda: StreamConfig(steps_per_task=0))
    param = message(lambda: Param(8, int, low=1).check("mine", "steps", 0))
    assert spec == "search.samples must be an integer >= 1, got 0"
    assert stream == "stream.steps_per_task must be an integer >= 1, got 0"
    assert param == "mine config 'steps' must be an integer >= 1, got 0"

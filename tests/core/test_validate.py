"""The shared config validators: each refusal names the field and what is allowed."""

from __future__ import annotations

import math

import pytest

from lockless.core.validate import require_choice, require_int, require_number
from lockless.errors import ConfigError


@pytest.mark.parametrize(
    ("kwargs", "value", "allowed"),
    [
        ({}, -1, "a number >= 0"),
        ({"strict": True}, 0, "a number > 0"),
        ({"minimum": 2.5}, 2, "a number >= 2.5"),
        ({"maximum": 1.0}, 1.5, "a number >= 0 and <= 1"),
        ({}, True, "a number >= 0"),  # a bool is a typo, not 1
        ({}, math.nan, "a number >= 0"),  # NaN passes every comparison
        ({}, math.inf, "a number >= 0"),
        ({}, "3", "a number >= 0"),
        ({"allowed": "a number in [0, 1]", "maximum": 1.0}, 2, "a number in [0, 1]"),
    ],
)
def test_require_number_refuses(kwargs: dict, value: object, allowed: str) -> None:
    with pytest.raises(ConfigError) as info:
        require_number("section.field", value, **kwargs)
    assert (info.value.field, info.value.value, info.value.allowed) == ("section.field", value, allowed)
    assert "section.field" in str(info.value) and allowed in str(info.value)


def test_require_number_accepts_and_returns_a_float() -> None:
    assert require_number("f", 0) == 0.0 and isinstance(require_number("f", 3), float)
    assert require_number("f", 1.0, maximum=1.0) == 1.0
    assert require_number("f", 0.5, minimum=0.5) == 0.5


@pytest.mark.parametrize(
    ("kwargs", "value", "allowed"),
    [
        ({}, -1, "an integer >= 0"),
        ({"minimum": 1}, 0, "an integer >= 1"),
        ({"minimum": 0, "maximum": 19}, 20, "an integer >= 0 and <= 19"),
        ({}, 1.0, "an integer >= 0"),
        ({}, False, "an integer >= 0"),
    ],
)
def test_require_int_refuses(kwargs: dict, value: object, allowed: str) -> None:
    with pytest.raises(ConfigError) as info:
        require_int("f", value, **kwargs)
    assert info.value.allowed == allowed


def test_require_int_and_choice_accept() -> None:
    assert require_int("f", 19, maximum=19) == 19
    assert require_choice("f", "b", ("a", "b")) == "b"


def test_require_choice_lists_the_choices() -> None:
    with pytest.raises(ConfigError) as info:
        require_choice("cache.policy", "random", ("power_of_two", "least_loaded"))
    assert info.value.allowed == "power_of_two | least_loaded"

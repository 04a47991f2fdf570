"""Range checks of numeric settings: bounds open or closed as declared, NaN always refused."""

import math
from dataclasses import dataclass

import pytest

from era.validation import AT_LEAST_1, POSITIVE, UNIT, UNIT_NO_0, Range, check_ranges


def test_ranges_include_exactly_their_declared_bounds():
    assert 0 in UNIT and 1 in UNIT and 1.0001 not in UNIT and -0.0001 not in UNIT
    assert 0 not in UNIT_NO_0 and 1e-12 in UNIT_NO_0 and 1 in UNIT_NO_0
    assert 0 not in POSITIVE and math.inf in POSITIVE and 1 in AT_LEAST_1 and 0 not in AT_LEAST_1
    for allowed in (UNIT, POSITIVE, AT_LEAST_1, Range(1, 4)):
        assert math.nan not in allowed
    assert str(UNIT_NO_0) == "in (0, 1]" and str(AT_LEAST_1) == ">= 1" and str(POSITIVE) == "> 0"


def test_check_ranges_names_the_flag_value_and_range():
    @dataclass
    class Config:
        batch_size: int = 0
        gamma: float = 0.5

    with pytest.raises(ValueError, match=r"^--x\.batch-size 0 is out of range: it must be >= 1$"):
        check_ranges(Config(), "x.", {"gamma": UNIT, "batch_size": AT_LEAST_1})
    check_ranges(Config(batch_size=3), "x.", {"gamma": UNIT, "batch_size": AT_LEAST_1})

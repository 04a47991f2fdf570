"""The update profiler's inductor options are parsed and checked before anything compiles."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
from rl_update_profile import category, parse_overrides  # noqa: E402


def test_options_parse_to_python_values_nested_keys_included():
    options = parse_overrides(("max_autotune=True", "cpp.simdlen=512"))
    assert options == {"max_autotune": True, "cpp.simdlen": 512}


@pytest.mark.parametrize("item", ["no_such_option=True", "cpp.no_such_option=1", "max_autotune"])
def test_a_bad_option_names_itself(item):
    with pytest.raises(ValueError, match=item):
        parse_overrides((item,))


def test_profiler_events_fall_into_the_documented_categories():
    assert category("aten::baddbmm") == "matrix products"
    assert category("graph_0_cpp_fused__to_copy_elu_1") == "inductor fused kernels"
    assert category("aten::_fused_adam_") == "optimiser steps"
    assert category("aten::gather") == "rest"

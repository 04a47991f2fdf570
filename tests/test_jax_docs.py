"""The examples of docs/jax.md run as written, and do what their comments say."""

import re
from pathlib import Path

import numpy as np
import pytest

jax = pytest.importorskip("jax")
pytest.importorskip("optax")

DOC = Path(__file__).resolve().parent.parent / "docs" / "jax.md"


def example(name: str) -> str:
    """The ```python block of docs/jax.md whose first line is ``# name``."""
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    (code,) = [block for block in blocks if block.startswith(f"# {name}\n")]
    return code


def test_policy_example_holds_the_target_in_every_state():
    namespace: dict = {}
    exec(compile(example("jax_policy_example"), "jax_policy_example", "exec"), namespace)
    np.testing.assert_allclose(namespace["dist"].entropy(), -1.5, atol=1e-4)
    action = np.asarray(namespace["action"])
    assert action.shape == (256, 3) and (np.abs(action) <= 1).all()
    assert np.isfinite(np.asarray(namespace["log_prob"])).all()


def test_softmax_example_learns_above_the_floor():
    namespace: dict = {}
    exec(compile(example("jax_softmax_example"), "jax_softmax_example", "exec"), namespace)
    assert float(namespace["entropy"].min()) >= 0.5 - 1e-4
    assert float(namespace["value"]) < 2.0  # it learned something (log 10 = 2.30 at chance)

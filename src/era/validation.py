"""Range checks for numeric settings, with messages that name the command-line flag.

Call :func:`check_ranges` from a config dataclass's ``__post_init__``, so that a bad value is
refused when the configuration is built (by tyro while parsing, or by Python code), before any
work starts::

    def __post_init__(self):
        check_ranges(self, "sac.", {"batch_size": AT_LEAST_1, "gamma": UNIT, "tau": UNIT_NO_0})

``--sac.batch-size 0`` then fails with ``--sac.batch-size 0 is out of range: it must be >= 1``.
"""

from __future__ import annotations

from typing import Any, NamedTuple


class Range(NamedTuple):
    """The allowed values of a numeric setting; ``high=None`` is unbounded."""

    low: float
    high: float | None = None
    low_closed: bool = True
    high_closed: bool = True

    def __contains__(self, value: float) -> bool:  # NaN is in no range
        above = value >= self.low if self.low_closed else value > self.low
        below = self.high is None or (value <= self.high if self.high_closed else value < self.high)
        return bool(above and below)

    def __str__(self) -> str:
        if self.high is None:
            return f"{'>=' if self.low_closed else '>'} {self.low}"
        left, right = "[" if self.low_closed else "(", "]" if self.high_closed else ")"
        return f"in {left}{self.low}, {self.high}{right}"


AT_LEAST_1, AT_LEAST_0, POSITIVE = Range(1), Range(0), Range(0, low_closed=False)
UNIT, UNIT_NO_0 = Range(0, 1), Range(0, 1, low_closed=False)


def check_ranges(config: Any, prefix: str, ranges: dict[str, Range]) -> None:
    """Raise ``ValueError`` naming the flag (``--sac.batch-size``: ``prefix`` + the field name,
    dashed as tyro spells it), its value and the allowed range, for the first field of
    ``config`` outside its range."""
    for name, allowed in ranges.items():
        value = getattr(config, name)
        if value not in allowed:
            flag = f"--{prefix}{name.replace('_', '-')}"
            raise ValueError(f"{flag} {value} is out of range: it must be {allowed}")

"""Test-wide settings.

Hypothesis runs derandomized and without per-example deadlines: the suite must give the same
verdict on every run of CI, and timing on a shared 2-core machine is too noisy for deadlines.
"""

from hypothesis import settings

settings.register_profile("era", deadline=None, derandomize=True, print_blob=True)
settings.load_profile("era")

"""Hypothesis settings of the property tests.

The default profile ``"ci"`` is fixed and derandomised: the same examples every run, a fixed
budget per test (``property_helpers.budget`` scales each test's share of it), no per-example deadline (the
Triton interpreter and a busy machine make timings meaningless). ``HYPOTHESIS_PROFILE=explore``
draws fresh random examples, ten times as many, to hunt for new failures locally.
"""

import os

from hypothesis import HealthCheck, settings

_COMMON = dict(
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
settings.register_profile("ci", max_examples=40, derandomize=True, database=None, **_COMMON)
settings.register_profile("explore", max_examples=400, derandomize=False, **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

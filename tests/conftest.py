"""Shared test configuration: the Hypothesis profiles the tests run under.

``dev`` (the default): no deadline -- the codec's oracle (construct) is slow
and machines vary, so timing is never a failure. ``ci``: the same,
derandomized for reproducible runs; chosen when ``CI`` is set (as CI sets it),
or explicitly with ``HYPOTHESIS_PROFILE=ci``.
"""

import os

from hypothesis import HealthCheck, settings

settings.register_profile("dev", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("ci", settings.get_profile("dev"), derandomize=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "dev"))

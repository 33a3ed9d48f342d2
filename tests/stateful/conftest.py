"""Hypothesis profiles for the stateful suite.

``ci`` is Hypothesis's built-in profile, loaded automatically when the ``CI`` environment
variable is set (derandomized, no deadline, no example database). On top of whichever
profile is active, the CI-sized test bounds examples and steps itself (see
``test_consistency.py``). ``soak`` holds the sizes of the long local run, used by the
``soak``-marked test; ``HYPOTHESIS_PROFILE=soak`` also loads it for every test collected
after this file.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "soak",
    max_examples=300,
    stateful_step_count=60,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)

if os.environ.get("HYPOTHESIS_PROFILE"):
    settings.load_profile(os.environ["HYPOTHESIS_PROFILE"])

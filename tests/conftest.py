"""Shared test configuration.

Under CI (``CI`` set in the environment) Hypothesis runs derandomized, so the gate is
reproducible: the same examples every run. Locally it explores new examples each time.
"""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

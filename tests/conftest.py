"""Test-wide settings.

Property tests (hypothesis) draw the same examples on every run unless
``JG_EXPLORE=1``: CI must not fail on a new random draw that nobody can reproduce
from its log, and exploring is a separate, deliberate step (each crash found that
way becomes a fixed regression test, as the RPZ ')' line did).
"""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, print_blob=True)
settings.register_profile("explore", derandomize=False, print_blob=True)
settings.load_profile("explore" if os.environ.get("JG_EXPLORE") else "ci")

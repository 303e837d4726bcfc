"""Test configuration.

Hypothesis explores fresh random examples on developer machines; under CI
(``CI`` set in the environment) it is derandomized, so a landing never
depends on the luck of the draw -- the examples are still varied, but the
same on every CI run of the same code.  Anything a developer run finds is
reported with the seed that reproduces it.
"""
import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
settings.register_profile("dev", deadline=None, print_blob=True)
settings.load_profile("ci" if os.environ.get("CI") else "dev")

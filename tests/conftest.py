"""Test configuration: hypothesis runs reproducibly in CI (CI=true), exploring freely elsewhere."""

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

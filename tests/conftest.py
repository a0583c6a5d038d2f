"""Test configuration: hypothesis runs reproducibly in CI (CI=true), exploring freely elsewhere;
under pytest-xdist, one thread per worker."""

import os

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Each xdist worker (and every command it starts) computes on one thread: two workers of two
    # OpenMP threads each on two cores spin against each other and ran the suite slower than
    # one process did (see the README's test command).
    os.environ["OMP_NUM_THREADS"] = "1"

import torch  # noqa: E402 - after the thread count is set
from hypothesis import settings  # noqa: E402

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)

settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

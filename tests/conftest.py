"""Test configuration: hypothesis runs reproducibly in CI (CI=true), exploring freely elsewhere;
under pytest-xdist, one thread per worker; the long tests first."""

import os

WORKER = os.environ.get("PYTEST_XDIST_WORKER")
if WORKER:
    # Each xdist worker (and every command it starts) computes on one thread: two workers of two
    # OpenMP threads each on two cores spin against each other and ran the suite slower than
    # one process did (see the README's test command).
    os.environ["OMP_NUM_THREADS"] = "1"

import torch  # noqa: E402 - after the thread count is set
from hypothesis import settings  # noqa: E402

if WORKER:
    torch.set_num_threads(1)

settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


def pytest_collection_modifyitems(config, items):
    # The few tests of tens of seconds (marked long) go first: left to the end of the collection
    # order, one of them keeps one worker busy after the other has run out of tests.
    items.sort(key=lambda item: item.get_closest_marker("long") is None)  # a stable sort

"""Run Captum's own unit tests for Deconvolution, GuidedBackprop (and their Neuron* classes) and
Occlusion against ``deconvnet.captum``: the test files are copied from a checkout of Captum's
repository (they are not in its wheel) with only their imports of those classes changed.

    git clone https://github.com/pytorch/captum /tmp/captum-repo
    python scripts/captum_tests.py /tmp/captum-repo            # Captum's tests, pointed at us
    python scripts/captum_tests.py /tmp/captum-repo --captum   # the same files against Captum

Needs Captum installed (its ``captum.testing`` helpers and models ship in the wheel).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

FILES = ("test_deconvolution.py", "test_guided_backprop.py", "test_occlusion.py")
IMPORTS = {
    "from captum.attr._core.guided_backprop_deconvnet import Deconvolution": "from deconvnet.captum import Deconvolution",
    "from captum.attr._core.guided_backprop_deconvnet import GuidedBackprop": "from deconvnet.captum import GuidedBackprop",
    "from captum.attr._core.occlusion import Occlusion": "from deconvnet.captum import Occlusion",
}
NEURON = re.compile(r"from captum\.attr\._core\.neuron\.neuron_guided_backprop_deconvnet import \(\s*(\w+),\s*\)")


def pointed_at_us(source: str) -> str:
    for theirs, ours in IMPORTS.items():
        source = source.replace(theirs, ours)
    source = NEURON.sub(r"from deconvnet.captum import \1", source)
    if "captum.attr._core" in source.split("class Test")[0]:
        raise SystemExit("a test file imports a Captum class this script does not redirect; update IMPORTS")
    return source


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("repo", type=Path, help="a checkout of github.com/pytorch/captum")
    parser.add_argument("--captum", action="store_true", help="run the files unchanged, against Captum itself")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        for name in FILES:
            source = (args.repo / "tests" / "attr" / name).read_text()
            (Path(folder) / name).write_text(source if args.captum else pointed_at_us(source))
        return subprocess.call([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", folder])


if __name__ == "__main__":
    raise SystemExit(main())

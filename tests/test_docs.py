"""The documentation cannot rot: the site builds with ``mkdocs build --strict`` (broken links,
missing references and docstring warnings fail it), every public name is in its API reference,
and every example in the README and the docs runs.

Fenced blocks: ``python`` blocks run in page order in one namespace per page, ``bash`` blocks in
the same working folder (a fresh temporary one per page). ``console`` blocks are shown only:
commands a test cannot run (the machine's set-up, which CI itself runs; a server that does not
return; launches across machines; downloads of trained weights). ``text`` and ``json`` are output.
"""

from __future__ import annotations

import importlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from warm_cli import WarmCommand, warm_path

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])
FENCE = re.compile(r"^(?P<indent> *)```(?P<lang>[\w-]*)[^\n]*\n(?P<body>.*?)^(?P=indent)```\s*$", re.M | re.S)
RUN = {"python", "bash"}
SHOWN = {"console", "text", "json"}


def blocks(page: Path) -> list[tuple[str, str]]:
    """(language, code) of every fenced block of ``page``, indentation removed."""
    found = []
    for match in FENCE.finditer(page.read_text()):
        indent = len(match.group("indent"))
        code = "\n".join(line[indent:] for line in match.group("body").splitlines())
        found.append((match.group("lang"), code))
    return found


def test_every_block_says_whether_it_runs():
    unknown = {(page.name, lang) for page in PAGES for lang, _ in blocks(page) if lang not in RUN | SHOWN}
    assert not unknown, f"blocks without a language this test knows: {unknown}"


def test_the_fence_parser_sees_the_examples():
    readme = blocks(ROOT / "README.md")
    assert any(lang == "python" and "DeconvNet(" in code for lang, code in readme)


@pytest.fixture(scope="module")
def warm(tmp_path_factory):
    """The examples' ``deconvnet``: one warm interpreter forked per command (see warm_cli)."""
    command = WarmCommand(tmp_path_factory.mktemp("warm"))
    yield command
    command.close()


LONG_PAGES = {"own-model.md", "dimensions.md"}  # tens of seconds each: started first (see conftest)


@pytest.mark.parametrize("page", [pytest.param(p, marks=[pytest.mark.long] if p.name in LONG_PAGES else [])
                                  for p in PAGES if any(lang in RUN for lang, _ in blocks(p))],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_the_examples_of_a_page_run(page, tmp_path, monkeypatch, warm):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__docs__"}
    environment = {**os.environ, "PATH": warm_path(warm)}
    for number, (lang, code) in enumerate(blocks(page), start=1):
        if lang == "python":
            exec(compile(code, f"{page.name}, block {number}", "exec"), namespace)  # noqa: S102 - the page's own example
        elif lang == "bash":
            done = subprocess.run(["bash", "-euo", "pipefail", "-c", code], cwd=tmp_path, env=environment,
                                  capture_output=True, text=True, timeout=600)
            assert done.returncode == 0, f"{page.name}, block {number}:\n{code}\n{done.stdout}\n{done.stderr}"


def _public_names() -> list[tuple[str, str, object]]:
    """(module, name, object) for every name in a public module's ``__all__``."""
    found = []
    for path in sorted((ROOT / "deconvnet").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        module_name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        if any(part.startswith("_") and part != "__init__" for part in parts):
            continue
        module = importlib.import_module(module_name)
        found += [(module_name, name, getattr(module, name)) for name in getattr(module, "__all__", [])]
    return found


@pytest.mark.skipif(shutil.which("mkdocs", path=str(Path(sys.executable).parent)) is None,
                    reason="mkdocs is not installed: pip install -e '.[docs]'")
def test_the_site_builds_strictly_and_documents_every_public_name(tmp_path):
    site = tmp_path / "site"
    done = subprocess.run([str(Path(sys.executable).parent / "mkdocs"), "build", "--strict", "-d", str(site)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0, done.stdout + done.stderr
    assert (site / "index.html").exists() and (site / "guides" / "classes.html").exists()
    for page in site.rglob("*.html"):  # opens offline: nothing loaded from the internet
        assert not re.search(r'<(?:script|link)[^>]+(?:src|href)="(?:https?:)?//', page.read_text()), page
    anchors = set()
    for page in (site / "reference").glob("*.html"):
        anchors |= set(re.findall(r'id="(deconvnet[\w.]*)"', page.read_text()))
    names = _public_names()
    documented = {id(value) for module, name, value in names if f"{module}.{name}" in anchors}
    missing = []
    for module, name, value in names:  # documented under this module, where it is defined, or where re-exported
        home = getattr(value, "__module__", None)
        canonical = f"{home}.{getattr(value, '__qualname__', name)}" if home else None
        if f"{module}.{name}" not in anchors and canonical not in anchors and id(value) not in documented:
            missing.append(f"{module}.{name}")
    assert not missing, f"public names missing from the API reference: {missing}"
    assert len(names) > 150  # the walk found the package's modules


def test_warm_commands_keep_the_exit_status_the_streams_and_the_folder(tmp_path, warm):
    environment = {**os.environ, "PATH": warm_path(warm), "PYTHONPATH": "."}
    (tmp_path / "broken_models.py").write_text("def make():\n    raise RuntimeError('no such checkpoint')\n")
    done = subprocess.run(["bash", "-euo", "pipefail", "-c",
                           "deconvnet layers x.png --model broken_models:make 2> err.txt || echo failed $?"],
                          cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=600)
    assert done.stdout == "failed 1\n"
    assert (tmp_path / "err.txt").read_text() == (
        "deconvnet: error: broken_models:make() failed: RuntimeError: no such checkpoint\n")
    done = subprocess.run(["bash", "-c", "deconvnet --help | head -1; deconvnet layers x.png --rule nope"],
                          cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=600)
    assert done.stdout.startswith("usage: deconvnet") and "invalid choice: 'nope'" in done.stderr
    assert done.returncode == 2


def test_ci_runs_the_readmes_test_command():
    command = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert command.endswith("python -m pytest -q -rs -n 2")
    assert command in (ROOT / "README.md").read_text()
    assert command in (ROOT / "docs" / "getting-started.md").read_text()


def test_the_readme_is_a_front_page():
    assert len((ROOT / "README.md").read_text().splitlines()) < 200

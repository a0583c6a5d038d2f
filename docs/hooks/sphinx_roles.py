"""A griffe extension for the API reference: our docstrings are written to read as plain text
(in ``help()`` and editors); mkdocstrings renders Markdown. Two conventions are translated:

- Sphinx roles (``:class:`~deconvnet.capture.Trace```, ``:meth:`reconstruct```). A role naming a
  full ``deconvnet.`` path becomes a link that mkdocs-autorefs resolves (and ``mkdocs build
  --strict`` fails on, if its target is not in the reference); any other role becomes inline
  code, shortened as ``~`` asks.
- Argument paragraphs: a line ``name: what it is`` (or ``a/b: ...``, ``x, y: ...``) that starts a
  paragraph or follows another such item, continued by lines indented under it, becomes a
  bullet, so that the arguments do not run together into one paragraph.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ARGUMENT = re.compile(r"^(?P<name>[A-Za-z_][\w*]*(?:(?:/|, )[A-Za-z_][\w*]*)*)(?P<shape> \([^)]*\))?: (?P<text>\S.*)$")
ROLE = re.compile(r":(?:class|meth|func|attr|data|mod|exc|obj|const):`(~?)([^`<>]+?)`")


def _markdown(match: re.Match[str]) -> str:
    short, target = match.group(1) == "~", match.group(2).strip()
    shown = target.rsplit(".", 1)[-1] if short else target
    if target.startswith("deconvnet."):
        return f"[`{shown}`][{target}]"
    return f"`{shown}`"


def _arguments(text: str) -> str:
    lines, out, in_item = text.splitlines(), [], False
    for number, line in enumerate(lines):
        starts = number > 0 and (not lines[number - 1].strip() or in_item)  # not the summary line
        match = ARGUMENT.match(line) if starts else None
        if match is not None:
            shape = match.group("shape") or ""
            if not in_item and out and out[-1].strip():
                out.append("")
            out.append(f"- `{match.group('name')}`{shape}: {match.group('text')}")
            in_item = True
        elif in_item and line.startswith("    ") and line.strip():
            out.append("  " + line.strip())
        else:
            if in_item and line.strip():
                out.append("")
            in_item = False
            out.append(line)
    return "\n".join(out)


class SphinxRoles(griffe.Extension):
    """Rewrite each object's docstring once it is loaded."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _arguments(ROLE.sub(_markdown, obj.docstring.value))

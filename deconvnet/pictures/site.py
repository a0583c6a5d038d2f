"""The atlas as a static site that opens from the file system, no server:

    SITE/index.html            the model, the dataset, every layer with a strip of its strongest channels
    SITE/<layer>/index.html    every channel's top projection; sort by strength, filter by number
    SITE/<layer>/<c>.html      one channel's top-k projections next to their image patches
    SITE/<layer>/img/<c>-<r>.png, <c>-<r>-patch.png
    SITE/atlas.json            what was mined (see :meth:`deconvnet.analysis.topk.Atlas.to_json`)

Plain HTML and CSS; the layer page has a few lines of script for sorting and filtering.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

from ..analysis.topk import Atlas, Tile
from ..capture import INPUT
from ..progress import ProgressFactory, Silent

__all__ = ["SiteWriter", "layer_folders", "slug"]

STRIP = 8  # strongest channels shown per layer on the index page

_CSS = """\
body { font: 15px/1.4 system-ui, sans-serif; margin: 1.5em auto; max-width: 1200px; padding: 0 1em; color: #222; }
a { color: #1f5fa8; text-decoration: none; } a:hover { text-decoration: underline; }
h1 { font-size: 1.5em; margin-bottom: .2em; } h2 { font-size: 1.15em; margin: 1.4em 0 .4em; }
.muted { color: #666; } nav { margin: .5em 0 1em; } nav a { margin-right: 1.2em; }
table { border-collapse: collapse; } th, td { text-align: left; padding: .35em .8em .35em 0; vertical-align: middle; }
th { border-bottom: 1px solid #ccc; font-weight: 600; } tr + tr td { border-top: 1px solid #eee; }
img.tile { width: 72px; height: 72px; object-fit: contain; image-rendering: pixelated; background: #eee; display: block; }
img.big { width: 128px; height: 128px; }
img.tile.wide { width: 216px; height: 72px; background: #fff; outline: 1px solid #e4e4e4; }
img.big.wide { width: 288px; height: 96px; } .strip img.tile.wide { width: 144px; height: 48px; }
.card.wide { width: 216px; } .unit.wide { flex-direction: column; }
.strip { display: flex; flex-wrap: wrap; gap: 4px; } .strip a { display: block; }
.grid { display: flex; flex-wrap: wrap; gap: 10px; }
.card { display: block; width: 72px; font-size: 12px; color: #222; } .card span { display: block; }
.card .value, .unit .value { color: #666; }
.card.empty img { visibility: hidden; }
.controls { margin: .5em 0 1em; display: flex; gap: .6em; align-items: center; flex-wrap: wrap; }
.controls button[aria-pressed="true"] { font-weight: 700; }
.units { display: grid; grid-template-columns: repeat(auto-fill, minmax(290px, 1fr)); gap: 14px; }
.unit { display: flex; gap: 6px; align-items: flex-start; font-size: 13px; }
.unit .text { min-width: 0; overflow-wrap: anywhere; }
details { margin: .5em 0; }
[hidden] { display: none !important; }
"""

_SCRIPT = """\
<script>
const grid = document.getElementById("grid"), cards = Array.from(grid.children);
function order(key) {
  cards.sort((a, b) => key === "value" ? b.dataset.value - a.dataset.value || a.dataset.channel - b.dataset.channel
                                       : a.dataset.channel - b.dataset.channel);
  cards.forEach(card => grid.appendChild(card));
  document.querySelectorAll("[data-sort]").forEach(b => b.setAttribute("aria-pressed", b.dataset.sort === key));
}
document.querySelectorAll("[data-sort]").forEach(b => b.addEventListener("click", () => order(b.dataset.sort)));
document.getElementById("filter").addEventListener("input", event => {
  const wanted = new Set(), text = event.target.value;
  for (const part of text.split(/[\\s,]+/).filter(Boolean)) {
    const [lo, hi] = part.split("-").map(Number);
    for (let c = lo; c <= (Number.isNaN(hi) || hi === undefined ? lo : hi); c++) wanted.add(c);
  }
  cards.forEach(card => card.hidden = text.trim() !== "" && !wanted.has(Number(card.dataset.channel)));
});
</script>
"""


def slug(name: str) -> str:
    """``name`` (a layer, a model, an image stem) as a safe file-name part."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def layer_folders(layers: Iterable[str]) -> dict[str, str]:
    """Each layer's folder in the site: its slug, never ".", ".." or "img", made unique in
    order (the explorer links into a site by the same rule)."""
    folders: dict[str, str] = {}
    for layer in layers:
        folder = slug(layer).strip(".") or "layer"
        while folder in folders.values() or folder == "img":
            folder += "_"
        folders[layer] = folder
    return folders


def _page(title: str, body: str, css: str) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{html.escape(title)}</title>\n'
            f'<link rel="stylesheet" href="{css}">\n</head>\n<body>\n{body}\n</body>\n</html>\n')


def _position(unit: tuple[int, ...]) -> str:
    """Where a unit sits in its map, as a reader names it."""
    if len(unit) == 2:
        return f"row {unit[0]}, col {unit[1]}"
    if len(unit) == 1:
        return f"position {unit[0]}"
    return "at " + ", ".join(f"{axis}={i}" for axis, i in zip("dhw", unit, strict=False))


def _number(value: float) -> str:
    return f"{value:.4g}"


# How the pages speak of the inputs, by their spatial dims: a field's unit, what a tile shows (the input's
# own name is capture.INPUT's).
_WORDS = {
    1: ("samples", "the projection over the signal it saw (its receptive field), each a trace"),
    2: ("px", "the projection next to the image patch it saw (its receptive field)"),
    3: ("voxels", "the projection next to the input it saw (its receptive field), each drawn as the "
        "field's three orthogonal slices through its centre (axial, coronal, sagittal; for a clip: a frame, "
        "then time against height and width)"),
}


class SiteWriter:
    """Writes the site of ``atlas`` under ``folder``: tiles as they arrive, then the pages."""

    def __init__(self, folder: Path, atlas: Atlas, categories: Sequence[str] | None = None) -> None:
        self.folder = Path(folder)
        self.atlas = atlas
        self.categories = categories
        self.predicted: dict[int, tuple[int, float]] = {}  # image index -> the model's top class, its probability
        self.slugs = layer_folders(atlas.layers)
        self.input = INPUT[atlas.spatial_dims]
        self.pixels, self.shows = _WORDS[atlas.spatial_dims]
        self.wide = "" if atlas.spatial_dims == 2 else " wide"  # traces and slices are wider than tall
        for folder in self.slugs.values():
            (self.folder / folder / "img").mkdir(parents=True, exist_ok=True)

    def tile(self, tile: Tile) -> None:
        base = self.folder / self.slugs[tile.layer] / "img"
        (base / f"{tile.channel}-{tile.rank}.png").write_bytes(tile.projection)
        (base / f"{tile.channel}-{tile.rank}-patch.png").write_bytes(tile.patch)
        if tile.predicted is not None:
            self.predicted[tile.image] = tile.predicted

    def _label(self, c: int) -> str:
        names = self.categories
        return str(names[c]) if names is not None and 0 <= c < len(names) else f"class {c}"

    def pages(self, progress: ProgressFactory = Silent) -> None:
        atlas = self.atlas
        total = 1 + sum(1 + top.values.shape[0] for top in atlas.layers.values())
        bar = progress(total=total, desc="writing", unit="page")
        (self.folder / "style.css").write_text(_CSS)
        data = atlas.to_json()
        data["categories"] = list(self.categories) if self.categories is not None else None
        data["predicted"] = {atlas.names[i]: {"class": c, "label": self._label(c), "probability": p}
                             for i, (c, p) in sorted(self.predicted.items())}
        (self.folder / "atlas.json").write_text(json.dumps(data, indent=1) + "\n")
        (self.folder / "index.html").write_text(self._index())
        bar.update()
        for layer, top in atlas.layers.items():
            folder = self.folder / self.slugs[layer]
            (folder / "index.html").write_text(self._layer(layer))
            bar.update()
            for c in range(top.values.shape[0]):
                (folder / f"{c}.html").write_text(self._unit(layer, c))
                bar.update()
        bar.close()

    def _field(self, layer: str) -> str:
        f = self.atlas.fields[layer]
        if f is None:
            return f"the whole {self.input}"
        size = "&times;".join(str(n) for n in f.size)
        stride = f.stride[0] if len(set(f.stride)) == 1 else "&times;".join(str(n) for n in f.stride)
        return f"{size} {self.pixels}, stride {stride}"

    def _prediction(self, index: int) -> str:
        if index not in self.predicted:
            return ""
        c, p = self.predicted[index]
        return f'<br><span class="class">{html.escape(self._label(c))} {100 * p:.0f}%</span>'

    def _classes(self) -> str:
        names = self.categories
        if names is None:
            return ""
        shown = ", ".join(html.escape(str(n)) for n in names[:12])
        return f"<p>Classes ({len(names)}): {shown}{', …' if len(names) > 12 else ''}.</p>\n"

    def _index(self) -> str:
        atlas = self.atlas
        rows = []
        for layer, top in atlas.layers.items():
            slug = self.slugs[layer]
            strongest = torch.argsort(top.values[:, 0], descending=True, stable=True)[:STRIP].tolist()
            strip = "".join(
                f'<a href="{slug}/{c}.html" title="channel {c}, max {_number(float(top.values[c, 0]))}">'
                f'<img class="tile{self.wide}" src="{slug}/img/{c}-0.png" alt="{html.escape(layer)} channel {c}"></a>'
                for c in strongest if torch.isfinite(top.values[c, 0])
            )
            size = "&times;".join(str(s) for s in top.shape[1:])
            rows.append(f'<tr><td><a href="{slug}/index.html">{html.escape(layer)}</a></td><td>{top.values.shape[0]}</td>'
                        f'<td>{size}</td><td>{self._field(layer)}</td><td><div class="strip">{strip}</div></td></tr>')
        skipped = ""
        if atlas.skipped:
            items = "".join(f"<li>{html.escape(atlas.names[i])}: {html.escape(e)}</li>"
                            for i, e in sorted(atlas.skipped.items()))
            skipped = (f'<details><summary>{len(atlas.skipped)} {self.input}(s) could not be read and were skipped'
                       f'</summary><ul>{items}</ul></details>')
        body = (
            f"<h1>Unit atlas: {html.escape(atlas.model)}</h1>\n"
            f'<p class="muted">The {atlas.k} strongest activations of every channel over the dataset, each projected '
            f"back to the input by the deconvnet: {self.shows}.</p>\n"
            f"{self._classes()}<h2>Dataset</h2>\n<p>{html.escape(atlas.source)}: {len(atlas.names)} {self.input}s, "
            f"{atlas.mined} mined, "
            f'<span id="skipped">{len(atlas.skipped)} skipped</span>.</p>\n{skipped}\n'
            "<h2>Layers</h2>\n<table>\n<tr><th>layer</th><th>channels</th><th>map</th><th>receptive field</th>"
            f"<th>strongest channels</th></tr>\n{''.join(rows)}\n</table>\n"
            '<p class="muted">Data: <a href="atlas.json">atlas.json</a>.</p>'
        )
        return _page(f"Unit atlas: {atlas.model}", body, "style.css")

    def _layer(self, layer: str) -> str:
        top = self.atlas.layers[layer]
        cards = []
        for c in range(top.values.shape[0]):
            value = float(top.values[c, 0])
            if torch.isfinite(top.values[c, 0]):
                cards.append(f'<a class="card{self.wide}" href="{c}.html" data-channel="{c}" data-value="{value!r}">'
                             f'<img class="tile{self.wide}" src="img/{c}-0.png" alt="channel {c}" loading="lazy">'
                             f'<span>#{c}</span><span class="value">{_number(value)}</span></a>')
            else:
                cards.append(f'<a class="card empty{self.wide}" href="{c}.html" data-channel="{c}" data-value="-Infinity">'
                             f'<span>#{c}</span><span class="value">no units</span></a>')
        body = (
            f'<nav><a href="../index.html">&larr; all layers</a></nav>\n'
            f"<h1>{html.escape(layer)}</h1>\n"
            f'<p class="muted">{top.values.shape[0]} channels; receptive field {self._field(layer)}. '
            "Each thumbnail is the channel's strongest unit over the dataset, projected down.</p>\n"
            '<div class="controls">Sort: <button data-sort="channel" aria-pressed="true">channel</button>'
            '<button data-sort="value" aria-pressed="false">strongest activation</button>'
            '<label>Channels: <input id="filter" type="search" placeholder="e.g. 3, 10-20" size="14"></label></div>\n'
            f'<div class="grid" id="grid">{"".join(cards)}</div>\n{_SCRIPT}'
        )
        return _page(f"{layer}: {self.atlas.model} atlas", body, "../style.css")

    def _unit(self, layer: str, c: int) -> str:
        atlas, top = self.atlas, self.atlas.layers[layer]
        channels = top.values.shape[0]
        links = ['<a href="index.html">&uarr; ' + html.escape(layer) + "</a>"]
        if c > 0:
            links.append(f'<a href="{c - 1}.html" rel="prev">&larr; channel {c - 1}</a>')
        if c < channels - 1:
            links.append(f'<a href="{c + 1}.html" rel="next">channel {c + 1} &rarr;</a>')
        units = []
        for r in range(atlas.k):
            if not torch.isfinite(top.values[c, r]):
                continue
            index = int(top.images[c, r])
            units.append(
                f'<div class="unit{self.wide}"><img class="tile big{self.wide}" src="img/{c}-{r}.png" '
                f'alt="projection {r + 1}"><img class="tile big{self.wide}" src="img/{c}-{r}-patch.png" '
                f'alt="patch {r + 1}"><div class="text"><b>{r + 1}.</b> '
                f'<span class="value">{_number(float(top.values[c, r]))}</span><br>'
                f"{html.escape(atlas.names[index])}<br>{_position(top.unit(c, r))}{self._prediction(index)}"
                "</div></div>"
            )
        found = len(units)
        note = "" if found == atlas.k else f" (only {found} {self.input}(s) gave this channel a unit)"
        body = (
            f"<nav>{''.join(links)}</nav>\n<h1>{html.escape(layer)}, channel {c}</h1>\n"
            f'<p class="muted">Its {found} strongest activations over the dataset{note}, strongest first: the projection '
            f"(cropped to the receptive field, {self._field(layer)}) and the {self.input} it saw; activation; "
            f"{self.input}; unit position in the feature map"
            f"{f'; the model’s top class for the {self.input}' if self.predicted else ''}.</p>\n"
            f'<div class="units">{"".join(units) or f"<p>No {self.input} gave this channel a unit.</p>"}</div>'
        )
        return _page(f"{layer} channel {c}: {atlas.model} atlas", body, "../style.css")

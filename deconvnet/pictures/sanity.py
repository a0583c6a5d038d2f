"""The sanity checks as pictures (:mod:`deconvnet.analysis.sanity`): the randomization figure
of Adebayo et al., the class-sensitivity rows, and the deletion and insertion curves. Each
function returns a PIL image; each carries a caption that says what its numbers are."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from ..analysis.sanity import ClassSensitivity, Faithfulness, Randomization
from .image import SERIES_COLOURS, fit_text, labelled_grid, line_chart, stack_pictures

__all__ = ["class_sensitivity_figure", "curves_figure", "randomization_figure"]

_CAPTION_WIDTH = 110  # characters per caption line


_SIDE = 128  # px: tiles larger than this are shown averaged down to it (a row of ten stays on a screen)


def _absolute(heat: Tensor) -> Tensor:
    """A heat map (Tensor[H, W]) as its absolute values, grey, white from its 99th percentile up
    (a few extreme pixels would leave the rest black): Tensor[3, H, W]."""
    values = heat.abs().float()
    top = torch.quantile(values.flatten(), 0.99)
    top = top if top > 0 else values.max()
    return _fit((values / top.clamp_min(torch.finfo(values.dtype).tiny)).clamp(0, 1).expand(3, -1, -1))


def _fit(picture: Tensor) -> Tensor:
    """picture (Tensor[3, H, W]) averaged down so that its longer side is at most :data:`_SIDE`."""
    longest = max(picture.shape[-2:])
    if longest <= _SIDE:
        return picture.float().cpu()
    size = [max(1, round(n * _SIDE / longest)) for n in picture.shape[-2:]]
    return F.interpolate(picture.float().cpu()[None], size=size, mode="area")[0]


def _text(lines: Sequence[str], width: int) -> Image.Image:
    """Lines of text on white, ``width`` pixels wide (long lines wrapped at words)."""
    font = ImageFont.load_default()
    wrapped: list[str] = []
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    for line in lines:
        words, current = line.split(), ""
        for word in words:
            candidate = f"{current} {word}".strip()
            if current and probe.textlength(candidate, font=font) > width - 8:
                wrapped.append(current)
                current = word
            else:
                current = candidate
        wrapped.append(current)
    canvas = Image.new("RGB", (width, 6 + 13 * len(wrapped)), "white")
    draw = ImageDraw.Draw(canvas)
    for row, line in enumerate(wrapped):
        draw.text((4, 3 + 13 * row), line, fill="black", font=font)
    return canvas


def _legend(names: Sequence[str], width: int) -> Image.Image:
    """Colour swatches of the chart series, in order, with their names."""
    font = ImageFont.load_default()
    canvas = Image.new("RGB", (width, 20 * len(names) + 4), "white")
    draw = ImageDraw.Draw(canvas)
    for row, name in enumerate(names):
        y = 4 + 20 * row
        draw.rectangle((6, y + 2, 20, y + 12), fill=SERIES_COLOURS[row % len(SERIES_COLOURS)])
        draw.text((26, y), fit_text(draw, name, width - 30, font), fill="black", font=font)
    return canvas


def randomization_figure(result: Randomization, shown: Tensor, *, index: int = 0) -> Image.Image:
    """As Adebayo et al.'s figure: one row per rule, the input, then its absolute heat map on the
    model as loaded (trained, if trained weights were loaded) and after each randomization step
    (captioned with the Spearman correlation with the map as loaded and the step's first layer); under it, the mean Spearman and SSIM over
    the images against the step, one line per rule.

    shown (Tensor[N, 3, H, W] in [0, 1]): the inputs as displayed; ``index``: the one drawn.
    """
    rules = list(result.maps)
    tiles, labels = [], []
    for rule in rules:
        tiles += [_fit(shown[index]), _absolute(result.maps[rule][0, index])]
        labels += [rule, "as loaded"]
        for step, layer in enumerate(result.layers, start=1):
            rho = float(result.similarity[rule]["spearman"][step - 1, index])
            tiles.append(_absolute(result.maps[rule][step, index]))
            labels.append(f"{rho:.2f} {layer}")
    side = tiles[0].shape[-1]
    scale = max(1, -(-72 // side)) if side < 72 else 1  # room for the captions, no more
    grid = labelled_grid(torch.stack(tiles), labels, ncol=2 + len(result.layers), scale=scale)
    steps = list(range(len(result.layers) + 1))
    charts = []
    for name, title in (("spearman", "mean Spearman of |map| with the map as loaded"),
                        ("ssim", "mean SSIM of |map| with the map as loaded")):
        series = torch.stack([torch.cat([torch.ones(1, dtype=torch.float64),
                                         result.similarity[rule][name].mean(dim=1)]) for rule in rules])
        charts.append(line_chart(steps, series, title=title, xlabel="layers randomized (steps, top first)",
                                 size=(330, 200), ylim=(min(-0.2, float(series.min())), 1.0)))
    charts.append(_legend(rules, 140))
    how = "cumulatively, from the top" if result.order == "cascading" else "one group at a time, the rest as loaded"
    caption = _text([
        f"Model-parameter randomization (Adebayo et al. 2018): the layers re-initialised {how}, in "
        f"{len(result.layers)} steps, each captioned by its first layer. Each map is the absolute channel sum of "
        "the class reconstruction, white from its 99th percentile; the number over a step is its Spearman rank "
        "correlation with the map of the model as loaded (1: unchanged). The test assumes trained weights: on "
        "random ones there is nothing learned for the maps to lose. A map that stays alike while the weights that "
        "decide the class are noise does not show what the model learned.",
    ], max(grid.width, 3 * 330 + 140))
    return stack_pictures([grid, stack_pictures(charts, horizontal=True, gap=8), caption], gap=6)


def class_sensitivity_figure(result: ClassSensitivity, shown: Tensor, categories: Sequence[str] | None = None, *,
                             index: int = 0) -> Image.Image:
    """One row per rule: the input, then the absolute heat maps of its top class, its second and
    a random other class, the latter two captioned with their Spearman correlation and SSIM with
    the top class's map; the caption gives each rule's mean over the images."""

    def name(c: int) -> str:
        return str(categories[c]) if categories is not None and c < len(categories) else f"class {c}"

    tiles, labels = [], []
    classes = [int(result.target[index]), int(result.second[index]), int(result.random[index])]
    for rule, maps in result.maps.items():
        tiles += [_fit(shown[index]), *[_absolute(maps[k, index]) for k in range(3)]]
        labels += [rule, f"top: {name(classes[0])}"]
        for k, other in ((1, "second"), (2, "random")):
            values = result.similarity[rule][other]
            labels.append(f"{float(values['spearman'][index]):.2f}/{float(values['ssim'][index]):.2f} {name(classes[k])}")
    side = tiles[0].shape[-1]
    grid = labelled_grid(torch.stack(tiles), labels, ncol=4, scale=max(1, -(-96 // side)) if side < 96 else 1)
    lines = ["Class sensitivity: the map of the top class against the map of the second-ranked and of a random "
             "other class; over each, Spearman / SSIM of the absolute maps (1: the same map, whatever the class). "
             f"Means over {result.target.numel()} image(s):"]
    for rule, by_other in result.similarity.items():
        second, random = by_other["second"], by_other["random"]
        lines.append(f"{rule}: second {float(second['spearman'].mean()):.2f} / {float(second['ssim'].mean()):.2f}, "
                     f"random {float(random['spearman'].mean()):.2f} / {float(random['ssim'].mean()):.2f}")
    return stack_pictures([grid, _text(lines, max(grid.width, 480))], gap=4)


def curves_figure(result: Faithfulness) -> Image.Image:
    """The mean deletion and insertion curves over the images, one line per ordering, with
    each ordering's mean areas in the legend."""
    names = list(result.curves)
    fractions = next(iter(result.curves.values())).fractions.tolist()
    charts = []
    for kind, title in (("deletion", "deletion: P(class) as the first pixels go"),
                        ("insertion", "insertion: P(class) as they come back")):
        series = torch.stack([getattr(result.curves[n], kind).mean(dim=0) for n in names])
        charts.append(line_chart(fractions, series, title=title, xlabel="share of pixels", size=(340, 220),
                                 ylim=(0.0, max(1e-3, float(series.max())))))
    legend = [f"{n}: {float(result.curves[n].deletion_auc.mean()):.3f} / {float(result.curves[n].insertion_auc.mean()):.3f}"
              for n in names]
    charts.append(_legend(legend, 220))
    caption = _text([
        "Deletion and insertion (Petsiuk et al. 2018): pixels taken in the order each map ranks them (its absolute "
        "value, largest first), or by the baselines (occlusion's map, a random order, centre first). Deletion sets "
        "them to the fill value; insertion puts them back into a blurred copy. Legend: mean area under the deletion "
        f"curve / under the insertion curve, over {result.target.numel()} image(s). A faithful order has a low "
        "deletion area and a high insertion area; one no better than random shows little of what the model uses.",
    ], 340 * 2 + 220 + 16)
    return stack_pictures([stack_pictures(charts, horizontal=True, gap=8), caption], gap=4)

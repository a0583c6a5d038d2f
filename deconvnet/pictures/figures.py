"""The paper's figures as pictures: class reconstructions, layer-wise projections, channel
grids and top-9 panels, and the three rules side by side. Each function returns a PIL image;
nothing is written or printed."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor
from torchvision.utils import make_grid

from ..analysis.evolution import Evolution
from ..analysis.invariance import Invariance, transform_image
from ..analysis.occlusion import Occlusion
from ..analysis.topk import TopUnits
from ..deconvnet import DeconvNet
from ..mirror import RULES
from ..receptive import ReceptiveField
from . import image, signals, volumes
from .image import stack_pictures

__all__ = [
    "occlusion_figure_nd",
    "class_name",
    "boxes_figure",
    "channels_figure",
    "class_figure",
    "crop_to_field",
    "evolution_figure",
    "invariance_figure",
    "layers_figure",
    "occlusion_figure",
    "rules_figure",
    "stack_pictures",
    "strongest_units",
    "targets_figure_nd",
    "shown_input",
    "top_units_figure",
    "unit_pictures",
]


def class_name(categories: Sequence[str] | None, index: int) -> str:
    return categories[index] if categories is not None and index < len(categories) else f"class {index}"


def class_figure(
    dn: DeconvNet,
    x: Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    categories: Sequence[str] | None = None,
    top_k: int = 3,
    classes: Sequence[int] | None = None,
    scale: int = 1,
    names: Sequence[str] | None = None,
    show: str | None = None,
) -> Image.Image:
    """One row per image of x (Tensor[N, 3, H, W]): the image (labelled by ``names``, else
    "image 0"), then the reconstructions of its top-k predicted classes (or of ``classes``),
    labelled with name and probability.

    Signals (Tensor[N, C, L]) and volumes or clips (Tensor[N, C, D, H, W]) take their own
    pictures (:mod:`.signals`, :mod:`.volumes`), one input after another: a signal over its
    reconstructions; a volume's planes through each reconstruction's strongest point
    (``show="planes"``), or a clip's frames over each reconstruction's (``show="frames"``,
    the default for three channels).
    """
    trace = dn.trace(x)
    probabilities = trace.output.softmax(dim=1)
    if classes is None:
        top_k = min(top_k, probabilities.shape[1])
        chosen = probabilities.topk(top_k, dim=1).indices  # [N, k]
    else:
        chosen = torch.tensor(list(classes), device=x.device).expand(x.shape[0], -1)
    everything = sorted(set(chosen.flatten().tolist()))
    reconstructions = dn.reconstruct_classes(trace, everything)
    slot = {c: i for i, c in enumerate(everything)}
    if x.dim() != 4:
        return _class_figure_nd(x, reconstructions, probabilities, chosen, slot, categories, names, mean, std, show)
    pictures, labels = [], []
    for n in range(x.shape[0]):
        pictures.append(image.denormalize(trace.input[n], mean, std))
        labels.append(names[n] if names is not None and n < len(names) else f"image {n}")
        for c in chosen[n].tolist():
            pictures.append(image.signed_to_unit(reconstructions[n, slot[c]]))
            labels.append(f"{class_name(categories, c)} {probabilities[n, c]:.2f}")
    return image.labelled_grid(torch.stack(pictures), labels, ncol=1 + chosen.shape[1], scale=scale)


def _class_figure_nd(x: Tensor, reconstructions: Tensor, probabilities: Tensor, chosen: Tensor, slot: dict[int, int],
                     categories: Sequence[str] | None, names: Sequence[str] | None, mean: Sequence[float] | None,
                     std: Sequence[float] | None, show: str | None) -> Image.Image:
    """:func:`class_figure` of signals, volumes and clips: one picture per input, stacked."""
    parts = []
    for n in range(x.shape[0]):
        targets = chosen[n].tolist()
        labels = [f"{class_name(categories, c)} {probabilities[n, c]:.2f}" for c in targets]
        name = names[n] if names is not None and n < len(names) else f"input {n}"
        parts.append(targets_figure_nd(x[n : n + 1], reconstructions[n : n + 1, [slot[c] for c in targets]], labels,
                                       name=name, mean=mean, std=std, show=show))
    return stack_pictures(parts, gap=12)


def targets_figure_nd(x: Tensor, reconstructions: Tensor, labels: Sequence[str], *, name: str = "input 0",
                      mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                      show: str | None = None) -> Image.Image:
    """One signal, volume or clip (x Tensor[1, C, *spatial]) with K reconstructions
    (Tensor[1, K, C, *spatial]), one per label: a signal over its reconstructions; a volume's
    planes through each reconstruction's strongest point (``show="planes"``); a clip's frames
    over each reconstruction's (``show="frames"``, the default for three channels)."""
    if show not in (None, "planes", "frames"):
        raise ValueError(f"show must be 'planes' or 'frames', got {show!r}")
    shown, mine = x.detach().float().cpu(), reconstructions.detach().float().cpu()
    if x.dim() == 3:
        return signals.signal_figure(shown, mine, labels, names=[name])
    if (show or ("frames" if x.shape[1] == 3 else "planes")) == "frames":
        strips = [volumes.clip_strip(shown[0], mine[0, j], mean=mean, std=std, label=label, title=f"{name}: {label}")
                  for j, label in enumerate(labels)]
        return stack_pictures(strips, gap=6)
    return volumes.planes_figure(shown, mine, labels, mean=mean, std=std, names=[name])


def rules_figure(
    dn: DeconvNet,
    x: Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    categories: Sequence[str] | None = None,
    scale: int = 1,
) -> Image.Image:
    """One row per image: the image, then its top class reconstructed with each rule
    (deconvnet, guided backpropagation, plain gradient) from the same trace."""
    trace = dn.trace(x)
    top = trace.output.argmax(dim=1)
    pictures, labels = [], []
    per_rule = {rule: dn.reconstruct_classes(trace, sorted(set(top.tolist())), rule=rule) for rule in RULES}
    slot = {c: i for i, c in enumerate(sorted(set(top.tolist())))}
    for n in range(x.shape[0]):
        c = int(top[n])
        pictures.append(image.denormalize(trace.input[n], mean, std))
        labels.append(class_name(categories, c))
        for rule, reconstructions in per_rule.items():
            pictures.append(image.signed_to_unit(reconstructions[n, slot[c]]))
            labels.append(rule)
    return image.labelled_grid(torch.stack(pictures), labels, ncol=1 + len(RULES), scale=scale)


def strongest_units(dn: DeconvNet, x: Tensor, layers: Sequence[str]) -> list[tuple[str, int]]:
    """For one image (x Tensor[1, ...]), each layer's channel holding its strongest activation."""
    trace = dn.trace(x)
    found = []
    for layer in layers:
        activation = dn.activation(trace, layer)[0]
        flat = activation.reshape(activation.shape[0], -1)
        found.append((layer, int(flat.max(dim=1).values.argmax())))
    return found


def layers_figure(
    dn: DeconvNet,
    x: Tensor,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    layers: Sequence[str] | None = None,
    *,
    scale: int = 1,
    ncol: int = 6,
    show: str | None = None,
    name: str | None = None,
) -> Image.Image:
    """For one input (x Tensor[1, C, H, W]; a signal [1, C, L], a volume or clip [1, C, D, H, W]
    drawn as :func:`targets_figure_nd` draws them): the strongest activation of every layer (or
    of ``layers``) projected down, one panel per layer, after the input itself (captioned
    ``name``, default "image" or "input 0")."""
    layers = list(layers) if layers is not None else dn.layers
    trace = dn.trace(x)
    found = strongest_units(dn, trace.input, layers)
    projections = torch.cat([dn.reconstruct(trace, layer, channel)[:1] for layer, channel in found], dim=1)
    labels = [f"{layer} #{channel}" for layer, channel in found]
    if x.dim() != 4:
        return targets_figure_nd(trace.input[:1], projections, labels, name=name or "input 0", mean=mean, std=std,
                                 show=show)
    pictures = [shown_input(trace.input[:1], mean, std)[0], *image.signed_to_unit(projections[0])]
    return image.labelled_grid(torch.stack(pictures), [name or "image", *labels], ncol=ncol, scale=scale)


def channels_figure(
    dn: DeconvNet,
    x: Tensor,
    layer: str,
    *,
    channels: Sequence[int] | None = None,
    scale: int = 1,
    ncol: int = 8,
    show: str | None = None,
    name: str = "input 0",
) -> Image.Image:
    """For one input (x Tensor[1, C, H, W]; a signal or volume as in :func:`layers_figure`):
    every channel of ``layer`` (or ``channels``), each by its strongest unit; ``name`` captions a
    signal or volume."""
    projections = dn.reconstruct(x, layer, channels)[:1]
    chosen = list(range(projections.shape[1])) if channels is None else list(channels)
    labels = [f"#{c}" for c in chosen]
    if x.dim() != 4:
        return targets_figure_nd(x[:1], projections, labels, name=name, show=show)
    return image.labelled_grid(image.signed_to_unit(projections[0]), labels, ncol=ncol, scale=scale)


def crop_to_field(
    picture: Tensor, field: ReceptiveField | None, unit: tuple[int, ...], fill: float
) -> Tensor:
    """The receptive field of ``unit`` cut out of picture (Tensor[C, *spatial]: [C, H, W], [C, L]
    or [C, D, H, W]), padded with ``fill`` where the field reaches past the input, so every crop of
    a layer has one size."""
    if field is None or not unit:
        return picture
    spatial = picture.shape[1:]
    starts = field.start(unit)
    pads: list[int] = []
    for start, size, length in zip(starts, field.size, spatial, strict=True):
        pads = [max(0, -start), max(0, start + size - length), *pads]  # F.pad lists the last dim first
    padded = F.pad(picture, pads, value=fill)
    # the field's corner in padded coordinates is where it starts, shifted by the padding before it
    return padded[(slice(None), *(slice(max(0, s), max(0, s) + size) for s, size in zip(starts, field.size, strict=True)))]


def unit_pictures(projection: Tensor, shown: Tensor, field: ReceptiveField | None,
                  unit: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    """One kept unit drawn as top-9 panels and atlas tiles show it: its projection and the input
    it saw, both cut to its receptive field, as pictures Tensor[3, h, w] in [0, 1].

    projection (Tensor[C, *spatial]): the unit's reconstruction; shown (Tensor[C, *spatial]): the
    input in [0, 1] (:func:`shown_input`). Images: the two crops. Signals: each crop as a line
    trace (the projection about a zero line). Volumes and clips: the field's three orthogonal
    slices through its centre, side by side.
    """
    crop, patch = crop_to_field(projection, field, unit, 0.0), crop_to_field(shown, field, unit, float("nan"))
    if crop.dim() == 3:
        return image.signed_to_unit(crop), torch.nan_to_num(patch, nan=1.0)
    if crop.dim() == 2:
        return signals.trace_picture(crop, signed=True), signals.trace_picture(patch, low=0.0, high=1.0)
    return (volumes.field_planes(volumes.signed_volume(crop)),
            volumes.field_planes(torch.nan_to_num(patch, nan=1.0)))


def shown_input(x: Tensor, mean: Sequence[float] | None, std: Sequence[float] | None) -> Tensor:
    """Inputs (Tensor[N, C, *spatial]) in [0, 1] for display: images with the model's
    normalisation undone; signals, volumes and clips stretched each to its own range (their
    values have no display scale), or with ``mean``/``std`` undone when given."""
    x = x.detach().float()
    if x.dim() == 4:
        channels = x.shape[1]
        return image.denormalize(x, mean if mean is not None else (0.0,) * channels,
                                 std if std is not None else (1.0,) * channels)
    return torch.stack([volumes.display(one, mean, std) for one in x])


def top_units_figure(
    top: TopUnits,
    projections: Tensor,
    patches: Tensor,
    field: ReceptiveField | None,
    channels: Sequence[int],
    *,
    scale: int = 2,
    ncol: int = 4,
) -> Image.Image:
    """The paper's Fig. 2 for one layer: for each channel, its kept units' projections cropped
    to the receptive field (a 3x3 block for k = 9) next to the matching input patches. Slots
    whose activation is not positive (the channel fired on fewer than k inputs) stay blank.
    Each unit is drawn by :func:`unit_pictures`: signals as traces, volumes and clips as the
    field's three orthogonal slices.

    projections (Tensor[len(channels), k, C, *spatial]); patches: the inputs, same shape, in
    [0, 1] (:func:`shown_input`).
    """
    k = projections.shape[1]
    side = int(k**0.5) if int(k**0.5) ** 2 == k else k
    blocks, labels = [], []
    for j, c in enumerate(channels):
        drawn = [unit_pictures(projections[j, r], patches[j, r], field, top.unit(c, r)) for r in range(k)]
        blank = image.MID_GREY if projections.dim() != 4 else 1.0  # zero, as each draws it: mid-grey; a trace: white
        crops = [p if top.values[c, r] > 0 else torch.full_like(p, blank) for r, (p, _) in enumerate(drawn)]
        # fewer than k inputs made this channel fire at all: those slots stay blank
        seen = [q if top.values[c, r] > 0 else torch.ones_like(q) for r, (_, q) in enumerate(drawn)]
        gap = 3 if projections.dim() == 6 else 1  # a volume's unit is three slices: a wider seam between units
        blocks.append(_tile(torch.stack(crops), side, gap))
        blocks.append(_tile(torch.stack(seen), side, gap))
        labels += [f"{top.layer} #{c} max {float(top.values[c, 0]):.3g}",
                   "patches" if projections.dim() != 6 else "patches (3 slices each)"]
    if projections.dim() != 5:  # traces and slices are wider than tall: fewer blocks to a row, each big enough to read
        ncol = max(1, ncol // (2 if projections.dim() == 4 else 4))
        scale = max(scale, -(-40 * side // blocks[0].shape[1]))
    return image.labelled_grid(torch.stack(blocks), labels, ncol=2 * ncol, scale=scale, padding=4)


def _tile(pictures: Tensor, side: int, gap: int = 1) -> Tensor:
    """Tensor[k, 3, h, w] -> one picture of ``side`` columns with ``gap``-pixel white seams."""
    grid = make_grid(pictures, nrow=side, padding=gap, pad_value=1.0)
    return grid[:, gap:-gap, gap:-gap]


# Label colours of the occlusion figure: the chart colours without their grey, which is "other".
_LABEL_COLOURS = torch.tensor([c for c in image.SERIES_COLOURS if len(set(c)) > 1][:8]) / 255
_OTHER = torch.tensor([0.75, 0.75, 0.75])


def occlusion_figure(
    result: Occlusion,
    x: Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    categories: Sequence[str] | None = None,
    index: int = 0,
) -> Image.Image:
    """The paper's Fig. 7 for image ``index`` of x (Tensor[N, 3, H, W]): (a) the image with the
    occluder drawn at its centre position, (b) the total activation of the strongest feature
    map at each occluder position (when ``result`` has a layer), (c) that map's strongest
    unit projected down, (d) the probability of the target class (black 0 to pale yellow 1),
    (e) the most probable label at each position, with a legend.

    A signal (x Tensor[N, C, L]) or a volume (Tensor[N, C, D, H, W]) takes its own picture
    (:func:`occlusion_figure_nd`)."""
    if x.dim() != 4:
        return occlusion_figure_nd(result, x, categories=categories, index=index)
    picture = image.denormalize(x[index], mean, std).cpu()
    height, width = picture.shape[-2:]
    top, left = (height - result.size) // 2, (width - result.size) // 2
    shown = picture.clone()
    shown[:, top : top + result.size, left : left + result.size] = image.MID_GREY
    panels, labels = [shown], [f"(a) {result.size} px occluder"]
    if result.activation is not None and result.projection is not None and result.channel is not None:
        activation = result.activation[index].float().cpu()
        low, high = activation.min(), activation.max()
        panels.append(_grid_picture(image.colormap((activation - low) / (high - low).clamp_min(1e-12)), result,
                                    height, width))
        labels.append(f"(b) {result.layer} #{int(result.channel[index])} total")
        panels.append(image.signed_to_unit(result.projection[index].float().cpu()))
        labels.append("(c) its strongest unit")
    target = int(result.target[index])
    probability = result.probability[index].float().cpu()
    peak = max(float(probability.max()), 1e-12)
    panels.append(_grid_picture(image.colormap(probability / peak), result, height, width))
    labels.append(f"(d) p({class_name(categories, target)}) 0-{peak:.2f}")
    label_map, legend = _label_colours(result.label[index].cpu(), categories)
    panels.append(_grid_picture(label_map, result, height, width))
    labels.append("(e) most probable label")
    panels.append(_legend(legend, height, width))
    labels.append("")
    return image.labelled_grid(torch.stack(panels), labels, ncol=len(panels))


def _on_input(grid: Tensor, result: Occlusion, spatial: Sequence[int]) -> Tensor:
    """A value per occluder position (Tensor[*grid]) laid on the input's positions: each as a
    ``stride``-long block at the occluder's centre; NaN where no centre reaches."""
    out = torch.full(tuple(spatial), float("nan"))
    blocks = grid.float().cpu()
    for axis in range(grid.dim()):
        blocks = blocks.repeat_interleave(result.stride, axis)
    start = max(result.size // 2 - result.stride // 2, 0)
    region = tuple(slice(start, start + min(blocks.shape[a], n - start)) for a, n in enumerate(spatial))
    out[region] = blocks[tuple(slice(0, r.stop - r.start) for r in region)]
    return out


def occlusion_figure_nd(result: Occlusion, x: Tensor, *, categories: Sequence[str] | None = None,
                        index: int = 0) -> Image.Image:
    """Occlusion of a signal or a volume: the probability of the target class with the occluder
    at each position, laid on the input's own axis or planes.

    A signal (x Tensor[N, C, L]): its chart, and under it P(target) against the occluder's centre.
    A volume or clip (Tensor[N, C, D, H, W]): its three planes through the position where the
    probability drops most, and the probability map's planes there, from black at the map's
    lowest value to pale yellow at its highest (the range in the captions).
    """
    target = class_name(categories, int(result.target[index]))
    probability = result.probability[index].float().cpu()
    unoccluded = float(result.unoccluded[index])
    spatial = tuple(x.shape[2:])
    laid = _on_input(probability, result, spatial)
    title = f"p({target}) with a {result.size}-wide occluder (unoccluded {unoccluded:.2f})"
    if x.dim() == 3:
        signal = signals.signal_chart(x[index].float().cpu(), title="input")
        drawn = torch.nan_to_num(laid, nan=unoccluded)[None]
        chart = signals.signal_chart(drawn, title=title)
        return stack_pictures([signal, chart], gap=4)
    filled = torch.nan_to_num(laid, nan=unoccluded)
    at = volumes.strongest_point((unoccluded - filled)[None])
    shown = volumes.display(x[index].float().cpu())
    # the map's own range, stated: a probability that barely moves would otherwise look flat
    low, high = float(probability.min()), float(probability.max())
    stretched = (filled - low) / max(high - low, 1e-12)
    side = max(spatial)
    tiles = volumes.plane_tiles(shown, at, side) + volumes.plane_tiles(stretched[None], at, side,
                                                                        lambda values: image.colormap(values[0]))
    captions = [f"input, {plane}" for plane in volumes.PLANES] + [f"p {low:.3g}-{high:.3g}, {plane}"
                                                                   for plane in volumes.PLANES]
    grid = image.labelled_grid(torch.stack(tiles), captions, ncol=6, scale=max(2, -(-120 // side)))
    return image.titled(grid, title)


def _grid_picture(colours: Tensor, result: Occlusion, height: int, width: int) -> Tensor:
    """A grid of colours (Tensor[3, gh, gw], one per occluder position) drawn over the image
    frame: each position as a ``stride``-sided block at the occluder's centre (a grid, not a
    smooth field); the border no centre reaches stays white."""
    gh, gw = colours.shape[-2:]
    blocks = colours.repeat_interleave(result.stride, -2).repeat_interleave(result.stride, -1)
    canvas = torch.ones(3, height, width)
    top = left = max(result.size // 2 - result.stride // 2, 0)
    rows, cols = min(gh * result.stride, height - top), min(gw * result.stride, width - left)
    canvas[:, top : top + rows, left : left + cols] = blocks[:, :rows, :cols]
    return canvas


def _label_colours(labels: Tensor, categories: Sequence[str] | None) -> tuple[Tensor, list[tuple[Tensor, str]]]:
    """The label grid (LongTensor[gh, gw]) coloured by its most frequent labels; the legend."""
    counts = torch.bincount(labels.flatten())
    frequent = counts.argsort(descending=True)[: len(_LABEL_COLOURS)]
    frequent = [int(c) for c in frequent if counts[c] > 0]
    colours = _OTHER.view(3, 1, 1).repeat(1, *labels.shape)
    legend = []
    for colour, label in zip(_LABEL_COLOURS, frequent, strict=False):
        colours[:, labels == label] = colour[:, None]
        share = float(counts[label]) / labels.numel()
        legend.append((colour, f"{class_name(categories, label)} {_share(share)}"))
    if len(frequent) < int((counts > 0).sum()):
        legend.append((_OTHER, "other labels"))
    return colours, legend


def _share(share: float) -> str:
    """A share of positions as a percentage that never rounds a minority away."""
    if 0 < share < 0.01:
        return "<1%"
    if 0.99 < share < 1:
        return ">99%"
    return f"{share:.0%}"


def _legend(entries: list[tuple[Tensor, str]], height: int, width: int) -> Tensor:
    """Colour swatches with their names, as a picture (Tensor[3, height, width])."""
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for row, (colour, text) in enumerate(entries):
        y = 6 + row * 18
        fill = tuple(round(float(v) * 255) for v in colour)
        draw.rectangle((4, y, 16, y + 12), fill=fill)
        draw.text((22, y), text, fill="black", font=font)
    array = torch.frombuffer(bytearray(canvas.tobytes()), dtype=torch.uint8).view(height, width, 3)
    return array.permute(2, 0, 1).float() / 255


_UNITS = {"translate": "shift (px)", "scale": "zoom ratio", "rotate": "rotation (degrees)"}


def invariance_figure(
    results: Sequence[Invariance],
    x: Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    categories: Sequence[str] | None = None,
    thumbnail: int = 72,
) -> Image.Image:
    """The paper's Fig. 5: one row per transform. (a) each example image at the largest amount,
    under the colour of its curves; (b) distance at the first layer, (c) at the last layer of
    the result, both against the amount; (d) the probability of each image's target class.

    x (Tensor[N, C, H, W]): the images the results were computed on.
    """
    rows = []
    font = ImageFont.load_default()
    for result in results:
        amounts = result.amounts.tolist()
        extreme = max(amounts, key=lambda a: _departure(result.transform, a))
        shown = image.denormalize(transform_image(x, result.transform, extreme).float().cpu(), mean, std)
        shown = F.interpolate(shown, size=(thumbnail, thumbnail), mode="bilinear", antialias=True, align_corners=False)
        n = shown.shape[0]
        strip = Image.new("RGB", (n * (thumbnail + 6) + 6, thumbnail + 40), "white")
        draw = ImageDraw.Draw(strip)
        draw.text((6, 2), f"{result.transform} {extreme:.3g}", fill="black", font=font)
        for i in range(n):
            left = 6 + i * (thumbnail + 6)
            strip.paste(image.to_pil(shown[i].clamp(0, 1)), (left, 16))
            colour = image.SERIES_COLOURS[i % len(image.SERIES_COLOURS)]
            draw.rectangle((left, thumbnail + 19, left + thumbnail - 1, thumbnail + 24), fill=colour)
            if categories is not None:
                label = class_name(categories, int(result.target[i]))
                draw.text((left, thumbnail + 26), image.fit_text(draw, label, thumbnail, font), fill="black", font=font)
        xlabel = _UNITS[result.transform]
        charts = [
            image.line_chart(amounts, result.distance[0], title=f"(b) distance at {result.layers[0]}", xlabel=xlabel),
            image.line_chart(amounts, result.distance[-1], title=f"(c) distance at {result.layers[-1]}", xlabel=xlabel),
            image.line_chart(amounts, result.probability, title="(d) P(class)", xlabel=xlabel, ylim=(0.0, 1.0)),
        ]
        rows.append(stack_pictures([strip, *charts], horizontal=True))
    return stack_pictures(rows)


def _departure(transform: str, amount: float) -> float:
    """How far an amount is from doing nothing (a full turn does nothing)."""
    if transform == "rotate":
        return abs((amount + 180) % 360 - 180)
    if transform == "scale":
        return abs(math.log(amount)) if amount > 0 else 0.0
    return abs(amount)


_LABEL_WIDTH = 96  # px: what a caption such as "#31 step 2000 225" needs in the default font


def evolution_figure(result: Evolution, field: ReceptiveField | None, *, scale: int = 3) -> Image.Image:
    """The paper's Fig. 4: one row per channel, one column per checkpoint; each tile is the
    channel's strongest unit over the dataset under that checkpoint, projected down and cropped
    to its receptive field, labelled with the channel, checkpoint and activation. Small fields
    are scaled up further, so the captions fit."""
    tiles, labels = [], []
    for row, c in enumerate(result.channels):
        for step, label in enumerate(result.labels):
            tiles.append(image.signed_to_unit(crop_to_field(result.projections[row, step], field,
                                                            result.unit(row, step), 0.0)))
            labels.append(f"#{c} {label} {float(result.values[row, step]):.3g}")
    width = tiles[0].shape[-1]
    scale = max(scale, -(-_LABEL_WIDTH // width))
    return image.labelled_grid(torch.stack(tiles), labels, ncol=len(result.labels), scale=scale, padding=4)


def boxes_figure(
    x: Tensor,
    boxes: Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    labels: Sequence[str] | None = None,
    ncol: int | None = None,
    scale: int = 1,
    colour: tuple[float, float, float] = (1.0, 0.0, 0.0),
) -> Image.Image:
    """Images (Tensor[N, C, H, W], model input) with one box each (LongTensor[N, 4]: top, left,
    height, width) outlined, as the paper's Fig. 8 shows the occluded parts."""
    shown = image.denormalize(x.detach().float().cpu(), mean, std).clone()
    paint = torch.tensor(colour).view(3, 1)
    for i, (top, left, h, w) in enumerate(torch.as_tensor(boxes).tolist()):
        bottom, right = top + h - 1, left + w - 1
        shown[i, :, top, left : right + 1] = paint
        shown[i, :, bottom, left : right + 1] = paint
        shown[i, :, top : bottom + 1, left] = paint
        shown[i, :, top : bottom + 1, right] = paint
    return image.labelled_grid(shown, labels, ncol=ncol, scale=scale)

"""Sanity checks of the maps: do they depend on what the model learned, and on the class asked?

- :func:`model_randomization` (Adebayo et al. 2018, "Sanity Checks for Saliency Maps"): the
  model's layers re-initialised from the top, cumulatively (``"cascading"``) or one group at a
  time (``"independent"``), on a copy; after each step, each rule's maps compared with the
  trained model's. A map that stays the same while the weights that make the decision are noise
  does not explain the decision.
- :func:`class_sensitivity` (Quantus's random-logit test, Sixt et al. 2020): each rule's map of
  the top class compared with its map of the second-ranked class and of a random other class.
  A map that is the same for every class cannot say why it is this class.
- :func:`faithfulness`: deletion and insertion curves (:func:`deconvnet.metrics.deletion_insertion`)
  for each rule's map, for occlusion, and for two baselines: random order and centre first.

Maps are compared as heat maps: the channel sum of each reconstruction, Tensor[H, W].
Similarities, each per image:

- Spearman rank correlation of the absolute heat maps (ties take their average rank), as
  Quantus's model-parameter-randomisation test computes by default;
- SSIM of the absolute heat maps, each divided by its largest value, with a uniform 7 x 7
  window over the pair's range (scikit-image's ``structural_similarity`` as Quantus calls it);
- Pearson correlation of the signed heat maps.

Images only (Tensor[N, C, H, W]).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..deconvnet import DeconvNet
from ..errors import InputError
from ..metrics import Curves, deletion_insertion, order_by
from ..mirror import RULES
from .occlusion import Occlusion, occlusion

__all__ = [
    "ClassSensitivity",
    "Faithfulness",
    "Randomization",
    "SIMILARITIES",
    "class_sensitivity",
    "faithfulness",
    "heat",
    "model_randomization",
    "occlusion_saliency",
    "pearson",
    "randomization_groups",
    "spearman",
    "ssim",
]

SIMILARITIES = ("spearman", "ssim", "pearson")


# --- similarities --------------------------------------------------------------------------------


def heat(maps: Tensor) -> Tensor:
    """Heat maps: maps (Tensor[..., C, H, W]) summed over channels -> Tensor[..., H, W]."""
    return maps.sum(dim=-3)


def _ranks(values: Tensor) -> Tensor:
    """Ranks along the last dim (Tensor[N, P]), ties taking their average rank, from 1."""
    ordered, order = values.double().sort(dim=1)
    count, length = ordered.shape
    starts = torch.ones_like(ordered, dtype=torch.bool)
    starts[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    block = starts.long().cumsum(dim=1) - 1  # each sorted value's run of equal values
    place = torch.arange(length, dtype=torch.float64, device=values.device).expand(count, length)
    first = torch.full_like(place, float(length)).scatter_reduce(1, block, place, "amin")
    last = torch.full_like(place, -1.0).scatter_reduce(1, block, place, "amax")
    average = (first.gather(1, block) + last.gather(1, block)) / 2 + 1
    return torch.empty_like(average).scatter_(1, order, average)


def _correlation(a: Tensor, b: Tensor) -> Tensor:
    """Pearson correlation of each row pair (Tensor[N, P]); 0 where a row is constant."""
    a = a.double() - a.double().mean(dim=1, keepdim=True)
    b = b.double() - b.double().mean(dim=1, keepdim=True)
    norms = a.norm(dim=1) * b.norm(dim=1)
    return torch.where(norms > 0, (a * b).sum(dim=1) / norms.clamp_min(torch.finfo(torch.float64).tiny), 0.0)


def spearman(a: Tensor, b: Tensor) -> Tensor:
    """Spearman rank correlation of the absolute heat maps, a and b (Tensor[N, H, W]): Tensor[N]."""
    return _correlation(_ranks(a.abs().flatten(1)), _ranks(b.abs().flatten(1)))


def pearson(a: Tensor, b: Tensor) -> Tensor:
    """Pearson correlation of the signed heat maps, a and b (Tensor[N, H, W]): Tensor[N]."""
    return _correlation(a.flatten(1), b.flatten(1))


def ssim(a: Tensor, b: Tensor, window: int = 7) -> Tensor:
    """SSIM (Wang et al. 2004) of the absolute heat maps, a and b (Tensor[N, H, W]), each divided
    by its largest value: a uniform ``window``-sided window, sample covariances, the pair's
    range as the data range, averaged over the windows that lie inside the map: Tensor[N]."""
    if min(a.shape[-2:]) < window:
        raise InputError(f"SSIM needs maps of at least {window} x {window} pixels, got {tuple(a.shape[-2:])}")
    a, b = (_unit(m.abs().double()) for m in (a, b))
    both = torch.stack([a, b], dim=1)
    span = (both.flatten(1).max(dim=1).values - both.flatten(1).min(dim=1).values).view(-1, 1, 1)
    c1, c2 = (0.01 * span) ** 2, (0.03 * span) ** 2

    def mean(values: Tensor) -> Tensor:
        return F.avg_pool2d(values[:, None], window, stride=1)[:, 0]

    samples = window * window
    correct = samples / (samples - 1)  # sample, not population, covariances
    mean_a, mean_b = mean(a), mean(b)
    var_a = (mean(a * a) - mean_a**2) * correct
    var_b = (mean(b * b) - mean_b**2) * correct
    cov = (mean(a * b) - mean_a * mean_b) * correct
    value = ((2 * mean_a * mean_b + c1) * (2 * cov + c2)) / ((mean_a**2 + mean_b**2 + c1) * (var_a + var_b + c2))
    # two maps that are both all zero are the same map
    return torch.where(span.flatten() > 0, value.flatten(1).mean(dim=1), 1.0)


def _unit(values: Tensor) -> Tensor:
    """Each map (Tensor[N, H, W]) divided by its largest value (all-zero maps stay zero)."""
    peak = values.flatten(1).max(dim=1).values.view(-1, 1, 1)
    return values / torch.where(peak > 0, peak, 1.0)


def _similarities(a: Tensor, b: Tensor) -> dict[str, Tensor]:
    """Each similarity of heat maps a and b (Tensor[N, H, W]) -> Tensor[N]."""
    return {"spearman": spearman(a, b), "ssim": ssim(a, b), "pearson": pearson(a, b)}


def _class_maps(dn: DeconvNet, x: Tensor, target: Tensor, rule: str) -> Tensor:
    """Each image's heat map of its own class: Tensor[N, H, W]."""
    classes = sorted(set(target.tolist()))
    maps = dn.reconstruct_classes(x, classes, rule=rule)
    slot = torch.tensor([classes.index(c) for c in target.tolist()], device=maps.device)
    return heat(maps[torch.arange(x.shape[0], device=maps.device), slot]).double().cpu()


def _checked(model: nn.Module | DeconvNet, x: Tensor, rules: Sequence[str]) -> DeconvNet:
    if x.dim() != 4:
        raise InputError(f"the sanity checks take images, Tensor[N, C, H, W]; got shape {tuple(x.shape)}")
    unknown = [r for r in rules if r not in RULES]
    if unknown or not rules:
        raise InputError(f"rules must be among {', '.join(RULES)}; got {list(rules)}")
    return model if isinstance(model, DeconvNet) else DeconvNet(model)


def _predicted(dn: DeconvNet, x: Tensor, target: int | Sequence[int] | Tensor | None) -> Tensor:
    with torch.no_grad():
        output = dn.model(x)
    if output.dim() != 2:
        raise InputError(f"the model gives {tuple(output.shape)} per batch, not [N, classes]: no class to explain")
    if target is None:
        return output.argmax(dim=1).cpu()
    chosen = torch.as_tensor(target).reshape(-1).long().cpu()
    chosen = chosen.expand(x.shape[0]) if chosen.numel() == 1 else chosen
    if chosen.numel() != x.shape[0] or ((chosen < 0) | (chosen >= output.shape[1])).any():
        raise InputError(f"target {chosen.tolist()} does not give one class of 0..{output.shape[1] - 1} per image")
    return chosen


# --- model-parameter randomization -----------------------------------------------------------


def randomization_groups(dn: DeconvNet, steps: int = 8) -> list[list[str]]:
    """The modules :func:`model_randomization` re-initialises, top first, in at most ``steps``
    groups of neighbours: the modules with their own parameters and a ``reset_parameters``
    (convs, linears, norms), in the order the forward pass calls them, split evenly."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise InputError(f"steps must be a positive int, got {steps!r}")
    modules = dict(dn.model.named_modules())
    called = list(dict.fromkeys(step.name for step in dn.network.steps.values()))
    names = [n for n in called if n in modules and hasattr(modules[n], "reset_parameters")
             and any(True for _ in modules[n].parameters(recurse=False))]
    if not names:
        raise InputError("the model has no layer with parameters to randomize")
    names.reverse()  # the top first
    count = min(steps, len(names))
    bounds = [round(i * len(names) / count) for i in range(count + 1)]
    return [names[lo:hi] for lo, hi in zip(bounds, bounds[1:], strict=False)]


@dataclass
class Randomization:
    """The maps of each rule as the model's layers are re-initialised.

    groups: the module names re-initialised at each step, top first (``layers``: each group's
    first, naming the step). order: ``"cascading"`` (each step adds its group to those before)
    or ``"independent"`` (each step alone). maps: rule -> Tensor[1 + steps, N, H, W], the
    trained model's heat maps, then each step's. similarity: rule -> name (:data:`SIMILARITIES`)
    -> Tensor[steps, N], each step's map against the trained model's. target: LongTensor[N].
    """

    order: str
    groups: list[list[str]]
    maps: dict[str, Tensor]
    similarity: dict[str, dict[str, Tensor]]
    target: Tensor

    @property
    def layers(self) -> list[str]:
        return [group[0] for group in self.groups]

    def summary(self) -> dict:
        """Per rule: each step's layers and the mean and spread (std over images) of each
        similarity, as ``sanity.json`` writes them."""
        return {rule: [{"step": i + 1, "layers": self.groups[i],
                        **{name: {"mean": float(values[i].mean()), "std": float(values[i].std(correction=0))}
                           for name, values in self.similarity[rule].items()}}
                       for i in range(len(self.groups))]
                for rule in self.similarity}


def model_randomization(
    model: nn.Module | DeconvNet,
    x: Tensor,
    *,
    target: int | Sequence[int] | Tensor | None = None,
    rules: Sequence[str] = RULES,
    order: str = "cascading",
    steps: int = 8,
    seed: int = 0,
) -> Randomization:
    """Adebayo et al.'s model-parameter randomization test.

    x (Tensor[N, C, H, W]); target: the class explained per image (default: the trained
    model's prediction, kept for every step). The layers of :func:`randomization_groups` are
    re-initialised with their own ``reset_parameters`` (PyTorch's default initialisation) on a
    deep copy of the model, from a generator seeded with ``seed + step`` (the caller's random
    state is left as it was). The user's model is never touched.
    """
    dn = _checked(model, x, rules)
    if order not in ("cascading", "independent"):
        raise InputError(f"order must be 'cascading' or 'independent', got {order!r}")
    groups = randomization_groups(dn, steps)
    chosen = _predicted(dn, x, target)
    original = {rule: _class_maps(dn, x, chosen, rule) for rule in rules}
    copied = copy.deepcopy(dn.model)
    trained = copy.deepcopy(copied.state_dict())
    randomized = DeconvNet(copied, rectifiers=dn.rectifiers)
    modules = dict(copied.named_modules())
    device = x.device
    maps: dict[str, list[Tensor]] = {rule: [original[rule]] for rule in rules}
    for step, group in enumerate(groups, start=1):
        if order == "independent":
            copied.load_state_dict(trained)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
            torch.manual_seed(seed + step)
            for name in group:
                modules[name].reset_parameters()  # type: ignore[operator]
        for rule in rules:
            maps[rule].append(_class_maps(randomized, x, chosen, rule))
    stacked = {rule: torch.stack(values) for rule, values in maps.items()}
    similarity = {rule: {name: torch.stack([_similarities(stacked[rule][0], stacked[rule][i])[name]
                                            for i in range(1, len(groups) + 1)]) for name in SIMILARITIES}
                  for rule in rules}
    return Randomization(order, groups, stacked, similarity, chosen)


# --- class sensitivity ---------------------------------------------------------------------------


@dataclass
class ClassSensitivity:
    """Each rule's map of the top class against its map of another class.

    target, second, random (LongTensor[N]): the top class, the second-ranked, a random other
    one. maps: rule -> Tensor[3, N, H, W] (target, second, random). similarity: rule -> "second"
    or "random" -> name (:data:`SIMILARITIES`) -> Tensor[N]. High similarity: the map barely
    depends on the class asked.
    """

    target: Tensor
    second: Tensor
    random: Tensor
    maps: dict[str, Tensor]
    similarity: dict[str, dict[str, dict[str, Tensor]]] = field(default_factory=dict)

    def summary(self) -> dict:
        return {rule: {other: {name: {"mean": float(v.mean()), "std": float(v.std(correction=0))}
                               for name, v in values.items()} for other, values in by_other.items()}
                for rule, by_other in self.similarity.items()}


def class_sensitivity(
    model: nn.Module | DeconvNet, x: Tensor, *, rules: Sequence[str] = RULES, seed: int = 0
) -> ClassSensitivity:
    """Each rule's map of each image's top class against its map of the second-ranked class
    and of a random other class (drawn with ``seed``, uniformly among the rest), as Quantus's
    random-logit metric compares them. x (Tensor[N, C, H, W])."""
    dn = _checked(model, x, rules)
    with torch.no_grad():
        output = dn.model(x)
    if output.dim() != 2 or output.shape[1] < 2:
        raise InputError(f"class sensitivity needs a classifier of at least 2 classes; the model gives "
                         f"{tuple(output.shape)}")
    ranked = output.argsort(dim=1, descending=True).cpu()
    target, second = ranked[:, 0], ranked[:, 1]
    generator = torch.Generator().manual_seed(seed)
    draws = torch.randint(0, output.shape[1] - 1, (x.shape[0],), generator=generator)
    random = draws + (draws >= target).long()  # skips the top class
    maps, similarity = {}, {}
    for rule in rules:
        classes = sorted(set(torch.cat([target, second, random]).tolist()))
        every = heat(dn.reconstruct_classes(x, classes, rule=rule)).double().cpu()
        pick = [every[torch.arange(x.shape[0]), torch.tensor([classes.index(c) for c in chosen.tolist()])]
                for chosen in (target, second, random)]
        maps[rule] = torch.stack(pick)
        similarity[rule] = {"second": _similarities(pick[0], pick[1]), "random": _similarities(pick[0], pick[2])}
    return ClassSensitivity(target, second, random, maps, similarity)


# --- deletion and insertion ----------------------------------------------------------------------


def occlusion_saliency(result: Occlusion, spatial: Sequence[int]) -> Tensor:
    """Occlusion's map per pixel, Tensor[N, H, W]: the mean drop in the target's probability
    over the occluder positions that cover the pixel (0 where none does)."""
    drop = (result.unoccluded.view(-1, 1, 1) - result.probability).double()[:, None]  # [N, 1, gh, gw]
    ones = torch.ones(1, 1, result.size, result.size, dtype=torch.float64, device=drop.device)
    total = F.conv_transpose2d(drop, ones, stride=result.stride)
    cover = F.conv_transpose2d(torch.ones_like(drop), ones, stride=result.stride)
    height, width = spatial
    out = drop.new_zeros(drop.shape[0], 1, height, width)
    h, w = min(height, total.shape[2]), min(width, total.shape[3])
    out[:, :, :h, :w] = total[:, :, :h, :w] / cover[:, :, :h, :w].clamp_min(1)
    return out[:, 0].cpu()


@dataclass
class Faithfulness:
    """Deletion and insertion curves per ordering: each rule's map ("deconvnet", ...),
    "occlusion", "random" and "centre" (centre first). target: LongTensor[N]."""

    curves: dict[str, Curves]
    target: Tensor

    def summary(self) -> dict:
        return {name: {"deletion_auc": {"mean": float(c.deletion_auc.mean()), "std": float(c.deletion_auc.std(correction=0))},
                       "insertion_auc": {"mean": float(c.insertion_auc.mean()),
                                         "std": float(c.insertion_auc.std(correction=0))}}
                for name, c in self.curves.items()}


def faithfulness(
    model: nn.Module | DeconvNet,
    x: Tensor,
    *,
    target: int | Sequence[int] | Tensor | None = None,
    rules: Sequence[str] = RULES,
    steps: int = 32,
    occluder: int | None = None,
    seed: int = 0,
    fill: float = 0.0,
    blur: float = 5.0,
) -> Faithfulness:
    """Deletion and insertion curves (:func:`deconvnet.metrics.deletion_insertion`) of x
    (Tensor[N, C, H, W]) for pixels taken in the order of: each rule's class map (its absolute
    heat map, largest first), occlusion's map (:func:`occlusion_saliency`, an occluder of
    ``occluder`` pixels, default an eighth of the side, stride half of it), a random order
    (seeded), and centre first (by distance from the image's centre)."""
    dn = _checked(model, x, rules)
    chosen = _predicted(dn, x, target)
    height, width = x.shape[2:]
    orders: dict[str, Tensor] = {}
    for rule in rules:
        orders[rule] = order_by(_class_maps(dn, x, chosen, rule).abs())
    size = occluder or max(2, min(height, width) // 8)
    if size > min(height, width):
        raise InputError(f"the occluder ({size} px) is larger than the image ({height} x {width})")
    result = occlusion(dn, x, size=size, stride=max(1, size // 2), target=chosen.to(x.device))
    orders["occlusion"] = order_by(occlusion_saliency(result, (height, width)))
    generator = torch.Generator().manual_seed(seed)
    orders["random"] = order_by(torch.rand(x.shape[0], height, width, generator=generator))
    rows = torch.arange(height, dtype=torch.float64)[:, None] - (height - 1) / 2
    columns = torch.arange(width, dtype=torch.float64)[None, :] - (width - 1) / 2
    orders["centre"] = order_by(-(rows**2 + columns**2).expand(x.shape[0], height, width))
    curves = {name: deletion_insertion(dn, x, order.to(x.device), chosen.to(x.device), steps=steps, fill=fill,
                                       blur=blur)
              for name, order in orders.items()}
    return Faithfulness(curves, chosen)

"""A unit atlas: the paper's Fig. 2 for every channel of chosen layers, mined over a whole
dataset, on one process or many (``torch.distributed``), resumable.

    images = AtlasImages(folder, preprocessing)                  # or any torch Dataset
    atlas = mine_atlas(dn, images, layers, k=9, state=folder)     # one streaming pass, sharded by rank
    project_atlas(dn, images, atlas, write=...)                   # each rank projects its share
    write_site(folder, atlas)                                     # rank 0 (deconvnet.pictures.site)

:func:`build_atlas` does all three. Sharding is by whole batches, round robin (batch ``b`` goes
to rank ``b % world``), so every image is mined exactly once, in exactly the batch a single
process would put it in: the merged atlas is the single-process one, to the bit. The streaming
state is saved atomically every ``checkpoint_every`` images; ``resume=True`` continues from it.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from ..capture import AXES, INPUT, KINDS
from ..deconvnet import DeconvNet
from ..errors import DeconvnetError, InputError
from ..loading import Preprocessing, TensorFolder, image_files, load_image, tensor_files
from ..pictures import image
from ..pictures.figures import shown_input, unit_pictures
from ..progress import ProgressFactory, Silent
from ..pictures.site import SiteWriter
from .topk import Atlas, Tile, TopUnits, batch_top_units, merge_top_units

__all__ = ["Atlas", "AtlasImages", "RankFailedError", "Tile", "build_atlas", "mine_atlas", "project_atlas",
           "rank_and_world", "shard"]

STATE_FOLDER = ".atlas-state"


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the number of processes (0, 1 without ``torch.distributed``)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class RankFailedError(DeconvnetError, RuntimeError):
    """Another rank of a distributed atlas run failed; its message is in this one's."""


class _Ranks:
    """What the ranks of one distributed run tell each other outside the collectives: a rank
    that fails writes its message to the process group's key-value store, and every rank looks
    for one after each batch (a small TCP request, no device synchronisation) and before each
    collective, which it enters only once every rank has arrived. So one rank's failure (a bad
    batch, an out-of-memory) stops every rank within a batch, with its message, instead of
    leaving them in a collective until its timeout (30 minutes by default)."""

    _runs = 0  # calls of this process; every rank makes the same calls, so the keys agree

    def __init__(self, rank: int, world: int) -> None:
        self.rank, self.world = rank, world
        self.store = dist.distributed_c10d._get_default_store() if world > 1 else None
        _Ranks._runs += 1
        self.prefix = f"deconvnet-atlas/{_Ranks._runs}"
        self.stages = 0

    def fail(self, error: BaseException) -> None:
        """Tell the others why this rank stops (the first failure is the one reported)."""
        if self.store is not None and not isinstance(error, RankFailedError):
            message = f"rank {self.rank} failed: {type(error).__name__}: {error}"
            self.store.compare_set(f"{self.prefix}/failed", "", message)

    def check(self) -> None:
        """Raise RankFailedError when another rank has failed."""
        if self.store is not None and self.store.check([f"{self.prefix}/failed"]):
            message = self.store.get(f"{self.prefix}/failed").decode()
            raise RankFailedError(f"stopping: {message}")

    def arrive(self, poll: float = 0.02) -> None:
        """Wait until every rank reaches this point (then a collective cannot hang), or raise
        when one has failed. Waits at most the process group's own timeout."""
        if self.store is None:
            return
        self.stages += 1
        key = f"{self.prefix}/stage-{self.stages}"
        self.store.add(key, 1)
        deadline = time.monotonic() + self.store.timeout.total_seconds()
        while self.store.add(key, 0) < self.world:
            self.check()
            if time.monotonic() > deadline:
                raise RankFailedError(f"stopping: not every rank reached stage {self.stages} within "
                                      f"{self.store.timeout}; one may have been killed")
            time.sleep(poll)
        self.check()


class AtlasImages(Dataset):
    """What the atlas streams: index -> (index, Tensor[C, *spatial] or None, why it could not be
    read). Images are Tensor[C, H, W]; with ``spatial_dims`` 1 or 3, signals Tensor[C, L] or
    volumes and clips Tensor[C, D, H, W].

    source: a folder or any Dataset whose items are such tensors or tuples starting with one. A
        folder of images is searched recursively for common image formats, read through
        ``preprocessing``; for signals and volumes, for tensor files (.pt, .pth, .npy: each one
        input or a batch, :class:`~deconvnet.loading.TensorFolder`), taken as they are. An item
        that cannot be read is reported, not fatal.
    names: one per item (default: paths relative to the folder, or ``"#i"``).
    preprocessing: for a folder of images, how files become model input (required); its
        mean/std undo the normalisation when patches are drawn (default: images shown as they
        are; signals and volumes stretched to their own range).
    """

    def __init__(self, source: Path | str | Dataset, preprocessing: Preprocessing | None = None,
                 names: Sequence[str] | None = None, spatial_dims: int = 2) -> None:
        if spatial_dims not in (1, 2, 3):
            raise InputError(f"spatial_dims must be 1, 2 or 3, got {spatial_dims!r}")
        self.preprocessing = preprocessing
        self.spatial_dims = spatial_dims
        self.files: list[Path] | None = None
        self.dataset: Dataset | None = None
        if isinstance(source, (str, Path)) and spatial_dims != 2:
            folder = Path(source)
            tensors = TensorFolder(tensor_files(folder), spatial_dims)
            self.dataset, self.source = tensors, str(folder)
            default = [f"{path.relative_to(folder).as_posix()}{name[len(path.name):]}"
                       for (path, _), name in zip(tensors.entries, tensors.names, strict=True)]
        elif isinstance(source, (str, Path)):
            folder = Path(source)
            if preprocessing is None:
                raise InputError("reading a folder needs a preprocessing (how files become model input)")
            self.files = image_files(folder)
            self.source = str(folder)
            default = [p.relative_to(folder).as_posix() for p in self.files]
        elif isinstance(source, Dataset):
            self.dataset = source
            try:
                length = len(source)  # type: ignore[arg-type]
            except TypeError as error:
                raise InputError(f"the dataset ({type(source).__name__}) has no length; the atlas needs one") from error
            self.source = f"{type(source).__name__} ({length} items)"
            default = [f"#{i}" for i in range(length)]
        else:
            raise InputError(f"the atlas reads a folder or a torch Dataset, not {type(source).__name__}")
        if names is not None and len(names) != len(default):
            raise InputError(f"names has {len(names)} entries for {len(default)} images")
        self.names = list(names) if names is not None else default
        if not self.names:
            raise InputError(f"{self.source} holds no images")

    @property
    def mean(self) -> tuple[float, ...] | None:
        """The normalisation patches undo: the preprocessing's, for images only (tensor files are
        taken as they are)."""
        return self.preprocessing.mean if self.preprocessing and self.spatial_dims == 2 else None

    @property
    def std(self) -> tuple[float, ...] | None:
        return self.preprocessing.std if self.preprocessing and self.spatial_dims == 2 else None

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> tuple[int, Tensor | None, str | None]:
        if self.files is not None:
            try:
                return index, load_image(self.files[index], self.preprocessing), None  # type: ignore[arg-type]
            except InputError as error:
                return index, None, str(error)
        try:
            item = self.dataset[index]  # type: ignore[index]
        except Exception as error:  # the user's dataset: any failure skips this item, reported
            return index, None, f"{type(error).__name__}: {error}"
        x = item[0] if isinstance(item, (tuple, list)) else item
        if not isinstance(x, Tensor) or x.dim() != self.spatial_dims + 1:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            return index, None, f"item {index} is not a Tensor[{AXES[self.spatial_dims]}] (got {got})"
        return index, x, None

    def load(self, index: int) -> Tensor:
        """Image ``index`` as model input; InputError if it cannot be read (any more)."""
        _, x, error = self[index]
        if x is None:
            raise InputError(f"image {self.names[index]} could not be read: {error}")
        return x


def _collate(items: list[tuple[int, Tensor | None, str | None]]) -> tuple[Tensor, Tensor | None, dict[int, str]]:
    good = [(i, x) for i, x, _ in items if x is not None]
    skipped = {i: error for i, x, error in items if x is None}
    if not good:
        return torch.zeros(0, dtype=torch.long), None, skipped  # type: ignore[return-value]
    shapes = {tuple(x.shape) for _, x in good}
    if len(shapes) > 1:
        raise InputError(f"images of one batch differ in shape {sorted(shapes)}; resize them to one size")
    return torch.tensor([i for i, _ in good]), torch.stack([x for _, x in good]), skipped


@dataclass
class _State:
    """One rank's streaming state: batches done of its shard, top units so far, skipped items."""

    done: int = 0
    mined: int = 0
    top: dict[str, TopUnits] = field(default_factory=dict)
    skipped: dict[int, str] = field(default_factory=dict)
    finished: bool = False


def _model_fingerprint(model: nn.Module) -> str:
    digest = hashlib.sha1()
    for name, tensor in model.state_dict().items():
        digest.update(f"{name}{tuple(tensor.shape)}{float(tensor.sum())}".encode())  # cheap: no copy
    return digest.hexdigest()


def _checkpoint_path(folder: Path, rank: int, world: int) -> Path:
    return folder / STATE_FOLDER / f"rank-{rank}-of-{world}.pt"


def _save_state(path: Path, key: dict, state: _State) -> None:
    """Write to a temporary file, then rename over the old one: a kill leaves one whole file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(f".tmp{os.getpid()}")
    top = {layer: {"values": t.values.cpu(), "images": t.images.cpu(), "positions": t.positions.cpu(),
                   "shape": list(t.shape)} for layer, t in state.top.items()}
    torch.save({"key": key, "done": state.done, "mined": state.mined, "top": top,
                "skipped": state.skipped, "finished": state.finished}, temporary)
    os.replace(temporary, path)


def _load_state(path: Path, key: dict) -> _State | None:
    if not path.exists():
        return None
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a damaged file fails in many ways; all mean the same here
        raise InputError(f"cannot read the atlas checkpoint {path}: {error}; rerun without --resume") from error
    if saved.get("key") != key:
        changed = sorted(name for name in key if saved.get("key", {}).get(name) != key[name])
        raise InputError(f"the atlas checkpoint {path} was written for a different run ({', '.join(changed)} "
                         "changed); rerun without --resume to start over")
    top = {layer: TopUnits(layer, t["values"], t["images"], t["positions"], tuple(t["shape"]))
           for layer, t in saved["top"].items()}
    return _State(saved["done"], saved["mined"], top, dict(saved["skipped"]), saved["finished"])


def shard(count: int, batch_size: int, rank: int, world: int) -> list[list[int]]:
    """The dataset indices ``rank`` mines, as batches: batch b of ``batch_size`` consecutive
    indices goes to rank b % world, so every batch is the one a single process would form."""
    batches = [list(range(start, min(start + batch_size, count))) for start in range(0, count, batch_size)]
    return batches[rank::world]


def mine_atlas(
    dn: DeconvNet,
    images: AtlasImages,
    layers: Sequence[str],
    *,
    k: int = 9,
    model_name: str = "model",
    batch_size: int = 32,
    workers: int = 0,
    state: Path | None = None,
    resume: bool = False,
    checkpoint_every: int = 500,
    progress: ProgressFactory = Silent,
) -> Atlas:
    """Stream ``images`` once (this rank's shard) and merge every rank's top-k.

    layers: layers with spatial maps (Tensor[N, C, H, W] outputs). state: a folder for the
    checkpoints (``<state>/.atlas-state/rank-R-of-W.pt``), written every ``checkpoint_every``
    images and at the end; ``resume`` continues from them. Collective under torch.distributed:
    every rank calls it and gets the same Atlas; a rank that fails (a bad batch, out of memory)
    stops the others within a batch, each raising :class:`RankFailedError` with its message.
    """
    for name, value in (("k", k), ("batch_size", batch_size), ("checkpoint_every", checkpoint_every)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"{name} must be a positive integer, got {value!r}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise InputError(f"workers must be a non-negative integer, got {workers!r}")
    if not layers:
        raise InputError("name at least one layer to mine")
    names = [dn.layer_name(layer) for layer in layers]  # unknown layers fail before any image is read
    if len(set(names)) != len(names):
        raise InputError(f"layers are named twice: {list(layers)}")
    rank, world = rank_and_world()
    ranks = _Ranks(rank, world)
    try:
        return _mine(dn, images, names, ranks, k, model_name, batch_size, workers, state, resume, checkpoint_every,
                     progress)
    except BaseException as error:
        ranks.fail(error)
        raise


def _mine(dn: DeconvNet, images: AtlasImages, names: list[str], ranks: _Ranks, k: int, model_name: str,
          batch_size: int, workers: int, state: Path | None, resume: bool, checkpoint_every: int,
          progress: ProgressFactory) -> Atlas:
    _check_spatial(dn, images, names)
    rank, world = ranks.rank, ranks.world
    key = {"model": _model_fingerprint(dn.model), "layers": names, "k": k, "batch_size": batch_size,
           "images": hashlib.sha1("\n".join(images.names).encode()).hexdigest(), "world": world}
    if world > 1:  # every rank must mine the same thing, or the merge would be meaningless
        ranks.arrive()
        keys: list[Any] = [None] * world
        dist.all_gather_object(keys, key)
        differ = sorted({name for other in keys for name in key if other[name] != key[name]})
        if differ:
            hint = " (random weights? seed them alike on every rank)" if "model" in differ else ""
            raise InputError(f"the ranks disagree on {', '.join(differ)}: give every rank the same model{hint}, "
                             "images, layers, k and batch size")
    path = _checkpoint_path(state, rank, world) if state is not None else None
    current = (_load_state(path, key) if resume and path is not None else None) or _State()
    batches = shard(len(images), batch_size, rank, world)
    bar = progress(total=sum(len(b) for b in batches), desc="mining", unit="img")
    bar.update(sum(len(b) for b in batches[: current.done]))
    since = 0
    device = dn.device
    # The top units stay on the model's device between batches: no copy back, no wait on the
    # device per batch. Pinned batches are copied to a GPU without waiting either.
    current.top = {name: _on(top, device) for name, top in current.top.items()}
    loader = DataLoader(images, batch_sampler=batches[current.done :], collate_fn=_collate, num_workers=workers,
                        pin_memory=device.type == "cuda")
    for indices, x, skipped in loader:
        ranks.check()
        current.skipped.update(skipped)
        if x is not None:
            outputs = dn.activations(x, names)  # moved to the model's device there
            on_device = indices.to(device, non_blocking=True)
            for name in names:
                found = batch_top_units(name, outputs[name], on_device)
                kept = current.top.get(name)
                current.top[name] = merge_top_units([kept, found] if kept else [found], k)
            current.mined += x.shape[0]
        current.done += 1
        since += indices.numel() + len(skipped)
        bar.update(indices.numel() + len(skipped))
        if path is not None and since >= checkpoint_every:
            _save_state(path, key, current)
            since = 0
    bar.close()
    current.finished = True
    if path is not None:
        _save_state(path, key, current)
    current.top = {name: _on(top, torch.device("cpu")) for name, top in current.top.items()}
    ranks.arrive()
    return _merge_ranks(current, names, images, k, model_name, dn, world)


def _on(top: TopUnits, device: torch.device) -> TopUnits:
    return TopUnits(top.layer, top.values.to(device), top.images.to(device), top.positions.to(device), top.shape)


def _check_spatial(dn: DeconvNet, images: AtlasImages, names: list[str]) -> None:
    """The inputs must be of the model's kind and each layer must output feature maps; probed on
    the first readable input."""
    dims = dn.network.spatial_dims
    if images.spatial_dims != dims:
        raise InputError(f"the atlas's inputs are {KINDS[images.spatial_dims]} and the model takes {KINDS[dims]}: "
                         f"make them with AtlasImages(..., spatial_dims={dims})")
    what = INPUT[dims]
    for index in range(len(images)):
        _, x, _ = images[index]
        if x is not None:
            break
    else:
        _, _, error = images[0]
        raise InputError(f"no {what} of {images.source} could be read; the first: {error}")
    outputs = dn.activations(x[None], names)
    for name in names:
        if outputs[name].dim() != 2 + dims:
            raise InputError(f"the atlas needs layers with feature maps; {name} outputs "
                             f"{tuple(outputs[name].shape[1:])} per {what}")


def _merge_ranks(state: _State, names: list[str], images: AtlasImages, k: int, model_name: str,
                 dn: DeconvNet, world: int) -> Atlas:
    states = [state]
    if world > 1:
        gathered: list[Any] = [None] * world
        dist.all_gather_object(gathered, (state.top, state.skipped, state.mined))
        states = [_State(0, mined, top, skipped, True) for top, skipped, mined in gathered]
    skipped = {i: e for s in states for i, e in s.skipped.items()}
    mined = sum(s.mined for s in states)  # at least 1: _check_spatial found a readable image
    layers = {name: merge_top_units([s.top[name] for s in states if name in s.top], k) for name in names}
    fields = {name: dn.receptive_field(name) for name in names}
    return Atlas(model_name, images.source, images.names, k, layers, fields, skipped, mined, dn.network.spatial_dims)


def project_atlas(
    dn: DeconvNet,
    images: AtlasImages,
    atlas: Atlas,
    write: Callable[[Tile], None],
    *,
    batch_size: int = 32,
    progress: ProgressFactory = Silent,
) -> None:
    """Project every kept unit alone (the cropped fast path of :meth:`DeconvNet.reconstruct_units`)
    and hand each :class:`Tile` to ``write`` on rank 0. Collective under torch.distributed: the
    kept images are shared round robin; rank 0 gathers each round's tiles. A rank that fails
    stops the others with its message (:class:`RankFailedError`)."""
    rank, world = rank_and_world()
    ranks = _Ranks(rank, world)
    try:
        _project_rounds(dn, images, atlas, write, batch_size, progress, ranks)
    except BaseException as error:
        ranks.fail(error)
        raise


def _project_rounds(dn: DeconvNet, images: AtlasImages, atlas: Atlas, write: Callable[[Tile], None],
                    batch_size: int, progress: ProgressFactory, ranks: _Ranks) -> None:
    rank, world = ranks.rank, ranks.world
    by_image: dict[int, list[tuple[str, int, int]]] = {}
    for name, top in atlas.layers.items():
        for c in range(top.values.shape[0]):
            for r in range(atlas.k):
                if torch.isfinite(top.values[c, r]):
                    by_image.setdefault(int(top.images[c, r]), []).append((name, c, r))
    order = sorted(by_image)
    mine = order[rank::world]
    rounds = -(-len(order) // (batch_size * world))
    bar = progress(total=sum(len(v) for v in by_image.values()), desc="projecting", unit="unit")
    for round_ in range(rounds):
        batch = mine[round_ * batch_size : (round_ + 1) * batch_size]
        tiles = list(_project(dn, images, atlas, batch, by_image)) if batch else []
        if world > 1:
            ranks.arrive()
            gathered: list[Any] = [None] * world
            dist.gather_object(tiles, gathered if rank == 0 else None, dst=0)
            tiles = [t for part in gathered for t in part] if rank == 0 else []
        for tile in tiles:
            write(tile)
        bar.update(len(tiles))
    bar.close()


def _project(dn: DeconvNet, images: AtlasImages, atlas: Atlas, batch: list[int],
             by_image: dict[int, list[tuple[str, int, int]]]) -> Iterator[Tile]:
    x = torch.stack([images.load(i) for i in batch])
    trace = dn.trace(x)  # on the model's device
    shown = shown_input(x.cpu(), images.mean, images.std)
    predicted: list[tuple[int, float] | None] = [None] * len(batch)
    if trace.output.dim() == 2:  # a classifier: each kept image's top class, free from this forward pass
        probability, top_class = trace.output.float().softmax(-1).max(-1)
        predicted = [(int(c), float(p)) for c, p in zip(top_class.tolist(), probability.tolist(), strict=True)]
    for name, top in atlas.layers.items():
        units = [(b, c, r) for b, i in enumerate(batch) for layer, c, r in by_image[i] if layer == name]
        if not units:
            continue
        projected = dn.reconstruct_units(
            trace, name, images=[b for b, _, _ in units], channels=[c for _, c, _ in units],
            positions=[int(top.positions[c, r]) for _, c, r in units],
        ).float().cpu()
        field_ = atlas.fields[name]
        for t, (b, c, r) in enumerate(units):
            projection, patch = unit_pictures(projected[t], shown[b], field_, top.unit(c, r))
            yield Tile(name, c, r, image.to_png(projection), image.to_png(patch), batch[b], predicted[b])


def build_atlas(
    model: nn.Module | DeconvNet,
    data: Path | str | Dataset | AtlasImages,
    layers: Sequence[str],
    out: Path | str,
    *,
    k: int = 9,
    preprocessing: Preprocessing | None = None,
    names: Sequence[str] | None = None,
    model_name: str | None = None,
    batch_size: int = 32,
    workers: int = 0,
    resume: bool = False,
    checkpoint_every: int = 500,
    progress: ProgressFactory = Silent,
    categories: Sequence[str] | None = None,
) -> Atlas:
    """Mine ``data`` for the top-k units of every channel of ``layers``, project them, and write
    the static site to ``out`` (``index.html``, a page per layer and per channel, ``atlas.json``).
    For a classifier each unit's image shows the model's top class for it, named by
    ``categories`` (else "class 3").

    Under torch.distributed every rank calls this with the same arguments; rank 0 writes the
    site. Returns the Atlas (on every rank).
    """
    dn = model if isinstance(model, DeconvNet) else DeconvNet(model)
    images = data if isinstance(data, AtlasImages) else AtlasImages(data, preprocessing, names,
                                                                    dn.network.spatial_dims)
    out = Path(out)
    name = model_name or type(dn.model).__name__
    atlas = mine_atlas(dn, images, layers, k=k, model_name=name, batch_size=batch_size, workers=workers,
                       state=out, resume=resume, checkpoint_every=checkpoint_every, progress=progress)
    rank, _ = rank_and_world()
    writer = SiteWriter(out, atlas, categories) if rank == 0 else None
    project_atlas(dn, images, atlas, writer.tile if writer else (lambda tile: None), batch_size=batch_size,
                  progress=progress if rank == 0 else Silent)
    if writer is not None:
        writer.pages(progress)
    return atlas

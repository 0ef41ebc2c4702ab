"""Benchmark datasets: model-ready batches with ground-truth masks (Sec. IV-B, Table I).

- ``synthetic``: the synthetic benchmark's test split (or ``synthetic:<seed>:<split>``); mask = the class-determining parts,
  target = the label (stands in for ImageNet-S50's object masks).
- ``photos``: 2×2 grids of bundled photos the model classifies confidently, each of a
  different class; target = one cell's class, mask = that cell (grid pointing game).
- ``folder``: a user folder of images and masks (see :class:`FolderData`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image

from ierf.data.images import IMAGE_SUFFIXES, image_files
from ierf.data.sources import BENCHMARK, PHOTOS, parse_source
from ierf.errors import IerfError
from ierf.models.model import Model, image_to_tensor

#: what ``ierf bench`` calls the synthetic benchmark (``--data synthetic``)
SYNTHETIC = "synthetic"
#: scikit-image photos tried for the grids (``stereo_motorcycle`` is its left view)
PHOTO_CANDIDATES = ("astronaut", "camera", "chelsea", "clock", "coffee", "coins", "horse", "moon",
                    "rocket", "stereo_motorcycle", "logo", "page", "checkerboard", "colorwheel",
                    "microaneurysms")


@dataclass
class Batch:
    """Images ready for the model, their target classes and ground-truth masks."""

    x: torch.Tensor  # (B, 3, H, W) normalised
    y: torch.Tensor  # (B,) int64
    mask: torch.Tensor  # (B, H, W) bool

    def to(self, device: torch.device | str) -> Batch:
        return Batch(self.x.to(device), self.y.to(device), self.mask.to(device))


class BenchData(ABC):
    """A benchmark dataset: ``len(data)`` images, loaded ``batch(start, stop)`` at a time."""

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def batch(self, start: int, stop: int) -> Batch:
        """Images ``start`` to ``stop`` (exclusive)."""


def prepare(model: Model, images: torch.Tensor, masks: torch.Tensor
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Resize, crop and normalise images (N, 3, H, W) in [0, 1] as ``model.preprocess`` does,
    with their masks (N, H, W) following the same geometry (nearest neighbour)."""
    p = model.preprocessing
    if p is None:
        raise IerfError(f"model {model.name!r} has no preprocessing; load it with ierf.load_model")
    size = [p.resize] if p.resize is not None else list(p.input_size)
    x = TF.resize(images, size, interpolation=TF.InterpolationMode(p.interpolation), antialias=True)
    m = TF.resize(masks[:, None].float(), size, interpolation=TF.InterpolationMode.NEAREST)
    x = TF.center_crop(x, list(p.input_size)).clamp(0, 1)
    m = TF.center_crop(m, list(p.input_size))[:, 0] > 0.5
    return model.normalize(x), m


class SyntheticData(BenchData):
    """The synthetic benchmark (``ierf.data.synthetic.generate(n, seed, split)``, by default
    its test split).

    Target = the label, mask = ``parts_mask`` (the two key parts that decide the class).
    """

    def __init__(self, model: Model, n: int, seed: int = 0, split: str = "test") -> None:
        from ierf.data.synthetic import CLASS_NAMES, generate

        if model.class_names != list(CLASS_NAMES):
            raise IerfError(f"model {model.name!r} is not trained on the synthetic benchmark; use "
                            "a toy model (toy-resnet, toy-vgg, toy-vit, toy-resnet-<activation>)")
        data = generate(n, seed, split)
        self.x, self.mask = prepare(model, data.images, data.parts_mask)
        self.y, self.seed = data.labels, seed

    def __len__(self) -> int:
        return len(self.y)

    def batch(self, start: int, stop: int) -> Batch:
        return Batch(self.x[start:stop], self.y[start:stop], self.mask[start:stop])


def load_photo(name: str) -> Image.Image:
    """A scikit-image photo by name (as RGB)."""
    import skimage.data

    a = getattr(skimage.data, name)()
    a = a[0] if isinstance(a, tuple) else a
    return Image.fromarray(np.asarray(a)).convert("RGB")


@dataclass
class Photo:
    """A photo resized to one grid cell, with the model's class and probability for it."""

    name: str
    cell: torch.Tensor  # (3, h, w) in [0, 1]
    label: int
    prob: float


def confident_photos(model: Model, threshold: float = 0.5,
                     candidates: tuple[str, ...] = PHOTO_CANDIDATES) -> list[Photo]:
    """Photos the model classifies with p ≥ ``threshold`` once shrunk into a grid cell.

    Each photo is resized to half the input size (one cell of a 2×2 grid) and classified
    upsampled back to the input size, so the model sees the cell's level of detail. Of photos
    sharing a class, only the most confident one is kept (each cell of a grid has its own class).
    """
    _, h, w = model.input_size
    cells = torch.stack([image_to_tensor(load_photo(n).resize((w // 2, h // 2), Image.BILINEAR))
                         for n in candidates])
    x = model.normalize(TF.resize(cells, [h, w], antialias=True))
    with torch.no_grad():
        probs = model(x.to(model.device)).softmax(1).cpu()
    best: dict[int, Photo] = {}
    for name, cell, pr in zip(candidates, cells, probs):
        label, prob = int(pr.argmax()), float(pr.max())
        if prob >= threshold and (label not in best or prob > best[label].prob):
            best[label] = Photo(name, cell, label, prob)
    return sorted(best.values(), key=lambda ph: candidates.index(ph.name))


class PhotoGrids(BenchData):
    """2×2 grids of confidently classified photos of distinct classes (grid pointing game).

    Grid ``i`` places four different photos, drawn by an rng seeded by ``seed``; its target is
    the class of one cell and its mask is that cell (Böhle et al.'s grid pointing game).
    """

    def __init__(self, model: Model, n: int, seed: int = 0, threshold: float = 0.5) -> None:
        if model.num_classes != 1000:
            raise IerfError(f"the photo grids need an ImageNet classifier (1000 classes); "
                            f"{model.name} has {model.num_classes}: use efficientnet_lite0")
        self.photos = confident_photos(model, threshold)
        if len(self.photos) < 4:
            raise IerfError(f"only {len(self.photos)} bundled photos reach p ≥ {threshold} with "
                            f"{model.name}; a 2×2 grid needs 4: lower the threshold or use "
                            "efficientnet_lite0")
        rng = np.random.default_rng(seed)
        self.layout = [(rng.permutation(len(self.photos))[:4], int(rng.integers(4)))
                       for _ in range(n)]
        self.model, self.seed, self.threshold = model, seed, threshold

    def __len__(self) -> int:
        return len(self.layout)

    def batch(self, start: int, stop: int) -> Batch:
        grids, masks, ys = [], [], []
        _, h, w = self.model.input_size
        for order, cell in self.layout[start:stop]:
            tiles = [self.photos[i].cell for i in order]
            grids.append(torch.cat([torch.cat(tiles[:2], 2), torch.cat(tiles[2:], 2)], 1))
            m = torch.zeros(h, w, dtype=torch.bool)
            r, c = divmod(cell, 2)
            m[r * (h // 2):(r + 1) * (h // 2), c * (w // 2):(c + 1) * (w // 2)] = True
            masks.append(m)
            ys.append(self.photos[order[cell]].label)
        x = self.model.normalize(torch.stack(grids))
        return Batch(x, torch.tensor(ys), torch.stack(masks))


class FolderData(BenchData):
    """A folder of images with ground-truth masks. Layout::

        DIR/images/<name>.<png|jpg|...>   the images (subfolders allowed)
        DIR/masks/<name>.png              one mask per image, same relative path and stem;
                                          non-zero pixels mark the object
        DIR/targets.csv                   optional lines ``<name>,<class index or name>``;
                                          without it the target is the model's top class

    Images and masks go through the model's preprocessing together.
    """

    def __init__(self, model: Model, folder: str | Path, n: int | None = None) -> None:
        self.folder, self.model = Path(folder), model
        images = self.folder / "images"
        if not images.is_dir():
            raise IerfError(f"{str(folder)!r} has no images/ subfolder; put the images in "
                            f"{str(folder)!r}/images/ and their masks in {str(folder)!r}/masks/")
        self.files = image_files(images)[:n]
        self.masks = [self._mask_path(f) for f in self.files]
        missing = [str(f.relative_to(images)) for f, m in zip(self.files, self.masks) if m is None]
        if missing:
            raise IerfError(f"{len(missing)} image(s) have no mask in "
                            f"{str(self.folder / 'masks')!r} (e.g. {', '.join(missing[:3])}); give "
                            "each image a mask masks/<name>.png with the same relative path")
        self.targets = self._read_targets()

    def _mask_path(self, image: Path) -> Path | None:
        rel = image.relative_to(self.folder / "images").with_suffix("")
        for suffix in (".png", *sorted(IMAGE_SUFFIXES)):
            path = self.folder / "masks" / rel.with_suffix(suffix)
            if path.is_file():
                return path
        return None

    def _read_targets(self) -> dict[str, int]:
        path = self.folder / "targets.csv"
        if not path.is_file():
            return {}
        from ierf.targets import class_index

        targets = {}
        for line in path.read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                name, _, cls = line.partition(",")
                targets[name.strip()] = class_index(cls.strip(), self.model.class_names)
        return targets

    def __len__(self) -> int:
        return len(self.files)

    def batch(self, start: int, stop: int) -> Batch:
        from ierf.data.images import load_image

        xs, ms = [], []
        for f, m in zip(self.files[start:stop], self.masks[start:stop]):
            image = image_to_tensor(load_image(f))
            with Image.open(m) as im:
                mask = torch.from_numpy(np.array(im.convert("L")) > 0)
            if mask.shape != image.shape[1:]:
                raise IerfError(f"mask {str(m)!r} is {tuple(mask.shape)} but its image is "
                                f"{tuple(image.shape[1:])}; masks must match their image's size")
            x, mk = prepare(self.model, image[None], mask[None])
            xs.append(x)
            ms.append(mk)
        x = torch.cat(xs)
        with torch.no_grad():
            top = self.model(x.to(self.model.device)).argmax(1).cpu()
        names = [self._name(f) for f in self.files[start:stop]]
        y = torch.tensor([self.targets.get(n, int(t)) for n, t in zip(names, top)])
        return Batch(x, y, torch.cat(ms))

    def _name(self, image: Path) -> str:
        return str(image.relative_to(self.folder / "images").with_suffix(""))


def load_data(kind: str, model: Model, n: int, seed: int = 0) -> BenchData:
    """``"synthetic"`` (or ``"synthetic:<seed>:<split>"``; by default the test split drawn
    with ``seed``), ``"photos"`` or a folder path (see :class:`FolderData`); the grammar of
    :mod:`ierf.data.sources`."""
    source = parse_source(kind, benchmark=SYNTHETIC)
    if source.kind == BENCHMARK:
        source = source.resolved(seed, "test")
        return SyntheticData(model, n, source.seed, source.split)
    if source.kind == PHOTOS:
        return PhotoGrids(model, n, seed)
    if not source.folder.exists():
        raise IerfError(f"--data {kind!r}: use 'synthetic', 'photos' or an existing folder of "
                        "images/ and masks/")
    return FolderData(model, source.folder, n)

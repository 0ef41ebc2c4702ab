"""Image sources named by one string: the synthetic benchmark, the bundled photos or a folder.

The one grammar of ``ierf atlas build --images``, of an atlas' stored ``meta["source"]`` and
of ``ierf bench local --data``:

- ``benchmark`` or ``benchmark:<seed>:<split>``: scenes of the synthetic benchmark
  (:mod:`ierf.data.synthetic`), image ``i`` being scene ``i`` of that stream (``ierf bench``
  calls the benchmark ``synthetic``);
- ``photos``: the bundled photos (:data:`~ierf.data.images.BUNDLED_PHOTOS`);
- anything else: a folder of image files.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from tqdm.auto import tqdm

from ierf.data.images import BUNDLED_PHOTOS, image_files, load_image
from ierf.data.synthetic import SPLITS, Scene, make_scene, render_without
from ierf.errors import IerfError
from ierf.integrity import sha256_file

if TYPE_CHECKING:
    from ierf.models.model import Model

BENCHMARK, PHOTOS, FOLDER = "benchmark", "photos", "folder"


@dataclass(frozen=True)
class ImageSource:
    """A parsed image-source string.

    Attributes
    ----------
    kind : :data:`BENCHMARK`, :data:`PHOTOS` or :data:`FOLDER`.
    seed, split : the benchmark's stream when the string names one, else ``None``
        (see :meth:`resolved`).
    folder : the folder of a :data:`FOLDER` source.
    """

    kind: str
    seed: int | None = None
    split: str | None = None
    folder: Path | None = None

    def __str__(self) -> str:
        """The canonical string: ``benchmark[:<seed>:<split>]``, ``photos`` or the folder's
        absolute path."""
        if self.kind == BENCHMARK:
            return BENCHMARK if self.seed is None else f"{BENCHMARK}:{self.seed}:{self.split}"
        return PHOTOS if self.kind == PHOTOS else str(self.folder.resolve())

    def resolved(self, seed: int = 0, split: str = "train") -> ImageSource:
        """This source with a benchmark stream: its own, else (``seed``, ``split``)."""
        if self.kind != BENCHMARK or self.seed is not None:
            return self
        return replace(self, seed=seed, split=split)


def parse_source(text: str | Path, benchmark: str = BENCHMARK) -> ImageSource:
    """Parse an image-source string (see the module docstring); ``benchmark`` is the name the
    caller gives the synthetic benchmark. Folders are not checked here."""
    text = str(text)
    if text == benchmark or text.startswith(benchmark + ":"):
        parts = text.split(":")
        if len(parts) == 1:
            return ImageSource(BENCHMARK)
        if len(parts) != 3 or not parts[1].isdigit() or parts[2] not in SPLITS:
            raise IerfError(f"benchmark images are {benchmark!r} or '{benchmark}:<seed>:<split>' "
                            f"with split one of {list(SPLITS)}, got {text!r}")
        return ImageSource(BENCHMARK, int(parts[1]), parts[2])
    if text == PHOTOS:
        return ImageSource(PHOTOS)
    return ImageSource(FOLDER, folder=Path(text))


def image_ids(source: ImageSource, n: int | None = None) -> list[str]:
    """The ids of the first ``n`` images of ``source`` (all photos / files by default):
    scene indices, photo names, or file paths relative to the folder."""
    if source.kind == BENCHMARK:
        if n is None or n < 1:
            raise IerfError(f"give the number of benchmark images (--n), got {n}")
        return [str(i) for i in range(n)]
    if source.kind == PHOTOS:
        return list(BUNDLED_PHOTOS[:n] if n else BUNDLED_PHOTOS)
    folder = source.folder
    if not folder.is_dir():
        raise IerfError(f"--images must be 'benchmark', 'photos' or a folder of images; "
                        f"{str(folder)!r} is none of these")
    files = image_files(folder)[:n] if n else image_files(folder)
    return [p.relative_to(folder).as_posix() for p in files]


def load_images(source: ImageSource, ids: Sequence[str], model: Model) -> torch.Tensor:
    """(n, 3, H, W) model-ready inputs of the images ``ids`` of ``source``."""
    if not ids:
        return torch.zeros(0, *model.input_size)
    if source.kind == BENCHMARK:
        return torch.cat([model.preprocess(render_without(scene)[0])
                          for scene in _scenes(source, ids)])
    root = source.folder if source.kind == FOLDER else None
    return torch.cat([model.preprocess(load_image(i if root is None else root / i)) for i in ids])


def load_readable(source: ImageSource, ids: Sequence[str], model: Model
                  ) -> tuple[torch.Tensor, dict[int, str]]:
    """Like :func:`load_images`, skipping the images that cannot be read: the (m, 3, H, W)
    inputs of the readable ones, in order, and ``{position in ids: why}`` for the others."""
    loaded, unreadable = [], {}
    for j, i in enumerate(ids):
        try:
            loaded.append(load_images(source, [i], model))
        except IerfError as e:
            unreadable[j] = str(e.__cause__ or e)
    return (torch.cat(loaded) if loaded else torch.zeros(0, *model.input_size)), unreadable


def image_hashes(source: ImageSource, ids: Sequence[str], progress: bool = False) -> list[str]:
    """SHA-256 of each image's file in a folder source (``""`` for generated images and the
    bundled photos, and for a file that cannot be read: loading it says why)."""
    if source.kind != FOLDER:
        return [""] * len(ids)
    hashes = []
    for i in tqdm(ids, desc="hashing images", unit="img", leave=False, disable=not progress):
        try:
            hashes.append(sha256_file(source.folder / i))
        except IerfError:
            hashes.append("")
    return hashes


def benchmark_label_maps(source: ImageSource, ids: Sequence[str], key: str) -> torch.Tensor:
    """(n, H, W) int64 ground-truth label maps ``key`` (e.g. ``"part"``) of the benchmark
    scenes ``ids``."""
    if source.kind != BENCHMARK:
        raise IerfError(f"ground-truth label maps exist for the synthetic benchmark only, not "
                        f"for {str(source)!r}")
    maps = [render_without(scene)[1][key] for scene in _scenes(source, ids)]
    return torch.from_numpy(np.stack(maps).astype(np.int64))


def _scenes(source: ImageSource, ids: Sequence[str]) -> list[Scene]:
    source = source.resolved()
    return [make_scene(int(i), source.seed, source.split) for i in ids]

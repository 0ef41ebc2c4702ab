"""Procedural 2-D benchmark with ground-truth class-determining parts.

Each 64x64 image shows two *key parts* on a textured background plus one or
two *distractor* objects.  A part type is a fixed (shape, colour, texture)
triple, a class is a pair of part types, and every part type is shared by
several classes, so a model has to find both parts to decide the class.
Distractors use shapes that never occur in key parts but reuse the colours and
textures, so colour or texture alone cannot tell key parts from distractors.

Every scene is drawn from an rng seeded by ``(seed, split, index)`` and kept as
an explicit description (:class:`Scene`), so :func:`interventions` re-renders
the exact same scene with one object removed and the background untouched.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ierf.data.shapes import (
    COLOURS,
    DARK,
    DISTRACTOR_SHAPES,
    EXTENT,
    KEY_SHAPES,
    TEXTURES,
    shape_mask,
    texture_dark,
)

IMAGE_SIZE = 64
MAX_OBJECTS = 4
SPLITS: dict[str, int] = {"train": 0, "val": 1, "test": 2}

PART_TYPES: list[dict[str, str]] = [
    {"name": f"{c}-{t}-{s}", "shape": s, "colour": c, "texture": t}
    for c, t, s in [
        ("red", "solid", "circle"),
        ("blue", "stripes", "square"),
        ("green", "dots", "triangle"),
        ("yellow", "stripes", "circle"),
        ("red", "dots", "diamond"),
    ]
]
#: Part-type pairs of the 8 classes; every part type is in at least 3 classes.
CLASS_PARTS: list[tuple[int, int]] = [
    (0, 1), (0, 2), (0, 4), (1, 2), (1, 3), (1, 4), (2, 3), (3, 4),
]
CLASS_NAMES: list[str] = [
    f"{PART_TYPES[a]['name']}+{PART_TYPES[b]['name']}" for a, b in CLASS_PARTS
]
CONCEPTS: dict[str, list[str]] = {
    "colour": ["background", *COLOURS],
    "shape": ["background", *KEY_SHAPES, *DISTRACTOR_SHAPES],
    "texture": ["background", *TEXTURES],
}

_YY, _XX = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float64) + 0.5
_STRIPE_ANGLES = np.deg2rad([0.0, 45.0, 90.0, 135.0])
_MAP_KEYS = ("colour", "shape", "texture", "part", "object")
Rendered = tuple[np.ndarray, dict[str, np.ndarray]]  # (H, W, 3) image and (H, W) label maps
# Bilinear upsampling matrix from a 5-point to an IMAGE_SIZE-point grid.
_UPSAMPLE = np.maximum(0.0, 1.0 - np.abs(np.linspace(0.0, 4.0, IMAGE_SIZE)[:, None] - np.arange(5)))


@dataclass(frozen=True)
class SceneObject:
    """One object of a scene; ``part`` is the part-type index or -1 for a distractor."""

    shape: str
    colour: str
    texture: str
    cx: float
    cy: float
    size: float
    angle: float
    stripe_angle: float
    brightness: float
    part: int


@dataclass(frozen=True)
class Scene:
    """Full description of one image: class label, objects and background pixels."""

    label: int
    objects: tuple[SceneObject, ...]
    background: np.ndarray  # (H, W, 3) float32


@dataclass
class SyntheticBatch:
    """Rendered images with labels and per-pixel ground truth (see module docstring)."""

    images: torch.Tensor  # (N, 3, H, W) float32 in [0, 1]
    labels: torch.Tensor  # (N,) int64
    parts_mask: torch.Tensor  # (N, H, W) bool, pixels of the key parts
    concept_maps: dict[str, torch.Tensor]  # (N, H, W) int64 each, 0 = background
    is_key: torch.Tensor  # (N, MAX_OBJECTS) bool, padded False


@dataclass
class Interventions:
    """Scenes of :func:`generate` re-rendered with one key part or one distractor removed."""

    original: SyntheticBatch
    without_key: torch.Tensor  # (N, 3, H, W)
    without_distractor: torch.Tensor  # (N, 3, H, W)
    removed_key: torch.Tensor  # (N,) int64 object index (``concept_maps["object"] - 1``)
    removed_distractor: torch.Tensor  # (N,) int64 object index
    parts_mask_without_key: torch.Tensor  # (N, H, W) bool


def _background(rng: np.random.Generator) -> np.ndarray:
    """Muted random colour with low-contrast smooth noise, stripes or gradient."""
    base = rng.uniform(0.3, 0.65) + rng.uniform(-0.07, 0.07, size=3)
    kind = rng.integers(3)
    theta = rng.uniform(0.0, np.pi)
    c = IMAGE_SIZE / 2
    u = (_XX - c) * np.cos(theta) + (_YY - c) * np.sin(theta)
    if kind == 0:
        field = _UPSAMPLE @ rng.normal(0.0, 0.6, size=(5, 5)) @ _UPSAMPLE.T
    elif kind == 1:
        field = np.sin(2 * np.pi * u / rng.uniform(6.0, 16.0) + rng.uniform(0.0, 2 * np.pi))
    else:
        field = u / c
    amp = rng.uniform(0.04, 0.12) * (1.0 + rng.uniform(-0.3, 0.3, size=3))
    noise = rng.normal(0.0, 0.02, size=(IMAGE_SIZE, IMAGE_SIZE, 3))
    return np.clip(base + field[..., None] * amp + noise, 0.0, 1.0).astype(np.float32)


def _place(rng: np.random.Generator, n: int) -> tuple[list[float], list[float], list[float]]:
    """Sizes and centres of ``n`` objects whose bounding boxes are >= 2 px apart."""
    while True:
        sizes = rng.uniform(12.0, 20.0, size=n).tolist()
        half = [EXTENT * s / 2 for s in sizes]
        cx: list[float] = []
        cy: list[float] = []
        for _ in range(50 * n):
            h = half[len(cx)]
            x, y = rng.uniform(h, IMAGE_SIZE - h, size=2).tolist()
            if all(max(abs(x - x2), abs(y - y2)) >= h + h2 + 2.0
                   for x2, y2, h2 in zip(cx, cy, half)):
                cx.append(x)
                cy.append(y)
                if len(cx) == n:
                    return sizes, cx, cy


def make_scene(index: int, seed: int = 0, split: str = "train") -> Scene:
    """Draw the description of scene ``index`` of the ``(seed, split)`` stream.

    Parameters
    ----------
    index : int
        Position of the scene in the stream.
    seed : int
        Stream seed.
    split : str
        ``"train"``, ``"val"`` or ``"test"``.

    Returns
    -------
    Scene
        The scene; identical for identical arguments.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {list(SPLITS)}")
    rng = np.random.default_rng([seed, SPLITS[split], index])
    label = int(rng.integers(len(CLASS_PARTS)))
    background = _background(rng)
    specs = [(PART_TYPES[p]["shape"], PART_TYPES[p]["colour"], PART_TYPES[p]["texture"], p)
             for p in CLASS_PARTS[label]]
    colours = list(COLOURS)
    for _ in range(int(rng.integers(1, 3))):
        s, c, t = rng.integers((len(DISTRACTOR_SHAPES), len(colours), len(TEXTURES))).tolist()
        specs.append((DISTRACTOR_SHAPES[s], colours[c], TEXTURES[t], -1))
    specs = [specs[i] for i in rng.permutation(len(specs)).tolist()]
    sizes, cx, cy = _place(rng, len(specs))
    angles = rng.uniform(0.0, np.pi, size=len(specs)).tolist()
    stripe_angles = rng.choice(_STRIPE_ANGLES, size=len(specs)).tolist()
    brightness = rng.uniform(0.85, 1.05, size=len(specs)).tolist()
    objects = tuple(
        SceneObject(shape=s, colour=c, texture=t, cx=cx[i], cy=cy[i], size=sizes[i],
                    angle=angles[i], stripe_angle=stripe_angles[i], brightness=brightness[i],
                    part=p)
        for i, (s, c, t, p) in enumerate(specs)
    )
    return Scene(label=label, objects=objects, background=background)


def render_without(scene: Scene, drop: tuple[int, ...] = ()) -> Rendered:
    """Render a scene, leaving out the objects whose indices are in ``drop``.

    Parameters
    ----------
    scene : Scene
        Scene description from :func:`make_scene`.
    drop : tuple of int
        Object indices not to draw; their pixels show the untouched background.

    Returns
    -------
    image : np.ndarray
        ``(H, W, 3)`` float32 in [0, 1].
    maps : dict of str to np.ndarray
        ``(H, W)`` uint8 label maps ``colour``, ``shape``, ``texture``, ``part``
        and ``object`` (see :class:`SyntheticBatch`).
    """
    image = scene.background.copy()
    maps = {k: np.zeros((IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8) for k in _MAP_KEYS}
    for i, obj in enumerate(scene.objects):
        if i in drop:
            continue
        # Rasterise inside the object's bounding box only.
        h = EXTENT * obj.size / 2
        win = (slice(max(0, int(obj.cy - h)), int(obj.cy + h) + 2),
               slice(max(0, int(obj.cx - h)), int(obj.cx + h) + 2))
        dx, dy = _XX[win] - obj.cx, _YY[win] - obj.cy
        mask = shape_mask(obj.shape, dx, dy, obj.size, obj.angle)
        colour = np.clip(np.asarray(COLOURS[obj.colour]) * obj.brightness, 0.0, 1.0)
        image[win][mask] = colour
        image[win][mask & texture_dark(obj.texture, dx, dy, obj.stripe_angle)] = colour * DARK
        labels = {"colour": CONCEPTS["colour"].index(obj.colour),
                  "shape": CONCEPTS["shape"].index(obj.shape),
                  "texture": CONCEPTS["texture"].index(obj.texture),
                  "part": obj.part + 1, "object": i + 1}
        for key, value in labels.items():
            maps[key][win][mask] = value
    return image, maps


def _batch(scenes: list[Scene], rendered: list[Rendered]) -> SyntheticBatch:
    images = np.stack([img for img, _ in rendered]).transpose(0, 3, 1, 2)
    maps = {k: torch.from_numpy(np.stack([m[k] for _, m in rendered])).long() for k in _MAP_KEYS}
    is_key = torch.zeros(len(scenes), MAX_OBJECTS, dtype=torch.bool)
    for n, scene in enumerate(scenes):
        for i, obj in enumerate(scene.objects):
            is_key[n, i] = obj.part >= 0
    return SyntheticBatch(
        images=torch.from_numpy(np.ascontiguousarray(images)),
        labels=torch.tensor([s.label for s in scenes], dtype=torch.int64),
        parts_mask=maps["part"] > 0,
        concept_maps=maps,
        is_key=is_key,
    )


def generate(n: int, seed: int = 0, split: str = "train") -> SyntheticBatch:
    """Render the first ``n`` scenes of the ``(seed, split)`` stream.

    Parameters
    ----------
    n : int
        Number of images.
    seed : int
        Stream seed; same ``(n, seed, split)`` gives identical tensors, and the
        first ``m < n`` images equal ``generate(m, seed, split)``.
    split : str
        ``"train"``, ``"val"`` or ``"test"``; each split is a different stream.

    Returns
    -------
    SyntheticBatch
    """
    scenes = [make_scene(i, seed, split) for i in range(n)]
    return _batch(scenes, [render_without(s) for s in scenes])


def interventions(n: int, seed: int = 0, split: str = "test") -> Interventions:
    """Scenes of ``generate(n, seed, split)`` with one key part / one distractor removed.

    The removed key part is the first key object in the scene's (randomly
    shuffled) object order, likewise for the distractor.  Only the removed
    object's pixels differ from the original image.

    Parameters
    ----------
    n : int
        Number of scenes.
    seed : int
        Stream seed.
    split : str
        ``"train"``, ``"val"`` or ``"test"``.

    Returns
    -------
    Interventions
    """
    scenes = [make_scene(i, seed, split) for i in range(n)]
    key = [next(i for i, o in enumerate(s.objects) if o.part >= 0) for s in scenes]
    distractor = [next(i for i, o in enumerate(s.objects) if o.part < 0) for s in scenes]
    no_key = _batch(scenes, [render_without(s, (k,)) for s, k in zip(scenes, key)])
    no_distractor = [render_without(s, (d,))[0] for s, d in zip(scenes, distractor)]
    return Interventions(
        original=_batch(scenes, [render_without(s) for s in scenes]),
        without_key=no_key.images,
        without_distractor=torch.from_numpy(np.stack(no_distractor).transpose(0, 3, 1, 2).copy()),
        removed_key=torch.tensor(key, dtype=torch.int64),
        removed_distractor=torch.tensor(distractor, dtype=torch.int64),
        parts_mask_without_key=no_key.parts_mask,
    )

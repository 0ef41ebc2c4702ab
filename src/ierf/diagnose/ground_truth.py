"""Ground truth for the diagnoses on the synthetic benchmark (IERF Sec. VI-E).

The paper's misclassification case has a tiger cat's evidence in the lower half of the image
and a boxer's in the upper half; the concept graph should send each class's route to its own
half. The synthetic benchmark lets us build that case with known answers:
:func:`composites` draws the two key parts of class ``a`` in the left half and those of
class ``b`` (no part in common with ``a``) in the right half, on a benchmark background,
without distractors. A diagnosis of ``a`` against ``b`` then passes when

- each class's **route region map** (its routes' node iERFs,
  :func:`ierf.diagnose.regions.route_region_map`) puts more of its mass on the half that
  holds the class's parts than the half's area share (0.5, chance), and
- the route concepts are **named after the right parts**: the dominant part under a route
  node's iERF on the image (:func:`node_parts`) is one of the class's two parts more often
  than chance (two of the four parts drawn: 0.5).

For the attack case, a perturbation confined to a known region (``mask`` of
:func:`ierf.diagnose.attack.pgd`) must be where the changed concepts' iERFs are: their mass
share on the pixels holding the perturbation's energy against that region's area share
(:class:`ierf.diagnose.pipeline.AttackDiagnosis`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ierf.data.synthetic import (
    CLASS_PARTS,
    IMAGE_SIZE,
    PART_TYPES,
    Scene,
    SceneObject,
    make_scene,
    render_without,
)
from ierf.errors import IerfError
from ierf.graph.ground_truth import N_LABELS, label_mass

STRIPE_ANGLES = (0.0, np.pi / 4, np.pi / 2, 3 * np.pi / 4)


def disjoint_class_pairs() -> list[tuple[int, int]]:
    """Ordered pairs of benchmark classes ``(a, b)`` whose part types do not overlap."""
    return [(a, b) for a, pa in enumerate(CLASS_PARTS) for b, pb in enumerate(CLASS_PARTS)
            if a != b and not set(pa) & set(pb)]


@dataclass
class Composites:
    """Composite benchmark images: class ``classes[i, 0]``'s parts left, ``classes[i, 1]``'s
    right.

    Attributes
    ----------
    images : (N, 3, H, W) in [0, 1].
    classes : (N, 2) the left and the right class.
    regions : (N, 2, H, W) bool: the half holding each class's parts (left, right).
    part_masks : (N, 2, H, W) bool: the pixels of each class's two parts.
    parts : (N, H, W) int64 part codes (``PART_TYPES`` index + 1, 0 = background).
    """

    images: torch.Tensor
    classes: torch.Tensor
    regions: torch.Tensor
    part_masks: torch.Tensor
    parts: torch.Tensor


def composite_scene(left: int, right: int, index: int = 0, seed: int = 0,
                    size: float = 13.0) -> Scene:
    """A scene with class ``left``'s two parts in the left half and ``right``'s in the right
    half (one part in the upper and one in the lower quarter of each half, in random order),
    on the background of benchmark scene ``index`` of the ``(seed, "test")`` stream."""
    n = len(CLASS_PARTS)
    if not (0 <= left < n and 0 <= right < n) or left == right:
        raise IerfError(f"give two different benchmark classes in 0..{n - 1}, got {left}, "
                        f"{right}")
    rng = np.random.default_rng([seed, 7, index])
    quarter = IMAGE_SIZE / 4
    objects = []
    for side, c in enumerate((left, right)):
        parts = list(CLASS_PARTS[c])
        if rng.random() < 0.5:
            parts.reverse()
        for row, p in enumerate(parts):          # two parts per side
            spec = PART_TYPES[p]
            cx = quarter * (1 + 2 * side) + rng.uniform(-2, 2)
            cy = quarter * (1 + 2 * row) + rng.uniform(-2, 2)
            objects.append(SceneObject(spec["shape"], spec["colour"], spec["texture"], cx, cy,
                                       size, float(rng.uniform(0, np.pi)),
                                       float(rng.choice(STRIPE_ANGLES)),
                                       float(rng.uniform(0.9, 1.0)), p))
    return Scene(label=left, objects=tuple(objects),
                 background=make_scene(index, seed, "test").background)


def composites(pairs: Sequence[tuple[int, int]], seed: int = 0) -> Composites:
    """Render :func:`composite_scene` for every ``(left, right)`` class pair (image ``i``
    uses background ``i``)."""
    if not pairs:
        raise IerfError("give at least one (left, right) class pair")
    rendered = [render_without(composite_scene(a, b, i, seed)) for i, (a, b) in
                enumerate(pairs)]
    images = torch.from_numpy(np.stack([r[0] for r in rendered]).transpose(0, 3, 1, 2).copy())
    parts = torch.from_numpy(np.stack([r[1]["part"] for r in rendered])).long()
    classes = torch.tensor(list(pairs), dtype=torch.long)
    codes = torch.tensor(CLASS_PARTS, dtype=torch.long)[classes] + 1           # (N, 2, 2)
    part_masks = (parts[:, None, None] == codes[..., None, None]).any(2)       # (N, 2, H, W)
    left = (torch.arange(IMAGE_SIZE) < IMAGE_SIZE // 2).expand(IMAGE_SIZE, IMAGE_SIZE)
    regions = torch.stack([left, ~left]).expand(len(pairs), -1, -1, -1).clone()
    return Composites(images, classes, regions, part_masks, parts)


def node_parts(ierfs: torch.Tensor, parts: torch.Tensor) -> torch.Tensor:
    """The dominant part code under each node's iERF: ``ierfs`` (R, H, W) on one image with
    part codes ``parts`` (H, W) → (R,) the part with the most positive iERF mass (0 when a
    node puts none on any part)."""
    mass = label_mass(ierfs[:, None].float(), parts[None], N_LABELS["part"])[:, 1:]
    return torch.where(mass.sum(1) > 0, mass.argmax(1) + 1, 0)


def part_hit_rate(ierfs: torch.Tensor, parts: torch.Tensor, class_: int) -> torch.Tensor:
    """(R,) bool: whether each node's dominant part (:func:`node_parts`) is one of the
    benchmark class ``class_``'s two parts."""
    codes = torch.tensor(CLASS_PARTS[class_]) + 1
    return torch.isin(node_parts(ierfs, parts), codes)

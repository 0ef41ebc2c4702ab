"""Rasterise the primitive shapes and textures of the synthetic benchmark.

Every function works on offset grids ``dx, dy`` (pixel centre minus object
centre, in pixels) covering the whole image, so a shape is rasterised with a
handful of vectorised numpy comparisons and no Python loops over pixels.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

KEY_SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond")
DISTRACTOR_SHAPES: tuple[str, ...] = ("cross", "ring", "bar")
TEXTURES: tuple[str, ...] = ("solid", "stripes", "dots")
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.90, 0.15, 0.15),
    "green": (0.15, 0.75, 0.20),
    "blue": (0.15, 0.30, 0.95),
    "yellow": (0.95, 0.85, 0.10),
}
#: Half-extent of every shape's bounding box, in units of the radius ``size / 2``.
EXTENT = 1.15
#: Brightness factor of the dark stripes / dots relative to the object colour.
DARK = 0.35

Mask = np.ndarray


def _rotate(dx: np.ndarray, dy: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    c, s = np.cos(angle), np.sin(angle)
    return dx * c + dy * s, -dx * s + dy * c


def _circle(dx: np.ndarray, dy: np.ndarray, r: float, angle: float) -> Mask:
    return dx**2 + dy**2 <= r**2


def _square(dx: np.ndarray, dy: np.ndarray, r: float, angle: float) -> Mask:
    return np.maximum(np.abs(dx), np.abs(dy)) <= 0.85 * r


def _diamond(dx: np.ndarray, dy: np.ndarray, r: float, angle: float) -> Mask:
    return np.abs(dx) + np.abs(dy) <= 1.1 * r


def _triangle(dx: np.ndarray, dy: np.ndarray, r: float, angle: float) -> Mask:
    # Upward equilateral triangle with circumradius 1.15 r centred on the origin.
    R = EXTENT * r
    return (dy <= R / 2) & (np.abs(dx) <= (dy + R) / np.sqrt(3.0))


def _cross(dx: np.ndarray, dy: np.ndarray, r: float, angle: float) -> Mask:
    u, v = _rotate(dx, dy, angle)
    au, av, w = np.abs(u), np.abs(v), r / 3
    return ((au <= w) & (av <= 0.8 * r)) | ((av <= w) & (au <= 0.8 * r))


def _ring(dx: np.ndarray, dy: np.ndarray, r: float, angle: float) -> Mask:
    d2 = dx**2 + dy**2
    return (d2 <= r**2) & (d2 >= (0.5 * r) ** 2)


def _bar(dx: np.ndarray, dy: np.ndarray, r: float, angle: float) -> Mask:
    u, v = _rotate(dx, dy, angle)
    return (np.abs(u) <= 0.8 * r) & (np.abs(v) <= r / 3)


_SHAPES: dict[str, Callable[[np.ndarray, np.ndarray, float, float], Mask]] = {
    "circle": _circle,
    "square": _square,
    "triangle": _triangle,
    "diamond": _diamond,
    "cross": _cross,
    "ring": _ring,
    "bar": _bar,
}


def shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray, size: float, angle: float) -> Mask:
    """Boolean mask of a shape.

    Parameters
    ----------
    shape : str
        One of :data:`KEY_SHAPES` or :data:`DISTRACTOR_SHAPES`.
    dx, dy : np.ndarray
        Pixel offsets from the object centre, shape ``(H, W)``.
    size : float
        Nominal diameter in pixels; the mask fits in a box of half-side
        ``EXTENT * size / 2``.
    angle : float
        Rotation in radians (only used by the distractor shapes cross and bar;
        key shapes are axis-aligned so that square and diamond stay distinct).

    Returns
    -------
    np.ndarray
        ``(H, W)`` bool mask.
    """
    return _SHAPES[shape](dx, dy, size / 2, angle)


def texture_dark(texture: str, dx: np.ndarray, dy: np.ndarray, angle: float) -> Mask:
    """Pixels drawn in the dark tone of the object colour.

    Parameters
    ----------
    texture : str
        One of :data:`TEXTURES`: ``solid`` (nothing dark), ``stripes``
        (period 4 px along ``angle``) or ``dots`` (radius 1.5 px on a 5 px grid).
    dx, dy : np.ndarray
        Pixel offsets from the object centre, shape ``(H, W)``.
    angle : float
        Stripe direction in radians.

    Returns
    -------
    np.ndarray
        ``(H, W)`` bool mask (not yet restricted to the object's shape).
    """
    if texture == "solid":
        return np.zeros(dx.shape, dtype=bool)
    if texture == "stripes":
        u, _ = _rotate(dx, dy, angle)
        return np.floor(u / 2.0) % 2 == 0
    if texture == "dots":
        return (np.mod(dx, 5.0) - 2.5) ** 2 + (np.mod(dy, 5.0) - 2.5) ** 2 <= 1.5**2
    raise ValueError(f"unknown texture {texture!r}; expected one of {TEXTURES}")

"""Loading images: files on disk or the photos bundled with scikit-image."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from ierf.errors import IerfError

BUNDLED_PHOTOS = ["astronaut", "camera", "cat", "chelsea", "clock", "coffee", "coins", "horse",
                  "moon", "rocket"]
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def load_image(source: str | Path) -> Image.Image:
    """Open an image file, or a bundled scikit-image photo by name (``"chelsea"``, …), as RGB."""
    path = Path(source)
    if path.is_file():
        limit = max_pixels()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(path) as im:
                    if im.width * im.height > limit:
                        raise _too_large(path, limit, f"{im.width}×{im.height} pixels, ")
                    return to_rgb(im, path)
        except Image.DecompressionBombError:
            raise _too_large(path, limit) from None
        except (UnidentifiedImageError, OSError) as e:
            raise IerfError(f"{str(path)!r} is not a readable image ({e}); give a PNG/JPEG file or "
                            f"a bundled photo: {', '.join(BUNDLED_PHOTOS)}") from e
    if str(source) in BUNDLED_PHOTOS:
        import skimage.data

        return Image.fromarray(getattr(skimage.data, str(source))()).convert("RGB")
    if path.is_dir():
        raise IerfError(f"{str(path)!r} is a folder; give one image file")
    raise IerfError(f"no image file {str(source)!r}, and it is not a bundled photo "
                    f"({', '.join(BUNDLED_PHOTOS)})")


def to_rgb(im: Image.Image, path: str | Path = "image") -> Image.Image:
    """8-bit RGB, saying what changed: 16-bit and float images are scaled to 8 bits (PIL's
    ``convert`` would clip them to white), transparency is flattened onto white."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        import numpy as np

        a = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode.startswith("I;16") or a.max() > 255 else 255.0
        if im.mode == "F":
            top = max(float(a.max()), 1e-12)
        warnings.warn(f"{path}: {im.mode} image scaled to 8 bits per channel", stacklevel=3)
        im = Image.fromarray((a / top * 255).clip(0, 255).round().astype(np.uint8))
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        if rgba.getextrema()[3][0] < 255:
            warnings.warn(f"{path}: transparent pixels flattened onto white", stacklevel=3)
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, rgba)
    return im.convert("RGB")


def expand_sources(sources: list[str]) -> list[str | Path]:
    """Image files, bundled photo names, and every image file inside each folder given."""
    out: list[str | Path] = []
    for src in sources:
        out.extend(image_files(src) if Path(src).is_dir() else [src])
    return out


def max_pixels() -> int:
    """The most pixels an image file may have: ``IERF_MAX_PIXELS`` or PIL's default limit
    (about 179 million; larger files are refused as possible decompression bombs)."""
    value = os.environ.get("IERF_MAX_PIXELS", "")
    if value and not value.isdigit():
        raise IerfError(f"IERF_MAX_PIXELS must be a whole number of pixels, got {value!r}")
    return int(value) if value else (Image.MAX_IMAGE_PIXELS or 178956970)


def _too_large(path: Path, limit: int, size: str = "") -> IerfError:
    return IerfError(f"{str(path)!r} is {size}over the limit of {limit:,} pixels (a "
                     "decompression bomb?); downscale it, or raise the limit with the "
                     "environment variable IERF_MAX_PIXELS")


def image_files(folder: str | Path) -> list[Path]:
    """Image files in ``folder`` (sorted); raises if there are none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise IerfError(f"{str(folder)!r} is not a folder of images")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise IerfError(f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in {str(folder)!r}")
    return files

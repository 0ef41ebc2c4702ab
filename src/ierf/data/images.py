"""Loading images: files on disk or the photos bundled with scikit-image."""

from __future__ import annotations

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
        try:
            with Image.open(path) as im:
                return im.convert("RGB")
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


def image_files(folder: str | Path) -> list[Path]:
    """Image files in ``folder`` (sorted); raises if there are none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise IerfError(f"{str(folder)!r} is not a folder of images")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise IerfError(f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in {str(folder)!r}")
    return files

"""The blank of CAFE's insertion test (IERF Sec. V-C1, Fig. 7), which is also the reference
input of the attributors that need one (Integrated Gradients' baseline, KernelSHAP's absent
patches): one image says what "no evidence" looks like for both.

- ``"zero"``: zeros after normalisation — the normalisation mean colour (mid-grey for the
  toy models, the ImageNet mean colour for ImageNet models); the paper's blank canvas. It
  is a flat image, not "nothing": a latent that responds to flat grey fires on it.
- ``"mean"``: the per-pixel mean image of the image batch being tested. It keeps the set's
  average layout (e.g. a brighter centre), so evidence that is always in the same place is
  partly present before any patch is inserted; it depends on which images are in the batch.
- ``"blur"``: a Gaussian-blurred copy of each image itself (σ = one patch). It keeps the
  image's colours and coarse layout and removes edges and texture, so it measures how fast
  the *detail* brings the latent back, not the colour.
"""

from __future__ import annotations

import torch

from ierf.errors import unknown_name
from ierf.models.model import Model

BLANKS = ("zero", "mean", "blur")


def model_grid(model: Model, layer: str | None = None) -> tuple[int, int]:
    """The patch grid CAFE works on: a ViT's patch grid; for a CNN the PFV grid of
    ``layer`` (the basis's layer, where latent positions live), 8 × 8 cells without one."""
    if model.patch_grid is not None:
        return tuple(model.patch_grid)
    return tuple(model.layer_grids()[layer]) if layer is not None else (8, 8)


def blank_canvas(x: torch.Tensor, kind: str = "zero", grid: tuple[int, int] = (8, 8)
                 ) -> torch.Tensor:
    """``(B, 3, H, W)`` blank of ``kind`` for each image of ``x`` (module docstring);
    ``grid`` sets the blur's σ (one cell)."""
    if kind == "zero":
        return torch.zeros_like(x)
    if kind == "mean":
        return x.mean(0, keepdim=True).expand_as(x)
    if kind == "blur":
        import torchvision.transforms.functional as TF

        sigma = x.shape[-1] / grid[1]
        size = 2 * int(2 * sigma) + 1
        return TF.gaussian_blur(x, [size, size], [sigma, sigma])
    raise unknown_name("blank", kind, BLANKS)

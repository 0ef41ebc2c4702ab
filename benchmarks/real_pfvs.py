"""Real PFVs for the concept benchmarks: EfficientNet-Lite0 ``blocks.5`` (C = 192) of augmented
bundled photos (random resized crops + horizontal flips; ``stereo_motorcycle`` is its left view),
the recipe of issue 11, and toy-resnet PFVs of the synthetic benchmark.

    from real_pfvs import augmented_pfvs, toy_pfvs
    X = augmented_pfvs(n_crops=75, seed=0)        # (75·49, 192) float32 (7 × 7 PFVs per crop)
    T = toy_pfvs(n_images=230)                    # (230·64, 64) toy-resnet layer3
"""

from __future__ import annotations

import torch
import torchvision.transforms.v2 as T
from torchvision.transforms.v2 import functional as TF

import ierf
import ierf.data.images

PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "stereo_motorcycle", "camera")


def photo(name: str) -> torch.Tensor:
    """(3, H, W) float image in [0, 1] of a bundled / scikit-image photo."""
    if name in ierf.data.images.BUNDLED_PHOTOS:
        image = ierf.load_image(name)
    else:
        import skimage.data
        from PIL import Image

        array = getattr(skimage.data, name)()
        image = Image.fromarray(array[0] if isinstance(array, tuple) else array).convert("RGB")
    return TF.to_dtype(TF.to_image(image), torch.float32, scale=True)


@torch.no_grad()
def augmented_pfvs(n_crops: int, seed: int = 0, layer: str = "blocks.5",
                   batch: int = 25) -> torch.Tensor:
    """PFVs (``n_crops · H·W``, C) of ``n_crops`` random resized crops + flips of :data:`PHOTOS`,
    the photos taken round-robin; deterministic given ``seed``."""
    model = ierf.load_model("efficientnet_lite0")
    p = model.preprocessing
    augment = T.Compose([T.RandomResizedCrop(list(p.input_size), antialias=True),
                         T.RandomHorizontalFlip()])
    images = [photo(name) for name in PHOTOS]
    torch.manual_seed(seed)
    crops = torch.stack([augment(images[i % len(images)]) for i in range(n_crops)])
    crops = TF.normalize(crops.clamp(0, 1), p.mean, p.std)
    return torch.cat([model.pfvs(crops[i:i + batch], layer)[layer].vectors.flatten(0, 1)
                      for i in range(0, n_crops, batch)])


@torch.no_grad()
def toy_pfvs(n_images: int, seed: int = 0, split: str = "train", layer: str = "layer3",
             batch: int = 50) -> torch.Tensor:
    """PFVs (``n_images · H·W``, C) of toy-resnet on synthetic-benchmark images
    (:func:`ierf.data.synthetic.generate`); ``layer3``: 64 PFVs of C = 64 per image."""
    from ierf.data.synthetic import generate
    from ierf.models.toy import TOY_MEAN, TOY_STD

    model = ierf.load_model("toy-resnet")
    mean, std = torch.tensor(TOY_MEAN)[:, None, None], torch.tensor(TOY_STD)[:, None, None]
    x = (generate(n_images, seed=seed, split=split).images - mean) / std
    return torch.cat([model.pfvs(x[i:i + batch], layer)[layer].vectors.flatten(0, 1)
                      for i in range(0, n_images, batch)])

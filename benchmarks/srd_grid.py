"""Where the dot grid of pixel-level maps comes from (issue 12, item 1).

For each model and method, on bundled photos: the share of the map's spectral energy in the
highest-frequency band (|f| > 3/8 cycles per pixel along either axis, where a period-2 grid
lives) and the spread of mean |R| over the four 2 × 2 pixel phases (max / min). The reading
to test: a 3 × 3 stride-2 stem (EfficientNet-Lite0) covers even pixels with two windows per
axis and odd ones with one, so every pixel-level decomposition through it inherits a
period-2 pattern; a 7 × 7 stride-2 stem (ResNet50: four vs three windows) much less, and a
stride-1 stem (toy-resnet) not at all. Also measured: the same after a 2 × 2 average pooling
(the display option ``ierf.viz``'s ``pool=2``).

    python benchmarks/srd_grid.py            # about 3 minutes on 2 CPU cores
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

import ierf
from ierf.data.images import load_image

PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")
METHODS = ("srd", "srd-high", "integrated-gradients", "grad-x-input", "lrp-zplus")


def high_frequency_share(m: torch.Tensor) -> float:
    """Share of |FFT|² (DC excluded) at |f| > 3/8 cycles / pixel along either axis."""
    spec = torch.fft.fft2(m - m.mean()).abs() ** 2
    fy = torch.fft.fftfreq(m.shape[0]).abs()[:, None]
    fx = torch.fft.fftfreq(m.shape[1]).abs()[None, :]
    high = (fy > 0.375) | (fx > 0.375)
    return float(spec[high].sum() / spec.sum().clamp_min(1e-30))


def phase_spread(m: torch.Tensor) -> float:
    """max / min over the four 2 × 2 pixel phases of mean |R|."""
    means = torch.stack([m[i::2, j::2].abs().mean() for i in (0, 1) for j in (0, 1)])
    return float(means.max() / means.min().clamp_min(1e-30))


def pooled(m: torch.Tensor) -> torch.Tensor:
    return F.interpolate(F.avg_pool2d(m[None, None], 2), scale_factor=2, mode="nearest")[0, 0]


def main() -> None:
    torch.manual_seed(0)
    models = {"efficientnet_lite0 (3×3/2 stem)": ierf.load_model("efficientnet_lite0"),
              "resnet50, random weights (7×7/2 stem)": ierf.load_model("resnet50", weights=None),
              "toy-resnet (3×3/1 stem)": ierf.load_model("toy-resnet")}
    print("| model | method | HF share | phase max/min | HF share, 2×2-pooled |")
    print("|---|---|---:|---:|---:|")
    for label, model in models.items():
        x = torch.cat([model.preprocess(load_image(p)) for p in PHOTOS])
        for name in METHODS:
            t = time.perf_counter()
            with ierf.attributor(name, model) as method:
                maps = method.attribute(x)
            hf = sum(high_frequency_share(m) for m in maps) / len(maps)
            ph = sum(phase_spread(m) for m in maps) / len(maps)
            hp = sum(high_frequency_share(pooled(m)) for m in maps) / len(maps)
            print(f"| {label} | {name} | {hf:.3f} | {ph:.2f} | {hp:.3f} |  "
                  f"<!-- {time.perf_counter() - t:.1f} s -->", flush=True)


if __name__ == "__main__":
    main()

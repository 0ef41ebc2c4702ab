"""PFV–iERF atlas build rate (samples/s) against a plain forward and the SRD relevance pass.

    python benchmarks/bench_atlas_build.py [--models resnet50 efficientnet_lite0] [--images 16]
        [--batch 8] [--samples-per-image 1] [--ierf-downsample 4] [--device cpu]

Builds an atlas (IERF Sec. III-D) of ``--images`` 224² images (the bundled photos, repeated
and flipped to the count) over two layers (ResNet50 with random weights: layer2, layer3;
EfficientNet-Lite0: blocks.2, blocks.4), end to end with image loading and shard writing,
and measures in the same process, on the same preprocessed batches:

- forward: the plain forward pass,
- relevance: the SRD relevance pass for both layers (what the sampling needs),

printing samples/s and the ratios build / forward and build / relevance.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import ierf
from ierf.atlas import build_atlas
from ierf.atlas.store import load_atlas_model
from ierf.data.images import BUNDLED_PHOTOS

LAYERS = {"resnet50": ["layer2", "layer3"], "efficientnet_lite0": ["blocks.2", "blocks.4"]}
WEIGHTS = {"resnet50": "random:0", "efficientnet_lite0": "pretrained"}


def image_folder(n: int, folder: Path) -> Path:
    """``n`` PNGs: the bundled photos, then their mirror images, then again."""
    photos = [np.asarray(ierf.load_image(p)) for p in BUNDLED_PHOTOS]
    for i in range(n):
        a = photos[i % len(photos)]
        a = a[:, ::-1] if (i // len(photos)) % 2 else a
        Image.fromarray(np.ascontiguousarray(a)).save(folder / f"img{i:03d}.png")
    return folder


def timed(fn: Callable[[], object], repeats: int) -> float:
    """Median seconds over ``repeats`` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench(name: str, folder: Path, args: argparse.Namespace) -> dict[str, float]:
    model = load_atlas_model(name, WEIGHTS[name])
    model.net.to(args.device)
    layers = LAYERS[name]
    files = sorted(folder.glob("*.png"))
    x = torch.cat([model.preprocess(ierf.load_image(f)) for f in files]).to(args.device)
    batches = x.split(args.batch)
    srd = ierf.SRD(model)

    def forward() -> None:
        with torch.no_grad():
            for b in batches:
                model(b)

    def relevance() -> None:
        for b in batches:
            srd.relevance(b, None, layers=layers)

    counter = iter(range(10**6))

    def build() -> None:
        with tempfile.TemporaryDirectory() as out:
            build_atlas(model, folder, layers, Path(out) / f"atlas{next(counter)}",
                        samples_per_image=args.samples_per_image, batch_size=args.batch,
                        ierf_downsample=args.ierf_downsample, weights=WEIGHTS[name],
                        progress=False)

    t_fwd, t_rel, t_build = (timed(f, args.repeats) for f in (forward, relevance, build))
    samples = len(files) * len(layers) * args.samples_per_image
    return {"forward": t_fwd, "relevance": t_rel, "build": t_build, "samples": samples}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=list(LAYERS), choices=list(LAYERS))
    p.add_argument("--images", type=int, default=16)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--samples-per-image", type=int, default=1)
    p.add_argument("--ierf-downsample", type=int, default=4)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), device {args.device}; "
          f"{args.images} images 224², batch {args.batch}, {args.samples_per_image} sample(s) per "
          f"image and layer, iERFs ÷{args.ierf_downsample}")
    print("| model | layers | samples | forward s | SRD relevance s | build s | samples/s "
          "| build / forward | build / relevance |")
    print("|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        folder = image_folder(args.images, Path(tmp))
        for name in args.models:
            r = bench(name, folder, args)
            print(f"| {name} | {','.join(LAYERS[name])} | {r['samples']} | {r['forward']:.2f} | "
                  f"{r['relevance']:.2f} | {r['build']:.2f} | {r['samples'] / r['build']:.1f} | "
                  f"{r['build'] / r['forward']:.1f}× | {r['build'] / r['relevance']:.1f}× |",
                  flush=True)


if __name__ == "__main__":
    main()

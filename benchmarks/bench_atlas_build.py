"""PFV–iERF atlas build rate (samples/s): one shared forward pass per batch against one per
layer, and against a plain forward.

    python benchmarks/bench_atlas_build.py [--models toy-resnet efficientnet_lite0]
        [--images 16] [--batch 8] [--samples-per-image 1] [--ierf-downsample 4]
        [--repeats 3] [--device cpu]

Builds an atlas (IERF Sec. III-D) end to end, image loading and shard writing included:
toy-resnet on ``--images`` synthetic-benchmark scenes (layer1, layer2, layer3) and
EfficientNet-Lite0 on ``--images`` 224² photos (the bundled photos, repeated and mirrored to
the count; blocks.2, blocks.4), and optionally ResNet50 with random weights on the same
photos (layer2, layer3). In the same process, interleaved, median of ``--repeats``:

- shared: SRD's ``forward_pass``, one forward per batch whose graph serves the relevance and
  every layer's iERFs (what ``ierf atlas build`` does);
- separate: the same SRD behind an engine without ``forward_pass`` (its relevance pass, then
  ``ierfs`` with a forward pass of its own per layer: the build before the shared pass);
- forward: the plain forward passes of the same images (the floor).

Both builds must store the same atlas (checked). Prints samples/s, the speed-up, and
build / forward.
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
from ierf.data.sources import image_ids, load_images, parse_source

SETUPS = {  # model: (weights, layers, images)
    "toy-resnet": ("pretrained", ["layer1", "layer2", "layer3"], "benchmark"),
    "efficientnet_lite0": ("pretrained", ["blocks.2", "blocks.4"], "photos"),
    "resnet50": ("random:0", ["layer2", "layer3"], "photos"),
}


class SeparatePassesSRD:
    """SRD without ``forward_pass``: the atlas falls back to a forward pass per layer."""

    def __init__(self, srd: ierf.SRD) -> None:
        self.name, self._srd = srd.name, srd

    def relevance(self, x, target=None, layers=()):
        return self._srd.relevance(x, target, layers)

    def ierfs(self, x, targets, internal_batch_size=16):
        return self._srd.ierfs(x, targets, internal_batch_size)


def photo_folder(n: int, folder: Path) -> Path:
    """``n`` PNGs: the bundled photos, then their mirror images, then again."""
    folder.mkdir()
    photos = [np.asarray(ierf.load_image(p)) for p in BUNDLED_PHOTOS]
    for i in range(n):
        a = photos[i % len(photos)]
        a = a[:, ::-1] if (i // len(photos)) % 2 else a
        Image.fromarray(np.ascontiguousarray(a)).save(folder / f"img{i:03d}.png")
    return folder


def same_atlas(a: ierf.atlas.Atlas, b: ierf.atlas.Atlas) -> None:
    assert a.images == b.images and len(a) == len(b)
    for layer in a.layers:
        ra, rb = a.records(layer), b.records(layer)
        assert all(torch.equal(ra[k], rb[k]) for k in ra if k != "contribution"), layer
        for x, y in ((a.pfvs(layer), b.pfvs(layer)), (a.ierfs(layer), b.ierfs(layer)),
                     (ra["contribution"], rb["contribution"])):
            torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5)


def bench(name: str, tmp: Path, args: argparse.Namespace) -> dict[str, float]:
    weights, layers, kind = SETUPS[name]
    model = load_atlas_model(name, weights)
    model.net.to(args.device)
    source = ("benchmark:0:train" if kind == "benchmark" else
              str(photo_folder(args.images, tmp / f"photos-{name}")))
    ids = image_ids(parse_source(source), args.images)
    x = load_images(parse_source(source), ids, model).to(args.device)
    counter = iter(range(10**6))
    atlases = {}

    def build(label: str, engine: Callable[[], object]) -> Callable[[], None]:
        def run() -> None:
            atlases[label] = build_atlas(
                model, source, layers, tmp / f"{name}-{label}-{next(counter)}", n=args.images,
                samples_per_image=args.samples_per_image, batch_size=args.batch,
                ierf_downsample=args.ierf_downsample, device=args.device, engine=engine(),
                weights=weights, progress=False)
        return run

    def forward() -> None:
        with torch.no_grad():
            for b in x.split(args.batch):
                model(b)

    runs = {"shared": build("shared", lambda: ierf.SRD(model)),
            "separate": build("separate", lambda: SeparatePassesSRD(ierf.SRD(model))),
            "forward": forward}
    times: dict[str, list[float]] = {k: [] for k in runs}
    for fn in runs.values():  # warm-up
        fn()
    for r in range(args.repeats):
        for label in (list(runs) if r % 2 == 0 else list(runs)[::-1]):
            start = time.perf_counter()
            runs[label]()
            times[label].append(time.perf_counter() - start)
    same_atlas(atlases["shared"], atlases["separate"])
    t = {k: statistics.median(v) for k, v in times.items()}
    return {**t, "samples": len(atlases["shared"]), "layers": ",".join(layers)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=["toy-resnet", "efficientnet_lite0"],
                   choices=list(SETUPS))
    p.add_argument("--images", type=int, default=16)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--samples-per-image", type=int, default=1)
    p.add_argument("--ierf-downsample", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), device {args.device}; "
          f"{args.images} images, batch {args.batch}, {args.samples_per_image} sample(s) per "
          f"image and layer, iERFs ÷{args.ierf_downsample}, median of {args.repeats}")
    print("| model | layers | samples | forward s | separate passes s | shared pass s | "
          "separate samples/s | shared samples/s | speed-up | shared / forward |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            r = bench(name, Path(tmp), args)
            print(f"| {name} | {r['layers']} | {r['samples']} | {r['forward']:.2f} | "
                  f"{r['separate']:.2f} | {r['shared']:.2f} | "
                  f"{r['samples'] / r['separate']:.1f} | {r['samples'] / r['shared']:.1f} | "
                  f"{r['separate'] / r['shared']:.2f}× | {r['shared'] / r['forward']:.1f}× |",
                  flush=True)


if __name__ == "__main__":
    main()

"""PFV–iERF atlas build rate (samples/s): one shared forward pass per batch against one per
layer, and against a plain forward.

    python benchmarks/bench_atlas_build.py [--models toy-resnet efficientnet_lite0]
        [--images 16] [--batch 8] [--samples-per-image 1] [--ierf-downsample 4]
        [--repeats 3] [--device cpu] [--memory]

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
build / forward. ``--memory`` adds each build's peak memory above its start, one build per
fresh process: on CUDA ``torch.cuda.max_memory_allocated``, on a CPU the resident set
sampled every 2 ms (the shared pass keeps one forward's autograd graph alive while the
iERFs are computed; the separate passes keep one at a time).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import tempfile
import threading
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


ENGINES: dict[str, Callable[[ierf.Model], object]] = {
    "shared": ierf.SRD, "separate": lambda model: SeparatePassesSRD(ierf.SRD(model))}


def setup(name: str, tmp: Path, args: argparse.Namespace) -> tuple[ierf.Model, str]:
    """The model on ``args.device`` and its image source (``--images`` photos in ``tmp``)."""
    weights, _, kind = SETUPS[name]
    model = load_atlas_model(name, weights)
    model.net.to(args.device)
    source = ("benchmark:0:train" if kind == "benchmark" else
              str(photo_folder(args.images, tmp / f"photos-{name}")))
    return model, source


def builder(name: str, model: ierf.Model, source: str, tmp: Path, args: argparse.Namespace,
            atlases: dict[str, ierf.atlas.Atlas]) -> Callable[[str], None]:
    """``build(label)``: one atlas build with the engine ``ENGINES[label]`` into ``atlases``."""
    weights, layers, _ = SETUPS[name]
    counter = iter(range(10**6))

    def build(label: str) -> None:
        atlases[label] = build_atlas(
            model, source, layers, tmp / f"{name}-{label}-{next(counter)}", n=args.images,
            samples_per_image=args.samples_per_image, batch_size=args.batch,
            ierf_downsample=args.ierf_downsample, device=args.device,
            engine=ENGINES[label](model), weights=weights, progress=False)
    return build


def resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_child(name: str, label: str, args: argparse.Namespace,
               queue: multiprocessing.Queue) -> None:
    """Put the peak memory (bytes) of one ``label`` build above its start into ``queue``."""
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        model, source = setup(name, Path(tmp), args)
        build = builder(name, model, source, Path(tmp), args, {})
        if torch.device(args.device).type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            start = torch.cuda.memory_allocated()
            build(label)
            queue.put(torch.cuda.max_memory_allocated() - start)
            return
        start = peak = resident_bytes()
        done = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.wait(0.002):
                peak = max(peak, resident_bytes())

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        build(label)
        done.set()
        sampler.join()
        queue.put(max(peak, resident_bytes()) - start)


def peak_memory(name: str, label: str, args: argparse.Namespace) -> float:
    """MB of one ``label`` build's peak memory above its start, in a fresh process."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=peak_child, args=(name, label, args, queue))
    child.start()
    child.join()
    if child.exitcode:
        raise RuntimeError(f"the {label} build of {name} failed in its child process")
    return queue.get() / 2**20


def bench(name: str, tmp: Path, args: argparse.Namespace) -> dict[str, float]:
    model, source = setup(name, tmp, args)
    ids = image_ids(parse_source(source), args.images)
    x = load_images(parse_source(source), ids, model).to(args.device)
    atlases: dict[str, ierf.atlas.Atlas] = {}
    build = builder(name, model, source, tmp, args, atlases)

    def forward() -> None:
        with torch.no_grad():
            for b in x.split(args.batch):
                model(b)

    runs = {"shared": lambda: build("shared"), "separate": lambda: build("separate"),
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
    if args.memory:
        t |= {f"{label} MB": peak_memory(name, label, args) for label in ENGINES}
    return {**t, "samples": len(atlases["shared"]), "layers": ",".join(SETUPS[name][1])}


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
    p.add_argument("--memory", action="store_true",
                   help="also each build's peak memory (fresh process per build)")
    args = p.parse_args()
    args.threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), device {args.device}; "
          f"{args.images} images, batch {args.batch}, {args.samples_per_image} sample(s) per "
          f"image and layer, iERFs ÷{args.ierf_downsample}, median of {args.repeats}")
    memory = " separate peak MB | shared peak MB |" if args.memory else ""
    print("| model | layers | samples | forward s | separate passes s | shared pass s | "
          "separate samples/s | shared samples/s | speed-up | shared / forward |" + memory)
    print("|---|---|---|---|---|---|---|---|---|---|" + "---|---|" * args.memory)
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            r = bench(name, Path(tmp), args)
            print(f"| {name} | {r['layers']} | {r['samples']} | {r['forward']:.2f} | "
                  f"{r['separate']:.2f} | {r['shared']:.2f} | "
                  f"{r['samples'] / r['separate']:.1f} | {r['samples'] / r['shared']:.1f} | "
                  f"{r['separate'] / r['shared']:.2f}× | {r['shared'] / r['forward']:.1f}× |"
                  + (f" {r['separate MB']:.0f} | {r['shared MB']:.0f} |" if args.memory else ""),
                  flush=True)


if __name__ == "__main__":
    main()

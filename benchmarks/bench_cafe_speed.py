"""CAFE speed (issue 16): SAE training tokens per second through the streaming buffer, the
peak memory of training (and that it does not grow with the number of images), and latent
iERFs batched over (latent, image) pairs vs one pair at a time — on toy-vit and on ViT-S/16
with random weights.

Each configuration runs in a fresh process so that its peak resident memory
(``ru_maxrss``) is its own; "above load" subtracts the peak of a process that only loaded the
model and the images. Run::

    PYTHONPATH=src .venv/bin/python benchmarks/bench_cafe_speed.py [--threads 1]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import tempfile
import time
from pathlib import Path

import torch
from bench_cafe import speed  # latent iERFs batched vs one pair at a time

from ierf.cafe.streaming import TensorImages
from ierf.cafe.training import SAETrainer, SAETraining
from ierf.data.synthetic import generate
from ierf.models import load_model

#: model, layer, image side, image counts, methods timed batched vs one pair at a time
CONFIGS = {"toy-vit": ("toy-vit", "blocks.1", 64, (32, 128),
                       ("attnlrp", "srd", "integrated-gradients")),
           "vit-s16": ("vit_small_patch16_224", "blocks.6", 224, (16, 64), ("attnlrp", "srd"))}


def images(name: str, n: int) -> tuple[object, TensorImages]:
    model_name, _, side, _, _ = CONFIGS[name]
    torch.manual_seed(0)
    model = load_model(model_name, weights=None if name == "vit-s16" else "pretrained")
    x = (model.normalize(generate(n, seed=0, split="train").images) if name == "toy-vit"
         else torch.randn(n, 3, side, side))
    return model, TensorImages(x, f"{name}-{n}")


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def train_once(name: str, n: int, threads: int, load_only: bool, queue: mp.Queue) -> None:
    torch.set_num_threads(threads)
    model, data = images(name, n)
    layer = CONFIGS[name][1]
    if load_only:
        model.pfvs(data.x[:8], layer)
        queue.put({"peak": peak_mb()})
        return
    config = SAETraining(n_concepts=8 * 384 if name == "vit-s16" else 256, k=8,
                         batch_size=256, buffer_tokens=4096, image_batch=8)
    with tempfile.TemporaryDirectory() as out:
        trainer = SAETrainer(model, data, [layer], Path(out), ["patch"], config)
        start = time.perf_counter()
        bases = trainer.run(progress=False)
        seconds = time.perf_counter() - start
        peak = peak_mb()                                  # training's peak, before the iERFs
        basis = bases[f"{layer}-patch"]
        sizes, methods = CONFIGS[name][3:]
        iers = speed(model, basis, data.x[:8], methods) if n == min(sizes) else ""
    tokens = n * model.pfvs(data.x[:1], layer)[layer].vectors.shape[1]
    queue.put({"peak": peak, "seconds": seconds, "tokens": tokens, "ierfs": iers})


def in_child(*args: object) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    p = ctx.Process(target=train_once, args=(*args, queue))
    p.start()
    result = queue.get()
    p.join()
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--models", default="toy-vit,vit-s16")
    args = ap.parse_args()
    rows, ierfs = [], []
    for name in args.models.split(","):
        for n in CONFIGS[name][3]:
            base = in_child(name, n, args.threads, True)["peak"]
            r = in_child(name, n, args.threads, False)
            rows.append(f"| {name} | {n} | {r['tokens']} | {r['seconds']:.1f} | "
                        f"{r['tokens'] / r['seconds']:.0f} | {r['peak']:.0f} | "
                        f"{r['peak'] - base:.0f} |")
            if r["ierfs"]:
                ierfs.append(f"\n{name} (K = 8·C latents, 8 images, "
                             f"{args.threads} thread(s)):\n\n{r['ierfs']}")
    print("SAE training through a 4 096-token buffer (TopK, k = 8, batch 256, "
          f"{args.threads} thread(s)):\n")
    print("| model | images | tokens | s | tokens/s | peak RSS MB | above load MB |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    print("\n".join(rows))
    print("\n".join(ierfs))


if __name__ == "__main__":
    main()

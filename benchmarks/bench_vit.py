"""Speed of the ViT attribution methods, as a ratio to the plain gradient, in one process.

    python benchmarks/bench_vit.py [--model vit_small_patch16_224] [--batch 8] [--repeats 3]
                                   [--threads 2] [--methods transmm rollout ...]

timm ViT-S/16 with random weights, CPU, a batch of bundled photos at 224², the target each
image's top class. Each method is warmed up on one image, then timed ``--repeats`` times on
the batch (median), right after the plain gradient is timed the same way; the ratio is to
that adjacent gradient time, so it survives load drift on a shared machine.
``gated-transmm`` gates the middle block with a *random-init* TopK SAE (K = 8·384 = 3072,
k = 32): its cost does not depend on what the SAE learnt. ``attnlrp`` and ``srd`` are timed
when ``ierf.methods()`` lists them.
"""

from __future__ import annotations

import argparse
import statistics

import torch
from bench_baselines import time_per_image  # this folder is on sys.path when run as a script

import ierf
from ierf.concepts.extractors import TopKSAE

PHOTOS = ["chelsea", "coffee", "camera", "rocket", "astronaut", "horse", "clock", "coins"]
METHODS = ["srd", "attnlrp", "transmm", "gated-transmm", "rollout", "raw-attention"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="vit_small_patch16_224")
    p.add_argument("--methods", nargs="+", default=METHODS)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = ierf.load_model(args.model, weights=None)
    x = torch.cat([model.preprocess(ierf.load_image(PHOTOS[i % len(PHOTOS)]))
                   for i in range(args.batch)])
    depth = len(model.net.blocks)
    width = model.net.embed_dim
    opts = {"gated-transmm": {"sae": TopKSAE(width, k=32, seed=0), "layers": [depth // 2]}}
    print(f"\n### {args.model}, random weights (CPU, {args.threads} threads, batch {args.batch}, "
          f"median of {args.repeats}; gated-transmm: random TopK SAE, K = {8 * width}, at "
          f"blocks.{depth // 2})\n")
    print("| method | ms/image | ratio to gradient |\n|---|---:|---:|", flush=True)
    gradient = ierf.attributor("gradient", model)
    gradient_times = []
    for name in [m for m in args.methods if m in ierf.methods()]:
        gradient_times.append(time_per_image(gradient, x, args.repeats))
        with ierf.attributor(name, model, **opts.get(name, {})) as method:
            seconds = time_per_image(method, x, args.repeats)
        print(f"| {name} | {1000 * seconds:.1f} | {seconds / gradient_times[-1]:.2f} |",
              flush=True)
    print(f"| gradient (median of its {len(gradient_times)} runs) | "
          f"{1000 * statistics.median(gradient_times):.1f} | 1.00 |", flush=True)


if __name__ == "__main__":
    main()

"""Speed of every CNN attribution method, as a ratio to the plain gradient, in one process.

    python benchmarks/bench_baselines.py [--models resnet50 efficientnet_lite0] [--batch 8]
                                         [--repeats 3] [--methods gradcam scorecam ...]

ResNet50 has random weights, EfficientNet-Lite0 its offline ImageNet weights; the input is a
batch of bundled photos at 224², the target each image's top class. Each method is warmed up
on one image, then timed ``--repeats`` times on the batch (median), right after the plain
gradient is timed the same way; the ratio is to that adjacent gradient time, so it holds on a
machine whose load drifts during the run. The perturbation CAMs
(ScoreCAM, AblationCAM: one forward pass per channel and image) are timed once on
``--perturbation-batch`` images. Prints one Markdown table per model: method | ms/image |
ratio to gradient. ``srd*`` methods are included when ``ierf.methods()`` lists them.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import ierf

PHOTOS = ["chelsea", "coffee", "camera", "rocket", "astronaut", "horse", "clock", "coins"]
PERTURBATION = ("scorecam", "ablationcam")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["resnet50", "efficientnet_lite0"])
    p.add_argument("--methods", nargs="+", help="default: every method ierf.methods() lists")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--perturbation-batch", type=int, default=1,
                   help="images for the timed ScoreCAM/AblationCAM run (default 1)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    names = [n for n in (args.methods or ierf.methods()) if n != "gradient"]
    for model_name in args.models:
        print(f"\n### {model_name} (CPU, {args.threads} threads, batch {args.batch}, 224², "
              f"median of {args.repeats})\n")
        print("| method | ms/image | ratio to gradient |\n|---|---:|---:|", flush=True)
        model, x = load(model_name, args.batch)
        gradient = ierf.attributor("gradient", model)
        gradient_times = []
        for name in names:
            # the gradient is timed right before each method: the ratio survives load drift
            gradient_times.append(time_per_image(gradient, x, args.repeats))
            with ierf.attributor(name, model) as method:
                if name.startswith(PERTURBATION):
                    n = min(args.perturbation_batch, len(x))
                    seconds = time_per_image(method, x[:n], 1, warm_up=False)
                    name += f" (1 run, {n} image{'s' if n > 1 else ''})"
                else:
                    seconds = time_per_image(method, x, args.repeats)
            print(f"| {name} | {1000 * seconds:.1f} | {seconds / gradient_times[-1]:.2f} |",
                  flush=True)
        print(f"| gradient (median of its {len(gradient_times)} runs) | "
              f"{1000 * statistics.median(gradient_times):.1f} | 1.00 |", flush=True)


def load(name: str, batch: int) -> tuple[ierf.Model, torch.Tensor]:
    torch.manual_seed(0)
    model = ierf.load_model(name, weights=None if name == "resnet50" else "pretrained")
    photos = [model.preprocess(ierf.load_image(PHOTOS[i % len(PHOTOS)])) for i in range(batch)]
    return model, torch.cat(photos)


def time_per_image(method: ierf.Attributor, x: torch.Tensor, repeats: int,
                   warm_up: bool = True) -> float:
    """Median seconds per image of ``method.attribute(x)`` (top-class target)."""
    if warm_up:
        method.attribute(x[:1])
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        method.attribute(x)
        times.append(time.perf_counter() - start)
    return statistics.median(times) / len(x)


if __name__ == "__main__":
    main()

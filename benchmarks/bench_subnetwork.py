"""Speed of the isolated sub-network M_ab (paper Sec. VI-B1) against the full forward pass.

    python benchmarks/bench_subnetwork.py [--batch 8] [--repeats 9] [--threads 1]
                                          [--device cpu]

For late layer pairs of ResNet50 (random weights) and EfficientNet-Lite0 (its offline
ImageNet weights) on ``--batch`` random 224² inputs, in one process:

- full: what running "the rest of the network" from layer ``a`` cost before the
  sub-network existed — the whole model's forward, with a hook that replaces ``a``'s output
  by the given PFVs (ICAT's and the concept metrics' old way);
- sub: ``Subnetwork(model, a, b)(pfvs_a)``, which runs only the layers between ``a`` and ``b``.

Both are timed without gradients and with a backward pass to the PFVs (what Integrated
Gradients needs), after one warm-up, alternating, ``--repeats`` times; the median is kept.
Prints a Markdown table: model | a → b | mode | full ms | sub ms | speed-up × | max |diff|.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

import ierf
from ierf.models import Subnetwork, to_pfvs
from ierf.models.hooks import forward_hooks, forward_until

PAIRS = {"resnet50": [("layer3.5", "layer4.2"), ("layer4.2", "output")],
         "efficientnet_lite0": [("blocks.5", "blocks.6"), ("blocks.6", "output")]}


def full_forward(model: ierf.Model, a: str, b: str, x: torch.Tensor,
                 layer_a: torch.Tensor) -> torch.Tensor:
    """The whole model on ``x`` with ``a``'s output replaced by ``layer_a``; ``b``'s output."""
    with forward_hooks([(model.module(a), lambda *_: layer_a)]):
        if b == "output":
            return model.net(x)
        out: list[torch.Tensor] = []
        forward_until(model.net, x, model.module(b), out.append)
        return out[0]


def timer(fn: Callable[[], object], sync: Callable[[], None]) -> Callable[[], float]:
    """``fn`` as a function that runs it and returns its wall time in ms."""

    def run() -> float:
        start = time.perf_counter()
        fn()
        sync()
        return 1e3 * (time.perf_counter() - start)
    return run


def bench(model: ierf.Model, a: str, b: str, x: torch.Tensor, repeats: int) -> list[str]:
    sub = Subnetwork(model, a, b, example=x[:1])
    with torch.no_grad():
        pfvs = sub.pfvs_a(x)
    layer_a = pfvs.as_map()                      # CNNs: a's output is the (B, C, H, W) map
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)

    def grad_of(forward: Callable[[torch.Tensor], torch.Tensor], v: torch.Tensor) -> None:
        v = v.detach().requires_grad_()
        torch.autograd.grad(forward(v).square().sum(), v)

    cases = {
        "no grad": (lambda: full_forward(model, a, b, x, layer_a), lambda: sub(pfvs)),
        "fwd+bwd": (lambda: grad_of(lambda v: full_forward(model, a, b, x, v), layer_a),
                    lambda: grad_of(sub, pfvs.vectors)),
    }
    with torch.no_grad():
        ref = full_forward(model, a, b, x, layer_a)
        ref = ref if b == "output" else to_pfvs(ref).vectors
        diff = (sub(pfvs) - ref).abs().max().item()
    rows = []
    for mode, (full, part) in cases.items():
        with torch.set_grad_enabled(mode != "no grad"):
            runs = [timer(full, sync), timer(part, sync)]
            for r in runs:
                r()                                      # warm-up
            times: list[list[float]] = [[], []]
            for _ in range(repeats):
                for t, r in zip(times, runs):
                    t.append(r())
        f, s = (statistics.median(t) for t in times)
        rows.append(f"| {model.name} | {a} → {b} | {mode} | {f:.1f} | {s:.1f} | {f / s:.2f} "
                    f"| {diff:.1e} |")
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"batch {args.batch}, 224², {args.device}, {args.threads} thread(s), median of "
          f"{args.repeats}\n")
    print("| model | a → b | mode | full ms | sub ms | speed-up × | max abs diff |")
    print("|---|---|---|---|---|---|---|")
    for name, pairs in PAIRS.items():
        torch.manual_seed(0)
        model = ierf.load_model(name, weights=None if name == "resnet50" else "pretrained")
        model.net.to(args.device)
        x = torch.randn(args.batch, 3, 224, 224, generator=torch.Generator().manual_seed(0))
        for a, b in pairs:
            for row in bench(model, a, b, x.to(args.device), args.repeats):
                print(row, flush=True)


if __name__ == "__main__":
    main()

"""ICAT speed (IERF Eqs. 13–16) against the naive route, measured side by side in one process.

Naive route: Captum ``IntegratedGradients`` on the *full* model (layer ``a``'s output replaced
by ``decode(U)`` with a forward hook, layer ``b`` read by another), one target concept per
call, over the images of the batch. ICAT: :func:`ierf.graph.icat` on the isolated
sub-network, all targets of an image per vmapped pass, only the (image, target) pairs whose
target is present. Concepts are PFVs drawn from the images (data-anchored, as k-means
centroids are), ``K = 8·C`` by default, and coefficients use ``encoding="nearest"`` (one
concept per position), so no fitting is timed; the naive route is timed on a few targets and
extrapolated (it is linear in the number of targets and of images).

Timing is the CPU time of this process (``time.process_time``) with ``--threads`` threads:
on a shared machine wall-clock times (and multi-threaded CPU times, spent spinning in
OpenMP barriers) swing by 10×, one thread's CPU time by ~20 %. Only ratios are meaningful.

    python benchmarks/bench_graph.py [--size 128] [--images 4] [--steps 16] [--quick]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from itertools import pairwise
from typing import Any

import torch
from captum.attr import IntegratedGradients
from torch import nn

import ierf
from ierf.concepts import BisectingSphericalKMeans
from ierf.concepts.basis import ConceptBasis
from ierf.data.images import BUNDLED_PHOTOS
from ierf.graph import alignment_score, icat
from ierf.models import Subnetwork

PAPER_CHAIN = ["layer1.2", "layer2.3", "layer3.0", "layer3.2", "layer3.5", "layer4.2"]
"""The ResNet50 layers of IERF Fig. 9 / Fig. 11 (with the classifier: 6 layer pairs)."""


def cpu(fn: Callable[[], Any]) -> tuple[Any, float]:
    """``fn()`` and the CPU seconds it took."""
    t0 = time.process_time()
    out = fn()
    return out, time.process_time() - t0


def anchored_basis(model: ierf.Model, pfvs: torch.Tensor, layer: str, k: int) -> ConceptBasis:
    """A k-means basis whose ``k`` concepts are PFVs ``(M, C)`` drawn at random (centred)."""
    rows = torch.randint(len(pfvs), (k,), generator=torch.Generator().manual_seed(0))
    mu = pfvs.mean(0)
    km = BisectingSphericalKMeans(k, encoding="nearest", center=mu)
    km.load_state_tensors({"dictionary": (pfvs[rows] - mu).T.contiguous(), "center": mu})
    return ConceptBasis.bind(km, model, layer)


class Pair:
    """Layer pair ``a → b`` on images ``x`` with anchored bases of ``mult · C`` concepts."""

    def __init__(self, model: ierf.Model, x: torch.Tensor, a: str, b: str, mult: int = 8,
                 k_b: int | None = None) -> None:
        with torch.no_grad():
            pfvs = model.pfvs(x, [a] if b == "output" else [a, b])
        self.model, self.x, self.a, self.b = model, x, a, b
        self.basis_a = anchored_basis(model, pfvs[a].vectors.flatten(0, 1), a,
                                      mult * pfvs[a].vectors.shape[-1])
        self.basis_b = None if b == "output" else anchored_basis(
            model, pfvs[b].vectors.flatten(0, 1), b, k_b or mult * pfvs[b].vectors.shape[-1])
        self.sub = Subnetwork(model, a, b, example=x[:1])
        self.grid = pfvs[a].grid
        with torch.no_grad():
            self.X_a = self.sub.pfvs_a(x)
            self.U_a = self.basis_a.encode(self.X_a.vectors)
            self.U_b = None if self.basis_b is None else self.basis_b.encode(self.sub(self.X_a))
        self.active = (torch.ones(len(x), 1, dtype=torch.bool) if self.U_b is None
                       else (self.U_b != 0).any(1))                            # (B, T)

    def icat(self, steps: int, targets: Sequence[int] | None = None,
             images: slice = slice(None), **kw: Any) -> torch.Tensor:
        U_b = None if self.U_b is None else self.U_b[images]
        return icat(self.sub, self.basis_a, self.basis_b, self.X_a.vectors[images],
                    targets=targets, n_steps=steps, U_a=self.U_a[images], U_b=U_b, **kw)

    def naive(self, t: int, steps: int, images: torch.Tensor) -> torch.Tensor:
        """Captum IG of target ``t`` through the full model, on ``images``."""
        ig = IntegratedGradients(FullModelS(self, t, images))
        U = self.U_a[images]
        return ig.attribute(U, baselines=torch.zeros_like(U), n_steps=steps,
                            method="gausslegendre").sum(1)


class FullModelS(nn.Module):
    """``U^a → S_t`` (Eq. 13, or logit ``t``) through the whole network, hooked at a and b."""

    def __init__(self, pair: Pair, t: int, images: torch.Tensor) -> None:
        super().__init__()
        self.p, self.t, self.images = pair, t, images

    def forward(self, U: torch.Tensor) -> torch.Tensor:
        p, reps = self.p, len(U) // len(self.images)          # Captum stacks the α-steps
        fmap = p.basis_a.decode(U).transpose(1, 2).reshape(len(U), -1, *p.grid)
        seen: list[torch.Tensor] = []
        hooks = [p.model.module(p.a).register_forward_hook(lambda *_: fmap)]
        if p.b != "output":
            hooks.append(p.model.module(p.b).register_forward_hook(
                lambda _m, _i, o: seen.append(o)))
        try:
            logits = p.model.net(p.x[self.images].repeat(reps, 1, 1, 1))
        finally:
            for h in hooks:
                h.remove()
        if p.b == "output":
            return logits[:, self.t]
        X_b = seen[0].flatten(2).transpose(1, 2)
        offset = p.basis_b.decode(torch.zeros(1, p.basis_b.n_concepts))[0]
        return alignment_score(X_b, p.U_b[self.images].repeat(reps, 1, 1),
                               p.basis_b.dictionary, [self.t], offset)[:, 0]


def per_pair_cost(pair: Pair, steps: int, n_targets: int) -> tuple[float, float, int]:
    """CPU seconds per (image, target) of ICAT and of the naive route on image 0, measured
    on its first ``n_targets`` active targets, and its number of active targets. ICAT's
    fixed cost per call (checking the bases: two weights fingerprints, one forward of
    ``M_ab``), paid once per layer pair and batch of images, is left out."""
    active = pair.active[0].nonzero().flatten()
    targets = active[:n_targets].tolist()
    if pair.U_b is None:
        targets = [int(pair.model(pair.x[:1]).argmax())]
    _, fixed = cpu(lambda: pair.icat(steps, targets, slice(0, 1), method="coefficient"))
    _, t_icat = cpu(lambda: pair.icat(steps, targets, slice(0, 1)))
    _, t_naive = cpu(lambda: [pair.naive(t, steps, torch.tensor([0])) for t in targets])
    return max(t_icat - fixed, 1e-3) / len(targets), t_naive / len(targets), len(active)


def dataset_row(name: str, pair: Pair, steps: int, naive_targets: int) -> dict[str, Any]:
    """ICAT on all images vs the naive route, extrapolated from ``naive_targets`` targets."""
    B = len(pair.x)
    union = int(pair.active.any(0).sum())
    pairs = int(pair.active.sum())
    edges, t_icat = cpu(lambda: pair.icat(steps))
    some = pair.active.any(0).nonzero().flatten()[:naive_targets].tolist()
    everywhere = torch.arange(B)
    naive, t_all = cpu(lambda: [pair.naive(t, steps, everywhere) for t in some])
    same = torch.stack(naive, -1)
    err = ((same - edges[..., some]).abs().max() / same.abs().max()).item()
    print(f"{name}: naive and ICAT edges agree to {err:.1e} (max abs difference / max |edge|)")
    naive_all = t_all / len(some) * union                 # literal: every image per target
    naive_active = t_all / len(some) / B * pairs          # given ICAT's skipping as well
    K_a = pair.basis_a.n_concepts
    return {"name": name, "B": B, "K": f"{K_a}→{pair.basis_b.n_concepts}", "union": union,
            "pairs": pairs, "icat_s": t_icat, "edges_s": K_a * union / t_icat,
            "images_s": B / t_icat, "naive_s": naive_all, "ratio": naive_all / t_icat,
            "ratio_active": naive_active / t_icat}


HEADER = ("| pair | images | K_a→K_b | active targets (union / image·target pairs) | ICAT CPU "
          "s | edges/s | images/s | naive CPU s | ratio | ratio vs naive on active images "
          "only |\n|---|---|---|---|---|---|---|---|---|---|")


def print_row(r: dict[str, Any]) -> None:
    print(f"| {r['name']} | {r['B']} | {r['K']} | {r['union']} / {r['pairs']} | "
          f"{r['icat_s']:.1f} | {r['edges_s']:,.0f} | {r['images_s']:.3f} | "
          f"{r['naive_s']:.0f} | **{r['ratio']:.1f}×** | {r['ratio_active']:.1f}× |",
          flush=True)


def scaling(r50: ierf.Model, x: torch.Tensor, steps: int, quick: bool) -> None:
    print("\nScaling (ResNet50 random weights, CPU s of ICAT):")
    print("\n| varied | setting | ICAT CPU s | per active (image, target) |")
    print("|---|---|---|---|")
    for mult in ((1, 8) if quick else (1, 2, 4, 8)):
        pair = Pair(r50, x[:1], "layer3.5", "layer4.2", mult)
        _, t = cpu(lambda pair=pair: pair.icat(steps))
        print(f"| K | K_a = {mult}·C = {pair.basis_a.n_concepts}, K_b = "
              f"{pair.basis_b.n_concepts} | {t:.2f} | {t / int(pair.active.sum()):.3f} |")
    for b in ("layer4.0", "layer4.1", "layer4.2"):
        pair = Pair(r50, x[:1], "layer3.5", b)
        _, t = cpu(lambda pair=pair: pair.icat(steps))
        print(f"| layers | layer3.5 → {b} | {t:.2f} | {t / int(pair.active.sum()):.3f} |")
    pair = Pair(r50, x, "layer3.5", "layer4.2")
    for n in ((1, len(x)) if quick else sorted({1, 2, len(x)})):
        _, t = cpu(lambda n=n: pair.icat(steps, images=slice(0, n)))
        print(f"| images | {n} | {t:.2f} | {t / int(pair.active[:n].sum()):.3f} |")


def paper_graph(size: int, steps: int, n_targets: int, n_images: int = 100,
                n_classes: int = 1) -> None:
    """The Fig. 9 graph (6 layer pairs + node importance of every layer, ``n_images``) from
    per-(image, target) costs measured on one image at ``size`` px."""
    torch.manual_seed(0)
    r50 = ierf.load_model("resnet50", weights=None)
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    print(f"\nPaper-sized graph: ResNet50, {size}×{size}, K = 8·C, {steps} α-steps, "
          f"{n_images} images, {n_classes} class(es); per (image, target) costs measured on "
          f"{n_targets} targets of one image, active targets per image measured (nearest "
          "encoding: one concept per position)")
    print("\n| pair | active targets / image | ICAT s per (image, target) | naive s per "
          "(image, target) | ratio | ICAT s for the graph | naive s for the graph |")
    print("|---|---|---|---|---|---|---|")
    total = naive_total = 0.0
    chain = [*PAPER_CHAIN, "output"]
    steps_list = [*pairwise(chain), *((a, "output") for a in PAPER_CHAIN[:-1])]
    for a, b in steps_list:
        pair = Pair(r50, x, a, b)
        t_icat, t_naive, active = per_pair_cost(pair, steps, n_targets)
        per_image = n_classes if b == "output" else active
        graph, naive = t_icat * per_image * n_images, t_naive * per_image * n_images
        total, naive_total = total + graph, naive_total + naive
        print(f"| {a} → {b} | {per_image} | {t_icat:.2f} | {t_naive:.2f} | "
              f"{t_naive / t_icat:.1f}× | {graph:,.0f} | {naive:,.0f} |")
    print(f"| **whole graph** | | | | {naive_total / total:.1f}× | **{total:,.0f} "
          f"(≈ {total / 3600:.1f} CPU h)** | {naive_total:,.0f} (≈ {naive_total / 3600:.1f} "
          "CPU h) |")


def efficientnet_row(steps: int, n_images: int, naive_targets: int) -> dict[str, Any]:
    model = ierf.load_model("efficientnet_lite0")
    x = torch.cat([model.preprocess(ierf.load_image(BUNDLED_PHOTOS[i % len(BUNDLED_PHOTOS)]))
                   for i in range(n_images)])
    pair = Pair(model, x, "blocks.4", "blocks.5")
    return dataset_row("EfficientNet-Lite0 (real weights, photos) blocks.4 → blocks.5",
                       pair, steps, naive_targets)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--size", type=int, default=128, help="ResNet50 image size")
    p.add_argument("--images", type=int, default=4)
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--naive-targets", type=int, default=2)
    p.add_argument("--paper-size", type=int, default=224)
    p.add_argument("--quick", action="store_true", help="fewer scaling points")
    p.add_argument("--skip", nargs="*", default=[],
                   choices=["resnet50", "efficientnet", "scaling", "paper"])
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"CPU seconds, {args.threads} thread(s), {args.steps} Gauss-Legendre α-steps\n")
    torch.manual_seed(0)
    r50 = ierf.load_model("resnet50", weights=None)
    x = torch.randn(args.images, 3, args.size, args.size,
                    generator=torch.Generator().manual_seed(0))
    rows = []
    if "resnet50" not in args.skip:
        rows.append(dataset_row(f"ResNet50 (random weights, {args.size}×{args.size}) "
                                "layer3.5 → layer4.2", Pair(r50, x, "layer3.5", "layer4.2"),
                                args.steps, args.naive_targets))
    if "efficientnet" not in args.skip:
        rows.append(efficientnet_row(args.steps, args.images, args.naive_targets))
    if rows:
        print(HEADER)
        for r in rows:
            print_row(r)
    if "scaling" not in args.skip:
        scaling(r50, x, args.steps, args.quick)
    if "paper" not in args.skip:
        paper_graph(args.paper_size, args.steps, args.naive_targets)


if __name__ == "__main__":
    main()

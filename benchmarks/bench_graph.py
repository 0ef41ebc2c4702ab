"""ICAT edges per second (IERF Eqs. 13–16) against the naive route, in one process.

Naive route: Captum ``IntegratedGradients`` on the *full* model (layer ``a``'s output
replaced by ``decode(U)`` via a forward hook, layer ``b`` read by another), one target
concept per call. ICAT: :func:`ierf.graph.icat` on the sub-network, all active targets per
vmapped backward. Concepts are PFVs drawn from the image (data-anchored, as k-means
centroids are) and coefficients use ``encoding="nearest"`` (one concept per position), so no
fitting is timed; the naive route is timed on ``--naive-targets`` targets and its rate
extrapolated (it is linear in the number of targets).

    python benchmarks/bench_graph.py [--device cuda] [--ks 256 1024] [--steps 16]
"""

from __future__ import annotations

import argparse
import time

import torch
from captum.attr import IntegratedGradients
from torch import nn

import ierf
from ierf.concepts import BisectingSphericalKMeans
from ierf.concepts.basis import ConceptBasis
from ierf.graph import alignment_score, icat
from ierf.models import Subnetwork


def anchored_basis(model: ierf.Model, x: torch.Tensor, layer: str, k: int) -> ConceptBasis:
    X = model.pfvs(x, layer)[layer].vectors.flatten(0, 1)
    rows = torch.randint(len(X), (k,), generator=torch.Generator().manual_seed(0))
    km = BisectingSphericalKMeans(k, encoding="nearest", center=X.mean(0))
    km.load_state_tensors({"dictionary": (X[rows.to(X.device)] - X.mean(0)).T.contiguous(),
                           "center": X.mean(0)})
    return ConceptBasis.bind(km, model, layer)


class FullModelS(nn.Module):
    """U^a → S_ab for all targets through the whole network (hooks at a and b)."""

    def __init__(self, model: ierf.Model, x: torch.Tensor, a: ConceptBasis,
                 b: ConceptBasis, U_b: torch.Tensor, grid: tuple[int, int]) -> None:
        super().__init__()
        self.model, self.x, self.a, self.b, self.U_b, self.grid = model, x, a, b, U_b, grid

    def forward(self, U: torch.Tensor) -> torch.Tensor:
        X_hat = self.a.decode(U)
        fmap = X_hat.transpose(1, 2).reshape(len(U), -1, *self.grid)
        seen: list[torch.Tensor] = []
        hooks = [self.model.module(self.a.layer).register_forward_hook(lambda *_: fmap),
                 self.model.module(self.b.layer).register_forward_hook(
                     lambda _m, _i, o: seen.append(o))]
        try:
            self.model.net(self.x.expand(len(U), -1, -1, -1))
        finally:
            for h in hooks:
                h.remove()
        X_b = seen[0].flatten(2).transpose(1, 2)
        U_b = self.U_b.repeat(len(U) // len(self.U_b), 1, 1)
        offset = self.b.decode(torch.zeros(1, self.b.n_concepts, device=U.device))[0]
        return alignment_score(X_b, U_b, self.b.dictionary, offset=offset)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bench(name: str, model: ierf.Model, a: str, b: str, size: int, k: int, steps: int,
          naive_targets: int, device: str) -> None:
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)
    basis_a, basis_b = anchored_basis(model, x, a, k), anchored_basis(model, x, b, 2 * k)
    sub = Subnetwork(model, a, b, example=x)
    with torch.no_grad():
        X_a = sub.pfvs_a(x)
        U_a, U_b = basis_a.encode(X_a.vectors), basis_b.encode(sub(X_a))
    active = (U_b != 0).flatten(0, 1).any(0).nonzero().flatten()
    sync(device)
    t0 = time.perf_counter()
    icat(sub, basis_a, basis_b, X_a, n_steps=steps, U_a=U_a, U_b=U_b, targets=active,
         internal_batch_size=steps)
    sync(device)
    t_icat = time.perf_counter() - t0
    grid = X_a.grid
    f = FullModelS(model, x, basis_a, basis_b, U_b, grid)
    ig = IntegratedGradients(f)
    t0 = time.perf_counter()
    for t in active[:naive_targets].tolist():
        ig.attribute(U_a, baselines=torch.zeros_like(U_a), target=t, n_steps=steps,
                     method="gausslegendre").sum(1)
    sync(device)
    t_naive = (time.perf_counter() - t0) / min(naive_targets, len(active))
    edges = k * len(active)
    print(f"{name} {a}→{b} K_a={k} K_b={2 * k} active targets={len(active)} steps={steps}: "
          f"ICAT {edges / t_icat:,.0f} edges/s ({t_icat:.2f} s), naive "
          f"{k / t_naive:,.0f} edges/s ({t_naive:.2f} s/target, measured on "
          f"{min(naive_targets, len(active))}); ratio {t_naive * len(active) / t_icat:.1f}×")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--ks", type=int, nargs="+", default=[256, 1024])
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--naive-targets", type=int, default=3)
    p.add_argument("--skip-resnet50", action="store_true")
    args = p.parse_args()
    toy = ierf.load_model("toy-resnet")
    toy.net.to(args.device)
    bench("toy-resnet", toy, "layer2", "layer3", 64, 64, args.steps, args.naive_targets,
          args.device)
    if args.skip_resnet50:
        return
    torch.manual_seed(0)
    r50 = ierf.load_model("resnet50", weights=None)
    r50.net.to(args.device)
    for k in args.ks:
        bench("resnet50(random)", r50, "layer3.5", "layer4.2", 224, k, args.steps,
              args.naive_targets, args.device)
    print("K = 8·C (8192 → 16384) is not measured here: ICAT's cost grows with the number of "
          "active targets (≤ N_b per image with one concept per position), not with K_b.")


if __name__ == "__main__":
    main()

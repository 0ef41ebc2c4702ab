"""Concept-atlas solvers against scikit-learn, on one CPU thread; prints Markdown tables.

    python benchmarks/bench_atlas.py [--n 500] [--c 64] [--k 512] [--alpha 0.002]
                                     [--clusters 64] [--tol 1e-4] [--device cpu]

1. Lasso (IERF Eq. 12): :func:`ierf.concepts.decompose` (working-set homotopy, all rows at once) vs
   ``sklearn.linear_model.Lasso(alpha, fit_intercept=False, tol)`` fitted row by row, on
   PFVs that are sparse combinations of a random unit-norm dictionary plus noise. Reports
   time, ratio to scikit-learn, relative objective gap (ours − sklearn) / sklearn (mean and
   worst row; negative = ours lower) and ℓ0 ratio.
2. Bisecting k-means (GIG App. B): ours (spherical) vs ``sklearn.cluster.BisectingKMeans
   (bisecting_strategy="largest_cluster")`` on the unit-normalised PFVs of the same data, at
   equal restarts; reports time, spherical inertia ``Σ 1 − cos`` (our objective) and
   Euclidean inertia on the unit sphere (scikit-learn's objective).
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.cluster import BisectingKMeans
from sklearn.linear_model import Lasso

from ierf.concepts import decompose, l0_ratio, lasso_objective, sparse_pfvs
from ierf.concepts.extractors.kmeans import bisecting_spherical_kmeans, spherical_inertia


def timed(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    """Median seconds over ``repeats`` calls, and the last result."""
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def euclidean_inertia(Z: torch.Tensor, labels: torch.Tensor) -> float:
    """``Σ_i ‖z_i − mean_{k(i)}‖²`` (what scikit-learn's k-means minimises)."""
    Z = Z.double()
    k = int(labels.max()) + 1
    sums = Z.new_zeros(k, Z.shape[1]).index_add_(0, labels, Z)
    counts = torch.bincount(labels, minlength=k).to(Z)
    return float(Z.square().sum() - (sums.square().sum(1) / counts).sum())


def bench_lasso(X: torch.Tensor, V: torch.Tensor, alpha: float, tol: float,
                device: str) -> list[str]:
    Xd, Vd = X.double(), V.double()
    sk_time, U_sk = timed(lambda: torch.from_numpy(np.stack([
        Lasso(alpha=alpha, fit_intercept=False, tol=tol, max_iter=10_000)
        .fit(Vd.numpy(), x).coef_ for x in Xd.numpy()])), 1)
    f_sk = lasso_objective(Xd, Vd, U_sk, alpha)
    rows = [(f"| sklearn Lasso, row loop (float64) | {sk_time:.3f} | 1.00 | 0 | 0 | "
             f"{l0_ratio(U_sk).mean():.4f} |")]
    for dtype in (torch.float64, torch.float32):
        Xt, Vt = X.to(device, dtype), V.to(device, dtype)

        def run(Xt: torch.Tensor = Xt, Vt: torch.Tensor = Vt) -> torch.Tensor:
            U = decompose(Xt, Vt, alpha, tol=tol, max_iter=10_000)
            if device == "cuda":
                torch.cuda.synchronize()
            return U
        t, U = timed(run, 3)
        gap = (lasso_objective(Xd, Vd, U.cpu().double(), alpha) - f_sk) / f_sk
        rows.append(f"| ierf decompose, working-set homotopy ({str(dtype)[6:]}, {device}) | {t:.3f} | "
                    f"{t / sk_time:.3f} | {gap.mean():+.1e} | {gap.max():+.1e} | "
                    f"{l0_ratio(U).mean():.4f} |")
    return rows


def bench_kmeans(X: torch.Tensor, clusters: int) -> list[str]:
    Z = F.normalize(X, dim=1)
    rows = []
    for n_init in (1, 3):
        t_ours, ours = timed(
            lambda n_init=n_init: bisecting_spherical_kmeans(Z, clusters, n_init=n_init), 3)
        t_sk, sk = timed(lambda n_init=n_init: BisectingKMeans(
            clusters, bisecting_strategy="largest_cluster", n_init=n_init,
            random_state=0).fit(Z.numpy()).labels_, 3)
        sk = torch.from_numpy(sk).long()
        for name, t, labels in (("ierf bisecting spherical", t_ours, ours),
                                ("sklearn BisectingKMeans", t_sk, sk)):
            rows.append(f"| {name} | {n_init} | {t:.3f} | {t / t_sk:.2f} | "
                        f"{spherical_inertia(Z, labels):.2f} | "
                        f"{euclidean_inertia(Z, labels):.2f} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--c", type=int, default=64)
    parser.add_argument("--k", type=int, default=512)
    parser.add_argument("--active", type=int, default=8, help="true atoms per PFV")
    parser.add_argument("--alpha", type=float, default=0.002)
    parser.add_argument("--tol", type=float, default=1e-4)
    parser.add_argument("--clusters", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")               # sklearn / FISTA convergence warnings

    X, V = sparse_pfvs(args.n, args.c, args.k, args.active, noise=0.05, seed=0)
    print(f"## Lasso: N={args.n}, C={args.c}, K={args.k}, alpha={args.alpha}, tol={args.tol}, "
          f"{torch.get_num_threads()} thread\n")
    print("| solver | time (s) | time / sklearn | objective gap, mean | worst row | ℓ0 ratio |")
    print("|---|---|---|---|---|---|")
    print("\n".join(bench_lasso(X, V, args.alpha, args.tol, args.device)))
    print(f"\n## Bisecting k-means: N={args.n}, C={args.c}, clusters={args.clusters}, "
          "unit-normalised PFVs\n")
    print("| method | restarts | time (s) | time / sklearn | spherical inertia Σ(1−cos) | "
          "Euclidean inertia |")
    print("|---|---|---|---|---|---|")
    print("\n".join(bench_kmeans(X, args.clusters)))


if __name__ == "__main__":
    main()

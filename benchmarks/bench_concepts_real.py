"""Concept stage on real PFVs (issue 11): Lasso and bisecting k-means against scikit-learn,
celer and faiss, side by side in one process; prints Markdown tables.

    python benchmarks/bench_concepts_real.py [--crops 300] [--k 1536] [--alpha 5]
        [--threads 1] [--cache pfvs.pt] [--fista] [--paper]

Data: EfficientNet-Lite0 ``blocks.5`` PFVs (C = 192) of ``--crops`` augmented bundled photos
(:mod:`real_pfvs`), a bisecting spherical k-means dictionary with ``--k`` concepts, the PFVs of
two held-out crops (98 rows) decomposed at ``--alpha`` (≈ 5–6 non-zeros per row at α = 5).
Lasso rows: median time of ``--repeats`` interleaved runs (ours warmed up), ratio, relative
objective gap (ours − sklearn) / sklearn (mean, worst row).
``--paper`` adds a random unit-norm dictionary at C = 1 024, K = 8 192 with 196 rows.
celer and faiss are benchmark-only extras (``pip install celer faiss-cpu``); missing ones are
skipped.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from real_pfvs import augmented_pfvs
from sklearn.cluster import BisectingKMeans
from sklearn.linear_model import Lasso

from ierf.concepts import decompose, lasso_objective
from ierf.concepts.extractors.kmeans import (
    bisecting_spherical_kmeans,
    cluster_means,
    spherical_inertia,
)


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def lasso_rows(X: torch.Tensor, V: torch.Tensor, alpha: float, fista: bool,
               repeats: int) -> list[str]:
    """Table rows: every solver on ``X`` over ``V`` at ``alpha``, tol = 1e-4; the median of
    ``repeats`` interleaved runs, ours after a warm-up run (FISTA: one run)."""
    X, V = X.double(), V.double()
    Xn, Vn = X.numpy(), V.numpy()
    solvers: dict[str, Callable[[], torch.Tensor]] = {
        "sklearn Lasso, row loop (float64)": lambda: torch.from_numpy(np.stack([
            Lasso(alpha=alpha, fit_intercept=False, tol=1e-4, max_iter=10_000).fit(Vn, x).coef_
            for x in Xn]))}
    if importlib.util.find_spec("celer"):
        import celer

        solvers["celer Lasso, row loop (float64)"] = lambda: torch.from_numpy(np.stack([
            celer.Lasso(alpha=alpha, fit_intercept=False, tol=1e-4).fit(Vn, x).coef_
            for x in Xn]))
    for dtype in (torch.float64, torch.float32):
        name = str(dtype)[6:]
        solvers[f"ierf working-set homotopy ({name})"] = (
            lambda d=dtype: decompose(X.to(d), V.to(d), alpha, solver="homotopy"))
        if fista:
            solvers[f"ierf FISTA ({name})"] = (
                lambda d=dtype: decompose(X.to(d), V.to(d), alpha, solver="fista",
                                          max_iter=100_000))
    for name, fn in solvers.items():          # warm-up (first-call set-up of torch.linalg)
        if name.startswith("ierf") and "FISTA" not in name:
            fn()
    runs: dict[str, list[tuple[float, torch.Tensor]]] = {name: [] for name in solvers}
    for r in range(repeats):
        for name, fn in solvers.items():
            if r == 0 or "FISTA" not in name:
                runs[name].append(timed(fn))
    results = {name: (statistics.median(t for t, _ in rs), rs[-1][1]) for name, rs in runs.items()}
    t_sk, U_sk = results["sklearn Lasso, row loop (float64)"]
    f_sk = lasso_objective(X, V, U_sk, alpha)
    rows = []
    for name, (t, U) in results.items():
        gap = (lasso_objective(X, V, U.double(), alpha) - f_sk) / f_sk
        t_ce = results.get("celer Lasso, row loop (float64)", (float("nan"),))[0]
        rows.append(f"| {name} | {t:.3f} | {t_sk / t:.1f} | {t_ce / t:.1f} | "
                    f"{gap.mean():+.1e} | {gap.max():+.1e} | {(U != 0).sum(1).double().mean():.1f} |")
    return rows


def kmeans_rows(X: torch.Tensor, k: int, n_init: int) -> list[str]:
    Z = F.normalize(X, dim=1)
    t_ours, ours = timed(lambda: bisecting_spherical_kmeans(Z, k, n_init=n_init))
    t_sk, sk = timed(lambda: torch.from_numpy(BisectingKMeans(
        k, bisecting_strategy="largest_cluster", n_init=n_init, random_state=0)
        .fit(Z.numpy()).labels_).long())
    rows = [("ierf bisecting spherical", t_ours, ours), ("sklearn BisectingKMeans", t_sk, sk)]
    if importlib.util.find_spec("faiss"):
        import faiss

        def flat() -> torch.Tensor:
            km = faiss.Kmeans(Z.shape[1], k, niter=20, spherical=True, seed=0)
            km.train(Z.numpy())
            return torch.from_numpy(km.index.search(Z.numpy(), 1)[1][:, 0]).long()
        t_f, f = timed(flat)
        rows.append(("faiss flat spherical k-means, 20 it. (not bisecting)", t_f, f))
    return [f"| {name} | {n_init} | {t:.2f} | {t_sk / t:.2f} | {spherical_inertia(Z, lab):.2f} |"
            for name, t, lab in rows]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--crops", type=int, default=300)
    p.add_argument("--k", type=int, default=1536)
    p.add_argument("--alpha", type=float, default=5.0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--n-init", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3, help="Lasso runs per solver (median)")
    p.add_argument("--cache", type=Path, help="load/save the PFVs here")
    p.add_argument("--fista", action="store_true", help="also time FISTA (slow: ~30 s)")
    p.add_argument("--paper", action="store_true", help="C = 1 024, K = 8 192 Lasso row")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")                 # sklearn convergence warnings
    if args.cache and args.cache.exists():
        X, held_out = torch.load(args.cache, weights_only=True)
    else:
        X, held_out = augmented_pfvs(args.crops, seed=0), augmented_pfvs(2, seed=1)
        if args.cache:
            torch.save((X, held_out), args.cache)
    print(f"EfficientNet-Lite0 blocks.5 PFVs: N = {len(X)}, C = {X.shape[1]}, K = {args.k}, "
          f"{torch.get_num_threads()} thread(s), one process\n")
    print("| method | restarts | time (s) | sklearn / this | spherical inertia Σ(1−cos) |")
    print("|---|---|---|---|---|")
    rows = kmeans_rows(X, args.k, args.n_init)
    print("\n".join(rows), flush=True)
    Z = F.normalize(X, dim=1)
    V = cluster_means(X, bisecting_spherical_kmeans(Z, args.k), args.k)
    header = ("| solver | time (s) | sklearn / this | celer / this | objective gap, mean | "
              "worst row | non-zeros / row |\n|---|---|---|---|---|---|---|")
    print(f"\n## Lasso, {len(held_out)} held-out PFVs, k-means dictionary, alpha = {args.alpha}, "
          f"tol = 1e-4\n\n{header}")
    print("\n".join(lasso_rows(held_out, V, args.alpha, args.fista, args.repeats)), flush=True)
    g = torch.Generator().manual_seed(0)
    V_rand = F.normalize(torch.randn(192, args.k, generator=g, dtype=torch.float64), dim=0)
    alpha_rand = 0.2 * float((held_out.double() @ V_rand).abs().amax(1).median()) / 192
    print(f"\n## Lasso, same PFVs, random unit-norm dictionary, alpha = {alpha_rand:.3g}\n\n"
          f"{header}")
    print("\n".join(lasso_rows(held_out, V_rand, alpha_rand, args.fista, args.repeats)), flush=True)
    if args.paper:
        V_p = F.normalize(torch.randn(1024, 8192, generator=g, dtype=torch.float64), dim=0)
        U_true = torch.zeros(196, 8192, dtype=torch.float64)
        U_true.scatter_(1, torch.randint(8192, (196, 5), generator=g),
                        torch.rand(196, 5, generator=g, dtype=torch.float64) + 0.5)
        X_p = U_true @ V_p.T + 0.05 * torch.randn(196, 1024, generator=g, dtype=torch.float64)
        alpha_p = 0.3 * float((X_p @ V_p).abs().amax(1).median()) / 1024
        print(f"\n## Paper scale: 196 PFVs, C = 1 024, K = 8 192, random unit-norm dictionary, "
              f"5-sparse PFVs + noise, alpha = {alpha_p:.3g}\n\n{header}")
        print("\n".join(lasso_rows(X_p, V_p, alpha_p, args.fista, 1)))


if __name__ == "__main__":
    main()

"""The concept stage on an accelerator (issue 11's CUDA items), in one short run; prints
Markdown tables.

    python benchmarks/bench_device.py [--device cuda] [--quick] [--threads 16]

1. **Lasso, linear in rows**: :func:`ierf.concepts.working_set.lasso_working_set` (the
   all-atom homotopy ``decompose`` uses) on ``N = 196 · {1, 4, 16, 64}`` rows at the papers'
   scale (C = 1 024, K = 8 192) over two dictionaries, a coherent one (bisecting spherical
   k-means centroids of synthetic PFVs, :func:`bench_kmeans.paper_pfvs`) and a random
   unit-norm one, alpha giving ~5 non-zeros per row. Columns: seconds, ms per row, and
   ``(t / N) / (t₁₉₆ / 196)`` (1.0 = exactly linear; below 1 = the device was not yet full),
   plus the same 196 rows on this machine's CPU in the same process for the speed-up.
2. **Bisecting spherical k-means at the papers' size** on the device (N = 100 000, C = 1 024,
   K = 16 384, 3 restarts) and on real EfficientNet-Lite0 ``blocks.5`` PFVs at K = 8·C
   (:func:`real_pfvs.augmented_pfvs`, 300 crops: the recipe of ``bench_kmeans.py``), with the
   spherical inertia.

``--quick`` shrinks every size ~16× so the script can be checked on a CPU in a minute.
The atlas build on the device is
``bench_atlas_build.py --device cuda --memory``; ``benchmarks/device_checks.sh`` runs both.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from bench_kmeans import paper_pfvs
from bench_lasso import alpha_for_nnz
from real_pfvs import augmented_pfvs

from ierf.concepts.extractors.kmeans import (
    bisecting_spherical_kmeans,
    cluster_means,
    spherical_inertia,
)
from ierf.concepts.working_set import lasso_working_set

NNZ = 5.0
TOL = 1e-4


def timed(fn: Callable[[], object], device: torch.device) -> tuple[float, object]:
    """Seconds of ``fn()`` on ``device`` (synchronised), and its result."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, out


def kmeans_dictionary(Z: torch.Tensor, k: int) -> torch.Tensor:
    """(C, K) unit mean directions of a bisecting spherical k-means of the unit rows ``Z``."""
    return F.normalize(cluster_means(Z, bisecting_spherical_kmeans(Z, k, n_init=1), k), dim=0)


def lasso_rows(name: str, V: torch.Tensor, rows: torch.Tensor, sizes: list[int],
               device: torch.device) -> None:
    """Table of the Lasso's time against the number of rows on ``device``."""
    X, V = rows.to(device), V.to(device)
    alpha = alpha_for_nnz(X[:sizes[0]], V, NNZ)
    lasso_working_set(X[:sizes[0]], V, alpha, tol=TOL)                     # warm-up
    t_cpu, _ = timed(lambda: lasso_working_set(X[:sizes[0]].cpu(), V.cpu(), alpha, tol=TOL),
                     torch.device("cpu"))
    print(f"\n## Lasso on {device.type}, {name}: C = {V.shape[0]}, K = {V.shape[1]}, "
          f"alpha = {alpha:.3g}, tol = {TOL}\n\n"
          f"| rows | time (s) | ms / row | per-row time ÷ {sizes[0]} rows' | non-zeros / row | "
          f"max gap / tol·‖x‖²/C |\n|---|---|---|---|---|---|")
    first = None
    for n in sizes:
        x = X[:n]
        t, (U, gap) = timed(lambda x=x: lasso_working_set(x, V, alpha, tol=TOL), device)
        first = first or t
        worst = float((gap / (TOL * x.square().sum(1) / x.shape[1])).max())
        print(f"| {n} | {t:.3f} | {1e3 * t / n:.2f} | {t / n / (first / sizes[0]):.2f} | "
              f"{(U != 0).sum(1).double().mean():.1f} | {worst:.2g} |", flush=True)
    print(f"\nThe same {sizes[0]} rows on the CPU ({torch.get_num_threads()} threads): "
          f"{t_cpu:.3f} s, {t_cpu / first:.1f}× the time on {device.type}")


def kmeans_row(name: str, Z: torch.Tensor, k: int, device: torch.device) -> str:
    Z = Z.to(device)
    t, labels = timed(lambda: bisecting_spherical_kmeans(Z, k, n_init=3), device)
    return (f"| {name} | {Z.shape[0]} | {Z.shape[1]} | {k} | {t:.1f} | "
            f"{spherical_inertia(Z, labels):.1f} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="~16× smaller sizes (a CPU check)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(),
                   help="CPU threads (the CPU comparison row)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    scale = 16 if args.quick else 1
    c, k_lasso, k_paper, n_paper = 1024 // scale, 8192 // scale, 16_384 // scale, 100_000 // scale
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"torch {torch.__version__}, device {device} ({name}), {args.threads} CPU threads"
          + (", --quick sizes" if args.quick else ""), flush=True)

    g = torch.Generator().manual_seed(0)
    train = F.normalize(paper_pfvs(8 * k_lasso, c, seed=1), dim=1)
    start = time.perf_counter()
    V_kmeans = kmeans_dictionary(train.to(device), k_lasso)
    print(f"coherent dictionary (bisecting k-means of {len(train)} PFVs to K = {k_lasso}): "
          f"{time.perf_counter() - start:.1f} s", flush=True)
    sizes = [196 // scale * m for m in (1, 4, 16, 64)]
    rows = paper_pfvs(sizes[-1], c, seed=2)
    lasso_rows("k-means centroids of synthetic PFVs", V_kmeans, rows, sizes, device)
    V_rand = F.normalize(torch.randn(c, k_lasso, generator=g), dim=0)
    lasso_rows("random unit-norm atoms", V_rand, rows, sizes, device)

    print("\n## Bisecting spherical k-means (3 restarts per split)\n\n"
          "| data | N | C | K | time (s) | spherical inertia Σ(1 − cos) |\n"
          "|---|---|---|---|---|---|")
    lite0 = F.normalize(augmented_pfvs(300 // scale), dim=1)
    print(kmeans_row("EfficientNet-Lite0 blocks.5, augmented photos", lite0,
                     8 * lite0.shape[1] // scale, device), flush=True)
    label = "synthetic PFVs (papers' size" + (" ÷ 16)" if args.quick else ")")
    print(kmeans_row(label, F.normalize(paper_pfvs(n_paper, c), dim=1), k_paper, device),
          flush=True)


if __name__ == "__main__":
    main()

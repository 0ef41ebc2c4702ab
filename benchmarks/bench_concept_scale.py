"""Paper-scale concept extraction: K = 16 384 concepts on N = 50 000 PFVs of C = 2 048 channels.

    python benchmarks/bench_concept_scale.py [--device cpu|cuda] [--n 50000] [--c 2048]
        [--k 16384] [--sae-steps 5] [--lasso-rows 1024] [--lasso-iters 5] [--kmeans]

Times what each extractor costs at that size on random unit PFVs (the cost does not depend
on what is learnt): TopK-SAE training steps (batch 256, k = 32) → seconds per epoch; FISTA
iterations of the Lasso (Eq. 12) on ``--lasso-rows`` rows → seconds per iteration for all N
rows; with ``--kmeans`` the full bisecting spherical k-means to K clusters. Peak memory: CUDA
allocator peak on a GPU, process peak RSS on the CPU.
"""

from __future__ import annotations

import argparse
import resource
import time

import torch
import torch.nn.functional as F

from ierf.concepts import decompose
from ierf.concepts.decompose import lipschitz_constant
from ierf.concepts.extractors import TopKSAE
from ierf.concepts.extractors.kmeans import bisecting_spherical_kmeans


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--n", type=int, default=50_000)
    p.add_argument("--c", type=int, default=2048)
    p.add_argument("--k", type=int, default=16_384)
    p.add_argument("--sae-steps", type=int, default=5)
    p.add_argument("--lasso-rows", type=int, default=1024)
    p.add_argument("--lasso-iters", type=int, default=5)
    p.add_argument("--kmeans", action="store_true")
    args = p.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    X = F.normalize(torch.randn(args.n, args.c, device=device), dim=1)
    print(f"N = {args.n}, C = {args.c}, K = {args.k}, {device}, "
          f"{torch.get_num_threads()} CPU threads\n")
    print("| stage | measured | extrapolated | peak MB |\n|---|---|---|---:|")

    sae = TopKSAE(args.c, args.k, k=32).to(device)
    batch = 256
    steps = args.sae_steps
    sync(device)
    start = time.perf_counter()
    sae.fit(X[:batch * steps], epochs=1, batch_size=batch, progress=False)
    sync(device)
    per_step = (time.perf_counter() - start) / steps
    print(f"| TopK SAE training (batch {batch}) | {per_step:.3f} s/step ({steps} steps) | "
          f"{per_step * args.n / batch:.0f} s/epoch | {peak_mb(device):.0f} |", flush=True)

    V = sae.get_dictionary().detach()
    rows = X[:args.lasso_rows]
    sync(device)
    start = time.perf_counter()
    lipschitz_constant(V)
    sync(device)
    lipschitz = time.perf_counter() - start
    print(f"| Lasso step size σ_max(V)² (once per dictionary) | {lipschitz:.1f} s | — | "
          f"{peak_mb(device):.0f} |", flush=True)
    start = time.perf_counter()
    decompose(rows, V, alpha=1e-3, max_iter=args.lasso_iters, tol=0.0, solver="fista")
    sync(device)
    per_iter = (time.perf_counter() - start - lipschitz) / args.lasso_iters
    print(f"| Lasso FISTA, {args.lasso_rows} rows | {per_iter:.3f} s/iteration | "
          f"{per_iter * args.n / args.lasso_rows:.1f} s/iteration for N rows | "
          f"{peak_mb(device):.0f} |", flush=True)

    if args.kmeans:
        sync(device)
        start = time.perf_counter()
        labels = bisecting_spherical_kmeans(X, args.k, n_init=1, max_iter=20)
        sync(device)
        print(f"| bisecting spherical k-means (1 restart) | {time.perf_counter() - start:.0f} s "
              f"to {int(labels.max()) + 1} clusters | — | {peak_mb(device):.0f} |", flush=True)


if __name__ == "__main__":
    main()

"""Bisecting spherical k-means (GIG App. B) at K = 8·C on real PFVs against scikit-learn's
``BisectingKMeans`` and faiss flat spherical k-means, in one process (issue 11, item 2);
prints Markdown tables.

    python benchmarks/bench_kmeans.py [--crops 300] [--toy-images 230] [--n-init 3]
        [--repeats 3] [--threads 1] [--cache pfvs.pt]
        [--paper] [--paper-n 100000] [--paper-c 1024] [--paper-k 16384] [--budget 600]

Data: EfficientNet-Lite0 ``blocks.5`` PFVs (C = 192, K = 1 536) of ``--crops`` augmented
bundled photos and toy-resnet ``layer3`` PFVs (C = 64, K = 512) of ``--toy-images``
synthetic-benchmark images (:mod:`real_pfvs`). Every method clusters the same unit-normalised
rows; the runs are interleaved, repeat ``r`` uses seed ``r`` for every method. Columns: median
time, scikit-learn's median time over this one, and the spherical inertia ``Σ_i 1 − cos(z_i,
c_k(i))`` (``c_k``: the mean direction of cluster ``k``; lower is better) as mean ± spread
over the seeds. scikit-learn runs ``bisecting_strategy="largest_cluster"`` (GIG's rule) with
the same restarts; faiss (``pip install faiss-cpu``; skipped if missing) is flat, not
bisecting: a speed anchor, not a tree.

``--paper`` adds ours alone at the papers' size: ``--paper-n`` synthetic PFVs of
``--paper-c`` channels (sums of two of ``4·C`` random directions with positive weights, plus
noise) to ``--paper-k`` concepts, in a child process stopped after ``--budget`` seconds.
"""

from __future__ import annotations

import argparse
import importlib.util
import multiprocessing
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from real_pfvs import augmented_pfvs, toy_pfvs
from sklearn.cluster import BisectingKMeans
from threadpoolctl import threadpool_limits

from ierf.concepts.extractors.kmeans import bisecting_spherical_kmeans, spherical_inertia

Method = Callable[[torch.Tensor, int, int, int], torch.Tensor]   # (Z, K, n_init, seed) → labels


def ours(Z: torch.Tensor, k: int, n_init: int, seed: int) -> torch.Tensor:
    return bisecting_spherical_kmeans(Z, k, n_init=n_init, seed=seed)


def sklearn_bisecting(Z: torch.Tensor, k: int, n_init: int, seed: int) -> torch.Tensor:
    km = BisectingKMeans(k, bisecting_strategy="largest_cluster", n_init=n_init,
                         random_state=seed)
    return torch.from_numpy(km.fit(Z.numpy()).labels_).long()


def faiss_flat(Z: torch.Tensor, k: int, n_init: int, seed: int) -> torch.Tensor:
    import faiss

    km = faiss.Kmeans(Z.shape[1], k, niter=20, spherical=True, seed=seed,
                      min_points_per_centroid=1)          # no warning at N < 39 K
    km.train(Z.numpy())
    return torch.from_numpy(km.index.search(Z.numpy(), 1)[1][:, 0]).long()


def compare(Z: torch.Tensor, k: int, n_init: int, repeats: int) -> list[str]:
    """Table rows of every method on unit rows ``Z`` at ``k`` clusters."""
    methods: dict[str, Method] = {"ierf bisecting spherical k-means": ours,
                                  "sklearn BisectingKMeans": sklearn_bisecting}
    if importlib.util.find_spec("faiss"):
        methods["faiss flat spherical k-means, 20 it. (not bisecting)"] = faiss_flat
    times: dict[str, list[float]] = {name: [] for name in methods}
    inertia: dict[str, list[float]] = {name: [] for name in methods}
    for seed in range(repeats):
        for name, method in methods.items():
            start = time.perf_counter()
            labels = method(Z, k, n_init, seed)
            times[name].append(time.perf_counter() - start)
            inertia[name].append(spherical_inertia(Z, labels))
    t_sk = statistics.median(times["sklearn BisectingKMeans"])
    rows = []
    for name in methods:
        t, i = statistics.median(times[name]), inertia[name]
        rows.append(f"| {name} | {t:.2f} | {t_sk / t:.1f} | {statistics.mean(i):.1f} ± "
                    f"{(max(i) - min(i)) / 2:.1f} |")
    return rows


def paper_pfvs(n: int, c: int, seed: int = 0) -> torch.Tensor:
    """(n, c) synthetic PFVs: each row two of ``4c`` random unit directions with weights in
    [0.5, 1.5), plus Gaussian noise of norm ≈ 0.3."""
    g = torch.Generator().manual_seed(seed)
    D = F.normalize(torch.randn(4 * c, c, generator=g), dim=1)
    atoms = torch.randint(4 * c, (n, 2), generator=g)
    weights = 0.5 + torch.rand(n, 2, 1, generator=g)
    return (weights * D[atoms]).sum(1) + 0.3 / c ** 0.5 * torch.randn(n, c, generator=g)


def paper_run(n: int, c: int, k: int, n_init: int, threads: int,
              queue: multiprocessing.Queue) -> None:
    torch.set_num_threads(threads)
    Z = F.normalize(paper_pfvs(n, c), dim=1)
    start = time.perf_counter()
    labels = bisecting_spherical_kmeans(Z, k, n_init=n_init)
    queue.put((time.perf_counter() - start, int(labels.max()) + 1))


def paper_row(args: argparse.Namespace) -> str:
    """Our time at the papers' size in a child process, or ``> budget``."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=paper_run, args=(args.paper_n, args.paper_c, args.paper_k,
                                                    args.n_init, args.threads, queue))
    child.start()
    child.join(args.budget)
    if child.is_alive():
        child.terminate()
        child.join()
        result = f"> {args.budget:.0f} (stopped)"
    else:
        seconds, clusters = queue.get()
        result = f"{seconds:.1f} ({clusters} clusters)"
    return (f"| synthetic, N = {args.paper_n}, C = {args.paper_c}, K = {args.paper_k} | "
            f"{args.n_init} | {result} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--crops", type=int, default=300)
    p.add_argument("--toy-images", type=int, default=230)
    p.add_argument("--n-init", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cache", type=Path, help="load/save the real PFVs here")
    p.add_argument("--paper", action="store_true", help="add the papers' size (ours only)")
    p.add_argument("--paper-n", type=int, default=100_000)
    p.add_argument("--paper-c", type=int, default=1024)
    p.add_argument("--paper-k", type=int, default=16_384)
    p.add_argument("--budget", type=float, default=600, help="seconds for the paper row")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    if importlib.util.find_spec("faiss"):
        import faiss

        faiss.omp_set_num_threads(args.threads)
    if args.cache and args.cache.exists():
        data = torch.load(args.cache, weights_only=True)
    else:
        data = {"EfficientNet-Lite0 blocks.5, augmented photos": augmented_pfvs(args.crops),
                "toy-resnet layer3, synthetic benchmark": toy_pfvs(args.toy_images)}
        if args.cache:
            torch.save(data, args.cache)
    print(f"{torch.get_num_threads()} thread(s), one process, {args.repeats} seeds, "
          f"{args.n_init} restarts per split\n")
    with threadpool_limits(args.threads):
        for name, X in data.items():
            n, c = X.shape
            print(f"## {name}: N = {n}, C = {c}, K = 8·C = {8 * c}\n\n"
                  "| method | time (s) | sklearn / this | spherical inertia Σ(1 − cos) |\n"
                  "|---|---|---|---|")
            print("\n".join(compare(F.normalize(X, dim=1), 8 * c, args.n_init, args.repeats)),
                  "\n", flush=True)
    if args.paper:
        print(f"## Papers' size, ours only (budget {args.budget:.0f} s)\n\n"
              "| data | restarts | time (s) |\n|---|---|---|")
        print(paper_row(args))


if __name__ == "__main__":
    main()

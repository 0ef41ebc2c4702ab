"""Lasso solvers on real, coherent concept dictionaries and on a random one (issue 11, item 1).

    python benchmarks/bench_lasso.py [--crops 300] [--toy-images 200] [--repeats 3]
        [--nnz 5] [--threads 2] [--no-fista] [--paper] [--cache lasso_data.pt]

Dictionaries (columns = concepts), all decomposed at an alpha giving ``--nnz`` non-zeros per
row on average, tol = 1e-4, scikit-learn's convention ``(1/(2C))‖x − V u‖² + α‖u‖₁``:

- ``toy-resnet layer3``: bisecting spherical k-means (K = 8 C = 512) of the ``layer3`` PFVs
  (C = 64) of ``--toy-images`` synthetic-benchmark images; 4 held-out test images (256 rows).
- ``EfficientNet-Lite0 blocks.5``: bisecting spherical k-means (K = 8 C = 1 536) of the
  ``blocks.5`` PFVs (C = 192) of ``--crops`` random resized crops + flips of bundled photos;
  two held-out crops (98 rows).
- ``random``: unit-norm Gaussian atoms (C = 192, K = 1 536), same 98 rows.
- ``--paper``: random unit-norm C = 1 024, K = 8 192, 196 five-sparse rows + noise.

Solvers, all in this process with the same threads, interleaved ``--repeats`` times (median):
ierf working set (:func:`ierf.concepts.working_set.lasso_working_set`: active-set homotopy
over all atoms, float64 and float32; and per-row working sets from W = 16, doubling),
``decompose(solver="homotopy")`` and ``decompose(solver="fista")`` (once, slow), scikit-learn
``Lasso`` (row loop), celer ``Lasso`` (row loop; benchmark extra ``pip install celer``, skipped
if absent). The objective gap is ``(P(u) − P*) / P*`` per row against the exact float64
working-set solution at ``tol = 1e-12``, mean and worst row.
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
import torchvision.transforms.v2 as T
from sklearn.linear_model import Lasso
from torchvision.transforms.v2 import functional as TF

import ierf
from ierf.concepts import BisectingSphericalKMeans, decompose, lasso_objective
from ierf.concepts.working_set import lasso_working_set
from ierf.data.synthetic import generate
from ierf.models.toy import TOY_MEAN, TOY_STD

PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "camera", "horse")
TOL = 1e-4


@torch.no_grad()
def toy_pfvs(n_images: int, seed: int, split: str) -> torch.Tensor:
    """(n·64, 64) toy-resnet ``layer3`` PFVs of synthetic-benchmark images."""
    model = ierf.load_model("toy-resnet")
    images = generate(n_images, seed=seed, split=split).images
    mean, std = torch.tensor(TOY_MEAN)[:, None, None], torch.tensor(TOY_STD)[:, None, None]
    x = (images - mean) / std
    return torch.cat([model.pfvs(x[i:i + 50], "layer3")["layer3"].vectors.flatten(0, 1)
                      for i in range(0, len(x), 50)])


@torch.no_grad()
def photo_pfvs(n_crops: int, seed: int) -> torch.Tensor:
    """(n·49, 192) EfficientNet-Lite0 ``blocks.5`` PFVs of random resized crops + flips."""
    model = ierf.load_model("efficientnet_lite0")
    p = model.preprocessing
    augment = T.Compose([T.RandomResizedCrop(list(p.input_size), antialias=True),
                         T.RandomHorizontalFlip()])
    images = [TF.to_dtype(TF.to_image(ierf.load_image(name)), torch.float32, scale=True)
              for name in PHOTOS]
    torch.manual_seed(seed)
    crops = torch.stack([augment(images[i % len(images)]) for i in range(n_crops)])
    crops = TF.normalize(crops.clamp(0, 1), p.mean, p.std)
    return torch.cat([model.pfvs(crops[i:i + 25], "blocks.5")["blocks.5"].vectors.flatten(0, 1)
                      for i in range(0, n_crops, 25)])


def kmeans_dictionary(X: torch.Tensor, k: int) -> torch.Tensor:
    """(C, K) bisecting spherical k-means centroids (GIG App. B), a coherent dictionary."""
    return BisectingSphericalKMeans(k).fit(X).get_dictionary()


def alpha_for_nnz(X: torch.Tensor, V: torch.Tensor, nnz: float) -> float:
    """Alpha (scikit-learn convention) giving about ``nnz`` non-zeros per row: halve from
    ``alpha_max = max |Vᵀ x| / C`` until past ``nnz`` (dense solves are slow), then bisect in
    log space."""
    def mean_nnz(alpha: float) -> float:
        return float((lasso_working_set(X, V, alpha, tol=TOL)[0] != 0).sum(1).double().mean())

    hi = float((X @ V).abs().amax()) / X.shape[1]
    lo = hi / 2
    while mean_nnz(lo) <= nnz:
        hi, lo = lo, lo / 2
    for _ in range(10):
        mid = (lo * hi) ** 0.5
        lo, hi = (mid, hi) if mean_nnz(mid) > nnz else (lo, mid)
    return (lo * hi) ** 0.5


def row_loop(cls: type, X: np.ndarray, V: np.ndarray, **kw: object) -> torch.Tensor:
    return torch.from_numpy(np.stack([cls(fit_intercept=False, tol=TOL, **kw).fit(V, x).coef_
                                      for x in X]))


def solvers(X: torch.Tensor, V: torch.Tensor, alpha: float, fista: bool
            ) -> dict[str, tuple[Callable[[], torch.Tensor], bool]]:
    """name → (call, repeat?)."""
    Xn, Vn = X.double().numpy(), V.double().numpy()
    X32, V32 = X.float(), V.float()
    out: dict[str, tuple[Callable[[], torch.Tensor], bool]] = {
        "ierf working set (float64)": (lambda: lasso_working_set(X, V, alpha, tol=TOL)[0], True),
        "ierf working set (float32)": (lambda: lasso_working_set(X32, V32, alpha,
                                                                 tol=TOL)[0], True),
        "ierf working set, W = 16 growing (float64)": (
            lambda: lasso_working_set(X, V, alpha, tol=TOL, working_set=16)[0], True),
        "decompose homotopy (float64)": (lambda: decompose(X, V, alpha, tol=TOL,
                                                           solver="homotopy"), True),
        "sklearn Lasso, row loop": (lambda: row_loop(Lasso, Xn, Vn, alpha=alpha,
                                                     max_iter=100_000), True)}
    if importlib.util.find_spec("celer"):
        import celer

        out["celer Lasso, row loop"] = (lambda: row_loop(celer.Lasso, Xn, Vn, alpha=alpha),
                                        True)
    if fista:
        out["decompose FISTA (float32)"] = (lambda: decompose(X32, V32, alpha, tol=TOL,
                                                              solver="fista",
                                                              max_iter=100_000), False)
    return out


def table(name: str, X: torch.Tensor, V: torch.Tensor, nnz: float, repeats: int,
          fista: bool) -> None:
    X, V = X.double(), V.double()
    alpha = alpha_for_nnz(X, V, nnz)
    f_star = lasso_objective(X, V, lasso_working_set(X, V, alpha, tol=1e-12)[0], alpha)
    runs = solvers(X, V, alpha, fista)
    times: dict[str, list[float]] = {k: [] for k in runs}
    result: dict[str, torch.Tensor] = {}
    for r in range(repeats):                                   # interleaved
        for key, (fn, again) in runs.items():
            if r and not again:
                continue
            start = time.perf_counter()
            result[key] = fn()
            times[key].append(time.perf_counter() - start)
    med = {k: statistics.median(t) for k, t in times.items()}
    t_sk, t_ce = med["sklearn Lasso, row loop"], med.get("celer Lasso, row loop", float("nan"))
    print(f"\n## {name}: N = {len(X)} rows, C = {V.shape[0]}, K = {V.shape[1]}, "
          f"alpha = {alpha:.4g}, tol = {TOL}\n")
    print("| solver | time (s) | ms / row | sklearn / this | celer / this | objective gap, "
          "mean | worst row | non-zeros / row |\n|---|---|---|---|---|---|---|---|")
    for key, U in result.items():
        gap = (lasso_objective(X, V, U.double(), alpha) - f_star) / f_star
        t = med[key]
        print(f"| {key} | {t:.3f} | {1e3 * t / len(X):.2f} | {t_sk / t:.1f} | {t_ce / t:.1f} | "
              f"{gap.mean():+.1e} | {gap.max():+.1e} | "
              f"{(U != 0).sum(1).double().mean():.1f} |", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--crops", type=int, default=300)
    p.add_argument("--toy-images", type=int, default=200)
    p.add_argument("--nnz", type=float, default=5.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-fista", action="store_true", help="skip FISTA (slow on k-means V)")
    p.add_argument("--paper", action="store_true", help="add C = 1 024, K = 8 192")
    p.add_argument("--cache", type=Path, help="load/save PFVs and dictionaries here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")                            # sklearn convergence warnings
    if args.cache and args.cache.exists():
        data = torch.load(args.cache, weights_only=True)
    else:
        start = time.perf_counter()
        toy_train = toy_pfvs(args.toy_images, 0, "train")
        photos = photo_pfvs(args.crops, seed=0)
        data = {"toy_X": toy_pfvs(4, 1, "test"), "photo_X": photo_pfvs(2, seed=1)}
        print(f"PFVs: toy {tuple(toy_train.shape)}, photos {tuple(photos.shape)} "
              f"({time.perf_counter() - start:.0f} s)", flush=True)
        start = time.perf_counter()
        data["toy_V"] = kmeans_dictionary(toy_train, 8 * toy_train.shape[1])
        data["photo_V"] = kmeans_dictionary(photos, 8 * photos.shape[1])
        print(f"bisecting spherical k-means dictionaries: {time.perf_counter() - start:.0f} s",
              flush=True)
        if args.cache:
            torch.save(data, args.cache)
    print(f"{torch.get_num_threads()} thread(s), one process, median of {args.repeats} "
          f"interleaved runs (FISTA: one run)")
    fista = not args.no_fista
    table("toy-resnet layer3, k-means dictionary", data["toy_X"], data["toy_V"], args.nnz,
          args.repeats, fista)
    table("EfficientNet-Lite0 blocks.5, k-means dictionary", data["photo_X"], data["photo_V"],
          args.nnz, args.repeats, fista)
    g = torch.Generator().manual_seed(0)
    V_rand = F.normalize(torch.randn(192, 1536, generator=g, dtype=torch.float64), dim=0)
    table("EfficientNet-Lite0 blocks.5 rows, random unit-norm dictionary", data["photo_X"],
          V_rand, args.nnz, args.repeats, fista)
    if args.paper:
        V_p = F.normalize(torch.randn(1024, 8192, generator=g, dtype=torch.float64), dim=0)
        U_true = torch.zeros(196, 8192, dtype=torch.float64)
        U_true.scatter_(1, torch.randint(8192, (196, 5), generator=g),
                        torch.rand(196, 5, generator=g, dtype=torch.float64) + 0.5)
        X_p = U_true @ V_p.T + 0.05 * torch.randn(196, 1024, generator=g, dtype=torch.float64)
        table("paper scale, random unit-norm dictionary, 5-sparse rows + noise", X_p, V_p,
              args.nnz, 1, False)


if __name__ == "__main__":
    main()

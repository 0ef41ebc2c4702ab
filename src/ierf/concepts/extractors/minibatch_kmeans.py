"""Mini-batch spherical k-means: GIG App. B's concepts learnt from a stream of PFVs.

:class:`~ierf.concepts.extractors.kmeans.BisectingSphericalKMeans` needs every PFV in memory;
CAFE's SAEs are trained on far more tokens than fit (IERF Sec. V-C). This extractor learns
the same kind of dictionary from minibatches (Sculley 2010, on the sphere):

1. :meth:`~MiniBatchSphericalKMeans.start`: bisecting spherical k-means on a first sample
   (e.g. the first full token buffer) gives the ``K`` initial directions.
2. :meth:`~MiniBatchSphericalKMeans.partial_fit`: each minibatch of unit rows ``z_i`` (centred
   by ``μ`` when given, then normalised) is assigned to its nearest direction (cosine) and
   added to that cluster's running sum; a cluster's direction is its normalised sum — the
   running mean of everything assigned to it, so each centre moves with a per-centre rate
   ``1 / n_k``. A cluster nothing was assigned to yet keeps its initial direction.
3. Concept vector of a cluster = the running mean of its members' centred PFVs (GIG App. B,
   step 3), or its initial sample's mean while it has none.

Every update is one batched assignment and two ``index_add_``; the state is ``O(K C)``
whatever the number of PFVs. Encoding and decoding are those of
:class:`BisectingSphericalKMeans` (Lasso, or ``"nearest"``: one non-zero per row, which is
differentiable and what CAFE's latent iERFs use).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ierf.concepts.extractors.base import check_pfvs, default_n_concepts
from ierf.concepts.extractors.kmeans import (
    BisectingSphericalKMeans,
    bisecting_spherical_kmeans,
    cluster_means,
)
from ierf.errors import IerfError

STREAM_STATE = ("initial", "initial_means", "sums", "centred_sums", "counts")


class MiniBatchSphericalKMeans(BisectingSphericalKMeans):
    """Spherical k-means trained on minibatches (module docstring).

    Parameters
    ----------
    n_concepts, center, n_init, max_iter, seed, encoding, alpha, positive, lasso_max_iter,
    lasso_tol : as :class:`BisectingSphericalKMeans` (``n_init`` and ``max_iter`` are those of
        the bisecting initialisation).
    batch_size : rows per update in :meth:`fit`.
    epochs : passes over the PFVs in :meth:`fit`.
    init_size : rows of the initial sample in :meth:`fit` (``None``: ``max(4 K, batch_size)``).
    """

    def __init__(self, n_concepts: int | None = None, *, batch_size: int = 1024,
                 epochs: int = 3, init_size: int | None = None, **kmeans: Any) -> None:
        super().__init__(n_concepts, **kmeans)
        if min(batch_size, epochs) < 1:
            raise IerfError(f"batch_size and epochs must be ≥ 1, got {batch_size}, {epochs}")
        self.batch_size, self.epochs, self.init_size = batch_size, epochs, init_size
        self.stream: dict[str, torch.Tensor] | None = None

    # -- streaming ----------------------------------------------------------------------------

    def start(self, X: torch.Tensor) -> MiniBatchSphericalKMeans:
        """Initial directions: bisecting spherical k-means on the sample ``X (M, C)``, ``M ≥ K``."""
        Xc = self._centred(check_pfvs(X, None if self.center is None else len(self.center)))
        k = default_n_concepts(X.shape[1], self.n_concepts)
        if k > len(X):
            raise IerfError(f"k-means cannot start {k} clusters from {len(X)} PFVs; give a "
                            f"first sample of at least {k} (a larger buffer) or fewer concepts")
        Z = F.normalize(Xc, dim=1)
        labels = bisecting_spherical_kmeans(Z, k, n_init=self.n_init, max_iter=self.max_iter,
                                            seed=self.seed)
        zeros = Xc.new_zeros(k, X.shape[1])
        self.stream = {"initial": F.normalize(cluster_means(Z, labels, k).T, dim=1),
                       "initial_means": cluster_means(Xc, labels, k).T.contiguous(),
                       "sums": zeros, "centred_sums": zeros.clone(),
                       "counts": Xc.new_zeros(k)}
        self._update_dictionary()
        return self

    @property
    def directions(self) -> torch.Tensor:
        """``(K, C)`` unit centre of every cluster."""
        s = self._stream()
        return torch.where(s["counts"][:, None] > 0, F.normalize(s["sums"], dim=1), s["initial"])

    def assign(self, X: torch.Tensor) -> torch.Tensor:
        """``(N,)`` nearest cluster (cosine) of each PFV."""
        Z = F.normalize(self._centred(X.to(self._stream()["sums"])), dim=1)
        return (Z @ self.directions.T).argmax(1)

    @torch.no_grad()
    def partial_fit(self, X: torch.Tensor) -> float:
        """One update on the minibatch ``X (n, C)`` (step 2); returns its spherical inertia
        per row, ``mean_i (1 − cos(x_i, c_{k(i)}))``, before the update."""
        s = self._stream()
        Xc = self._centred(check_pfvs(X, s["sums"].shape[1]).to(s["sums"]))
        Z = F.normalize(Xc, dim=1)
        cos, labels = (Z @ self.directions.T).max(1)
        s["sums"].index_add_(0, labels, Z)
        s["centred_sums"].index_add_(0, labels, Xc)
        s["counts"].index_add_(0, labels, torch.ones_like(cos))
        self._update_dictionary()
        return float((1 - cos).mean())

    def _update_dictionary(self) -> None:
        s = self._stream()
        n = s["counts"][:, None]
        means = torch.where(n > 0, s["centred_sums"] / n.clamp_min(1), s["initial_means"])
        self.dictionary_ = means.T.contiguous()

    def _stream(self) -> dict[str, torch.Tensor]:
        if self.stream is None:
            raise IerfError("mini-batch k-means has not started: call start(X) on a first "
                            "sample (or fit(X))")
        return self.stream

    # -- in memory ---------------------------------------------------------------------------

    def fit(self, X: torch.Tensor) -> MiniBatchSphericalKMeans:
        """:meth:`start` on a random sample of ``init_size`` rows, then :meth:`partial_fit`
        over shuffled minibatches of ``X (N, C)``, ``epochs`` times; ``labels_`` are the
        final assignments."""
        X = check_pfvs(X)
        k = default_n_concepts(X.shape[1], self.n_concepts)
        generator = torch.Generator().manual_seed(self.seed)
        size = min(len(X), self.init_size or max(4 * k, self.batch_size))
        self.start(X[torch.randperm(len(X), generator=generator)[:size].to(X.device)])
        for _ in range(self.epochs):
            for rows in torch.randperm(len(X), generator=generator).to(X.device).split(
                    self.batch_size):
                self.partial_fit(X[rows])
        self.labels_ = self.assign(X)
        return self

    # -- files -------------------------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        return {**super().config(), "batch_size": self.batch_size, "epochs": self.epochs,
                "init_size": self.init_size}

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """The dictionary (and centre) plus the running sums, so training can go on."""
        return {**super().state_tensors(), **{f"stream_{k}": v for k, v in self._stream().items()}}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        super().load_state_tensors(tensors)
        self.stream = {k: tensors[f"stream_{k}"] for k in STREAM_STATE}

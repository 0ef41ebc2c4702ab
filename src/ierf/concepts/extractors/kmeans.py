"""Bisecting spherical k-means concepts, exactly as GIG Appendix B (IERF's default extractor).

1. Centre and unit-normalise every PFV: ``v'_i = (v_i − μ_BN) / ‖v_i − μ_BN‖``.
2. Start with one cluster; repeatedly split the *largest* cluster (most members) in two with
   spherical 2-means (cosine similarity, centroids ``c = Σ v'_i / ‖Σ v'_i‖``), keeping the
   best of a few random restarts, until there are ``K`` clusters.
3. Concept vector of a cluster = plain average of its members' centred PFVs ``v_i − μ_BN``.

PFVs are then decomposed over the concepts by Lasso (GIG Eq. 2 / IERF Eq. 12) and rebuilt as
``U Vᵀ + μ_BN`` (GIG Eq. 9).
"""

from __future__ import annotations

import heapq
from typing import Any, Literal

import torch
import torch.nn.functional as F

from ierf.concepts.decompose import decompose, reconstruct
from ierf.concepts.extractors.base import (
    ConceptExtractor,
    FittedDictionary,
    check_pfvs,
    default_n_concepts,
)
from ierf.errors import IerfError


def spherical_two_means(Z: torch.Tensor, *, n_init: int, max_iter: int,
                        generator: torch.Generator) -> torch.Tensor:
    """Split unit rows ``Z (M, C)``, ``M ≥ 2``, by spherical 2-means (GIG App. B, step 2).

    All ``n_init`` restarts run batched; each seeds its two centroids with two distinct
    random rows and alternates cosine assignment / normalised-sum centroid updates until the
    assignment stops changing (or ``max_iter``). The restart with the highest total cosine
    similarity to its centroids (lowest spherical inertia) wins.

    Returns
    -------
    (M,) bool: ``True`` for the rows of the second half. Both halves are non-empty.
    """
    m = Z.shape[0]
    first = torch.randint(m, (n_init,), generator=generator)
    second = (first + torch.randint(1, m, (n_init,), generator=generator)) % m
    centroids = Z[torch.stack([first, second], 1).to(Z.device)]          # (R, 2, C)
    assign = None
    for _ in range(max_iter):
        new_assign = (Z @ centroids.transpose(1, 2)).argmax(-1)        # (R, M)
        onehot = F.one_hot(new_assign, 2).to(Z.dtype)                   # (R, M, 2)
        sums = onehot.transpose(1, 2) @ Z                               # (R, 2, C)
        empty = onehot.sum(1) == 0                                      # (R, 2)
        centroids = torch.where(empty[..., None], centroids, F.normalize(sums, dim=-1))
        if assign is not None and torch.equal(assign, new_assign):
            break
        assign = new_assign
    score = sums.norm(dim=-1).sum(-1)        # Σ_i cos(z_i, c_{k(i)}) for normalised-sum c_k
    split = assign[score.argmax()].bool()
    if split.all() or not split.any():       # only when rows coincide: split one off
        split = torch.zeros_like(split)
        split[0] = True
    return split


def bisecting_spherical_kmeans(Z: torch.Tensor, n_clusters: int, *, n_init: int = 3,
                               max_iter: int = 100, seed: int = 0) -> torch.Tensor:
    """Cluster labels of unit rows ``Z (N, C)`` by bisecting spherical k-means (GIG App. B).

    Always bisects the cluster with the most members (ties: lowest label) with
    :func:`spherical_two_means`; the second half gets the next free label. Deterministic
    given ``seed`` (restart seeds are drawn on the CPU).

    Returns
    -------
    (N,) int64 labels in ``[0, n_clusters)``, every label used.
    """
    n = Z.shape[0]
    if not 1 <= n_clusters <= n:
        raise IerfError(f"need 1 <= n_clusters <= number of PFVs ({n}), got {n_clusters}")
    generator = torch.Generator().manual_seed(seed)
    labels = torch.zeros(n, dtype=torch.long, device=Z.device)
    heap = [(-n, 0)]  # (−size, label): the largest cluster, lowest label first
    for new in range(1, n_clusters):
        size, largest = heapq.heappop(heap)
        members = (labels == largest).nonzero().squeeze(1)
        moved = members[spherical_two_means(Z[members], n_init=n_init, max_iter=max_iter,
                                            generator=generator)]
        labels[moved] = new
        heapq.heappush(heap, (size + len(moved), largest))
        heapq.heappush(heap, (-len(moved), new))
    return labels


def cluster_means(X: torch.Tensor, labels: torch.Tensor, n_clusters: int) -> torch.Tensor:
    """(C, K) matrix whose column ``k`` is the mean of the rows of ``X`` labelled ``k``."""
    sums = X.new_zeros(n_clusters, X.shape[1]).index_add_(0, labels, X)
    counts = torch.bincount(labels, minlength=n_clusters).clamp_min(1).to(X.dtype)
    return (sums / counts[:, None]).T.contiguous()


def spherical_inertia(X: torch.Tensor, labels: torch.Tensor) -> float:
    """``Σ_i (1 − cos(x_i, c_{k(i)}))`` with ``c_k`` the mean direction of cluster ``k``.

    The objective spherical k-means minimises (Dhillon & Modha 2001); computed in float64
    on the unit-normalised rows as ``N − Σ_k ‖Σ_{i∈k} x_i/‖x_i‖‖``.
    """
    Z = F.normalize(X.double(), dim=1)
    sums = Z.new_zeros(int(labels.max()) + 1, Z.shape[1]).index_add_(0, labels.to(Z.device), Z)
    return float(Z.shape[0] - sums.norm(dim=1).sum())


class BisectingSphericalKMeans(FittedDictionary, ConceptExtractor):
    """Concept extractor of GIG Appendix B / IERF Sec. VI-A1.

    Parameters
    ----------
    n_concepts : number of clusters ``K``; ``None`` → ``8 C``. Must not exceed the number of
        PFVs given to :meth:`fit`.
    center : optional (C,) vector ``μ_BN`` subtracted before clustering and added back by
        :meth:`decode` (GIG Eq. 8–9); see :func:`ierf.concepts.bn_shift`.
    n_init : random restarts of every spherical 2-means split.
    max_iter : most iterations of every spherical 2-means split.
    seed : seed of the restarts.
    encoding : how :meth:`encode` finds coefficients. ``"lasso"`` (default, the papers'
        Eq. 12): :func:`ierf.concepts.decompose` of the centred PFVs over the dictionary.
        ``"nearest"``: one non-zero per row, at the concept of highest cosine similarity,
        with the least-squares coefficient ``⟨x − μ, v⟩ / ‖v‖²``.
    alpha, positive, lasso_max_iter, lasso_tol : Lasso settings of ``"lasso"`` encoding
        (scikit-learn convention, papers' ``λ = α C``).

    Attributes
    ----------
    labels_ : (N,) cluster of each PFV seen by :meth:`fit`.
    """

    def __init__(self, n_concepts: int | None = None, *, center: torch.Tensor | None = None,
                 n_init: int = 3, max_iter: int = 100, seed: int = 0,
                 encoding: Literal["lasso", "nearest"] = "lasso", alpha: float = 0.01,
                 positive: bool = False, lasso_max_iter: int = 1000,
                 lasso_tol: float = 1e-4) -> None:
        if encoding not in ("lasso", "nearest"):
            raise IerfError(f"encoding must be 'lasso' or 'nearest', got {encoding!r}")
        self.n_concepts = n_concepts
        self.center = None if center is None else torch.as_tensor(center).detach()
        self.n_init, self.max_iter, self.seed = n_init, max_iter, seed
        self.encoding, self.alpha, self.positive = encoding, alpha, positive
        self.lasso_max_iter, self.lasso_tol = lasso_max_iter, lasso_tol
        self.dictionary_: torch.Tensor | None = None
        self.labels_: torch.Tensor | None = None

    def _centred(self, X: torch.Tensor) -> torch.Tensor:
        return X if self.center is None else X - self.center.to(X)

    def fit(self, X: torch.Tensor) -> BisectingSphericalKMeans:
        """Cluster the PFVs ``X (N, C)`` and set the concept vectors to the cluster means."""
        Xc = self._centred(check_pfvs(X, None if self.center is None else len(self.center)))
        k = default_n_concepts(X.shape[1], self.n_concepts)
        self.labels_ = bisecting_spherical_kmeans(F.normalize(Xc, dim=1), k,
                                                  n_init=self.n_init, max_iter=self.max_iter,
                                                  seed=self.seed)
        self.dictionary_ = cluster_means(Xc, self.labels_, k)
        return self

    def encode(self, X: torch.Tensor) -> torch.Tensor:
        V = self.get_dictionary().to(X)
        Xc = self._centred(check_pfvs(X, V.shape[0]))
        if self.encoding == "lasso":
            return decompose(Xc, V, self.alpha, max_iter=self.lasso_max_iter,
                             tol=self.lasso_tol, positive=self.positive)
        nearest = (Xc @ F.normalize(V, dim=0)).argmax(1)
        v = V.T[nearest]
        coefficient = (Xc * v).sum(1) / v.square().sum(1).clamp_min(torch.finfo(X.dtype).tiny)
        return Xc.new_zeros(len(X), V.shape[1]).scatter_(1, nearest[:, None],
                                                          coefficient[:, None])

    def decode(self, U: torch.Tensor) -> torch.Tensor:
        V = self.get_dictionary().to(U)
        return reconstruct(U, V, None if self.center is None else self.center.to(U))

    def config(self) -> dict[str, Any]:
        return {"n_concepts": self.n_concepts, "n_init": self.n_init, "max_iter": self.max_iter,
                "seed": self.seed, "encoding": self.encoding, "alpha": self.alpha,
                "positive": self.positive, "lasso_max_iter": self.lasso_max_iter,
                "lasso_tol": self.lasso_tol}

    def state_tensors(self) -> dict[str, torch.Tensor]:
        tensors = {"dictionary": self.get_dictionary()}
        if self.center is not None:
            tensors["center"] = self.center
        return tensors

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.dictionary_ = tensors["dictionary"]
        self.center = tensors.get("center")

"""Bisecting spherical k-means concepts, exactly as GIG Appendix B (IERF's default extractor).

1. Centre and unit-normalise every PFV: ``v'_i = (v_i − μ_BN) / ‖v_i − μ_BN‖``.
2. Start with one cluster; repeatedly split the *largest* cluster (most members) in two with
   spherical 2-means (cosine similarity, centroids ``c = Σ v'_i / ‖Σ v'_i‖``), keeping the
   best of a few random restarts, until there are ``K`` clusters. The splits run batched,
   all clusters of similar size at once (:mod:`ierf.concepts.two_means`).
3. Concept vector of a cluster = plain average of its members' centred PFVs ``v_i − μ_BN``.

The splits form a binary tree (:class:`ClusterTree`, ``BisectingSphericalKMeans.tree``): its
leaves are the ``K`` concepts, its ``K − 1`` internal nodes the clusters that were split, in
split order; cutting it gives coarser concepts ("supernodes", :mod:`ierf.graph.hierarchy`).

PFVs are then decomposed over the concepts by Lasso (GIG Eq. 2 / IERF Eq. 12) and rebuilt as
``U Vᵀ + μ_BN`` (GIG Eq. 9).
"""

from __future__ import annotations

from dataclasses import dataclass
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
from ierf.concepts.two_means import spherical_two_means
from ierf.errors import IerfError


def bisecting_spherical_kmeans(Z: torch.Tensor, n_clusters: int, *, n_init: int = 3,
                               max_iter: int = 100, tol: float = 1e-3, seed: int = 0,
                               return_tree: bool = False
                               ) -> torch.Tensor | tuple[torch.Tensor, ClusterTree]:
    """Cluster labels of unit rows ``Z (N, C)`` by bisecting spherical k-means (GIG App. B).

    Bisects the largest clusters first, in batches: each round splits, all at once with
    :func:`spherical_two_means`, the largest clusters whose size is at least half the size
    of the largest one (at most the number of labels still to give), so the order of GIG's
    "split the largest cluster" is kept up to a factor two in size. The second half of each
    split gets the next free label. A split stops iterating once at most ``tol`` times its
    rows change half in an iteration (``tol = 0``: at a fixed point), or after ``max_iter``
    assignments. Deterministic given ``seed`` (restart seeds are drawn on the CPU).

    Returns
    -------
    (N,) int64 labels in ``[0, n_clusters)``, every label used; with ``return_tree`` also
    the :class:`ClusterTree` of the splits.
    """
    n = Z.shape[0]
    if not 1 <= n_clusters <= n:
        raise IerfError(f"need 1 <= n_clusters <= number of PFVs ({n}), got {n_clusters}")
    if n_init < 1 or max_iter < 1 or not 0 <= tol < 1:
        raise IerfError(f"need n_init >= 1, max_iter >= 1 and 0 <= tol < 1, got n_init = "
                        f"{n_init}, max_iter = {max_iter}, tol = {tol}")
    generator = torch.Generator().manual_seed(seed)
    labels = torch.zeros(n, dtype=torch.long, device=Z.device)
    K = n_clusters
    parents = torch.full((2 * K - 1,), -1, dtype=torch.long)
    tree_sizes = torch.zeros(2 * K - 1, dtype=torch.long)
    above = torch.full((K,), -1, dtype=torch.long)      # tree parent of each current cluster
    k = 1
    while k < n_clusters:
        sizes = torch.bincount(labels, minlength=k)
        order = torch.argsort(sizes, descending=True, stable=True)
        ranked = sizes[order]
        chosen = order[:int(((ranked * 2 >= ranked[0]) & (ranked > 1)).sum().clamp(
            1, n_clusters - k))]
        rank = torch.full((k,), -1, dtype=torch.long, device=Z.device)
        rank[chosen] = torch.arange(len(chosen), device=Z.device)
        members = (rank[labels] >= 0).nonzero().squeeze(1)
        members = members[torch.argsort(rank[labels[members]], stable=True)]
        segment = rank[labels[members]]
        split = spherical_two_means(Z[members], segment, len(chosen), n_init=n_init,
                                    max_iter=max_iter, tol=tol, generator=generator)
        labels[members[split]] = k + segment[split]
        # the split of cluster chosen[i] is internal node K + (k − 1) + i; its halves keep
        # label chosen[i] and take label k + i
        chosen_cpu, node = chosen.cpu(), torch.arange(K + k - 1, K + k - 1 + len(chosen))
        parents[node], tree_sizes[node] = above[chosen_cpu], sizes.cpu()[chosen_cpu]
        above[chosen_cpu] = above[k:k + len(chosen)] = node
        k += len(chosen)
    if not return_tree:
        return labels
    parents[:K], tree_sizes[:K] = above, torch.bincount(labels, minlength=K).cpu()
    return labels, ClusterTree(parents, tree_sizes)


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


@dataclass(frozen=True)
class ClusterTree:
    """The split tree of bisecting k-means (GIG App. B, step 2), on the CPU.

    Node ``k < K`` is final cluster ``k`` (concept ``k``, column ``k`` of ``V``); node
    ``K + s`` is the cluster split at step ``s`` (``K`` is the root, all PFVs; ``K = 1``: the
    root is leaf 0). A node is split before its children, so ``parents[K + s] < K + s``.

    Attributes
    ----------
    parents : (2K − 1,) int64 parent of every node, ``−1`` at the root.
    sizes : (2K − 1,) int64 number of fitted PFVs in every node.
    """

    parents: torch.Tensor
    sizes: torch.Tensor

    def __post_init__(self) -> None:
        p, n = self.parents, len(self.parents)
        K = (n + 1) // 2
        ok = p.dim() == 1 and p.dtype == torch.long and n % 2 == 1 and \
            self.sizes.shape == p.shape
        if ok:
            node = torch.arange(n)
            high = torch.where(node < K, n, node)           # a parent is split before
            children = torch.bincount(p[p >= 0], minlength=n)
            ok = (int(p[self.root]) == -1 and int((p < 0).sum()) == 1
                  and bool(((p < 0) | ((p >= K) & (p < high))).all())
                  and torch.equal(children, torch.where(node < K, 0, 2)))
        if ok:   # acyclic now, so sums can climb
            ok = bool((self.sizes >= 1).all()) and torch.equal(
                self._sums(self.sizes[:K, None])[:, 0], self.sizes)
        if not ok:
            raise IerfError("not a bisecting k-means split tree: parents must be (2K − 1,) "
                            "int64 with leaves 0…K−1, internal nodes in split order, and "
                            "sizes must add up")

    @property
    def n_leaves(self) -> int:
        """``K``, the number of final clusters."""
        return (len(self.parents) + 1) // 2

    @property
    def root(self) -> int:
        return self.n_leaves if self.n_leaves > 1 else 0

    def depth(self) -> torch.Tensor:
        """(2K − 1,) number of splits above every node (0 at the root)."""
        depth, up = torch.zeros_like(self.parents), self.parents.clone()
        while bool((up >= 0).any()):
            depth += up >= 0
            up = torch.where(up >= 0, self.parents[up.clamp_min(0)], up)
        return depth

    def cut(self, n_groups: int | None = None, level: int | None = None) -> torch.Tensor:
        """Node ids of a cut of the tree (every leaf under exactly one of them), ascending.

        ``n_groups = g``: the ``g`` clusters bisecting k-means had after its first ``g − 1``
        splits (the largest clusters split first). ``level = d``: the nodes ``d`` splits
        below the root, and the leaves above that depth.
        """
        K, n = self.n_leaves, len(self.parents)
        if (n_groups is None) == (level is None):
            raise IerfError("pass exactly one of n_groups and level")
        if n_groups is not None:
            if not 1 <= n_groups <= K:
                raise IerfError(f"n_groups must be in [1, {K}], got {n_groups}")
            split = torch.zeros(n, dtype=torch.bool)
            split[K:K + n_groups - 1] = True
            above = self.parents.clamp_min(0)
            return (~split & ((self.parents < 0) | split[above])).nonzero().flatten()
        if level < 0:
            raise IerfError(f"level must be >= 0, got {level}")
        depth = self.depth()
        leaf = torch.arange(n) < K
        return ((depth == level) | ((depth < level) & leaf)).nonzero().flatten()

    def assign(self, nodes: torch.Tensor) -> torch.Tensor:
        """(K,) the node of the cut ``nodes`` above every leaf (see :meth:`cut`)."""
        nodes = torch.as_tensor(nodes, dtype=torch.long).reshape(-1)
        if len(nodes) == 0 or nodes.min() < 0 or nodes.max() >= len(self.parents):
            raise IerfError(f"tree nodes must be in [0, {len(self.parents)})")
        stop = torch.zeros(len(self.parents), dtype=torch.bool)
        stop[nodes] = True
        owner = self._climb(torch.arange(self.n_leaves), stop)
        if bool((owner < 0).any()) or bool((self._climb(self.parents[nodes], stop) >= 0).any()):
            raise IerfError("these tree nodes are not a cut: every leaf must lie under "
                            "exactly one of them")
        return owner

    def leaves(self, node: int) -> torch.Tensor:
        """The leaves (concepts) under ``node``, ascending."""
        stop = torch.zeros(len(self.parents), dtype=torch.bool)
        stop[node] = True
        return (self._climb(torch.arange(self.n_leaves), stop) == node).nonzero().flatten()

    def node_vectors(self, V: torch.Tensor) -> torch.Tensor:
        """(C, 2K − 1) concept vector of every node: the mean of its members' centred PFVs,
        i.e. the size-weighted mean of its leaves' columns of ``V (C, K)`` (step 3)."""
        if V.dim() != 2 or V.shape[1] != self.n_leaves:
            raise IerfError(f"expected a (C, {self.n_leaves}) dictionary, got {tuple(V.shape)}")
        w = self.sizes.to(V)
        return (self._sums(V.T * w[:self.n_leaves, None]) / w[:, None]).T

    def _sums(self, leaf_values: torch.Tensor) -> torch.Tensor:
        """(2K − 1, D) sums over the leaves under every node of ``leaf_values (K, D)``."""
        n, depth = len(self.parents), self.depth()
        out = leaf_values.new_zeros(n, leaf_values.shape[1])
        out[:self.n_leaves] = leaf_values
        for d in range(int(depth.max()), 0, -1):              # bottom-up, one level at a time
            at = (depth == d).nonzero().flatten()
            out.index_add_(0, self.parents[at], out[at])
        return out

    def _climb(self, nodes: torch.Tensor, stop: torch.Tensor) -> torch.Tensor:
        """The first node at or above each of ``nodes`` with ``stop`` set, or −1."""
        cur = nodes.clone()
        while True:
            todo = (cur >= 0) & ~stop[cur.clamp_min(0)]
            if not bool(todo.any()):
                return cur
            cur = torch.where(todo, self.parents[cur.clamp_min(0)], cur)


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
    tol : a split stops once at most this fraction of its rows changes half in an
        iteration (summed over the restarts); ``0``: iterate to a fixed point.
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
    tree : the :class:`ClusterTree` of the splits (saved with the extractor).
    """

    def __init__(self, n_concepts: int | None = None, *, center: torch.Tensor | None = None,
                 n_init: int = 3, max_iter: int = 100, tol: float = 1e-3, seed: int = 0,
                 encoding: Literal["lasso", "nearest"] = "lasso", alpha: float = 0.01,
                 positive: bool = False, lasso_max_iter: int = 1000,
                 lasso_tol: float = 1e-4) -> None:
        if encoding not in ("lasso", "nearest"):
            raise IerfError(f"encoding must be 'lasso' or 'nearest', got {encoding!r}")
        self.n_concepts = n_concepts
        self.center = None if center is None else torch.as_tensor(center).detach()
        self.n_init, self.max_iter, self.tol, self.seed = n_init, max_iter, tol, seed
        self.encoding, self.alpha, self.positive = encoding, alpha, positive
        self.lasso_max_iter, self.lasso_tol = lasso_max_iter, lasso_tol
        self.dictionary_: torch.Tensor | None = None
        self.labels_: torch.Tensor | None = None
        self.tree_: ClusterTree | None = None

    def _centred(self, X: torch.Tensor) -> torch.Tensor:
        return X if self.center is None else X - self.center.to(X)

    def fit(self, X: torch.Tensor) -> BisectingSphericalKMeans:
        """Cluster the PFVs ``X (N, C)`` and set the concept vectors to the cluster means."""
        Xc = self._centred(check_pfvs(X, None if self.center is None else len(self.center)))
        k = default_n_concepts(X.shape[1], self.n_concepts)
        self.labels_, self.tree_ = bisecting_spherical_kmeans(
            F.normalize(Xc, dim=1), k, n_init=self.n_init, max_iter=self.max_iter,
            tol=self.tol, seed=self.seed, return_tree=True)
        self.dictionary_ = cluster_means(Xc, self.labels_, k)
        return self

    @property
    def tree(self) -> ClusterTree:
        """The split tree: parent of every concept and of every split cluster, split order."""
        if self.tree_ is None:
            raise IerfError("this k-means extractor has no split tree (not fitted, or saved "
                            "by an older ierf / built by hand); refit it to get one")
        return self.tree_

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
                "tol": self.tol, "seed": self.seed, "encoding": self.encoding, "alpha": self.alpha,
                "positive": self.positive, "lasso_max_iter": self.lasso_max_iter,
                "lasso_tol": self.lasso_tol}

    def state_tensors(self) -> dict[str, torch.Tensor]:
        tensors = {"dictionary": self.get_dictionary()}
        if self.center is not None:
            tensors["center"] = self.center
        if self.tree_ is not None:
            tensors["tree_parents"], tensors["tree_sizes"] = self.tree_.parents, self.tree_.sizes
        return tensors

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.dictionary_ = tensors["dictionary"]
        self.center = tensors.get("center")
        self.tree_ = None
        if "tree_parents" in tensors:
            tree = ClusterTree(tensors["tree_parents"].cpu(), tensors["tree_sizes"].cpu())
            if tree.n_leaves != self.dictionary_.shape[1]:
                raise IerfError(f"the split tree has {tree.n_leaves} leaves for "
                                f"{self.dictionary_.shape[1]} concepts")
            self.tree_ = tree

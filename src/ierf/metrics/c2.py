"""C2-score: how consistently a concept points at the same thing across images, measured in
the features of an independent model (FaCT Sec. 4, Eqs. 13–16; App. C.3).

For concept ``k`` and image ``n`` (Eq. 13): the presence ``p_k(n)`` (the concept's activation
on the image, summed over positions) and the input attribution ``A_k(n)`` (H, W), of which only
the positive part is used. With ``F(n)`` (D, H, W) a dense feature map of an independent model
(DINOv2 in the paper) and ``μ`` the dataset-mean feature:

* Eq. 14 – embedding ``e_k(n) = Σ_x A_k(n)[x] F(n)[x] / Σ_x A_k(n)[x] − μ``;
* Eq. 15 – consistency over ``S_k``, the concept's top images by presence (top 5 % of the
  images where it is present, at least 10; concepts present on fewer than 5 images are not
  scored, App. C.3): ``Cons_k = Σ_{i≠j∈S_k} p_i p_j cos(e_i, e_j) / Σ_{i≠j∈S_k} p_i p_j``;
* Eq. 16 – ``C2_k = Cons_k − Cons_rand`` (Δ_rand), where a random concept has a random
  attribution map on every image (``max(U, t)``: ``U`` uniform per pixel, ``t`` uniform per
  image, as the paper's code) with presence ``Σ_x map`` and is scored over all images.

Everything is batched: pooling is one ``bmm`` per image chunk over all of its (concept,
image) pairs, and Eq. 15 for all concepts is one Gram tensor ``(K, M, M)`` with masks.
:class:`C2Accumulator` streams image chunks (features and maps of a chunk only), so data sets
larger than memory work; :meth:`C2Score.__call__` is the dense one-shot form.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ierf.errors import IerfError


@dataclass
class C2Result:
    """C2-scores of ``K`` concepts (Eq. 16).

    Attributes
    ----------
    scores : (K,) ``Cons_k − Cons_rand``; NaN for concepts not scored (too few images).
    consistency : (K,) ``Cons_k`` (Eq. 15); NaN where not scored.
    n_images : (K,) ``|S_k|``, images each concept was scored on (0 if not scored).
    random : (R,) ``Cons`` of the ``R`` random concepts (Eq. 15 over all images).
    """

    scores: Tensor
    consistency: Tensor
    n_images: Tensor
    random: Tensor

    @property
    def evaluated(self) -> Tensor:
        """(K,) bool: concepts that were scored."""
        return ~self.scores.isnan()

    @property
    def baseline(self) -> float:
        """``Cons_rand``: the mean consistency of the random concepts."""
        return float(self.random.mean())

    @property
    def mean(self) -> float:
        """The C2-score of the concept set: the mean of ``scores`` over scored concepts."""
        s = self.scores[self.evaluated]
        return float(s.mean()) if len(s) else math.nan

    @property
    def se(self) -> float:
        """Standard error of :attr:`mean` over the scored concepts."""
        s = self.scores[self.evaluated]
        return float(s.std() / math.sqrt(len(s))) if len(s) > 1 else math.nan


def select_images(presence: Tensor, fraction: float = 0.05, at_least: int = 10,
                  min_images: int = 5) -> Tensor:
    """``S_k`` of every concept (App. C.3): (N, K) bool from presences (N, K).

    Per concept, among the images where it is present (``p > 0``): the top ``fraction`` by
    presence, but at least ``at_least`` (all of them if fewer); none if it is present on
    fewer than ``min_images`` images.
    """
    if presence.dim() != 2:
        raise IerfError(f"presence must be (N images, K concepts), got {tuple(presence.shape)}")
    if not 0 < fraction <= 1 or at_least < 1 or min_images < 2:
        raise IerfError("need 0 < fraction ≤ 1, at_least ≥ 1 and min_images ≥ 2 (cosines "
                        f"need pairs); got {fraction}, {at_least}, {min_images}")
    present = presence > 0
    n_present = present.sum(0)                                             # (K,)
    count = torch.maximum((n_present * fraction).ceil().long(),
                          torch.full_like(n_present, at_least)).minimum(n_present)
    count = torch.where(n_present >= min_images, count, 0)
    ranked = torch.where(present, presence, -math.inf)
    rank = ranked.argsort(dim=0, descending=True, stable=True).argsort(dim=0)     # (N, K), 0 = top
    return (rank < count) & present


def pool(maps: Tensor, features: Tensor) -> tuple[Tensor, Tensor]:
    """Attribution-weighted feature pooling (Eq. 14 before centring).

    Parameters
    ----------
    maps : (B, M, H, W) attribution maps, M per image; negative values are clipped to 0.
    features : (B, D, h, w) dense features of the same B images; maps of another size are
        resized to (h, w) (bilinear, antialiased).

    Returns
    -------
    embeddings (B, M, D) — ``Σ_x A[x] F[x] / Σ_x A[x]`` (zero where the mass is zero) — and
    the mass ``Σ_x A[x]`` (B, M) at the features' resolution.
    """
    if maps.dim() != 4 or features.dim() != 4 or len(maps) != len(features):
        raise IerfError(f"expected maps (B, M, H, W) and features (B, D, h, w) of the same B "
                        f"images, got {tuple(maps.shape)} and {tuple(features.shape)}")
    a = maps.clamp_min(0).to(features.dtype)
    if a.shape[-2:] != features.shape[-2:]:
        a = F.interpolate(a, size=features.shape[-2:], mode="bilinear", align_corners=False,
                          antialias=True).clamp_min(0)
    a = a.flatten(2)                                                       # (B, M, HW)
    mass = a.sum(-1)
    weighted = torch.bmm(a, features.flatten(2).transpose(1, 2))           # (B, M, D)
    return weighted / torch.where(mass > 0, mass, 1.0)[..., None], mass


def consistency(embeddings: Tensor, weights: Tensor, mask: Tensor) -> Tensor:
    """Eq. 15 for K concepts at once: presence-weighted mean pairwise cosine similarity.

    Parameters
    ----------
    embeddings : (K, M, D) centred embeddings, M slots per concept (padded).
    weights : (K, M) presences ``p``.
    mask : (K, M) bool, the slots in ``S_k``.

    Returns
    -------
    (K,) ``Σ_{i≠j} p_i p_j cos(e_i, e_j) / Σ_{i≠j} p_i p_j``; NaN for fewer than two slots.
    """
    e = F.normalize(embeddings, dim=-1)
    sim = torch.bmm(e, e.transpose(1, 2))                                  # (K, M, M)
    w = torch.where(mask, weights, 0).to(sim.dtype)
    ww = w[:, :, None] * w[:, None, :]
    ww = ww * (1 - torch.eye(ww.shape[-1], dtype=ww.dtype, device=ww.device))
    total = ww.sum((1, 2))
    return torch.where(total > 0, (sim * ww).sum((1, 2)) / total.clamp_min(1e-30), math.nan)


def random_maps(index: Tensor, n_maps: int, size: tuple[int, int], seed: int = 0) -> Tensor:
    """(B, R, H, W) random attribution maps ``max(U, t)`` (App. C.3) of images ``index``
    (B,), drawn from one generator per image seeded by ``(seed, image)``: the same image gets
    the same maps whatever the chunking."""
    out = torch.empty(len(index), n_maps, *size)
    g = torch.Generator()
    for i, n in enumerate(index.tolist()):
        g.manual_seed(seed * 1_000_003 + int(n))
        u = torch.rand(n_maps, *size, generator=g)
        out[i] = torch.maximum(u, torch.rand(n_maps, 1, 1, generator=g))
    return out


def _padded(concepts: Tensor, n_concepts: int) -> tuple[Tensor, int]:
    """Slot of each pair within its concept (pairs grouped by concept) and the slot count."""
    counts = torch.bincount(concepts, minlength=n_concepts)
    order = concepts.argsort(stable=True)
    starts = counts.cumsum(0) - counts
    slot = torch.empty_like(concepts)
    slot[order] = torch.arange(len(concepts), device=concepts.device) - starts[concepts[order]]
    return slot, int(counts.max()) if len(concepts) else 0


class C2Score:
    """The C2-score (FaCT Eq. 16) with the paper's selection and random baseline (App. C.3).

    Parameters
    ----------
    fraction, at_least, min_images : image selection ``S_k`` (:func:`select_images`).
    n_random : random concepts averaged into the baseline ``Cons_rand``.
    seed : seeds the random maps (per image, see :func:`random_maps`).

    ``C2Score()(maps, presence, features)`` scores dense inputs at once; for large sets
    use :meth:`accumulator` and feed image chunks.
    """

    name = "c2-score"
    score_direction = "higher"

    def __init__(self, fraction: float = 0.05, at_least: int = 10, min_images: int = 5,
                 n_random: int = 3, seed: int = 0) -> None:
        if n_random < 1:
            raise IerfError(f"n_random must be ≥ 1, got {n_random}")
        self.fraction, self.at_least, self.min_images = fraction, at_least, min_images
        self.n_random, self.seed = n_random, seed

    def select(self, presence: Tensor) -> Tensor:
        """``S_k`` (N, K) bool (:func:`select_images` with this metric's settings)."""
        return select_images(presence, self.fraction, self.at_least, self.min_images)

    def accumulator(self, presence: Tensor) -> C2Accumulator:
        """A :class:`C2Accumulator` for concepts with presences (N, K) on N images."""
        return C2Accumulator(self, presence)

    def __call__(self, maps: Tensor, presence: Tensor, features: Tensor) -> C2Result:
        """Score K concepts from dense inputs.

        Parameters
        ----------
        maps : (N, K, H, W) attribution of every concept on every image.
        presence : (N, K) presences ``p_k(n)``.
        features : (N, D, h, w) dense features of the independent model.
        """
        if maps.shape[:2] != presence.shape:
            raise IerfError(f"maps {tuple(maps.shape)} and presence {tuple(presence.shape)} "
                            "must both start with (N images, K concepts)")
        acc = self.accumulator(presence)
        ids, valid = acc.concepts_for(0, len(presence))
        acc.add(0, features, maps.gather(1, ids[..., None, None].expand(-1, -1,
                                                                     *maps.shape[-2:])), valid)
        return acc.result()


class C2Accumulator:
    """Streams image chunks into a C2-score: only the selected (concept, image) pairs of a
    chunk need attribution maps, and only the chunk's features are held.

    >>> acc = C2Score().accumulator(presence)               # doctest: +SKIP
    >>> for start in range(0, N, 32):                       # doctest: +SKIP
    ...     ids, valid = acc.concepts_for(start, start + 32)
    ...     acc.add(start, features(x[start:start + 32]), maps_of(ids), valid)
    >>> result = acc.result()                               # doctest: +SKIP
    """

    def __init__(self, metric: C2Score, presence: Tensor) -> None:
        self.metric = metric
        self.presence = presence.detach().float().cpu()
        self.selected = metric.select(self.presence)                       # (N, K)
        self._pairs: list[tuple[Tensor, Tensor, Tensor]] = []
        self._random: list[tuple[Tensor, Tensor]] = []
        self._feature_sum: Tensor | None = None
        self._feature_count = 0
        self._seen = torch.zeros(len(presence), dtype=torch.bool)

    @property
    def n_concepts(self) -> int:
        return self.presence.shape[1]

    def concepts_for(self, start: int, stop: int) -> tuple[Tensor, Tensor]:
        """The selected concepts of images ``start:stop``: ids (B, M) padded with concept 0,
        and valid (B, M) bool; M ≥ 1."""
        sel = self.selected[start:stop]
        m = max(int(sel.sum(1).max()) if len(sel) else 0, 1)
        ids = sel.float().argsort(dim=1, descending=True, stable=True)[:, :m]
        valid = sel.gather(1, ids)
        return torch.where(valid, ids, 0), valid

    def add(self, start: int, features: Tensor, maps: Tensor, valid: Tensor) -> None:
        """Add images ``start:start + B``: their features (B, D, h, w), the maps (B, M, H, W)
        of the concepts :meth:`concepts_for` gave, and its ``valid`` mask."""
        b = len(features)
        index = torch.arange(start, start + b)
        if self._seen[index].any():
            raise IerfError(f"images {start}..{start + b - 1} were already added")
        self._seen[index] = True
        ids, expected = self.concepts_for(start, start + b)
        if maps.shape[:2] != ids.shape or not torch.equal(valid.cpu(), expected):
            raise IerfError(f"maps for images {start}..{start + b - 1} must be shaped "
                            f"{tuple(ids.shape)} (B, M) as concepts_for gave")
        features = features.detach().float()
        total = features.sum((0, 2, 3)).cpu()
        self._feature_sum = total if self._feature_sum is None else self._feature_sum + total
        self._feature_count += features[:, 0].numel()
        emb, mass = pool(maps.detach().float().to(features.device), features)
        keep = valid.to(mass.device) & (mass > 0)
        b_idx, m_idx = keep.nonzero(as_tuple=True)
        concept = ids.to(mass.device)[b_idx, m_idx].cpu()
        self._pairs.append((concept, emb[b_idx, m_idx].cpu(),
                            self.presence[b_idx.cpu() + start, concept]))
        rand = random_maps(index, self.metric.n_random, tuple(maps.shape[-2:]), self.metric.seed)
        r_emb, _ = pool(rand.to(features.device), features)
        self._random.append((r_emb.cpu(), rand.sum((-2, -1))))

    def result(self) -> C2Result:
        """Eqs. 14–16 over the images added so far (centred by their mean feature)."""
        if self._feature_sum is None:
            raise IerfError("no images were added")
        mean = self._feature_sum / self._feature_count                    # μ (D,)
        concept, emb, weight = (torch.cat(t) for t in zip(*self._pairs))
        K = self.n_concepts
        slot, m = _padded(concept, K)
        E = torch.zeros(K, max(m, 1), emb.shape[-1])
        W = torch.zeros(K, max(m, 1))
        E[concept, slot] = emb - mean
        W[concept, slot] = weight
        mask = W > 0
        cons = consistency(E, W, mask)
        n_images = mask.sum(1)
        cons = torch.where(n_images >= self.metric.min_images, cons, math.nan)
        r_emb = torch.cat([e for e, _ in self._random]).transpose(0, 1) - mean   # (R, N, D)
        r_w = torch.cat([w for _, w in self._random]).transpose(0, 1)             # (R, N)
        rand = consistency(r_emb, r_w, r_w > 0)
        return C2Result(cons - rand.mean(), cons, torch.where(cons.isnan(), 0, n_images), rand)

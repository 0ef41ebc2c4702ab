"""Batched spherical 2-means: the split step of bisecting spherical k-means (GIG App. B, step 2).

Every split of one round of :func:`ierf.concepts.extractors.kmeans.bisecting_spherical_kmeans`
runs at once: the clusters' unit rows are laid out as a padded ``(S, L, C)`` batch (the
clusters of a round are within a factor two in size, so padding at most doubles the work),
all ``n_init`` restarts share it, and Lloyd's iterations are batched matrix products. The
time goes into reading the rows, so the iterations read as few as they can: Hamerly's bound
skips the rows that cannot change half, the half sums move by the rows that did, a cluster
stops once (almost) no row changes, and the batch is compacted whenever half of it has.
"""

from __future__ import annotations

import torch


def spherical_two_means(Z: torch.Tensor, segment: torch.Tensor, n_segments: int, *,
                        n_init: int, max_iter: int, tol: float, generator: torch.Generator,
                        n_trials: int = 2) -> torch.Tensor:
    """Split every segment of unit rows ``Z (M, C)`` by spherical 2-means (GIG App. B, step 2).

    ``segment (M,)`` (sorted, every segment of ``≥ 2`` rows) says which cluster each row
    belongs to; all clusters and all ``n_init`` restarts run batched. Each restart is seeded
    by greedy k-means++ (:func:`_seeds`) and alternates cosine assignment (``z·c₁ > z·c₀``)
    and normalised-sum centroid updates ``c = Σ z / ‖Σ z‖`` until at most ``tol`` times its
    rows change half in an iteration, summed over the restarts (``tol = 0``: until none
    does), or for ``max_iter`` assignments. Per cluster, the restart with the highest total
    cosine similarity to its centroids (lowest spherical inertia) wins. Random draws come
    from ``generator`` on the CPU, so a seed gives the same splits on every device (up to
    float rounding).

    Returns
    -------
    (M,) bool: ``True`` for the rows of the second half (the half without the cluster's
    first row). Both halves of every cluster are non-empty.
    """
    sizes = torch.bincount(segment, minlength=n_segments)
    starts = torch.cumsum(sizes, 0) - sizes
    position = torch.arange(len(Z), device=Z.device) - starts[segment]
    L, C = int(sizes.max()), Z.shape[1]
    valid = torch.arange(L, device=Z.device) < sizes[:, None]            # (S, L)
    x = Z.new_zeros(n_segments, L, C)                                  # (S, L, C)
    x.view(-1, C).index_copy_(0, segment * L + position, Z)
    centroids, margin = _seeds(x, valid, sizes, n_init, n_trials, generator)
    assign, score = _lloyd(x, valid, sizes, centroids, margin, max_iter, tol)
    best = score.argmax(1)                        # Σ_i cos(z_i, c_k(i)) for normalised sums
    split = assign[segment, position, best[segment]]
    # orient every split so that the cluster's first row stays in the first half: restarts
    # that found the same partition with the halves swapped (equal scores up to rounding)
    # then give the same labels
    split = split ^ split[starts][segment]
    second_size = torch.zeros_like(sizes).index_add_(0, segment, split.long())
    lone = (second_size == 0) | (second_size == sizes)   # rows coincide: split one row off
    return torch.where(lone[segment], position == 0, split)


def _seeds(x: torch.Tensor, valid: torch.Tensor, sizes: torch.Tensor, n_init: int,
           n_trials: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Initial centroids (S, R, 2, C) of ``R = n_init`` restarts per padded cluster, and the
    (S, L, R) margins ``z·(s₂ − s₁)`` of the rows at them.

    Greedy k-means++ (Arthur & Vassilvitskii 2007; scikit-learn's variant): the first seed
    ``s₁`` is a uniform random member; ``n_trials`` candidates for the second are drawn with
    probability ∝ ``1 − cos`` to the first (the squared distance on the unit sphere), and
    the one with the highest total ``Σ_i max(cos(z_i, s₁), cos(z_i, s₂))`` is kept.
    """
    (S, L, _), R, T, device = x.shape, n_init, n_trials, x.device
    rows = torch.arange(S, device=device)[:, None]
    first = (torch.rand(S, R, generator=generator) * sizes.cpu()[:, None]).long()
    seed = x[rows, first.to(device)]                                    # (S, R, C)
    cos1 = torch.bmm(x, seed.transpose(1, 2))                           # (S, L, R)
    weight = ((1 - cos1).clamp_min(0) * valid[..., None]).transpose(1, 2)  # (S, R, L)
    weight = torch.where(weight.sum(-1, keepdim=True) > 0, weight,
                         valid[:, None].to(x.dtype))            # all rows equal: uniform
    cumulative = weight.cumsum(-1)
    draw = torch.rand(S, R, T, generator=generator).to(device)
    candidate = torch.searchsorted(cumulative, draw * cumulative[..., -1:]).clamp_max(L - 1)
    cos2 = torch.bmm(x, x[rows[..., None], candidate].flatten(1, 2).transpose(1, 2)
                     ).view(S, L, R, T)
    gain = (torch.maximum(cos2, cos1[..., None]) * valid[..., None, None]).sum(1)  # (S, R, T)
    best = gain.argmax(2, keepdim=True)                                 # (S, R, 1)
    second = x[rows, candidate.gather(2, best)[..., 0]]
    margin = cos2.gather(3, best[:, None].expand(S, L, R, 1))[..., 0] - cos1
    return torch.stack([seed, second], 2), margin


def _lloyd(x: torch.Tensor, valid: torch.Tensor, sizes: torch.Tensor, centroids: torch.Tensor,
           margin: torch.Tensor, max_iter: int, tol: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Spherical Lloyd iterations of all restarts from ``centroids (S, R, 2, C)``, at which
    the unit rows have margins ``margin = z·(c₁ − c₀)`` (S, L, R).

    A row is on the second half iff its margin is positive. Hamerly's bound makes the late
    iterations cheap: when ``δ = c₁ − c₀`` moves by ``‖Δδ‖`` a margin moves by at most
    ``‖Δδ‖`` (``‖z‖ = 1``), so only the rows whose last exact ``|margin|``, less the drift
    since, is not positive are recomputed, and the half sums move by the rows that changed
    half; while most rows need it (the first iterations), batched products redo them all.
    A cluster leaves the batch once at most ``tol · size`` rows change in an iteration.

    Returns the (S, L, R) bool assignment (``True``: second centroid) and the (S, R) score
    ``Σ_i cos(z_i, c_k(i)) = ‖Σ_{half 0} z‖ + ‖Σ_{half 1} z‖`` at convergence.
    """
    (S, L, C), R = x.shape, centroids.shape[1]
    ok = valid[..., None]
    side = (margin > 0) & ok                                            # (S, L, R)
    bound = torch.where(ok, margin.abs(), torch.inf)     # padding is never recomputed
    ones = torch.bmm(torch.cat([side, ok], 2).transpose(1, 2).to(x.dtype), x)
    ones, total = ones[:, :R].contiguous(), ones[:, R:]   # Σ_{half 1} z, Σ z: (S, R|1, C)
    assign, score = torch.zeros_like(side), x.new_zeros(S, R)
    live = torch.arange(S, device=x.device)       # the clusters still in the working set
    delta = centroids[:, :, 1] - centroids[:, :, 0]                     # (s, R, C)
    rows, limit = x.view(-1, C), tol * sizes

    def write_back() -> None:
        assign[live] = side
        score[live] = (total - ones).norm(dim=-1) + ones.norm(dim=-1)

    for _ in range(max_iter - 1):
        sums = torch.stack([total - ones, ones], 2)                      # (s, R, 2, C)
        norms = sums.norm(dim=-1, keepdim=True)
        centroids = torch.where(norms > 0, sums / norms.clamp_min(1e-30), centroids)
        moved, delta = delta, centroids[:, :, 1] - centroids[:, :, 0]
        bound -= (delta - moved).norm(dim=-1)[:, None]
        stale = (bound <= 0).view(-1).nonzero().squeeze(1)     # flat indices into (s, L, R)
        work, gathered = len(live) * L, None     # work: rows a batched product reads
        if 4 * len(stale) >= work:                # most rows: redo all margins at once
            xs = x if len(live) == S else x.index_select(0, live)
            m = torch.bmm(xs, delta.transpose(1, 2))
            bound = torch.where(ok[live], m.abs(), torch.inf)
            flip = (((m > 0) & ok[live]) != side).view(-1).nonzero().squeeze(1)
        else:
            gathered = rows.index_select(0, live[stale // (L * R)] * L + stale // R % L)
            m = torch.linalg.vecdot(gathered, delta.view(-1, C).index_select(
                0, stale // (L * R) * R + stale % R))                     # exact margins
            bound.view(-1)[stale] = m.abs()
            changed = (m > 0) != side.view(-1)[stale]
            flip, gathered = stale[changed], gathered[changed]
        side.view(-1)[flip] = ~side.view(-1)[flip]
        s = flip // (L * R)
        if 4 * len(flip) >= work:
            xs = x if len(live) == S else x.index_select(0, live)
            ones = torch.bmm(side.transpose(1, 2).to(x.dtype), xs)
        else:              # Σ_{half 1} z moves by the rows that changed half
            if gathered is None:
                gathered = rows.index_select(0, live[s] * L + flip // R % L)
            sign = side.view(-1)[flip].to(x.dtype) * 2 - 1
            ones.view(-1, C).index_put_((s * R + flip % R,), gathered * sign[:, None],
                                        accumulate=True)
        moving = torch.bincount(s, minlength=len(live)) > limit[live]
        n_moving = int(moving.sum())
        if n_moving == 0:
            break
        if 2 * n_moving <= len(live):
            write_back()
            live, side, bound, total, ones, centroids, delta = (
                t[moving] for t in (live, side, bound, total, ones, centroids, delta))
    write_back()
    return assign, score

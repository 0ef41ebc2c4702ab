"""KernelSHAP over image patches (Lundberg & Lee 2017), batched over many explained scalars —
the sampling-based attributor the CAFE comparison includes (IERF Sec. V-C1, Fig. 7).

Players are the cells of a patch grid; a coalition keeps its patches and replaces the others
with the baseline. The Shapley values solve the kernel-weighted least squares
``min_φ Σ_z π(z) (f(z) − f(∅) − zᵀφ)²`` under efficiency ``Σ_j φ_j = f(x) − f(∅)`` (the
constraint is eliminated through the last player). Every explained image uses the same
coalitions, so the evaluations run as one batched pass per chunk and the least squares is
one solve with one right-hand side per image. When all ``2^F − 2`` proper coalitions fit in
``n_samples``, they are all used with their exact kernel weights and the values are the exact
Shapley values; otherwise coalition sizes are drawn in proportion to the kernel's mass per
size, each coalition together with its complement (paired sampling), all weighted equally.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ierf.errors import IerfError


def coalitions(n_players: int, n_samples: int, generator: torch.Generator
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Coalitions ``(S, F)`` (1 = present; never empty or full) and their weights ``(S,)``."""
    Fp = n_players
    if Fp < 2:
        raise IerfError(f"KernelSHAP needs at least 2 players (patches), got {Fp}")
    if 2 ** Fp - 2 <= n_samples:
        codes = torch.arange(1, 2 ** Fp - 1)
        Z = ((codes[:, None] >> torch.arange(Fp)) & 1).float()
        k = Z.sum(1)
        sizes = torch.tensor([math.comb(Fp, int(s)) for s in k.tolist()], dtype=torch.float)
        return Z, (Fp - 1) / (sizes * k * (Fp - k))
    sizes = torch.arange(1, Fp, dtype=torch.float)
    mass = (Fp - 1) / (sizes * (Fp - sizes))                 # kernel mass of each size
    half = (n_samples + 1) // 2
    k = sizes[torch.multinomial(mass / mass.sum(), half, replacement=True, generator=generator)]
    ranks = torch.rand(half, Fp, generator=generator).argsort(1).argsort(1)
    Z = (ranks < k[:, None]).float()                          # k random players present
    Z = torch.stack([Z, 1 - Z], 1).reshape(-1, Fp)
    return Z, torch.ones(len(Z))


def kernel_shap(score: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                baselines: torch.Tensor | float | None, grid: tuple[int, int], *,
                n_samples: int = 256, seed: int = 0, batch_size: int = 64) -> torch.Tensor:
    """Shapley values ``(B, gh, gw)`` of the patches of each image for its own scalar.

    Parameters
    ----------
    score : images ``(N, 3, H, W) → (N,)``; a batch of ``k·B`` rows holds coalition-major
        copies of the ``B`` images (row ``s·B + i`` is image ``i``), as CAFE's
        :func:`~ierf.cafe.attribution.latent_score` matches them.
    x : (B, 3, H, W) images; ``baselines``: what an absent patch shows (``None``: zeros, a
        number, or a tensor broadcastable to ``x``).
    grid : ``(gh, gw)`` patch grid; every patch is one player.
    n_samples : coalitions evaluated per image; ``batch_size``: rows per pass.
    """
    B, _, H, W = x.shape
    gh, gw = grid
    if H % gh or W % gw:
        raise IerfError(f"a {gh}×{gw} patch grid does not tile {H}×{W} images")
    base = torch.zeros_like(x) if baselines is None else torch.as_tensor(
        baselines, dtype=x.dtype, device=x.device).expand_as(x)
    Z, w = coalitions(gh * gw, n_samples, torch.Generator().manual_seed(seed))
    Z, w = Z.to(x), w.to(x)
    masks = F.interpolate(Z.reshape(-1, 1, gh, gw), size=(H, W), mode="nearest")  # (S,1,H,W)
    step = max(1, batch_size // B)
    with torch.no_grad():
        full, empty = score(x), score(base)
        Y = torch.cat([score((m[:, None] * x + (1 - m[:, None]) * base).flatten(0, 1)
                             ).reshape(-1, B) for m in masks.split(step)])             # (S, B)
    delta = full - empty
    last = Z[:, -1:]
    A = Z[:, :-1] - last                                          # efficiency eliminated
    b = Y - empty - last * delta
    Aw = A * w[:, None]
    phi = torch.linalg.lstsq((Aw.T @ A).double(), (Aw.T @ b).double()).solution.to(x)
    phi = torch.cat([phi, (delta - phi.sum(0))[None]])            # (F, B)
    return phi.T.reshape(B, gh, gw)

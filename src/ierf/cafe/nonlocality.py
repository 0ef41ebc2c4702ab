"""Non-locality of SAE latents (IERF Sec. V-A, V-C2, Fig. 8): how far a latent's evidence lies
from the token where it fires.

Per (latent, image) pair, on the patch grid, with the iERF's positive part normalised to a
distribution ``m`` over patches (evidence *for* the latent):

- ``outside``: ``1 − Σ_{q ∈ 𝒩_r(p*)} m_q``, the share of iERF mass outside the firing
  token's neighbourhood (patches within Chebyshev distance ``r`` of ``p*``); uniform mass
  would give ``1 − |𝒩_r(p*)| / N`` (``chance_outside``);
- ``distance``: patches between ``p*`` and the iERF's centre of mass;
- ``spread``: mass-weighted mean distance of the iERF from its own centre of mass;
- ``outside_self``: ``outside`` around the iERF's own strongest patch instead of ``p*``
  (how concentrated the evidence is, wherever it is).

A CLS latent has no firing patch: ``outside``, ``distance`` and ``chance_outside`` are NaN,
``spread`` and ``outside_self`` still say whether its evidence is local or scattered.
"""

from __future__ import annotations

import torch

NAMES = ("outside", "distance", "spread", "outside_self", "chance_outside")


def patch_coordinates(grid: tuple[int, int], device: torch.device | str = "cpu"
                      ) -> torch.Tensor:
    """``(N, 2)`` (row, column) of each patch of ``grid``, row-major."""
    rows, cols = torch.meshgrid(torch.arange(grid[0], device=device),
                                torch.arange(grid[1], device=device), indexing="ij")
    return torch.stack([rows.flatten(), cols.flatten()], 1).float()


def evidence_distribution(patch_mass: torch.Tensor) -> torch.Tensor:
    """``(P, N)`` positive part of per-patch iERF mass, normalised to sum 1 (NaN rows where
    there is no positive mass)."""
    pos = patch_mass.clamp_min(0)
    total = pos.sum(1, keepdim=True)
    return torch.where(total > 0, pos / total.clamp_min(1e-30), float("nan"))


def _outside(m: torch.Tensor, centre: torch.Tensor, coords: torch.Tensor, radius: int
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mass outside, and the uniform share outside, the radius-``r`` window of ``centre``."""
    near = ((coords[None] - centre[:, None]).abs().amax(-1) <= radius).float()  # (P, N)
    return 1 - (m * near).sum(1), 1 - near.sum(1) / coords.shape[0]


def nonlocality(patch_mass: torch.Tensor, position: torch.Tensor, grid: tuple[int, int],
                radius: int = 1) -> dict[str, torch.Tensor]:
    """Per-pair statistics of :data:`NAMES` (module docstring), each ``(P,)``.

    Parameters
    ----------
    patch_mass : (P, N) iERF summed per patch (:func:`ierf.cafe.insertion.pool_to_patches`).
    position : (P,) firing token ``p*`` (patch index; negative for a CLS latent).
    grid : the patch grid (h, w), ``h · w = N``.
    radius : neighbourhood radius in patches (1: the 3 × 3 window).
    """
    coords = patch_coordinates(grid, patch_mass.device)
    m = evidence_distribution(patch_mass)
    com = m @ coords                                                          # (P, 2)
    spread = (m * (coords[None] - com[:, None]).norm(dim=-1)).sum(1)
    is_cls = position < 0
    peak = coords[position.clamp_min(0).to(coords.device)]
    outside, chance = _outside(m, peak, coords, radius)
    distance = (peak - com).norm(dim=-1)
    own = coords[m.nan_to_num(-1).argmax(1)]
    outside_self, _ = _outside(m, own, coords, radius)
    nan = torch.full_like(outside, float("nan"))
    return {"outside": torch.where(is_cls, nan, outside),
            "distance": torch.where(is_cls, nan, distance),
            "spread": spread, "outside_self": outside_self,
            "chance_outside": torch.where(is_cls, nan, chance)}


def summarise(stats: dict[str, torch.Tensor]) -> dict[str, tuple[float, float, int]]:
    """``name → (mean, standard error, n)`` over the finite values of each statistic."""
    out = {}
    for name, values in stats.items():
        v = values[torch.isfinite(values)].double()
        n = len(v)
        se = (v.std() / n ** 0.5).item() if n > 1 else float("nan")
        out[name] = (v.mean().item() if n else float("nan"), se, n)
    return out

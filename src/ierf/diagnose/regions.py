"""Where in the image a diagnosis points: route region maps, mass shares against chance, the
perturbation's energy (IERF Sec. VI-D, VI-E; Fig. 12: "the red route from the upper half").

All maps are non-negative and read as distributions over pixels: a map's **mass share** on
a region ``Ω`` is ``Σ_{p∈Ω} m_p / Σ_p m_p`` and its **chance level** is the area share
``|Ω| / |image|`` — the share a map spread evenly over the image would have.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ierf.errors import IerfError
from ierf.graph.concept_graph import OUTPUT
from ierf.graph.routes import NodeLocations, Route


def unit_mass(maps: torch.Tensor) -> torch.Tensor:
    """The positive part of maps (…, H, W), each scaled to sum to 1 (an all-zero map stays 0)."""
    m = maps.float().clamp_min(0)
    total = m.sum((-2, -1), keepdim=True)
    return torch.where(total > 0, m / total.clamp_min(torch.finfo(m.dtype).tiny), 0.0)


def route_region_map(routes: Sequence[Route], locations: NodeLocations) -> torch.Tensor:
    """The image region that feeds a class's routes: (H, W), unit mass.

    Each route's concept nodes' iERFs (positive part, each scaled to unit mass so that every
    layer weighs the same) are averaged into the route's map, and the routes' maps are
    averaged with weights ``|strength|`` (:func:`ierf.graph.routes.trace_routes`):

        ``M = Σ_r (|s_r| / Σ_r' |s_r'|) · (1 / L_r) Σ_{n ∈ r} iERF_n⁺ / ‖iERF_n⁺‖₁``.

    Class nodes are left out (their iERF is the class's SRD map, shown on its own).
    """
    if not routes:
        raise IerfError("no routes to map; trace some with trace_routes(graph, class_)")
    ids = locations.node_ids
    rows, cols = [], []
    for r, route in enumerate(routes):            # a handful of routes, a few nodes each
        for node in route.nodes:
            if node.rpartition(":")[0] == OUTPUT:
                continue
            if node not in ids:
                raise IerfError(f"no location for {node!r}; locate the routes' nodes first")
            rows.append(r)
            cols.append(ids.index(node))
    incidence = torch.zeros(len(routes), len(ids))
    incidence[rows, cols] = 1.0
    incidence = incidence / incidence.sum(1, keepdim=True).clamp_min(1.0)
    s = torch.tensor([abs(r.strength) for r in routes])
    w = s / s.sum() if float(s.sum()) > 0 else torch.full_like(s, 1 / len(s))
    return unit_mass(torch.einsum("r,rn,nhw->hw", w, incidence, unit_mass(locations.ierfs)))


def mass_share(maps: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """Share of each map's positive mass (…, H, W) inside ``region`` (…, H, W) (bool):
    ``Σ_{Ω} m⁺ / Σ m⁺`` (0 for an all-zero map)."""
    if maps.shape[-2:] != region.shape[-2:]:
        raise IerfError(f"maps {tuple(maps.shape)} and region {tuple(region.shape)} differ "
                        "in size")
    m = maps.float().clamp_min(0)
    total = m.sum((-2, -1))
    inside = (m * region.to(m)).sum((-2, -1))
    return torch.where(total > 0, inside / total.clamp_min(torch.finfo(m.dtype).tiny), 0.0)


def area_share(region: torch.Tensor) -> torch.Tensor:
    """The chance level of :func:`mass_share`: ``|Ω| / |image|`` of a region (…, H, W)."""
    return region.float().mean((-2, -1))


def perturbation_energy(delta: torch.Tensor) -> torch.Tensor:
    """Per-pixel energy ``Σ_channels δ²`` of perturbations (B, C, H, W) → (B, H, W)."""
    if delta.dim() != 4:
        raise IerfError(f"expected perturbations (B, C, H, W), got {tuple(delta.shape)}")
    return (delta.float() ** 2).sum(1)


def energy_region(energy: torch.Tensor, fraction: float = 0.5) -> torch.Tensor:
    """The fewest pixels holding ``fraction`` of each map's energy (…, H, W) → bool (…, H, W).

    Pixels are taken in decreasing energy until the cumulative share reaches ``fraction``
    (ties in an even map are broken by position: its region is then ``fraction`` of the
    image, and its chance level equals that share)."""
    if not 0 < fraction <= 1:
        raise IerfError(f"fraction must be in (0, 1], got {fraction}")
    flat = energy.float().flatten(-2)
    total = flat.sum(-1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
    values, order = flat.sort(dim=-1, descending=True, stable=True)
    before = (values.cumsum(-1) - values) / total
    keep = before < fraction
    region = torch.zeros_like(keep).scatter(-1, order, keep)
    return region.reshape(energy.shape)


def halves(height: int, width: int, axis: str = "vertical") -> torch.Tensor:
    """(2, H, W) bool: the left and right halves (``"vertical"`` split) or the top and bottom
    halves (``"horizontal"``)."""
    if axis not in ("vertical", "horizontal"):
        raise IerfError(f"axis must be 'vertical' or 'horizontal', got {axis!r}")
    if axis == "vertical":
        first = (torch.arange(width) < width // 2).expand(height, width)
    else:
        first = (torch.arange(height) < height // 2)[:, None].expand(height, width)
    return torch.stack([first, ~first])

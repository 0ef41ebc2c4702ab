"""Non-locality of latent iERFs (IERF Sec. V-A, V-C2, Fig. 8)."""

from __future__ import annotations

import math

import torch

from ierf.cafe.nonlocality import nonlocality, summarise


def test_local_far_cls_and_uniform_evidence() -> None:
    grid = (8, 8)
    mass = torch.zeros(4, 64)
    mass[0, 9] = 1.0                    # on the firing token (1, 1)
    mass[1, 63] = 2.0                   # far corner (7, 7), firing token (0, 0)
    mass[1, 0] = -5.0                   # negative evidence does not count
    mass[2, 27] = mass[2, 36] = 1.0     # a CLS latent with two-patch evidence
    mass[3] = 1.0                       # uniform
    position = torch.tensor([9, 0, -1, 27])
    s = nonlocality(mass, position, grid)
    assert s["outside"][0] == 0 and s["distance"][0] == 0 and s["spread"][0] == 0
    assert s["outside"][1] == 1 and math.isclose(s["distance"][1].item(), 7 * 2 ** 0.5,
                                                 rel_tol=1e-6)
    assert s["outside_self"][1] == 0
    assert s["outside"][2].isnan() and s["distance"][2].isnan()
    assert math.isclose(s["spread"][2].item(), 2 ** 0.5 / 2, rel_tol=1e-6)
    assert s["outside_self"][2] == 0                                   # (3,3)-(4,4) adjacent
    assert math.isclose(s["outside"][3].item(), s["chance_outside"][3].item(), rel_tol=1e-6)
    assert math.isclose(s["chance_outside"][3].item(), 1 - 9 / 64, rel_tol=1e-6)
    summary = summarise(s)
    assert summary["outside"][2] == 3 and summary["spread"][2] == 4


def test_no_positive_mass_gives_nan() -> None:
    s = nonlocality(-torch.ones(1, 16), torch.tensor([0]), (4, 4))
    assert all(v.isnan().all() for k, v in s.items() if k != "chance_outside")

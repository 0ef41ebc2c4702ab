"""KernelSHAP over patches (CAFE's sampling-based attributor): exact Shapley values when every
coalition is enumerated (checked against the Shapley formula), efficiency always, batching."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from ierf.cafe.attribution import latent_ierfs, latent_score
from ierf.cafe.kernelshap import coalitions, kernel_shap
from ierf.cafe.latents import latent_activations, select_pairs, token_positions
from ierf.concepts.basis import ConceptBasis
from ierf.data.synthetic import generate
from ierf.errors import IerfError
from ierf.models.zoo import WEIGHTS_DIR


def game(x: torch.Tensor) -> torch.Tensor:
    """A non-additive scalar of 2 × 2-patch images: interactions between the quadrants."""
    q = torch.nn.functional.avg_pool2d(x.sum(1, keepdim=True), 4).flatten(1)   # (N, 4)
    return q[:, 0] * q[:, 1] + q[:, 2] ** 2 - q[:, 3] * q[:, 0] + q.sum(1)


def shapley(x: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """Shapley values of the four quadrants by the formula, over every subset."""
    F = 4
    phi = torch.zeros(F)
    for j in range(F):
        others = [i for i in range(F) if i != j]
        for r in range(F):
            for S in itertools.combinations(others, r):
                def value(players: tuple[int, ...]) -> float:
                    m = torch.zeros(1, 1, 2, 2)
                    for p in players:
                        m[0, 0, p // 2, p % 2] = 1
                    m = torch.nn.functional.interpolate(m, size=(8, 8), mode="nearest")
                    return float(game(m * x + (1 - m) * base))
                weight = math.factorial(r) * math.factorial(F - r - 1) / math.factorial(F)
                phi[j] += weight * (value((*S, j)) - value(S))
    return phi


def test_all_coalitions_give_the_exact_shapley_values() -> None:
    g = torch.Generator().manual_seed(0)
    x, base = torch.rand(3, 3, 8, 8, generator=g), torch.rand(3, 3, 8, 8, generator=g)
    ours = kernel_shap(game, x, base, (2, 2), n_samples=14)          # 2^4 − 2 = 14: all
    for i in range(3):
        torch.testing.assert_close(ours[i].flatten(), shapley(x[i:i + 1], base[i:i + 1]),
                                   rtol=1e-4, atol=1e-5)


def test_sampled_values_are_efficient_and_batch_invariant() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(4, 3, 16, 16, generator=g)

    def score(images: torch.Tensor) -> torch.Tensor:      # 16 players, interactions
        q = torch.nn.functional.avg_pool2d(images.sum(1, keepdim=True), 4).flatten(1)
        return (q[:, :8] * q[:, 8:]).sum(1) + q.sum(1)

    phi = kernel_shap(score, x, None, (4, 4), n_samples=200, seed=3)
    torch.testing.assert_close(phi.sum((1, 2)), score(x) - score(torch.zeros_like(x)),
                               rtol=1e-4, atol=1e-4)
    one = torch.cat([kernel_shap(score, x[i:i + 1], None, (4, 4), n_samples=200, seed=3)
                     for i in range(4)])
    torch.testing.assert_close(one, phi, rtol=1e-4, atol=1e-5)


def test_coalitions_never_empty_or_full_and_paired() -> None:
    Z, w = coalitions(10, 100, torch.Generator().manual_seed(0))
    assert Z.shape == (100, 10) and (w == 1).all()
    assert ((Z.sum(1) > 0) & (Z.sum(1) < 10)).all()
    torch.testing.assert_close(Z[0::2] + Z[1::2], torch.ones(50, 10))      # complements
    with pytest.raises(IerfError, match="at least 2 players"):
        coalitions(1, 10, torch.Generator())


def test_cafe_kernelshap_maps_of_toy_vit_latents(toy_vit) -> None:
    sae = ConceptBasis.load(WEIGHTS_DIR / "toy-vit-sae")
    x = toy_vit.normalize(generate(3, seed=3, split="val").images)
    acts = latent_activations(toy_vit, sae, x)
    positions = token_positions(sae, toy_vit.pfvs(x[:1], sae.layer)[sae.layer])
    pairs = select_pairs(acts, positions, (acts > 0).any(1).sum(0).topk(2).indices, per_latent=1)
    maps = latent_ierfs(toy_vit, sae, x, pairs, "kernelshap", n_samples=64)
    assert maps.shape == (len(pairs), 64, 64)
    score = latent_score(toy_vit, pairs.target(sae))
    with torch.no_grad():
        delta = score(x[pairs.image]) - score(torch.zeros_like(x[pairs.image]))
    torch.testing.assert_close(maps.sum((1, 2)), delta, rtol=1e-3, atol=1e-4)

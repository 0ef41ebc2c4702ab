"""CAFE latent iERFs (IERF Eq. 10): batched over (latent, image) pairs == one pair at a time."""

from __future__ import annotations

import pytest
import torch

from ierf.cafe.attribution import latent_ierfs
from ierf.cafe.latents import (
    LatentPairs,
    PairTarget,
    latent_activations,
    select_pairs,
    token_positions,
)
from ierf.concepts.basis import BasisMismatchError, ConceptBasis
from ierf.data.synthetic import generate
from ierf.errors import IerfError
from ierf.local.attnlrp import AttnLRP
from ierf.models.zoo import WEIGHTS_DIR
from ierf.targets import LatentTarget


@pytest.fixture(scope="module")
def sae() -> ConceptBasis:
    return ConceptBasis.load(WEIGHTS_DIR / "toy-vit-sae")


@pytest.fixture(scope="module")
def setup(toy_vit, sae):
    x = toy_vit.normalize(generate(6, seed=3, split="val").images)
    acts = latent_activations(toy_vit, sae, x)
    positions = token_positions(sae, toy_vit.pfvs(x[:1], sae.layer)[sae.layer])
    latents = (acts > 0).any(1).sum(0).topk(3).indices
    return x, acts, positions, latents


def test_select_pairs_picks_each_latents_top_images_and_firing_token(setup) -> None:
    _x, acts, positions, latents = setup
    pairs = select_pairs(acts, positions, latents, per_latent=2)
    assert len(pairs) <= 6 and (pairs.activation > 0).all()
    for i in range(len(pairs)):
        k, b, p = pairs.latent[i], pairs.image[i], pairs.position[i]
        assert acts[b, :, k].max() == pairs.activation[i] == acts[b, p, k]
        others = acts[:, :, k].amax(1)
        assert (others > others[b]).sum() < 2          # among the latent's top 2 images


def test_pair_target_equals_latent_target(toy_vit, sae, setup) -> None:
    x, acts, _positions, latents = setup
    pfvs = toy_vit.pfvs(x, sae.layer)[sae.layer]
    k = int(latents[0])
    summed = PairTarget(sae.layer, sae, torch.tensor([k])).scalar(pfvs)
    assert torch.allclose(summed, LatentTarget(sae.layer, sae.extractor, k).scalar(pfvs))
    at = PairTarget(sae.layer, sae, torch.tensor([k]), torch.tensor([5])).scalar(pfvs)
    assert torch.allclose(at, acts[:, 5, k])


@pytest.mark.parametrize("method", ["attnlrp", "srd", "integrated-gradients", "grad-x-input"])
def test_batched_iERFs_equal_one_pair_at_a_time(toy_vit, sae, setup, method) -> None:
    x, acts, positions, latents = setup
    pairs = select_pairs(acts, positions, latents, per_latent=2)[:4]
    batched = latent_ierfs(toy_vit, sae, x, pairs, method, n_steps=8)
    assert batched.shape == (len(pairs), 64, 64)
    singles = torch.cat([latent_ierfs(toy_vit, sae, x, pairs[i:i + 1], method, n_steps=8)
                         for i in range(len(pairs))])
    assert torch.allclose(batched, singles, rtol=1e-4, atol=1e-5 * batched.abs().max())


def test_attnlrp_iERF_is_the_latent_targets(toy_vit, sae, setup) -> None:
    # the batched pair target reproduces AttnLRP on ierf.LatentTarget, one latent and image
    x, acts, positions, latents = setup
    pairs = select_pairs(acts, positions, latents[:1], per_latent=1)
    k, b, p = int(pairs.latent[0]), int(pairs.image[0]), int(pairs.position[0])
    ours = latent_ierfs(toy_vit, sae, x, pairs, "attnlrp")[0]
    ref = AttnLRP(toy_vit).attribute(x[b:b + 1], LatentTarget(sae.layer, sae.extractor, k, p))[0]
    assert torch.allclose(ours, ref, rtol=1e-4, atol=1e-6)


def test_sum_readout_explains_the_latent_summed_over_tokens(toy_vit, sae, setup) -> None:
    x, acts, positions, latents = setup
    pairs = select_pairs(acts, positions, latents[:1], per_latent=1, readout="sum")
    assert torch.allclose(pairs.activation, acts[pairs.image, :, pairs.latent].sum(1))
    k, b = int(pairs.latent[0]), int(pairs.image[0])
    ours = latent_ierfs(toy_vit, sae, x, pairs, "attnlrp")[0]
    ref = AttnLRP(toy_vit).attribute(x[b:b + 1], LatentTarget(sae.layer, sae.extractor, k))[0]
    assert torch.allclose(ours, ref, rtol=1e-4, atol=1e-6)


def test_bad_input(toy, toy_vit, sae, setup) -> None:
    x, acts, positions, latents = setup
    pairs = select_pairs(acts, positions, latents[:1], per_latent=1)
    with pytest.raises(BasisMismatchError, match="fitted on 'toy-vit', not 'toy-resnet'"):
        latent_ierfs(toy, sae, x, pairs)
    bad = LatentPairs(pairs.image, torch.tensor([sae.n_concepts]), pairs.position,
                      pairs.activation)
    with pytest.raises(IerfError, match="latent 768 is out of range"):
        latent_ierfs(toy_vit, sae, x, bad)
    with pytest.raises(IerfError, match="unknown CAFE attribution method 'lime'"):
        latent_ierfs(toy_vit, sae, x, pairs, "lime")
    with pytest.raises(IerfError, match="no .latent, image. pairs"):
        latent_ierfs(toy_vit, sae, x, pairs[:0])

"""The CAFE insertion test (IERF Sec. V-C1, Fig. 7)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ierf.cafe.attribution import latent_ierfs
from ierf.cafe.blanks import blank_canvas
from ierf.cafe.insertion import (
    auc,
    insertion_curves,
    insertion_masks,
    insertion_ranks,
    patch_scores,
    pool_to_patches,
    step_counts,
)
from ierf.cafe.latents import latent_activations, select_pairs, token_positions
from ierf.concepts.basis import ConceptBasis
from ierf.concepts.extractors import BiasFreeTopKSAE
from ierf.data.synthetic import generate
from ierf.errors import IerfError
from ierf.models.model import Model, Preprocessing
from ierf.models.zoo import WEIGHTS_DIR


class LinearTokens(nn.Module):
    """A bias-free linear "ViT": 4 × 4 patch embedding, then a linear mix across tokens."""

    def __init__(self) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, 8, 4, stride=4, bias=False)
        self.mix = nn.Linear(16, 16, bias=False)
        self.block = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch_embed(x).flatten(2)                   # (B, 8, 16)
        return self.block(self.mix(t).transpose(1, 2))      # (B, 16 tokens, 8)


@pytest.fixture(scope="module")
def linear():
    torch.manual_seed(0)
    model = Model(LinearTokens(), "linear-tokens", ["a"], Preprocessing((16, 16), (0.5,) * 3,
                                                                       (0.5,) * 3),
                  patch_grid=(4, 4))
    sae = BiasFreeTopKSAE(8, 6, k=6, seed=1)    # k = K: every code kept, so z is linear in x
    basis = ConceptBasis.bind(sae, model, "block")
    x = torch.randn(5, 3, 16, 16)
    acts = latent_activations(model, basis, x)
    positions = token_positions(basis, model.pfvs(x[:1], "block")["block"])
    pairs = select_pairs(acts, positions, torch.arange(6), per_latent=2)
    return model, basis, x, pairs


def test_linear_case_curve_ends_at_one_and_grad_x_input_is_the_optimal_order(linear) -> None:
    model, basis, x, pairs = linear
    assert len(pairs) >= 6
    gxi = latent_ierfs(model, basis, x, pairs, "grad-x-input")
    contributions = pool_to_patches(gxi, (4, 4))                 # exact: z is linear, z(0) = 0
    assert torch.allclose(contributions.sum(1), pairs.activation, rtol=1e-4, atol=1e-5)
    curves = insertion_curves(model, basis, x, pairs, contributions, "zero", steps=16)
    assert torch.allclose(curves[:, 0], torch.zeros(len(pairs)), atol=1e-5)
    assert torch.allclose(curves[:, -1], torch.ones(len(pairs)), atol=1e-5)
    best = contributions.sort(1, descending=True).values.cumsum(1) / pairs.activation[:, None]
    assert torch.allclose(curves[:, 1:], best, atol=1e-4)
    ig = latent_ierfs(model, basis, x, pairs, "integrated-gradients", n_steps=4)
    assert torch.allclose(ig, gxi, rtol=1e-3, atol=1e-5)          # IG = grad × input if linear
    for ranking in ("random", "activation"):
        other = insertion_curves(model, basis, x, pairs,
                                 patch_scores(model, basis, x, pairs, ranking), "zero", 16)
        assert torch.allclose(other[:, -1], torch.ones(len(pairs)), atol=1e-5)
        assert (other <= curves + 1e-4).all()                     # no order inserts faster
        assert (auc(other) <= auc(curves) + 1e-5).all()


def test_curves_end_at_one_on_toy_vit_for_every_blank(toy_vit) -> None:
    sae = ConceptBasis.load(WEIGHTS_DIR / "toy-vit-sae")
    x = toy_vit.normalize(generate(3, seed=3, split="val").images)
    acts = latent_activations(toy_vit, sae, x)
    positions = token_positions(sae, toy_vit.pfvs(x[:1], sae.layer)[sae.layer])
    pairs = select_pairs(acts, positions, (acts > 0).any(1).sum(0).topk(2).indices, 1)
    scores = patch_scores(toy_vit, sae, x, pairs, "activation")
    assert (scores.argmax(1) == pairs.position).all()    # the firing token ranks first
    for blank in ("zero", "mean", "blur"):
        curves = insertion_curves(toy_vit, sae, x, pairs, scores, blank, steps=4)
        assert curves.shape == (len(pairs), 5)
        assert torch.allclose(curves[:, -1], torch.ones(len(pairs)), atol=1e-4)


def test_masks_insert_patches_in_order() -> None:
    rank = insertion_ranks(torch.tensor([[3.0, 1.0, 2.0, 4.0]]))
    assert rank.tolist() == [[1, 3, 2, 0]]                               # patch 3 first
    assert insertion_ranks(torch.tensor([[float("nan"), 1.0]])).tolist() == [[1, 0]]
    counts = step_counts(4, 4)
    masks = insertion_masks(rank.expand(5, 4), counts, (2, 2), (4, 4))[:, 0]   # (5, 4, 4)
    assert masks[0].sum() == 0 and masks[-1].sum() == 16
    assert masks[1, 2:, 2:].all() and masks[1].sum() == 4                # patch 3 first
    assert masks[2, :2, :2].all() and masks[2].sum() == 8                # then patch 0
    assert step_counts(4, 2).tolist() == [0, 2, 4]


def test_blanks() -> None:
    x = torch.randn(3, 3, 32, 32)
    assert torch.equal(blank_canvas(x, "zero"), torch.zeros_like(x))
    assert torch.allclose(blank_canvas(x, "mean")[1], x.mean(0))
    blur = blank_canvas(x, "blur", (4, 4))
    assert blur.shape == x.shape
    assert blur.diff(dim=-1).abs().mean() < 0.2 * x.diff(dim=-1).abs().mean()
    with pytest.raises(IerfError, match="unknown blank 'noise'"):
        blank_canvas(x, "noise")
    assert torch.allclose(auc(torch.tensor([[0.0, 0.5, 1.0]])), torch.tensor([0.5]))


def test_bad_scores(linear) -> None:
    model, basis, x, pairs = linear
    with pytest.raises(IerfError, match="patch scores"):
        insertion_curves(model, basis, x, pairs, torch.zeros(len(pairs), 3))
    with pytest.raises(IerfError, match="steps must be in 1..16"):
        insertion_curves(model, basis, x, pairs, torch.zeros(len(pairs), 16), steps=17)
    with pytest.raises(IerfError, match="unknown ranking 'saliency'"):
        patch_scores(model, basis, x, pairs, "saliency")


@pytest.mark.parametrize("blank", ["zero", "mean", "blur"])
def test_ig_and_kernelshap_start_from_the_insertion_blank(linear, blank) -> None:
    """Completeness (IG, exact here as z is linear) and efficiency (KernelSHAP, exact for any
    model): Σ_p A(p) = z(I) − z(blank), and z(blank) / z(I) is the insertion curve's first
    point on the same blank."""
    model, basis, x, pairs = linear
    start = insertion_curves(model, basis, x, pairs, torch.zeros(len(pairs), 16), blank,
                             steps=1)[:, 0]
    rise = pairs.activation * (1 - start)
    for method in ("integrated-gradients", "kernelshap"):
        maps = latent_ierfs(model, basis, x, pairs, method, baselines=blank, n_steps=4,
                            n_samples=64)
        assert torch.allclose(maps.sum((1, 2)), rise, rtol=1e-3, atol=1e-4), method
    if blank != "zero":      # the default reference is the default blank, zeros
        default = latent_ierfs(model, basis, x, pairs, "integrated-gradients", n_steps=4)
        assert not torch.allclose(default.sum((1, 2)), rise, rtol=1e-3, atol=1e-4)


def test_bench_ig_follows_each_blank_unless_fixed(linear) -> None:
    from dataclasses import replace

    from ierf.cafe.bench import CafeBench, latent_pairs, run_basis

    model, basis, x, _ = linear
    bench = CafeBench(rankings=("integrated-gradients",), blanks=("zero", "blur"),
                      n_latents=4, per_latent=2, steps=8, ig_steps=4,
                      locality_method="integrated-gradients")
    follows = run_basis(model, basis, x, bench)
    fixed = run_basis(model, basis, x, replace(bench, baseline="zero"))
    pairs = latent_pairs(model, basis, x, bench)

    def ig_auc(reference: str) -> torch.Tensor:
        maps = latent_ierfs(model, basis, x, pairs, "integrated-gradients",
                            baselines=reference, n_steps=4)
        scores = patch_scores(model, basis, x, pairs, maps)
        return auc(insertion_curves(model, basis, x, pairs, scores, "blur", 8))

    key = ("integrated-gradients", "blur")
    assert torch.allclose(follows.auc[key], ig_auc("blur"), atol=1e-6)
    assert torch.allclose(fixed.auc[key], ig_auc("zero"), atol=1e-6)
    assert not torch.allclose(follows.auc[key], fixed.auc[key], atol=1e-3)
    assert torch.equal(follows.auc[("integrated-gradients", "zero")],
                       fixed.auc[("integrated-gradients", "zero")])
    with pytest.raises(IerfError, match="unknown IG / KernelSHAP baseline 'noise'"):
        CafeBench(baseline="noise")

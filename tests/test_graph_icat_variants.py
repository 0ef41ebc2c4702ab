"""ICAT with DeepLIFT, LRP-ε and Shapley values (IERF Sec. VI-C): each checked against its
mathematics (summation-to-delta, conservation, efficiency) and against Captum."""

from __future__ import annotations

import pytest
import torch
from captum.attr import DeepLift, ShapleyValues
from torch import nn

from ierf.concepts import BisectingSphericalKMeans
from ierf.concepts.basis import ConceptBasis
from ierf.data.synthetic import generate
from ierf.graph import alignment_score, icat
from ierf.models import Subnetwork
from ierf.models.model import as_model

A, B = "layer2", "layer3"


@pytest.fixture(scope="module")
def toy_pair(toy, fit_basis) -> dict:
    with torch.no_grad():
        fit = toy.pfvs(toy.normalize(generate(16, seed=1, split="train").images), [A, B])
    x = toy.normalize(generate(2, seed=0, split="test").images)
    return {"model": toy, "x": x, "a": fit_basis(toy, fit, A, 8), "b": fit_basis(toy, fit, B, 10)}


def logit_change(sub: Subnetwork, basis: ConceptBasis, x: torch.Tensor) -> torch.Tensor:
    """``logit(X̂) − logit(x̂_0)`` (B, classes): what complete class edges add up to."""
    with torch.no_grad():
        U = basis.encode(sub.pfvs_a(x).vectors)
        return sub(basis.decode(U)) - sub(basis.decode(torch.zeros_like(U)))


@pytest.mark.parametrize("method", ["deeplift", "shapley"])
def test_class_edges_add_up_to_the_logit_change_exactly(toy_pair, method) -> None:
    """Summation-to-delta (DeepLIFT, for ReLU / BatchNorm / sums) and efficiency (Shapley)
    hold exactly, not to a quadrature error as for IG."""
    s = toy_pair
    sub = Subnetwork(s["model"], B, "output")
    edges, delta = icat(sub, s["b"], None, s["x"], method, return_convergence_delta=True,
                        n_samples=8)
    diff = logit_change(sub, s["b"], s["x"])
    torch.testing.assert_close(edges.sum(1), diff, atol=1e-4 * diff.abs().max().item(),
                               rtol=0)
    assert delta.abs().max() <= 1e-4 * diff.abs().max()


def test_shapley_concept_edges_are_efficient_and_all_orderings_are_exact(toy_pair) -> None:
    s = toy_pair
    sub = Subnetwork(s["model"], A, B)
    edges, delta = icat(sub, s["a"], s["b"], s["x"], "shapley", n_samples=6,
                        return_convergence_delta=True)
    scale = edges.abs().sum(1).max().item()
    assert delta.abs().max() <= 1e-4 * scale
    # three active concepts: 3! = 6 orderings are all of them, so the values are exact and
    # independent of the seed
    U_a = s["a"].encode(sub.pfvs_a(s["x"]).vectors)
    keep = (U_a != 0).sum((0, 1)).argsort(descending=True)[:3]
    U3 = torch.zeros_like(U_a)
    U3[..., keep] = U_a[..., keep]
    one = icat(sub, s["a"], s["b"], s["x"], "shapley", U_a=U3, n_samples=6, seed=0)
    two = icat(sub, s["a"], s["b"], s["x"], "shapley", U_a=U3, n_samples=6, seed=5)
    torch.testing.assert_close(one, two, rtol=1e-5, atol=1e-6 * one.abs().max().item())


class UtoS(nn.Module):
    """Coefficients U → S (B, T) for Captum: Eq. 13 on ``M_ab(decode(U))``, or the logits."""

    def __init__(self, sub: Subnetwork, a: ConceptBasis, b: ConceptBasis | None,
                 U_b: torch.Tensor | None) -> None:
        super().__init__()
        self.sub, self.a, self.b, self.U_b = sub, a, b, U_b

    def forward(self, U: torch.Tensor) -> torch.Tensor:
        out = self.sub(self.a.decode(U))
        if self.b is None:
            return out
        U_b = self.U_b.repeat(len(U) // len(self.U_b), 1, 1)
        return alignment_score(out, U_b, self.b.dictionary,
                               offset=self.b.decode(torch.zeros(1, self.b.n_concepts))[0])


def test_shapley_equals_captum_exact_shapley_values(toy_pair) -> None:
    s = toy_pair
    sub = Subnetwork(s["model"], A, B)
    with torch.no_grad():
        U_a = s["a"].encode(sub.pfvs_a(s["x"]).vectors)[:1]
        U_b = s["b"].encode(sub(s["a"].decode(U_a)))
    keep = (U_a != 0).sum((0, 1)).argsort(descending=True)[:4]
    U4 = torch.zeros_like(U_a)
    U4[..., keep] = U_a[..., keep]
    t = int((U_b != 0).sum((0, 1)).argmax())
    ours = icat(sub, s["a"], s["b"], s["x"][:1], "shapley", [t], U_a=U4, U_b=U_b,
                n_samples=24)[0, :, 0]
    group = torch.zeros(U4.shape[-1], dtype=torch.long)      # a concept = a feature; the
    group[keep] = torch.arange(4)                            # absent ones (all 0) join #0
    mask = group.expand_as(U4).contiguous()
    with torch.no_grad():
        ref = ShapleyValues(UtoS(sub, s["a"], s["b"], U_b)).attribute(
            U4, baselines=0.0, target=t, feature_mask=mask, perturbations_per_eval=8)
    ref = ref[0, 0]                            # every position of a concept holds its value
    torch.testing.assert_close(ours[keep], ref[keep], rtol=1e-4,
                               atol=1e-5 * ref.abs().max().item())


class Tiny(nn.Module):
    """A plain conv net with a residual block and distinct ReLU modules (what Captum's
    DeepLift needs), optionally without biases (where LRP-0 = Gradient × Input)."""

    def __init__(self, bias: bool) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv0 = nn.Conv2d(3, 8, 3, padding=1, bias=bias)
        self.relu0 = nn.ReLU()
        self.conv1 = nn.Conv2d(8, 8, 3, padding=1, bias=bias)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=bias)
        self.relu2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 5, bias=bias)
        for p in self.parameters():
            p.data = torch.randn(p.shape, generator=g) * 0.4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu0(self.conv0(x))
        h = self.relu2(self.conv2(self.relu1(self.conv1(h))) + h)
        return self.fc(self.pool(h).flatten(1))


def tiny_setup(bias: bool, center: bool) -> tuple[Subnetwork, ConceptBasis, torch.Tensor]:
    model = as_model(Tiny(bias))
    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    X = model.pfvs(x, "relu0")["relu0"].vectors.flatten(0, 1)
    km = BisectingSphericalKMeans(6, center=X.mean(0) if center else None, n_init=1,
                                  max_iter=10, alpha=0.01).fit(X)
    return (Subnetwork(model, "relu0", "output", example=x), ConceptBasis.bind(km, model, "relu0"),
            x)


def test_deeplift_equals_captum_deeplift() -> None:
    sub, basis, x = tiny_setup(bias=True, center=True)
    with torch.no_grad():
        U = basis.encode(sub.pfvs_a(x).vectors)
    ours = icat(sub, basis, None, x, "deeplift", [1, 3], U_a=U)
    for j, t in enumerate((1, 3)):
        ref = DeepLift(UtoS(sub, basis, None, None)).attribute(
            U.clone(), baselines=torch.zeros_like(U), target=t).sum(1).detach()
        torch.testing.assert_close(ours[..., j], ref, rtol=1e-4,
                                   atol=1e-5 * ref.abs().max().item())


def test_lrp_zero_is_gradient_x_input_on_a_bias_free_relu_net() -> None:
    """With no biases, ReLUs, ``x̂_0 = 0`` and ``ε → 0``, LRP-0 through the residual sum
    (shared in proportion) is Gradient × Input; relevance is conserved: Σ_q = logit."""
    sub, basis, x = tiny_setup(bias=False, center=False)
    lrp = icat(sub, basis, None, x, "lrp")
    gxi = icat(sub, basis, None, x, "gradient_x_input")
    torch.testing.assert_close(lrp, gxi, rtol=1e-3, atol=1e-4 * gxi.abs().max().item())
    with torch.no_grad():
        logits = sub(basis.decode(basis.encode(sub.pfvs_a(x).vectors)))
    torch.testing.assert_close(lrp.sum(1), logits, rtol=1e-3,
                               atol=1e-4 * logits.abs().max().item())


@pytest.mark.parametrize("method", ["deeplift", "lrp", "shapley"])
def test_variants_are_batch_invariant_and_skip_absent_targets(toy_pair, method) -> None:
    s = toy_pair
    sub = Subnetwork(s["model"], A, B)
    with torch.no_grad():
        U_b = s["b"].encode(sub(sub.pfvs_a(s["x"]).vectors))
    U_b[1, :, 2] = 0                               # concept 2 now absent from image 1
    full = icat(sub, s["a"], s["b"], s["x"], method, n_samples=8, U_b=U_b)
    parts = icat(sub, s["a"], s["b"], s["x"], method, n_samples=8, internal_batch_size=1,
                 target_batch_size=3, U_b=U_b)
    torch.testing.assert_close(parts, full, rtol=1e-4, atol=1e-5 * full.abs().max().item())
    absent = (U_b == 0).all(1)                                             # (B, K_b)
    assert absent[1, 2] and (full.permute(0, 2, 1)[absent] == 0).all()
    assert (full[0, :, 2] != 0).any()


def test_the_cli_offers_every_method() -> None:
    from ierf.cli.graph import ICAT_METHODS
    from ierf.graph import METHODS

    assert ICAT_METHODS == METHODS

"""SAE feature-gradient gated TransMM (thesis Ch. 6) against a per-image, per-layer loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import median_abs_deviation
from test_transmm import reference_transmm, tiny_vit, upsample

import ierf
from ierf.concepts.extractors import SparseAutoencoder, TopKSAE
from ierf.local.attention import trace
from ierf.local.gated import (
    TOY_VIT_SAE,
    TOY_VIT_SAE_LAYER,
    GatedTransMM,
    load_toy_vit_sae,
    robust_normalise,
)


def numpy_gates(x: torch.Tensor, g: torch.Tensor, sae, variant: str, kappa: float,
                c_max: float) -> torch.Tensor:
    """Gates of Algorithm 6.1 for one image's patch tokens (N, C), with numpy/scipy statistics."""
    with torch.no_grad():
        f = sae.encode(x).double().numpy()
    grad_f = (g.double() @ sae.get_dictionary().double()).numpy()
    s = {"combined": (grad_f * f).sum(1), "activation": f.sum(1),
         "gradient": np.abs(grad_f).sum(1)}[variant]
    s_hat = (s - np.median(s)) / (median_abs_deviation(s, scale="normal") + 1e-8)
    return torch.from_numpy(np.exp(np.log(c_max) * np.tanh(kappa * s_hat))).float()


@pytest.mark.parametrize("variant", ["combined", "activation", "gradient"])
def test_gated_transmm_equals_algorithm_6_1_written_as_loops(variant):
    net = tiny_vit()
    sae = TopKSAE(8, k=4, seed=1)  # K = 64 latents on the 8-channel residual stream
    x = torch.randn(2, 3, 16, 16)
    classes = [3, 1]

    def gates(i, outputs):
        return {layer: torch.cat([torch.ones(1), numpy_gates(
            outputs[layer][0, 1:].detach(), outputs[layer].grad[0, 1:], sae, variant, 2.0, 5.0)])
            for layer in (0, 1)}

    ours = GatedTransMM(net, sae=sae, layers=[0, "blocks.1"], kappa=2.0, c_max=5.0,
                        variant=variant).attribute(x, classes)
    ref = upsample(reference_transmm(net, x, classes, gates), 1, 4, 16)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-6)


def test_c_max_one_is_vanilla_transmm_exactly():
    model = ierf.load_model("toy-vit")
    x = torch.randn(3, 3, 64, 64)
    vanilla = ierf.attributor("transmm", model).attribute(x, [0, 4, 7])
    for variant in ("combined", "activation", "gradient"):
        gated = ierf.attributor("gated-transmm", model, c_max=1.0, kappa=3.0, variant=variant)
        assert torch.equal(gated.attribute(x, [0, 4, 7]), vanilla)


def test_variants_and_the_shuffled_decoder_control():
    model = ierf.load_model("toy-vit")
    x = torch.randn(2, 3, 64, 64)
    maps = {(v, s): ierf.attributor("gated-transmm", model, variant=v, shuffled_decoder=s)
            .attribute(x, [1, 6]) for v in ("combined", "activation", "gradient")
            for s in (False, True)}
    vanilla = ierf.attributor("transmm", model).attribute(x, [1, 6])
    real = [maps[v, False] for v in ("combined", "activation", "gradient")]
    for i, a in enumerate(real):
        assert (a - vanilla).abs().max() > 1e-3 * vanilla.abs().max()
        for b in real[i + 1:]:
            assert (a - b).abs().max() > 1e-3 * vanilla.abs().max()
    # D[:, π] changes which gradient pairs with which code: only the combined score sees it
    assert (maps["combined", True] - maps["combined", False]).abs().max() > \
        1e-3 * vanilla.abs().max()
    torch.testing.assert_close(maps["activation", True], maps["activation", False])
    torch.testing.assert_close(maps["gradient", True], maps["gradient", False])


@pytest.mark.parametrize("c_max", [2.0, 10.0, 50.0])
def test_gates_lie_in_their_bounds_and_saturate(c_max):
    model = ierf.load_model("toy-vit")
    x = torch.randn(4, 3, 64, 64)
    for kappa in (0.5, 1e4):
        g = ierf.attributor("gated-transmm", model, kappa=kappa, c_max=c_max)
        block = next(iter(g.saes))
        t = trace(model, x, lambda logits: logits[:, 2], [block])
        name = g.blocks[block].name
        w = g.gates(t.residuals[name], t.residual_grads[name], block)
        assert w.shape == (4, 65) and torch.equal(w[:, 0], torch.ones(4))  # CLS untouched
        assert w.min() >= 1 / c_max * (1 - 1e-6) and w.max() <= c_max * (1 + 1e-6)
        if kappa > 1:  # saturated: half the tokens lie above the median, half below
            assert w.max() == pytest.approx(c_max, rel=1e-4)
            assert w.min() == pytest.approx(1 / c_max, rel=1e-4)


@pytest.mark.parametrize("n", [7, 16])
def test_robust_normalisation_matches_scipy(n):
    s = torch.randn(3, n, dtype=torch.float64) ** 3
    ref = [(r - np.median(r)) / (median_abs_deviation(r, scale="normal") + 1e-8) for r in s.numpy()]
    torch.testing.assert_close(robust_normalise(s), torch.from_numpy(np.stack(ref)), rtol=1e-5,
                               atol=1e-8)


def test_a_mapping_of_saes_and_any_sae_class():
    net = tiny_vit()
    x = torch.randn(1, 3, 16, 16)
    relu_sae = SparseAutoencoder(8, 32, seed=2)
    a = GatedTransMM(net, sae={1: relu_sae}).attribute(x, 2)
    b = GatedTransMM(net, sae=relu_sae, layers=["blocks.1"]).attribute(x, 2)
    assert torch.equal(a, b) and not torch.equal(a, ierf.attributor("transmm", net).attribute(x, 2))


def test_clear_errors():
    vit = ierf.load_model("vit_tiny_patch16_224", weights=None)
    with pytest.raises(ierf.IerfError, match="needs an SAE"):
        ierf.attributor("gated-transmm", vit)
    with pytest.raises(ierf.IerfError, match="layers="):
        ierf.attributor("gated-transmm", vit, sae=TopKSAE(192, k=8))
    toy = ierf.load_model("toy-vit")
    with pytest.raises(ierf.IerfError, match="combined"):
        ierf.attributor("gated-transmm", toy, variant="both")
    with pytest.raises(ierf.IerfError, match="c_max"):
        ierf.attributor("gated-transmm", toy, c_max=0.5)
    with pytest.raises(ierf.IerfError, match="96"):
        ierf.attributor("gated-transmm", toy, sae=TopKSAE(8, k=2), layers=[1]).attribute(
            torch.randn(1, 3, 64, 64))
    with pytest.raises(ierf.IerfError, match="encode"):
        ierf.attributor("gated-transmm", toy, sae=object(), layers=[1])


def test_the_shipped_toy_vit_sae_reconstructs_the_residual_stream():
    from ierf.data.synthetic import generate

    sae = load_toy_vit_sae()
    assert (TOY_VIT_SAE / "tensors.safetensors").stat().st_size < 1_000_000
    model = ierf.load_model("toy-vit")
    images = generate(32, seed=5, split="val").images
    x = model.normalize(images)
    X = model.pfvs(x, TOY_VIT_SAE_LAYER)[TOY_VIT_SAE_LAYER].vectors.flatten(0, 1)
    with torch.no_grad():
        U = sae.encode(X)
        rel = (X - sae.decode(U)).norm() / X.norm()
    assert sae.get_dictionary().shape == (96, 8 * 96)
    assert rel < 0.25 and (U != 0).sum(1).float().mean() <= 16

"""Captum's habits that work here too (issue 12): per-channel maps, options at
``attribute()`` time, IG's convergence delta; CAMs and ``srd-high`` on a plain ``nn.Module``
of unknown input size; per-channel maps drawn by ``ierf.viz`` as Captum draws them."""

from __future__ import annotations

import pytest
import torch
from captum import attr as captum
from test_baselines import IMAGENET, tiny_cnn, top

import ierf
from ierf.errors import IerfError
from ierf.local.differentiable import differentiable
from ierf.viz.overlay import signed_view

pytestmark = pytest.mark.filterwarnings(
    "ignore:Input Tensor 0 did not already require gradients",
    "ignore:Setting backward hooks on ReLU activations")


@pytest.fixture(scope="module")
def tiny() -> ierf.Model:
    return ierf.Model(tiny_cnn(), "tiny", [f"class {i}" for i in range(10)], IMAGENET)


@pytest.fixture(scope="module")
def x64() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(2, 3, 64, 64)


REDUCE = {"saliency": "max", "guided-backprop": "max", "grad-x-input": "sum",
          "integrated-gradients": "sum", "smoothgrad": "max"}


@pytest.mark.parametrize("name", sorted(REDUCE))
def test_per_channel_maps_reduce_to_the_default_maps(tiny, x64, name):
    torch.manual_seed(3)
    maps = ierf.attributor(name, tiny).attribute(x64)
    torch.manual_seed(3)
    channels = ierf.attributor(name, tiny, per_channel=True).attribute(x64)
    assert channels.shape == (2, 3, 64, 64) and maps.shape == (2, 64, 64)
    reduced = channels.amax(1) if REDUCE[name] == "max" else channels.sum(1)
    torch.testing.assert_close(reduced, maps)


def test_per_channel_integrated_gradients_is_captums_attribution(tiny, x64):
    ours = ierf.attributor("integrated-gradients", tiny, n_steps=8,
                           per_channel=True).attribute(x64, target=[1, 2])
    ref = captum.IntegratedGradients(tiny.net).attribute(x64, target=[1, 2], n_steps=8,
                                                         internal_batch_size=16)
    torch.testing.assert_close(ours, ref)


def test_convergence_delta_is_the_completeness_error(tiny, x64):
    ig = ierf.attributor("integrated-gradients", tiny, n_steps=16)
    maps, delta = ig.attribute(x64, target=[3, 4], baselines=0.5, return_convergence_delta=True)
    with torch.no_grad():
        gap = tiny.net(x64) - tiny.net(torch.full_like(x64, 0.5))
    expected = maps.flatten(1).sum(1) - gap[[0, 1], [3, 4]]
    assert delta.shape == (2,)
    # float32 sums over 3·64² terms of size ~|gap| / 10⁴: 1e-4 relative to the gap
    torch.testing.assert_close(delta, expected, rtol=0, atol=1e-4 * float(gap.abs().max()))
    plain = ig.attribute(x64, target=[3, 4], baselines=0.5)
    torch.testing.assert_close(plain, maps)


def test_options_at_attribute_time_are_for_that_call_only(tiny, x64):
    ig = ierf.attributor("integrated-gradients", tiny, n_steps=32)
    once = ig.attribute(x64, target=1, n_steps=8)
    made = ierf.attributor("integrated-gradients", tiny, n_steps=8).attribute(x64, target=1)
    torch.testing.assert_close(once, made)
    assert ig.n_steps == 32
    assert not torch.allclose(ig.attribute(x64, target=1), once)
    with pytest.raises(IerfError, match="no option 'n_stepz' at attribute"):
        ig.attribute(x64, n_stepz=8)
    with pytest.raises(IerfError, match="takes no option 'layer'"):
        ierf.attributor("srd", tiny).attribute(x64, layer="block3")


def test_the_attack_refuses_per_channel_maps(tiny):
    with pytest.raises(IerfError, match="per_channel"):
        differentiable(ierf.attributor("grad-x-input", tiny, per_channel=True))


def test_viz_draws_a_per_channel_map_as_its_channel_sum(tiny, x64):
    channels = ierf.attributor("grad-x-input", tiny, per_channel=True).attribute(x64)[0]
    for sign in ("all", "positive", "absolute"):
        a, cmap_a, range_a = signed_view(channels, sign)
        b, cmap_b, range_b = signed_view(channels.sum(0), sign)
        assert (a == b).all() and cmap_a == cmap_b and range_a == range_b
    with pytest.raises(IerfError, match=r"\(H, W\) or \(C, H, W\)"):
        signed_view(channels[None])


@pytest.mark.parametrize("name", ["gradcam", "gradcam-high", "srd-high", "scorecam"])
def test_default_layers_of_a_plain_module_are_found_on_the_first_input(tiny, x64, name):
    """A plain nn.Module has no input size: the default layer is found on ``x``, the same
    layer and maps as on the ierf.Model that knows its input size."""
    known = ierf.attributor(name, tiny)
    plain = ierf.attributor(name, tiny.net)
    idx = top(tiny, x64)
    torch.testing.assert_close(plain.attribute(x64, idx), known.attribute(x64, idx))
    if hasattr(known, "layer"):
        assert plain.layer == known.layer

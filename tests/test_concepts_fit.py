"""fit_concepts (method dispatch, K = 8 C, μ_BN) and the BatchNorm feeding a layer."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import ierf
from ierf.concepts import (
    BiasFreeTopKSAE,
    BisectingSphericalKMeans,
    DictionaryLearner,
    MatryoshkaSAE,
    SparseAutoencoder,
    TopKSAE,
    bn_shift,
    sparse_pfvs,
)
from ierf.concepts.fitting import METHODS, feeding_batchnorm, fit_concepts, layer_center
from ierf.errors import IerfError, UnknownNameError

torch.set_num_threads(1)


@pytest.mark.parametrize("method,cls", [
    ("kmeans", BisectingSphericalKMeans), ("dictionary", DictionaryLearner),
    ("sae", SparseAutoencoder), ("topk-sae", TopKSAE), ("matryoshka-sae", MatryoshkaSAE),
    ("bias-free-topk-sae", BiasFreeTopKSAE)])
def test_dispatch_and_default_k(method, cls) -> None:
    X, _ = sparse_pfvs(120, 4, 5, 1, noise=0.05, seed=1)
    opts = {"epochs": 2} if method.endswith("sae") else {}
    opts |= {"max_iter": 5} if method == "dictionary" else {}
    extractor = fit_concepts(X, method, **opts)
    assert type(extractor) is cls
    assert extractor.get_dictionary().shape == (4, 32)            # K = 8 C
    assert extractor.decode(extractor.encode(X)).shape == X.shape


def test_kmeans_finds_the_generating_directions_with_and_without_center() -> None:
    X, D = sparse_pfvs(600, 16, 6, 1, noise=0.03, seed=0)
    mu = torch.randn(16)
    plain = fit_concepts(X, "kmeans", 6)
    centred = fit_concepts(X + mu, "kmeans", 6, center=mu)
    for extractor in (plain, centred):
        cos = (nn.functional.normalize(D, dim=0).T
               @ nn.functional.normalize(extractor.get_dictionary(), dim=0)).amax(1)
        assert (cos > 0.95).all()
    # centring by μ_BN undoes the shift (GIG App. B) and decoding adds it back (Eq. 9): the
    # shifted PFVs get the same concepts and the same residuals as the plain ones
    torch.testing.assert_close(centred.get_dictionary(), plain.get_dictionary())
    torch.testing.assert_close(centred.decode(centred.encode(X + mu)) - (X + mu),
                               plain.decode(plain.encode(X)) - X, atol=1e-4, rtol=1e-3)


def test_sae_options_split_between_constructor_and_training() -> None:
    X, _ = sparse_pfvs(256, 8, 4, 1, noise=0.02, seed=2)
    sae = fit_concepts(X, "topk-sae", 16, k=2, epochs=8, lr=3e-3, batch_size=64)
    assert sae.k == 2 and len(sae.loss_history_) == 8
    assert sae.loss_history_[-1] < 0.5 * sae.loss_history_[0]
    assert ((sae.encode(X) != 0).sum(1) == 2).all()


def test_bad_input_gives_clear_errors() -> None:
    X = torch.randn(20, 4)
    with pytest.raises(UnknownNameError, match="topk-sae"):
        fit_concepts(X, "topk_sae")
    with pytest.raises(IerfError, match="n_concepts <= 20"):
        fit_concepts(X, "kmeans")                                # K = 32 > N = 20
    with pytest.raises(IerfError, match="kmeans"):
        fit_concepts(X, "sae", 8, center=torch.zeros(4))
    assert set(METHODS) == {"kmeans", "minibatch-kmeans", "dictionary", "sae", "topk-sae",
                            "matryoshka-sae", "bias-free-topk-sae"}


def test_feeding_batchnorm(toy) -> None:
    modules = dict(toy.net.named_modules())
    # a BatchNorm layer is its own: μ_BN is its output on a zero input
    bn = feeding_batchnorm(toy, "layer2.0.bn1")
    assert bn is modules["layer2.0.bn1"]
    zero = torch.zeros(1, bn.num_features, 1, 1)
    torch.testing.assert_close(layer_center(toy, "layer2.0.bn1"), bn(zero).flatten())
    # a residual block: its residual branch's last BN (the shortcut's BN runs first here)
    assert feeding_batchnorm(toy, "layer3") is modules["layer3.1.bn2"]
    assert feeding_batchnorm(toy, "layer2.0") is modules["layer2.0.bn2"]
    torch.testing.assert_close(layer_center(toy, "layer3"), bn_shift(modules["layer3.1.bn2"]))


def test_no_batchnorm_no_center() -> None:
    vgg = ierf.load_model("toy-vgg")
    assert layer_center(vgg, "features.8") is None


def test_default_sae_training_is_long_enough_for_a_small_atlas() -> None:
    """A few hundred PFVs make one Adam step an epoch: 20 epochs leave a TopK SAE near the
    mean predictor, the default (≥ 2000 steps) learns the planted dictionary."""
    X, _ = sparse_pfvs(240, 32, 64, 3, seed=0)
    short = fit_concepts(X, "topk-sae", 64, k=4, epochs=20)
    default = fit_concepts(X, "topk-sae", 64, k=4)
    error = {name: (e.decode(e.encode(X)) - X).norm() / X.norm()
             for name, e in (("short", short), ("default", default))}
    assert error["default"] < 0.3 < error["short"]

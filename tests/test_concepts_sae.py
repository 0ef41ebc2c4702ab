"""Sparse autoencoders (GIG Eq. 11, TopK, Matryoshka, FaCT bias-free) as concept extractors."""

from __future__ import annotations

import pytest
import torch

from ierf.concepts import (
    BiasFreeTopKSAE,
    ConceptExtractor,
    MatryoshkaSAE,
    SparseAutoencoder,
    TopKSAE,
    sparse_pfvs,
)
from ierf.concepts.extractors.sae import SAEBase
from ierf.errors import IerfError

torch.set_num_threads(1)

C, K = 12, 48


@pytest.fixture(scope="module")
def data() -> torch.Tensor:
    return sparse_pfvs(1024, C, 24, 3, seed=0)[0]


def make(cls: type[SAEBase]) -> SAEBase:
    if cls is SparseAutoencoder:
        return cls(C, K, l1_coeff=3e-3)
    return cls(C, K, k=3)


ALL = [SparseAutoencoder, TopKSAE, MatryoshkaSAE, BiasFreeTopKSAE]


@pytest.fixture(scope="module")
def trained(data: torch.Tensor) -> dict[type, SAEBase]:
    return {cls: make(cls).fit(data, epochs=15, batch_size=128, lr=3e-3) for cls in ALL}


@pytest.mark.parametrize("cls", ALL)
def test_training_beats_mean_baseline(cls: type[SAEBase], data: torch.Tensor,
                                      trained: dict[type, SAEBase]) -> None:
    sae = trained[cls]
    with torch.no_grad():
        error = (data - sae(data)).square().sum(1).mean()
    baseline = (data - data.mean(0)).square().sum(1).mean()
    assert error < 0.3 * baseline
    assert sae.loss_history_[-1] < sae.loss_history_[0]
    assert sae.get_dictionary().shape == (C, K)


@pytest.mark.parametrize("cls", [TopKSAE, MatryoshkaSAE, BiasFreeTopKSAE])
def test_topk_has_exactly_k_nonzeros(cls: type[SAEBase], data: torch.Tensor,
                                     trained: dict[type, SAEBase]) -> None:
    with torch.no_grad():
        U = trained[cls].encode(data)
    assert ((U != 0).sum(1) == 3).all()


def test_bias_free(trained: dict[type, SAEBase]) -> None:
    sae = trained[BiasFreeTopKSAE]
    assert not any("bias" in name for name, _ in sae.named_parameters())
    assert sae.encoder.bias is None and sae.decoder.bias is None
    assert torch.equal(sae.decode(torch.zeros(2, K)), torch.zeros(2, C))


def test_decoder_norm_weighted_l1() -> None:
    sae = SparseAutoencoder(C, K, l1_coeff=0.5)
    X = torch.randn(4, C)
    U = sae.encode(X)
    expected = ((X - sae.decode(U)).square().sum(1).mean()
                + 0.5 * (U * sae.decoder.weight.norm(dim=0)).sum(1).mean())
    torch.testing.assert_close(sae.loss(X), expected)


def test_matryoshka_loss_sums_prefix_losses() -> None:
    sae = MatryoshkaSAE(C, K, k=4, prefixes=[6, 24, 48])
    X = torch.randn(5, C)
    U = sae.encode(X)
    W, b = sae.decoder.weight, sae.decoder.bias
    expected = sum((X - (U[:, :m] @ W[:, :m].T + b)).square().sum(1).mean() for m in (6, 24, 48))
    torch.testing.assert_close(sae.loss(X), expected)
    assert MatryoshkaSAE(C).prefixes == [12, 24, 48, 96]            # K = 8 C by default
    with pytest.raises(IerfError):
        MatryoshkaSAE(C, K, prefixes=[24, 6, 48])
    with pytest.raises(IerfError):
        TopKSAE(C, K, k=K + 1)


@pytest.mark.parametrize("cls", ALL)
def test_save_load_round_trip(cls: type[SAEBase], tmp_path, data: torch.Tensor,
                              trained: dict[type, SAEBase]) -> None:
    sae = trained[cls]
    sae.save(tmp_path / "sae")
    loaded = ConceptExtractor.load(tmp_path / "sae")
    assert type(loaded) is cls and loaded.config() == sae.config()
    with torch.no_grad():
        assert torch.equal(loaded.encode(data), sae.encode(data))
        assert torch.equal(loaded(data), sae(data))
    with pytest.raises(IerfError):
        (TopKSAE if cls is SparseAutoencoder else SparseAutoencoder).load(tmp_path / "sae")


@pytest.mark.parametrize(("n_concepts", "threads"), [(16, 1), (1024, 2)])
def test_small_steps_train_on_one_thread(n_concepts: int, threads: int) -> None:
    """A step under SINGLE_THREAD_MACS runs on one CPU thread (more only add waits); a large
    one keeps torch's setting, and the setting is restored after fit."""
    from ierf.concepts.extractors.sae import SINGLE_THREAD_MACS

    assert (256 * 64 * 16 < SINGLE_THREAD_MACS) and (256 * 64 * 1024 >= SINGLE_THREAD_MACS)
    sae = TopKSAE(64, n_concepts, k=4)
    seen = []
    loss = sae.loss
    sae.loss = lambda X: (seen.append(torch.get_num_threads()), loss(X))[1]
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        sae.fit(torch.randn(300, 64), epochs=1)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert seen == [threads, threads]

"""ConceptBasis: an extractor bound to model, layer and tokens; one atomic, verified artefact."""

from __future__ import annotations

import json

import pytest
import torch

import ierf
from ierf.concepts import BisectingSphericalKMeans, TopKSAE, sparse_pfvs
from ierf.concepts.basis import CONFIG_FILE, TENSOR_FILE, BasisMismatchError, ConceptBasis
from ierf.errors import IerfError
from ierf.local.gated import load_toy_vit_sae

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def basis(toy) -> ConceptBasis:
    x = toy.normalize(torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)))
    X = toy.pfvs(x, "layer2")["layer2"].vectors.flatten(0, 1)
    km = BisectingSphericalKMeans(6, alpha=0.01).fit(X)
    return ConceptBasis.bind(km, toy, "layer2", method="kmeans")


def test_verbs_on_any_batch_shape(basis, toy) -> None:
    x = toy.normalize(torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(1)))
    P = basis.pfvs(toy, x)                                      # (B, N, C)
    assert P.shape[0] == 3 and P.shape[-1] == basis.n_channels
    U = basis.encode(P)
    assert U.shape == (*P.shape[:2], basis.n_concepts)
    flat = basis.extractor.encode(P.flatten(0, 1)).reshape(U.shape)   # the extractor itself
    torch.testing.assert_close(U, flat)
    # reconstruct + residual = the PFVs exactly (the graph's error node closes the books)
    torch.testing.assert_close(basis.reconstruct(P) + basis.residual(P), P)
    assert basis.dictionary.shape == (basis.n_channels, basis.n_concepts)
    assert basis.get_dictionary() is basis.extractor.get_dictionary()


def test_round_trip_keeps_everything(basis, tmp_path) -> None:
    path = basis.save(tmp_path / "b")
    assert sorted(p.name for p in path.iterdir()) == [CONFIG_FILE, TENSOR_FILE]
    loaded = ConceptBasis.load(path)
    assert (loaded.model, loaded.layer, loaded.tokens, loaded.fingerprint) == \
        (basis.model, basis.layer, basis.tokens, basis.fingerprint)
    assert loaded.provenance == {"method": "kmeans"}
    torch.testing.assert_close(loaded.dictionary, basis.dictionary, rtol=0, atol=0)
    X = torch.randn(5, basis.n_channels)
    torch.testing.assert_close(loaded.encode(X), basis.encode(X), rtol=0, atol=0)


def test_refuses_another_model_layer_or_width(basis, toy) -> None:
    basis.check(toy, "layer2")
    toy_vgg = ierf.load_model("toy-vgg")
    with pytest.raises(BasisMismatchError, match="fitted on 'toy-resnet', not 'toy-vgg'"):
        basis.check(toy_vgg)
    with pytest.raises(BasisMismatchError, match="belongs to layer 'layer2', not 'layer3'"):
        basis.check(toy, "layer3")
    other = ierf.load_model("toy-resnet")
    with torch.no_grad():
        next(other.net.parameters()).mul_(1.01)
    with pytest.raises(BasisMismatchError, match="weights differ"):
        basis.check(other)
    with pytest.raises(BasisMismatchError, match="channels"):
        basis.encode(torch.randn(4, basis.n_channels + 1))
    with pytest.raises(IerfError, match="no CLS token"):
        ConceptBasis.bind(basis.extractor, toy, "layer2", tokens="cls")
    with pytest.raises(IerfError, match="tokens must be one of"):
        ConceptBasis(basis.extractor, "m", 1.0, "layer2", tokens="everything")
    with pytest.raises(ierf.UnknownNameError, match="layer9"):
        ConceptBasis.bind(basis.extractor, toy, "layer9")


def test_damaged_or_foreign_files_are_refused(basis, tmp_path) -> None:
    path = basis.save(tmp_path / "b")
    blob = bytearray((path / TENSOR_FILE).read_bytes())
    blob[-3] ^= 0xFF                                                    # one flipped data byte
    (path / TENSOR_FILE).write_bytes(bytes(blob))
    with pytest.raises(IerfError, match="altered"):
        ConceptBasis.load(path)
    path = basis.save(tmp_path / "c")
    meta = json.loads((path / CONFIG_FILE).read_text())
    for change, message in (({"version": 99}, "format version 99"),
                            ({"n_concepts": -5}, "invalid fields"),
                            ({"layer": None}, "invalid fields"),
                            ({"format": "x"}, "not an ierf concept basis")):
        (path / CONFIG_FILE).write_text(json.dumps({**meta, **change}))
        with pytest.raises(IerfError, match=message):
            ConceptBasis.load(path)
    (path / CONFIG_FILE).write_text("{not json")
    with pytest.raises(IerfError, match="not readable JSON"):
        ConceptBasis.load(path)
    with pytest.raises(IerfError, match="not a concept basis"):
        ConceptBasis.load(tmp_path / "nothing")


def test_a_crash_while_saving_leaves_the_old_basis(basis, tmp_path, monkeypatch) -> None:
    path = basis.save(tmp_path / "b")
    before = {p.name: p.read_bytes() for p in path.iterdir()}
    other = ConceptBasis(BisectingSphericalKMeans(3).fit(torch.randn(20, basis.n_channels)),
                         basis.model, basis.fingerprint, basis.layer)

    def crash(*_a, **_k):
        raise OSError("disk full")

    monkeypatch.setattr("ierf.concepts.basis.json.dumps", crash)
    with pytest.raises(OSError, match="disk full"):
        other.save(path)
    assert {p.name: p.read_bytes() for p in path.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["b"]               # no temporary left
    monkeypatch.undo()
    other.save(path)                                                    # replaces it whole
    assert ConceptBasis.load(path).n_concepts == 3
    assert [p.name for p in tmp_path.iterdir()] == ["b"]
    (tmp_path / "plain").mkdir()
    with pytest.raises(IerfError, match="not a concept basis; choose another"):
        other.save(tmp_path / "plain")


def test_vit_tokens_and_the_shipped_sae_is_a_basis(toy_vit) -> None:
    sae = load_toy_vit_sae()
    assert isinstance(sae, ConceptBasis)
    assert (sae.model, sae.layer, sae.tokens) == ("toy-vit", "blocks.1", "patch")
    sae.check(toy_vit)
    x = toy_vit.normalize(torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2)))
    pf = toy_vit.pfvs(x, "blocks.1")["blocks.1"]
    assert sae.pfvs(toy_vit, x).shape == (2, 64, 96)
    cls_basis = ConceptBasis.bind(sae.extractor, toy_vit, "blocks.1", tokens="cls")
    torch.testing.assert_close(cls_basis.select(pf), pf.prefix[:, :1])
    every = ConceptBasis.bind(sae.extractor, toy_vit, "blocks.1", tokens="all")
    assert every.select(pf).shape == (2, 65, 96)
    # one SAE interface: the basis is the gated-TransMM SAE and the LatentTarget's SAE
    gated = ierf.attributor("gated-transmm", toy_vit, sae=sae)
    default = ierf.attributor("gated-transmm", toy_vit)
    torch.testing.assert_close(gated.attribute(x, 0), default.attribute(x, 0))
    with pytest.raises(IerfError, match="belongs to 'blocks.1'"):
        ierf.attributor("gated-transmm", toy_vit, sae=sae, layers=["blocks.2"])
    target = ierf.LatentTarget("blocks.1", sae, latent=int(sae.encode(pf.vectors).sum((0, 1))
                                                            .argmax()))
    maps = ierf.attributor("attnlrp", toy_vit).ierfs(x, [target])
    assert maps.shape == (1, 2, 64, 64) and maps.abs().sum() > 0


def test_sae_basis_from_extractor_fit() -> None:
    X, _ = sparse_pfvs(200, 16, 32, 2, seed=3)
    sae = TopKSAE(16, 32, k=2).fit(X, epochs=2)
    b = ConceptBasis(sae, "m", 0.0, "layer", provenance={"n": 200})
    assert b.encode(X[None]).shape == (1, 200, 32)

"""Streaming mini-batch spherical k-means (CAFE's "any extractor", IERF Sec. V-A): trained from
the same token buffers as the SAEs, checked against in-memory k-means and exact cluster
means, resumable, and usable for latent iERFs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ierf.cafe.attribution import latent_ierfs
from ierf.cafe.latents import latent_activations, select_pairs, token_positions
from ierf.cafe.streaming import TensorImages
from ierf.cafe.training import CHECKPOINT, SAETrainer, SAETraining
from ierf.concepts import fit_concepts
from ierf.concepts.basis import ConceptBasis
from ierf.concepts.extractors import BisectingSphericalKMeans
from ierf.concepts.extractors.kmeans import cluster_means, spherical_inertia
from ierf.concepts.extractors.minibatch_kmeans import MiniBatchSphericalKMeans
from ierf.data.synthetic import generate
from ierf.errors import IerfError

CONFIG = SAETraining(method="minibatch-kmeans", n_concepts=16, batch_size=64,
                     buffer_tokens=256, image_batch=4, epochs=2)

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny steps: see conftest.py


@pytest.fixture(scope="module")
def images(toy_vit) -> TensorImages:
    return TensorImages(toy_vit.normalize(generate(16, seed=1, split="train").images), "t16")


@pytest.fixture(scope="module")
def trained(toy_vit, images, tmp_path_factory) -> ConceptBasis:
    out = tmp_path_factory.mktemp("kmeans")
    torch.set_num_threads(1)
    return SAETrainer(toy_vit, images, ["blocks.1"], out, ["patch"], CONFIG).run(
        progress=False)["blocks.1-patch"]


def test_streamed_inertia_is_close_to_in_memory_kmeans(toy_vit, images, trained) -> None:
    from sklearn.cluster import KMeans

    X = toy_vit.pfvs(images.x, "blocks.1")["blocks.1"].vectors.flatten(0, 1)   # 1024 tokens
    assert len(X) == 4 * CONFIG.buffer_tokens         # really streamed: 4 buffers an epoch
    assert isinstance(trained.extractor, MiniBatchSphericalKMeans)
    assert trained.n_concepts == 16 and trained.provenance["method"] == "minibatch-kmeans"
    ours = spherical_inertia(X, trained.extractor.assign(X))
    bisecting = spherical_inertia(X, BisectingSphericalKMeans(16).fit(X).labels_)
    Z = F.normalize(X.double(), dim=1).numpy()        # Euclidean k-means on the sphere
    sklearn = spherical_inertia(X, torch.as_tensor(
        KMeans(16, n_init=3, random_state=0).fit(Z).labels_))
    assert ours <= 1.10 * min(bisecting, sklearn), (ours, bisecting, sklearn)
    one_cluster = spherical_inertia(X, torch.zeros(len(X), dtype=torch.long))
    assert ours < 0.6 * one_cluster


def test_separated_clusters_are_found_with_exact_means() -> None:
    g = torch.Generator().manual_seed(0)
    centres = F.normalize(torch.randn(5, 12, generator=g), dim=1) * 3
    truth = torch.arange(5).repeat_interleave(80)
    X = centres[truth] + 0.05 * torch.randn(400, 12, generator=g)
    km = MiniBatchSphericalKMeans(5, batch_size=32, epochs=2, init_size=60).fit(X)
    # the same partition as the truth, up to the names of the clusters
    pairs = torch.unique(torch.stack([truth, km.labels_], 1), dim=0)
    assert len(pairs) == 5 and len(pairs[:, 1].unique()) == 5
    # a running mean over 2 epochs counts every row twice: still the cluster means (GIG B.3)
    expected = cluster_means(X, km.labels_, 5)
    assert torch.allclose(km.get_dictionary(), expected, atol=1e-5)
    by_name = fit_concepts(X, "minibatch-kmeans", 5, batch_size=32, epochs=2, init_size=60)
    assert torch.equal(by_name.get_dictionary(), km.get_dictionary())


def test_resumed_kmeans_equals_an_uninterrupted_run(toy_vit, images, trained, tmp_path
                                                    ) -> None:
    t = SAETrainer(toy_vit, images, ["blocks.1"], tmp_path, ["patch"], CONFIG)
    t.checkpoint_every = 1
    assert t.run(progress=False, stop_after=3) is None
    assert (tmp_path / CHECKPOINT).is_file()
    resumed = SAETrainer(toy_vit, images, ["blocks.1"], tmp_path, ["patch"], CONFIG).run(
        progress=False)["blocks.1-patch"]
    assert torch.equal(resumed.dictionary, trained.dictionary)
    loaded = ConceptBasis.load(tmp_path / "blocks.1-patch")
    assert torch.equal(loaded.dictionary, trained.dictionary)


def test_kmeans_latents_have_iERFs(toy_vit, images, trained) -> None:
    x = images.x[:4]
    acts = latent_activations(toy_vit, trained, x)
    assert ((acts > 0).sum(-1) <= 1).all()            # "nearest": one latent per token
    positions = token_positions(trained, toy_vit.pfvs(x[:1], "blocks.1")["blocks.1"])
    pairs = select_pairs(acts, positions, (acts > 0).any(1).sum(0).topk(2).indices, 1)
    maps = latent_ierfs(toy_vit, trained, x, pairs, "grad-x-input")
    assert maps.shape == (len(pairs), 64, 64) and maps.abs().sum((1, 2)).gt(0).all()


def test_too_few_tokens_for_the_clusters(toy_vit, images, tmp_path) -> None:
    big = SAETraining(method="minibatch-kmeans", n_concepts=2000, batch_size=64,
                      buffer_tokens=4096, image_batch=4)
    with pytest.raises(IerfError, match="image set too small: blocks.1-patch: 16 images × 64 "
                       "tokens < 2000"):
        SAETrainer(toy_vit, images, ["blocks.1"], tmp_path / "a", ["patch"], big).run(
            progress=False)
    small_buffer = SAETraining(method="minibatch-kmeans", n_concepts=128, batch_size=64,
                               buffer_tokens=64, image_batch=4)
    with pytest.raises(IerfError, match="must hold at least 128 tokens"):
        SAETrainer(toy_vit, images, ["blocks.1"], tmp_path / "b", ["patch"],
                   small_buffer).run(progress=False)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()

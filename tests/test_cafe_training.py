"""Streaming SAE training on a ViT's tokens (IERF Sec. V-A, Eqs. 8–9): bounded buffer,
checkpoints, exact resume, clear refusals."""

from __future__ import annotations

import pytest
import torch

from ierf.cafe.streaming import TensorImages, TokenBuffer
from ierf.cafe.training import CHECKPOINT, SAETrainer, SAETraining
from ierf.concepts.basis import ConceptBasis
from ierf.concepts.extractors import MatryoshkaSAE
from ierf.data.synthetic import generate
from ierf.errors import IerfError, UnknownNameError
from ierf.store import ConfigMismatchError

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny steps: see conftest.py

CONFIG = SAETraining(n_concepts=16, k=2, batch_size=16, buffer_tokens=64, image_batch=4)


@pytest.fixture(scope="module")
def images(toy_vit) -> TensorImages:
    return TensorImages(toy_vit.normalize(generate(16, seed=1, split="train").images), "t16")


def test_buffer_is_bounded_and_loses_no_token() -> None:
    buf = TokenBuffer(10, 2)
    buf.add(torch.arange(24.0).reshape(12, 2))
    assert buf.full and buf.size == 10 and len(buf.overflow) == 2
    batches = list(buf.drain(4, torch.Generator().manual_seed(0), passes=2))
    assert [len(b) for b in batches] == [4, 4, 2, 4, 4, 2]
    seen = torch.cat(batches[:3])[:, 0].sort().values
    assert torch.equal(seen, torch.arange(0.0, 20.0, 2.0))
    assert buf.size == 2 and torch.equal(buf.data[:2, 0], torch.tensor([20.0, 22.0]))


def test_resumed_training_equals_an_uninterrupted_run(toy_vit, images, tmp_path) -> None:
    def trainer(out):
        t = SAETrainer(toy_vit, images, ["blocks.0"], out, ["patch", "cls"], CONFIG)
        t.checkpoint_every = 1
        return t

    assert trainer(tmp_path / "a").run(progress=False, stop_after=2) is None
    assert (tmp_path / "a" / CHECKPOINT).is_file()
    resumed = trainer(tmp_path / "a").run(progress=False)
    whole = trainer(tmp_path / "b").run(progress=False)
    assert set(resumed) == {"blocks.0-patch", "blocks.0-cls"}
    for name, basis in resumed.items():
        a, b = basis.extractor.state_dict(), whole[name].extractor.state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert not (tmp_path / "a" / CHECKPOINT).exists()
    patch = ConceptBasis.load(tmp_path / "a" / "blocks.0-patch")
    assert isinstance(patch.extractor, MatryoshkaSAE)         # the paper's default
    assert (patch.layer, patch.tokens, patch.n_concepts) == ("blocks.0", "patch", 16)
    patch.check(toy_vit)
    assert patch.provenance["steps"] == 16 * 64 // 16         # every patch token once
    assert ConceptBasis.load(tmp_path / "a" / "blocks.0-cls").tokens == "cls"
    again = trainer(tmp_path / "a").run(progress=False)        # finished: loaded, not retrained
    assert torch.equal(again["blocks.0-cls"].dictionary, resumed["blocks.0-cls"].dictionary)


def test_other_settings_are_refused(toy_vit, images, tmp_path) -> None:
    t = SAETrainer(toy_vit, images, ["blocks.0"], tmp_path, ["cls"], CONFIG)
    t.checkpoint_every = 1
    t.run(progress=False, stop_after=1)
    other = SAETraining(n_concepts=8, k=2, batch_size=16, buffer_tokens=64, image_batch=4)
    with pytest.raises(ConfigMismatchError, match="n_concepts: stored 16, now 8"):
        SAETrainer(toy_vit, images, ["blocks.0"], tmp_path, ["cls"], other).run(progress=False)
    SAETrainer(toy_vit, images, ["blocks.0"], tmp_path, ["cls"], CONFIG).run(progress=False)
    with pytest.raises(ConfigMismatchError, match="other settings"):
        SAETrainer(toy_vit, images, ["blocks.0"], tmp_path, ["cls"], other).run(progress=False)


def test_bad_input_fails_before_anything_is_written(toy, toy_vit, images, tmp_path) -> None:
    out = tmp_path / "out"
    with pytest.raises(IerfError, match="toy-resnet has no CLS token"):
        SAETrainer(toy, images, ["layer1"], out, ["cls"], CONFIG)
    with pytest.raises(UnknownNameError, match="unknown layer 'blocks.9'"):
        SAETrainer(toy_vit, images, ["blocks.9"], out, ["patch"], CONFIG)
    small = TensorImages(images.x[:3], "t3")
    with pytest.raises(IerfError, match="image set too small: blocks.0-cls: 3 images × 1 tokens"):
        SAETrainer(toy_vit, small, ["blocks.0"], out, ["patch", "cls"], CONFIG).run(
            progress=False)
    with pytest.raises(IerfError, match="unknown training method 'pca'"):
        SAETraining(method="pca")
    with pytest.raises(IerfError, match="must hold at least one minibatch"):
        SAETraining(batch_size=64, buffer_tokens=32)
    assert not out.exists()

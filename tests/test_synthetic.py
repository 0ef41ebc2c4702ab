"""Tests of the synthetic ground-truth benchmark generator."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from ierf.data.synthetic import (
    CLASS_NAMES,
    CLASS_PARTS,
    CONCEPTS,
    IMAGE_SIZE,
    MAX_OBJECTS,
    PART_TYPES,
    SyntheticBatch,
    generate,
    interventions,
)

N = 200


@pytest.fixture(scope="module")
def batch() -> SyntheticBatch:
    return generate(N, seed=3, split="val")


def test_shapes_and_dtypes(batch: SyntheticBatch) -> None:
    assert batch.images.shape == (N, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert batch.images.dtype == torch.float32
    assert batch.images.min() >= 0 and batch.images.max() <= 1
    assert batch.labels.shape == (N,) and batch.labels.dtype == torch.int64
    assert batch.parts_mask.shape == (N, IMAGE_SIZE, IMAGE_SIZE)
    assert batch.parts_mask.dtype == torch.bool
    assert batch.is_key.shape == (N, MAX_OBJECTS) and batch.is_key.dtype == torch.bool
    assert set(batch.concept_maps) == {"colour", "shape", "texture", "part", "object"}
    for key, labels in batch.concept_maps.items():
        assert labels.shape == (N, IMAGE_SIZE, IMAGE_SIZE) and labels.dtype == torch.int64
        assert labels.min() == 0
        if key in CONCEPTS:
            assert labels.max() < len(CONCEPTS[key])
    assert batch.concept_maps["part"].max() == len(PART_TYPES)


def test_determinism_and_splits(batch: SyntheticBatch) -> None:
    again = generate(N, seed=3, split="val")
    assert torch.equal(again.images, batch.images)
    assert torch.equal(again.labels, batch.labels)
    for key, labels in batch.concept_maps.items():
        assert torch.equal(again.concept_maps[key], labels)
    prefix = generate(10, seed=3, split="val")
    assert torch.equal(prefix.images, batch.images[:10])
    for other in (generate(10, seed=3, split="test"), generate(10, seed=4, split="val")):
        assert not torch.equal(other.images, batch.images[:10])
    with pytest.raises(ValueError, match="split"):
        generate(1, split="holdout")


def test_classes_and_part_sharing(batch: SyntheticBatch) -> None:
    assert len(CLASS_NAMES) == len(CLASS_PARTS) == 8
    assert set(batch.labels.tolist()) == set(range(len(CLASS_NAMES)))
    uses = Counter(p for pair in CLASS_PARTS for p in pair)
    assert all(uses[p] >= 2 for p in range(len(PART_TYPES)))
    for attribute in ("shape", "colour", "texture"):
        values = Counter(part[attribute] for part in PART_TYPES)
        assert max(values.values()) >= 2, f"no {attribute} is shared by two part types"


def test_ground_truth_maps(batch: SyntheticBatch) -> None:
    maps = batch.concept_maps
    assert torch.equal(batch.parts_mask, maps["part"] > 0)
    objects = maps["object"] > 0
    for key in ("colour", "shape", "texture"):
        assert torch.equal(maps[key] > 0, objects)
    for n in range(N):
        present = set(maps["part"][n].unique().tolist()) - {0}
        assert present == {p + 1 for p in CLASS_PARTS[int(batch.labels[n])]}
        ids = set(maps["object"][n].unique().tolist()) - {0}
        key_ids = {i + 1 for i in range(MAX_OBJECTS) if batch.is_key[n, i]}
        assert len(key_ids) == 2 and 3 <= len(ids) <= MAX_OBJECTS and key_ids <= ids
        assert set(maps["object"][n][batch.parts_mask[n]].unique().tolist()) == key_ids
        # Distractors never use a key shape, so shape tells key parts from distractors.
        distractor_shapes = maps["shape"][n][objects[n] & ~batch.parts_mask[n]]
        key_shapes = {CONCEPTS["shape"].index(p["shape"]) for p in PART_TYPES}
        assert not set(distractor_shapes.tolist()) & key_shapes


def test_interventions_remove_exactly_one_object() -> None:
    n = 60
    iv = interventions(n, seed=5, split="test")
    original = generate(n, seed=5, split="test")
    assert torch.equal(iv.original.images, original.images)
    objects = original.concept_maps["object"]
    for edited, removed, is_key in ((iv.without_key, iv.removed_key, True),
                                    (iv.without_distractor, iv.removed_distractor, False)):
        assert edited.shape == original.images.shape
        assert torch.equal(original.is_key[torch.arange(n), removed], torch.full((n,), is_key))
        changed = (edited != original.images).any(1)
        assert torch.equal(changed, objects == (removed + 1).view(n, 1, 1))
    lost = iv.original.parts_mask & ~iv.parts_mask_without_key
    assert torch.equal(lost, objects == (iv.removed_key + 1).view(n, 1, 1))
    assert not (iv.parts_mask_without_key & ~original.parts_mask).any()

"""`ierf fact explain` and :func:`ierf.fact.explain_image` on ``fact-toy``: shares of the logit
that sum to 100 % (exact contributions, Eq. 9), traces that sum to the activations (Eq. 12) on
the image and on the top reference images, and the two-class view (Fig. 8)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import ierf
from ierf.cli import main
from ierf.data.synthetic import generate
from ierf.fact import concept_activations, explain_image


@pytest.fixture(scope="module")
def fact_toy() -> ierf.Model:
    return ierf.load_model("fact-toy")


@pytest.fixture(scope="module")
def references() -> torch.Tensor:
    return generate(24, seed=0, split="val").images


@pytest.fixture(scope="module")
def misclassified(fact_toy) -> int:
    """Index of the first misclassified scene of the benchmark's test stream (seed 0)."""
    test = generate(96, seed=0, split="test")
    with torch.no_grad():
        wrong = (fact_toy(test.images).argmax(1) != test.labels).nonzero().flatten()
    assert len(wrong), "fact-toy classifies the first 96 test scenes correctly"
    return int(wrong[0])


def test_explanation_numbers(fact_toy, references) -> None:
    scene = generate(3, seed=5, split="test")
    x = scene.images[2:3]
    expl = explain_image(fact_toy, x, references, top=4, per_concept_images=3, versus=None)
    with torch.no_grad():
        logits = fact_toy(x)[0]
    assert expl.target == int(logits.argmax()) and expl.versus is None
    assert torch.allclose(expl.logits, logits)
    shares = expl.shares(0)
    assert abs(float(shares.sum()) - 1) < 1e-4  # exact: Σ_k contribution = logit
    assert abs(float(shares[expl.top].sum()) + expl.other_share(expl.top) - 1) < 1e-4
    assert (expl.contributions[0, expl.top].diff() <= 0).all()  # strongest first
    assert torch.equal(expl.concepts, expl.top) and expl.shared.numel() == 0
    # traces of each shown concept sum to its activation, on the image and on references
    assert torch.allclose(expl.traces.sum((-2, -1)), expl.activations[expl.top], rtol=1e-4,
                          atol=1e-6)
    ref_acts = concept_activations(fact_toy, references)
    assert torch.allclose(expl.reference_activations,
                          ref_acts[expl.reference_ids, expl.top[:, None]], rtol=1e-5)
    assert (expl.reference_activations[:, :-1] >= expl.reference_activations[:, 1:]).all()
    assert torch.equal(expl.frequency, (ref_acts[:, expl.concepts] > 0).float().mean(0))
    assert torch.allclose(expl.reference_traces.sum((-2, -1)), expl.reference_activations,
                          rtol=1e-4, atol=1e-6)


def test_two_class_view_lists_concepts_shared_by_both_logits(fact_toy, references) -> None:
    x = generate(1, seed=5, split="test").images
    with torch.no_grad():
        second = int(fact_toy(x)[0].topk(2).indices[1])
    expl = explain_image(fact_toy, x, references, versus=second, top=5, per_concept_images=2)
    assert expl.contributions.shape == (2, 128)
    assert abs(float(expl.shares(1).sum()) - 1) < 1e-4
    both = expl.contributions.min(0).values
    assert (both[expl.shared] > 0).all()
    assert len(expl.shared) == min(5, int((both > 0).sum()))
    assert set(expl.concepts.tolist()) == set(expl.top.tolist()) | set(expl.shared.tolist())
    numbers = expl.to_json(fact_toy.class_names)
    assert [c["concept"] for c in numbers["shared_concepts"]] == expl.shared.tolist()


def test_cli_on_a_misclassified_benchmark_scene(tmp_path, capsys, fact_toy,
                                                misclassified) -> None:
    rc = main(["fact", "explain", f"benchmark:{misclassified}", "--n", "16", "--top", "3",
               "--per-concept", "2", "-o", str(tmp_path)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "P1 concept" in printed and "shared with" in printed
    numbers = json.loads((tmp_path / "explanation.json").read_text())
    test = generate(misclassified + 1, seed=0, split="test")
    with torch.no_grad():
        logits = fact_toy(test.images[misclassified:])[0]
    assert numbers["label"]["index"] == int(test.labels[misclassified])
    assert numbers["predicted"]["index"] == int(logits.argmax()) != numbers["label"]["index"]
    assert numbers["versus"]["index"] == numbers["label"]["index"]
    assert numbers["target"]["logit"] == pytest.approx(float(logits.max()), rel=1e-5)
    total = sum(c["share_percent"] for c in numbers["top_concepts"])
    assert total + numbers["other_concepts"]["share_percent"] == pytest.approx(100, abs=1e-2)
    assert len(numbers["top_concepts"]) == 3
    assert all(len(c["top_images"]) == 2 for c in numbers["top_concepts"])
    for name in ("explanation.png", "versus.png"):
        assert (tmp_path / name).stat().st_size > 0


def test_cli_on_an_image_file_with_target_and_versus(tmp_path, capsys, fact_toy) -> None:
    img = generate(1, seed=9, split="test").images[0]
    path = tmp_path / "scene.png"
    Image.fromarray((img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(path)
    names = fact_toy.class_names
    rc = main(["fact", "explain", str(path), "--target", names[3], "--versus", "5",
               "--images", "benchmark:1:val", "--n", "8", "--top", "2", "--per-concept", "1",
               "-o", str(tmp_path / "out")])
    assert rc == 0
    numbers = json.loads((tmp_path / "out" / "explanation.json").read_text())
    assert numbers["target"]["index"] == 3 and numbers["versus"]["index"] == 5
    assert numbers["label"] is None
    assert numbers["reference_images"] == {"source": "benchmark:1:val", "n": 8}
    assert (tmp_path / "out" / "versus.png").exists()
    assert "scene: predicted" in capsys.readouterr().out

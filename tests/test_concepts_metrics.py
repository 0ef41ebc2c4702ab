"""Concept metrics: GIG Eq. 7 class relevance, C-insertion/deletion, Table III, ground truth."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import auc, f1_score
from sklearn.metrics.cluster import contingency_matrix

import ierf
from ierf.atlas.sampling import atlas_samples
from ierf.concepts.basis import ConceptBasis
from ierf.concepts.fitting import fit_concepts, layer_center
from ierf.data.synthetic import PART_TYPES, generate
from ierf.metrics import concepts as cm
from ierf.models.toy import TOY_MEAN, TOY_STD

torch.set_num_threads(1)
LAYER = "layer3"


def normalise(images: torch.Tensor) -> torch.Tensor:
    mean, std = torch.tensor(TOY_MEAN)[:, None, None], torch.tensor(TOY_STD)[:, None, None]
    return (images - mean) / std


@pytest.fixture(scope="module")
def data(toy):
    """Benchmark images, the PFVs of two layers, a k-means and a TopK-SAE basis of each."""
    x = normalise(generate(48, seed=3, split="val").images)
    out = {"x": x, "y": toy(x).argmax(1)}
    for layer in ("layer2", "layer3"):
        X = toy.pfvs(x, layer)[layer].vectors.flatten(0, 1)
        out[layer] = {
            "kmeans": fit_concepts(X, "kmeans", 24, center=layer_center(toy, layer),
                                   encoding="nearest"),
            "topk-sae": fit_concepts(X, "topk-sae", 24, k=4, epochs=3),
        }
        out[layer] = {m: ConceptBasis.bind(e, toy, layer) for m, e in out[layer].items()}
    return out


def tail(toy, layer: str, pfvs: torch.Tensor) -> torch.Tensor:
    """The toy ResNet from ``layer`` to the logits, written out by hand (no hooks)."""
    net = toy.net
    side = int(pfvs.shape[1] ** 0.5)
    h = pfvs.transpose(1, 2).reshape(len(pfvs), -1, side, side)
    if layer == "layer2":
        h = net.layer3(h)
    return net.fc(net.avgpool(h).flatten(1))


def decoded(extractor, U: torch.Tensor) -> torch.Tensor:
    b, n, k = U.shape
    return extractor.decode(U.reshape(b * n, k)).reshape(b, n, -1).detach()


@pytest.mark.parametrize("method", ["kmeans", "topk-sae"])
def test_relevance_is_exact_where_the_rest_is_linear(toy, data, method) -> None:
    # after layer3 the toy ResNet is average pooling + a linear head, so the logit is linear
    # in U and IG (Eq. 7) is exactly Σ_p u_pq ⟨w_c, v_q⟩ / N
    x, y, ext = data["x"][:6], data["y"][:6], data[LAYER][method]
    U = cm.encode_layer(toy, x, ext)
    r = cm.class_relevance(toy, x, ext, y, U=U, output="logit", n_steps=8)
    w = toy.net.fc.weight[y]                                             # (B, C)
    expected = U.mean(1) * (w @ ext.get_dictionary())                     # (B, K)
    torch.testing.assert_close(r, expected, atol=2e-4, rtol=1e-3)


@pytest.mark.parametrize("method", ["kmeans", "topk-sae"])
@pytest.mark.parametrize("output", ["probability", "logit"])
def test_relevance_completeness(toy, data, method, output) -> None:
    # Σ_q GIG(v_q → e_c) = w_c(U) − w_c(0) up to the IG error (nonlinear layer3 in between)
    x, y, ext = data["x"][:6], data["y"][:6], data["layer2"][method]
    U = cm.encode_layer(toy, x, ext)
    r = cm.class_relevance(toy, x, ext, y, U=U, output=output, n_steps=64,
                           internal_batch_size=96)
    full, base = (tail(toy, "layer2", decoded(ext, u)) for u in (U, torch.zeros_like(U)))
    if output == "probability":
        full, base = full.softmax(1), base.softmax(1)
    gap = (full - base).gather(1, y[:, None]).squeeze(1)
    assert gap.abs().min() > 0.05                 # the test is not trivially 0 = 0
    torch.testing.assert_close(r.sum(1), gap, atol=0.02 * gap.abs().max().item(), rtol=0.02)


def test_curve_end_points(toy, data) -> None:
    x, y, ext = data["x"][:8], data["y"][:8], data["layer2"]["kmeans"]
    U = cm.encode_layer(toy, x, ext)
    importance = cm.class_relevance(toy, x, ext, y, U=U, n_steps=16)
    ins = cm.c_insertion_curve(toy, x, ext, importance, y, U=U)
    dele = cm.c_deletion_curve(toy, x, ext, importance, y, U=U)
    assert ins.shape == dele.shape == (8, U.shape[2] + 1)
    with torch.no_grad():
        full = tail(toy, "layer2", decoded(ext, U)).softmax(1).gather(1, y[:, None])[:, 0]
        base = tail(toy, "layer2", decoded(ext, 0 * U)).softmax(1).gather(1, y[:, None])[:, 0]
    # deleting every concept leaves decode(0) = μ_BN: the baseline, like inserting none
    torch.testing.assert_close(dele[:, -1], base, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(ins[:, 0], base, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(ins[:, -1], full, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(dele[:, 0], full, atol=1e-5, rtol=1e-4)


def test_skipped_steps_match_running_every_step(toy, data) -> None:
    # the curve only runs the steps that touch a concept present in the image; compare with
    # running all K + 1 steps by hand
    x, y, ext = data["x"][:3], data["y"][:3], data["layer2"]["topk-sae"]
    U = cm.encode_layer(toy, x, ext)
    importance = torch.randn(U.shape[0], U.shape[2], generator=torch.Generator().manual_seed(0))
    curve = cm.c_insertion_curve(toy, x, ext, importance, y, U=U)
    order = importance.argsort(1, descending=True)
    for b in range(len(x)):
        steps = []
        for s in range(U.shape[2] + 1):
            keep = torch.zeros(U.shape[2], dtype=torch.bool)
            keep[order[b, :s]] = True
            with torch.no_grad():
                p = tail(toy, "layer2", decoded(ext, U[b:b + 1] * keep)).softmax(1)
            steps.append(p[0, y[b]])
        torch.testing.assert_close(curve[b], torch.stack(steps), atol=1e-5, rtol=1e-4)


def test_auc_matches_sklearn() -> None:
    curve = torch.rand(4, 17, dtype=torch.float64)
    x = np.linspace(0, 1, 17)
    expected = [auc(x, c) for c in curve.numpy()]
    np.testing.assert_allclose(cm.curve_auc(curve).numpy(), expected)


def test_importance_order_beats_random_order(toy, data) -> None:
    # GIG Sec. 4.2.1: concepts ranked by Eq. 7 restore the class faster (insertion) and
    # destroy it faster (deletion) than random rankings
    x, y, ext = data["x"][:16], data["y"][:16], data[LAYER]["kmeans"]
    U = cm.encode_layer(toy, x, ext)
    importance = cm.class_relevance(toy, x, ext, y, U=U, n_steps=16)
    g = torch.Generator().manual_seed(0)
    ins = cm.c_insertion_auc(toy, x, ext, importance, y, U=U).mean()
    dele = cm.c_deletion_auc(toy, x, ext, importance, y, U=U).mean()
    rand_ins, rand_del = [], []
    for _ in range(3):
        r = torch.rand(importance.shape, generator=g)
        rand_ins.append(cm.c_insertion_auc(toy, x, ext, r, y, U=U).mean())
        rand_del.append(cm.c_deletion_auc(toy, x, ext, r, y, U=U).mean())
    # measured (16 images, K = 24): insertion 0.95 vs 0.64–0.65, deletion 0.20 vs 0.65–0.68
    assert ins > max(rand_ins) + 0.2
    assert dele < min(rand_del) - 0.2


def test_reconstruction_metrics_of_a_perfect_codebook() -> None:
    # one cluster per PFV with nearest encoding: exact reconstruction, one non-zero per row
    X = torch.randn(30, 6)
    ext = fit_concepts(X, "kmeans", 30, encoding="nearest")
    scores = cm.reconstruction_metrics(ext, X)
    assert scores["rel_l2"] < 1e-5
    assert scores["l0_ratio"] == pytest.approx(1 - 1 / 30)


def test_ierf_labels_are_the_argmax_of_weighted_mass() -> None:
    g = torch.Generator().manual_seed(0)
    maps = torch.randint(0, 4, (5, 16, 16), generator=g)
    ierfs = torch.rand(5, 16, 16, generator=g) - 0.3
    expected = torch.stack([torch.stack([(ierfs[i].clamp_min(0) * (maps[i] == l)).sum()
                                         for l in range(4)]).argmax() for i in range(5)])
    assert torch.equal(cm.ierf_labels(ierfs, maps, 4), expected)
    # area-pooled iERFs (the atlas stores them downsampled) give the same mass per block
    pooled = torch.nn.functional.avg_pool2d(ierfs.clamp_min(0)[:, None], 4)[:, 0]
    block_maps = maps.reshape(5, 4, 4, 4, 4)[:, :, 0, :, 0]               # one label per block
    blocky = block_maps.repeat_interleave(4, 1).repeat_interleave(4, 2)
    full = cm.ierf_labels(pooled.repeat_interleave(4, 1).repeat_interleave(4, 2), blocky, 4)
    assert torch.equal(cm.ierf_labels(pooled, blocky, 4), full)


def test_purity_nmi_f1_against_sklearn() -> None:
    g = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 4, (300,), generator=g)
    assigned = torch.where(torch.rand(300, generator=g) < 0.7, labels * 2,
                           torch.randint(0, 9, (300,), generator=g))
    table = contingency_matrix(labels.numpy(), assigned.numpy())          # (labels, concepts)
    assert cm.purity(assigned, labels) == pytest.approx(table.max(0).sum() / 300)
    best = cm.recovered_parts(assigned, labels, [1, 2, 3])
    for p in (1, 2, 3):
        f1 = max(f1_score(labels.numpy() == p, assigned.numpy() == j) for j in range(9))
        assert best[p] == pytest.approx(f1)
    merged = cm.recovered_parts(assigned, labels, [1, 2, 3], merge=True)
    assert all(merged[p] >= best[p] - 1e-12 for p in (1, 2, 3))
    assert cm.nmi(labels * 2, labels) == pytest.approx(1.0)


def recovery(toy, n: int, samples: int, k: int, merge: bool):
    """NMI, shuffled NMI and per-part F1 of k-means concepts of layer3 PFVs (atlas sampling)."""
    bench = generate(n, seed=0, split="train")
    x = normalise(bench.images)
    s = atlas_samples(toy, ierf.SRD(toy), x, list(range(n)), [LAYER], samples)[LAYER]
    ext = fit_concepts(s["pfv"], "kmeans", k, center=layer_center(toy, LAYER))
    labels = cm.ierf_labels(s["ierf"], bench.concept_maps["part"][s["image"]].long(),
                            len(PART_TYPES) + 1)
    shuffled = ext.labels_[torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))]
    parts = cm.recovered_parts(ext.labels_, labels, list(range(1, len(PART_TYPES) + 1)), merge)
    return cm.nmi(ext.labels_, labels), cm.nmi(shuffled, labels), parts


def test_ground_truth_parts_are_recovered(toy) -> None:
    # measured (120 images × 4 samples, K = 8): NMI 0.80 vs 0.02 shuffled, best F1 per part
    # 0.78–0.98 (5/5 ≥ 0.5); the thresholds leave a wide margin
    nmi, nmi_shuffled, parts = recovery(toy, 120, 4, 8, merge=False)
    assert nmi > nmi_shuffled + 0.4
    assert sum(f1 >= 0.5 for f1 in parts.values()) >= 4, parts


@pytest.mark.slow
def test_ground_truth_parts_are_recovered_over_complete(toy) -> None:
    # 400 images × 4 samples, K = 32 (over-complete: parts split over several concepts,
    # scored after merging concepts by their majority part). Measured: NMI 0.58 vs 0.02
    # shuffled, merged F1 0.90–0.94 (single best concept: 0.30–0.58)
    nmi, nmi_shuffled, parts = recovery(toy, 400, 4, 32, merge=True)
    assert nmi > nmi_shuffled + 0.3
    assert sum(f1 >= 0.5 for f1 in parts.values()) == 5, parts


@pytest.mark.parametrize("name,layer", [("toy-resnet", "layer2"), ("toy-vit", "blocks.2")])
def test_exact_codebook_through_the_subnetwork_reproduces_the_model(name, layer) -> None:
    # one concept per PFV with nearest encoding reconstructs every PFV exactly, so running
    # the network from the replaced layer (feature map or CLS + patch tokens) gives the
    # model's own output, and C-insertion of all concepts ends at the model's probability
    model = ierf.load_model(name)
    x = normalise(generate(2, seed=5, split="test").images)
    X = model.pfvs(x, layer)[layer].vectors.flatten(0, 1)
    ext = ConceptBasis.bind(fit_concepts(X, "kmeans", len(X), encoding="nearest"), model, layer)
    U = cm.encode_layer(model, x, ext)
    with torch.no_grad():
        probs = model(x).softmax(1)
        torch.testing.assert_close(cm.concept_output(model, x, ext, U), probs,
                                   atol=1e-5, rtol=1e-4)
    y = probs.argmax(1)
    curve = cm.c_insertion_curve(model, x, ext, torch.rand(2, len(X)), y, U=U)
    torch.testing.assert_close(curve[:, -1], probs.gather(1, y[:, None])[:, 0],
                               atol=1e-5, rtol=1e-4)

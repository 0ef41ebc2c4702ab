"""C2-score (FaCT Eqs. 13–16): constructed cases, batching, the ground-truth feature path, the
feature models, and ``ierf bench c2`` end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from ierf.errors import IerfError, WeightsUnavailableError
from ierf.metrics.c2 import C2Score, consistency, pool, random_maps, select_images
from ierf.metrics.c2_features import (
    DINOV2_HUB,
    DinoV2Features,
    ModelFeatures,
    label_feature_names,
    label_features,
)


def _planted(n: int = 40, d: int = 16, size: int = 12, seed: int = 0
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian features (n, d, size, size) with one fixed vector planted in the top-left
    4×4 corner of every image, and that corner's indicator map (size, size)."""
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(n, d, size, size, generator=g)
    v = torch.randn(d, generator=g) * 3
    feats[:, :, :4, :4] = v[:, None, None] + 0.1 * torch.randn(n, d, 4, 4, generator=g)
    corner = torch.zeros(size, size)
    corner[:4, :4] = 1
    return feats, corner


def test_select_images_top_fraction_at_least_and_minimum():
    n = 400
    presence = torch.zeros(n, 4)
    presence[:300, 0] = torch.arange(300, 0, -1).float()   # 5 % of 300 = 15
    presence[:50, 1] = torch.rand(50) + 0.1                # 5 % of 50 < 10 → 10
    presence[:7, 2] = 1.0                                  # fewer than 10 → all 7
    presence[:3, 3] = 1.0                                  # fewer than 5 → not scored
    sel = select_images(presence)
    assert sel.sum(0).tolist() == [15, 10, 7, 0]
    assert sel[:15, 0].all()                               # the top ones
    assert presence[sel[:, 1], 1].min() >= presence[~sel[:, 1], 1].max()
    with pytest.raises(IerfError):
        select_images(presence[:, 0])


def test_pool_is_the_attribution_weighted_mean_and_ignores_negative_attribution():
    feats = torch.randn(2, 5, 6, 6)
    maps = torch.zeros(2, 1, 6, 6)
    maps[0, 0, 1, 2], maps[0, 0, 3, 4] = 3.0, 1.0
    maps[1, 0, 0, 0], maps[1, 0, 5, 5] = 2.0, -7.0
    emb, mass = pool(maps, feats)
    torch.testing.assert_close(emb[0, 0], (3 * feats[0, :, 1, 2] + feats[0, :, 3, 4]) / 4)
    torch.testing.assert_close(emb[1, 0], feats[1, :, 0, 0])
    torch.testing.assert_close(mass, torch.tensor([[4.0], [2.0]]))


def test_consistency_weights_pairs_by_presence_and_skips_the_diagonal():
    e = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]])          # cos: 1, 0, 0
    w = torch.tensor([[1.0, 2.0, 3.0]])
    got = consistency(e, w, torch.ones(1, 3, dtype=torch.bool))
    # pairs (0,1): 1·2·1, (0,2): 1·3·0, (1,2): 2·3·0 → 2 / (2 + 3 + 6)
    torch.testing.assert_close(got, torch.tensor([2 / 11]))
    only_one = consistency(e, w, torch.tensor([[True, False, False]]))
    assert only_one.isnan().all()


def test_identical_concepts_score_high_and_random_maps_score_zero():
    feats, corner = _planted()
    n = len(feats)
    g = torch.Generator().manual_seed(1)
    maps = torch.rand(n, 2, *corner.shape, generator=g)
    maps[:, 0] = corner                              # the same map on the same planted feature
    presence = torch.rand(n, 2, generator=g) + 0.1
    r = C2Score(n_random=3)(maps, presence, feats)
    assert r.consistency[0] > 0.95
    assert r.scores[0] > 0.9
    assert abs(float(r.scores[1])) < 0.3             # one random concept, ~10 images
    assert r.scores[0] - r.scores[1] > 0.7


def test_random_concepts_average_zero_within_their_standard_error():
    g = torch.Generator().manual_seed(2)
    n, k = 200, 64
    feats = torch.randn(n, 32, 8, 8, generator=g)
    maps = torch.rand(n, k, 8, 8, generator=g)
    presence = torch.rand(n, k, generator=g)
    r = C2Score(n_random=3, seed=5)(maps, presence, feats)
    assert r.evaluated.all() and (r.n_images == 10).all()
    assert 0 < r.se < 0.02                            # so the tolerance below is tight
    assert abs(r.mean) < 4 * r.se
    assert abs(r.baseline) < 0.02                     # random maps over all 200 images


def test_delta_rand_is_subtracted_and_a_constant_feature_offset_cancels():
    feats, corner = _planted(seed=3)
    n = len(feats)
    g = torch.Generator().manual_seed(4)
    maps = torch.rand(n, 3, *corner.shape, generator=g)
    maps[:, 0] = corner
    presence = torch.rand(n, 3, generator=g)
    metric = C2Score(n_random=2, seed=7)
    r = metric(maps, presence, feats)
    torch.testing.assert_close(r.scores, r.consistency - r.random.mean())
    assert r.random.shape == (2,)
    # A baseline similarity shared by every pixel (what dataset centring removes, App. C.3)
    shifted = metric(maps, presence, feats + 50 * torch.randn(16, 1, 1))
    torch.testing.assert_close(shifted.scores, r.scores, atol=1e-4, rtol=1e-4)
    # Without centring such an offset would make any concept look consistent
    e = torch.stack([pool(maps[:, k:k + 1], feats + 50)[0][:, 0] for k in range(3)])
    raw = consistency(e, presence.T, metric.select(presence).T)
    assert (raw > 0.99).all() and (r.consistency[1:] < 0.5).all()
    # The baseline depends on the seed only through the random maps
    other = C2Score(n_random=2, seed=8)(maps, presence, feats)
    torch.testing.assert_close(other.consistency, r.consistency)
    assert not torch.equal(other.random, r.random)


def test_scores_do_not_depend_on_batching_over_concepts_or_images():
    feats, corner = _planted(n=48, seed=5)
    g = torch.Generator().manual_seed(6)
    k = 5
    maps = torch.rand(48, k, *corner.shape, generator=g) ** 4
    maps[:, 0] = corner
    presence = torch.rand(48, k, generator=g) - 0.2
    metric = C2Score(at_least=6, min_images=3)
    together = metric(maps, presence, feats)
    alone = torch.cat([metric(maps[:, [j]], presence[:, [j]], feats).scores for j in range(k)])
    torch.testing.assert_close(together.scores, alone, equal_nan=True)
    acc = metric.accumulator(presence)
    for a in range(0, 48, 7):
        ids, valid = acc.concepts_for(a, a + 7)
        chunk = maps[a:a + 7].gather(1, ids[..., None, None].expand(-1, -1, 12, 12))
        acc.add(a, feats[a:a + 7], chunk, valid)
    torch.testing.assert_close(acc.result().scores, together.scores, equal_nan=True)
    torch.testing.assert_close(acc.result().random, together.random)
    with pytest.raises(IerfError, match="already added"):
        acc.add(0, feats[:7], chunk[:7], acc.concepts_for(0, 7)[1])


def test_random_maps_are_seeded_per_image():
    a = random_maps(torch.tensor([3, 4, 5]), 2, (4, 4), seed=1)
    b = random_maps(torch.tensor([5]), 2, (4, 4), seed=1)
    torch.testing.assert_close(a[2], b[0])
    assert (a >= 0).all() and (a <= 1).all()
    assert (a.amin((-2, -1)) > 0).all()               # max(U, t): floored by t


def test_random_concepts_pick_independent_images():
    from ierf.bench.c2 import RandomConcepts

    presence = RandomConcepts(n_concepts=64).presence(torch.empty(0), torch.arange(200))
    sel = select_images(presence).float()                 # 10 images per concept
    overlap = (sel.T @ sel).fill_diagonal_(0).sum() / (64 * 63)
    assert overlap < 1.5                              # independent sets share 10·10/200 = 0.5


def test_ground_truth_features_same_part_high_random_parts_low():
    from ierf.data.synthetic import generate

    batch = generate(60, seed=0, split="test")
    feats = label_features(batch.concept_maps)
    assert feats.shape == (60, len(label_feature_names()), 64, 64)
    part = batch.concept_maps["part"]
    objects = batch.concept_maps["object"]
    # one 1 per labelled key: 4 on key parts, 3 on distractors (no part), 0 on background
    expected = (objects > 0).float() * 3 + (part > 0).float()
    torch.testing.assert_close(feats.sum(1), expected)
    same = (part == 2).float()                        # part type 1 wherever it appears
    rng = np.random.default_rng(0)
    chosen = torch.tensor([rng.integers(1, int(o.max()) + 1) for o in objects])
    anywhere = (objects == chosen[:, None, None]).float()
    maps = torch.stack([same, anywhere], 1)
    presence = maps.sum((-2, -1))
    r = C2Score(at_least=20)(maps, presence, feats)
    assert r.evaluated.all() and (r.n_images >= 10).all()
    assert r.scores[0] > 0.9                          # identical labels: cos = 1
    # random objects share some labels by chance (4 colours, 3 textures): measured 0.40
    assert r.scores[1] < 0.6
    assert r.scores[0] - r.scores[1] > 0.5


class _HubStandIn(nn.Module):
    """The interface of the torch.hub DINOv2: ``patch_embed.patch_size`` and
    ``forward_features`` → dict with ``x_norm_patchtokens`` (here: patch-mean colours)."""

    def __init__(self) -> None:
        super().__init__()
        self.patch_embed = nn.Module()
        self.patch_embed.patch_size = (14, 14)

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        tokens = nn.functional.avg_pool2d(x, 14).flatten(2).transpose(1, 2)
        return {"x_norm_patchtokens": tokens, "x_norm_clstoken": tokens.mean(1)}


def test_dinov2_wrapper_on_the_hub_interface(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.hub, "load", lambda *a, **k: calls.append(a) or _HubStandIn())
    fm = DinoV2Features(size=56)
    assert calls == [(DINOV2_HUB, "dinov2_vits14")]
    x = torch.rand(2, 3, 64, 64)
    out = fm(x)
    assert out.shape == (2, 3, 64, 64)
    # the hub model sees ImageNet-normalised 56×56 images; its 4×4 grid is upsampled
    small = nn.functional.interpolate(x, size=(56, 56), mode="bilinear", antialias=True)
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    grid = nn.functional.avg_pool2d((small - mean) / std, 14)
    torch.testing.assert_close(out, nn.functional.interpolate(grid, size=(64, 64),
                                                              mode="bilinear"))
    with pytest.raises(IerfError, match="multiple of the patch size"):
        DinoV2Features(_HubStandIn(), size=50)


def test_dinov2_offline_error(monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(torch.hub, "load", offline)
    with pytest.raises(WeightsUnavailableError, match="--features labels"):
        DinoV2Features()


def test_dinov2_wrapper_on_the_real_architecture_with_random_weights():
    import timm

    torch.manual_seed(0)
    vit = timm.create_model("vit_small_patch14_dinov2", pretrained=False, img_size=56)
    fm = DinoV2Features(vit, size=56)
    out = fm(torch.rand(2, 3, 40, 40))
    assert out.shape == (2, 384, 40, 40) and torch.isfinite(out).all()
    assert out.std() > 0


def test_efficientnet_stand_in_features(lite0):
    fm = ModelFeatures(lite0)
    assert "stand-in" in fm.name and fm.layer == lite0.layer_at_stride(16)
    out = fm(torch.rand(1, 3, 64, 64))
    assert out.shape[0] == 1 and out.shape[-2:] == (64, 64) and out.shape[1] > 16


def test_bcos_channel_traces_are_exact():
    import ierf
    from ierf.bench.c2 import FactConcepts, channel_traces
    from ierf.data.synthetic import generate

    model = ierf.load_model("fact-toy")
    x = generate(3, seed=2, split="test").images
    source = FactConcepts(model, channels=True)
    presence = source.presence(x, torch.arange(3))
    channels = torch.tensor([[0, 5], [7, 7], [63, 1]])
    traces = channel_traces(model, x, channels)
    assert traces.shape == (3, 2, 64, 64)
    torch.testing.assert_close(traces.sum((-2, -1)), presence.gather(1, channels),
                               rtol=1e-3, atol=1e-3)


def test_cafe_latent_source_maps_only_valid_pairs(toy_vit):
    from ierf.bench.c2 import LatentConcepts
    from ierf.cafe.latents import latent_activations
    from ierf.concepts.basis import ConceptBasis
    from ierf.data.synthetic import generate
    from ierf.local.gated import TOY_VIT_SAE

    source = LatentConcepts(toy_vit, ConceptBasis.load(TOY_VIT_SAE))
    x = generate(2, seed=3, split="test").images
    presence = source.presence(x, torch.arange(2))
    torch.testing.assert_close(presence, latent_activations(
        toy_vit, source.basis, toy_vit.normalize(x)).sum(1))
    ids = presence.topk(2, dim=1).indices
    valid = torch.tensor([[True, True], [True, False]])
    maps = source.maps(x, torch.arange(2), ids, valid)
    assert maps.shape == (2, 2, 64, 64)
    assert (maps[1, 1] == 0).all()
    assert all(maps[b, m].abs().sum() > 0 for b, m in valid.nonzero().tolist())


def test_bench_c2_end_to_end(tmp_path, capsys):
    from ierf.cli import main

    out = tmp_path / "c2"
    methods = ["fact", "kmeans", "random"]
    assert main(["bench", "c2", "--n", "12", "--methods", ",".join(methods),
                 "--max-concepts", "3", "--at-least", "3", "--min-images", "3",
                 "--atlas-images", "8", "--n-concepts", "4", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    for m in methods:
        assert f"| {m} |" in text
    report = json.loads((out / "c2.json").read_text())
    assert [r["method"] for r in report["rows"]] == methods
    assert report["n_images"] == 12 and "labels" in report["features"]
    for r in report["rows"]:
        assert 0 < r["scored"] <= 3
        assert -1 <= r["consistency"] <= 1 and -1 <= r["random_baseline"] <= 1
        assert r["c2"] == pytest.approx(r["consistency"] - r["random_baseline"], abs=1e-5)
    assert (out / "c2.csv").read_text().startswith("method,")
    assert (out / "atlas").is_dir()                   # the post-hoc atlas, reused next time
    assert main(["bench", "c2", "--methods", "nope", "-o", str(out)]) == 2

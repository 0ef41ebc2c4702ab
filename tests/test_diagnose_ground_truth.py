"""Ground truth of the diagnoses (IERF Sec. VI-E) on the synthetic benchmark with toy-resnet:
each class's route lies on the half of a composite image that holds its parts, and a
localised attack changes concepts whose iERFs lie where the perturbation is."""

from __future__ import annotations

import pytest
import torch

from ierf.data.synthetic import CLASS_PARTS, generate
from ierf.diagnose.ground_truth import (
    composite_scene,
    composites,
    disjoint_class_pairs,
    node_parts,
    part_hit_rate,
)
from ierf.diagnose.pipeline import class_routes, diagnose_attack, diagnose_classes
from ierf.diagnose.regions import area_share, halves, mass_share
from ierf.errors import IerfError
from ierf.graph.ground_truth import fit_bases

torch.set_num_threads(2)
LAYERS = ("layer2", "layer3")
PAIRS = 5          # composites measured (of the 20 disjoint ordered pairs)
ATTACKED = 4       # images attacked


@pytest.fixture(scope="module")
def setup(toy) -> dict:
    """Bisecting spherical k-means bases (16 concepts) of benchmark training images."""
    return {"model": toy, "bases": fit_bases(toy, LAYERS, n_concepts=16, n_images=16)}


def test_composites_hold_each_class_in_its_half() -> None:
    pairs = disjoint_class_pairs()
    assert len(pairs) == 20 and all(not set(CLASS_PARTS[a]) & set(CLASS_PARTS[b])
                                    for a, b in pairs)
    comp = composites(pairs[:4])
    assert comp.images.shape == (4, 3, 64, 64) and comp.classes.tolist() == [list(p) for p in pairs[:4]]
    assert not bool((comp.part_masks & ~comp.regions).any())     # parts inside their half
    assert bool(comp.part_masks.flatten(2).any(2).all())
    for i, (a, b) in enumerate(pairs[:4]):
        present = set(comp.parts[i].unique().tolist()) - {0}
        assert present == {p + 1 for p in (*CLASS_PARTS[a], *CLASS_PARTS[b])}
    with pytest.raises(IerfError, match="two different benchmark classes"):
        composite_scene(3, 3)


def test_node_parts_names_the_part_under_the_mass() -> None:
    parts = torch.zeros(8, 8, dtype=torch.long)
    parts[:4, :4], parts[4:, 4:] = 2, 5
    ierfs = torch.zeros(3, 8, 8)
    ierfs[0, :4, :4] = 1.0
    ierfs[1, 4:, 4:] = 1.0
    ierfs[1, :4, :4] = 0.5
    assert node_parts(ierfs, parts).tolist() == [2, 5, 0]
    assert part_hit_rate(ierfs, parts, 0).tolist() == [True, False, False]   # class 0: parts 1, 2


def test_each_class_route_lies_on_the_half_holding_its_parts(setup) -> None:
    """The paper's tiger cat / boxer case with known answers: the route region map of each of
    the two classes puts more mass on its own half than chance (0.5)."""
    model, bases = setup["model"], setup["bases"]
    pairs = disjoint_class_pairs()[::20 // PAIRS][:PAIRS]
    comp = composites(pairs)
    x = model.normalize(comp.images)
    shares, srd, hits = [], [], []
    for i, (a, b) in enumerate(pairs):
        r = class_routes(model, bases, x[i:i + 1], [a, b], k=5, n_steps=4)
        shares.append(mass_share(r.region_maps, comp.regions[i]))
        srd.append(mass_share(r.saliency, comp.regions[i]))
        for c in (a, b):
            nodes = list(dict.fromkeys(n for route in r.routes[c] for n in route.nodes[:-1]))
            ierfs = torch.stack([r.locations[n][1] for n in nodes])
            hits.append(part_hit_rate(ierfs, comp.parts[i], c).float().mean())
    shares, srd, hits = torch.stack(shares), torch.stack(srd), torch.stack(hits)
    chance = float(area_share(comp.regions[0, 0]))
    print(f"route mass on own half {float(shares.mean()):.3f} (min {float(shares.min()):.3f}, "
          f"chance {chance:.3f}); SRD {float(srd.mean()):.3f}; part hits "
          f"{float(hits.mean()):.3f} (chance 0.5)")
    assert chance == 0.5
    assert float(shares.mean()) > 0.8
    assert float(shares.min()) > 0.6
    assert float(hits.mean()) > 0.7


def test_diagnosis_of_a_composite_compares_the_prediction_with_the_expected_class(setup
                                                                                   ) -> None:
    model, bases = setup["model"], setup["bases"]
    a, b = disjoint_class_pairs()[0]
    comp = composites([(a, b)])
    x = model.normalize(comp.images)
    with torch.no_grad():
        pred = int(model(x).argmax())
    expected = b if pred != b else a
    d = diagnose_classes(model, bases, x, expected=expected, k=3, n_steps=2)
    assert d.classes == [pred, expected] and d.comparison is not None
    assert d.comparison.classes == (pred, expected)
    assert d.region_maps.shape == d.saliency.shape == (2, 64, 64)
    torch.testing.assert_close(d.region_maps.sum((1, 2)), torch.ones(2))
    one = diagnose_classes(model, bases, x, expected=pred, k=2, n_steps=2)
    assert one.classes == [pred] and one.comparison is None and "nothing to diagnose" in one.note


def test_localised_attack_changes_concepts_where_the_perturbation_is(setup) -> None:
    """A targeted PGD confined to the left half: the changed concepts' iERFs put more mass on
    the pixels holding half the perturbation's energy than those pixels' area share."""
    model, bases = setup["model"], setup["bases"]
    batch = generate(ATTACKED, seed=0, split="test")
    x = model.normalize(batch.images)
    with torch.no_grad():
        pred = model(x).argmax(1)
    left = halves(64, 64)[0].float()[None, None]
    shares, chances, flips, halves_ = [], [], [], []
    for i in range(ATTACKED):
        d = diagnose_attack(model, bases, x[i:i + 1], int((pred[i] + 3) % 8), "pgd", 16 / 255,
                            steps=20, mask=left, k=5, n_steps=4)
        assert float(d.attack.delta[..., 32:].abs().max()) == 0
        if not d.success or d.energy_share is None:
            continue
        shares.append(d.energy_share)
        chances.append(d.chance)
        flips.append(d.comparison.route_flip)
        halves_.append(float(mass_share(d.changed_map, left[0, 0] > 0)))
    print(f"attacks reached {len(shares)}/{ATTACKED}; changed concepts' iERF mass on the "
          f"energy region {sum(shares) / max(len(shares), 1):.3f} (chance "
          f"{sum(chances) / max(len(chances), 1):.3f}), on the attacked half "
          f"{sum(halves_) / max(len(halves_), 1):.3f} (chance 0.5); route flip "
          f"{sum(flips) / max(len(flips), 1):.3f}")
    assert len(shares) >= ATTACKED // 2
    assert sum(shares) / len(shares) > 1.5 * sum(chances) / len(chances)
    assert sum(halves_) / len(halves_) > 0.55
    assert min(flips) > 0

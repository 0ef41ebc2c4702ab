"""Measured ground truth of `ierf diagnose` on the synthetic benchmark with toy-resnet
(IERF Sec. VI-E; see ierf.diagnose.ground_truth).

1. Two classes: composites with class a's parts in the left half and class b's in the right
   half; each class's route region map (its routes' node iERFs) — share of its mass on the
   half holding its parts, against chance (0.5), and on its parts' pixels, against their
   area; the class's SRD map for comparison; how often a route node's dominant part is one
   of the class's parts (chance 0.5: two of the four parts drawn).
2. Attack: targeted PGD confined to the left half (a localised perturbation) and plain
   targeted FGSM: success, route-flip score, and the changed concepts' iERF mass on the
   pixels holding half the perturbation's energy against that region's area share.

    python scripts/diagnose_ground_truth.py [--pairs 20] [--images 8] [--steps 8]
"""

from __future__ import annotations

import argparse
import time

import torch

import ierf
from ierf.data.synthetic import generate
from ierf.diagnose.ground_truth import composites, disjoint_class_pairs, part_hit_rate
from ierf.diagnose.pipeline import class_routes, diagnose_attack
from ierf.diagnose.regions import area_share, halves, mass_share
from ierf.graph.ground_truth import fit_bases


def two_classes(model: ierf.Model, bases: dict, n_pairs: int, k: int, steps: int) -> None:
    pairs = disjoint_class_pairs()[:n_pairs]
    comp = composites(pairs)
    x = model.normalize(comp.images)
    with torch.no_grad():
        pred = model(x).argmax(1)
    rows = []
    for i, (a, b) in enumerate(pairs):     # one per-image graph each
        r = class_routes(model, bases, x[i:i + 1], [a, b], k=k, n_steps=steps)
        half = mass_share(r.region_maps, comp.regions[i])
        parts = mass_share(r.region_maps, comp.part_masks[i])
        srd = mass_share(r.saliency, comp.regions[i])
        hits = []
        for c in (a, b):
            nodes = [n for route in r.routes[c] for n in route.nodes[:-1]]
            ierfs = torch.stack([r.locations[n][1] for n in nodes])
            hits.append(float(part_hit_rate(ierfs, comp.parts[i], c).float().mean()))
        rows.append((half, parts, area_share(comp.part_masks[i]), srd, torch.tensor(hits)))
        print(f"  {a}|{b} predicted {int(pred[i])}: route share on own half "
              f"{half[0]:.3f} / {half[1]:.3f}, on own parts {parts[0]:.3f} / {parts[1]:.3f} "
              f"(area {rows[-1][2][0]:.3f} / {rows[-1][2][1]:.3f}), SRD on own half "
              f"{srd[0]:.3f} / {srd[1]:.3f}, part hits {hits[0]:.2f} / {hits[1]:.2f}")
    half, parts, area, srd, hits = (torch.stack(v) for v in zip(*rows))
    print(f"two classes, {len(pairs)} composites: route mass on own half {half.mean():.3f} "
          f"(chance 0.500; min {half.min():.3f}); on own parts {parts.mean():.3f} (chance "
          f"{area.mean():.3f}); SRD on own half {srd.mean():.3f}; route nodes named after the "
          f"class's parts {hits.mean():.3f} (chance 0.500); predicted one of the two classes: "
          f"{float(((pred == comp.classes[:, 0]) | (pred == comp.classes[:, 1])).float().mean()):.2f}")


def attacks(model: ierf.Model, bases: dict, n: int, k: int, steps: int, eps: float) -> None:
    batch = generate(n, seed=0, split="test")
    x = model.normalize(batch.images)
    with torch.no_grad():
        pred = model(x).argmax(1)
    left = halves(64, 64)[0].float()[None, None]
    for name, kw in (("PGD, left half only", {"attack": "pgd", "mask": left, "steps": 20}),
                     ("FGSM, whole image", {"attack": "fgsm"})):
        flips, shares, chances, lefts, via, ok = [], [], [], [], [], 0
        for i in range(n):
            d = diagnose_attack(model, bases, x[i:i + 1], int((pred[i] + 3) % 8), eps=eps,
                                k=k, n_steps=steps, **kw)
            if not d.success:
                continue
            ok += 1
            flips.append(d.comparison.route_flip)
            tc = d.comparison.target_change
            via.append(tc["concepts"] / tc["total"])
            if d.energy_share is not None:
                shares.append(d.energy_share)
                chances.append(d.chance)
                lefts.append(float(mass_share(d.changed_map, left[0, 0] > 0)))
        t = torch.tensor
        print(f"attack {name} (eps {eps:.4g}): success {ok}/{n}; route flip "
              f"{t(flips).mean():.3f} (min {t(flips).min():.3f})" if flips else
              f"attack {name}: success {ok}/{n}")
        if via:
            print(f"  share of the target logit's rise carried by concepts (not the error "
                  f"node): {t(via).mean():.3f}")
        if shares:
            print(f"  changed concepts' iERF mass on the energy region {t(shares).mean():.3f} "
                  f"(chance {t(chances).mean():.3f}); on the left half {t(lefts).mean():.3f} "
                  "(chance 0.500)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pairs", type=int, default=20)
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--steps", type=int, default=8, help="IG steps")
    p.add_argument("--routes", type=int, default=5)
    p.add_argument("--concepts", type=int, default=16)
    p.add_argument("--eps", type=float, default=16 / 255)
    args = p.parse_args()
    start = time.perf_counter()
    model = ierf.load_model("toy-resnet")
    bases = fit_bases(model, ["layer2", "layer3"], n_concepts=args.concepts, n_images=32)
    print(f"bases fitted ({time.perf_counter() - start:.1f} s)")
    two_classes(model, bases, args.pairs, args.routes, args.steps)
    print(f"({time.perf_counter() - start:.1f} s)")
    attacks(model, bases, args.images, args.routes, args.steps, args.eps)
    print(f"({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()

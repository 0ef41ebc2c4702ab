"""`ierf bench c2`: the C2-score (FaCT Sec. 4, Eq. 16) of every concept method of ierf on the
same synthetic-benchmark test images, with one feature model (see :mod:`ierf.bench.c2`)."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ierf.bench.c2 import ConceptSource

FEATURES = ("labels", "efficientnet_lite0", "dinov2")
METHOD_NAMES = ("fact", "bcos-channels", "kmeans", "topk-sae", "cafe", "random")
HEADERS = ("method", "concepts scored", "images / concept", "Cons ↑", "Cons_rand", "C2 ↑",
           "s", "what")


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``ierf bench c2``."""
    p = sub.add_parser("c2", help="C2-score (FaCT Eq. 16) of FaCT concepts, B-cos channels, "
                       "post-hoc k-means / SAE concepts, CAFE latents and random concepts")
    p.add_argument("--n", type=int, default=200, help="test images of the synthetic benchmark "
                   "(default 200)")
    p.add_argument("--features", default="labels", choices=FEATURES,
                   help="feature model: labels (the benchmark's one-hot colour / shape / "
                   "texture / part per pixel: ground-truth consistency, default), "
                   "efficientnet_lite0 (offline stand-in for DINOv2), dinov2 (the paper's; "
                   "torch.hub download, bilinear upsampling instead of LoftUp)")
    p.add_argument("--methods", default=",".join(METHOD_NAMES),
                   help=f"comma-separated (default all: {','.join(METHOD_NAMES)})")
    p.add_argument("--max-concepts", type=int, default=64, help="concepts scored per method, "
                   "drawn (seeded) among those present on enough images (default 64)")
    p.add_argument("--fraction", type=float, default=0.05,
                   help="top fraction of each concept's images (default 0.05)")
    p.add_argument("--at-least", type=int, default=10,
                   help="images per concept at least (default 10, App. C.3)")
    p.add_argument("--min-images", type=int, default=5,
                   help="concepts present on fewer images are not scored (default 5)")
    p.add_argument("--n-random", type=int, default=3,
                   help="random concepts in the Δ_rand baseline (default 3)")
    p.add_argument("--atlas", help="PFV–iERF atlas of the post-hoc model (default: "
                   "OUT/atlas, built over --atlas-images training images when missing)")
    p.add_argument("--atlas-images", type=int, default=64,
                   help="training images of a new atlas (default 64, 4 PFVs each)")
    p.add_argument("--layer", default="layer3", help="atlas layer of the post-hoc concepts "
                   "(default layer3)")
    p.add_argument("--n-concepts", type=int, default=32,
                   help="K of the post-hoc k-means / SAE (default 32)")
    p.add_argument("--sae-epochs", type=int, default=100,
                   help="training epochs of the post-hoc SAE (default 100)")
    p.add_argument("--batch-size", type=int, default=32, help="images per chunk (default 32)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("-o", "--out", default="ierf-bench-c2",
                   help="output folder (default ierf-bench-c2)")
    p.set_defaults(run=_run)


def _fmt(value: object, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else \
        str(value)


def _finite(values: list) -> list:
    """JSON has no NaN: what was not scored becomes ``null``."""
    return [None if isinstance(v, float) and math.isnan(v) else v for v in values]


def _table(rows: list[dict], title: str) -> str:
    lines = [f"**{title}**", "", "| " + " | ".join(HEADERS) + " |",
             "|---|" + "---:|" * (len(HEADERS) - 2) + "---|"]
    for r in rows:
        c2 = "–" if r["c2"] is None else f"{r['c2']:.3f} ± {_fmt(r['c2_se'])}"
        lines.append("| " + " | ".join([
            r["method"], f"{r['scored']}/{r['concepts']}", _fmt(r["images_per_concept"], 1),
            _fmt(r["consistency"]), _fmt(r["random_baseline"]), c2, _fmt(r["seconds"], 1),
            r["detail"]]) + " |")
    return "\n".join(lines) + "\n"


def _features(name: str, batch, device: str):
    """The ``(images, index) → features`` callable of ``--features`` and its description."""
    from ierf.metrics.c2_features import (
        DinoV2Features,
        ModelFeatures,
        label_feature_names,
        label_features,
    )

    if name == "labels":
        desc = f"synthetic-benchmark labels, one-hot ({len(label_feature_names())} channels)"
        return (lambda x, idx: label_features({k: v[idx] for k, v in
                                               batch.concept_maps.items()}).to(x.device)), desc
    if name == "efficientnet_lite0":
        from ierf.models import load_model

        model = load_model("efficientnet_lite0")
        model.net.to(device)
        fm = ModelFeatures(model)
        return (lambda x, idx: fm(x)), fm.name
    fm = DinoV2Features().to(device)
    return (lambda x, idx: fm(x)), fm.name


def _sources(methods: list[str], args: argparse.Namespace) -> list[ConceptSource]:
    from ierf.bench.c2 import (
        POSTHOC,
        FactConcepts,
        LatentConcepts,
        PosthocSetup,
        RandomConcepts,
        posthoc_sources,
    )
    from ierf.concepts.basis import ConceptBasis
    from ierf.local.gated import TOY_VIT_SAE
    from ierf.models import load_model

    sources: list[ConceptSource] = []
    if {"fact", "bcos-channels"} & set(methods):
        fact = load_model("fact-toy")
        fact.net.to(args.device)
    posthoc = [m for m in methods if m in POSTHOC]
    if posthoc:
        setup = PosthocSetup(Path(args.atlas) if args.atlas else Path(args.out) / "atlas",
                             layer=args.layer, n_images=args.atlas_images,
                             n_concepts=args.n_concepts, sae_epochs=args.sae_epochs,
                             seed=args.seed)
        fitted = dict(zip(posthoc, posthoc_sources(setup, posthoc, args.device)))
    for m in methods:
        if m in ("fact", "bcos-channels"):
            sources.append(FactConcepts(fact, channels=m == "bcos-channels"))
        elif m in POSTHOC:
            sources.append(fitted[m])
        elif m == "cafe":
            vit = load_model("toy-vit")
            vit.net.to(args.device)
            sources.append(LatentConcepts(vit, ConceptBasis.load(TOY_VIT_SAE, args.device)))
        else:
            sources.append(RandomConcepts(seed=args.seed))
    return sources


def _run(args: argparse.Namespace) -> int:
    import json
    import time

    import torch

    from ierf.bench.c2 import run_c2
    from ierf.data.synthetic import generate
    from ierf.errors import IerfError, unknown_name
    from ierf.io import atomic_path
    from ierf.metrics.c2 import C2Score

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for m in methods:
        if m not in METHOD_NAMES:
            raise unknown_name("C2 method", m, METHOD_NAMES)
    if args.n < 2 or args.batch_size < 1:
        raise IerfError(f"need --n ≥ 2 and --batch-size ≥ 1, got {args.n} and {args.batch_size}")
    start = time.perf_counter()
    torch.manual_seed(args.seed)
    metric = C2Score(args.fraction, args.at_least, args.min_images, args.n_random, args.seed)
    batch = generate(args.n, seed=args.seed, split="test")
    features, feature_name = _features(args.features, batch, args.device)
    sources = _sources(methods, args)
    setup_s = time.perf_counter() - start
    rows, feature_s = run_c2(sources, batch.images, features, metric,
                             batch_size=args.batch_size, max_concepts=args.max_concepts,
                             seed=args.seed, device=args.device,
                             log=lambda msg: print(msg, file=sys.stderr, flush=True))
    total = time.perf_counter() - start
    summary = [dict(zip(r.summary(), _finite(list(r.summary().values())))) for r in rows]
    title = (f"C2-score (FaCT Eq. 16) · features: {feature_name} · {args.n} synthetic test "
             f"images · top {args.fraction:.0%} (≥ {args.at_least}) images per concept")
    text = _table(summary, title) + (
        f"\nC2 = Cons − Cons_rand, mean ± SE over scored concepts. Setup (models, atlas, "
        f"fits) {setup_s:.1f} s, features {feature_s:.1f} s, total {total:.1f} s.\n")
    print(text)
    out = Path(args.out)
    report = {"title": title, "features": feature_name, "n_images": args.n,
              "settings": {k: v for k, v in vars(args).items() if k != "run"},
              "setup_s": setup_s, "feature_s": feature_s, "total_s": total, "rows": summary,
              "per_concept": {r.label: {"scores": _finite(r.result.scores.tolist()),
                                        "consistency": _finite(r.result.consistency.tolist()),
                                        "n_images": r.result.n_images.tolist(),
                                        "random": r.result.random.tolist()} for r in rows}}
    for name, content in (("c2.md", text), ("c2.json", json.dumps(report, indent=1))):
        with atomic_path(out / name) as tmp:
            Path(tmp).write_text(content)
    with atomic_path(out / "c2.csv") as tmp:
        import csv

        with open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(summary[0]))
            w.writeheader()
            w.writerows(summary)
    print(f"→ {out / 'c2.md'}, {out / 'c2.csv'}, {out / 'c2.json'}")
    return 0

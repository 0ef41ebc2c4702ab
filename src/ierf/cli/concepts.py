"""`ierf concepts fit` and `ierf concepts cards`: concept dictionaries from a PFV–iERF atlas."""

from __future__ import annotations

import argparse
from pathlib import Path

from ierf.errors import IerfError

#: the names of :data:`ierf.concepts.fitting.METHODS`, here so that ``--help`` needs no torch
METHOD_NAMES = ("kmeans", "minibatch-kmeans", "dictionary", "sae", "topk-sae", "matryoshka-sae",
                "bias-free-topk-sae")


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``concepts`` group with its ``fit`` and ``cards`` subcommands."""
    c = sub.add_parser("concepts", help="fit concept dictionaries on an atlas and draw them")
    csub = c.add_subparsers(required=True, metavar="ACTION")
    f = csub.add_parser("fit", help="fit a concept extractor on one layer of an atlas")
    f.add_argument("atlas", help="atlas folder (from `ierf atlas build`)")
    f.add_argument("--layer", required=True, help="atlas layer whose PFVs to fit")
    f.add_argument("--method", default="kmeans", choices=METHOD_NAMES,
                   help="extractor (default kmeans: bisecting spherical k-means, GIG App. B)")
    f.add_argument("--n-concepts", type=int, help="number of concepts K (default 8 × channels)")
    f.add_argument("--no-center", action="store_true",
                   help="k-means: do not centre PFVs by the feeding BatchNorm's μ_BN")
    f.add_argument("--epochs", type=int, help="SAE training epochs (default: at least 20 "
                   "epochs and 2000 steps)")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    f.add_argument("-o", "--out", help="output folder of the concept basis (default "
                   "ATLAS/concepts/<layer>-<method>): basis.json + tensors.safetensors")
    f.set_defaults(run=_fit)

    k = csub.add_parser("cards", help="PNG concept cards: top-10 nearest PFVs by their iERFs")
    k.add_argument("atlas", help="atlas folder")
    k.add_argument("concepts", help="concept basis folder written by `ierf concepts fit`")
    k.add_argument("--concepts", dest="ids", help="comma-separated concept indices "
                   "(default: the most used ones)")
    k.add_argument("--rows", type=int, default=8, help="concepts shown when --concepts is "
                   "not given (default 8)")
    k.add_argument("--k", type=int, default=10, help="nearest PFVs per concept (default 10)")
    k.add_argument("--by", default="cosine", choices=["cosine", "coefficient"],
                   help="nearest by cosine to the concept vector or by coefficient")
    k.add_argument("--image", type=int, default=0,
                   help="atlas image whose concept locations are drawn (default 0)")
    k.add_argument("-o", "--out", required=True, help="output folder")
    k.set_defaults(run=_cards)
    from ierf.cli.concepts_show import register as add_show  # the dashboard (explorer)
    add_show(csub)


def default_out(atlas: str | Path, layer: str, method: str) -> Path:
    return Path(atlas) / "concepts" / f"{layer}-{method}"


def _fit(args: argparse.Namespace) -> int:
    from ierf.atlas.store import open_atlas
    from ierf.concepts.fitting import fit_basis
    from ierf.io import check_writable
    from ierf.metrics.concepts import reconstruction_metrics

    atlas = open_atlas(args.atlas)
    out = Path(args.out) if args.out else default_out(args.atlas, args.layer, args.method)
    check_writable(out.parent)  # fail now, not after the fit
    opts = {"seed": args.seed}
    if args.method.endswith("sae"):
        opts.update(epochs=args.epochs, progress=True)
    basis = fit_basis(atlas, args.layer, args.method, args.n_concepts,
                      center=not args.no_center, device=args.device, **opts)
    out = basis.save(out)
    X = atlas.pfvs(args.layer).to(args.device)
    scores = reconstruction_metrics(basis.extractor, X)
    print(f"{args.method} on {args.layer}: {len(X)} PFVs × {X.shape[1]} channels → "
          f"{basis.n_concepts} concepts{' (centred by μ_BN)' if basis.provenance['centred'] else ''}"
          f"; Rel-ℓ2 {scores['rel_l2']:.4f}, ℓ0 ratio {scores['l0_ratio']:.4f} → {out}/")
    return 0


def _cards(args: argparse.Namespace) -> int:
    import torch

    from ierf.atlas.store import open_atlas
    from ierf.concepts.basis import ConceptBasis
    from ierf.io import check_writable
    from ierf.metrics.concepts import assignments
    from ierf.viz.cards import (
        concept_locations,
        nearest_samples,
        save_concept_cards,
        save_concept_locations,
    )

    atlas = open_atlas(args.atlas)
    basis = ConceptBasis.load(args.concepts)
    check_writable(args.out)
    layer = basis.layer
    if layer not in atlas.layers:
        raise IerfError(f"{args.concepts} holds concepts of layer {layer!r}, which atlas "
                        f"{args.atlas} does not have (it has {', '.join(atlas.layers)})")
    model = atlas.model()
    basis.check(model)
    extractor = basis.extractor
    X = atlas.pfvs(layer)
    if args.ids:
        ids = [int(i) for i in args.ids.split(",")]
    else:
        with torch.no_grad():
            used = torch.bincount(assignments(extractor.encode(X).detach()),
                                  minlength=extractor.get_dictionary().shape[1])
        ids = used.argsort(descending=True)[:args.rows].tolist()
    top = nearest_samples(X, extractor, ids, k=min(args.k, len(X)), by=args.by)   # (R, k)
    image_index = atlas.records(layer)["image"][top.flatten()]
    images = model.denormalize(atlas.load_images(image_index))
    ierfs = atlas.ierfs(layer)[top.flatten()]
    out = Path(args.out)
    cards = save_concept_cards(images.reshape(*top.shape, *images.shape[1:]),
                               ierfs.reshape(*top.shape, *ierfs.shape[1:]),
                               out / f"cards-{layer}.png",
                               labels=[f"concept {i}" for i in ids],
                               title=f"{model.name} {layer}: nearest PFVs ({args.by})")
    x = atlas.load_images([args.image])
    maps = concept_locations(model, x, basis, ids)[0]
    where = save_concept_locations(model.denormalize(x)[0], maps,
                                   out / f"locations-{layer}-image{args.image}.png",
                                   labels=[f"concept {i}" for i in ids])
    print(f"{len(ids)} concepts × {top.shape[1]} nearest PFVs → {cards}; locations → {where}")
    return 0

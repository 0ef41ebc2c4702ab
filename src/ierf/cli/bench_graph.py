"""`ierf bench graph`: interlayer C-deletion / C-insertion of every ICAT method (IERF Sec.
VI-C, Fig. 11) on the consecutive layer pairs of a chain; per pair also ``targets.json``, the
AUCs per target concept (what ``ierf graph show --faithfulness`` shows in a node's panel)."""

from __future__ import annotations

import argparse
import sys
from itertools import pairwise
from pathlib import Path

from ierf.cli.graph import ICAT_METHODS


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``ierf bench graph``."""
    p = sub.add_parser("graph", help="validate ICAT edges: interlayer C-deletion/insertion "
                       "of every attribution method (and ground truth on the benchmark)")
    p.add_argument("atlas", help="atlas folder (from `ierf atlas build`)")
    p.add_argument("--layers", required=True, help="comma-separated layer chain (atlas layers)")
    p.add_argument("--methods", default=",".join(ICAT_METHODS),
                   help=f"comma-separated ICAT methods (default {','.join(ICAT_METHODS)})")
    p.add_argument("--n", type=int, default=16, help="atlas images (default 16)")
    p.add_argument("--targets", type=int, default=5, help="target concepts per image: the "
                   "most important for its predicted class (default 5, as GIG Sec. 4.2.3)")
    p.add_argument("--min-alignment", type=float, default=0.5, help="keep (image, target) "
                   "pairs whose reference max cosine is at least this (default 0.5)")
    p.add_argument("--steps", type=int, default=32, help="IG steps (default 32)")
    p.add_argument("--curve-steps", type=int, default=20, help="points of each curve − 1")
    p.add_argument("--concepts", default="kmeans", help="concept method of the bases "
                   "(fitted into ATLAS/concepts/<layer>-<method> when absent)")
    p.add_argument("--n-concepts", type=int, help="K of newly fitted bases (default 8 × C)")
    p.add_argument("--ground-truth", action="store_true", help="also check the graph against "
                   "the synthetic benchmark's parts (benchmark atlases of toy models): class "
                   "parents of the class's parts, part concepts fed by their attributes")
    p.add_argument("--device", default="cpu")
    p.add_argument("-o", "--out", help="output folder (default ATLAS/bench-graph)")
    p.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    from ierf.atlas.store import open_atlas
    from ierf.bench.graph import interlayer_validation
    from ierf.cli.concepts import default_out
    from ierf.cli.graph import check_chain, load_bases, parse_layers
    from ierf.errors import IerfError
    from ierf.viz.curves import save_curves

    atlas = open_atlas(args.atlas)
    layers = parse_layers(args.layers, atlas)
    if len(layers) < 2:
        raise IerfError("--layers needs at least two layers (a source and a target)")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    model = atlas.model()
    model.net.to(args.device)
    check_chain(model, layers)
    bases = load_bases(atlas, model, layers, args.concepts, args.n_concepts, args.device)
    x = atlas.load_images(list(range(min(args.n, len(atlas.images))))).to(args.device)
    out = Path(args.out) if args.out else Path(args.atlas) / "bench-graph"
    for a, b in pairwise(layers):
        print(f"{a} → {b}: {len(methods)} methods …", file=sys.stderr, flush=True)
        table, curves, per_target = interlayer_validation(
            model, bases[a], bases[b], x, methods, n_targets=args.targets,
            steps=args.curve_steps, n_steps=args.steps, min_alignment=args.min_alignment)
        folder = out / f"{a}-{b}"
        table.write(folder)
        save_curves(curves, folder / "curves.png", table.title)
        write_targets(folder / "targets.json", per_target.nodes(b), {
            "model": model.name, "fingerprint": bases[a].fingerprint, "source": a,
            "target": b, "methods": methods, "n_images": len(x),
            "targets_per_image": args.targets, "min_alignment": args.min_alignment,
            "curve_steps": args.curve_steps,
            "basis_paths": {l: str(default_out(atlas.path, l, args.concepts).resolve())
                            for l in (a, b)},
            "basis_digests": {l: bases[l].digest() for l in (a, b)}})
        print(table.markdown())
        print(f"→ {folder}/table.md, table.csv, figure.png, curves.png, targets.json")
    if args.ground_truth:
        ground_truth(model, bases, args, out)
    return 0


def write_targets(path: Path, nodes: dict, settings: dict) -> Path:
    """``targets.json``: the per-target-concept AUCs (``nodes``, from
    :meth:`ierf.bench.graph.TargetAUCs.nodes`) with the settings they were measured with."""
    import json

    from ierf.explorer.faithfulness import FORMAT, VERSION
    from ierf.io import atomic_path

    data = {"format": FORMAT, "format_version": VERSION,
            **settings, "nodes": nodes}
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(data, indent=1))
    return path


def ground_truth(model, bases: dict, args: argparse.Namespace, out: Path) -> None:
    """Print and write (``ground-truth.json`` / ``.md``) the graph's ground-truth check."""
    import json

    from ierf.graph.ground_truth import ground_truth_report
    from ierf.io import atomic_path

    print("ground truth: labelling concepts by their iERFs, building the graph …",
          file=sys.stderr, flush=True)
    r = ground_truth_report(model, bases=bases, n_images=args.n, n_steps=args.steps,
                            progress=True)
    title = (f"**Ground truth** ({model.name}, {r['settings']['n_images']} test images, "
             f"top-{r['settings']['k']} parents; z = (observed − chance) / null sd)")
    lines = [title, "",
             "| check | observed | chance | z | permuted graphs | random graph |",
             "|---|---:|---:|---:|---:|---:|"]
    for layer, c in r["class_parents"].items():
        lines.append(f"| (a) class parents are the class's parts · {layer} | "
                     f"{c['precision']:.3f} | {c['chance']:.3f} | {c['z']:.1f} | "
                     f"{c.get('permuted', {}).get('mean', float('nan')):.3f} | "
                     f"{c.get('random_graph', float('nan')):.3f} |")
    for pair, e in r["part_edges"].items():
        for name in ("attributes", "colour", "shape", "texture"):
            v = e[name]
            lines.append(f"| (b) part ← its {name} · {pair} | {v['agreement']:.3f} | "
                         f"{v['chance']:.3f} | {v['z']:.1f} | "
                         f"{v.get('permuted', {}).get('mean', float('nan')):.3f} | "
                         f"{v.get('random_graph', float('nan')):.3f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    with atomic_path(out / "ground-truth.md") as tmp:
        Path(tmp).write_text(text)
    with atomic_path(out / "ground-truth.json") as tmp:
        Path(tmp).write_text(json.dumps(r, indent=1))
    print(f"→ {out}/ground-truth.md, ground-truth.json")

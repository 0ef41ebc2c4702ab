"""`ierf graph build | info | explain`: the Interlayer Concept Graph (IERF Sec. VI)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

#: the names of :data:`ierf.graph.METHODS`, here so that ``--help`` needs no torch
ICAT_METHODS = ("ig", "gradient", "gradient_x_input", "deeplift", "lrp", "shapley", "coefficient",
                "random")


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``graph`` group with ``build``, ``info`` and ``explain``."""
    g = sub.add_parser("graph", help="interlayer concept graphs: ICAT edges between concepts "
                       "of a layer chain and the classes")
    gsub = g.add_subparsers(required=True, metavar="ACTION")
    b = gsub.add_parser("build", help="build a data-set-wide concept graph from an atlas "
                        "(resumable; torchrun shards it)")
    b.add_argument("atlas", help="atlas folder (from `ierf atlas build`) holding the layers")
    b.add_argument("--layers", required=True, help="comma-separated layer chain, input side "
                   "first (atlas layers); the class logits are appended")
    b.add_argument("--classes", help="comma-separated class indices or names (default: the "
                   "classes the model predicts on the images)")
    b.add_argument("--method", default="ig", choices=ICAT_METHODS,
                   help="attribution AT of ICAT, Eq. 14 (default ig: Integrated Gradients)")
    b.add_argument("--concepts", default="kmeans", help="concept method of the bases that "
                   "are fitted when ATLAS/concepts/<layer>-<method> does not exist yet "
                   "(default kmeans: bisecting spherical k-means, K = 8 × channels)")
    b.add_argument("--n-concepts", type=int, help="K of newly fitted bases (default 8 × C)")
    b.add_argument("--n", "--num-images", dest="n", type=int,
                   help="use the first N atlas images (default all)")
    b.add_argument("--steps", type=int, default=32, help="IG steps (default 32)")
    b.add_argument("--batch-size", type=int, default=8, help="images per batch (default 8)")
    b.add_argument("--internal-batch-size", type=int,
                   help="most image × α rows per forward through a sub-network")
    b.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    b.add_argument("-o", "--out", required=True, help="output folder: graph.json, graph.png, "
                   "parts.sqlite (re-run the same command to resume)")
    b.set_defaults(run=_build)

    i = gsub.add_parser("info", help="summarise a concept graph")
    i.add_argument("graph", help="graph folder or graph.json")
    i.add_argument("--top", type=int, default=5, help="concepts listed per class (default 5)")
    i.add_argument("--influence", type=float, default=0.8,
                   help="report the fewest concepts per layer that carry this share of the "
                        "influence on the class nodes (default 0.8)")
    i.set_defaults(run=_info)

    e = gsub.add_parser("explain", help="per-image concept graph and the strongest routes "
                        "from low-level concepts to a class (Sec. VI-D)")
    e.add_argument("image", help="image file, bundled photo name, or an integer: that image "
                   "of the graph's atlas")
    e.add_argument("--graph", required=True, help="graph folder (from `ierf graph build`)")
    e.add_argument("--target", default="auto", help="class index or name (default: the top "
                   "class)")
    e.add_argument("--routes", type=int, default=5, help="routes shown (default 5)")
    e.add_argument("--steps", type=int, default=32, help="IG steps (default 32)")
    e.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    e.add_argument("-o", "--out", help="output folder (default GRAPH/explain-<image>)")
    e.set_defaults(run=_explain)

    from ierf.cli.graph_show import add_show_parser

    add_show_parser(gsub)


def parse_layers(text: str, atlas: Any) -> list[str]:
    """The ``--layers`` chain, each layer distinct and sampled in ``atlas``."""
    from ierf.errors import IerfError

    layers = [s.strip() for s in text.split(",") if s.strip()]
    if not layers:
        raise IerfError("--layers needs at least one layer, e.g. --layers layer2,layer3")
    if len(set(layers)) != len(layers):
        raise IerfError(f"--layers lists a layer twice: {text}")
    missing = [layer for layer in layers if layer not in atlas.layers]
    if missing:
        raise IerfError(f"atlas {atlas.path} has no layer {', '.join(map(repr, missing))} (it "
                        f"has {', '.join(atlas.layers)}); build an atlas with these layers")
    return layers


def parse_classes(text: str | None, class_names: list[str]) -> list[int] | None:
    """Class indices from ``"3,cat,7"`` (indices or names), checked; ``None`` stays."""
    from ierf.errors import IerfError
    from ierf.targets import class_index

    if text is None:
        return None
    out = []
    for item in (s.strip() for s in text.split(",") if s.strip()):
        c = class_index(item, class_names)
        if not 0 <= c < len(class_names):
            raise IerfError(f"unknown class {item!r}: the model has {len(class_names)} "
                            f"classes (0 … {len(class_names) - 1})")
        out.append(c)
    if not out:
        raise IerfError("--classes is empty; give class indices or names, or leave it out")
    return out


def check_chain(model: Any, layers: list[str]) -> None:
    """Refuse a chain whose consecutive layers are not valid cuts, before any fitting."""
    from itertools import pairwise

    from ierf.models.subnetwork import Subnetwork

    for a, b in pairwise([*layers, "output"]):
        Subnetwork(model, a, b)


def load_bases(atlas: Any, model: Any, layers: list[str], method: str,
               n_concepts: int | None, device: str) -> dict:
    """Each layer's basis from ``ATLAS/concepts/<layer>-<method>``, fitted there if absent."""
    from ierf.cli.concepts import default_out
    from ierf.concepts.basis import ConceptBasis
    from ierf.concepts.fitting import fit_basis

    bases = {}
    for layer in layers:
        folder = default_out(atlas.path, layer, method)
        if (folder / "basis.json").is_file():
            basis = ConceptBasis.load(folder)
            basis.check(model, layer)
            if n_concepts is not None and basis.n_concepts != n_concepts:
                from ierf.errors import IerfError

                raise IerfError(f"{folder} holds {basis.n_concepts} concepts, not "
                                f"--n-concepts {n_concepts}; remove it or drop --n-concepts")
            print(f"{layer}: using {basis.n_concepts} concepts from {folder}/", file=sys.stderr)
        else:
            print(f"{layer}: fitting {method} concepts …", file=sys.stderr, flush=True)
            basis = fit_basis(atlas, layer, method, n_concepts, device=device)
            basis.save(folder)
            print(f"{layer}: {basis.n_concepts} concepts → {folder}/", file=sys.stderr)
        bases[layer] = basis.to(device)
    return bases


def predicted_classes(model: Any, load: Any, ids: list[str], batch_size: int) -> list[int]:
    """The distinct classes the model predicts on the images."""
    import torch

    found: set[int] = set()
    with torch.no_grad():
        for i in range(0, len(ids), batch_size):
            found |= set(model(load(ids[i:i + batch_size]).to(model.device)).argmax(1).tolist())
    return sorted(found)


def _build(args: argparse.Namespace) -> int:
    from ierf.atlas.store import open_atlas
    from ierf.cli.concepts import default_out
    from ierf.data.sources import load_images, parse_source
    from ierf.errors import IerfError
    from ierf.graph.dataset import build_dataset_graph

    atlas = open_atlas(args.atlas)
    layers = parse_layers(args.layers, atlas)
    model = atlas.model()
    model.net.to(args.device)
    check_chain(model, layers)
    ids = atlas.images[:args.n] if args.n is not None else list(atlas.images)
    if not ids:
        raise IerfError(f"no images to build the graph on (--n {args.n}); give N >= 1")
    source = parse_source(atlas.meta["source"])

    def load(batch: list[str]):
        return load_images(source, batch, model)

    classes = parse_classes(args.classes, model.class_names)
    bases = load_bases(atlas, model, layers, args.concepts, args.n_concepts, args.device)
    if classes is None:
        classes = predicted_classes(model, load, ids, args.batch_size)
    settings = {"atlas": str(Path(args.atlas).resolve()),
                "basis_paths": {layer: str(default_out(atlas.path, layer, args.concepts)
                                           .resolve()) for layer in layers}}
    graph = build_dataset_graph(model, bases, load, ids, classes, args.out, args.method,
                                batch_size=args.batch_size, settings=settings,
                                n_steps=args.steps,
                                internal_batch_size=args.internal_batch_size)
    from ierf.dist import rank_world

    if rank_world()[0] != 0:
        return 0
    from ierf.graph.export import save_thumbnails

    thumbs = atlas_thumbnails(atlas, bases)
    write_graph_files(graph, Path(args.out), save_thumbnails(thumbs, Path(args.out)))
    figure = write_figures(graph, Path(args.out), thumbs)
    print(graph.summary())
    print(f"→ {Path(args.out) / 'graph.json'}, {figure}")
    return 0


def _info(args: argparse.Namespace) -> int:
    from ierf.graph.dataset import read_graph

    graph = read_graph(args.graph)
    print(graph.summary())
    per_class = sorted((Path(args.graph) / "per-class").glob("*.json"))
    if per_class:
        print(f"  per-class graphs (images grouped by predicted class): "
              f"{', '.join(p.name for p in per_class)} in {Path(args.graph) / 'per-class'}")
    last = graph.layers[-2]
    for j, name in enumerate(graph.class_names):
        imp = graph.nodes[last].importance[:, j]
        top = imp.argsort(descending=True)[:args.top].tolist()
        listed = ", ".join(f"{graph.nodes[last].labels[k]} ({float(imp[k]):+.3g})" for k in top)
        err = float(graph.nodes[last].error_importance[j])
        print(f"  class {name} (logit {float(graph.logits[j]):.3g}): {listed}; "
              f"residual {err:+.3g}")
    for e in graph.edges:
        if e.gap is not None:
            scale = float(e.weights.abs().sum(0).max()) or 1.0
            print(f"  IG completeness {e.source} → {e.target}: max |gap| "
                  f"{float(e.gap.abs().max()):.3g} ({float(e.gap.abs().max()) / scale:.2%} of "
                  "the largest column sum)")
    pruned = graph.prune_by_influence(node_threshold=args.influence)
    counts = ", ".join(f"{layer} {len(pruned.nodes[layer].index)}/{len(n.index)}"
                       for layer, n in graph.nodes.items())
    print(f"  concepts carrying {args.influence:.0%} of the influence on the class nodes "
          f"(ConceptGraph.prune_by_influence): {counts}")
    return 0


def graph_model(graph: Any) -> tuple[Any, Any]:
    """The model a graph was built on and its atlas (``None`` when the atlas is gone)."""
    from ierf.atlas.store import open_atlas
    from ierf.errors import IerfError
    from ierf.models.fingerprint import weights_fingerprint
    from ierf.models.zoo import load_model

    meta = graph.metadata
    if meta.get("atlas") and Path(meta["atlas"]).is_dir():
        atlas = open_atlas(meta["atlas"])
        return atlas.model(), atlas
    model = load_model(meta["model"])
    if weights_fingerprint(model.net) != meta.get("fingerprint"):
        raise IerfError(f"the graph's atlas {meta.get('atlas')!r} is gone and {meta['model']} "
                        "with its offline weights is not the model the graph was built on")
    return model, None


def graph_bases(graph: Any, model: Any) -> dict:
    """The concept bases a graph was built with (from ``metadata["basis_paths"]``)."""
    from ierf.concepts.basis import ConceptBasis
    from ierf.errors import IerfError

    paths = graph.metadata.get("basis_paths") or {}
    missing = [layer for layer in graph.nodes if layer not in paths]
    if missing:
        raise IerfError(f"the graph does not record where the bases of {missing} are; "
                        "build it with `ierf graph build`")
    bases = {layer: ConceptBasis.load(paths[layer]) for layer in graph.nodes}
    for layer, basis in bases.items():
        basis.check(model, layer)
    return bases


def write_figures(graph: Any, out: Path, thumbnails: dict | None = None,
                  routes: Any = ()) -> Path:
    """``graph.png``: the graph pruned as in the paper's figures (top-5 concepts per class,
    top-3 shared, top-3 parents per node), with thumbnails and outlined routes."""
    from ierf.viz.graph import draw_graph

    pruned = graph.prune(top_k_per_class=min(5, 30 // max(len(graph.classes), 1) or 1),
                         top_shared=3, top_parents=3)
    kept = {i for layer in pruned.layers for i in pruned.node_ids(layer)}
    routes = [r for r in routes if set(r.nodes) <= kept]
    return draw_graph(pruned, out / "graph.png",
                      {k: v for k, v in (thumbnails or {}).items() if k in kept},
                      routes=routes, title=repr(graph))


def write_graph_files(graph: Any, out: Path, thumbnails: dict[str, list[str]]) -> None:
    """``out/graph.json`` and every ``out/per-class/<c>.json`` (written by the build without
    thumbnails) with the node thumbnails ``thumbnails`` (paths relative to ``out``), each
    file's paths relative to its own folder."""
    from ierf.graph import to_json
    from ierf.graph.dataset import GRAPH, PER_CLASS
    from ierf.graph.export import from_json, relocate_thumbnails

    to_json(graph, out / GRAPH, thumbnails=thumbnails)
    for path in sorted((out / PER_CLASS).glob("*.json")):
        to_json(from_json(path), path,
                thumbnails=relocate_thumbnails(thumbnails, out, path.parent))


def graph_thumbnails(path: str | Path) -> dict[str, list[str]]:
    """Node id → the absolute paths of its thumbnails in a built graph (folder or JSON)
    that exist; ``{}`` when it has none (what `diagnose` adds to its per-image graphs)."""
    import json

    from ierf.graph.dataset import GRAPH

    path = Path(path)
    path = path / GRAPH if path.is_dir() else path
    nodes = json.loads(path.read_text()).get("nodes", [])
    found = {n["node_id"]: [str((path.parent / p).resolve()) for p in n.get("thumbnails", [])]
             for n in nodes}
    return {k: [p for p in v if Path(p).is_file()] for k, v in found.items()
            if any(Path(p).is_file() for p in v)}


def atlas_thumbnails(atlas: Any, bases: dict) -> dict:
    """Node id → the atlas image of the PFV with the largest coefficient of that concept,
    dimmed outside its iERF (a one-image concept card)."""
    from ierf.viz.cards import highlight, nearest_samples

    out = {}
    for layer, basis in bases.items():
        X = atlas.pfvs(layer)
        if len(X) == 0:
            continue
        ids = list(range(basis.n_concepts))
        top = nearest_samples(X.to(basis.dictionary.device), basis.extractor, ids, k=1,
                              by="coefficient")[:, 0].cpu()
        images = atlas.model().denormalize(atlas.load_images(
            atlas.records(layer)["image"][top])).cpu()
        shown = highlight(images, atlas.ierfs(layer)[top].float())
        out.update({f"{layer}:{k}": shown[k] for k in ids})
    return out


def load_graph_context(path: str | Path, device: str = "cpu") -> tuple[Any, Any, Any, dict]:
    """A built graph folder → ``(graph, model, atlas or None, bases)``, model and bases on
    ``device`` (what `graph explain` and `diagnose` start from)."""
    from ierf.graph.dataset import read_graph

    dataset = read_graph(path)
    model, atlas = graph_model(dataset)
    model.net.to(device)
    bases = {l: b.to(device) for l, b in graph_bases(dataset, model).items()}
    return dataset, model, atlas, bases


def read_image(image: str, model: Any, atlas: Any) -> tuple[Any, str]:
    """The ``IMAGE`` argument → (model-ready ``(1, 3, H, W)``, a short name): an image file,
    a bundled photo, or an integer: that image of the graph's atlas."""
    from ierf.data.images import load_image
    from ierf.errors import IerfError

    if image.isdigit() and not Path(image).exists():
        if atlas is None:
            raise IerfError(f"image {image}: an index needs the graph's atlas, which is "
                            "gone; give an image file")
        if int(image) >= len(atlas.images):
            raise IerfError(f"image index {image} is out of range: the atlas has "
                            f"{len(atlas.images)} images")
        return atlas.load_images([int(image)]), f"image{int(image)}"
    return model.preprocess(load_image(image)), Path(image).stem


def _explain(args: argparse.Namespace) -> int:
    import json

    import torch

    from ierf.diagnose.report import node_images
    from ierf.errors import IerfError
    from ierf.graph import build_graph, to_json
    from ierf.graph.routes import locate_nodes, trace_routes
    from ierf.io import atomic_path
    from ierf.targets import class_index
    from ierf.viz.graph import draw_routes, node_thumbnails

    dataset, model, atlas, bases = load_graph_context(args.graph, args.device)
    x, stem = read_image(args.image, model, atlas)
    x = x.to(args.device)
    with torch.no_grad():
        logits = model(x)[0]
    ranked = logits.argsort(descending=True).tolist()
    target = ranked[0] if args.target == "auto" else class_index(args.target, model.class_names)
    if not 0 <= target < len(model.class_names):
        raise IerfError(f"unknown class {args.target!r}: {model.name} has "
                        f"{len(model.class_names)} classes (0 … {len(model.class_names) - 1})")
    rival = next(c for c in ranked if c != target)
    graph = build_graph(model, bases, x, [target, rival], dataset.metadata.get("method", "ig"),
                        n_steps=args.steps, image_ids=[stem], progress=False)
    graph.metadata.update({k: dataset.metadata[k] for k in ("atlas", "basis_paths")
                           if k in dataset.metadata})
    routes = trace_routes(graph, target, k=args.routes)
    out = Path(args.out) if args.out else Path(args.graph) / f"explain-{stem}"
    image = model.denormalize(x)[0].cpu()
    pruned = graph.prune(top_k_per_class=5, top_shared=3, top_parents=3)
    nodes = list(dict.fromkeys([n for r in routes for n in r.nodes]
                               + [i for l in pruned.nodes for i in pruned.node_ids(l)[:-1]]))
    where = locate_nodes(model, x, bases, nodes)
    thumbs = node_thumbnails(image, where)
    to_json(graph, out / "graph.json",
            thumbnails=node_images(out, image, where, graph_thumbnails(args.graph)))
    with atomic_path(out / "routes.json") as tmp:
        Path(tmp).write_text(json.dumps([r.to_dict() for r in routes], indent=1))
    name = model.class_names[target]
    draw_routes(image, routes, where, out / "routes.png",
                title=f"{stem}: routes to {name} (logit {float(logits[target]):.3g})")
    write_figures(graph, out, thumbs, routes)
    p = logits.softmax(0)
    print(f"{stem}: {name} (class {target}, p = {float(p[target]):.3f}); runner-up "
          f"{model.class_names[rival]} (p = {float(p[rival]):.3f})")
    for i, r in enumerate(routes, 1):
        print(f"  route {i} ({r.strength:+.3g}): {' → '.join(r.labels)}")
    print(f"→ {out}/routes.png, graph.png, graph.json, routes.json")
    return 0

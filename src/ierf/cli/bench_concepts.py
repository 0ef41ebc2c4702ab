"""`ierf bench concepts`: concept extractors compared as in GIG Table 1–2 and IERF Table III.

For each method: Rel-ℓ2 and ℓ0 ratio of the atlas PFVs (Table III), C-insertion AUC ↑ and
C-deletion AUC ↓ with GIG Eq. 7 importance (Sec. 4.2.1, Table 2), and on the synthetic
benchmark the ground truth: purity and NMI of the concept assignments against the part
under each PFV's iERF, NMI of shuffled assignments (chance level), and the parts recovered.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

#: a part counts as recovered when one concept detects its PFVs with at least this F1
RECOVERY_F1 = 0.5
COLUMNS = ("method", "K", "rel_l2", "l0_ratio", "c_ins_auc", "c_del_auc", "purity", "nmi",
           "nmi_shuffled", "parts_recovered", "parts_recovered_merged", "fit_s")
HEADERS = ("method", "K", "Rel-ℓ2 ↓", "ℓ0 ratio ↑", "C-ins AUC ↑", "C-del AUC ↓", "purity ↑",
           "NMI ↑", "NMI shuffled", f"parts (F1 ≥ {RECOVERY_F1})", "parts merged", "fit s")


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``ierf bench concepts``."""
    p = sub.add_parser("concepts", help="compare concept extractors on an atlas layer "
                       "(Rel-ℓ2, ℓ0, C-insertion/deletion, ground-truth recovery)")
    p.add_argument("atlas", help="atlas folder (from `ierf atlas build`)")
    p.add_argument("--layer", required=True, help="atlas layer")
    p.add_argument("--methods", default="kmeans,dictionary,sae",
                   help="comma-separated methods (default kmeans,dictionary,sae)")
    p.add_argument("--n-concepts", type=int, help="K for every method (default 8 × channels)")
    p.add_argument("--images", type=int, default=16,
                   help="atlas images for C-insertion/deletion (default 16)")
    p.add_argument("--ig-steps", type=int, default=32, help="IG steps of Eq. 7 (default 32)")
    p.add_argument("--epochs", type=int, help="SAE training epochs (default: at least 20 "
                   "epochs and 2000 steps)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("-o", "--out", help="output prefix for .md and .csv (default "
                   "ATLAS/bench-concepts-<layer>)")
    p.add_argument("--no-progress", action="store_true",
                   help="hide the line per step and the SAE training bar")
    p.set_defaults(run=_run)


@contextmanager
def step(label: str, show: bool = True, bar: bool = False) -> Iterator[None]:
    """Report one step on stderr: ``label …`` when it starts, its seconds when it ends (on the
    same line; on a line of its own after a step that draws its own progress ``bar``)."""
    if show:
        print(f"  {label} …", end="\n" if bar else "", file=sys.stderr, flush=True)
    start = time.perf_counter()
    yield
    if show:
        took = time.perf_counter() - start
        print(f"  {label}: {took:.1f} s" if bar else f" {took:.1f} s", file=sys.stderr,
              flush=True)


def score_method(atlas, model, layer: str, method: str, args: argparse.Namespace,
                 x, label_maps) -> dict:
    """One row of the table: fit ``method`` on ``layer`` as a concept basis, then score it,
    one line per step on stderr unless ``args.no_progress``."""
    from ierf.concepts.fitting import fit_basis
    from ierf.metrics import concepts as cm

    X = atlas.pfvs(layer).to(args.device)
    show = not args.no_progress
    sae = method.endswith("sae")
    opts = {"seed": args.seed}
    if sae:
        opts.update(epochs=args.epochs, progress=show)
    start = time.perf_counter()
    with step(f"fit {method} (K = {args.n_concepts or '8 × channels'}) on {len(X)} PFVs",
              show, bar=sae):
        basis = fit_basis(atlas, layer, method, args.n_concepts, device=args.device, **opts)
    extractor = basis.extractor
    row = {"method": method, "K": basis.n_concepts, "fit_s": time.perf_counter() - start}
    with step("Rel-ℓ2 and ℓ0 of the atlas PFVs", show):
        row.update(cm.reconstruction_metrics(extractor, X))
    with step(f"class relevance, GIG Eq. 7 ({len(x)} images × {args.ig_steps} IG steps)",
              show):
        y = model(x).argmax(1)
        U = cm.encode_layer(model, x, basis)
        importance = cm.class_relevance(model, x, basis, y, U=U, n_steps=args.ig_steps,
                                        internal_batch_size=64)
    with step(f"C-insertion and C-deletion ({basis.n_concepts} concepts)", show):
        row["c_ins_auc"] = cm.c_insertion_auc(model, x, basis, importance, y, U=U).mean().item()
        row["c_del_auc"] = cm.c_deletion_auc(model, x, basis, importance, y, U=U).mean().item()
    if label_maps is not None:
        with step("ground truth: purity, NMI, parts recovered", show):
            row.update(ground_truth(atlas, layer, extractor, X, label_maps, args.seed))
    return row


def ground_truth(atlas, layer: str, extractor, X, label_maps, seed: int) -> dict:
    """Purity, NMI (and of shuffled assignments) and parts recovered against the benchmark's
    part under each PFV's iERF."""
    import torch

    from ierf.data.synthetic import PART_TYPES
    from ierf.metrics import concepts as cm

    with torch.no_grad():
        assigned = cm.assignments(extractor.encode(X).detach()).cpu()
    labels = cm.ierf_labels(atlas.ierfs(layer), label_maps, len(PART_TYPES) + 1)
    shuffled = assigned[torch.randperm(len(assigned),
                                       generator=torch.Generator().manual_seed(seed))]
    parts = list(range(1, len(PART_TYPES) + 1))
    row = {"purity": cm.purity(assigned, labels), "nmi": cm.nmi(assigned, labels),
           "nmi_shuffled": cm.nmi(shuffled, labels)}
    for key, merge in (("parts_recovered", False), ("parts_recovered_merged", True)):
        f1 = cm.recovered_parts(assigned, labels, parts, merge=merge)
        row[key] = f"{sum(v >= RECOVERY_F1 for v in f1.values())}/{len(parts)}"
    return row


def _fmt(value) -> str:
    if value is None:
        return "–"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _run(args: argparse.Namespace) -> int:
    import csv

    show = not args.no_progress
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    begin = time.perf_counter()
    if show:
        print(f"bench concepts: {args.atlas} layer {args.layer}, methods {', '.join(methods)}",
              file=sys.stderr, flush=True)
    with step(f"loading the atlas, its model and {args.images} images", show):
        import torch

        from ierf.atlas.store import open_atlas
        from ierf.data.sources import BENCHMARK, benchmark_label_maps, parse_source
        from ierf.errors import IerfError

        atlas = open_atlas(args.atlas)
        if args.layer not in atlas.layers:
            raise IerfError(f"layer {args.layer!r} is not in the atlas (layers: {atlas.layers})")
        model = atlas.model()
        model.net.to(args.device)
        torch.manual_seed(args.seed)
        x = atlas.load_images(list(range(min(args.images, len(atlas.images))))).to(args.device)
        source = parse_source(atlas.meta["source"])
    label_maps = None
    if source.kind == BENCHMARK:
        with step("ground-truth part maps of the atlas PFVs' images", show):
            image = atlas.records(args.layer)["image"].tolist()
            label_maps = benchmark_label_maps(source, [atlas.images[i] for i in image], "part")
    rows = []
    for method in methods:
        if show:
            print(f"[{len(rows) + 1}/{len(methods)}] {method}", file=sys.stderr, flush=True)
        rows.append(score_method(atlas, model, args.layer, method, args, x, label_maps))
    caption = (f"{model.name} · {args.layer} · {len(atlas.pfvs(args.layer))} PFVs · "
               f"C-ins/del on {len(x)} images (class probability, AUC over the fraction of "
               "concepts)")
    lines = [caption, "",
             "| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in COLUMNS) + " |" for r in rows]
    text = "\n".join(lines)
    print(text)
    out = Path(args.out) if args.out else Path(args.atlas) / f"bench-concepts-{args.layer}"
    from ierf.io import atomic_path

    with atomic_path(out.with_name(out.name + ".md")) as tmp:
        Path(tmp).write_text(text + "\n")
    with atomic_path(out.with_name(out.name + ".csv")) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows({c: r.get(c, "") for c in COLUMNS} for r in rows)
    print(f"→ {out}.md, {out}.csv")
    if show:
        print(f"done in {time.perf_counter() - begin:.0f} s", file=sys.stderr, flush=True)
    return 0

"""`ierf concepts show BASIS_OR_ATLAS -o concepts.html`: the offline concept dashboard."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``show`` to the ``ierf concepts`` actions."""
    s = sub.add_parser("show", help="write a self-contained HTML dashboard of a concept basis "
                       "(or of every basis of an atlas): a grid of concepts, each with its "
                       "nearest PFVs, their iERFs and its place in a concept graph")
    s.add_argument("source", help="concept basis folder (from `ierf concepts fit`), or an atlas "
                   "folder: every basis under ATLAS/concepts/")
    s.add_argument("-o", "--out", required=True, help="HTML file to write")
    s.add_argument("--atlas", help="atlas whose PFVs and iERFs are shown (default: the atlas "
                   "given, or the one the basis was fitted on)")
    s.add_argument("--graph", help="concept graph (folder or graph.json, from `ierf graph "
                   "build`): labels, class importances and ICAT edges of its concept nodes")
    s.add_argument("--k", type=int, default=10, help="nearest PFVs per concept (default 10)")
    s.add_argument("--by", default="cosine", choices=("cosine", "coefficient"),
                   help="nearest by cosine to the concept vector or by coefficient")
    s.add_argument("--images", choices=("embed", "folder"), default="embed",
                   help="pictures embedded in the page (default) or written into a folder "
                   "<out stem>_files/ beside it")
    s.add_argument("--title", help="page title")
    s.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    s.set_defaults(run=run_show)


def run_show(args: argparse.Namespace) -> int:
    """Write the page and say what it holds."""
    from ierf.explorer.dashboard_concepts import export_concepts

    done = export_concepts(args.source, args.out, atlas=args.atlas, graph=args.graph, k=args.k,
                           by=args.by, images=args.images, title=args.title,
                           progress=not args.no_progress)
    for line in done.warnings:
        print(f"ierf: note: {line}", file=sys.stderr)
    where = f"; pictures in {done.folder}/" if done.folder else ""
    print(f"→ {Path(done.path)} ({done.items} concepts of {done.sets} bases, {done.images} "
          f"pictures{where}); open it in a browser, no server needed")
    return 0

"""`ierf graph show GRAPH -o graph.html`: the offline HTML explorer of a concept graph."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_show_parser(graph_subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``show`` to the ``ierf graph`` subcommands; returns its parser."""
    s = graph_subparsers.add_parser(
        "show", help="write a self-contained HTML explorer of a concept graph (works offline "
        "from file://: no server, no network)")
    s.add_argument("graph", help="graph folder (from `ierf graph build` or `ierf graph "
                   "explain`) or its graph.json")
    s.add_argument("-o", "--out", help="HTML file to write (default: graph.html beside the "
                   "graph file)")
    s.add_argument("--routes", help="routes.json to overlay (default: the one beside the "
                   "graph file, written by `ierf graph explain`)")
    s.add_argument("--no-routes", action="store_true", help="do not overlay routes")
    s.add_argument("--images", choices=("embed", "folder"), default="embed",
                   help="thumbnails embedded in the page (default) or copied into a folder "
                   "<out stem>_files/ beside it")
    s.add_argument("--title", help="page title (default: the graph's slug and model)")
    s.add_argument("--diff", metavar="GRAPH_B", help="a second graph (folder or JSON): show "
                   "the differences B − GRAPH (e.g. attacked − clean, or two per-class "
                   "graphs), edges coloured by change, nodes of only one graph marked")
    s.add_argument("--names", metavar="A,B", help="what to call GRAPH and GRAPH_B in a diff "
                   "page (default: their file or folder names)")
    s.add_argument("--faithfulness", metavar="DIR", help="output folder of `ierf bench "
                   "graph` on the graph's atlas: each concept's panel shows the interlayer "
                   "C-deletion / C-insertion AUCs of its incoming edges (Sec. VI-C)")
    s.set_defaults(run=run_show)
    return s


def run_show(args: argparse.Namespace) -> int:
    """Write the page and say what it holds."""
    from ierf.errors import IerfError
    from ierf.explorer import export_html
    from ierf.explorer.document import graph_file

    if args.no_routes and args.routes:
        raise IerfError("give --routes or --no-routes, not both")
    names = None
    if args.names is not None:
        names = tuple(n.strip() for n in args.names.split(","))
        if args.diff is None or len(names) != 2 or not all(names):
            raise IerfError("--names takes two names, A,B, and goes with --diff")
    source = graph_file(args.graph)
    out = Path(args.out) if args.out else source.with_name("diff.html" if args.diff
                                                           else "graph.html")
    routes = False if args.no_routes else args.routes
    done = export_html(source, out, routes=routes, images=args.images, title=args.title,
                       diff=args.diff, names=names, faithfulness=args.faithfulness)
    for line in done.warnings:
        print(f"ierf: note: {line}", file=sys.stderr)
    parts = [f"{done.nodes} nodes", f"{done.links} edges",
             f"{done.thumbnails} with thumbnails"]
    if done.routes:
        parts.append(f"{done.routes} routes")
    if done.faithful:
        parts.append(f"{done.faithful} with edge faithfulness")
    if done.supernodes:
        parts.append(f"supernodes in {', '.join(done.supernodes)}")
    if done.diff:
        parts.insert(0, f"difference {done.diff}")
    where = f"; images in {done.folder}/" if done.folder else ""
    print(f"→ {done.path} ({', '.join(parts)}{where}); open it in a browser, no server needed")
    return 0

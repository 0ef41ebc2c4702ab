"""`ierf cafe report GROUNDING -o latents.html`: the offline dashboard of grounded latents."""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``report`` to the ``ierf cafe`` actions."""
    r = sub.add_parser("report", help="write a self-contained HTML dashboard of grounded "
                       "latents: activation beside iERF overlays, non-locality, insertion "
                       "curves, CLS latents marked")
    r.add_argument("grounding", help="output folder of `ierf cafe ground`")
    r.add_argument("-o", "--out", required=True, help="HTML file to write")
    r.add_argument("--basis", help="the basis of the overlays over the images and the "
                   "insertion curves (default: the one `ierf cafe ground` recorded in "
                   "GROUNDING/grounding.json; give it if that folder moved)")
    r.add_argument("--images", help="the --images given to `ierf cafe ground` (default: as "
                   "recorded)")
    r.add_argument("--n", type=int, help="the --n given to `ierf cafe ground` (default: as "
                   "recorded)")
    r.add_argument("--steps", type=int, default=16,
                   help="insertion curve points after the blank canvas; 0: no curves "
                   "(default 16)")
    r.add_argument("--blank", choices=("zero", "mean", "blur"),
                   help="the insertion test's blank canvas (default: the --blank of `ierf "
                   "cafe ground`, else zero)")
    r.add_argument("--readout", choices=("peak", "sum"),
                   help="the --readout given to `ierf cafe ground` (default: as recorded, "
                   "else peak)")
    r.add_argument("--pictures", choices=("embed", "folder"), default="embed",
                   help="pictures embedded in the page (default) or written into a folder "
                   "<out stem>_files/ beside it")
    r.add_argument("--title", help="page title")
    r.set_defaults(run=run_report)


def run_report(args: argparse.Namespace) -> int:
    """Write the page and say what it holds."""
    from ierf.explorer.dashboard_latents import export_latents

    done = export_latents(args.grounding, args.out, basis=args.basis, images=args.images,
                          n=args.n, steps=args.steps, blank=args.blank, readout=args.readout,
                          pictures=args.pictures, title=args.title)
    for line in done.warnings:
        print(f"ierf: note: {line}", file=sys.stderr)
    where = f"; pictures in {done.folder}/" if done.folder else ""
    print(f"→ {done.path} ({done.items} latents, {done.images} pictures{where}); open it in "
          "a browser, no server needed")
    return 0

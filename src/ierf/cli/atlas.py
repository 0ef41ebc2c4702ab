"""`ierf atlas build` (PFV–iERF dataset, resumable, torchrun-sharded), `ierf atlas info` and
`ierf atlas verify` (check every shard and row; ``--repair`` drops what is broken)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``atlas`` group with its ``build``, ``info`` and ``verify`` subcommands."""
    a = sub.add_parser("atlas", help="build or inspect a PFV–iERF atlas")
    asub = a.add_subparsers(required=True, metavar="ACTION")

    b = asub.add_parser("build", help="sample relevance-weighted PFVs and their iERFs over many "
                        "images (resumable; shards over ranks under torchrun)")
    b.add_argument("--model", required=True, help="model name (see `ierf models`)")
    b.add_argument("--weights", default="pretrained",
                   help="pretrained (default) or random:<seed> (an architecture with seeded "
                   "random weights)")
    b.add_argument("--images", required=True, help="benchmark, benchmark:<seed>:<split>, photos "
                   "(the bundled photos) or a folder of images")
    b.add_argument("--n", "--num-images", dest="n", type=int,
                   help="number of images (required for benchmark; default: all photos / files); "
                   "under torchrun spell it --num-images (torchrun reads --n as its own option)")
    b.add_argument("--layers", required=True, help="comma-separated layer names (see "
                   "`ierf layers MODEL`)")
    b.add_argument("--out", required=True, help="atlas folder (re-run the same command to resume; "
                   "the image set may change in between: finished images are kept)")
    b.add_argument("--samples-per-image", type=int, default=1,
                   help="PFVs sampled per image and layer (default 1, as in the paper)")
    b.add_argument("--batch-size", type=int, default=16, help="images per batch and shard")
    b.add_argument("--internal-batch-size", type=int, default=16,
                   help="iERF targets per batched backward pass")
    b.add_argument("--ierf-downsample", type=int, default=1,
                   help="area-pooling factor of the stored iERF maps (default 1: full size)")
    b.add_argument("--ierf-method", choices=("srd", "attnlrp"),
                   help="relevance and iERF method (default: srd for CNNs, attnlrp for ViTs)")
    b.add_argument("--seed", type=int, default=0, help="sampling seed")
    b.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    b.add_argument("--overwrite", action="store_true",
                   help="replace an atlas of a different build (other model, layers, seed, …) "
                   "in --out")
    b.set_defaults(run=_build)

    i = asub.add_parser("info", help="summarise an atlas (also while it is being built)")
    i.add_argument("atlas", help="atlas folder")
    i.set_defaults(run=_info)

    v = asub.add_parser("verify", help="check every shard file and manifest row of an atlas "
                        "(exit 1 if something is broken)")
    v.add_argument("atlas", help="atlas folder")
    v.add_argument("--repair", action="store_true",
                   help="drop broken shards and unreferenced files and mark their images not "
                   "done; then re-run the same build command to rebuild them")
    v.set_defaults(run=_verify)


def _build(args: argparse.Namespace) -> int:
    import torch.distributed as dist

    from ierf.atlas.build import build_atlas, default_engine
    from ierf.atlas.store import MANIFEST, load_atlas_model
    from ierf.errors import IerfError
    from ierf.lock import rank0_lock

    torchrun = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    if torchrun and not dist.is_initialized():
        dist.init_process_group("gloo")
    try:
        device = args.device
        if torchrun and device == "cuda":
            device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
        if os.path.exists(args.out) and not os.path.isdir(args.out):
            raise IerfError(f"{args.out!r} is a file; give a folder for the atlas (--out)")
        with rank0_lock(Path(args.out) / MANIFEST):  # a second build is refused before any work
            model = load_atlas_model(args.model, args.weights)
            engine = default_engine(model, args.ierf_method)
            atlas = build_atlas(model, args.images, [s for s in args.layers.split(",") if s],
                                args.out, samples_per_image=args.samples_per_image, n=args.n,
                                batch_size=args.batch_size, ierf_downsample=args.ierf_downsample,
                                seed=args.seed, device=device,
                                internal_batch_size=args.internal_batch_size, engine=engine,
                                weights=args.weights, overwrite=args.overwrite)
        if not dist.is_initialized() or dist.get_rank() == 0:
            print(_summary(atlas))
    finally:
        if torchrun and dist.is_initialized():
            dist.destroy_process_group()
    return 0


def _info(args: argparse.Namespace) -> int:
    from ierf.atlas.store import open_atlas

    print(_summary(open_atlas(args.atlas, partial=True)))
    return 0


def _verify(args: argparse.Namespace) -> int:
    from ierf.atlas.verify import verify_atlas

    report = verify_atlas(args.atlas, repair=args.repair)
    print(report)
    return 0 if report.ok or args.repair else 1


#: unreadable images listed by name in the summary
SHOWN_SKIPPED = 10


def _summary(atlas) -> str:
    m = atlas.meta
    lines = [f"atlas {atlas.path}",
             f"  model {m['model']} ({m['weights']} weights), iERFs by {m['ierf_method']}",
             (f"  images {m['source']}: {atlas.done} of {len(atlas.images)} done"
              + ("" if atlas.done == len(atlas.images) else " (incomplete: re-run the build "
                 "command to resume)")),
             (f"  {m['samples_per_image']} sample(s) per image and layer, seed {m['seed']}; "
              f"iERFs {m['ierf_size'][0]}×{m['ierf_size'][1]} "
              f"(downsampled ×{m['ierf_downsample']})")]
    for layer in atlas.layers:
        g = m["grids"][layer]
        lines.append(f"  {layer}: {atlas.count(layer)} samples, {m['channels'][layer]} channels, "
                     f"grid {g[0]}×{g[1]}")
    if atlas.skipped:
        shown = list(atlas.skipped.items())[:SHOWN_SKIPPED]
        lines.append(f"  skipped {len(atlas.skipped)} unreadable image(s) (fix or remove them, "
                     "then re-run the build command):")
        lines += [f"    {i}: {why}" for i, why in shown]
        if len(atlas.skipped) > len(shown):
            lines.append(f"    … and {len(atlas.skipped) - len(shown)} more (Atlas.skipped)")
    lines.append(f"  built {m['created']}")
    if damaged := atlas.damaged():
        lines.append(f"  DAMAGED: {len(damaged)} shard file(s) missing or truncated "
                     f"({', '.join(damaged[:3])}{', …' if len(damaged) > 3 else ''}); run "
                     f"`ierf atlas verify {atlas.path} --repair`, then the build command")
    return "\n".join(lines)

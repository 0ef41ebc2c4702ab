"""`ierf bench cafe`: the CAFE insertion test (IERF Fig. 7) and non-locality (Fig. 8)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ierf.cli.cafe import image_stream

RANKING_NAMES = ("attnlrp", "srd", "integrated-gradients", "gradient", "grad-x-input",
                 "kernelshap", "activation", "random")
BLANK_NAMES = ("zero", "mean", "blur")


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``ierf bench cafe``."""
    p = sub.add_parser("cafe", help="CAFE insertion AUC per layer and method vs activation "
                       "ranking, and the non-locality of SAE latents (paper Sec. V-C)")
    p.add_argument("bases", nargs="+", help="SAE basis folders of one model (one per layer / "
                   "token kind, from `ierf cafe train-sae`)")
    p.add_argument("--images", default="benchmark", help="benchmark[:<seed>:<split>] "
                   "(default: the synthetic benchmark's val split), photos, or a folder")
    p.add_argument("--n", type=int, default=64, help="images (default 64)")
    p.add_argument("--rankings", default=",".join(RANKING_NAMES),
                   help=f"comma-separated rankings (default all: {', '.join(RANKING_NAMES)})")
    p.add_argument("--blanks", default="zero", help="comma-separated blanks: zero (zeros "
                   "after normalisation), mean (mean image), blur (blurred copy); default zero")
    p.add_argument("--baseline", default="blank", choices=("blank", *BLANK_NAMES),
                   help="reference input of integrated-gradients and kernelshap: blank (the "
                   "blank each insertion curve starts from; default) or one fixed blank")
    p.add_argument("--latents", type=int, default=16,
                   help="latents per basis, drawn among those active (default 16)")
    p.add_argument("--per-latent", type=int, default=4,
                   help="top images per latent (default 4)")
    p.add_argument("--readout", default="peak", choices=("peak", "sum"),
                   help="z_k(I): the latent at its firing token (peak) or summed over tokens")
    p.add_argument("--steps", type=int, default=16, help="insertion curve points (default 16)")
    p.add_argument("--ig-steps", type=int, default=16, help="IG path points (default 16)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--weights", default="pretrained", help="the model's weights: pretrained "
                   "(default) or a state-dict file")
    p.add_argument("--device", default="cpu")
    p.add_argument("-o", "--out", default="ierf-bench-cafe", help="output folder (default "
                   "ierf-bench-cafe); re-running the same command resumes")
    p.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    from ierf.bench.tables import Table
    from ierf.cafe.bench import (
        CafeBench,
        insertion_table,
        kendall_tau,
        locality_table,
        ranking_order,
        run,
    )
    from ierf.cafe.panels import save_insertion_figure
    from ierf.concepts.basis import ConceptBasis
    from ierf.errors import IerfError
    from ierf.models import load_model

    bases = [ConceptBasis.load(b, device=args.device) for b in args.bases]
    names = {b.model for b in bases}
    if len(names) != 1:
        raise IerfError(f"the bases belong to different models ({', '.join(sorted(names))}); "
                        "benchmark one model at a time")
    model = load_model(bases[0].model, weights=args.weights)
    model.net.to(args.device)
    bench = CafeBench(rankings=_split(args.rankings), blanks=_split(args.blanks),
                      baseline=args.baseline,
                      n_latents=args.latents, per_latent=args.per_latent,
                      readout=args.readout, steps=args.steps, ig_steps=args.ig_steps,
                      seed=args.seed)
    images = image_stream(args.images, args.n, model, "val")
    x = images.load(0, len(images)).to(args.device)
    out = Path(args.out)
    results = run(model, bases, x, bench, out / "results.sqlite", images.describe(),
                  log=lambda m: print(m, file=sys.stderr, flush=True))
    tables: list[tuple[str, Table]] = []
    for blank in bench.blanks:
        tables.append((f"insertion-{blank}", insertion_table(results, bench.rankings, blank,
                                                             model.name)))
    tables.append(("nonlocality", locality_table(results, bench.locality_method, model.name)))
    for name, table in tables:
        table.write(out / name)
        print(table.markdown())
    orders = {b: ranking_order(results, bench.rankings, b) for b in bench.blanks}
    first = bench.blanks[0]
    for label in orders[first]:
        line = f"{label}: " + " | ".join(f"{b}: {' > '.join(orders[b][label])}"
                                         for b in bench.blanks)
        if len(bench.blanks) > 1:
            taus = [f"τ({first},{b}) = {kendall_tau(orders[first][label], orders[b][label]):.2f}"
                    for b in bench.blanks[1:]]
            line += " · " + ", ".join(taus)
        print(line)
    curves = {r.label: {k: c for (k, b), c in r.curves.items() if b == first} for r in results}
    fig = save_insertion_figure(curves, out / "curves.png",
                                f"CAFE insertion · {model.name} · blank={first}")
    print(f"→ {out}/: " + ", ".join(f"{n}/table.md" for n, _ in tables) + f", {fig.name}")
    return 0


def _split(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]

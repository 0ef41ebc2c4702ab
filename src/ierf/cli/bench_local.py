"""`ierf bench local` (Tables I, II, IV) and `ierf bench attack` (Fig. 4)."""

from __future__ import annotations

import argparse
from functools import cache
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``local`` and ``attack`` to the ``ierf bench`` group."""
    from ierf.bench import KINDS

    lo = sub.add_parser("local", help="score attribution methods: Poi./Att./Spa./Fid./Sta. "
                        "tables (paper Tables I, II, IV)")
    lo.add_argument("--table", default="main", choices=KINDS,
                    help="main: methods × metrics (Table I); activations: fidelity on the toy "
                    "ResNet's activation variants (Table II); srd-ablation: SRD's μ(L→O) "
                    "variants (Table IV)")
    lo.add_argument("--model", help="model (default: toy-resnet on synthetic data, "
                    "efficientnet_lite0 otherwise)")
    lo.add_argument("--data", default="synthetic",
                    help="synthetic or synthetic:<seed>:<split> (ground-truth part masks; "
                    "default: the test split drawn with --seed), photos (grid pointing game on "
                    "bundled photos), or a folder DIR with DIR/images/ and DIR/masks/")
    lo.add_argument("--methods", help="comma-separated methods (default: the table's methods; "
                    "see `ierf methods`)")
    _common(lo, n=128, quick_n=8, batch_size=32)
    lo.set_defaults(run=_local)

    at = sub.add_parser("attack", help="explanation manipulation attack (paper Eq. 7, Fig. 4): "
                        "SSIM and Pearson between original and manipulated maps")
    at.add_argument("--model", default="toy-resnet", help="model (default toy-resnet; on "
                    "toy-vgg the input-MSE stop is reached before any map moves much)")
    at.add_argument("--methods", help="comma-separated methods (default: the paper's gradient, "
                    "grad-x-input, guided-backprop, integrated-gradients, lrp-zplus, srd; "
                    "gradcam is available too)")
    at.add_argument("--steps", type=int, help="most optimisation steps per pair")
    _common(at, n=16, quick_n=2, batch_size=4)
    at.set_defaults(run=_attack)


def _common(p: argparse.ArgumentParser, n: int, quick_n: int, batch_size: int) -> None:
    p.add_argument("--n", type=int, help=f"images (default {n}; {quick_n} with --quick)")
    p.add_argument("--batch-size", type=int, help=f"images per batch (default {batch_size})")
    p.add_argument("--out", help="output folder (default ierf-bench-<table or attack>)")
    p.add_argument("--quick", action="store_true",
                   help="tiny sizes for CI: few images, cheap methods, fewer perturbations")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    p.add_argument("--seed", type=int, default=0, help="data and metric seed (default 0)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(default_n=n, quick_n=quick_n, default_batch=batch_size)


@cache
def _load(name: str):
    from ierf import load_model

    return load_model(name)


def _methods(text: str | None) -> list[str] | None:
    from ierf import methods
    from ierf.errors import unknown_name

    if not text:
        return None
    names = [m.strip() for m in text.split(",") if m.strip()]
    for m in names:
        if m not in methods():
            raise unknown_name("method", m, methods())
    return names


def _sizes(args: argparse.Namespace) -> tuple[int, int]:
    from ierf.errors import IerfError

    n = args.n or (args.quick_n if args.quick else args.default_n)
    batch = args.batch_size or min(n, args.default_batch)
    if n < 1 or batch < 1:
        raise IerfError(f"--n and --batch-size must be ≥ 1, got {n} and {batch}")
    return n, batch


def _local(args: argparse.Namespace) -> int:
    from ierf.bench.data import SYNTHETIC, load_data
    from ierf.bench.run import load_datasets, run
    from ierf.bench.store import ResultStore
    from ierf.bench.suites import default_model, plan
    from ierf.data.sources import BENCHMARK, parse_source

    n, batch = _sizes(args)
    source = parse_source(args.data, benchmark=SYNTHETIC)
    data = SYNTHETIC if source.kind == BENCHMARK else args.data  # the tables' vocabulary
    model = args.model or default_model(data)
    p = plan(args.table, model, data, _methods(args.methods), _load(model).input_size[-1],
             args.quick)
    config = {"table": args.table, "data": str(source.resolved(args.seed, "test")), "n": n,
              "batch_size": batch, "seed": args.seed,
              "metrics": {k: repr(m) for k, m in p.metrics.items()}}
    out = Path(args.out or f"ierf-bench-{args.table}")
    models = load_datasets(p.jobs, _load, lambda m: load_data(args.data, m, n, args.seed),
                           args.device)
    with ResultStore(out / "results.sqlite", config) as store:
        outcome = run(p.jobs, p.metrics, models, store, batch, args.seed, args.device,
                      progress=not args.no_progress)
    table = p.table(outcome)
    table.write(out)
    print(table.markdown())
    print(f"→ {out / 'table.md'}, {out / 'table.csv'}, {out / 'figure.png'}")
    return 0


def _attack(args: argparse.Namespace) -> int:
    from ierf.bench.attack import DEFAULT_METHODS, QUICK_METHODS, run_attack

    n, batch = _sizes(args)
    out = Path(args.out or "ierf-bench-attack")
    methods = _methods(args.methods) or list(QUICK_METHODS if args.quick else DEFAULT_METHODS)
    table = run_attack(_load(args.model), methods, n, out, seed=args.seed, batch_size=batch,
                       device=args.device, steps=args.steps or (20 if args.quick else None),
                       progress=not args.no_progress)
    print(table.markdown())
    print(f"→ {out / 'table.md'}, {out / 'table.csv'}, {out / 'figure.png'}")
    return 0

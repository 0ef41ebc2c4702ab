"""`ierf bench fact-deletion`: concept deletion on a FaCT model – its exact contributions
(Eq. 9) against approximate importances (FaCT Sec. 6, Fig. 7; App. F)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor

    from ierf.bench.tables import Table
    from ierf.fact.deletion import ConceptDeletion

#: :data:`ierf.fact.deletion.METHODS`, here so that ``--help`` needs no torch
METHOD_NAMES = ("contribution", "grad-x-act", "integrated-gradients", "activation", "random")


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``ierf bench fact-deletion``."""
    p = sub.add_parser("fact-deletion", help="FaCT concept deletion: exact contributions vs "
                       "gradient × activation, IG, activation and random orders; top-1 logit "
                       "and accuracy AUCs with and without the always-on concepts")
    p.add_argument("--model", default="fact-toy", help="a FaCT model (default fact-toy)")
    p.add_argument("--weights", default="pretrained", help="the model's weights: pretrained "
                   "(default) or a state-dict file")
    p.add_argument("--layer", help="bottleneck layer (default: the model's only one)")
    p.add_argument("--images", default="benchmark", help="benchmark[:<seed>:<split>] "
                   "(default: the synthetic benchmark's test split, with its labels), photos, "
                   "or a folder (accuracy then counts agreement with the original prediction)")
    p.add_argument("--n", type=int, default=256, help="images (default 256)")
    p.add_argument("--methods", default=",".join(METHOD_NAMES),
                   help=f"comma-separated importance orders (default all: "
                   f"{', '.join(METHOD_NAMES)})")
    p.add_argument("--steps", type=int, help="curve points (default: every number of deleted "
                   "concepts)")
    p.add_argument("--ig-steps", type=int, default=16, help="IG Riemann points (default 16)")
    p.add_argument("--always-on", type=float, default=1.0, help="a concept is always-on if "
                   "active on at least this fraction of the images (default 1.0, as App. F)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random order")
    p.add_argument("--batch-size", type=int, default=512,
                   help="(image, step) rows per decoder pass (default 512)")
    p.add_argument("--device", default="cpu")
    p.add_argument("-o", "--out", default="ierf-bench-fact-deletion",
                   help="output folder (default ierf-bench-fact-deletion)")
    p.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    from ierf.data.sources import BENCHMARK, image_ids, load_images, parse_source
    from ierf.data.synthetic import generate
    from ierf.fact.contributions import as_fact
    from ierf.fact.deletion import always_on, concept_deletion
    from ierf.models import load_model
    from ierf.viz.fact import save_deletion_figure

    model = load_model(args.model, weights=args.weights)
    as_fact(model)
    model.net.to(args.device)
    source = parse_source(args.images).resolved(0, "test")
    if source.kind == BENCHMARK:
        batch = generate(args.n, source.seed, source.split)
        x, labels = batch.images, batch.labels
    else:
        x = model.denormalize(load_images(source, image_ids(source, args.n), model))
        labels = None
    x = x.to(args.device)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]

    def deletion(exclude: Tensor | None) -> ConceptDeletion:
        return concept_deletion(model, x, labels, methods, layer=args.layer, exclude=exclude,
                                steps=args.steps, ig_steps=args.ig_steps, seed=args.seed,
                                batch_size=args.batch_size)

    _log(f"deleting concepts on {len(x)} images of {source} …")
    full = deletion(None)
    on = always_on(full.activations, args.always_on)
    _log(f"{len(on)} always-on concept(s) (active on ≥ {args.always_on:.0%} of the images): "
        f"{on.tolist()}; deleting without them …")
    rest = deletion(on)
    results = {"all concepts": full, "always-on kept": rest}
    table = _table(results, model.name, str(source), args.always_on, on.tolist())
    out = Path(args.out)
    table.write(out / "deletion")
    fig = save_deletion_figure(results, out / "curves.png",
                               f"FaCT concept deletion · {model.name} · {full.layer} · "
                               f"{len(x)} images")
    print(table.markdown())
    print(f"→ {out}/deletion/table.md, table.csv, figure.png, {fig.name}")
    return 0


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _table(results: dict[str, ConceptDeletion], model: str, source: str, threshold: float,
           on: list[int]) -> Table:
    """Rows: methods; columns: logit and accuracy AUC, with all concepts deletable and with
    the always-on ones kept; notes: the paired differences to the exact contributions."""
    import numpy as np

    from ierf.bench.tables import Table

    first = next(iter(results.values()))
    columns, mean, se, n = [], [], [], []
    for name, res in results.items():
        suffix = "" if name == "all concepts" else f" ({name})"
        for what, auc in (("logit AUC", res.logit_auc()), ("accuracy AUC", res.accuracy_auc())):
            columns.append(what + suffix)
            mean.append(auc.mean(1).numpy())
            se.append((auc.std(1) / auc.shape[1] ** 0.5).numpy())
            n.append(np.full(len(res.methods), auc.shape[1]))
    notes = [(f"{first.logits.shape[-1]} images of {source}; bottleneck {first.layer} with "
              f"{first.activations.shape[1]} concepts; accuracy before deletion "
              f"{first.accuracy_curves()[0, 0]:.3f}. AUC over the fraction of deletable "
              "concepts deleted, mean ± standard error over images; lower is better."),
             (f"Always-on (active on ≥ {threshold:.0%} of the images): {len(on)} concept(s) "
              f"{on}.")]
    if "contribution" in first.methods:
        c = first.methods.index("contribution")
        for name, res in results.items():
            auc = res.logit_auc()
            for i, method in enumerate(res.methods):
                if i != c:
                    d = auc[i] - auc[c]
                    notes.append(f"{name}: logit AUC of {method} − contribution = "
                                 f"{d.mean():.3f} ± {d.std() / len(d) ** 0.5:.3f} (paired)")
        if int(first.counts[1]) == 1:
            drop = first.logits[c, 0] - first.logits[c, 1]
            top = first.importances["contribution"].amax(1)
            notes.append(f"First deletion by contribution: mean logit drop {drop.mean():.4f} "
                         f"vs mean top contribution {top.mean():.4f} (equal only if the B-cos "
                         "dynamic scales did not change).")
    return Table(f"FaCT concept deletion · {model}", first.methods, columns,
                 ["lower"] * len(columns), np.stack(mean, 1), np.stack(se, 1),
                 np.stack(n, 1), notes)

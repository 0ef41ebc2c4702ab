"""`ierf fact explain`: a FaCT model's exact concept explanation of one image (FaCT Sec. 3.1,
Sec. 6 Fig. 8)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor

    from ierf.models.model import Model

DEFAULT_MODEL = "fact-toy"


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``fact`` group with its ``explain`` action."""
    f = sub.add_parser("fact", help="FaCT: exact concept explanations of a B-cos model with a "
                       "bias-free TopK-SAE bottleneck")
    fsub = f.add_subparsers(required=True, metavar="ACTION")
    e = fsub.add_parser("explain", help="the concepts of one image's logit with their shares, "
                        "pixel traces and top reference images (PNGs + JSON)")
    e.add_argument("image", help="image file, bundled photo, or a benchmark scene: "
                   "benchmark:<index> (test split, seed 0) or benchmark:<seed>:<split>:<index>")
    e.add_argument("--model", default=DEFAULT_MODEL, help=f"a FaCT model (default "
                   f"{DEFAULT_MODEL})")
    e.add_argument("--weights", default="pretrained", help="the model's weights: pretrained "
                   "(default) or a state-dict file (.pth / .safetensors)")
    e.add_argument("--layer", help="bottleneck layer (default: the model's only one)")
    e.add_argument("--target", help="class (index or name) to explain (default: the predicted "
                   "class)")
    e.add_argument("--versus", help="a second class (index or name) for the two-class view of "
                   "shared concepts; default: the true class of a misclassified benchmark scene")
    e.add_argument("--top", type=int, default=5, help="concepts shown per class (default 5)")
    e.add_argument("--images", default="benchmark", help="reference images for each concept's "
                   "top-activating examples: benchmark[:<seed>:<split>] (default: the "
                   "benchmark's val split), photos, or a folder")
    e.add_argument("--n", type=int, default=64, help="reference images (default 64)")
    e.add_argument("--per-concept", type=int, default=4,
                   help="top reference images per concept (default 4)")
    e.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    e.add_argument("-o", "--out", required=True, help="output folder")
    e.set_defaults(run=_explain)


def _image(text: str, model: Model) -> tuple[Tensor, int | None, str]:
    """(1, 3, H, W) input, its true class if known (benchmark scenes), and a short name."""
    from ierf.data.images import load_image
    from ierf.data.synthetic import SPLITS, make_scene, render_without
    from ierf.errors import IerfError

    if not text.startswith("benchmark:"):
        return model.preprocess(load_image(text)), None, Path(text).stem
    parts = text.split(":")[1:]
    if len(parts) == 1:
        parts = ["0", "test", parts[0]]
    if len(parts) != 3 or not parts[0].isdigit() or parts[1] not in SPLITS or \
            not parts[2].isdigit():
        raise IerfError(f"a benchmark scene is benchmark:<index> or "
                        f"benchmark:<seed>:<split>:<index> with split one of {list(SPLITS)}, "
                        f"got {text!r}")
    scene = make_scene(int(parts[2]), int(parts[0]), parts[1])
    return model.preprocess(render_without(scene)[0]), scene.label, \
        f"benchmark-{parts[0]}-{parts[1]}-{parts[2]}"


def _explain(args: argparse.Namespace) -> int:
    import torch

    from ierf.data.sources import image_ids, load_images, parse_source
    from ierf.fact.contributions import as_fact
    from ierf.fact.explain import explain_image
    from ierf.io import atomic_path
    from ierf.models import load_model
    from ierf.targets import class_index
    from ierf.viz.fact import save_explanation_figure, save_versus_figure

    model = load_model(args.model, weights=args.weights)
    fact = as_fact(model)  # a clear error for a model that is not FaCT, before any work
    model.net.to(args.device)
    x, label, stem = _image(args.image, model)
    x = model.denormalize(x.to(args.device))  # FaCT takes RGB in [0, 1]
    source = parse_source(args.images).resolved(0, "val")
    ids = image_ids(source, args.n)
    references = model.denormalize(load_images(source, ids, model).to(args.device))
    names = model.class_names
    target = None if args.target is None else class_index(args.target, names)
    versus = None if args.versus is None else class_index(args.versus, names)
    if versus is None and label is not None:
        with torch.no_grad():
            shown = int(fact(x).argmax()) if target is None else target
        versus = None if label == shown else label  # misclassified: what the classes share
    expl = explain_image(model, x, references, target=target, versus=versus, top=args.top,
                         per_concept_images=args.per_concept, layer=args.layer)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ref_names = [f"#{i}" for i in ids]
    written = [save_explanation_figure(expl, x.cpu(), references.cpu(), out / "explanation.png",
                                       names, ref_names)]
    if expl.versus is not None:
        written.append(save_versus_figure(expl, x.cpu(), references.cpu(), out / "versus.png",
                                          names, ref_names))
    numbers = {"model": model.name, "image": args.image,
               "label": None if label is None else {"index": label, "name": names[label]},
               "reference_images": {"source": str(source), "n": len(ids)},
               **expl.to_json(names, ids)}
    with atomic_path(out / "explanation.json") as tmp:
        Path(tmp).write_text(json.dumps(numbers, indent=1))
    written.append(out / "explanation.json")
    _report(stem, numbers)
    print("→ " + ", ".join(str(p) for p in written))
    return 0


def _report(stem: str, numbers: dict) -> None:
    pred, target = numbers["predicted"], numbers["target"]
    print(f"{stem}: predicted {pred['name']} (p = {pred['probability']:.3f}); logit of "
          f"{target['name']} = {target['logit']:.4g} = Σ concept contributions "
          f"(residual {numbers['residual']:.2g})")
    shown = [f"P{i + 1} concept {c['concept']}: {c['share_percent']:.1f} %"
             for i, c in enumerate(numbers["top_concepts"])]
    print("  " + ", ".join(shown) + f", other concepts: "
          f"{numbers['other_concepts']['share_percent']:.1f} %")
    if numbers["versus"] is not None:
        shared = [f"{c['concept']} ({c['share_percent']:.1f} % | "
                  f"{c['share_versus_percent']:.1f} %)" for c in numbers["shared_concepts"]]
        print(f"  shared with {numbers['versus']['name']} (logit "
              f"{numbers['versus']['logit']:.4g}): " + (", ".join(shared) or "none"))

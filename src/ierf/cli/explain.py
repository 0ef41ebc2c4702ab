"""`ierf explain`, `ierf models`, `ierf methods`, `ierf layers`."""

from __future__ import annotations

import argparse
from pathlib import Path

DEFAULT_MODEL = "efficientnet_lite0"


def register(sub: argparse._SubParsersAction) -> None:
    """Add the explain and listing subcommands."""
    from ierf.local import DEFAULT_METHOD

    e = sub.add_parser("explain", help="write a saliency overlay PNG for one image")
    e.add_argument("image", help="image file, or a bundled photo: chelsea, coffee, camera, ...")
    e.add_argument("--model", default=DEFAULT_MODEL, help=f"model name (default {DEFAULT_MODEL})")
    e.add_argument("--method", default=DEFAULT_METHOD, help=f"attribution method (default "
                   f"{DEFAULT_METHOD}; see `ierf methods`)")
    e.add_argument("--target", default="auto", help="class index or name, or auto (top class)")
    e.add_argument("-o", "--output", help="output PNG (default: <image>_<method>.png)")
    e.add_argument("--save-tensor", action="store_true",
                   help="also write the raw map as <output>.safetensors")
    e.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    e.set_defaults(run=_explain)

    m = sub.add_parser("models", help="list the models ierf can load")
    m.set_defaults(run=_models)
    me = sub.add_parser("methods", help="list the attribution methods")
    me.set_defaults(run=_methods)
    la = sub.add_parser("layers", help="list a model's analysable layers")
    la.add_argument("model")
    la.set_defaults(run=_layers)


def _explain(args: argparse.Namespace) -> int:
    import torch

    from ierf import attributor, load_image, load_model
    from ierf.targets import resolve_target
    from ierf.viz.overlay import save_overlay

    model = load_model(args.model)
    model.net.to(args.device)
    image = load_image(args.image)
    x = model.preprocess(image).to(args.device)
    with torch.no_grad():
        logits = model(x)
    target = resolve_target(args.target, logits, model.class_names)
    cls = int(target.indices(1, logits.device)[0])
    prob = float(logits.softmax(1)[0, cls])
    with attributor(args.method, model) as method:
        saliency = method.attribute(x, target)[0]
    stem = Path(args.image).stem
    out = Path(args.output or f"{stem}_{args.method}.png")
    title = f"{model.name} · {args.method} · {model.class_names[cls]} (class {cls}, p = {prob:.2f})"
    save_overlay(model.denormalize(x)[0], saliency, out, title)
    print(f"{stem}: {model.class_names[cls]} (p = {prob:.3f}) → {out}")
    if args.save_tensor:
        _save_tensor(saliency, out.with_suffix(".safetensors"),
                     {"model": model.name, "method": args.method, "class": str(cls)})
    return 0


def _save_tensor(saliency, path: Path, metadata: dict[str, str]) -> None:
    from safetensors.torch import save_file

    from ierf.io import atomic_path

    with atomic_path(path) as tmp:
        save_file({"map": saliency.detach().cpu().contiguous()}, tmp, metadata=metadata)
    print(f"raw map ({tuple(saliency.shape)}) → {path}")


def _models(_args: argparse.Namespace) -> int:
    from ierf.models.zoo import OFFLINE_MODELS, available_models

    for name in available_models():
        print(f"{name}{'  (offline weights)' if name in OFFLINE_MODELS else ''}")
    return 0


def _methods(_args: argparse.Namespace) -> int:
    from ierf import methods

    print("\n".join(methods()))
    return 0


def _layers(args: argparse.Namespace) -> int:
    from ierf import load_model

    print("\n".join(load_model(args.model, weights=None).layer_names()))
    return 0


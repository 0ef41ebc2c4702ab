"""`ierf explain` (images, folders, batched), `ierf models`, `ierf methods`, `ierf layers`."""

from __future__ import annotations

import argparse
from pathlib import Path

DEFAULT_MODEL = "efficientnet_lite0"


def register(sub: argparse._SubParsersAction) -> None:
    """Add the explain and listing subcommands."""
    from ierf.cli.options import device, key_value
    from ierf.local import DEFAULT_METHOD

    e = sub.add_parser("explain", help="write saliency overlays for images")
    e.add_argument("images", nargs="+", metavar="IMAGE",
                   help="image files, folders of images, or bundled photos: chelsea, coffee, "
                        "camera, ...")
    e.add_argument("--model", default=DEFAULT_MODEL, help=f"model name (default {DEFAULT_MODEL})")
    e.add_argument("--method", default=DEFAULT_METHOD, help=f"attribution method (default "
                   f"{DEFAULT_METHOD}; see `ierf methods`)")
    e.add_argument("--opt", type=key_value, action="append", default=[], metavar="KEY=VALUE",
                   help="a method option, repeatable: --opt n_steps=64 --opt layer=layer3")
    e.add_argument("--target", default="auto", help="class index or name, or auto (top class)")
    e.add_argument("-o", "--output", help="output file for one image (.png, .jpg, .pdf or "
                   ".svg; default <image>_<method>.png), or a folder for several")
    e.add_argument("--pool", default="auto", type=lambda v: v if v == "auto" else int(v),
                   help="show maps averaged over N×N pixel blocks (display only; default auto: "
                        "2 when the map has a stride-2 stem's pixel grid)")
    e.add_argument("--batch-size", type=int, default=8, help="images per batch (default 8)")
    e.add_argument("--save-tensor", action="store_true",
                   help="also write the raw map as <output>.safetensors")
    e.add_argument("--device", type=device, default="cpu",
                   help="torch device, e.g. cpu or cuda")
    e.set_defaults(run=_explain)

    m = sub.add_parser("models", help="list the models ierf can load")
    m.set_defaults(run=_models)
    me = sub.add_parser("methods", help="list the attribution methods, the model kinds each "
                        "is made for, and what it computes")
    me.set_defaults(run=_methods)
    la = sub.add_parser("layers", help="list a model's analysable layers: grid, channels, and "
                        "which the methods use by default")
    la.add_argument("model")
    la.add_argument("--all", action="store_true",
                    help="also list pass-through modules (Identity, Dropout, DropPath)")
    la.set_defaults(run=_layers)


def _explain(args: argparse.Namespace) -> int:
    import torch

    from ierf import attributor, load_image, load_model
    from ierf.data.images import expand_sources
    from ierf.errors import IerfError
    from ierf.models.zoo import warn_if_out_of_domain
    from ierf.targets import resolve_target
    from ierf.viz.figures import check_figure_suffix
    from ierf.viz.overlay import save_panel

    if args.batch_size < 1:
        raise IerfError("--batch-size must be >= 1")
    sources = expand_sources(args.images)
    outputs = _outputs(sources, args.output, args.method)
    for out in outputs:
        check_figure_suffix(out)
    model = load_model(args.model)
    model.net.to(args.device)
    with attributor(args.method, model, **dict(args.opt)) as method:
        for b0 in range(0, len(sources), args.batch_size):
            chunk = sources[b0:b0 + args.batch_size]
            images = [load_image(src) for src in chunk]
            for src, image in zip(chunk, images):
                warn_if_out_of_domain(model, image, str(src))
            x = torch.cat([model.preprocess(im) for im in images]).to(args.device)
            with torch.no_grad():
                logits = model(x)
            target = resolve_target(args.target, logits, model.class_names)
            classes = target.indices(len(x), logits.device).tolist()
            probs = logits.softmax(1)
            maps = method.attribute(x, target)
            for i, (src, cls) in enumerate(zip(chunk, classes)):
                out, prob = outputs[b0 + i], float(probs[i, cls])
                title = (f"{model.name} · {args.method} · {model.class_names[cls]} "
                         f"(class {cls}, p = {prob:.2f})")
                save_panel(model.denormalize(x[i:i + 1])[0], maps[i], out, title,
                           pool=args.pool)
                print(f"{Path(str(src)).stem}: {model.class_names[cls]} (p = {prob:.3f}) → {out}")
                if args.save_tensor:
                    _save_tensor(maps[i], out.with_suffix(".safetensors"),
                                 {"model": model.name, "method": args.method, "class": str(cls)})
    return 0


def _outputs(sources: list, output: str | None, method: str) -> list[Path]:
    """One output file per image: ``-o`` itself for one image, ``<stem>_<method>.png`` in
    ``-o`` (a folder) or here for several; repeated stems get a number."""
    stems: dict[str, int] = {}
    names = []
    for src in sources:
        stem = Path(str(src)).stem
        stems[stem] = stems.get(stem, 0) + 1
        names.append(f"{stem}_{method}.png" if stems[stem] == 1
                     else f"{stem}-{stems[stem]}_{method}.png")
    if output is None:
        return [Path(n) for n in names]
    if len(sources) == 1 and Path(output).suffix:
        return [Path(output)]
    return [Path(output) / n for n in names]


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
    from ierf.local.registry import METHODS, SUMMARIES

    for name in sorted(METHODS):
        print(f"{name:22s} {'/'.join(METHODS[name].kinds):8s} {SUMMARIES[name]}")
    return 0


def _layers(args: argparse.Namespace) -> int:
    from ierf import load_model
    from ierf.models.layers import layer_table

    for row in layer_table(load_model(args.model, weights=None), passthrough=args.all):
        print(row)
    return 0

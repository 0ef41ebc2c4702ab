"""`ierf diagnose`: why is this prediction wrong, and what did an attack change (IERF Sec. VI-E).

The model and the concept bases come from the graph folder (``ierf graph build`` records the
model, its weights' fingerprint and where the bases are), so ``--model`` is optional: when
given, it must name the graph's model.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

#: the names of :data:`ierf.diagnose.ATTACKS`, here so that ``--help`` needs no torch
ATTACKS = ("fgsm", "pgd")


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``diagnose``."""
    d = sub.add_parser(
        "diagnose", help="why the model predicts this class and not another, or what a "
        "targeted attack changed: per-image concept graphs compared (Sec. VI-E)",
        description="Two classes (default): the prediction against --versus, else "
        "--expected, else the runner-up: both classes' concept routes, where in the image "
        "they come from, shared and separating concepts, the deciding edge. With --attack: "
        "a targeted FGSM/PGD towards --attack-target, then the clean and attacked graphs "
        "diffed: changed, repurposed and new concepts, changed edges, the route-flip score.")
    d.add_argument("image", help="image file, bundled photo name, or an integer: that image "
                   "of the graph's atlas")
    d.add_argument("--graph", required=True, help="graph folder (from `ierf graph build`): "
                   "it names the model and the concept bases")
    d.add_argument("--model", help="optional check: the model the graph was built on")
    d.add_argument("--expected", help="the class the image should have (index or name)")
    d.add_argument("--versus", help="compare the prediction with this class instead")
    d.add_argument("--attack", choices=ATTACKS, help="run a targeted attack and diff the "
                   "clean and attacked graphs")
    d.add_argument("--attack-target", help="the attack's target class (index or name)")
    d.add_argument("--eps", type=float, default=8 / 255, help="L∞ budget in pixel units of "
                   "the [0, 1] image (default 8/255 = 0.0314)")
    d.add_argument("--attack-steps", type=int, default=10, help="PGD steps (default 10)")
    d.add_argument("--step-size", type=float, help="PGD step size (default 2.5 eps / steps)")
    d.add_argument("--random-start", action="store_true", help="PGD from a random point of "
                   "the eps-ball")
    d.add_argument("--routes", type=int, default=5, help="routes per class (default 5)")
    d.add_argument("--top", type=int, default=3, help="concepts listed per layer and kind "
                   "(default 3)")
    d.add_argument("--steps", type=int, default=32, help="IG steps of the graphs (default 32)")
    d.add_argument("--no-figures", dest="figures", action="store_false", help="write the "
                   "Markdown and JSON only (faster)")
    d.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    d.add_argument("-o", "--out", help="output folder (default GRAPH/diagnose-<image>)")
    d.set_defaults(run=_run)


def _class(text: str | None, model: Any, option: str) -> int | None:
    from ierf.errors import IerfError
    from ierf.targets import class_index

    if text is None:
        return None
    c = class_index(text, model.class_names)
    if not 0 <= c < model.num_classes:
        raise IerfError(f"{option} {text!r}: {model.name} has {model.num_classes} classes "
                        f"(0 … {model.num_classes - 1})")
    return c


def _run(args: argparse.Namespace) -> int:
    from ierf.cli.graph import load_graph_context, read_image
    from ierf.errors import IerfError

    if args.attack is None and args.attack_target is not None:
        raise IerfError("--attack-target needs --attack fgsm or --attack pgd")
    if args.attack is not None:
        if args.attack_target is None:
            raise IerfError(f"--attack {args.attack} needs --attack-target CLASS")
        if args.versus is not None or args.expected is not None:
            raise IerfError("--attack compares the clean with the attacked image; leave out "
                            "--expected / --versus (or run without --attack)")
    graph, model, atlas, bases = load_graph_context(args.graph, args.device)
    if args.model is not None and args.model != model.name:
        raise IerfError(f"--model {args.model!r}: the graph {args.graph} was built on "
                        f"{model.name!r} (leave out --model to use it)")
    x, stem = read_image(args.image, model, atlas)
    x = x.to(args.device)
    out = Path(args.out) if args.out else Path(args.graph) / f"diagnose-{stem}"
    method = graph.metadata.get("method", "ig")
    if args.attack is None:
        return _classes(args, model, bases, x, stem, out, method)
    return _attack(args, model, bases, x, stem, out, method)


def _classes(args: argparse.Namespace, model: Any, bases: dict, x: Any, stem: str, out: Path,
             method: str) -> int:
    from ierf.cli.graph import graph_thumbnails
    from ierf.diagnose.pipeline import diagnose_classes
    from ierf.diagnose.report import write_class_report

    d = diagnose_classes(model, bases, x, expected=_class(args.expected, model, "--expected"),
                         versus=_class(args.versus, model, "--versus"), k=args.routes,
                         top=args.top, method=method, n_steps=args.steps, image_id=stem)
    write_class_report(d, out, model.class_names, stem, figures=args.figures,
                       cards=graph_thumbnails(args.graph))
    names = model.class_names
    p = d.logits.softmax(0)
    print(f"{stem}: predicted {names[d.predicted]} (class {d.predicted}, p = "
          f"{float(p[d.predicted]):.3f})" + ("" if d.expected is None else
                                             f"; expected {names[d.expected]}"))
    if d.note:
        print(f"  note: {d.note}")
    c = d.comparison
    if c is not None:
        a, b = c.class_names
        e = c.deciding_edge
        print(f"  versus {b} (p = {c.probs[1]:.3f}); logit margin {c.margin['total']:+.3g}")
        print(f"  deciding edge: {e.source} → {e.target} ({a} {e.values[0]:+.3g} vs {b} "
              f"{e.values[1]:+.3g})")
        print(f"  shared: {', '.join(s.node for s in c.shared) or '-'}; for {a}: "
              f"{', '.join(s.node for s in c.favour_a) or '-'}; for {b}: "
              f"{', '.join(s.node for s in c.favour_b) or '-'}")
    from ierf.diagnose.report import region_shares

    shares = region_shares(d.region_maps, [names[c] for c in d.classes])
    for cls in d.classes:
        s = shares[names[cls]]
        print(f"  routes to {names[cls]} draw on: left {s['left']:.2f} / right "
              f"{s['right']:.2f}, top {s['top']:.2f} / bottom {s['bottom']:.2f} of their iERF "
              "mass (chance 0.50)")
        for i, r in enumerate(d.routes[cls][:2], 1):
            print(f"  route {i} to {names[cls]} ({r.strength:+.3g}): {' → '.join(r.labels)}")
    _page(out / "graph.json", out / "diagnosis.html", f"{stem}: the per-image concept graph")
    print(f"→ {out}/diagnosis.md, diagnosis.png, graph.png, diagnosis.json, diagnosis.html")
    return 0


def _attack(args: argparse.Namespace, model: Any, bases: dict, x: Any, stem: str, out: Path,
            method: str) -> int:
    from ierf.cli.graph import graph_thumbnails
    from ierf.diagnose.pipeline import diagnose_attack
    from ierf.diagnose.report import write_attack_report
    from ierf.errors import IerfError

    target = _class(args.attack_target, model, "--attack-target")
    options: dict[str, Any] = {}
    if args.attack == "pgd":
        options = {"steps": args.attack_steps, "step_size": args.step_size,
                   "random_start": args.random_start}
    elif args.step_size is not None or args.random_start:
        raise IerfError("--step-size and --random-start are PGD options; use --attack pgd")
    d = diagnose_attack(model, bases, x, target, args.attack, args.eps, k=args.routes,
                        top=args.top, method=method, n_steps=args.steps, image_id=stem,
                        **options)
    write_attack_report(d, out, model.class_names, stem, figures=args.figures,
                        cards=graph_thumbnails(args.graph))
    info = d.attack.to_dict(0, model.class_names)
    names = model.class_names
    if not d.success:
        print(f"{stem}: {args.attack} attack report (no diff) → {out}/diagnosis.md",
              file=sys.stderr)
        raise IerfError(f"targeted {args.attack.upper()} did not reach {names[target]!r} "
                        f"within eps = {args.eps:.4g}: the model still predicts "
                        f"{info['attacked_prediction']!r} (p({names[target]}) = "
                        f"{info['target_prob_attacked']:.3g}); try a larger --eps or "
                        "--attack pgd")
    c = d.comparison
    assert c is not None
    print(f"{stem}: {names[d.clean_class]} → {names[target]} by targeted "
          f"{args.attack.upper()} (eps {args.eps:.4g}, {info['steps']} step(s)); "
          f"p({names[target]}) {info['target_prob_clean']:.3g} → "
          f"{info['target_prob_attacked']:.3g}")
    print(f"  route flip {c.route_flip:+.3f} (balance {c.balance_clean:+.3f} → "
          f"{c.balance_attacked:+.3f}); route overlap {c.route_overlap:.3f}")
    tc = c.target_change
    print(f"  logit of {names[target]} {tc['total']:+.3g}: concepts {tc['concepts']:+.3g}, "
          f"error node {tc['error']:+.3g}, rest {tc['rest']:+.3g}")
    for kind in ("repurposed", "new"):
        found = [e.node for e in c.changed if e.kind == kind]
        print(f"  {kind}: {', '.join(found) or '-'}")
    if d.energy_share is not None:
        print(f"  changed concepts' iERF mass on the perturbation's energy: "
              f"{d.energy_share:.3f} (chance {d.chance:.3f}"
              + (")" if d.energy_localised else "; the perturbation's energy is spread "
                 "evenly: no region to compare with)"))
    _page(out / "diff-graph.json", out / "diff-graph.html",
          f"{stem}: attacked − clean concept graph")
    print(f"→ {out}/diagnosis.md, attack.png, diff-graph.png, diagnosis.json, diff-graph.html")
    return 0


def _page(graph: Path, out: Path, title: str) -> None:
    """The explorer's offline page of a graph the report wrote (no route overlay)."""
    from ierf.explorer import export_html

    export_html(graph, out, routes=False, title=title)

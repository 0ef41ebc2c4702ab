"""Writing a diagnosis: PNG panels, a Markdown summary and JSON (IERF Sec. VI-E, Fig. 12).

The I/O edge of :mod:`ierf.diagnose`. Files written (atomically) into ``out``:

- two classes: ``diagnosis.png`` (image, each class's route region map and SRD map),
  ``routes.png`` (each class's strongest routes, node by node), ``graph.png`` (the pruned
  per-image graph with both classes' routes outlined), ``graph.json``, ``diagnosis.json``,
  ``diagnosis.md``;
- an attack: ``attack.png`` (clean, attacked, perturbation, its energy, the changed
  concepts' iERFs, the target's SRD map), ``routes-attacked.png``, ``diff-graph.png`` and
  ``diff-graph.json`` (attacked − clean), ``graph-clean.json``, ``graph-attacked.json``,
  ``diagnosis.json``, ``diagnosis.md``; a failed attack writes ``attack.png``,
  ``diagnosis.json`` and ``diagnosis.md`` only;
- ``thumbnails/``: the graphs' node thumbnails (:func:`node_images`), so that their explorer
  pages show pixels.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ierf.diagnose.compare import ConceptEntry, EdgeEntry
from ierf.diagnose.pipeline import AttackDiagnosis, ClassDiagnosis
from ierf.diagnose.regions import halves, mass_share
from ierf.graph import to_json
from ierf.graph.concept_graph import ConceptGraph
from ierf.graph.export import relocate_thumbnails, save_thumbnails
from ierf.graph.routes import NodeLocations, Route
from ierf.io import atomic_path
from ierf.viz.graph import draw_graph, draw_routes, node_thumbnails, save
from ierf.viz.overlay import PHASE_SPREAD, phase_spread, pooled, show

#: routes per class drawn node by node (all ``k`` are in the JSON and the Markdown)
FIGURE_ROUTES = 3


def _write_text(path: Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)
    return path


def _panels(images: Sequence[tuple[str, torch.Tensor, torch.Tensor | None]], path: Path,
            title: str) -> Path:
    """One row of panels: (title, image (3, H, W), map over it or ``None``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(images), figsize=(2.6 * len(images), 3.0),
                             squeeze=False, layout="constrained")
    for ax, (name, image, heat) in zip(axes[0], images):
        image = image.detach().float().cpu().clamp(0, 1)
        if heat is None:
            ax.imshow(image.permute(1, 2, 0).numpy())
            ax.axis("off")
        else:
            heat = heat.detach().float().cpu()
            grid = phase_spread(heat) > PHASE_SPREAD            # a stride-2 stem's dot grid
            show(pooled(heat, 2 if grid else 1), image, ax, mode="overlay")
        ax.set_title(textwrap.fill(name, 30), fontsize=8)
    fig.suptitle(title, fontsize=9)
    return save(fig, path, dpi=100)


def _graph_png(graph: ConceptGraph, path: Path, routes: Sequence[Route], title: str) -> Path:
    pruned = graph.prune(top_k_per_class=5, top_shared=3, top_parents=3)
    kept = {i for layer in pruned.layers for i in pruned.node_ids(layer)}
    shown = [r for r in routes if set(r.nodes) <= kept]
    return draw_graph(pruned, path, routes=shown, title=title)


def node_images(out: Path, image: torch.Tensor | None = None,
                locations: NodeLocations | None = None,
                cards: Mapping[str, Sequence[str]] | None = None) -> dict[str, list[str]]:
    """The ``thumbnails`` of a per-image graph written into ``out`` (paths relative to it):
    per located node, the image dimmed outside its iERF (as `ierf graph explain` writes
    them, in ``out/thumbnails/``), then its data-set concept card from ``cards`` (node id →
    absolute paths, e.g. :func:`ierf.cli.graph.graph_thumbnails` of the data-set graph)."""
    mine = ({} if locations is None or image is None else
            save_thumbnails(node_thumbnails(image, locations), out))
    theirs = relocate_thumbnails(cards or {}, out, out)
    return {n: [*mine.get(n, []), *theirs.get(n, [])] for n in dict.fromkeys([*mine, *theirs])}


def region_shares(maps: torch.Tensor, names: Sequence[str]) -> dict[str, dict[str, float]]:
    """Per class, its route region map's mass share on the image's left / right / top /
    bottom half (chance 0.5 each; :func:`ierf.diagnose.regions.mass_share`)."""
    h, w = maps.shape[-2:]
    sides = torch.cat([halves(h, w, "vertical"), halves(h, w, "horizontal")])   # (4, H, W)
    shares = mass_share(maps[:, None], sides[None])                              # (n, 4)
    return {n: dict(zip(("left", "right", "top", "bottom"), row.tolist()))
            for n, row in zip(names, shares)}


def _concepts_md(rows: Sequence[ConceptEntry], heads: tuple[str, str]) -> list[str]:
    if not rows:
        return ["(none)", ""]
    out = [f"| concept | kind | {heads[0]} | {heads[1]} | score |", "|---|---|---|---|---|"]
    out += [f"| `{r.node}` {r.label} | {r.kind} | {r.values[0]:+.3g} | {r.values[1]:+.3g} | "
            f"{r.score:+.3g} |" for r in rows]
    return [*out, ""]


def _edge_md(e: EdgeEntry) -> str:
    return f"`{e.source}` → `{e.target}` ({e.values[0]:+.3g} vs {e.values[1]:+.3g}, Δ {e.score:+.3g})"


def _route_md(r: Route, kinds: Sequence[str] = ()) -> str:
    tags = [f"{label} [{k}]" if k else label for label, k in
            zip(r.labels, [*kinds, *[""] * len(r.labels)])]
    return f"- ({r.strength:+.3g}) {' → '.join(tags)}"


def write_class_report(d: ClassDiagnosis, out: str | Path, class_names: Sequence[str],
                       image_id: str = "image", *, figures: bool = True,
                       cards: Mapping[str, Sequence[str]] | None = None) -> dict[str, Any]:
    """Write the two-class diagnosis (module docstring; ``figures=False``: JSON and Markdown
    only); returns the JSON written. The graph's nodes carry :func:`node_images`
    (``cards``: the data-set graph's thumbnails)."""
    out = Path(out)
    names = [class_names[c] for c in d.classes]
    probs = d.logits.softmax(0)
    if figures:
        panels: list[tuple[str, torch.Tensor, torch.Tensor | None]] = [("input", d.image, None)]
        panels += [(f"routes → {n}", d.image, m) for n, m in zip(names, d.region_maps)]
        panels += [(f"SRD {n}", d.image, m) for n, m in zip(names, d.saliency)]
        _panels(panels, out / "diagnosis.png", f"{image_id}: predicted {names[0]} "
                f"(p = {float(probs[d.predicted]):.3f})")
        shown = [r for c in d.classes for r in d.routes[c][:FIGURE_ROUTES]]
        if shown:
            draw_routes(d.image, shown, d.locations, out / "routes.png",
                        title=f"{image_id}: routes to {' and to '.join(names)}")
        _graph_png(d.graph, out / "graph.png", [r for c in d.classes for r in d.routes[c]],
                   f"{image_id}: {' vs '.join(names)}")
    to_json(d.graph, out / "graph.json",
            thumbnails=node_images(out, d.image, d.locations, cards))
    summary: dict[str, Any] = {
        "image": image_id, "model": d.graph.metadata.get("model"),
        "predicted": names[0], "predicted_index": d.predicted,
        "expected": None if d.expected is None else class_names[d.expected],
        "correct": None if d.expected is None else d.expected == d.predicted,
        "classes": names, "probs": [float(probs[c]) for c in d.classes], "note": d.note,
        "routes": {n: [r.to_dict() for r in d.routes[c]] for c, n in zip(d.classes, names)},
        "route_region_shares": region_shares(d.region_maps, names)}
    if d.comparison is not None:
        summary["comparison"] = d.comparison.to_dict()
    with atomic_path(out / "diagnosis.json") as tmp:
        Path(tmp).write_text(json.dumps(summary, indent=1))
    _write_text(out / "diagnosis.md", "\n".join(_class_md(d, names, probs, image_id)))
    return summary


def _class_md(d: ClassDiagnosis, names: list[str], probs: torch.Tensor,
              image_id: str) -> list[str]:
    lines = [f"# Diagnosis of {image_id}", "",
             f"Predicted **{names[0]}** (p = {float(probs[d.predicted]):.3f})."]
    if d.note:
        lines += ["", f"Note: {d.note}."]
    c = d.comparison
    if c is not None:
        a, b = names
        m = c.margin
        lines += ["", (f"Compared with **{b}** (p = {float(probs[d.classes[1]]):.3f}). Logit "
                  f"margin {m['total']:+.3g} = concepts {m['concepts']:+.3g} + error node "
                  f"{m['error']:+.3g} − IG gap {m['ig_gap']:+.3g} + baseline "
                  f"{m['baseline']:+.3g}."), "",
                  (f"**Deciding edge**: {_edge_md(c.deciding_edge)} — contributions to {a} vs "
                  f"{b}."), f"Strongest edge for {b}: {_edge_md(c.against)}.", "",
                  "Deciding edge per layer pair:", ""]
        lines += [f"- {_edge_md(e)}" for e in c.deciding_edges]
        lines += ["", f"## Shared concepts (contribute to both; values: {a}, {b})", ""]
        lines += _concepts_md(c.shared, (a, b))
        lines += [f"## Concepts that separate them (favour {a} / favour {b})", ""]
        lines += _concepts_md(c.favour_a + c.favour_b, (a, b))
    shares = region_shares(d.region_maps, names)
    for cls, n in zip(d.classes, names):
        s = shares[n]
        lines += [f"## Routes to {n}", "", (f"Route region mass: left {s['left']:.2f} / right "
                  f"{s['right']:.2f}, top {s['top']:.2f} / bottom {s['bottom']:.2f} "
                  "(chance 0.50)."), ""]
        lines += [_route_md(r) for r in d.routes[cls]] + [""]
    lines += [("Figures: `diagnosis.png` (where each class's routes and SRD map lie), "
              "`routes.png`, `graph.png`; data: `diagnosis.json`, `graph.json`."), ""]
    return lines


def write_attack_report(d: AttackDiagnosis, out: str | Path, class_names: Sequence[str],
                        image_id: str = "image", *, figures: bool = True,
                        cards: Mapping[str, Sequence[str]] | None = None) -> dict[str, Any]:
    """Write the attack diagnosis (module docstring; ``figures=False``: JSON and Markdown
    only); returns the JSON written. The clean graph's nodes carry their data-set
    ``cards``; the attacked and the diff graph's also where they are active in the attacked
    image (:func:`node_images`)."""
    out = Path(out)
    a = d.attack
    clean, adv = a.clean[0].cpu(), a.adversarial[0].cpu()
    shown_delta = (a.delta[0].cpu() / (2 * a.eps) + 0.5).clamp(0, 1)
    panels: list[tuple[str, torch.Tensor, torch.Tensor | None]] = [
        (f"clean: {class_names[d.clean_class]}", clean, None),
        (f"attacked: {class_names[int(a.adv_pred[0])]}", adv, None),
        (f"perturbation (±{a.eps:.3g})", shown_delta, None),
        ("perturbation energy", adv, d.energy)]
    if d.changed_map is not None:
        panels.append(("changed concepts' iERFs", adv, d.changed_map))
    if d.locations is not None:
        panels.append((f"SRD {class_names[d.target]}", adv,
                       d.locations[f"output:{d.target}"][1]))
    verdict = "reached" if d.success else "did NOT reach"
    if figures:
        _panels(panels, out / "attack.png", f"{image_id}: targeted {a.method.upper()} "
                f"{verdict} {class_names[d.target]}")
    summary: dict[str, Any] = {"image": image_id, "attack": a.to_dict(0, class_names)}
    c = d.comparison
    if c is not None and d.graphs is not None:
        summary["comparison"] = c.to_dict()
        summary["energy_overlap"] = {"share": d.energy_share, "chance": d.chance,
                                     "localised": d.energy_localised}
        attacked = node_images(out, adv, d.locations, cards)
        to_json(d.graphs[0], out / "graph-clean.json", thumbnails=node_images(out, cards=cards))
        to_json(d.graphs[1], out / "graph-attacked.json", thumbnails=attacked)
        to_json(c.diff, out / "diff-graph.json", thumbnails=attacked)
        if figures:
            _graph_png(c.diff, out / "diff-graph.png", c.routes_attacked,
                       f"{image_id}: attacked − clean")
        if figures and c.routes_attacked and d.locations is not None:
            draw_routes(adv, c.routes_attacked[:FIGURE_ROUTES], d.locations,
                        out / "routes-attacked.png",
                        title=f"{image_id} attacked: routes to {class_names[d.target]}")
    with atomic_path(out / "diagnosis.json") as tmp:
        Path(tmp).write_text(json.dumps(summary, indent=1))
    _write_text(out / "diagnosis.md", "\n".join(_attack_md(d, class_names, image_id)))
    return summary


def _attack_md(d: AttackDiagnosis, class_names: Sequence[str], image_id: str) -> list[str]:
    a, info = d.attack, d.attack.to_dict(0, class_names)
    y, t = class_names[d.clean_class], class_names[d.target]
    lines = [f"# Attack diagnosis of {image_id}", "",
             (f"Targeted {a.method.upper()} (ε = {a.eps:.4g}, {info['steps']} step(s), "
             f"‖δ‖∞ = {info['linf']:.4g}) from **{y}** towards **{t}**: "
             f"{'success' if d.success else 'FAILED'}; the model now predicts "
             f"**{info['attacked_prediction']}**, p({t}) {info['target_prob_clean']:.3g} → "
             f"{info['target_prob_attacked']:.3g}.")]
    c = d.comparison
    if c is None:
        return [*lines, "", ("The attack did not reach the target within its budget, so "
                "there is no attacked prediction to diff. Try a larger `--eps` or "
                "`--attack pgd`."), ""]
    lines += ["", (f"**Route-flip score** {c.route_flip:+.3f} (route balance {y} vs {t}: "
              f"{c.balance_clean:+.3f} clean → {c.balance_attacked:+.3f} attacked; 1 = "
              f"the dominant routes moved wholly from {y} to {t}). Route overlap "
              f"(Jaccard of the routes' concepts) {c.route_overlap:.3f}."),
              (f"Logits ({y}, {t}): clean ({c.logits_clean[0]:+.3g}, {c.logits_clean[1]:+.3g})"
              f" → attacked ({c.logits_attacked[0]:+.3g}, {c.logits_attacked[1]:+.3g})."), ""]
    tc = c.target_change
    lines += [(f"The logit of {t} changed by {tc['total']:+.3g}: {tc['concepts']:+.3g} through "
               f"the last layer's concepts, {tc['error']:+.3g} through its error node (what "
               f"the concepts do not explain), {tc['rest']:+.3g} IG gap and baseline."), ""]
    if d.energy_share is not None:
        lines += [(f"The changed concepts' iERFs put {d.energy_share:.3f} of their mass on "
                  f"the pixels holding half the perturbation's energy (chance "
                  f"{d.chance:.3f})" + ("." if d.energy_localised else
                                        "; the energy is spread evenly, so this says "
                                        "nothing.")), ""]
    lines += [f"## Changed concepts (values: Δ contribution to {y}, to {t})", ""]
    lines += _concepts_md(c.changed, (f"Δ {y}", f"Δ {t}"))
    lines += ["## Changed edges (clean vs attacked weight)", ""]
    lines += [f"- {_edge_md(e)}" for e in c.changed_edges] + [""]
    lines += [(f"## Routes to {t} on the attacked image (paths ①–③; [kind] of changed "
              "concepts)"), ""]
    lines += [_route_md(r, [c.kind_of(n) for n in r.nodes]) for r in c.routes_attacked]
    lines += ["", f"## Routes to {y} on the clean image", ""]
    lines += [_route_md(r) for r in c.routes_clean]
    lines += ["", ("Figures: `attack.png`, `routes-attacked.png`, `diff-graph.png`; data: "
              "`diagnosis.json`, `diff-graph.json`, `graph-clean.json`, "
              "`graph-attacked.json`."), ""]
    return lines

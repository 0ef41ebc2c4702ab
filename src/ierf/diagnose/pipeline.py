"""The two diagnoses end to end on one image (IERF Sec. VI-E, Fig. 12): per-image concept
graphs (:func:`ierf.graph.build_graph`), routes (:func:`ierf.graph.routes.trace_routes`),
node locations and iERFs (:func:`ierf.graph.routes.locate_nodes`, SRD), then
:mod:`ierf.diagnose.compare`. Tensors in, dataclasses out; no files.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ierf.concepts.basis import ConceptBasis
from ierf.diagnose.attack import AttackResult, pixel_forward, run_attack
from ierf.diagnose.compare import (
    AttackComparison,
    ClassComparison,
    compare_attack,
    compare_classes,
)
from ierf.diagnose.regions import (
    area_share,
    energy_region,
    mass_share,
    perturbation_energy,
    route_region_map,
    unit_mass,
)
from ierf.errors import IerfError
from ierf.graph import build_graph
from ierf.graph.concept_graph import OUTPUT, ConceptGraph
from ierf.graph.routes import NodeLocations, Route, locate_nodes, trace_routes
from ierf.models.model import Model


@dataclass
class ClassRoutes:
    """What :func:`class_routes` computes on one image (fields as in :class:`ClassDiagnosis`)."""

    graph: ConceptGraph
    routes: dict[int, list[Route]]
    locations: NodeLocations
    region_maps: torch.Tensor
    saliency: torch.Tensor
    comparison: ClassComparison | None


@dataclass
class ClassDiagnosis:
    """Why the model predicts ``classes[0]`` and not ``classes[1]`` on one image.

    Attributes
    ----------
    image : (3, H, W) the image in [0, 1].
    logits : (n_classes,) the model's logits.
    predicted : the top class; ``expected`` the class the user expected (or ``None``).
    classes : ``[predicted]`` or ``[predicted, other]``.
    graph : the per-image concept graph with those class nodes.
    routes : class → its ``k`` strongest routes.
    locations : the routes' nodes, the pruned graph's concepts and the class nodes located
        in the image.
    region_maps : (n, H, W) per class, its routes' node iERFs summed (unit mass;
        :func:`ierf.diagnose.regions.route_region_map`).
    saliency : (n, H, W) per class, its SRD map.
    comparison : the two-class comparison, ``None`` with one class.
    note : what the user should know (e.g. the prediction is the expected class).
    """

    image: torch.Tensor
    logits: torch.Tensor
    predicted: int
    expected: int | None
    classes: list[int]
    graph: ConceptGraph
    routes: dict[int, list[Route]]
    locations: NodeLocations
    region_maps: torch.Tensor
    saliency: torch.Tensor
    comparison: ClassComparison | None
    note: str = ""


@dataclass
class AttackDiagnosis:
    """What a targeted attack changed on one image.

    Attributes
    ----------
    attack : the attack (one image).
    clean_class, target : ``y`` and ``t``.
    graphs : the per-image graphs of the clean and the attacked image (``None`` when the
        attack failed: there is nothing to diff).
    comparison : the diff (``None`` when the attack failed).
    locations : on the attacked image: the changed (repurposed / new) concepts and the
        target's class node.
    changed_map : (H, W) unit-mass map of the changed concepts' iERFs on the attacked image.
    energy : (H, W) the perturbation's energy ``Σ_c δ²``.
    energy_share, chance : the changed concepts' iERF mass on the pixels holding half the
        perturbation's energy, and that region's area share.
    """

    attack: AttackResult
    clean_class: int
    target: int
    graphs: tuple[ConceptGraph, ConceptGraph] | None
    comparison: AttackComparison | None
    locations: NodeLocations | None
    changed_map: torch.Tensor | None
    energy: torch.Tensor
    energy_share: float | None
    chance: float | None

    @property
    def success(self) -> bool:
        return bool(self.attack.success[0])

    @property
    def energy_localised(self) -> bool:
        """Whether half the perturbation's energy sits on under 40 % of the pixels; an even
        perturbation (FGSM: ``±ε`` nearly everywhere) has no region to overlap with, and its
        ``energy_share`` says nothing."""
        return self.chance is not None and self.chance < 0.4


def _one_image(model: Model, x: torch.Tensor) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or len(x) != 1:
        raise IerfError(f"diagnose one image (1, 3, H, W), got "
                        f"{getattr(x, 'shape', type(x).__name__)}")
    with torch.no_grad():
        logits = model(x)[0]
    if not torch.isfinite(logits).all():
        raise IerfError(f"{model.name} cannot read this image: its logits are not finite")
    return logits


def _check_class(model: Model, c: int, what: str) -> int:
    if not 0 <= int(c) < model.num_classes:
        raise IerfError(f"unknown {what} class {c}: {model.name} has {model.num_classes} "
                        f"classes (0 … {model.num_classes - 1})")
    return int(c)


def diagnose_classes(model: Model, bases: Mapping[str, ConceptBasis], x: torch.Tensor, *,
                     expected: int | None = None, versus: int | None = None, k: int = 5,
                     top: int = 5, method: str = "ig", n_steps: int = 32,
                     image_id: str = "image", engine: Any = None) -> ClassDiagnosis:
    """Diagnose the prediction on image ``x`` (1, 3, H, W) against another class.

    The class compared with the prediction is ``versus`` when given, else ``expected``
    when it differs from the prediction, else the runner-up. When ``expected`` is the
    prediction and no ``versus`` is given, there is nothing wrong to explain: the result
    holds the one class's routes and says so in ``note``.
    """
    logits = _one_image(model, x)
    ranked = logits.argsort(descending=True).tolist()
    pred = ranked[0]
    if expected is not None:
        expected = _check_class(model, expected, "expected")
    if versus is not None:
        versus = _check_class(model, versus, "--versus")
    names = model.class_names
    note = ""
    if versus is not None and versus == pred:
        raise IerfError(f"--versus {names[versus]!r} is the predicted class itself; compare "
                        "it with another class")
    if versus is not None:
        other: int | None = versus
    elif expected is not None and expected == pred:
        other = None
        note = (f"the model predicts the expected class {names[pred]!r} "
                f"(p = {float(logits.softmax(0)[pred]):.3f}): nothing to diagnose; its "
                "routes are shown (give --versus CLASS to compare with another class)")
    elif expected is not None:
        other = expected
        note = (f"misclassified: expected {names[expected]!r} "
                f"(p = {float(logits.softmax(0)[expected]):.3f}), predicted {names[pred]!r}")
    else:
        other = ranked[1]
    classes = [pred] if other is None else [pred, other]
    r = class_routes(model, bases, x, classes, k=k, method=method, n_steps=n_steps,
                     image_id=image_id, engine=engine, compare_top=top)
    return ClassDiagnosis(model.denormalize(x)[0].detach().cpu(), logits.cpu(), pred, expected,
                          classes, r.graph, r.routes, r.locations, r.region_maps, r.saliency,
                          r.comparison, note)


def class_routes(model: Model, bases: Mapping[str, ConceptBasis], x: torch.Tensor,
                 classes: list[int], *, k: int = 5, method: str = "ig", n_steps: int = 32,
                 image_id: str = "image", engine: Any = None, compare_top: int | None = None
                 ) -> ClassRoutes:
    """One image's graph with class nodes ``classes``, each class's ``k`` strongest routes,
    their nodes located (SRD iERFs), each class's route region map and SRD map; with two
    classes and ``compare_top``, also their :class:`ClassComparison` (its listed concepts
    located too). The concepts of the pruned graph (top 5 per class, as in ``graph.png``)
    are located as well, so that every drawn node can show where it is active."""
    graph = build_graph(model, bases, x, classes, method, n_steps=n_steps,
                        image_ids=[image_id], progress=False)
    comparison = None
    if compare_top is not None and len(classes) == 2:
        comparison = compare_classes(graph, classes[0], classes[1], k=k, top=compare_top)
        routes = dict(zip(classes, comparison.routes))
    else:
        routes = {c: trace_routes(graph, c, k) for c in classes}
    nodes = [f"{OUTPUT}:{c}" for c in classes] + [n for rs in routes.values() for r in rs
                                                   for n in r.nodes[:-1]]
    nodes += [e.node for e in (comparison.shared + comparison.favour_a + comparison.favour_b
                               if comparison else [])]
    shown = graph.prune(top_k_per_class=5, top_shared=3, top_parents=3)   # as graph.png
    nodes += [i for layer in shown.nodes for i in shown.node_ids(layer)[:-1]]
    where = locate_nodes(model, x, bases, list(dict.fromkeys(nodes)), engine=engine)
    regions = torch.stack([route_region_map(routes[c], where) if routes[c] else
                           torch.zeros(x.shape[-2:]) for c in classes])
    saliency = torch.stack([where[f"{OUTPUT}:{c}"][1] for c in classes])
    return ClassRoutes(graph, routes, where, regions, saliency, comparison)


def diagnose_attack(model: Model, bases: Mapping[str, ConceptBasis], x: torch.Tensor,
                    target: int, attack: str = "fgsm", eps: float = 8 / 255, *, k: int = 5,
                    top: int = 3, method: str = "ig", n_steps: int = 32,
                    image_id: str = "image", mask: torch.Tensor | None = None,
                    engine: Any = None, **attack_options: Any) -> AttackDiagnosis:
    """Attack image ``x`` (1, 3, H, W, normalised) towards ``target`` and diff the graphs.

    The attack runs in pixel space (``eps`` in pixel units, :mod:`ierf.diagnose.attack`).
    When it misses the target, the result has the attack and no diff.
    """
    logits = _one_image(model, x)
    target = _check_class(model, target, "attack target")
    y = int(logits.argmax())
    if target == y:
        raise IerfError(f"the model already predicts {model.class_names[y]!r}; give another "
                        "--attack-target")
    pixels = model.denormalize(x).detach()
    result = run_attack(attack, pixel_forward(model), pixels, target, eps,
                        **({"mask": mask} if mask is not None else {}), **attack_options)
    energy = perturbation_energy(result.delta)[0].cpu()
    if not bool(result.success[0]):
        return AttackDiagnosis(result, y, target, None, None, None, None, energy, None, None)
    x_adv = model.normalize(result.adversarial)
    both = build_graph(model, bases, torch.cat([x, x_adv]), [y, target], method,
                       n_steps=n_steps, per_image=True, progress=False,
                       image_ids=[image_id, f"{image_id}-attacked"])
    comparison = compare_attack(both[0], both[1], y, target, k=k, top=top)
    changed = [c.node for c in comparison.changed if c.kind in ("repurposed", "new")]
    nodes = [f"{OUTPUT}:{target}", *changed,
             *(n for r in comparison.routes_attacked for n in r.nodes[:-1])]
    where = locate_nodes(model, x_adv, bases, list(dict.fromkeys(nodes)), engine=engine)
    share = chance = changed_map = None
    if changed:
        changed_map = unit_mass(torch.stack([where[n][1] for n in changed])).sum(0)
        changed_map = changed_map / changed_map.sum().clamp_min(1e-30)
        region = energy_region(energy, 0.5)
        share, chance = float(mass_share(changed_map, region)), float(area_share(region))
    return AttackDiagnosis(result, y, target, (both[0], both[1]), comparison, where,
                           changed_map, energy, share, chance)

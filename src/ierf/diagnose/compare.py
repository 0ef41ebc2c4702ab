"""Reading two concept routes against each other (IERF Sec. VI-E, Fig. 12; FaCT Sec. 6, Fig. 8).

Everything here takes per-image :class:`~ierf.graph.concept_graph.ConceptGraph`\\ s (from
:func:`ierf.graph.build_graph`) and returns plain results; no model is run.

**Two classes on one image** (Sec. VI-E1, "tiger cat → boxer"): :func:`compare_classes`.
A concept's *class contribution* is its node importance ``Σ_i AT(u_iq, logit_c)``
(Sec. VI-A2, logit units; for the last concept layer these are its class edges). Per layer:

- **shared** concepts contribute positively to both classes, ranked by
  ``min(I_a, I_b)`` (the "top shared" rule of the paper's figures);
- **separating** concepts favour one class, ranked by ``I_a − I_b`` (or ``I_b − I_a``),
  among those that contribute positively to the class they favour.

The **class flow** of a node carries the class logits back through the graph: at the last
concept layer ``L`` it is the class edge ``F_L[q, c] = W_L[q, c]``; further back
``F_i = A_i F_{i+1}``, with ``A_i`` the incoming fractions of the edges ``i → i+1``
(:func:`ierf.graph.routes.edge_fractions`, concept rows). The **class contribution of an
edge** ``q → t`` (layers ``i → i+1``) is ``A_i[q, t] · F_{i+1}[t, c]`` — the logit of ``c``
that ``t`` passes on, in the share that comes from ``q`` — and for a class edge ``q → c``
it is ``W_L[q, c]``. The **deciding edge** is the edge with the largest difference
``contribution_a − contribution_b`` (the paper: "the only distinction being the edge
strength of 'striped feline'"); a parent's share is at most its child's, so it is in the
last pair unless an earlier edge splits the classes more. The margin
``logit_a − logit_b`` splits exactly (IG completeness, Eqs. 15–16) into the class edges'
differences, the error node's, the IG gap and the baseline ``logit(x̂_0)``.

**Clean against attacked** (Sec. VI-E2, "border collie → sea slug"): :func:`compare_attack`
diffs two graphs on the same nodes and classes ``(y, t)`` = (clean prediction, target):

- **changed concepts**: per layer, the largest increases of the contribution to ``t``
  (``ΔI_t``), each **repurposed** (already active on the clean image: mean coefficient
  ``a_clean > ρ · a_attacked``, ρ = ``new_ratio``) or **new** (``a_clean ≤ ρ a_attacked``:
  the attack put it there), and the largest drops of the contribution to ``y``
  (**suppressed**);
- **changed edges**: per layer pair, the largest ``|W_attacked − W_clean|``;
- the **diff graph**: a ConceptGraph whose importances, activations and edges are the
  differences attacked − clean (draw it and export it like any graph);
- the **route-flip score**. For a graph ``G`` and class ``c`` let ``M_c(G)`` be the summed
  positive logit-unit contribution of the ``k`` strongest routes to ``c``
  (:func:`route_mass`: a route's strength times the class node's total incoming ``|W|``,
  i.e. ``Π_{i<L} A_i[q_i, q_{i+1}] · W_L[q_L, c]``), and ``β(G) = (M_y − M_t) / (M_y + M_t)``
  its **route balance** in ``[−1, 1]`` (``+1``: only ``y``'s routes carry evidence). Then

      ``route_flip = (β(G_clean) − β(G_attacked)) / 2  ∈ [−1, 1]``:

  ``1`` when the dominant routes went wholly from ``y`` to ``t``, ``0`` when the balance
  did not move, negative when the attack strengthened ``y``'s routes. ``route_overlap``
  is the Jaccard index of the concept nodes of ``y``'s clean routes and ``t``'s attacked
  routes (high: the attack rode the clean routes; low: new routes).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch

from ierf.errors import IerfError
from ierf.graph.concept_graph import ConceptGraph
from ierf.graph.routes import Route, edge_fractions, trace_routes

KINDS = ("shared", "favours-a", "favours-b", "repurposed", "new", "suppressed")


@dataclass(frozen=True)
class ConceptEntry:
    """One concept of a diagnosis.

    Attributes
    ----------
    node : ``"{layer}:{k}"``; ``label`` its label.
    kind : one of :data:`KINDS`.
    values : two class contributions — ``(I_a, I_b)`` for two classes, or the changes
        ``(ΔI_y, ΔI_t)`` for an attack (logit units).
    score : the value it was ranked by (see the module docstring).
    activation : mean Lasso coefficient on the image(s) compared (clean, attacked for an
        attack; the one image otherwise, twice).
    """

    node: str
    label: str
    kind: str
    values: tuple[float, float]
    score: float
    activation: tuple[float, float]

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


@dataclass(frozen=True)
class EdgeEntry:
    """One edge of a diagnosis: ``values`` are its contributions to classes ``(a, b)``, or its
    weights ``(clean, attacked)``; ``score`` their difference (``a − b``, or
    ``attacked − clean``)."""

    source: str
    target: str
    values: tuple[float, float]
    score: float

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


@dataclass
class ClassComparison:
    """Two classes' routes on one image (Sec. VI-E1).

    Attributes
    ----------
    classes, class_names : ``(a, b)``: ``a`` the one explained (the prediction), ``b`` the
        one it is compared with (the expected or a competing class).
    logits, probs : of ``a`` and ``b``.
    shared, favour_a, favour_b : concepts (see the module docstring), per layer in chain
        order, strongest first.
    deciding_edge : the edge with the largest ``contribution_a − contribution_b``.
    deciding_edges : the same per layer pair (input side first).
    against : the edge with the most negative difference (the strongest evidence for ``b``).
    margin : ``logit_a − logit_b`` split into ``concepts`` (Σ of the class edges'
        differences), ``error`` (the error node's), ``ig_gap`` and ``baseline``;
        ``total`` = concepts + error − ig_gap + baseline.
    routes : the ``k`` strongest routes to ``a`` and to ``b``.
    """

    classes: tuple[int, int]
    class_names: tuple[str, str]
    logits: tuple[float, float]
    probs: tuple[float, float]
    shared: list[ConceptEntry]
    favour_a: list[ConceptEntry]
    favour_b: list[ConceptEntry]
    deciding_edge: EdgeEntry
    deciding_edges: list[EdgeEntry]
    against: EdgeEntry
    margin: dict[str, float]
    routes: tuple[list[Route], list[Route]]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict."""
        return {"classes": list(self.classes), "class_names": list(self.class_names),
                "logits": list(self.logits), "probs": list(self.probs),
                "shared": [c.to_dict() for c in self.shared],
                "favour_a": [c.to_dict() for c in self.favour_a],
                "favour_b": [c.to_dict() for c in self.favour_b],
                "deciding_edge": self.deciding_edge.to_dict(),
                "deciding_edges": [e.to_dict() for e in self.deciding_edges],
                "against": self.against.to_dict(), "margin": dict(self.margin),
                "routes": [[r.to_dict() for r in rs] for rs in self.routes]}


@dataclass
class AttackComparison:
    """A clean and an attacked image's graphs diffed (Sec. VI-E2).

    Attributes
    ----------
    classes, class_names : ``(y, t)``: the clean prediction and the attack's target.
    logits_clean, logits_attacked : of ``y`` and ``t``.
    changed : changed concepts (repurposed, new, suppressed), per layer in chain order.
    changed_edges : per layer pair, the largest ``|ΔW|``, strongest first.
    route_flip, balance_clean, balance_attacked, route_overlap : module docstring.
    routes_clean : the ``k`` strongest routes to ``y`` on the clean image.
    routes_attacked : the ``k`` strongest routes to ``t`` on the attacked image (the
        paper's paths ①–③).
    diff : the diff graph (attacked − clean).
    target_change : how the target's logit rose: ``total`` (its change), ``concepts``
        (Σ of the change of the last layer's concept → ``t`` edges), ``error`` (the change
        of the error node's edge: what the concepts do not explain), ``rest`` (IG gap and
        baseline).
    """

    classes: tuple[int, int]
    class_names: tuple[str, str]
    logits_clean: tuple[float, float]
    logits_attacked: tuple[float, float]
    changed: list[ConceptEntry]
    changed_edges: list[EdgeEntry]
    route_flip: float
    balance_clean: float
    balance_attacked: float
    route_overlap: float
    routes_clean: list[Route]
    routes_attacked: list[Route]
    diff: ConceptGraph
    target_change: dict[str, float]

    def kind_of(self, node: str) -> str:
        """The kind of a changed concept, ``""`` for one that did not change much."""
        return next((c.kind for c in self.changed if c.node == node), "")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (the diff graph is exported on its own)."""
        return {"classes": list(self.classes), "class_names": list(self.class_names),
                "logits_clean": list(self.logits_clean),
                "logits_attacked": list(self.logits_attacked),
                "changed": [c.to_dict() for c in self.changed],
                "changed_edges": [e.to_dict() for e in self.changed_edges],
                "route_flip": self.route_flip, "balance_clean": self.balance_clean,
                "balance_attacked": self.balance_attacked,
                "route_overlap": self.route_overlap, "target_change": dict(self.target_change),
                "routes_clean": [r.to_dict() for r in self.routes_clean],
                "routes_attacked": [{**r.to_dict(), "kinds": [self.kind_of(n) for n in r.nodes]}
                                    for r in self.routes_attacked]}


# -- flows and edge contributions ---------------------------------------------------------------

def class_flows(graph: ConceptGraph, columns: Sequence[int]) -> list[torch.Tensor]:
    """Per concept layer, (K_l, n) the class flow ``F_l`` of its concepts for the class
    columns ``columns`` (module docstring): ``F_L = W_L[:, c]``, ``F_i = A_i F_{i+1}``."""
    cols = list(columns)
    flows = [graph.edges[-1].weights[:-1, cols].float()]
    for e in reversed(graph.edges[:-1]):
        flows.insert(0, edge_fractions(e.weights)[:-1] @ flows[0])
    return flows


def edge_contributions(graph: ConceptGraph, columns: Sequence[int]) -> list[torch.Tensor]:
    """Per layer pair, (K_a, T, n) the class contribution of every concept edge ``q → t``;
    for the class pair ``T = 1`` and the value is the class edge ``W_L[q, c]``."""
    flows = class_flows(graph, columns)
    out = [edge_fractions(e.weights)[:-1, :, None] * f[None]
           for e, f in zip(graph.edges[:-1], flows[1:])]
    out.append(flows[-1][:, None, :])
    return out


# -- two classes ---------------------------------------------------------------------------------

def compare_classes(graph: ConceptGraph, a: int | str, b: int | str, *, k: int = 5,
                    top: int = 5) -> ClassComparison:
    """Compare the routes of classes ``a`` and ``b`` in one image's graph (module docstring).

    Parameters
    ----------
    graph : a per-image graph with class nodes for ``a`` and ``b`` (more are allowed).
    a, b : the explained class (usually the prediction) and the one compared with it.
    k : routes traced per class.
    top : concepts listed per layer and kind.
    """
    ca, cb = graph.class_column(a), graph.class_column(b)
    if ca == cb:
        raise IerfError("compare two different classes; for one class trace its routes "
                        "(ierf graph explain)")
    _check_top(top)
    cols = [ca, cb]
    shared, fa, fb = [], [], []
    for layer, nodes in graph.nodes.items():
        imp = nodes.importance[:, cols].float()                               # (K, 2)
        ids = graph.node_ids(layer)
        act = nodes.activation.float()
        lo = imp.min(1).values
        diff = imp[:, 0] - imp[:, 1]
        shared += _entries(ids, nodes.labels, imp, act, act, lo, lo > 0, top, "shared")
        fa += _entries(ids, nodes.labels, imp, act, act, diff, (diff > 0) & (imp[:, 0] > 0),
                       top, "favours-a")
        fb += _entries(ids, nodes.labels, imp, act, act, -diff, (diff < 0) & (imp[:, 1] > 0),
                       top, "favours-b")
    contrib = edge_contributions(graph, cols)
    per_pair, worst = [], []
    for e, c in zip(graph.edges, contrib):
        d = c[..., 0] - c[..., 1]                                             # (K_a, T)
        sources, targets = graph.node_ids(e.source), graph.node_ids(e.target)
        for pick, into in ((d.argmax(), per_pair), (d.argmin(), worst)):
            q, t = divmod(int(pick), d.shape[1])
            tgt = (f"output:{int(graph.classes[ca if float(d[q, t]) >= 0 else cb])}"
                   if e.target == "output" else targets[t])
            into.append(EdgeEntry(sources[q], tgt, (float(c[q, t, 0]), float(c[q, t, 1])),
                                  float(d[q, t])))
    last = graph.edges[-1]
    w = last.weights[:, cols].float()
    gap = (0.0 if last.gap is None else float(last.gap[ca] - last.gap[cb]))
    margin = float(graph.logits[ca] - graph.logits[cb])
    concepts, error = float(w[:-1, 0].sum() - w[:-1, 1].sum()), float(w[-1, 0] - w[-1, 1])
    routes = (trace_routes(graph, int(graph.classes[ca]), k),
              trace_routes(graph, int(graph.classes[cb]), k))
    return ClassComparison(
        (int(graph.classes[ca]), int(graph.classes[cb])),
        (graph.class_names[ca], graph.class_names[cb]),
        (float(graph.logits[ca]), float(graph.logits[cb])),
        (float(graph.probs[ca]), float(graph.probs[cb])),
        shared, fa, fb, max(per_pair, key=lambda x: x.score), per_pair,
        min(worst, key=lambda x: x.score),
        {"total": margin, "concepts": concepts, "error": error, "ig_gap": gap,
         "baseline": margin - concepts - error + gap}, routes)


def _entries(ids: list[str], labels: list[str], values: torch.Tensor, act_a: torch.Tensor,
             act_b: torch.Tensor, score: torch.Tensor, ok: torch.Tensor, top: int,
             kind: str) -> list[ConceptEntry]:
    """The ``top`` rows with the highest ``score`` among those where ``ok``."""
    s = torch.where(ok, score, float("-inf"))
    n = min(top, int(ok.sum()))
    picked = s.topk(n).indices.tolist() if n else []
    return [ConceptEntry(ids[q], labels[q], kind, (float(values[q, 0]), float(values[q, 1])),
                         float(score[q]), (float(act_a[q]), float(act_b[q]))) for q in picked]


def _check_top(top: int) -> None:
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise IerfError(f"top must be a positive count, got {top!r}")


# -- clean against attacked ----------------------------------------------------------------------

def route_mass(graph: ConceptGraph, c: int | str, k: int = 5) -> float:
    """``M_c``: summed positive logit-unit contribution of the ``k`` strongest routes to ``c``
    (a route's strength × the class node's total incoming ``|W|``)."""
    col = graph.class_column(c)
    scale = float(graph.edges[-1].weights[:, col].abs().sum())
    routes = trace_routes(graph, c, k)
    return sum(max(r.strength, 0.0) for r in routes) * scale


def route_balance(graph: ConceptGraph, y: int | str, t: int | str, k: int = 5) -> float:
    """``β = (M_y − M_t) / (M_y + M_t)`` in ``[−1, 1]`` (0 when neither has a positive route)."""
    my, mt = route_mass(graph, y, k), route_mass(graph, t, k)
    return (my - mt) / (my + mt) if my + mt > 0 else 0.0


def compare_attack(clean: ConceptGraph, attacked: ConceptGraph, y: int, t: int, *,
                   k: int = 5, top: int = 3, new_ratio: float = 0.25) -> AttackComparison:
    """Diff the per-image graphs of a clean and an attacked image (module docstring).

    Parameters
    ----------
    clean, attacked : per-image graphs with the same chain, nodes and class nodes.
    y, t : the clean prediction and the attack's target (class indices).
    k : routes per class for the route-flip score and the paths shown.
    top : concepts per layer and kind, edges per layer pair.
    new_ratio : ``ρ``: a concept is *new* when its clean mean coefficient is at most ``ρ``
        times its attacked one, *repurposed* otherwise.
    """
    _check_top(top)
    same = (clean.layers == attacked.layers and torch.equal(clean.classes, attacked.classes)
            and all(torch.equal(clean.nodes[l].index, attacked.nodes[l].index)
                    for l in clean.nodes))
    if not same:
        raise IerfError("the clean and attacked graphs differ in layers, classes or nodes; "
                        "build both with the same bases and classes")
    cy, ct = clean.class_column(y), clean.class_column(t)
    changed = []
    for layer, n0 in clean.nodes.items():
        n1 = attacked.nodes[layer]
        d = (n1.importance - n0.importance)[:, [cy, ct]].float()               # (K, 2)
        ids = clean.node_ids(layer)
        a0, a1 = n0.activation.float(), n1.activation.float()
        up = _entries(ids, n0.labels, d, a0, a1, d[:, 1], d[:, 1] > 0, top, "new")
        changed += [replace(c, kind="new" if c.activation[0] <= new_ratio * c.activation[1]
                            else "repurposed") for c in up]
        seen = {c.node for c in up}
        down = _entries(ids, n0.labels, d, a0, a1, -d[:, 0], d[:, 0] < 0, top + len(up),
                        "suppressed")
        changed += [c for c in down if c.node not in seen][:top]
    edges = []
    for e0, e1 in zip(clean.edges, attacked.edges):
        delta = (e1.weights - e0.weights).float()
        sources, targets = clean.node_ids(e0.source), clean.node_ids(e0.target)
        n = min(top, int((delta != 0).sum()))
        for i in delta.abs().flatten().topk(n).indices.tolist():
            q, c = divmod(i, delta.shape[1])
            edges.append(EdgeEntry(sources[q], targets[c], (float(e0.weights[q, c]),
                                   float(e1.weights[q, c])), float(delta[q, c])))
    dw = (attacked.edges[-1].weights - clean.edges[-1].weights)[:, ct].float()
    total = float(attacked.logits[ct] - clean.logits[ct])
    change = {"total": total, "concepts": float(dw[:-1].sum()), "error": float(dw[-1]),
              "rest": total - float(dw.sum())}
    b0, b1 = route_balance(clean, y, t, k), route_balance(attacked, y, t, k)
    routes_clean, routes_attacked = trace_routes(clean, y, k), trace_routes(attacked, t, k)
    nodes0 = {n for r in routes_clean for n in r.nodes[:-1]}
    nodes1 = {n for r in routes_attacked for n in r.nodes[:-1]}
    union = nodes0 | nodes1
    return AttackComparison(
        (int(y), int(t)), (clean.class_names[cy], clean.class_names[ct]),
        (float(clean.logits[cy]), float(clean.logits[ct])),
        (float(attacked.logits[cy]), float(attacked.logits[ct])), changed, edges,
        (b0 - b1) / 2, b0, b1, len(nodes0 & nodes1) / len(union) if union else 0.0,
        routes_clean, routes_attacked, diff_graph(clean, attacked), change)


def diff_graph(clean: ConceptGraph, attacked: ConceptGraph) -> ConceptGraph:
    """The graph of differences attacked − clean: node importances, activations, frequencies,
    error statistics, edge weights and logits (probabilities: the attacked image's)."""
    nodes = {}
    for layer, n0 in clean.nodes.items():
        n1 = attacked.nodes[layer]
        nodes[layer] = replace(n1, importance=n1.importance - n0.importance,
                               activation=n1.activation - n0.activation,
                               frequency=n1.frequency - n0.frequency,
                               error_share=n1.error_share - n0.error_share,
                               error_importance=n1.error_importance - n0.error_importance)
    edges = [replace(e1, weights=e1.weights - e0.weights, gap=None)
             for e0, e1 in zip(clean.edges, attacked.edges)]
    ids = [*clean.metadata.get("image_ids", []), *attacked.metadata.get("image_ids", [])]
    meta = {**attacked.metadata, "diff": "attacked - clean", "image_ids": ids}
    return replace(attacked, nodes=nodes, edges=edges, logits=attacked.logits - clean.logits,
                   metadata=meta)

"""The Interlayer Concept Graph (IERF Sec. VI): ICAT edges and their validation.

- :func:`icat` — edge weights ``ICAT(v_q^a → v_t^b)`` (Eqs. 13–16) for a layer pair, any
  attribution method, batched over images, α-steps and targets; class edges and node
  importance (:func:`concept_importance`, Sec. VI-A2 / GIG Eq. 7) with ``b = "output"``.
- :func:`interlayer_curves` — interlayer C-insertion / C-deletion (Sec. VI-C, Fig. 11).
- :func:`build_graph` → :class:`ConceptGraph` (nodes, error nodes, class nodes, ICAT edges;
  pruning and [0, 1] normalisation, App. VII-H) → :func:`to_json` / :func:`from_json`
  (a superset of the Neuronpedia / circuit-tracer attribution-graph schema).
- :func:`build_dataset_graph` — the same over a whole image set: batched, resumable,
  sharded over ``torchrun`` ranks; :func:`merge` and :func:`read_graph`.
- :func:`trace_routes` and :func:`locate_nodes` — one image's strongest concept routes to a
  class and where their nodes sit in it (Sec. VI-D).
- :func:`supernodes`, :func:`collapse`, :func:`annotate` — groups of concepts from the
  bisecting k-means split tree, merged into one node each (ICAT is additive over concepts).
- :func:`ground_truth_report` — the graph checked against the synthetic benchmark's parts:
  class parents (:func:`class_parent_precision`) and part ← attribute edges
  (:func:`part_edge_agreement`), concepts labelled by their iERFs (:func:`concept_labels`).
"""

from ierf.graph.build import build_graph
from ierf.graph.concept_graph import ConceptGraph, Edges, LayerNodes, merge
from ierf.graph.dataset import build_dataset_graph, read_graph
from ierf.graph.export import from_json, to_json
from ierf.graph.ground_truth import (
    class_parent_precision,
    concept_labels,
    ground_truth_report,
    part_edge_agreement,
)
from ierf.graph.hierarchy import annotate, collapse, supernodes
from ierf.graph.icat import METHODS, alignment_score, concept_importance, icat
from ierf.graph.pair import LayerPair, prepare
from ierf.graph.routes import NodeLocations, Route, locate_nodes, trace_routes
from ierf.graph.validation import interlayer_curves

__all__ = ["METHODS", "ConceptGraph", "Edges", "LayerNodes", "LayerPair", "NodeLocations",
           "Route", "alignment_score", "annotate", "build_dataset_graph", "build_graph",
           "class_parent_precision", "collapse", "concept_importance", "concept_labels", "from_json", "ground_truth_report", "icat", "interlayer_curves",
           "locate_nodes", "merge", "part_edge_agreement", "prepare", "read_graph", "supernodes", "to_json", "trace_routes"]

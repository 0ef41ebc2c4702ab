"""The Interlayer Concept Graph (IERF Sec. VI): ICAT edges and their validation.

- :func:`icat` — edge weights ``ICAT(v_q^a → v_t^b)`` (Eqs. 13–16) for a layer pair, any
  attribution method, batched over images, α-steps and targets; class edges and node
  importance (:func:`concept_importance`, Sec. VI-A2 / GIG Eq. 7) with ``b = "output"``.
- :func:`interlayer_curves` — interlayer C-insertion / C-deletion (Sec. VI-C, Fig. 11).
- :func:`build_graph` → :class:`ConceptGraph` (nodes, error nodes, class nodes, ICAT edges;
  pruning and [0, 1] normalisation, App. VII-H) → :func:`to_json` / :func:`from_json`
  (a superset of the Neuronpedia / circuit-tracer attribution-graph schema).
"""

from ierf.graph.build import build_graph
from ierf.graph.concept_graph import ConceptGraph, Edges, LayerNodes
from ierf.graph.export import from_json, to_json
from ierf.graph.icat import METHODS, alignment_score, concept_importance, icat
from ierf.graph.pair import LayerPair, prepare
from ierf.graph.validation import interlayer_curves

__all__ = ["METHODS", "ConceptGraph", "Edges", "LayerNodes", "LayerPair", "alignment_score",
           "build_graph", "concept_importance", "from_json", "icat", "interlayer_curves",
           "prepare", "to_json"]

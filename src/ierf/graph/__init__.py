"""The Interlayer Concept Graph (IERF Sec. VI): ICAT edges and their validation.

- :func:`icat` — edge weights ``ICAT(v_q^a → v_t^b)`` (Eqs. 13–16) for a layer pair, any
  attribution method, batched over images, α-steps and targets; class edges and node
  importance (:func:`concept_importance`, Sec. VI-A2 / GIG Eq. 7) with ``b = "output"``.
- :func:`interlayer_curves` — interlayer C-insertion / C-deletion (Sec. VI-C, Fig. 11).
"""

from ierf.graph.icat import METHODS, alignment_score, concept_importance, icat
from ierf.graph.pair import LayerPair, prepare
from ierf.graph.validation import interlayer_curves

__all__ = ["METHODS", "LayerPair", "alignment_score", "concept_importance", "icat",
           "interlayer_curves", "prepare"]

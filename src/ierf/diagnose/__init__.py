"""Diagnosis of misclassified and attacked images with per-image concept graphs
(IERF Sec. VI-E, Fig. 12).

- :mod:`~ierf.diagnose.attack`: targeted FGSM and PGD (L∞, pixel units);
- :mod:`~ierf.diagnose.compare`: two classes' routes on one image (shared / separating
  concepts, the deciding edge) and clean against attacked graphs (changed, repurposed and
  new concepts, changed edges, the route-flip score, the diff graph);
- :mod:`~ierf.diagnose.regions`: route region maps, mass shares against chance, the
  perturbation's energy;
- :mod:`~ierf.diagnose.pipeline`: both diagnoses end to end on one image;
- :mod:`~ierf.diagnose.report`: PNG panels, Markdown and JSON;
- :mod:`~ierf.diagnose.ground_truth`: composite benchmark images with known answers.
"""

from ierf.diagnose.attack import ATTACKS, AttackResult, fgsm, pgd, pixel_forward, run_attack
from ierf.diagnose.compare import (
    AttackComparison,
    ClassComparison,
    ConceptEntry,
    EdgeEntry,
    compare_attack,
    compare_classes,
    diff_graph,
    route_balance,
)
from ierf.diagnose.pipeline import (
    AttackDiagnosis,
    ClassDiagnosis,
    diagnose_attack,
    diagnose_classes,
)

__all__ = ["ATTACKS", "AttackComparison", "AttackDiagnosis", "AttackResult", "ClassComparison",
           "ClassDiagnosis", "ConceptEntry", "EdgeEntry", "compare_attack", "compare_classes",
           "diagnose_attack", "diagnose_classes", "diff_graph", "fgsm", "pgd", "pixel_forward",
           "route_balance", "run_attack"]

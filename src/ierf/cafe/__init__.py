"""CAFE — Concept-Anchored Feature Explanation (IERF Sec. V): SAE latents grounded in their iERFs.

- :mod:`~ierf.cafe.training`: SAEs per layer and token kind (patch, CLS, all), trained on
  tokens streamed over an image set, checkpointed and resumable (Eqs. 8–9), or mini-batch
  spherical k-means from the same stream (:mod:`~ierf.cafe.learners`);
- :mod:`~ierf.cafe.latents`: latent activations, firing tokens, (latent, image) pairs and the
  one-latent-per-image :class:`PairTarget`;
- :mod:`~ierf.cafe.attribution`: latent iERFs (Eq. 10) by AttnLRP, SRD, IG, gradient,
  gradient × input, batched over pairs;
- :mod:`~ierf.cafe.insertion`: the insertion test (Sec. V-C1, Fig. 7), on a blank of
  :mod:`~ierf.cafe.blanks` (also the reference input of IG and KernelSHAP);
- :mod:`~ierf.cafe.nonlocality`: how far the evidence lies from the firing token (Fig. 8);
- :mod:`~ierf.cafe.ground_truth`: scoring on the synthetic benchmark's known parts;
- :mod:`~ierf.cafe.scan`, :mod:`~ierf.cafe.ground`, :mod:`~ierf.cafe.panels`: top images
  per latent over a stream, grounding, and Fig. 8-style panels;
- :mod:`~ierf.cafe.bench`: the benchmark behind ``ierf bench cafe``.
"""

from __future__ import annotations

from ierf.cafe.attribution import METHODS, latent_ierfs
from ierf.cafe.blanks import BLANKS, blank_canvas
from ierf.cafe.ground import Grounding, ground
from ierf.cafe.insertion import auc, insertion_curves, patch_scores
from ierf.cafe.latents import (
    LatentPairs,
    PairTarget,
    latent_activations,
    select_pairs,
    token_positions,
)
from ierf.cafe.nonlocality import nonlocality
from ierf.cafe.scan import LatentScan, scan
from ierf.cafe.streaming import SourceImages, TensorImages, TokenBuffer
from ierf.cafe.training import SAETrainer, SAETraining

__all__ = ["BLANKS", "METHODS", "Grounding", "LatentPairs", "LatentScan", "PairTarget",
           "SAETrainer", "SAETraining", "SourceImages", "TensorImages", "TokenBuffer", "auc",
           "blank_canvas", "ground", "insertion_curves", "latent_activations", "latent_ierfs",
           "nonlocality", "patch_scores", "scan", "select_pairs", "token_positions"]

"""Classical dictionary learning (IERF Table III "Dictionary Learning"), via scikit-learn.

Fits ``min_{U,V} ½‖X − U Vᵀ‖²_F + λ‖U‖₁,₁`` with unit-norm atoms (Mairal et al. 2009) using
:class:`sklearn.decomposition.DictionaryLearning` or its minibatch variant, on the CPU in
float64. Coefficients of new PFVs come from :func:`ierf.concepts.decompose` (Lasso, Eq. 12).
Throughout ``alpha`` is in scikit-learn's Lasso convention: ``λ = α C``.
"""

from __future__ import annotations

from typing import Any, Literal

import torch

from ierf.concepts.decompose import decompose, reconstruct
from ierf.concepts.extractors.base import (
    ConceptExtractor,
    FittedDictionary,
    check_pfvs,
    default_n_concepts,
)


class DictionaryLearner(FittedDictionary, ConceptExtractor):
    """Sparse dictionary learning; tensors in, tensors out.

    Parameters
    ----------
    n_concepts : number of atoms ``K``; ``None`` → ``8 C``.
    alpha : sparsity weight, Lasso convention (scikit-learn receives ``alpha · C``); used both
        for fitting and for :meth:`encode`.
    minibatch : use :class:`~sklearn.decomposition.MiniBatchDictionaryLearning` (large ``N``)
        instead of :class:`~sklearn.decomposition.DictionaryLearning`.
    fit_algorithm : ``"lars"`` (the papers' choice, GIG Sec. 4.2) or ``"cd"``.
    max_iter : epochs (minibatch) or iterations (batch) of scikit-learn's solver.
    batch_size : minibatch size (minibatch only).
    positive : non-negative codes, in fitting and encoding.
    seed : ``random_state`` of scikit-learn.
    lasso_max_iter, lasso_tol : settings of :func:`~ierf.concepts.decompose` in :meth:`encode`.
    """

    def __init__(self, n_concepts: int | None = None, *, alpha: float = 0.01,
                 minibatch: bool = False, fit_algorithm: Literal["lars", "cd"] = "lars",
                 max_iter: int = 100, batch_size: int = 256, positive: bool = False,
                 seed: int = 0, lasso_max_iter: int = 1000, lasso_tol: float = 1e-4) -> None:
        self.n_concepts, self.alpha, self.minibatch = n_concepts, alpha, minibatch
        self.fit_algorithm, self.max_iter, self.batch_size = fit_algorithm, max_iter, batch_size
        self.positive, self.seed = positive, seed
        self.lasso_max_iter, self.lasso_tol = lasso_max_iter, lasso_tol
        self.dictionary_: torch.Tensor | None = None

    def fit(self, X: torch.Tensor) -> DictionaryLearner:
        """Learn ``V`` from PFVs ``X (N, C)``; the result is cast back to ``X``'s dtype/device."""
        from sklearn.decomposition import DictionaryLearning, MiniBatchDictionaryLearning

        X = check_pfvs(X)
        common = {"n_components": default_n_concepts(X.shape[1], self.n_concepts),
                  "alpha": self.alpha * X.shape[1], "fit_algorithm": self.fit_algorithm,
                  "max_iter": self.max_iter, "positive_code": self.positive,
                  "random_state": self.seed}
        learner = (MiniBatchDictionaryLearning(batch_size=self.batch_size, **common)
                   if self.minibatch else DictionaryLearning(**common))
        learner.fit(X.detach().cpu().double().numpy())
        self.dictionary_ = torch.from_numpy(learner.components_.T.copy()).to(X)
        return self

    def encode(self, X: torch.Tensor) -> torch.Tensor:
        V = self.get_dictionary().to(X)
        return decompose(check_pfvs(X, V.shape[0]), V, self.alpha, max_iter=self.lasso_max_iter,
                         tol=self.lasso_tol, positive=self.positive)

    def decode(self, U: torch.Tensor) -> torch.Tensor:
        return reconstruct(U, self.get_dictionary().to(U))

    def config(self) -> dict[str, Any]:
        return {"n_concepts": self.n_concepts, "alpha": self.alpha, "minibatch": self.minibatch,
                "fit_algorithm": self.fit_algorithm, "max_iter": self.max_iter,
                "batch_size": self.batch_size, "positive": self.positive, "seed": self.seed,
                "lasso_max_iter": self.lasso_max_iter, "lasso_tol": self.lasso_tol}

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {"dictionary": self.get_dictionary()}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.dictionary_ = tensors["dictionary"]

"""Dictionary learning concepts (IERF Table III) wrapping scikit-learn."""

from __future__ import annotations

import pytest
import torch

from ierf.concepts import DictionaryLearner, l0_ratio, relative_l2, sparse_pfvs

torch.set_num_threads(1)

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


def test_recovers_and_reconstructs_sparse_signal() -> None:
    X, D = sparse_pfvs(300, 20, 10, 2, seed=0)
    learner = DictionaryLearner(10, alpha=3e-3, fit_algorithm="cd", max_iter=50).fit(X)
    V = learner.get_dictionary()
    assert V.shape == (20, 10) and V.dtype == X.dtype
    assert (D.T @ V).abs().amax(1).min() > 0.99          # every true atom found (up to sign)
    U = learner.encode(X)
    assert relative_l2(X, learner.decode(U)).mean() < 0.1
    assert l0_ratio(U).mean() > 0.7                      # 2 of 10 atoms used: ideal is 0.8


def test_minibatch_reconstructs_sparse_signal() -> None:
    X, _ = sparse_pfvs(300, 20, 10, 2, seed=0)
    learner = DictionaryLearner(10, alpha=1e-2, minibatch=True, max_iter=10,
                                batch_size=64).fit(X)
    U = learner.encode(X)
    assert relative_l2(X, learner.decode(U)).mean() < 0.3
    assert l0_ratio(U).mean() > 0.6


def test_default_k_and_save_load(tmp_path) -> None:
    X, _ = sparse_pfvs(60, 3, 4, 1, seed=1)
    learner = DictionaryLearner(alpha=1e-3, fit_algorithm="cd", max_iter=5).fit(X)
    assert learner.get_dictionary().shape == (3, 24)              # K = 8 C
    learner.save(tmp_path / "dl.safetensors")
    loaded = DictionaryLearner.load(tmp_path / "dl")
    assert loaded.config() == learner.config()
    assert torch.equal(loaded.encode(X), learner.encode(X))

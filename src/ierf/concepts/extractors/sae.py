"""Sparse autoencoders as concept extractors (IERF Table III "SAE", GIG Appendix F, FaCT).

Every SAE has an encoder ``f(x)`` (``N × K`` codes) and a linear decoder
``x̂ = W_d f(x) + b_d`` whose weight ``W_d (C, K)`` is the dictionary (column ``i`` = concept
``i``). They share the extractor verbs and a minibatch Adam :meth:`SAEBase.fit` loop.

* :class:`SparseAutoencoder` – ReLU codes, decoder-norm-weighted L1 (GIG Eq. 11).
* :class:`TopKSAE` – the ``k`` largest pre-activations per row (Gao et al. 2024).
* :class:`MatryoshkaSAE` – TopK codes; every nested prefix of the latents must reconstruct
  the input on its own (Bussmann et al. 2025; IERF Sec. V).
* :class:`BiasFreeTopKSAE` – TopK without encoder/decoder biases (FaCT), so codes are a
  dynamic-linear function of the PFV and ``decode(0) = 0``.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ierf.concepts.extractors.base import ConceptExtractor, check_pfvs, default_n_concepts
from ierf.errors import IerfError

#: multiply-adds ``B·C·K`` of one minibatch matmul below which :meth:`SAEBase.fit` runs on one
#: CPU thread. Such a step is microseconds of arithmetic and about a millisecond of Python,
#: autograd and Adam overhead; a second thread per op only adds waits, and on a busy 2-core
#: CPU those dominate (400 × 64 PFVs, K = 16, 2000 steps: 92 s on 2 threads, 2.4 s on one;
#: ``benchmarks/bench_sae_fit.py``).
SINGLE_THREAD_MACS = 1 << 22


def step_threads(rows: int, n_features: int, n_concepts: int, device: torch.device) -> int:
    """CPU threads for training steps of ``rows × n_features × n_concepts``: one below
    :data:`SINGLE_THREAD_MACS` (such a step is microseconds of arithmetic, and a second
    thread only adds waits), else torch's setting."""
    small = rows * n_features * n_concepts < SINGLE_THREAD_MACS
    return 1 if torch.device(device).type == "cpu" and small else torch.get_num_threads()


@contextmanager
def cpu_threads(n: int) -> Iterator[None]:
    """Run the block with at most ``n`` intra-op CPU threads; the setting is restored after."""
    before = torch.get_num_threads()
    if n >= before:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def reconstruction_loss(X: torch.Tensor, X_hat: torch.Tensor) -> torch.Tensor:
    """``(1/|X|) Σ_x ‖x − x̂‖²₂``, the first term of GIG Eq. 11."""
    return (X - X_hat).square().sum(1).mean()


class SAEBase(ConceptExtractor, nn.Module):
    """Shared parts: linear encoder/decoder, tied unit-norm initialisation, training loop.

    Parameters
    ----------
    n_features : PFV channels ``C``.
    n_concepts : latents ``K``; ``None`` → ``8 C``.
    seed : seeds the initial weights and the minibatch order.

    Attributes
    ----------
    loss_history_ : mean training loss of every epoch run by :meth:`fit`.
    """

    has_bias: ClassVar[bool] = True

    def __init__(self, n_features: int, n_concepts: int | None = None, *, seed: int = 0) -> None:
        super().__init__()
        self.n_features = n_features
        self.n_concepts = default_n_concepts(n_features, n_concepts)
        self.seed = seed
        self.encoder = nn.Linear(n_features, self.n_concepts, bias=self.has_bias)
        self.decoder = nn.Linear(self.n_concepts, n_features, bias=self.has_bias)
        W = F.normalize(torch.randn(n_features, self.n_concepts,
                                    generator=torch.Generator().manual_seed(seed)), dim=0)
        with torch.no_grad():
            self.decoder.weight.copy_(W)
            self.encoder.weight.copy_(W.T)
            for bias in (self.encoder.bias, self.decoder.bias):
                if bias is not None:
                    bias.zero_()
        self.loss_history_: list[float] = []

    @abstractmethod
    def encode(self, X: torch.Tensor) -> torch.Tensor:
        """Codes ``f(X) (N, K)``, differentiable."""

    @abstractmethod
    def loss(self, X: torch.Tensor) -> torch.Tensor:
        """Scalar training loss of a minibatch ``X (B, C)``."""

    def constrain(self) -> None:
        """Projection applied after every optimiser step (none by default)."""

    def decode(self, U: torch.Tensor) -> torch.Tensor:
        """``x̂ = W_d u + b_d``."""
        return self.decoder(U)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        """Reconstruction ``decode(encode(X))``."""
        return self.decode(self.encode(X))

    def get_dictionary(self) -> torch.Tensor:
        return self.decoder.weight.detach()

    def fit(self, X: torch.Tensor, *, epochs: int = 20, batch_size: int = 256, lr: float = 1e-3,
            progress: bool = False) -> SAEBase:
        """Train on PFVs ``X (N, C)`` with Adam on shuffled minibatches, from the current weights.

        ``X`` is moved to the module's device and dtype; ``progress`` shows a tqdm bar. On the
        CPU, steps smaller than :data:`SINGLE_THREAD_MACS` run on one thread.
        """
        X = check_pfvs(X, self.n_features).to(self.decoder.weight)
        optimizer = torch.optim.Adam(self.parameters(), lr=lr)
        generator = torch.Generator().manual_seed(self.seed)
        self.train()
        with cpu_threads(step_threads(min(batch_size, len(X)), self.n_features,
                                      self.n_concepts, X.device)):
            for _ in tqdm(range(epochs), desc=type(self).__name__, disable=not progress):
                total = X.new_zeros(())
                order = torch.randperm(len(X), generator=generator).to(X.device)
                for batch in order.split(batch_size):
                    loss = self.loss(X[batch])
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    self.constrain()
                    total += loss.detach() * len(batch)
                self.loss_history_.append(total.item() / len(X))
        self.eval()
        return self

    def config(self) -> dict[str, Any]:
        return {"n_features": self.n_features, "n_concepts": self.n_concepts, "seed": self.seed}

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return dict(self.state_dict())

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.to(tensors["decoder.weight"].device)
        self.load_state_dict(tensors)


class SparseAutoencoder(SAEBase):
    """Vanilla ReLU SAE of GIG Appendix F (Templeton et al. 2024).

    ``f(x) = ReLU(W_e x + b_e)``, ``x̂ = W_d f(x) + b_d`` and the loss (GIG Eq. 11)
    ``(1/|X|) Σ_x ‖x − x̂‖² + λ Σ_i |f_i(x)| ‖W_{d,i}‖₂`` (mean over the minibatch),
    so shrinking decoder columns cannot cheat the sparsity penalty.

    Parameters
    ----------
    l1_coeff : ``λ`` of Eq. 11 (depends on the scale of the PFVs).
    """

    def __init__(self, n_features: int, n_concepts: int | None = None, *,
                 l1_coeff: float = 1e-2, seed: int = 0) -> None:
        super().__init__(n_features, n_concepts, seed=seed)
        self.l1_coeff = l1_coeff

    def encode(self, X: torch.Tensor) -> torch.Tensor:
        return F.relu(self.encoder(X))

    def loss(self, X: torch.Tensor) -> torch.Tensor:
        U = self.encode(X)
        sparsity = (U * self.decoder.weight.norm(dim=0)).sum(1).mean()
        return reconstruction_loss(X, self.decode(U)) + self.l1_coeff * sparsity

    def config(self) -> dict[str, Any]:
        return {**super().config(), "l1_coeff": self.l1_coeff}


class TopKSAE(SAEBase):
    """TopK SAE (Gao et al. 2024): keep the ``k`` largest pre-activations of each row.

    ``f(x) = TopK(W_e x + b_e)``; the kept values are *not* passed through a ReLU, so every
    row has exactly ``k`` non-zeros (a ReLU after the TopK, as in Gao et al., can leave
    fewer). Loss: reconstruction only; decoder columns are renormalised to unit norm after
    every step, so concept vectors are unit vectors.

    Parameters
    ----------
    k : non-zeros per row, ``1 ≤ k ≤ K``.
    """

    def __init__(self, n_features: int, n_concepts: int | None = None, *, k: int = 8,
                 seed: int = 0) -> None:
        super().__init__(n_features, n_concepts, seed=seed)
        if not 1 <= k <= self.n_concepts:
            raise IerfError(f"k must be in [1, {self.n_concepts}], got {k}")
        self.k = k

    def encode(self, X: torch.Tensor) -> torch.Tensor:
        pre = self.encoder(X)
        values, indices = pre.topk(self.k, dim=1)
        return torch.zeros_like(pre).scatter(1, indices, values)

    def loss(self, X: torch.Tensor) -> torch.Tensor:
        return reconstruction_loss(X, self(X))

    @torch.no_grad()
    def constrain(self) -> None:
        self.decoder.weight.copy_(F.normalize(self.decoder.weight, dim=0))

    def config(self) -> dict[str, Any]:
        return {**super().config(), "k": self.k}


class MatryoshkaSAE(TopKSAE):
    """Matryoshka SAE: each nested prefix of the dictionary reconstructs the input by itself.

    With prefix sizes ``m_1 < … < m_G = K`` the loss is
    ``Σ_g (1/|X|) Σ_x ‖x − (W_d[:, :m_g] f(x)[:m_g] + b_d)‖²`` on TopK codes, so the first
    latents learn coarse, general concepts and later ones refine them.

    Parameters
    ----------
    prefixes : increasing prefix sizes ending at ``K``; ``None`` → ``(K/8, K/4, K/2, K)``.
    """

    def __init__(self, n_features: int, n_concepts: int | None = None, *, k: int = 8,
                 prefixes: Sequence[int] | None = None, seed: int = 0) -> None:
        super().__init__(n_features, n_concepts, k=k, seed=seed)
        K = self.n_concepts
        if prefixes is None:
            prefixes = sorted({max(1, K // 8), max(1, K // 4), max(1, K // 2), K})
        prefixes = [int(m) for m in prefixes]
        if prefixes[0] < 1 or prefixes[-1] != K or prefixes != sorted(set(prefixes)):
            raise IerfError(f"prefixes must increase strictly from >= 1 up to {K}, got {prefixes}")
        self.prefixes = prefixes

    def loss(self, X: torch.Tensor) -> torch.Tensor:
        U = self.encode(X)
        W = self.decoder.weight
        X_hat = self.decoder.bias.expand_as(X)
        total = X.new_zeros(())
        start = 0
        for end in self.prefixes:
            X_hat = X_hat + U[:, start:end] @ W[:, start:end].T
            total = total + reconstruction_loss(X, X_hat)
            start = end
        return total

    def config(self) -> dict[str, Any]:
        return {**super().config(), "prefixes": self.prefixes}


class BiasFreeTopKSAE(TopKSAE):
    """TopK SAE without encoder or decoder biases (FaCT, Sec. 3.1 and App. A).

    ``f(x) = TopK(W_e x)`` and ``x̂ = W_d f(x)``: codes are a dynamic-linear function of the
    PFV and ``decode(0) = 0``, which faithful concept attribution needs.
    """

    has_bias: ClassVar[bool] = False

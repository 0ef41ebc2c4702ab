"""The bias-free TopK-SAE bottleneck of FaCT (Eqs. 6–7).

Applied at every position of a feature map (a 1×1 convolution) or every token::

    u = TopK(ReLU(W_e h))        (Eq. 6, no encoder bias)
    ĥ = D u,  ‖D_{:,i}‖ = 1      (Eq. 7, no decoder bias; ĥ feeds the rest of the network)

For a fixed TopK support, ``u`` is a linear function of ``h`` (App. H.1), so codes are
dynamic-linear in the features and ``ĥ`` is linear in the codes: concept contributions and
pixel traces stay exact. The maths is that of
:class:`ierf.concepts.extractors.BiasFreeTopKSAE` (plus the ReLU of Gao et al. / FaCT), on
feature maps instead of rows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ierf.errors import IerfError


class TopKBottleneck(nn.Module):
    """Bias-free TopK SAE on the channel axis of (B, C, H, W) maps or (B, N, C) tokens.

    Parameters
    ----------
    n_features : channels ``C`` of the layer it sits on.
    n_concepts : latents ``K``.
    k : active latents per position, ``1 ≤ k ≤ K``.
    seed : seeds the tied unit-norm initialisation ``W_e = Dᵀ``.
    """

    def __init__(self, n_features: int, n_concepts: int, k: int, *, seed: int = 0) -> None:
        super().__init__()
        if not 1 <= k <= n_concepts:
            raise IerfError(f"k must be in [1, n_concepts={n_concepts}], got {k}")
        self.n_features, self.n_concepts, self.k = n_features, n_concepts, k
        D = F.normalize(torch.randn(n_features, n_concepts,
                                    generator=torch.Generator().manual_seed(seed)), dim=0)
        self.encoder = nn.Parameter(D.T.contiguous())  # W_e (K, C)
        self.decoder = nn.Parameter(D)  # D (C, K); columns normalised on use

    @classmethod
    def from_sae(cls, sae: nn.Module) -> TopKBottleneck:
        """Copy the weights of a fitted :class:`~ierf.concepts.extractors.BiasFreeTopKSAE`."""
        if getattr(sae.encoder, "bias", None) is not None or \
                getattr(sae.decoder, "bias", None) is not None:
            raise IerfError("FaCT needs a bias-free SAE (BiasFreeTopKSAE): biases would add a "
                            "constant to every logit and break exact contributions")
        out = cls(sae.n_features, sae.n_concepts, sae.k)
        with torch.no_grad():
            out.encoder.copy_(sae.encoder.weight)
            out.decoder.copy_(sae.decoder.weight)
        return out

    def dictionary(self) -> Tensor:
        """Unit-norm concept vectors ``D`` (C, K), column ``i`` = concept ``i``."""
        return F.normalize(self.decoder, dim=0)

    def _check(self, h: Tensor) -> None:
        c = h.shape[1] if h.dim() == 4 else h.shape[-1]
        if h.dim() not in (3, 4) or c != self.n_features:
            raise IerfError(f"the bottleneck expects (B, {self.n_features}, H, W) maps or "
                            f"(B, N, {self.n_features}) tokens, got {tuple(h.shape)}")

    def encode(self, h: Tensor) -> Tensor:
        """Codes ``u = TopK(ReLU(W_e h))`` (Eq. 6), shaped like ``h`` with ``K`` channels."""
        self._check(h)
        last = h.movedim(1, -1) if h.dim() == 4 else h
        pre = F.relu(last @ self.encoder.T)
        values, indices = pre.topk(self.k, dim=-1)
        u = torch.zeros_like(pre).scatter(-1, indices, values)
        return u.movedim(-1, 1) if h.dim() == 4 else u

    def decode(self, u: Tensor) -> Tensor:
        """Reconstruction ``ĥ = D u`` (Eq. 7)."""
        last = u.movedim(1, -1) if u.dim() == 4 else u
        h = last @ self.dictionary().T
        return h.movedim(-1, 1) if u.dim() == 4 else h

    def forward(self, h: Tensor) -> Tensor:
        return self.decode(self.encode(h))

    def extra_repr(self) -> str:
        return f"n_features={self.n_features}, n_concepts={self.n_concepts}, k={self.k}"

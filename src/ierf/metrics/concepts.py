"""Concept-level metrics: class relevance, C-insertion/C-deletion, Table III, ground truth.

* :func:`class_relevance` — GIG Eq. 7: Integrated Gradients over the concept coefficients
  ``U`` of one layer, to a class probability (or logit), summed over positions.
* :func:`c_insertion_curve` / :func:`c_deletion_curve` and their AUCs — GIG Sec. 4.2.1
  (after Fel et al. 2024): concepts are inserted into / deleted from the layer's
  reconstructed PFVs ``decode(U)`` in order of importance, the rest of the network runs
  from that layer, and the class probability is recorded after every step.
* :func:`reconstruction_metrics` — Rel-ℓ2 and ℓ0 ratio (IERF Table III, GIG Table 1).
* :func:`ierf_labels`, :func:`purity`, :func:`recovered_parts` and NMI — score concept
  assignments against the synthetic benchmark's per-pixel concept labels.

"The rest of the network" is the isolated sub-network ``M_{layer → output}`` (IERF
Sec. VI-B1, :class:`~ierf.models.Subnetwork`): only the layers after ``layer`` run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F

from ierf.concepts.basis import ConceptBasis
from ierf.concepts.decompose import l0_ratio, relative_l2
from ierf.concepts.extractors import ConceptExtractor
from ierf.errors import IerfError
from ierf.metrics.faithfulness import curve_auc
from ierf.models.model import Model
from ierf.models.subnetwork import Subnetwork

Output = Literal["probability", "logit"]


def encode_layer(model: Model, x: torch.Tensor, basis: ConceptBasis) -> torch.Tensor:
    """Concept coefficients ``U (B, N, K)`` of every PFV of the basis' layer on images ``x``."""
    with torch.no_grad():
        return basis.encode(basis.pfvs(model, x)).detach()


def _score(logits: torch.Tensor, output: Output) -> torch.Tensor:
    if output == "probability":
        return logits.softmax(1)
    if output == "logit":
        return logits
    raise IerfError(f"output must be 'probability' or 'logit', got {output!r}")


def _tail(model: Model, x: torch.Tensor, basis: ConceptBasis
          ) -> tuple[Subnetwork, torch.Tensor | None]:
    """The sub-network from the basis' layer to the logits, and the ViT prefix tokens (CLS)
    of that layer on images ``x`` that it needs (``None`` for a CNN)."""
    basis.check(model)
    if basis.tokens != "patch":
        raise IerfError(f"concept metrics replace a layer's patch tokens; this basis is for "
                        f"{basis.tokens!r} tokens")
    sub = Subnetwork(model, basis.layer, "output", example=x[:1])
    with torch.no_grad():
        return sub, sub.pfvs_a(x).prefix if sub.prefix_tokens else None


def _decoded_output(sub: Subnetwork, basis: ConceptBasis, U: torch.Tensor,
                    prefix: torch.Tensor | None, output: Output) -> torch.Tensor:
    return _score(sub(basis.decode(U), prefix), output)


def concept_output(model: Model, x: torch.Tensor, basis: ConceptBasis,
                   U: torch.Tensor, output: Output = "probability") -> torch.Tensor:
    """Class scores ``(B, classes)`` when the basis layer's PFVs are ``decode(U)``, ``U (B, N, K)``
    (GIG Eq. 9: ``X̃ = U Vᵀ + β``), differentiable in ``U``; ``x`` gives a ViT's prefix."""
    sub, prefix = _tail(model, x, basis)
    return _decoded_output(sub, basis, U, prefix, output)


def class_relevance(model: Model, x: torch.Tensor, basis: ConceptBasis,
                    target: torch.Tensor | int, *, U: torch.Tensor | None = None,
                    output: Output = "probability", n_steps: int = 50,
                    internal_batch_size: int | None = None,
                    return_delta: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Class relevance of every concept, GIG Eq. 7 (Captum's Integrated Gradients over ``U``).

    ``GIG(v_q → e_c) = Σ_p u_pq ∫₀¹ ∂⟨w^y(αU), e_c⟩ / ∂u_pq dα`` with ``w^y`` the class
    probabilities (or logits) of the network run from the basis' layer on ``decode(αU)``.
    The baseline is ``U = 0``, i.e. PFVs ``decode(0)`` (``μ_BN`` for centred k-means, the
    decoder bias for SAEs), so by completeness the relevances sum to
    ``w^y_c(U) − w^y_c(0)`` up to the IG discretisation error.

    Parameters
    ----------
    x : (B, 3, H, W) model inputs.
    target : class index, shared or one per image.
    U : (B, N, K) coefficients; ``None`` → :func:`encode_layer`.
    n_steps, internal_batch_size : Captum's IG settings (Gauss–Legendre steps; the steps of
        all images run batched, ``internal_batch_size`` rows at a time).
    return_delta : also return Captum's completeness error per image.

    Returns
    -------
    (B, K) relevances (and (B,) deltas).
    """
    from captum.attr import IntegratedGradients

    x = model.check(x)
    U = encode_layer(model, x, basis) if U is None else U.detach()
    target = torch.as_tensor(target, device=x.device).reshape(-1).expand(len(x))

    sub, prefix = _tail(model, x, basis)

    def forward(u: torch.Tensor, prefix: torch.Tensor | None) -> torch.Tensor:
        return _decoded_output(sub, basis, u, prefix, output)

    ig = IntegratedGradients(forward)
    with torch.enable_grad():       # Captum repeats the prefix along with the IG steps
        result = ig.attribute(U, baselines=torch.zeros_like(U), target=target.tolist(),
                              additional_forward_args=(prefix,), n_steps=n_steps,
                              internal_batch_size=internal_batch_size,
                              return_convergence_delta=return_delta)
    if return_delta:
        attributions, delta = result
        return attributions.sum(1).detach(), delta.detach()
    return result.sum(1).detach()


def _curves(model: Model, x: torch.Tensor, basis: ConceptBasis,
            U: torch.Tensor, importance: torch.Tensor, target: torch.Tensor, insert: bool,
            output: Output, batch_size: int) -> torch.Tensor:
    """(B, K + 1) class scores after 0, 1, …, K insertion/deletion steps.

    Concepts are taken in decreasing ``importance``. A step that inserts or deletes a
    concept absent from the image (all-zero column of ``U``) leaves the PFVs unchanged, so
    only the steps that touch a present concept are run; the others repeat the last score.
    """
    b, _, k = U.shape
    rank = importance.argsort(1, descending=True).argsort(1)                     # (B, K)
    present = (U != 0).any(1)                                                    # (B, K)
    changes = torch.zeros(b, k + 1, dtype=torch.bool, device=U.device)
    changes[:, 0] = True
    changes[:, 1:].scatter_(1, rank, present)          # step rank+1 touches that concept
    image, step = changes.nonzero(as_tuple=True)
    scores = torch.empty(len(image), device=U.device, dtype=U.dtype)
    sub, prefix = _tail(model, x, basis)
    with torch.no_grad():
        for i in range(0, len(image), batch_size):
            im, st = image[i:i + batch_size], step[i:i + batch_size]
            kept = rank[im] < st[:, None]
            kept = kept if insert else ~kept
            out = _decoded_output(sub, basis, U[im] * kept[:, None],
                                  None if prefix is None else prefix[im], output)
            scores[i:i + batch_size] = out.gather(1, target[im, None]).squeeze(1)
    dense = torch.zeros(b, k + 1, device=U.device, dtype=U.dtype)
    dense[image, step] = scores
    steps = torch.arange(k + 1, device=U.device).expand(b, -1)
    last = torch.where(changes, steps, torch.zeros_like(steps)).cummax(1).values
    return dense.gather(1, last)


def c_insertion_curve(model: Model, x: torch.Tensor, basis: ConceptBasis,
                      importance: torch.Tensor, target: torch.Tensor | int, *,
                      U: torch.Tensor | None = None, output: Output = "probability",
                      batch_size: int = 64) -> torch.Tensor:
    """C-insertion (GIG Sec. 4.2.1): class score as concepts are added, most important first.

    Step ``s`` keeps the ``s`` most important concepts' coefficients, zeroes the rest and
    runs the network from the basis' layer on ``decode(U_s)``. Returns (B, K + 1) scores, step 0 =
    no concept (``decode(0)``), step K = the full reconstruction.
    """
    x = model.check(x)
    U = encode_layer(model, x, basis) if U is None else U
    target = torch.as_tensor(target, device=x.device).reshape(-1).expand(len(x))
    return _curves(model, x, basis, U, importance, target, True, output, batch_size)


def c_deletion_curve(model: Model, x: torch.Tensor, basis: ConceptBasis,
                     importance: torch.Tensor, target: torch.Tensor | int, *,
                     U: torch.Tensor | None = None, output: Output = "probability",
                     batch_size: int = 64) -> torch.Tensor:
    """C-deletion (GIG Sec. 4.2.1): class score as concepts are removed, most important first.

    Returns (B, K + 1) scores, step 0 = the full reconstruction, step K = ``decode(0)``.
    """
    x = model.check(x)
    U = encode_layer(model, x, basis) if U is None else U
    target = torch.as_tensor(target, device=x.device).reshape(-1).expand(len(x))
    return _curves(model, x, basis, U, importance, target, False, output, batch_size)


def c_insertion_auc(*args, **kwargs) -> torch.Tensor:
    """(B,) AUC of :func:`c_insertion_curve` (higher is better)."""
    return curve_auc(c_insertion_curve(*args, **kwargs))


def c_deletion_auc(*args, **kwargs) -> torch.Tensor:
    """(B,) AUC of :func:`c_deletion_curve` (lower is better)."""
    return curve_auc(c_deletion_curve(*args, **kwargs))


def reconstruction_metrics(extractor: ConceptExtractor, X: torch.Tensor) -> dict[str, float]:
    """Mean Rel-ℓ2 ``‖x − x̂‖/‖x‖`` and mean ℓ0 ratio ``1 − ‖u‖₀/K`` over PFVs ``X (N, C)``
    (IERF Table III; GIG Table 1)."""
    with torch.no_grad():
        U = extractor.encode(X).detach()
        X_hat = extractor.decode(U).detach()
    return {"rel_l2": relative_l2(X, X_hat).mean().item(), "l0_ratio": l0_ratio(U).mean().item()}


def ierf_labels(ierfs: torch.Tensor, label_maps: torch.Tensor, n_labels: int) -> torch.Tensor:
    """The ground-truth concept under each PFV's iERF: argmax of iERF-weighted label mass.

    ``mass_l = Σ_pixels max(iERF, 0) · [label = l]``, with the per-pixel labels area-pooled to
    the iERF's resolution when the iERFs are downsampled (the atlas stores them pooled).

    Parameters
    ----------
    ierfs : (N, h, w) iERF maps.
    label_maps : (N, H, W) integer labels in ``[0, n_labels)``; ``H, W`` multiples of ``h, w``.
    n_labels : number of labels (background included).

    Returns
    -------
    (N,) int64 labels.
    """
    onehot = F.one_hot(label_maps.long(), n_labels).permute(0, 3, 1, 2).float()
    fractions = F.adaptive_avg_pool2d(onehot, ierfs.shape[-2:])                 # (N, L, h, w)
    mass = (fractions * ierfs.clamp_min(0)[:, None].to(fractions)).sum((2, 3))
    return mass.argmax(1)


def assignments(U: torch.Tensor) -> torch.Tensor:
    """Hard concept of each PFV: the concept with the largest coefficient, ``argmax_j u_j``."""
    return U.argmax(1)


def contingency(assigned: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(concepts, labels) counts of PFVs assigned to each concept with each label."""
    a, l = assigned.long().cpu(), labels.long().cpu()
    counts = torch.zeros(int(a.max()) + 1, int(l.max()) + 1, dtype=torch.long)
    return counts.index_put_((a, l), torch.ones_like(a), accumulate=True)


def purity(assigned: torch.Tensor, labels: torch.Tensor) -> float:
    """Cluster purity ``(1/N) Σ_j max_l |A_j ∩ L_l|``: 1 when every concept has one label."""
    return contingency(assigned, labels).amax(1).sum().item() / len(labels)


def nmi(assigned: torch.Tensor, labels: torch.Tensor) -> float:
    """Normalised mutual information (scikit-learn, arithmetic mean) of concepts vs labels."""
    from sklearn.metrics import normalized_mutual_info_score

    return float(normalized_mutual_info_score(labels.cpu().numpy(), assigned.cpu().numpy()))


def recovered_parts(assigned: torch.Tensor, labels: torch.Tensor, parts: Sequence[int],
                    merge: bool = False) -> dict[int, float]:
    """Best F1 of any one concept for each ground-truth label in ``parts``.

    ``F1(j, p) = 2 |A_j ∩ L_p| / (|A_j| + |L_p|)``: the precision/recall balance of concept
    ``j`` as a detector of the PFVs whose iERF lies on part ``p``. With ``merge`` the
    concepts are first grouped by their majority label (an over-complete dictionary splits a
    part into several concepts) and each group is scored as one detector. A part counts as
    recovered when its F1 passes a threshold chosen by the caller.
    """
    counts = contingency(assigned, labels).double()
    if merge:
        counts = torch.zeros(counts.shape[1], counts.shape[1], dtype=counts.dtype).index_add_(
            0, counts.argmax(1), counts)
    sizes_a, sizes_l = counts.sum(1), counts.sum(0)
    best = {}
    for p in parts:
        if p >= counts.shape[1] or sizes_l[p] == 0:
            best[p] = 0.0
            continue
        best[p] = (2 * counts[:, p] / (sizes_a + sizes_l[p])).max().item()
    return best

"""Concept deletion: FaCT's exact contributions vs approximate concept importances (FaCT
Sec. 6, Fig. 7; App. F; the concept-deletion metric of Fel et al.).

Concepts of one bottleneck are removed from most to least important – their codes ``u_k`` are
zeroed before the decoder (Eq. 7) – and we track the logit of each image's originally
predicted class and the overall accuracy. Importances, per image and for its predicted class:

* ``contribution`` – FaCT's exact contribution (Eq. 9): ``Σ_{h,w} u_k ∂y/∂u_k`` with the
  B-cos dynamic scales detached (explanation mode), summing to the logit;
* ``grad-x-act`` – gradient × activation with the ordinary gradient (through the scales);
* ``integrated-gradients`` – IG over the concept codes from the zero baseline (``u → 0``);
* ``activation`` – the concept activation ``a_k = Σ_{h,w} u_k`` (Eq. 10), class-agnostic;
* ``random`` – a random order.

After the bottleneck a B-cos (B = 2) network is positively homogeneous of degree 1 in ``u``, so
``grad-x-act`` also sums to the logit (Euler) – it splits it differently from Eq. 9 because its
gradient differentiates the dynamic scales too, i.e. it linearises the effect of removing a
concept – and the gradient is constant along ``α u``: zero-baseline IG equals ``grad-x-act`` up
to the norms' ε.

"Always-on" concepts (App. F: active on every image, mean-like directions used for
reconstruction) can be excluded: they are never deleted and the x-axis runs over the others.

Everything is batched: the layers before the bottleneck run once (their outputs are replayed),
and each distinct (method, step, image) row of the deletion runs only the decoder and the
layers after it, ``batch_size`` rows at a time; rows that differ only by deleted inactive
concepts are computed once.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ierf.errors import IerfError
from ierf.fact.contributions import _layer, as_fact
from ierf.fact.layers import encode_input, explanation_mode
from ierf.fact.model import FaCT

METHODS = ("contribution", "grad-x-act", "integrated-gradients", "activation", "random")


def per_concept(u: Tensor) -> Tensor:
    """Concept activations ``Σ_positions u_k`` (Eq. 10): (B, K, H, W) maps or (B, N, K)
    tokens → (B, K)."""
    return u.flatten(2).sum(-1) if u.dim() == 4 else u.sum(1)


def _masked(u: Tensor, keep: Tensor) -> Tensor:
    """Codes ``u`` (R, K, …) with the concepts where ``keep`` (R, K) is False set to zero."""
    keep = keep.to(u.dtype)
    return u * (keep[:, :, None, None] if u.dim() == 4 else keep[:, None, :])


@contextmanager
def eval_mode(net: nn.Module) -> Iterator[None]:
    """``net`` in eval mode within the block (norms use their running statistics)."""
    was_training = net.training
    net.eval()
    try:
        yield
    finally:
        net.train(was_training)


class BottleneckTail:
    """The logits of a FaCT model as a function of one bottleneck's codes (Eq. 7).

    Built from one reference forward pass over images ``x``: the outermost backbone modules
    that finish before the bottleneck layer starts have their outputs stored, and a call
    ``tail(u, rows)`` replays them for the images ``rows`` while the bottleneck's
    reconstruction becomes ``D u``. Only the decoder and the later layers are computed;
    gradients flow to ``u``.

    Attributes
    ----------
    codes : (B, K, …) reference codes ``u`` of the images.
    logits : (B, classes) reference logits.
    """

    def __init__(self, fact: FaCT, x: Tensor, layer: str, batch_size: int = 256) -> None:
        fact.bottleneck(layer)
        self.fact, self.layer = fact, fact.resolve(layer)
        layer = self.layer
        modules = dict(fact.backbone.named_modules())
        self._layer_module = modules[layer]
        self._x6 = encode_input(fact.check_images(x)).detach()
        with torch.no_grad(), eval_mode(fact):
            self._stubs = {n: modules[n] for n in self._prefix(modules, self._x6[:1])}
            outputs: dict[str, list[list[Tensor]]] = {n: [] for n in self._stubs}
            codes, logits = [], []
            for start in range(0, len(x), batch_size):
                calls: dict[str, list[Tensor]] = {n: [] for n in self._stubs}
                handles = [m.register_forward_hook(
                    lambda _m, _i, o, seen=calls[n]: seen.append(o.detach()))
                    for n, m in self._stubs.items()]
                try:
                    with fact.recording() as rec:
                        logits.append(fact.forward_encoded(self._x6[start:start + batch_size]))
                finally:
                    for h in handles:
                        h.remove()
                for n in self._stubs:
                    outputs[n].append(calls[n])
                codes.append(rec.codes[layer].detach())
        self._outputs = {n: [torch.cat(c) for c in zip(*per_batch)]
                         for n, per_batch in outputs.items()}
        self.codes = torch.cat(codes)
        self.logits = torch.cat(logits)

    def _prefix(self, modules: dict[str, nn.Module], x6: Tensor) -> list[str]:
        """The outermost modules returning tensors whose every call ends before the
        bottleneck layer starts (their outputs can be replayed)."""
        started = [False]
        before: set[str] = set()
        after: set[str] = set()

        def pre(name: str) -> None:
            if name == self.layer:
                started[0] = True

        def post(name: str, out: object) -> None:
            (after if started[0] or not isinstance(out, Tensor) else before).add(name)

        handles = [h for n, m in modules.items() if n for h in (
            m.register_forward_pre_hook(lambda *_, n=n: pre(n)),
            m.register_forward_hook(lambda _m, _i, o, n=n: post(n, o)))]
        try:
            self.fact.forward_encoded(x6)
        finally:
            for h in handles:
                h.remove()
        prefix = before - after
        return [n for n in modules if n in prefix and n.rpartition(".")[0] not in prefix]

    def __call__(self, u: Tensor, rows: Tensor) -> Tensor:
        """Logits (R, classes) of images ``rows`` (R,) with bottleneck codes ``u`` (R, K, …)."""
        sae = self.fact.bottleneck(self.layer)
        count = dict.fromkeys(self._stubs, 0)

        def replay(name: str) -> Tensor:
            count[name] += 1
            return self._outputs[name][count[name] - 1][rows]

        for n, m in self._stubs.items():
            m.forward = lambda *_a, n=n, **_k: replay(n)
        # the layer's output is not needed: its bottleneck hook decodes ``u`` (Eq. 7)
        self._layer_module.forward = lambda *_a, **_k: u
        sae.encode = lambda _h: u
        try:
            return self.fact.forward_encoded(self._x6[rows])
        finally:
            del sae.encode
            for m in (*self._stubs.values(), self._layer_module):
                del m.forward


def _rows(total: int, batch_size: int) -> Iterator[Tensor]:
    for start in range(0, total, batch_size):
        yield torch.arange(start, min(start + batch_size, total))


def _path_gradient_x_codes(tail: BottleneckTail, classes: Tensor, alphas: Tensor,
                           batch_size: int) -> Tensor:
    """``Σ_positions u ⊙ mean_α ∂y_c/∂u |_{α u}`` (B, K): gradient × activation for
    ``alphas = [1]``, Integrated Gradients from the zero baseline for a Riemann grid."""
    B, codes = len(classes), tail.codes
    dev = codes.device
    total = torch.zeros_like(codes)
    shape = (-1, *[1] * (codes.dim() - 1))
    with torch.enable_grad():
        for r in _rows(len(alphas) * B, batch_size):
            a, b = (r // B).to(dev), (r % B).to(dev)
            u = (alphas.to(dev)[a].view(shape) * codes[b]).requires_grad_(True)
            y = tail(u, b).gather(1, classes[b, None]).sum()
            (g,) = torch.autograd.grad(y, u)
            total.index_add_(0, b, g)
    return per_concept(codes * total / len(alphas))


def _importances(tail: BottleneckTail, classes: Tensor, methods: Sequence[str], ig_steps: int,
                 seed: int, batch_size: int) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    one = torch.ones(1)
    for method in methods:
        if method == "contribution":  # Eq. 9: gradient × codes with the scales detached
            with explanation_mode(tail.fact):
                out[method] = _path_gradient_x_codes(tail, classes, one, batch_size)
        elif method == "grad-x-act":
            out[method] = _path_gradient_x_codes(tail, classes, one, batch_size)
        elif method == "integrated-gradients":
            alphas = (torch.arange(ig_steps) + 0.5) / ig_steps  # midpoint rule on (0, 1]
            out[method] = _path_gradient_x_codes(tail, classes, alphas, batch_size)
        elif method == "activation":
            out[method] = per_concept(tail.codes)
        else:  # random
            g = torch.Generator().manual_seed(seed)
            out[method] = torch.rand(per_concept(tail.codes).shape, generator=g).to(
                tail.codes.device)
    return out


def _check(model: object, x: Tensor, layer: str | None, methods: Sequence[str]
           ) -> tuple[FaCT, str]:
    fact = as_fact(model)
    FaCT.check_images(x)
    if len(x) == 0:
        raise IerfError("concept deletion needs at least one image")
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise IerfError(f"unknown importance method(s) {unknown or methods}; valid: "
                        f"{', '.join(METHODS)}")
    return fact, _layer(fact, layer)


def concept_importances(model: object, x: Tensor, methods: Sequence[str] = METHODS, *,
                        classes: Tensor | None = None, layer: str | None = None,
                        ig_steps: int = 16, seed: int = 0, batch_size: int = 256
                        ) -> dict[str, Tensor]:
    """Per-image concept importances (B, K) for ``classes`` (default: each image's predicted
    class), one tensor per method of :data:`METHODS` (see the module docstring)."""
    fact, layer = _check(model, x, layer, methods)
    tail = BottleneckTail(fact, x, layer, batch_size)
    if classes is None:
        classes = tail.logits.argmax(1)
    with eval_mode(fact):
        return _importances(tail, classes.to(tail.logits.device).long(), methods, ig_steps,
                            seed, batch_size)


def always_on(activations: Tensor, threshold: float = 1.0) -> Tensor:
    """Concepts active (``a_k > 0``) on at least ``threshold`` of the images (App. F: the
    paper's always-on concepts occur on 100 % of samples). ``activations``: (B, K)."""
    if not 0 < threshold <= 1:
        raise IerfError(f"the always-on threshold is a fraction of images in (0, 1], "
                        f"got {threshold}")
    return ((activations > 0).float().mean(0) >= threshold).nonzero().flatten()


@dataclass
class ConceptDeletion:
    """Deletion curves of several importance orders on the same images (FaCT Fig. 7).

    Attributes
    ----------
    methods : importance methods, one curve each.
    counts : (S,) concepts deleted at each step, from 0 to all deletable ones.
    logits : (M, S, B) logit of each image's originally predicted class.
    predictions : (M, S, B) class predicted after the deletion; −1 where the top logits tie
        (no decision, e.g. every logit 0 once all active concepts are deleted).
    labels : (B,) ground-truth classes (the original predictions if none were given).
    importances : method → (B, K) importance used for the order.
    activations : (B, K) concept activations (Eq. 10).
    excluded : concepts never deleted (e.g. the always-on ones).
    layer : the bottleneck layer.
    """

    methods: list[str]
    counts: Tensor
    logits: Tensor
    predictions: Tensor
    labels: Tensor
    importances: dict[str, Tensor]
    activations: Tensor
    excluded: Tensor
    layer: str

    @property
    def fractions(self) -> Tensor:
        """(S,) fraction of the deletable concepts deleted at each step (the x-axis)."""
        return self.counts.double() / max(int(self.counts[-1]), 1)

    @property
    def correct(self) -> Tensor:
        """(M, S, B) whether each image is still classified as its label."""
        return self.predictions == self.labels

    def logit_curves(self) -> Tensor:
        """(M, S) mean top-1 logit over the images."""
        return self.logits.double().mean(-1)

    def accuracy_curves(self) -> Tensor:
        """(M, S) accuracy over the images."""
        return self.correct.double().mean(-1)

    def logit_auc(self) -> Tensor:
        """(M, B) per-image area under the top-1 logit curve over the fraction deleted
        (lower: the order found the important concepts sooner)."""
        return torch.trapezoid(self.logits.double(), self.fractions, dim=1)

    def accuracy_auc(self) -> Tensor:
        """(M, B) per-image area under the 0/1 correctness curve; its mean is the area
        under the accuracy curve."""
        return torch.trapezoid(self.correct.double(), self.fractions, dim=1)

    def summary(self) -> list[dict[str, Any]]:
        """Per method: mean and standard error over images of the logit and accuracy AUCs."""
        rows = []
        for i, method in enumerate(self.methods):
            row: dict[str, Any] = {"method": method}
            for name, auc in (("logit_auc", self.logit_auc()[i]),
                              ("accuracy_auc", self.accuracy_auc()[i])):
                row[name] = float(auc.mean())
                row[name + "_se"] = float(auc.std() / len(auc) ** 0.5) if len(auc) > 1 \
                    else float("nan")
            rows.append(row)
        return rows


def concept_deletion(model: object, x: Tensor, labels: Tensor | None = None,
                     methods: Sequence[str] = METHODS, *, layer: str | None = None,
                     exclude: Tensor | Sequence[int] | None = None, steps: int | None = None,
                     ig_steps: int = 16, seed: int = 0, batch_size: int = 256
                     ) -> ConceptDeletion:
    """Delete concepts from most to least important and record logits and accuracy.

    Parameters
    ----------
    model : a :class:`FaCT` network or an ``ierf.Model`` wrapping one.
    x : RGB images (B, 3, H, W) in [0, 1].
    labels : (B,) ground-truth classes for the accuracy (default: the original predictions).
    methods : importance orders, from :data:`METHODS`.
    layer : the bottleneck (needed if the model has several).
    exclude : concepts never deleted (see :func:`always_on`).
    steps : curve points beyond 0 (evenly spaced counts); ``None``: every count.
    ig_steps : Riemann points of Integrated Gradients.
    batch_size : rows (images × steps) per decoder pass.
    """
    fact, layer = _check(model, x, layer, methods)
    K = fact.bottleneck(layer).n_concepts
    excluded = torch.as_tensor([] if exclude is None else exclude, dtype=torch.long).flatten()
    if excluded.numel() and (excluded.min() < 0 or excluded.max() >= K):
        raise IerfError(f"excluded concepts must lie in [0, {K})")
    deletable = K - len(excluded.unique())
    if deletable < 1:
        raise IerfError("every concept is excluded: nothing to delete")
    if steps is not None and steps < 1:
        raise IerfError(f"steps must be at least 1 (or None for every count), got {steps}")
    with eval_mode(fact):
        tail = BottleneckTail(fact, x, layer, batch_size)
        dev = tail.logits.device
        predicted = tail.logits.argmax(1)
        labels = predicted if labels is None else labels.to(dev).long()
        if labels.shape != predicted.shape:
            raise IerfError(f"labels must be shaped ({len(x)},), got {tuple(labels.shape)}")
        importances = _importances(tail, predicted, methods, ig_steps, seed, batch_size)
        counts = torch.arange(deletable + 1) if steps is None else \
            torch.linspace(0, deletable, steps + 1).round().long().unique()
        ranks = torch.stack([_ranks(importances[m], excluded.to(dev)) for m in methods])
        logits, predictions = _delete(tail, ranks, counts.to(dev), predicted, batch_size)
    return ConceptDeletion(list(methods), counts, logits, predictions, labels.cpu(),
                           {m: v.cpu() for m, v in importances.items()},
                           per_concept(tail.codes).cpu(), excluded.unique(), layer)


def _ranks(importance: Tensor, excluded: Tensor) -> Tensor:
    """(B, K) position of each concept in the most-to-least important order; excluded
    concepts come last."""
    score = importance.double().clone()
    score[:, excluded] = -torch.inf
    order = score.argsort(dim=1, descending=True, stable=True)
    ranks = torch.empty_like(order)
    return ranks.scatter_(1, order, torch.arange(order.shape[1], device=order.device)
                          .expand_as(order).contiguous())


def _delete(tail: BottleneckTail, ranks: Tensor, counts: Tensor, classes: Tensor,
            batch_size: int) -> tuple[Tensor, Tensor]:
    """Logits of ``classes`` and predictions (M, S, B) after deleting the ``counts[s]``
    first-ranked concepts, ranks (M, B, K).

    Deleting an inactive concept (``u_k = 0`` everywhere) changes nothing, so a (method, step,
    image) row depends only on how many *active* concepts it has deleted: each distinct one
    runs once through the tail, ``batch_size`` rows at a time, and the rest are copies.
    """
    M, B, K = ranks.shape
    S = len(counts)
    dev = ranks.device
    active = per_concept(tail.codes) > 0  # codes are ≥ 0 (ReLU, TopK)
    by_rank = active[torch.arange(B, device=dev)[None, :, None], ranks.argsort(-1)].long()
    deleted = torch.cat([by_rank.new_zeros(M, B, 1), by_rank.cumsum(-1)],
                        -1)[:, :, counts].permute(0, 2, 1)  # (M, S, B) active ones deleted
    m, s, b = (t.flatten() for t in torch.meshgrid(
        torch.arange(M, device=dev), torch.arange(S, device=dev), torch.arange(B, device=dev),
        indexing="ij"))
    keys, inverse = torch.unique((m * B + b) * (K + 1) + deleted.flatten(), return_inverse=True)
    first = torch.full((len(keys),), M * S * B, device=dev).scatter_reduce(
        0, inverse, torch.arange(M * S * B, device=dev), "amin")
    logit = torch.empty(len(keys), device=dev)
    pred = torch.empty(len(keys), dtype=torch.long, device=dev)
    with torch.no_grad():
        for r in _rows(len(keys), batch_size):
            r = r.to(dev)
            i = first[r]
            keep = ranks[m[i], b[i]] >= counts[s[i], None]
            out = tail(_masked(tail.codes[b[i]], keep), b[i])
            logit[r] = out.gather(1, classes[b[i], None])[:, 0]
            tie = (out == out.amax(1, keepdim=True)).sum(1) > 1  # e.g. every logit 0
            pred[r] = torch.where(tie, -1, out.argmax(1))
    return logit[inverse].view(M, S, B).cpu(), pred[inverse].view(M, S, B).cpu()

"""The CAFE benchmark: insertion AUC per layer and ranking (IERF Sec. V-C1, Fig. 7) and the
non-locality summary (Sec. V-C2, Fig. 8), resumable.

For each basis (one layer, one token kind): ``n_latents`` latents drawn at random (seeded)
among those that fire on at least ``per_latent`` images, each with its ``per_latent`` top
images; every ranking (each attribution method's iERF, activation ranking, random) is
scored by the insertion AUC on each blank. Integrated Gradients and KernelSHAP take that
blank as their reference input (``baseline="blank"``, the default), so their maps are
computed once per blank; ``baseline="zero"`` (or another blank's name) fixes it instead.
Per-pair AUCs go into a
:class:`~ierf.bench.store.ResultStore`, one transaction per (basis, ranking), so an
interrupted run resumes; the tables report mean ± standard error over (latent, image) pairs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ierf.bench.store import ResultStore
from ierf.bench.tables import Table
from ierf.cafe.attribution import METHODS, REFERENCE_METHODS, latent_ierfs
from ierf.cafe.blanks import BLANKS, blank_canvas, model_grid
from ierf.cafe.insertion import (
    BASELINES,
    auc,
    insertion_curves,
    patch_scores,
    pool_to_patches,
)
from ierf.cafe.latents import (
    READOUTS,
    LatentPairs,
    check_basis,
    latent_activations,
    select_pairs,
    token_positions,
)
from ierf.cafe.nonlocality import NAMES, nonlocality
from ierf.concepts.basis import ConceptBasis
from ierf.errors import IerfError, unknown_name
from ierf.models.model import Model

RANKINGS = (*METHODS, *BASELINES)


@dataclass(frozen=True)
class CafeBench:
    """Settings of a CAFE benchmark run (all stored with the results).

    ``baseline``: the reference input of IG and KernelSHAP — ``"blank"`` (each blank of
    ``blanks`` in turn, the same image the insertion test starts from) or one blank's name
    for every blank. The non-locality statistics use the first blank's maps.
    """

    rankings: Sequence[str] = RANKINGS
    blanks: Sequence[str] = ("zero",)
    baseline: str = "blank"
    n_latents: int = 16
    per_latent: int = 4
    readout: str = "peak"
    steps: int = 16
    ig_steps: int = 16
    radius: int = 1
    seed: int = 0
    locality_method: str = "attnlrp"

    def __post_init__(self) -> None:
        for r in self.rankings:
            if r not in RANKINGS:
                raise unknown_name("ranking", r, RANKINGS)
        for b in self.blanks:
            if b not in BLANKS:
                raise unknown_name("blank", b, BLANKS)
        if self.baseline not in ("blank", *BLANKS):
            raise unknown_name("IG / KernelSHAP baseline", self.baseline, ("blank", *BLANKS))
        if self.readout not in READOUTS:
            raise unknown_name("readout", self.readout, READOUTS)
        if self.locality_method not in METHODS:
            raise unknown_name("CAFE attribution method", self.locality_method, METHODS)
        if min(self.n_latents, self.per_latent, self.steps) < 1:
            raise IerfError("n_latents, per_latent and steps must be ≥ 1")


def basis_label(basis: ConceptBasis) -> str:
    """``<layer> <tokens>``: a basis' column in the tables."""
    return f"{basis.layer} {basis.tokens}"


def choose_latents(acts: torch.Tensor, positions: torch.Tensor, n: int, per_latent: int,
                   readout: str, seed: int) -> torch.Tensor:
    """``n`` latents drawn (seeded) among those that fire on ``≥ per_latent`` images."""
    values = acts.max(1).values if readout == "peak" else acts.sum(1)
    eligible = ((values > 0).sum(0) >= per_latent).nonzero().flatten()
    if len(eligible) == 0:
        raise IerfError(f"image set too small: no latent fires on {per_latent} of these "
                        f"{acts.shape[0]} images; give more images or a smaller per_latent")
    g = torch.Generator().manual_seed(seed)
    return eligible[torch.randperm(len(eligible), generator=g)[:n]].sort().values


def latent_pairs(model: Model, basis: ConceptBasis, x: torch.Tensor, bench: CafeBench
                 ) -> LatentPairs:
    """The benchmark's (latent, image) pairs of ``basis`` on images ``x``."""
    acts = latent_activations(model, basis, x)
    positions = token_positions(basis, model.pfvs(x[:1], basis.layer)[basis.layer])
    latents = choose_latents(acts, positions, bench.n_latents, bench.per_latent,
                             bench.readout, bench.seed)
    return select_pairs(acts, positions, latents, bench.per_latent, bench.readout)


@dataclass
class BasisResults:
    """Per-pair results of one basis: ``auc[(ranking, blank)]`` (P,), mean curves, and the
    non-locality statistics of the ``locality_method`` iERFs (P,) each."""

    label: str
    is_cls: torch.Tensor
    auc: dict[tuple[str, str], torch.Tensor] = field(default_factory=dict)
    curves: dict[tuple[str, str], torch.Tensor] = field(default_factory=dict)
    locality: dict[str, torch.Tensor] = field(default_factory=dict)


def run_basis(model: Model, basis: ConceptBasis, x: torch.Tensor, bench: CafeBench,
              store: ResultStore | None = None,
              log: Callable[[str], None] = lambda _: None,
              pairs: LatentPairs | None = None) -> BasisResults:
    """Score every ranking of ``bench`` on ``basis`` (reusing what ``store`` holds) on its
    ``pairs`` (default: :func:`latent_pairs`)."""
    check_basis(model, basis)
    label = basis_label(basis)
    if pairs is None:
        pairs = latent_pairs(model, basis, x, bench)
    result = BasisResults(label, pairs.is_cls)
    grid = model_grid(model, basis.layer)
    blanks = {b: blank_canvas(x, b, grid) for b in bench.blanks}
    rankings = list(dict.fromkeys([*bench.rankings, bench.locality_method]))
    for ranking in rankings:
        metrics = [f"auc/{b}" for b in bench.blanks] + [f"curve/{b}" for b in bench.blanks]
        if ranking == bench.locality_method:
            metrics += [f"locality/{n}" for n in NAMES]
        if store is not None and store.done(label, ranking):
            stored = {m: torch.tensor(store.scores(label, ranking, m)) for m in metrics}
        else:
            log(f"{label}: {ranking} on {len(pairs)} (latent, image) pairs")
            stored = _score(model, basis, x, pairs, ranking, blanks, bench, grid)
            if store is not None:
                store.add(label, ranking, 0, {m: v.tolist() for m, v in stored.items()})
        if ranking in bench.rankings:
            for b in bench.blanks:
                result.auc[(ranking, b)] = stored[f"auc/{b}"]
                result.curves[(ranking, b)] = stored[f"curve/{b}"]
        if ranking == bench.locality_method:
            result.locality = {n: stored[f"locality/{n}"] for n in NAMES}
    return result


def _score(model: Model, basis: ConceptBasis, x: torch.Tensor, pairs: LatentPairs,
           ranking: str, blanks: dict[str, torch.Tensor], bench: CafeBench,
           grid: tuple[int, int]) -> dict[str, torch.Tensor]:
    """Per-pair AUC and mean curve on each blank (and locality for an iERF ranking)."""
    out: dict[str, torch.Tensor] = {}
    scores: dict[str, torch.Tensor] = {}
    if ranking in METHODS:
        maps: dict[str, torch.Tensor] = {}
        for name in blanks:
            reference = name if bench.baseline == "blank" else bench.baseline
            if ranking not in REFERENCE_METHODS:
                reference = "zero"                       # unused: one map for all blanks
            if reference not in maps:
                maps[reference] = latent_ierfs(model, basis, x, pairs, ranking,
                                               baselines=reference, n_steps=bench.ig_steps)
            scores[name] = patch_scores(model, basis, x, pairs, maps[reference])
        if ranking == bench.locality_method:
            first = pool_to_patches(next(iter(maps.values())), grid)
            stats = nonlocality(first, pairs.position, grid, bench.radius)
            out.update({f"locality/{n}": v for n, v in stats.items()})
    else:
        fixed = patch_scores(model, basis, x, pairs, ranking, seed=bench.seed)
        scores = dict.fromkeys(blanks, fixed)
    for name, blank in blanks.items():
        a = torch.full((len(pairs),), float("nan"))
        curve = torch.full((bench.steps + 1,), float("nan"))
        valid = torch.isfinite(scores[name]).all(1)
        if valid.any():
            c = insertion_curves(model, basis, x, pairs[valid], scores[name][valid], blank,
                                 bench.steps)
            a[valid] = auc(c).cpu()
            curve = c.mean(0).cpu()
        out[f"auc/{name}"], out[f"curve/{name}"] = a, curve
    return out


def run(model: Model, bases: Sequence[ConceptBasis], x: torch.Tensor, bench: CafeBench,
        store_path: str | Path | None = None, images: str = "",
        log: Callable[[str], None] = lambda _: None) -> list[BasisResults]:
    """:func:`run_basis` for each basis, resuming from ``store_path`` (an SQLite file).

    Every basis is checked and its pairs chosen before the store is opened, so bad input
    (another model's basis, a layer the model lacks or of another width, too few images)
    leaves no file behind to block the corrected run."""
    if not bases:
        raise IerfError("give at least one SAE basis")
    labels = [basis_label(b) for b in bases]
    if len(set(labels)) != len(labels):
        raise IerfError(f"two bases of the same layer and tokens: {labels}")
    for basis in bases:
        check_basis(model, basis)
    pairs = [latent_pairs(model, basis, x, bench) for basis in bases]
    store = None
    if store_path is not None:
        settings = {"model": model.name, "images": images, "n_images": len(x),
                    "bases": {basis_label(b): b.digest() for b in bases}, **asdict(bench)}
        store = ResultStore(store_path, settings)
    try:
        return [run_basis(model, basis, x, bench, store, log, p)
                for basis, p in zip(bases, pairs)]
    finally:
        if store is not None:
            store.close()


# -- tables -------------------------------------------------------------------------------


def _stats(values: torch.Tensor) -> tuple[float, float, int]:
    v = values[torch.isfinite(values)].double()
    n = len(v)
    if n == 0:
        return float("nan"), float("nan"), 0
    return v.mean().item(), (v.std() / n ** 0.5).item() if n > 1 else float("nan"), n


def insertion_table(results: Sequence[BasisResults], rankings: Sequence[str], blank: str,
                    model: str = "") -> Table:
    """Rankings × bases: insertion AUC, mean ± SEM over (latent, image) pairs."""
    shape = (len(rankings), len(results))
    mean, se, n = np.full(shape, np.nan), np.full(shape, np.nan), np.zeros(shape, int)
    for c, res in enumerate(results):
        for r, ranking in enumerate(rankings):
            if (ranking, blank) in res.auc:
                mean[r, c], se[r, c], n[r, c] = _stats(res.auc[(ranking, blank)])
    notes = [(f"Insertion AUC of z_k (÷ its value on the image) over the fraction of patches "
              f"inserted onto the '{blank}' blank; mean ± SEM over (latent, image) pairs. "
              "activation: patches ranked by the latent's own token activation (none for CLS "
              "latents); random: chance.")]
    return Table(f"CAFE insertion AUC · {model} · blank={blank}", list(rankings),
                 [r.label for r in results], ["higher"] * len(results), mean, se, n, notes)


def locality_table(results: Sequence[BasisResults], method: str, model: str = "") -> Table:
    """Bases × non-locality statistics (patch latents; CLS latents as their own rows)."""
    rows, stats = [], []
    for res in results:
        for kind, mask in (("patch", ~res.is_cls), ("CLS", res.is_cls)):
            if mask.any():
                rows.append(res.label if kind == "patch" or "cls" in res.label
                            else f"{res.label} (CLS)")
                stats.append({n: _stats(v[mask]) for n, v in res.locality.items()})
    shape = (len(rows), len(NAMES))
    mean, se, n = np.full(shape, np.nan), np.full(shape, np.nan), np.zeros(shape, int)
    for r, s in enumerate(stats):
        for c, name in enumerate(NAMES):
            mean[r, c], se[r, c], n[r, c] = s[name]
    notes = [(f"{method} iERFs, positive part, per patch. outside: share of iERF mass outside "
              "the 3×3 patches around the firing token (chance_outside: a uniform map's); "
              "distance: firing token to iERF centre of mass (patches); spread: mean distance "
              "of the mass from its centre; outside_self: mass outside the 3×3 window of the "
              "iERF's own peak. CLS latents have no firing token. Bold: the largest (no "
              "value is better than another here).")]
    return Table(f"CAFE non-locality · {model}", rows, list(NAMES), ["higher"] * len(NAMES),
                 mean, se, n, notes)


def ranking_order(results: Sequence[BasisResults], rankings: Sequence[str], blank: str
                  ) -> dict[str, list[str]]:
    """Per basis, the rankings sorted by mean AUC on ``blank`` (best first)."""
    out = {}
    for res in results:
        means = {r: _stats(res.auc[(r, blank)])[0] for r in rankings if (r, blank) in res.auc}
        out[res.label] = sorted((r for r in means if np.isfinite(means[r])),
                                key=lambda r: -means[r])
    return out


def kendall_tau(a: Sequence[str], b: Sequence[str]) -> float:
    """Kendall's τ between two orderings of the same items (1: identical, −1: reversed)."""
    items = [i for i in a if i in b]
    ra = torch.tensor([a.index(i) for i in items], dtype=torch.float64)
    rb = torch.tensor([b.index(i) for i in items], dtype=torch.float64)
    sa = torch.sign(ra[:, None] - ra[None])
    sb = torch.sign(rb[:, None] - rb[None])
    pairs = len(items) * (len(items) - 1)
    return float((sa * sb).sum() / pairs) if pairs else float("nan")

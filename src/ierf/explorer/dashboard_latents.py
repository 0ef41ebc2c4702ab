"""The CAFE latent dashboard's data, from the folder ``ierf cafe ground`` wrote.

Per latent (IERF Sec. V, Figs. 5–8): its top images by activation, each with the
**activation overlay** (the latent on every patch token, the firing token ``p*`` boxed in
the page: the activation-ranking view) beside the **iERF overlay** (Eq. 10); the
non-locality statistics of :mod:`ierf.cafe.nonlocality`; CLS latents marked (no firing
patch: only the iERF places them); optionally the insertion curves of Sec. V-C1 (Fig. 7)
for the iERF, activation and random rankings, with their AUC; and the PNG panel (Fig. 8).

The grounding folder holds the maps but not the images or the model; its ``grounding.json``
says where they came from (basis folder, weights, ``--images`` / ``--n``, readout, blank),
so by default the overlays are drawn over the images and the insertion curves computed with
those; ``basis`` / ``images`` / ``n`` given explicitly take their place. A folder written
before ``grounding.json`` existed needs them given, or its maps are drawn on grey.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ierf.cafe.ground import PROVENANCE, read_provenance
from ierf.cafe.nonlocality import NAMES
from ierf.concepts.basis import CONFIG_FILE
from ierf.errors import IerfError
from ierf.explorer.dashboard_images import ImageTable, fit_size, heat_overlay
from ierf.explorer.dashboard_page import Dashboard, check_out, payload, write_page

MAP_KEYS = ("ierfs", "activations", "latent", "image", "position")
RANKINGS = ("ierf", "activation", "random")


@dataclass
class GroundingFiles:
    """What ``ierf cafe ground`` wrote: ``latents`` and ``pairs`` (CSV rows), ``maps``
    (``ierfs`` (P, H, W), ``activations`` (P, N), ``latent``, ``image``, ``position``, in
    the order of ``pairs``), the PNG ``panels`` by latent and the ``provenance``
    (``grounding.json``; ``None`` in older folders)."""

    folder: Path
    latents: list[dict[str, Any]]
    pairs: list[dict[str, Any]]
    maps: dict[str, torch.Tensor]
    panels: dict[int, Path]
    provenance: dict[str, Any] | None = None


def read_grounding(folder: str | Path) -> GroundingFiles:
    """The grounding in ``folder``, checked for what the dashboard relies on."""
    folder = Path(folder)
    hint = "give a folder written by `ierf cafe ground BASIS --images ... -o FOLDER`"
    missing = [n for n in ("latents.csv", "pairs.csv", "maps.safetensors")
               if not (folder / n).is_file()]
    if missing:
        raise IerfError(f"{folder} is not a CAFE grounding (no {', '.join(missing)}); {hint}")
    latents, pairs = _csv(folder / "latents.csv"), _csv(folder / "pairs.csv")
    try:
        maps = load_file(folder / "maps.safetensors")
    except (SafetensorError, OSError) as e:
        raise IerfError(f"{folder / 'maps.safetensors'} is unreadable ({e}); run `ierf cafe "
                        "ground` again") from None
    lacking = [k for k in MAP_KEYS if k not in maps]
    if lacking:
        raise IerfError(f"{folder / 'maps.safetensors'} lacks {', '.join(lacking)}: written by "
                        "another ierf version; run `ierf cafe ground` again")
    if not latents or not pairs:
        raise IerfError(f"{folder} grounds no latent (empty latents.csv or pairs.csv); {hint}")
    P = len(pairs)
    if any(len(maps[k]) != P for k in MAP_KEYS):
        raise IerfError(f"{folder}: pairs.csv has {P} rows but maps.safetensors holds "
                        f"{len(maps['ierfs'])} maps; run `ierf cafe ground` again")
    for row in (*latents, *pairs):
        if "latent" not in row:
            raise IerfError(f"{folder}: a CSV row has no latent column; run `ierf cafe "
                            "ground` again")
    panels = {int(p.stem.split("-", 1)[1]): p for p in folder.glob("latent-*.png")
              if p.stem.split("-", 1)[1].isdigit()}
    return GroundingFiles(folder, latents, pairs, maps, panels, read_provenance(folder))


def _csv(path: Path) -> list[dict[str, Any]]:
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    return [{k: v if k == "image" else _value(v) for k, v in r.items()} for r in rows]


def _value(text: str) -> Any:
    """A CSV cell as int, float (NaN → ``None``) or text."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        x = float(text)
    except ValueError:
        return text
    return x if math.isfinite(x) else None


@dataclass
class Grounded:
    """The model side of a grounding: the model, its basis, the grounded images ``x``
    (model inputs, one per distinct image) and each pair's index into ``x``."""

    model: Any
    basis: Any
    x: torch.Tensor
    local: torch.Tensor


def sources(files: GroundingFiles, basis: str | Path | None, images: str | None,
            n: int | None) -> tuple[str | Path | None, str | None, int | None]:
    """The basis, ``--images`` and ``--n`` to reload: those given, else those the grounding's
    provenance records (a recorded basis must still be where it was)."""
    rec = files.provenance
    if rec is None:
        return basis, images, n
    if basis is None:
        basis = Path(rec["basis"]["resolved"])
        if not (basis / CONFIG_FILE).is_file():
            raise IerfError(f"the basis {rec['basis']['path']} that {files.folder} was grounded "
                            f"with is no longer at {basis}: pass --basis with its new folder")
    if images is None:
        images, n = rec["images"], rec["n"] if n is None else n
    return basis, images, n


def load_grounded(files: GroundingFiles, basis: str | Path, images: str, n: int | None
                  ) -> Grounded:
    """Reload the model (with the weights the provenance records, else pretrained), ``basis``
    and the images a grounding was made on; the basis must have the recorded weights
    fingerprint and the pairs' image names must be those of ``images``."""
    from ierf.cafe.streaming import SourceImages
    from ierf.concepts.basis import ConceptBasis
    from ierf.data.sources import image_ids, parse_source
    from ierf.models import load_model

    b = ConceptBasis.load(basis)
    rec = files.provenance or {}
    if rec and b.fingerprint != rec["fingerprint"]:
        raise IerfError(f"{basis} is a basis of other {b.model} weights than those {files.folder} "
                        f"was grounded with (fingerprint {b.fingerprint}, not "
                        f"{rec['fingerprint']}): pass --basis with the basis of `ierf cafe "
                        "ground`")
    kinds = {str(r.get("tokens")) for r in files.latents}
    if kinds != {b.tokens}:
        raise IerfError(f"{files.folder} grounds {'/'.join(sorted(kinds))} latents, {basis} is "
                        f"a basis of {b.tokens} tokens: give the basis of `ierf cafe ground`")
    if int(files.maps["latent"].max()) >= b.n_concepts:
        raise IerfError(f"{files.folder} grounds latent {int(files.maps['latent'].max())}, "
                        f"{basis} has {b.n_concepts}: give the basis of `ierf cafe ground`")
    model = load_model(b.model, weights=rec.get("weights", "pretrained"))
    source = parse_source(images).resolved(0, "val")
    stream = SourceImages(source, image_ids(source, n), model)
    ids, local = files.maps["image"].unique(return_inverse=True)
    if len(ids) and ids.max() >= len(stream):
        raise IerfError(f"the grounding uses image {ids.max().item()} of its stream, but "
                        f"{images} gives {len(stream)} images: give the --images and --n of "
                        "`ierf cafe ground`")
    names = [str(stream.ids[i]) for i in files.maps["image"].tolist()]
    wrong = [(p["image"], m) for p, m in zip(files.pairs, names) if str(p["image"]) != m]
    if wrong:
        raise IerfError(f"the grounding's image {wrong[0][0]!r} is {wrong[0][1]!r} in "
                        f"{images}: give the --images and --n of `ierf cafe ground`")
    x = torch.cat([stream.load(i, i + 1) for i in ids.tolist()])
    return Grounded(model, b, x, local)


def insertion(grounded: Grounded, files: GroundingFiles, steps: int, blank: str,
              readout: str) -> dict[str, torch.Tensor]:
    """Insertion curves ``(P, steps + 1)`` (IERF Sec. V-C1) of every pair under each of
    :data:`RANKINGS` (NaN rows where a ranking is undefined: activation for CLS pairs)."""
    from ierf.cafe.insertion import insertion_curves, patch_scores
    from ierf.cafe.latents import LatentPairs

    m = files.maps
    act = torch.tensor([math.nan if p["activation"] is None else float(p["activation"])
                        for p in files.pairs])
    pairs = LatentPairs(grounded.local, m["latent"].long(), m["position"].long(), act, readout)
    out = {}
    for ranking in RANKINGS:
        by = m["ierfs"] if ranking == "ierf" else ranking
        scores = patch_scores(grounded.model, grounded.basis, grounded.x, pairs, by)
        curves = insertion_curves(grounded.model, grounded.basis, grounded.x, pairs,
                                  scores.nan_to_num(0), blank, steps)
        out[ranking] = torch.where(scores.isnan().all(1, keepdim=True), float("nan"), curves)
    return out


def overlays(files: GroundingFiles, grounded: Grounded | None, table: ImageTable,
             size: int = 160) -> tuple[list[int], list[int], tuple[int, int]]:
    """Each pair's activation overlay and iERF overlay (picture indices) and the patch grid."""
    m = files.maps
    ierfs, acts = m["ierfs"].float(), m["activations"].float()
    if grounded is not None:
        from ierf.cafe.blanks import model_grid

        grid = model_grid(grounded.model, grounded.basis.layer)
        shown = grounded.model.denormalize(grounded.x)[grounded.local]
    else:
        side = math.isqrt(acts.shape[1])
        grid = (side, acts.shape[1] // max(side, 1))
        shown = torch.full((len(ierfs), 3, *ierfs.shape[-2:]), 0.5)
    act_maps = acts.nan_to_num(0).reshape(len(acts), *grid)
    a = table.add(fit_size(heat_overlay(shown, act_maps), size))
    e = table.add(fit_size(heat_overlay(shown, ierfs, percentile=99.5), size))
    return a, e, grid


def latent_set(files: GroundingFiles, table: ImageTable, grounded: Grounded | None = None,
               curves: dict[str, torch.Tensor] | None = None) -> dict[str, Any]:
    """The grounding as one dashboard set."""
    from ierf.cafe.insertion import auc

    act_pics, ierf_pics, grid = overlays(files, grounded, table)
    aucs = {r: auc(c.nan_to_num(0)).masked_fill(c.isnan().any(1), float("nan"))
            for r, c in (curves or {}).items()}
    by_latent: dict[int, list[dict[str, Any]]] = {}
    for j, p in enumerate(files.pairs):
        pair = {"image": str(p["image"]), "position": p.get("position"),
                "activation": p.get("activation"), "act": act_pics[j], "ierf": ierf_pics[j],
                "stats": {n: p.get(n) for n in NAMES}}
        if curves:
            pair["curves"] = {r: c[j].tolist() for r, c in curves.items()}
            pair["auc"] = {r: v[j].item() for r, v in aucs.items()}
        by_latent.setdefault(int(p["latent"]), []).append(pair)
    items = []
    for row in files.latents:
        k = int(row["latent"])
        mine = by_latent.get(k, [])
        cls = row.get("tokens") == "cls" or any((q["position"] or 0) < 0 for q in mine)
        item = {"k": k, "label": f"{'CLS latent' if cls else 'latent'} {k}", "cls": cls,
                "fires_on": row.get("fires_on"), "mean_activation": row.get("mean_activation"),
                "top_activation": row.get("top_activation"),
                "stats": {n: row.get(n) for n in NAMES}, "pairs": mine,
                "panel": table.add_file(files.panels[k]) if k in files.panels else None}
        if curves:
            item["auc"] = {r: _mean([q["auc"][r] for q in mine]) for r in curves}
        items.append(item)
    basis = grounded.basis if grounded is not None else None
    tokens = sorted({str(r.get("tokens")) for r in files.latents})
    return {"id": files.folder.name, "model": basis.model if basis else None,
            "layer": basis.layer if basis else None, "tokens": "/".join(tokens),
            "grid": list(grid), "images_shown": grounded is not None,
            "insertion": None if not curves else
            {"rankings": list(curves), "steps": len(next(iter(curves.values()))[0]) - 1},
            "items": items}


def _mean(values: list[float | None]) -> float | None:
    v = [x for x in values if x is not None and math.isfinite(x)]
    return sum(v) / len(v) if v else None


def export_latents(grounding: str | Path, out: str | Path, *, basis: str | Path | None = None,
                   images: str | None = None, n: int | None = None, steps: int = 16,
                   blank: str | None = None, readout: str | None = None,
                   pictures: Literal["embed", "folder"] = "embed",
                   title: str | None = None) -> Dashboard:
    """Write the latent dashboard of the ``grounding`` folder (``ierf cafe ground -o``).

    Parameters
    ----------
    basis, images, n : the basis folder and the ``--images`` / ``--n`` given to ``ierf cafe
        ground`` (default: those its ``grounding.json`` records): overlays over the images and
        insertion curves (``steps`` > 0, on ``blank``).
    blank, readout : default: those of ``ierf cafe ground`` (``zero``, ``peak`` for a folder
        without ``grounding.json``).
    pictures : ``"embed"`` (one file) or ``"folder"`` (``<out stem>_files/`` beside it).
    """
    out = check_out(out)
    files = read_grounding(grounding)
    basis, images, n = sources(files, basis, images, n)
    if (basis is None) != (images is None):
        raise IerfError(f"give both --basis and --images (those of `ierf cafe ground`) to draw "
                        f"the overlays over the images, or neither ({files.folder} has no "
                        f"{PROVENANCE} saying what they were)")
    rec = files.provenance or {}
    blank, readout = blank or rec.get("blank", "zero"), readout or rec.get("readout", "peak")
    grounded = load_grounded(files, basis, images, n) if basis is not None else None
    curves = insertion(grounded, files, steps, blank, readout) if grounded and steps else None
    folder = out.parent / f"{out.stem}_files" if pictures == "folder" else None
    table = ImageTable(pictures, folder)
    data = latent_set(files, table, grounded, curves)
    notes = [] if grounded else [("maps drawn on grey, no insertion curves: give --basis and "
                                 "--images (those of `ierf cafe ground`) to draw them over "
                                 "the images and test insertion")]
    head = " ".join(str(v) for v in (data["model"], data["layer"]) if v) or files.folder.name
    page = payload("latents", [data], table.urls, title or f"{head} · ierf CAFE latents", notes)
    write_page(out, page)
    return Dashboard(out, 1, len(data["items"]), len(table.urls), folder, notes)

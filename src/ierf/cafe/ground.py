"""``ground``: label SAE latents with their iERFs (CAFE, IERF Sec. V-B, Fig. 6 and 8).

For each latent: its top images over an image stream (:mod:`ierf.cafe.scan`), its
activation on every patch token there (the activation-ranking view), its iERF on each
(Eq. 10) and the non-locality of that evidence (:mod:`ierf.cafe.nonlocality`). Everything
is computed before anything is written; :meth:`Grounding.write` then puts one PNG panel per
latent, the statistics (``latents.csv``, ``pairs.csv``), the maps and the grounding's
provenance (``grounding.json``: what ``ierf cafe report`` needs to reload the model, the basis
and the images) into a folder, each file atomically.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from ierf.cafe.attribution import latent_ierfs
from ierf.cafe.blanks import BLANKS, model_grid
from ierf.cafe.insertion import patch_scores, pool_to_patches
from ierf.cafe.latents import LatentPairs, check_basis, check_latents
from ierf.cafe.nonlocality import NAMES, nonlocality
from ierf.cafe.panels import save_latent_panel
from ierf.cafe.scan import LatentScan, scan
from ierf.cafe.streaming import ImageStream
from ierf.concepts.basis import ConceptBasis
from ierf.errors import IerfError, unknown_name
from ierf.io import atomic_path
from ierf.models.model import Model

#: ``grounding.json``: the format name and the version :func:`read_provenance` reads
PROVENANCE, FORMAT, FORMAT_VERSION = "grounding.json", "ierf-cafe-grounding", 1


@dataclass
class Grounding:
    """Grounded latents: ``pairs`` index ``images`` (model inputs of stream images
    ``image_ids``); ``ierfs`` (P, H, W), ``activations`` (P, N) per patch token (NaN for CLS
    pairs), ``stats`` name → (P,) non-locality; ``blank`` the reference input of the iERFs."""

    basis: ConceptBasis
    method: str
    scan: LatentScan
    latents: torch.Tensor
    pairs: LatentPairs
    images: torch.Tensor
    image_ids: torch.Tensor
    ierfs: torch.Tensor
    activations: torch.Tensor
    stats: dict[str, torch.Tensor]
    blank: str = "zero"

    def provenance(self) -> dict[str, object]:
        """What was grounded and how: format, model and weights fingerprint, layer, token
        kind, method, readout, blank and the latents (the sources are the caller's)."""
        return {"format": FORMAT, "format_version": FORMAT_VERSION, "model": self.basis.model,
                "fingerprint": self.basis.fingerprint, "layer": self.basis.layer,
                "tokens": self.basis.tokens, "method": self.method,
                "readout": self.pairs.readout, "blank": self.blank,
                "latents": self.latents.tolist()}

    def latent_rows(self) -> list[dict[str, object]]:
        """One summary per latent: how often and how strongly it fires, and the mean
        non-locality of its top images' iERFs."""
        rows = []
        for k in self.latents.tolist():
            mine = self.pairs.latent == k
            row: dict[str, object] = {
                "latent": k, "tokens": self.basis.tokens,
                "fires_on": self.scan.active[k].item() / self.scan.n_images,
                "mean_activation": self.scan.mean[k].item(),
                "top_activation": self.scan.values[0, k].item(), "n_top": int(mine.sum())}
            for name in NAMES:
                v = self.stats[name][mine]
                v = v[torch.isfinite(v)]
                row[name] = v.mean().item() if len(v) else float("nan")
            rows.append(row)
        return rows

    def write(self, out: str | Path, model: Model, image_names: list[str] | None = None,
              sources: dict[str, object] | None = None) -> list[Path]:
        """Write ``latent-<k>.png`` panels, ``latents.csv``, ``pairs.csv``, ``maps.safetensors``
        (``ierfs`` (P, H, W), ``activations`` (P, N), ``latent``, ``image``, ``position``, in
        the order of ``pairs.csv``) and last ``grounding.json`` (:meth:`provenance` with
        ``sources``: where the basis, the weights and the images came from) into ``out``."""
        out = Path(out)
        grid = model_grid(model, self.basis.layer)
        shown = model.denormalize(self.images)
        written = []
        for k in self.latents.tolist():
            mine = (self.pairs.latent == k).nonzero().flatten()
            local = self.pairs.image[mine]
            captions = [f"z={a:.3g} out={o:.2f}" if torch.isfinite(o) else f"z={a:.3g}"
                        for a, o in zip(self.pairs.activation[mine].tolist(),
                                        self.stats["outside"][mine])]
            title = (f"{self.basis.model} {self.basis.layer} {self.basis.tokens} latent {k} — "
                     f"top images by activation; iERF by {self.method}")
            written.append(save_latent_panel(
                shown[local], self.activations[mine], self.ierfs[mine],
                self.pairs.position[mine], grid, out / f"latent-{k}.png", title, captions))
        written.append(_write_csv(out / "latents.csv", self.latent_rows()))
        names = image_names or [str(i) for i in self.image_ids.tolist()]
        pair_rows = [{"latent": int(k), "image": names[int(i)], "position": int(p),
                      "activation": float(a), **{n: float(self.stats[n][j]) for n in NAMES}}
                     for j, (k, i, p, a) in enumerate(zip(
                         self.pairs.latent, self.pairs.image, self.pairs.position,
                         self.pairs.activation))]
        written.append(_write_csv(out / "pairs.csv", pair_rows))
        tensors = {"ierfs": self.ierfs, "activations": self.activations,
                   "latent": self.pairs.latent, "image": self.image_ids[self.pairs.image],
                   "position": self.pairs.position}
        with atomic_path(out / "maps.safetensors") as tmp:
            save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp)
        written.append(out / "maps.safetensors")
        with atomic_path(out / PROVENANCE) as tmp:
            Path(tmp).write_text(json.dumps({**self.provenance(), **(sources or {})},
                                            indent=1) + "\n")
        written.append(out / PROVENANCE)
        return written


def read_provenance(folder: str | Path) -> dict[str, object] | None:
    """The ``grounding.json`` of a grounding ``folder``; ``None`` for one written before it
    existed."""
    path = Path(folder) / PROVENANCE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise IerfError(f"{path} is unreadable ({e}); run `ierf cafe ground` again") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise IerfError(f"{path} is not the provenance of a CAFE grounding; run `ierf cafe "
                        "ground` again")
    if data.get("format_version") != FORMAT_VERSION:
        raise IerfError(f"{path} has format version {data.get('format_version')}, this ierf "
                        f"reads {FORMAT_VERSION}: use the ierf that wrote it or run `ierf cafe "
                        "ground` again")
    lacking = [k for k in ("basis", "weights", "images", "n", "fingerprint", "readout", "blank")
               if k not in data]
    if lacking or not isinstance(data["basis"], dict) or "resolved" not in data["basis"]:
        raise IerfError(f"{path} lacks {', '.join(lacking) or 'basis.resolved'}; run `ierf "
                        "cafe ground` again")
    return data


def ground(model: Model, basis: ConceptBasis, images: ImageStream,
           latents: list[int] | torch.Tensor | None = None, n_latents: int = 8, top: int = 4,
           method: str = "attnlrp", readout: str = "peak", radius: int = 1,
           blank: str = "zero", batch_size: int = 64, progress: bool = False) -> Grounding:
    """Ground ``latents`` of ``basis`` (default: ``n_latents`` chosen by
    :meth:`~ierf.cafe.scan.LatentScan.most_selective`) with their ``top`` images of ``images``
    and ``method`` iERFs (``blank``: the reference input of IG / KernelSHAP, made from the
    grounded images as :func:`~ierf.cafe.blanks.blank_canvas` makes it)."""
    check_basis(model, basis)
    wanted = None if latents is None else check_latents(basis, latents)
    if top < 1:
        raise IerfError(f"top must be ≥ 1, got {top}")
    if blank not in BLANKS:
        raise unknown_name("blank", blank, BLANKS)
    if len(images) < top:
        raise IerfError(f"image set too small: {len(images)} images for the top {top} of "
                        "each latent; give more images or a smaller --top")
    found = scan(model, basis, images, top, readout, batch_size, progress)
    if wanted is None:
        wanted = found.most_selective(n_latents, top)
    silent = wanted[found.active[wanted] == 0]
    if len(silent):
        raise IerfError(f"latent {silent[0].item()} never fires on these {len(images)} "
                        "images; give more images or other latents")
    pairs = found.pairs(wanted)
    ids, local = pairs.image.unique(return_inverse=True)
    x = torch.cat([images.load(i, i + 1) for i in ids.tolist()]).to(model.device)
    pairs = LatentPairs(local, pairs.latent, pairs.position, pairs.activation, readout)
    maps = latent_ierfs(model, basis, x, pairs, method, baselines=blank)
    grid = model_grid(model, basis.layer)
    acts = patch_scores(model, basis, x, pairs, "activation") if basis.tokens != "cls" else \
        torch.full((len(pairs), grid[0] * grid[1]), float("nan"))
    stats = nonlocality(pool_to_patches(maps, grid), pairs.position, grid, radius)
    return Grounding(basis, method, found, wanted, pairs, x, ids, maps, acts, stats, blank)


def _write_csv(path: Path, rows: list[dict[str, object]]) -> Path:
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    with atomic_path(path) as tmp:
        Path(tmp).write_text(buf.getvalue())
    return path

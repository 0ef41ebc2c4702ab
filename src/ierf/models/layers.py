"""The table of ``ierf layers MODEL``: each analysable layer's grid and channels, and which
layer each method uses by default."""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from ierf.errors import IerfError
from ierf.models.model import Model

#: modules whose output is their input (listed only with ``passthrough=True``)
PASSTHROUGH = (nn.Identity, nn.Dropout, nn.Dropout2d)


def default_layers(model: Model) -> dict[str, list[str]]:
    """Layer → the methods that read it by default: the encoder output (SRD's ``L``,
    ``srd-low``, the CAMs) and the stride-8 layer (``srd-high``, ``*-high`` CAMs)."""
    marks: dict[str, list[str]] = {}
    marks.setdefault(model.encoder_layer(), []).append("srd, srd-low, gradcam & CAMs")
    with contextlib.suppress(IerfError):      # a model without a stride-8 layer has no -high
        marks.setdefault(model.layer_at_stride(8), []).append("srd-high, -high CAMs")
    return marks


def layer_table(model: Model, passthrough: bool = False) -> list[str]:
    """One line per layer: name, module type, PFV grid, channels, default-use marks."""
    grids = model.layer_grids()
    modules = dict(model.net.named_modules())
    names = [n for n in grids if passthrough or not _passes_through(modules[n])]
    with torch.no_grad():
        pfvs = model.pfvs(torch.zeros(1, *model.input_size, device=model.device), names)
    marks = default_layers(model)
    width = max(len(n) for n in names)
    lines = [f"{'layer':{width}s}  {'module':18s} {'grid':>7s} {'channels':>8s}"]
    for n in names:
        h, w = grids[n]
        note = f"  ← {'; '.join(marks[n])}" if n in marks else ""
        lines.append(f"{n:{width}s}  {type(modules[n]).__name__[:18]:18s} {f'{h}×{w}':>7s} "
                     f"{pfvs[n].vectors.shape[-1]:>8d}{note}")
    return lines


def _passes_through(module: nn.Module) -> bool:
    return isinstance(module, PASSTHROUGH) or type(module).__name__ == "DropPath"

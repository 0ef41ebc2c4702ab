"""Building a PFV–iERF atlas over many images: batched, resumable, sharded over ranks.

IERF Sec. III-D: one (or ``samples_per_image``) relevance-weighted PFV per image and layer,
each with its iERF (Eq. 10), as in GIG Sec. 3.1. Images come from the synthetic benchmark,
the bundled photos or a folder. Under ``torchrun`` (``torch.distributed`` initialised) the
pending images are split round-robin over the ranks, each rank writing its own shards into
the one manifest (:mod:`ierf.atlas.store`); killing a build and re-running the same command
resumes it. The image set may change between runs (files added, removed or edited, another
``n``): finished images whose files are unchanged are kept, the others built, and images
that left the set are dropped from the atlas. An image that cannot be read is skipped and
recorded with the reason (``Atlas.skipped``, ``ierf atlas info``); a re-run retries it only
if its file changed.
"""

from __future__ import annotations

import datetime
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ierf.atlas.sampling import IerfEngine, atlas_samples
from ierf.atlas.store import MANIFEST, Atlas, ShardWriter, open_atlas, prepare_atlas
from ierf.data.sources import image_hashes, image_ids, load_readable, parse_source
from ierf.dist import barrier, on_rank0, rank_world
from ierf.errors import IerfError, require_finite
from ierf.lock import rank0_lock
from ierf.models.fingerprint import weights_fingerprint
from ierf.models.model import Model

ENGINES = ("srd", "attnlrp")


def default_engine(model: Model, method: str | None = None) -> IerfEngine:
    """The iERF method of an atlas: ``method`` from the registry (``"srd"`` or ``"attnlrp"``),
    or by default SRD for CNNs and AttnLRP for ViTs (paper Sec. III-D)."""
    from ierf.local.registry import attributor

    method = method or ("attnlrp" if model.is_vit else "srd")
    if method not in ENGINES:
        raise IerfError(f"atlas iERFs come from one of {ENGINES}, not {method!r}")
    return attributor(method, model)


def build_atlas(model: Model, images: str | Path, layers: Sequence[str], out: str | Path,
                samples_per_image: int = 1, n: int | None = None, batch_size: int = 16,
                ierf_downsample: int = 1, seed: int = 0, device: str | torch.device | None = None,
                internal_batch_size: int = 16, engine: IerfEngine | None = None,
                weights: str = "pretrained", overwrite: bool = False,
                progress: bool = True) -> Atlas:
    """Build (or resume) the PFV–iERF atlas of ``model`` over ``images`` into folder ``out``.

    Parameters
    ----------
    model : the model; ``weights`` says how :meth:`Atlas.model` reloads it: ``"pretrained"``
        or ``"random:<seed>"`` (see :func:`~ierf.atlas.store.load_atlas_model`).
    images : ``"benchmark"`` / ``"benchmark:<seed>:<split>"`` (seed 0, split train by
        default), ``"photos"`` or a folder (:mod:`ierf.data.sources`); ``n`` limits their
        number (required for the benchmark).
    layers : layers to sample (module names), each at or below the encoder layer L.
    samples_per_image : PFVs drawn per image and layer (the paper: 1).
    batch_size : images per forward pass and per shard.
    ierf_downsample : integer area-pooling factor of the stored iERFs.
    seed : sampling seed (draws are seeded per image and layer).
    device : where to compute (default: the model's device).
    internal_batch_size : iERF targets per batched backward pass.
    engine : the layer-relevance and iERF method (default: :func:`default_engine`).
    overwrite : replace an atlas of a different build in ``out`` (other settings or model;
        a changed image set alone resumes, keeping the images already done).
    progress : show progress bars, what a resume keeps and which images were skipped.

    Returns
    -------
    The finished :class:`~ierf.atlas.store.Atlas` (on every rank).
    """
    if batch_size < 1 or internal_batch_size < 1:
        raise IerfError(f"batch sizes must be ≥ 1, got {batch_size} and {internal_batch_size}")
    device = torch.device(device) if device is not None else model.device
    model.net.to(device)
    engine = engine if engine is not None else default_engine(model)
    layers = check_layers(model, engine, layers)
    source = parse_source(images).resolved()
    ids = image_ids(source, n)
    rank, world = rank_world()
    check_weights(model)
    meta = atlas_meta(model, str(source), layers, samples_per_image, ierf_downsample, seed, weights,
                      getattr(engine, "name", type(engine).__name__))
    talk = progress and rank == 0

    def prepare() -> None:
        changes = prepare_atlas(out, meta, ids, image_hashes(source, ids, talk), overwrite)
        if talk:
            tqdm.write(f"atlas {out}: {changes}", file=sys.stderr)

    with rank0_lock(Path(out) / MANIFEST):  # one build per folder; its ranks count as one
        on_rank0(prepare)
        with ShardWriter(out, rank) as writer:
            pending = writer.pending()[rank::world]
            mine = list(zip(pending, writer.ids(pending)))
            barrier()  # every rank has read the pending list before any writes
            bar = tqdm(total=len(mine), unit="img", disable=not talk,
                       desc=f"atlas {model.name}" + (f" (rank 0 of {world})" if world > 1 else ""))
            with bar:
                for start in range(0, len(mine), batch_size):
                    batch = mine[start:start + batch_size]
                    x, unreadable = load_readable(source, [i for _, i in batch], model)
                    if unreadable:
                        writer.skip({batch[j][0]: why for j, why in unreadable.items()})
                        for j, why in unreadable.items() if progress else ():
                            bar.write(f"skipped {batch[j][1]}: {why}", file=sys.stderr)
                    read = [b for j, b in enumerate(batch) if j not in unreadable]
                    if read:
                        writer.write([k for k, _ in read], atlas_samples(
                            model, engine, x.to(device), [k for k, _ in read], layers,
                            samples_per_image, seed, ierf_downsample, internal_batch_size,
                            ids=[i for _, i in read]))
                    bar.update(len(batch))
        barrier()
    return open_atlas(out)


def check_weights(model: Model) -> None:
    """Refuse a model with NaN or Inf in its weights or buffers (its atlas would be empty)."""
    for name, t in model.net.state_dict().items():
        require_finite(t, f"{model.name}'s {name!r}", "load intact weights (a diverged "
                       "training or a damaged checkpoint?)")


def check_layers(model: Model, engine: IerfEngine, layers: Sequence[str]) -> list[str]:
    """Validate the layer names: known, distinct, and not above the engine's start layer L
    (relevance is only defined up to L)."""
    layers = list(dict.fromkeys(layers))
    if not layers:
        raise IerfError(f"give at least one layer; {model.name} has: {', '.join(model.layer_names())}")
    names = model.layer_names()
    for layer in layers:
        model.module(layer)
        if layer not in names:
            raise IerfError(f"layer {layer!r} has no PFV grid; use one of {', '.join(names)}")
    top = getattr(engine, "_layer", None) or model.encoder_layer()
    above = [layer for layer in layers if names.index(layer) > names.index(top)]
    if above:
        raise IerfError(f"layers {above} come after {top!r}, the layer the logit's relevance "
                        f"starts from; pick layers up to {top!r}")
    return layers


def atlas_meta(model: Model, source: str, layers: Sequence[str], samples_per_image: int,
               ierf_downsample: int, seed: int, weights: str, method: str) -> dict:
    """The meta of an atlas build, its identity: everything but ``created`` must match to
    resume (the image set may change)."""
    if samples_per_image < 1:
        raise IerfError(f"--samples-per-image must be ≥ 1, got {samples_per_image}")
    _, h, w = model.input_size
    if ierf_downsample < 1 or h % ierf_downsample or w % ierf_downsample:
        raise IerfError(f"--ierf-downsample {ierf_downsample} must be ≥ 1 and divide the input "
                        f"size {h}×{w}")
    grids = model.layer_grids()
    x = torch.zeros(1, *model.input_size, device=model.device)
    channels = {k: v.vectors.shape[-1] for k, v in model.pfvs(x, layers).items()}
    return {"model": model.name, "weights": weights, "fingerprint": weights_fingerprint(model.net),
            "source": source, "layers": list(layers),
            "grids": {k: list(grids[k]) for k in layers}, "channels": channels,
            "samples_per_image": samples_per_image, "input_size": list(model.input_size),
            "ierf_downsample": ierf_downsample,
            "ierf_size": [h // ierf_downsample, w // ierf_downsample], "ierf_method": method,
            "seed": seed, "draws": "seeded per image id",
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}

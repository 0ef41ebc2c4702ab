"""A concept basis: a fitted extractor bound to the model, layer and tokens it was learnt on.

IERF Sec. VI-A (Eqs. 11–12): a layer's PFVs ``X (N, C) ≈ U Vᵀ (+ μ_BN)``. The dictionary
``V (C, K)`` only means something for the layer and the weights it was fitted on, so a
:class:`ConceptBasis` carries them — model name and weights fingerprint, layer, token kind
(``patch``: every spatial position / patch token; ``cls``: the first prefix token; ``all``:
prefix and patch tokens), the centring — and its provenance (atlas, fit settings). Every
consumer (cards, ``bench concepts``, C-insertion/deletion, gated TransMM, the graph, CAFE)
takes a basis and reads the layer from it instead of guessing it.

On disk a basis is one folder, ``basis.json`` + ``tensors.safetensors`` (the SAELens
layout), written to a temporary folder and renamed into place, with the tensor file's
SHA-256 in the JSON and checked on load: a crash never pairs new tensors with an old
config, and a damaged file is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ierf.concepts.extractors.base import ConceptExtractor
from ierf.errors import IerfError, require_finite
from ierf.models.fingerprint import weights_fingerprint
from ierf.models.pfv import PFVs

FORMAT = "ierf.concept-basis"
FORMAT_VERSION = 1
CONFIG_FILE, TENSOR_FILE = "basis.json", "tensors.safetensors"
TOKEN_KINDS = ("patch", "cls", "all")


class BasisMismatchError(IerfError):
    """A basis used with a model, layer or token kind it was not fitted on."""


@dataclass
class ConceptBasis:
    """A fitted concept extractor bound to ``model`` (name + weights fingerprint), ``layer``
    and ``tokens``.

    Parameters
    ----------
    extractor : the fitted extractor (``encode`` / ``decode`` / ``get_dictionary``).
    model : the model's name (``ierf.Model.name``).
    fingerprint : :func:`ierf.models.fingerprint.weights_fingerprint` of its weights.
    layer : the layer whose PFVs were factorised, as in ``model.named_modules()``.
    tokens : ``"patch"`` (spatial positions / patch tokens), ``"cls"`` or ``"all"``.
    provenance : where it comes from (atlas path, method, fit settings, number of PFVs).
    """

    extractor: ConceptExtractor
    model: str
    fingerprint: float
    layer: str
    tokens: str = "patch"
    provenance: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.tokens not in TOKEN_KINDS:
            raise IerfError(f"tokens must be one of {', '.join(TOKEN_KINDS)}, got "
                            f"{self.tokens!r}")
        if not callable(getattr(self.extractor, "get_dictionary", None)):
            raise IerfError(f"a concept basis needs a fitted extractor (encode, decode, "
                            f"get_dictionary), got {type(self.extractor).__name__}")

    @classmethod
    def bind(cls, extractor: ConceptExtractor, model: object, layer: str,
             tokens: str = "patch", **provenance: Any) -> ConceptBasis:
        """Bind a fitted ``extractor`` to an ``ierf.Model`` and one of its layers."""
        model.module(layer)  # unknown layers fail here, listing the valid ones
        if tokens == "cls" and not model.num_prefix_tokens:
            raise IerfError(f"{model.name} has no CLS token; use tokens='patch'")
        return cls(extractor, model.name, weights_fingerprint(model.net), layer, tokens,
                   provenance)

    # -- the extractor's verbs, on (..., C) PFVs --------------------------------------------

    @property
    def dictionary(self) -> torch.Tensor:
        """``V (C, K)``; column ``k`` is concept vector ``v_k``."""
        return self.extractor.get_dictionary()

    def digest(self) -> str:
        """A short SHA-256 of the dictionary (float32): the same concepts wherever the
        basis folder lies; stores and benchmarks record it to refuse other bases."""
        data = self.dictionary.detach().cpu().contiguous().float().numpy().tobytes()
        return hashlib.sha256(data).hexdigest()[:16]

    def get_dictionary(self) -> torch.Tensor:
        """``V (C, K)`` (the extractor verb, so a basis is accepted wherever an SAE is)."""
        return self.dictionary

    @property
    def n_concepts(self) -> int:
        return self.dictionary.shape[1]

    @property
    def n_channels(self) -> int:
        return self.dictionary.shape[0]

    def encode(self, pfvs: torch.Tensor) -> torch.Tensor:
        """Coefficients ``U (..., K)`` of PFVs ``(..., C)`` (Eq. 12 for dictionaries, the
        encoder for SAEs)."""
        x = self._flat(pfvs)
        return self.extractor.encode(x).reshape(*pfvs.shape[:-1], -1)

    def decode(self, U: torch.Tensor) -> torch.Tensor:
        """Reconstructions ``X̂ (..., C)`` of coefficients ``U (..., K)``."""
        if U.shape[-1] != self.n_concepts:
            raise IerfError(f"expected {self.n_concepts} coefficients per PFV, got "
                            f"{U.shape[-1]}")
        return self.extractor.decode(U.reshape(-1, U.shape[-1])).reshape(*U.shape[:-1], -1)

    def reconstruct(self, pfvs: torch.Tensor) -> torch.Tensor:
        """``X̂ = decode(encode(X))`` (Eq. 11)."""
        return self.decode(self.encode(pfvs))

    def residual(self, pfvs: torch.Tensor) -> torch.Tensor:
        """``X − X̂``: what the concepts do not explain (the graph's error node)."""
        return pfvs - self.reconstruct(pfvs)

    def _flat(self, pfvs: torch.Tensor) -> torch.Tensor:
        if not isinstance(pfvs, torch.Tensor) or pfvs.dim() < 2:
            raise IerfError(f"expected PFVs of shape (..., {self.n_channels}), got "
                            f"{getattr(pfvs, 'shape', type(pfvs).__name__)}")
        if pfvs.shape[-1] != self.n_channels:
            raise BasisMismatchError(
                f"this basis has {self.n_channels}-channel concepts of layer {self.layer!r}; "
                f"got PFVs with {pfvs.shape[-1]} channels")
        return pfvs.reshape(-1, pfvs.shape[-1])

    # -- binding ---------------------------------------------------------------------------

    def check(self, model: object, layer: str | None = None) -> None:
        """Refuse a model (or a layer) this basis was not fitted on, with what to do."""
        if model.name != self.model:
            raise BasisMismatchError(f"this concept basis was fitted on {self.model!r}, not "
                                     f"{model.name!r}; fit one on this model with "
                                     "`ierf concepts fit`")
        if weights_fingerprint(model.net) != self.fingerprint:
            raise BasisMismatchError(f"{model.name}'s weights differ from those this basis "
                                     "was fitted with (weights fingerprint); load the same "
                                     "weights or fit a new basis")
        if layer is not None and layer != self.layer:
            raise BasisMismatchError(f"this concept basis belongs to layer {self.layer!r}, "
                                     f"not {layer!r}")

    def select(self, pfvs: PFVs) -> torch.Tensor:
        """The tokens of this basis' kind from a layer's :class:`PFVs`: ``(B, N', C)``."""
        if self.tokens == "patch":
            return pfvs.vectors
        if pfvs.prefix is None or pfvs.prefix.shape[1] == 0:
            raise BasisMismatchError(f"this basis is for {self.tokens!r} tokens but layer "
                                     f"{self.layer!r} has no prefix (CLS) token")
        if self.tokens == "cls":
            return pfvs.prefix[:, :1]
        return torch.cat([pfvs.prefix, pfvs.vectors], 1)

    def pfvs(self, model: object, x: torch.Tensor) -> torch.Tensor:
        """This basis' tokens of ``model``'s layer on images ``x``: ``(B, N', C)``."""
        self.check(model)
        return self.select(model.pfvs(x, self.layer)[self.layer])

    def to(self, device: str | torch.device) -> ConceptBasis:
        """Move the extractor's tensors to ``device`` (in place); returns ``self``."""
        self.extractor.load_state_tensors({k: v.to(device) for k, v in
                                           self.extractor.state_tensors().items()})
        return self

    def __repr__(self) -> str:
        return (f"ConceptBasis({type(self.extractor).__name__}, K={self.n_concepts}, "
                f"C={self.n_channels}, model={self.model!r}, layer={self.layer!r}, "
                f"tokens={self.tokens!r})")

    # -- disk ------------------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """Write the basis folder ``path`` (``basis.json`` + ``tensors.safetensors``)
        atomically: it appears whole or not at all, replacing an older basis there."""
        path = Path(path)
        tensors = {k: v.detach().cpu().contiguous().clone()
                   for k, v in self.extractor.state_tensors().items()}
        with _atomic_folder(path) as tmp:
            save_file(tensors, tmp / TENSOR_FILE)
            meta = {"format": FORMAT, "version": FORMAT_VERSION,
                    "extractor": type(self.extractor).__name__,
                    "config": self.extractor.config(), "model": self.model,
                    "fingerprint": self.fingerprint, "layer": self.layer,
                    "tokens": self.tokens, "n_concepts": self.n_concepts,
                    "n_channels": self.n_channels, "provenance": self.provenance,
                    "sha256": _sha256(tmp / TENSOR_FILE)}
            (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=2, default=str))
        return path

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> ConceptBasis:
        """Read a basis folder written by :meth:`save`, verifying its format and checksum."""
        path = Path(path)
        config, tensor_file = path / CONFIG_FILE, path / TENSOR_FILE
        if not config.is_file():
            hint = (" (an extractor file from an older ierf: refit with `ierf concepts fit`)"
                    if path.with_name(path.name + ".json").is_file() else "")
            raise IerfError(f"{path} is not a concept basis: no {CONFIG_FILE} in it{hint}")
        try:
            meta = json.loads(config.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise IerfError(f"{config} is not readable JSON ({e}); refit the basis") from None
        _check_meta(meta, config)
        if not tensor_file.is_file() or _sha256(tensor_file) != meta["sha256"]:
            raise IerfError(f"{tensor_file} is missing or altered (checksum differs from "
                            f"{CONFIG_FILE}); refit the basis")
        name = meta["extractor"]
        try:
            extractor = ConceptExtractor.registry[name](**meta["config"])
        except (TypeError, ValueError) as e:
            raise IerfError(f"{config} has an invalid {name} config ({e}); refit the "
                            "basis") from None
        try:
            tensors = load_file(tensor_file, device=str(device))
            for key, t in tensors.items():
                require_finite(t, f"{tensor_file} ({key})", "refit the basis")
            extractor.load_state_tensors(tensors)
        except (SafetensorError, KeyError, RuntimeError) as e:
            raise IerfError(f"{tensor_file} does not hold a {name}'s tensors ({e}); refit "
                            "the basis") from None
        basis = cls(extractor, meta["model"], meta["fingerprint"], meta["layer"],
                    meta["tokens"], meta.get("provenance", {}))
        if (basis.n_concepts, basis.n_channels) != (meta["n_concepts"], meta["n_channels"]):
            raise IerfError(f"{config} says {meta['n_concepts']} concepts × "
                            f"{meta['n_channels']} channels, the tensors hold "
                            f"{basis.n_concepts} × {basis.n_channels}; refit the basis")
        return basis


def _check_meta(meta: object, config: Path) -> None:
    """Refuse a config of another format, version or with missing / invalid fields."""
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise IerfError(f"{config} is not an ierf concept basis")
    if meta.get("version") != FORMAT_VERSION:
        raise IerfError(f"{config} has format version {meta.get('version')!r}; this ierf "
                        f"reads version {FORMAT_VERSION} (upgrade ierf or refit the basis)")
    needed = {"extractor": str, "config": dict, "model": str, "fingerprint": (int, float),
              "layer": str, "tokens": str, "n_concepts": int, "n_channels": int,
              "sha256": str}
    bad = [k for k, t in needed.items() if not isinstance(meta.get(k), t)]
    if bad or meta["n_concepts"] < 1 or meta["n_channels"] < 1:
        raise IerfError(f"{config} has missing or invalid fields "
                        f"({', '.join(bad) or 'n_concepts / n_channels'}); refit the basis")


def _sha256(file: Path) -> str:
    h = hashlib.sha256()
    with open(file, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@contextmanager
def _atomic_folder(path: Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success it replaces ``path``.

    The old folder is renamed aside first and removed after the new one is in place, so at
    every moment ``path`` is either the old basis or the new one.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    old = None
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        for f in tmp.iterdir():
            os.chmod(f, 0o666 & ~_umask())
        if path.exists():
            if not (path / CONFIG_FILE).is_file():
                raise IerfError(f"{path} exists and is not a concept basis; choose another "
                                "output path")
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", dir=path.parent))
            os.replace(path, old / "basis")
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask

"""The interface every concept extractor shares, and its ``.safetensors`` + ``.json`` files.

An extractor factorises PFVs ``X (N, C) ≈ U Vᵀ`` (GIG Sec. 3.2; IERF Eq. 11): ``fit`` learns
the dictionary ``V (C, K)`` whose columns are concept vectors, ``encode`` gives the
coefficients ``U (N, K)``, ``decode`` maps them back to ``X̂ (N, C)``.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from typing_extensions import Self

from ierf.errors import IerfError, require_finite
from ierf.integrity import check_file, sha256_file
from ierf.io import atomic_path
from ierf.registry import Registry

OVERCOMPLETENESS = 8
"""Default number of concepts per channel, ``K = 8 C`` (IERF Sec. VI-A1, after Bricken et al.)."""

FORMAT_VERSION = 1

E = TypeVar("E", bound="ConceptExtractor")


def default_n_concepts(n_features: int, n_concepts: int | None) -> int:
    """``n_concepts`` or, when ``None``, ``8 · n_features``."""
    return OVERCOMPLETENESS * n_features if n_concepts is None else n_concepts


def check_pfvs(X: torch.Tensor, n_features: int | None = None) -> torch.Tensor:
    """Validate a (N, C) floating-point PFV matrix without NaN or Inf (with
    ``C == n_features`` when given)."""
    if not isinstance(X, torch.Tensor) or X.ndim != 2 or not X.is_floating_point():
        shape = tuple(X.shape) if isinstance(X, torch.Tensor) else type(X).__name__
        raise IerfError(f"expected a floating-point (N, C) tensor of PFVs, got {shape}")
    if n_features is not None and X.shape[1] != n_features:
        raise IerfError(f"expected {n_features} channels, got {X.shape[1]}")
    require_finite(X, f"the ({X.shape[0]}, {X.shape[1]}) PFVs", "drop those rows or fix "
                   "the model or atlas they come from (a NaN would spread to every concept)")
    return X


def _files(path: str | Path) -> tuple[Path, Path]:
    """``path.safetensors`` and ``path.json``; a ``.safetensors``/``.json`` suffix is dropped."""
    path = Path(path)
    if path.suffix in (".safetensors", ".json"):
        path = path.with_suffix("")
    return path.with_name(path.name + ".safetensors"), path.with_name(path.name + ".json")


class ConceptExtractor(ABC):
    """Base class: ``fit`` / ``encode`` / ``decode`` / ``get_dictionary`` / ``save`` / ``load``.

    Subclasses describe themselves with :meth:`config` (JSON-serialisable constructor
    arguments) and :meth:`state_tensors` / :meth:`load_state_tensors` (what was learnt).
    """

    registry: ClassVar[Registry[type[ConceptExtractor]]] = Registry("concept extractor")

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        ConceptExtractor.registry[cls.__name__] = cls

    @abstractmethod
    def fit(self: E, X: torch.Tensor) -> E:
        """Learn the dictionary from PFVs ``X (N, C)``; returns ``self``."""

    @abstractmethod
    def encode(self, X: torch.Tensor) -> torch.Tensor:
        """Concept coefficients ``U (N, K)`` of PFVs ``X (N, C)``."""

    @abstractmethod
    def decode(self, U: torch.Tensor) -> torch.Tensor:
        """Reconstructions ``X̂ (N, C)`` of coefficients ``U (N, K)``."""

    @abstractmethod
    def get_dictionary(self) -> torch.Tensor:
        """The dictionary ``V (C, K)``; column ``j`` is concept vector ``v_j``."""

    @abstractmethod
    def config(self) -> dict[str, Any]:
        """JSON-serialisable keyword arguments that rebuild an unfitted copy."""

    @abstractmethod
    def state_tensors(self) -> dict[str, torch.Tensor]:
        """The learnt tensors, by name."""

    @abstractmethod
    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Restore what :meth:`state_tensors` returned."""

    def save(self, path: str | Path) -> None:
        """Write ``path.safetensors`` (tensors) and ``path.json`` (class and config), atomically."""
        tensor_file, config_file = _files(path)
        tensors = {name: t.detach().cpu().contiguous().clone()
                   for name, t in self.state_tensors().items()}
        with atomic_path(tensor_file) as tmp:
            save_file(tensors, tmp)
            sha256 = sha256_file(tmp)
        meta = {"class": type(self).__name__, "format": FORMAT_VERSION, "config": self.config(),
                "sha256": sha256}
        with atomic_path(config_file) as tmp:  # the JSON, written last, commits the pair
            Path(tmp).write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> Self:
        """Rebuild an extractor saved by :meth:`save`.

        Called on :class:`ConceptExtractor` itself it returns whichever extractor was saved;
        called on a subclass it checks the file holds that class.
        """
        tensor_file, config_file = _files(path)
        try:
            meta = json.loads(config_file.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise IerfError(f"{config_file} is not a readable extractor config ({e})") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT_VERSION:
            raise IerfError(f"{config_file} is not an extractor config of format "
                            f"{FORMAT_VERSION}; refit it")
        target = ConceptExtractor.registry[meta.get("class")]
        if not issubclass(target, cls):
            raise IerfError(f"{config_file} holds a {target.__name__}, not a {cls.__name__}")
        check_file(tensor_file, meta.get("sha256"), None,
                   f"it does not belong to {config_file.name} (an interrupted save?); refit it")
        try:
            extractor = target(**meta["config"])
            extractor.load_state_tensors(load_file(tensor_file, device=str(device)))
        except (TypeError, ValueError, KeyError, RuntimeError, SafetensorError) as e:
            raise IerfError(f"{config_file} and {tensor_file.name} do not make a "
                            f"{target.__name__} ({e}); refit it") from None
        return extractor


class FittedDictionary:
    """Mixin for extractors that store the learnt ``V (C, K)`` in ``dictionary_`` (``None``
    until fitted); gives :meth:`get_dictionary` with a clear error before ``fit``."""

    dictionary_: torch.Tensor | None = None

    def get_dictionary(self) -> torch.Tensor:
        """The dictionary ``V (C, K)``; column ``j`` is concept vector ``v_j``."""
        if self.dictionary_ is None:
            raise IerfError(f"{type(self).__name__} is not fitted; call fit(X) first")
        return self.dictionary_

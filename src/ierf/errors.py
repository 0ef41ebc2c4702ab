"""Errors that tell the user what to do instead."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class IerfError(ValueError):
    """Base class of the errors ierf raises for bad input."""


class UnknownNameError(IerfError, KeyError):
    """A model, layer, method or class name that does not exist."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class WeightsUnavailableError(IerfError, RuntimeError):
    """Pretrained weights could not be fetched (e.g. no network)."""


def unknown_name(kind: str, name: object, valid: Iterable[str], limit: int = 40) -> UnknownNameError:
    """Build an :class:`UnknownNameError` listing close matches and the valid names."""
    valid = list(valid)
    close = difflib.get_close_matches(str(name), valid, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    shown = ", ".join(valid[:limit]) + (f", … ({len(valid) - limit} more)" if len(valid) > limit else "")
    return UnknownNameError(f"unknown {kind} {name!r}.{hint} Valid {kind}s: {shown}")

"""Option types shared by the subcommands; torch is imported only when a value is parsed."""

from __future__ import annotations

import argparse
import ast


def device(name: str) -> str:
    """``--device``: a torch device that exists on this machine (checked before any work)."""
    import torch

    try:
        dev = torch.device(name)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"unknown device {name!r}; use cpu, cuda, cuda:N or "
                                         "mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(
                f"{name!r}: CUDA is not available here (torch {torch.__version__}, CUDA build "
                f"{torch.version.cuda or 'none'}); use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(f"{name!r}: this machine has "
                                             f"{torch.cuda.device_count()} CUDA device(s)")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise argparse.ArgumentTypeError(f"{name!r}: MPS is not available here; use --device cpu")
    return name


def key_value(text: str) -> tuple[str, object]:
    """``--opt KEY=VALUE``: the value read as a Python literal (``64``, ``0.5``, ``True``,
    ``(1, 2)``), else kept as a string (``layer=layer3``)."""
    key, sep, value = text.partition("=")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (e.g. n_steps=64), got {text!r}")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value

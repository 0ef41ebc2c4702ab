"""Thumbnails for the page: embedded as ``data:`` URIs, or copied into a folder beside it.

A node's ``thumbnails`` are paths (absolute, or relative to the graph file's folder). A path
that does not exist, or is not an image the browser shows, is reported and the node gets the
page's placeholder: the page never refers to a file it does not have.
"""

from __future__ import annotations

import base64
import re
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

from ierf.errors import IerfError

MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
        ".webp": "image/webp", ".svg": "image/svg+xml"}
MODES = ("embed", "folder")


@dataclass
class Thumbnails:
    """What :func:`collect` found.

    Attributes
    ----------
    urls : node id → the URLs the page loads (``data:`` URIs, or ``folder/name`` paths).
    missing : ``"node id: path (why)"`` for each thumbnail left out.
    files : the distinct image files used.
    """

    urls: dict[str, list[str]] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    files: int = 0


def collect(nodes: Iterable[Mapping[str, Any]], base: Path,
            mode: Literal["embed", "folder"] = "embed", folder: Path | None = None) -> Thumbnails:
    """The thumbnails of ``nodes`` as page URLs.

    Parameters
    ----------
    base : the folder relative paths are read from (the graph file's).
    mode : ``"embed"`` — base64 ``data:`` URIs inside the page; ``"folder"`` — copies in
        ``folder`` (beside the page), referred to as ``folder.name/<file>``.
    """
    if mode not in MODES:
        raise IerfError(f"images must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "folder" and folder is None:
        raise IerfError("images='folder' needs the folder to copy the thumbnails into")
    out, done = Thumbnails(), {}
    for node in nodes:
        paths = node.get("thumbnails") or []
        if isinstance(paths, str):
            paths = [paths]
        urls = []
        for p in paths:
            if not isinstance(p, str) or not p:
                out.missing.append(f"{node['node_id']}: {p!r} (not a path)")
                continue
            if p.startswith("data:image/"):
                urls.append(p)
                continue
            if re.match(r"^[a-z][a-z0-9+.-]*://", p, re.IGNORECASE):
                out.missing.append(f"{node['node_id']}: {p} (a URL: the page loads nothing "
                                   "from the network)")
                continue
            src = (base / p).resolve()
            if src not in done:
                why = _unusable(src)
                if why:
                    out.missing.append(f"{node['node_id']}: {p} ({why})")
                    continue
                done[src] = _embed(src) if mode == "embed" else _copy(src, folder, len(done))
            urls.append(done[src])
        if urls:
            out.urls[node["node_id"]] = urls
    out.files = len(done)
    return out


def _unusable(src: Path) -> str | None:
    if not src.is_file():
        return "no such file"
    if src.suffix.lower() not in MIME:
        return f"not one of {', '.join(MIME)}"
    return None


def _embed(src: Path) -> str:
    data = base64.b64encode(src.read_bytes()).decode("ascii")
    return f"data:{MIME[src.suffix.lower()]};base64,{data}"


def _copy(src: Path, folder: Path, n: int) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", src.stem)[:60] or "image"
    name = f"{n:05d}-{stem}{src.suffix.lower()}"
    shutil.copyfile(src, folder / name)
    return f"{quote(folder.name)}/{quote(name)}"

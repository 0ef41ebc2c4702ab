"""The dashboard page: ``static/dash.html`` with its styles, scripts and one JSON payload.

Both dashboards (concepts of a basis, CAFE latents) are one page template and our own
scripts (``static/dash_*.js``, no framework), assembled at export time as the graph explorer
is (:mod:`ierf.explorer.page`): the scripts are concatenated into one inline ``<script>``
inside one function scope, the payload goes into a ``<script type="application/json">``
element with ``<``, ``>`` and ``&`` escaped, and the scripts only ever insert data as text.

The payload is ``{"dashboard": {"kind", "version", "title", "warnings"}, "sets": [...],
"images": [url, ...]}``: ``kind`` is ``"concepts"`` or ``"latents"``, each set is one basis
(or one grounding) with its ``items``; items refer to images by their index in ``images``.
"""

from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ierf.errors import IerfError
from ierf.explorer.document import finite
from ierf.explorer.page import static
from ierf.io import atomic_path

#: the payload version this ierf writes; the page refuses others with a message
DASHBOARD_VERSION = 1
KINDS = ("concepts", "latents")
#: the dashboard's scripts, in the order they are concatenated (``dash_app.js`` starts it)
DASH_SCRIPTS = ("util.js", "dash_util.js", "dash_grid.js", "dash_concepts.js", "dash_latents.js",
                "dash_app.js")
DASH_STYLES = ("dash.css",)


@dataclass
class Dashboard:
    """What an export wrote: the page, its sets (bases), items (concepts), pictures,
    the folder holding them (``images="folder"``) and notes, one line each."""

    path: Path
    sets: int
    items: int
    images: int
    folder: Path | None
    warnings: list[str] = field(default_factory=list)


def payload(kind: str, sets: list[dict[str, Any]], images: list[str], title: str,
            warnings: list[str] | None = None) -> dict[str, Any]:
    """The page's data: ``sets`` of ``kind`` items whose images are ``images`` (URLs)."""
    if kind not in KINDS:
        raise IerfError(f"dashboard kind must be one of {', '.join(KINDS)}, got {kind!r}")
    return {"dashboard": {"kind": kind, "version": DASHBOARD_VERSION, "title": title,
                          "warnings": list(warnings or [])},
            "sets": sets, "images": images}


def render_dashboard(data: dict[str, Any], title: str) -> str:
    """The HTML page showing ``data`` (from :func:`payload`)."""
    text = json.dumps(finite(data), ensure_ascii=True, allow_nan=False, separators=(",", ":"))
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    script = "\n".join(f"// ---- {name} ----\n{static(name)}" for name in DASH_SCRIPTS)
    script = (f'(function () {{\n"use strict";\nconst DASHBOARD_VERSIONS = '
              f"{json.dumps([DASHBOARD_VERSION])};\n{script}\n}})();")
    parts = {"STYLE": "\n".join(static(n) for n in DASH_STYLES), "SCRIPT": script}
    for name, part in parts.items():
        if "</" in part.replace("<\\/", ""):
            raise IerfError(f"dashboard {name.lower()} contains '</', which would end its "
                            "element early")   # a packaging mistake, not user input
    values = {"TITLE": html.escape(title), **parts, "DATA": text}
    return re.sub(r"\{\{([A-Z_]+)\}\}", lambda m: values[m.group(1)], static("dash.html"))


def check_out(out: str | Path) -> Path:
    """``out`` as the HTML file to write; a folder is refused with an example."""
    out = Path(out)
    if out.is_dir():
        raise IerfError(f"{out} is a folder; give the HTML file to write, e.g. "
                        f"{out}/dashboard.html")
    return out


def write_page(out: Path, data: dict[str, Any]) -> Path:
    """Render ``data`` and write it to ``out`` atomically."""
    page = render_dashboard(data, data["dashboard"]["title"])
    with atomic_path(out) as tmp:
        Path(tmp).write_text(page, encoding="utf-8")
    return out

"""The page: ``static/page.html`` with the styles, the scripts and the data put in.

Scripts are separate readable files under ``static/`` (no framework, no build step); they
are concatenated in :data:`SCRIPTS` order into one inline ``<script>``, inside one function
scope. The data goes into a ``<script type="application/json">`` element with ``<``, ``>``
and ``&`` escaped, so nothing from the graph (labels, class names) can close the element or
be read as markup; the scripts only ever put data into the page as text.
"""

from __future__ import annotations

import html
import json
import re
from functools import cache
from importlib import resources
from typing import Any

from ierf.errors import IerfError
from ierf.explorer.document import SUPPORTED_VERSIONS, finite

#: the explorer's scripts, in the order they are concatenated (each uses only earlier ones
#: at load time; ``app.js`` starts the page)
SCRIPTS = ("util.js", "state.js", "model.js", "collapse.js", "layout.js", "edges.js",
           "nodes.js", "panel.js", "search.js", "exporters.js", "controls.js", "stage.js",
           "app.js")
STYLES = ("graph.css",)
#: styles of the drawn graph, also written into exported SVG files
SVG_STYLES = ("svg.css",)


@cache
def static(name: str) -> str:
    """The text of ``static/<name>``."""
    return (resources.files("ierf.explorer") / "static" / name).read_text(encoding="utf-8")


def render_page(payload: dict[str, Any], title: str) -> str:
    """The HTML page showing ``payload`` (``{"graph", "images", "routes", "explorer"}`` and,
    for supernodes, ``"hierarchy"``: layer → split tree ``{"parents", "sizes"}``)."""
    data = json.dumps(finite(payload), ensure_ascii=True, allow_nan=False,
                      separators=(",", ":"))
    data = data.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    script = "\n".join(f"// ---- {name} ----\n{static(name)}" for name in SCRIPTS)
    script = (f'(function () {{\n"use strict";\nconst SUPPORTED_VERSIONS = '
              f"{json.dumps(list(SUPPORTED_VERSIONS))};\n{script}\n}})();")
    parts = {"STYLE": "\n".join(static(n) for n in STYLES),
             "SVG_STYLE": "\n".join(static(n) for n in SVG_STYLES), "SCRIPT": script}
    for name, text in parts.items():
        if "</" in text.replace("<\\/", ""):
            raise IerfError(f"explorer {name.lower()} contains '</', which would end its "
                            "element early")   # a packaging mistake, not user input
    values = {"TITLE": html.escape(title), **parts, "DATA": data}
    # one pass over the template: a placeholder inside inserted text is never expanded
    return re.sub(r"\{\{([A-Z_]+)\}\}", lambda m: values[m.group(1)], static("page.html"))

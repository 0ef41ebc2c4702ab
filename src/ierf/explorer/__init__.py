"""The offline HTML explorer of concept graphs (issue 13).

:func:`export_html` turns a concept-graph JSON (written by :mod:`ierf.graph.export`, or any
file of that format) into one self-contained HTML page that works from ``file://`` with no
network and no server. The page is our own JavaScript and CSS (``static/``), assembled at
export time; the graph, its optional routes and its thumbnails are embedded as data.

- :mod:`ierf.explorer.document` — reads and checks the graph JSON and ``routes.json``;
- :mod:`ierf.explorer.images` — thumbnails as data URIs or copied into a sibling folder;
- :mod:`ierf.explorer.page` — the page: template, styles, scripts and the embedded data.
"""

from ierf.explorer.document import SUPPORTED_FORMAT, SUPPORTED_VERSIONS, load_graph, load_routes
from ierf.explorer.export import Export, export_html
from ierf.explorer.page import render_page

__all__ = ["SUPPORTED_FORMAT", "SUPPORTED_VERSIONS", "Export", "export_html", "load_graph",
           "load_routes", "render_page"]

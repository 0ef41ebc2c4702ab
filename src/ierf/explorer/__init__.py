"""The offline HTML explorer of concept graphs (issue 13).

:func:`export_html` turns a concept-graph JSON (written by :mod:`ierf.graph.export`, or any
file of that format) into one self-contained HTML page that works from ``file://`` with no
network and no server. The page is our own JavaScript and CSS (``static/``), assembled at
export time; the graph, its optional routes and its thumbnails are embedded as data.

- :mod:`ierf.explorer.document` — reads and checks the graph JSON and ``routes.json``;
- :mod:`ierf.explorer.images` — thumbnails as data URIs or copied into a sibling folder;
- :mod:`ierf.explorer.page` — the page: template, styles, scripts and the embedded data.
"""

from ierf.explorer.dashboard_page import Dashboard, render_dashboard
from ierf.explorer.document import SUPPORTED_FORMAT, SUPPORTED_VERSIONS, load_graph, load_routes
from ierf.explorer.export import Export, export_html
from ierf.explorer.page import render_page

__all__ = ["SUPPORTED_FORMAT", "SUPPORTED_VERSIONS", "Dashboard", "Export", "export_concepts",
           "export_html", "export_latents", "load_graph", "load_routes", "render_dashboard",
           "render_page"]

#: the dashboards need torch: imported on first use, so the graph explorer stays light
_DASHBOARDS = {"export_concepts": "dashboard_concepts", "export_latents": "dashboard_latents"}


def __getattr__(name: str) -> object:
    if name in _DASHBOARDS:
        from importlib import import_module

        return getattr(import_module(f"ierf.explorer.{_DASHBOARDS[name]}"), name)
    raise AttributeError(f"module 'ierf.explorer' has no attribute {name!r}")

"""Pictures: attribution maps with one colour convention (:mod:`ierf.viz.overlay`), concept
cards, concept graphs and routes, curves.

>>> from ierf.viz import save_panel, show, overlay      # doctest: +SKIP
"""

from ierf.viz.overlay import normalize_map, overlay, save_panel, show, signed_view

__all__ = ["normalize_map", "overlay", "save_panel", "show", "signed_view"]

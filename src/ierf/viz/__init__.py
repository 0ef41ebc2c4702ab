"""Pictures: heat-map overlays (more to come: concept cards, graph explorer)."""

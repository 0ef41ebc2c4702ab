"""The PFV–iERF dataset (IERF Sec. III-D): relevance-weighted sampling, the crash-safe
shard store and its builder. Concept learning on top of it lives in :mod:`ierf.concepts`."""

from ierf.atlas.build import build_atlas
from ierf.atlas.store import Atlas, open_atlas

__all__ = ["Atlas", "build_atlas", "open_atlas"]

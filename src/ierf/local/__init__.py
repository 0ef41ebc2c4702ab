"""Local attribution: SRD, the gradient family, CAMs, LRP, AttnLRP and the TransMM methods,
named in :mod:`ierf.local.registry`."""

DEFAULT_METHOD = "srd"
"""The method ``ierf explain`` uses when none is named."""

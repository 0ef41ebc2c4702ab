"""Benchmarks of local explanations: datasets with masks, a resumable runner, tables.

``ierf bench local`` and ``ierf bench attack`` (:mod:`ierf.cli.bench_local`) drive them.
"""

KINDS = ("main", "activations", "srd-ablation")
"""The tables of ``ierf bench local``: Table I (main), II (activations), IV (SRD ablation)."""

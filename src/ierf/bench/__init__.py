"""Benchmarks of local explanations: datasets with masks, a resumable runner, tables.

``ierf bench local`` and ``ierf bench attack`` (:mod:`ierf.cli.bench_local`) drive them.
"""

"""Benchmarks: what the gateway costs per call, measured against the same backend.

``python -m bench.run`` starts every process it needs on loopback and writes
``bench/RESULTS.md`` and ``bench/results.png``.
"""

"""A chaos harness for vmcp: replicas, Redis and backends under seeded faults and load.

Run ``python -m chaos --minutes 10 --seed 1``; see ``chaos/README.md``.
"""

"""Load benchmarks of the orchestrator daemon, with raw arq and pipelined redis-py baselines.

Run ``python -m benchmarks`` for the full run or ``python -m benchmarks --smoke`` for a run of a
few seconds; docs/benchmarks.md describes the phases and records results.
"""

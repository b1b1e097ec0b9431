"""Benchmarks (``make bench``): ratios against plain-tool baselines measured in the same run.

Not tests: pytest does not collect these files (no ``test_`` prefix), and nothing here is a gate.
"""

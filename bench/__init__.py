"""Benchmarks of sald_fast: ``pytest bench --benchmark-only`` (pytest-benchmark suites) and
``python -m bench.report`` (runs them and writes ``bench/RESULTS.md``). See ``bench/_common.py``."""

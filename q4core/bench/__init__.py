"""Benchmarks: ``python -m q4core.bench {quantize,gemm,train} [options]``.

Each subcommand lives in its own module (``q4core/bench/<name>.py``) exposing
``main(argv) -> int``.  Speed targets live here, never in timed unit tests; every
benchmark prints ratios against a numpy baseline measured in the same run.
"""

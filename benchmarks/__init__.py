"""normserve benchmarks: scripts that measure, never tests that assert timings.

Each benchmark module has a ``run(context) -> dict`` that writes
``benchmarks/results/<name>.json`` and ``<name>.png``; ``python -m benchmarks`` (``make bench``)
runs them all and refreshes the tables of docs/benchmarks.md, which explains them.
"""

"""Peers in the benchmarks: normserve beside Triton Inference Server and KServe's Python server,
each peer installed in an environment of its own, on the same model file and the same verified
load, interleaved (``python -m benchmarks --only peers``; ``make bench`` includes it).

- ``benchmark``: the benchmark itself (what runs, with which settings, the targets);
- ``load``: the load and what is read from each server (throughput, latencies, CPU);
- ``process``: a server as a process tree: start, ready-wait, CPU accounting, stop by group;
- ``venvs``: the peers' environments, built once and stamped;
- ``triton``, ``kserve``: how each peer is laid out and started; ``triton_model.py`` and
  ``kserve_model.py`` run inside the peers' own environments, never in the project's;
- ``report``: the chart and the Markdown table.
"""

from __future__ import annotations

from benchmarks.peers.benchmark import NAME, measure
from benchmarks.peers.report import chart, markdown

__all__ = ["NAME", "chart", "markdown", "measure"]

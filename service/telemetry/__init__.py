"""Telemetry: Prometheus metrics, per-version statistics (Triton's shape), log set-up."""

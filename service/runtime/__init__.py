"""The serving runtime: loading model versions, the immutable store, dynamic batching, and the
live state (readiness, reload, drain)."""

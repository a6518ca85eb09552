"""Metric children bound once: the same child per label values, counts in the right series;
the loop-only families expose what prometheus_client's own would."""

from __future__ import annotations

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from normserve.service.telemetry.metrics import LoopCounters, LoopHistograms, Metrics


def test_http_request_children_are_bound_once_and_count_in_their_own_series():
    metrics = Metrics(lambda: [])
    ok = metrics.http_request("POST", "/v2/models/{model_name}/infer", 200)
    assert metrics.http_request("POST", "/v2/models/{model_name}/infer", 200) is ok
    ok.inc()
    ok.inc()
    metrics.http_request("POST", "/v2/models/{model_name}/infer", 400).inc()
    text = generate_latest(metrics.registry).decode()
    infer = 'method="POST",route="/v2/models/{model_name}/infer"'
    assert f'normserve_http_requests_total{{{infer},status="200"}} 2.0' in text
    assert f'normserve_http_requests_total{{{infer},status="400"}} 1.0' in text


def test_a_model_version_counts_requests_and_failures_by_status():
    metrics = Metrics(lambda: [])
    model = metrics.for_model("digits", 3)
    assert model.requests(200) is model.requests(200)
    model.requests(200).inc()
    model.failures(503).inc()
    text = generate_latest(metrics.registry).decode()
    # (the exposition sorts the labels)
    requests = 'normserve_inference_requests_total{model="digits",status="200",version="3"} 1.0'
    failures = 'normserve_inference_failures_total{model="digits",status="503",version="3"} 1.0'
    assert requests in text
    assert failures in text
    assert 'status="503"' not in text.split("normserve_inference_failures")[0]


def _samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample but prometheus_client's ``_created`` timestamps, by name and labels."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in registry.collect()
        for sample in family.samples
        if not sample.name.endswith("_created")
    }


def test_loop_families_expose_what_prometheus_clients_own_would():
    # The reference: prometheus_client's Histogram and Counter fed the same values, including
    # values exactly on a bound (le is inclusive), below the first and past the last.
    bounds = (0.001, 0.01, 0.1, 1.0, 10.0)
    rng = np.random.default_rng(7)
    values = [*rng.lognormal(-4.0, 2.0, 500), *bounds, 0.0, 11.0, 1e9]
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    histograms = LoopHistograms("t_seconds", "help", ["model"], ours, bounds)
    counters = LoopCounters("t_requests", "help", ["model", "status"], ours)
    reference = Histogram("t_seconds", "help", ["model"], buckets=bounds, registry=theirs)
    reference_counter = Counter("t_requests", "help", ["model", "status"], registry=theirs)
    for i, value in enumerate(values):
        model = "a" if i % 3 else "b"
        histograms.labels(model).observe(float(value))
        reference.labels(model).observe(float(value))
        status = "200" if i % 5 else "503"
        counters.labels(model, status).inc()
        reference_counter.labels(model, status).inc()
    got, expected = _samples(ours), _samples(theirs)
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-12), key
    with pytest.raises(ValueError, match="expected labels"):
        histograms.labels("a", "extra")

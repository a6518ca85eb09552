"""Metric children bound once: the same child per label values, counts in the right series."""

from __future__ import annotations

from prometheus_client import generate_latest

from normserve.service.telemetry.metrics import Metrics


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

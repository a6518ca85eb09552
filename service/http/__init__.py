"""HTTP transport: the route table, the inference fast path, request observation, bodies and
content codings, keys, the OpenAPI document, and running under uvicorn."""

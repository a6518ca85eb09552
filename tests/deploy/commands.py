"""The command lines of docs/deploy.md (and, for the build machines' stand-ins for Docker Hub,
docs/contributing.md), exactly as the tests run them.

Each is a template: the tests fill in a free port or a temporary folder, the docs show the
values in ``README_VALUES``; tests/deploy/test_readme.py checks the docs carry every one.
"""

from __future__ import annotations

__all__ = ["COMMANDS", "README_VALUES"]

ENGINE_DEPS = "scripts/docker_engine.sh deps"
ENGINE_START = "scripts/docker_engine.sh start {engine_dir}"
ENGINE_BASE = "scripts/docker_engine.sh base"
ENGINE_STOP = "scripts/docker_engine.sh stop {engine_dir}"
MAKE_IMAGE = "make image PYTHON_IMAGE=local/python:3.11-slim"
IMAGE = "normserve:latest"
RUN_SERVE = "docker run -d --name {name} --read-only -p 127.0.0.1:{port}:8000 normserve:latest"
RUN_MOUNTED = (
    "docker run -d --name {name} -v {repository}:/models:ro -p 127.0.0.1:{port}:8000 "
    "normserve:latest"
)
# A long dynamic-batching delay keeps a lone request in flight for 5 s: the drain shows.
RUN_DRAIN = (
    "docker run -d --name {name} --read-only -e NORMSERVE_MAX_QUEUE_DELAY_MS=5000 "
    "-p 127.0.0.1:{port}:8000 normserve:latest"
)
STOP = "docker stop --time 45 {name}"
HADOLINT = "hadolint Dockerfile"
COMPOSE_CONFIG = "docker-compose -f docker-compose.yml config"
KUBERNETES_VALIDATE = "kubernetes-validate --strict deploy/kubernetes/*.yaml"

COMMANDS = [
    ENGINE_DEPS,
    ENGINE_START,
    ENGINE_BASE,
    MAKE_IMAGE,
    RUN_SERVE,
    RUN_MOUNTED,
    RUN_DRAIN,
    STOP,
    ENGINE_STOP,
    HADOLINT,
    COMPOSE_CONFIG,
    KUBERNETES_VALIDATE,
]

README_VALUES = {
    "engine_dir": "/tmp/normserve-docker",
    "name": "normserve",
    "port": "8000",
    "repository": '"$PWD/model_repository"',
}

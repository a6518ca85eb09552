# normserve images, one Dockerfile. Always name the target:
#
#   docker build --network host --target serve  -t normserve:latest .   # CPU serving (default image)
#   docker build --network host --target export -t normserve:export .   # CPU torch, `normserve export`
#   docker build --network host --target gpu    -t normserve:gpu .      # CUDA runtime, onnxruntime-gpu
#
# Stage order matters: the classic builder (no BuildKit) runs every stage before the target, so
# the serving stages come first and building `serve` never needs torch or a CUDA image.
# Build arguments:
#   PYTHON_IMAGE      Python 3.11 slim base for serve and export (a local stand-in where Docker Hub
#                     is out of reach: scripts/docker_engine.sh base)
#   CUDA_IMAGE        NVIDIA CUDA runtime + cuDNN base for gpu; onnxruntime-gpu 1.31 needs CUDA 13
#   MODEL_REPOSITORY  model repository folder in the build context copied to /models
#                     (`make image` exports the digits model into it first when it is missing)
#   TORCH_INDEX_URL   where the export stage gets the CPU build of torch
ARG PYTHON_IMAGE=python:3.11-slim
ARG CUDA_IMAGE=nvidia/cuda:13.0.0-cudnn-runtime-ubuntu22.04

# ---------------------------------------------------------------------------------------------
# serve-deps: the serving virtual environment. Dependencies first (pinned by constraints.txt, the
# file the Makefile uses), the source after, so a code change reuses the dependency layer.
FROM ${PYTHON_IMAGE} AS serve-deps
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
# binutils (for `strip`, below) lives in this build stage only. Its version is the one the base
# image's Debian release carries; pinning it here would break the build whenever that release's
# archive moves, so the base image tag is the pin.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends binutils \
    && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml constraints.txt deploy/docker/pyproject_requirements.py ./
RUN python pyproject_requirements.py pyproject.toml > requirements.txt \
    && pip install --no-cache-dir -c constraints.txt -r requirements.txt
COPY README.md ./
COPY normserve/ normserve/
COPY service/ service/
COPY models/ models/
COPY export/ export/
# The project itself, without resolving anything again; then prove the environment is whole and
# drop what the server never needs: the installers, the packages' own test suites (numpy's alone
# are 17 MB) and the debug sections of compiled extensions (uvloop ships 12 MB of them; code and
# symbols stay). Libraries that auditwheel vendored into *.libs folders are left untouched.
RUN pip install --no-cache-dir --no-deps -c constraints.txt . \
    && pip check \
    && pip uninstall --yes pip setuptools \
    && find /opt/venv -type d -name tests -prune -exec rm -rf {} + \
    && rm -rf /opt/venv/lib/python3.11/site-packages/onnxruntime/transformers \
              /opt/venv/lib/python3.11/site-packages/onnxruntime/quantization \
              /opt/venv/lib/python3.11/site-packages/onnxruntime/tools \
              /opt/venv/lib/python3.11/site-packages/numpy/f2py \
              /opt/venv/lib/python3.11/site-packages/numpy/distutils \
    && find /opt/venv -type f -name '*.so*' -not -path '*.libs/*' -exec strip --strip-debug {} +

# ---------------------------------------------------------------------------------------------
# serve: the default image. No torch: onnxruntime, numpy, fastapi, uvicorn, pydantic.
FROM ${PYTHON_IMAGE} AS serve
ARG MODEL_REPOSITORY=model_repository
LABEL org.opencontainers.image.title="normserve" \
      org.opencontainers.image.description="Folded, frozen, proven ONNX models over the Open Inference Protocol (KServe V2)" \
      org.opencontainers.image.licenses="Apache-2.0"
# A fixed numeric uid so that Kubernetes' runAsNonRoot can check it.
RUN groupadd --gid 10001 normserve \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin normserve
COPY --from=serve-deps /opt/venv /opt/venv
COPY deploy/docker/healthcheck.py /opt/normserve/healthcheck.py
# The repository is data the server only reads; a volume mounted on /models replaces it.
COPY --chown=10001:10001 ${MODEL_REPOSITORY}/ /models/
# The server writes nothing (it runs with a read-only root filesystem and no writable mount):
# bytecode is compiled at install time and never written at run time, and ONNX Runtime's
# telemetry, which would try to persist a device id (and send events), is off.
ENV PATH=/opt/venv/bin:$PATH \
    ORT_DISABLE_TELEMETRY=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    NORMSERVE_REPOSITORY=/models \
    NORMSERVE_HOST=0.0.0.0 \
    NORMSERVE_PORT=8000 \
    NORMSERVE_GRPC_PORT=8001
USER 10001:10001
WORKDIR /models
# HTTP and gRPC (the same V2 protocol; Triton's ports). NORMSERVE_GRPC_PORT=off turns gRPC off.
EXPOSE 8000 8001
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "/opt/normserve/healthcheck.py"]
STOPSIGNAL SIGTERM
# Exec form: the server is PID 1 and gets SIGTERM itself, stops accepting, finishes in-flight
# requests, then exits.
ENTRYPOINT ["normserve", "serve"]

# ---------------------------------------------------------------------------------------------
# export: CPU torch 2.13.0 (pinned in constraints.txt) and the export CLI, run on mounted
# checkpoints, writing into a mounted repository:
#   docker run --rm -v "$PWD/checkpoints:/checkpoints:ro" -v "$PWD/model_repository:/models" \
#     normserve:export /checkpoints/digits_cnn.pt --repository /models --name digits
FROM ${PYTHON_IMAGE} AS export
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml constraints.txt deploy/docker/pyproject_requirements.py ./
# torch first, at the version constraints.txt pins, with the CPU index beside PyPI: its
# 2.13.0+cpu ranks above PyPI's 2.13.0 (the multi-GB CUDA build) and still meets the ==2.13.0 pin,
# while torch's own dependencies come from PyPI at their pinned versions. Then everything else.
RUN pip install --no-cache-dir -c constraints.txt --extra-index-url "${TORCH_INDEX_URL}" torch \
    && python pyproject_requirements.py pyproject.toml --extra export > requirements.txt \
    && pip install --no-cache-dir -c constraints.txt -r requirements.txt
COPY README.md ./
COPY normserve/ normserve/
COPY service/ service/
COPY models/ models/
COPY export/ export/
RUN pip install --no-cache-dir --no-deps -c constraints.txt . \
    && pip check \
    && rm -rf /src
RUN groupadd --gid 10001 normserve \
    && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/normserve \
       --shell /usr/sbin/nologin normserve \
    && mkdir -p /checkpoints /models \
    && chown 10001:10001 /models
ENV PYTHONUNBUFFERED=1
USER 10001:10001
WORKDIR /models
ENTRYPOINT ["normserve", "export"]
CMD ["--help"]

# ---------------------------------------------------------------------------------------------
# gpu: the serving image on NVIDIA's CUDA runtime with onnxruntime-gpu in place of onnxruntime,
# selecting the CUDA provider (start-up fails if no GPU is visible: run with `--gpus all` or the
# compose `gpu` profile). Python 3.11 comes from Ubuntu's packages.
FROM ${CUDA_IMAGE} AS gpu
ARG MODEL_REPOSITORY=model_repository
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
# Package versions follow the CUDA_IMAGE tag's Ubuntu release; pinning them here would break the
# build each time that release's archive moves, so the base tag is the pin.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml constraints.txt deploy/docker/pyproject_requirements.py ./
RUN python pyproject_requirements.py pyproject.toml --replace onnxruntime=onnxruntime-gpu \
       > requirements.txt \
    && pip install --no-cache-dir -c constraints.txt -r requirements.txt
COPY README.md ./
COPY normserve/ normserve/
COPY service/ service/
COPY models/ models/
COPY export/ export/
# No `pip check` here: the project's metadata names onnxruntime, which onnxruntime-gpu replaces
# (both install the same `onnxruntime` package).
RUN pip install --no-cache-dir --no-deps -c constraints.txt . \
    && pip uninstall --yes pip setuptools \
    && rm -rf /src
RUN groupadd --gid 10001 normserve \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin normserve
COPY deploy/docker/healthcheck.py /opt/normserve/healthcheck.py
COPY --chown=10001:10001 ${MODEL_REPOSITORY}/ /models/
ENV ORT_DISABLE_TELEMETRY=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    NORMSERVE_REPOSITORY=/models \
    NORMSERVE_HOST=0.0.0.0 \
    NORMSERVE_PORT=8000 \
    NORMSERVE_GRPC_PORT=8001 \
    NORMSERVE_PROVIDER=cuda \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER 10001:10001
WORKDIR /models
EXPOSE 8000 8001
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "/opt/normserve/healthcheck.py"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["normserve", "serve"]

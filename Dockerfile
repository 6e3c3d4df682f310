# syntax=docker/dockerfile:1.7
# LipSync service, CPU image (ONNX Runtime in-process, or a Triton server via NV_AI4M_LS_BACKEND=triton).
#   docker build -t lipsync-service .
#   docker run --rm -p 8000:8000 -p 8001:8001 lipsync-service
# Every RUN command here is also run by tests/deploy/test_dockerfile.py (no Docker engine needed).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
WORKDIR /src
COPY . .
# setup.py's build_py generates the gRPC stubs from proto/ with the pinned grpcio-tools (build isolation).
RUN python3 -m pip wheel --no-cache-dir --no-deps --wheel-dir dist .

FROM ${PYTHON_IMAGE} AS runtime
# Extras of the wheel to install, e.g. "[triton]"; Dockerfile.gpu sets "[gpu]".
ARG LIPSYNC_EXTRAS=""
WORKDIR /src
# The wheel is bind-mounted from the builder so it never becomes a layer of the runtime image.
RUN --mount=type=bind,from=builder,source=/src/dist,target=/src/dist \
    python3 -m pip install --no-cache-dir "$(echo dist/*.whl)${LIPSYNC_EXTRAS}"
WORKDIR /app
COPY triton_repo/ /app/triton_repo/
# Settings defaults (lipsync_service/settings.py documents every variable).
ENV PYTHONUNBUFFERED=1 \
    OPENBLAS_NUM_THREADS=1 \
    HOME=/tmp \
    NIM_HOST=0.0.0.0 \
    NIM_HTTP_API_PORT=8000 \
    NIM_GRPC_API_PORT=8001 \
    NIM_SSL_MODE=disabled \
    NIM_LOG_LEVEL=INFO \
    NV_AI4M_LS_BACKEND=onnxruntime \
    NV_AI4M_LS_MODEL_REPOSITORY=/app/triton_repo \
    NV_AI4M_ENGINE_CACHE_DIR=/tmp/engines \
    NV_AI4M_MAX_CONCURRENCY_PER_GPU=2 \
    NV_AI4M_DRAIN_TIMEOUT_S=60
# A numeric uid so Kubernetes can verify runAsNonRoot without a passwd entry.
USER 10001:10001
EXPOSE 8000 8001
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request as u; u.urlopen('http://localhost:%s/v1/health/ready' % os.environ.get('NIM_HTTP_API_PORT', '8000'), timeout=4)"]
CMD ["lipsync-service", "serve"]

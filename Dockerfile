# melu cold-start recommendation service (CPU).
#   docker build -t melu .
#   docker run -p 8000:8000 -v "$PWD/runs/quickstart/model:/model:ro" melu
# A new bundle at $MELU_MODEL is picked up without a restart (checked every
# MELU_RELOAD_INTERVAL seconds); metrics at /metrics, the onboarding page at /.
FROM python:3.11-slim

ARG TORCH_VERSION=2.13.0
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MELU_MODEL=/model \
    MELU_HOST=0.0.0.0 \
    MELU_PORT=8000 \
    MELU_WORKERS=1

WORKDIR /app

# CPU torch first, from its own index, so pip never pulls a CUDA build.
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch==${TORCH_VERSION}"

COPY pyproject.toml README.md ./
COPY melu ./melu
COPY service ./service
RUN pip install . \
    && groupadd --gid 10001 melu \
    && useradd --create-home --uid 10001 --gid 10001 melu

# The bundle: mount it at $MELU_MODEL (default /model), or bake it in with
#   --build-arg and a COPY of runs/NAME/model to /model in a derived image.
USER 10001:10001
EXPOSE 8000

# Docker's "healthy" means "takes traffic": GET /ready (bundle loaded and warmed up; stays
# 200 through a reload). In Kubernetes use /health for the livenessProbe (restart only a
# process that stopped answering) and /ready for the readinessProbe.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(f\"http://127.0.0.1:{os.environ.get('MELU_PORT', '8000')}/ready\", timeout=4)"]

ENTRYPOINT ["sh", "-c", "exec melu serve --model \"$MELU_MODEL\" --host \"$MELU_HOST\" --port \"$MELU_PORT\" --workers \"$MELU_WORKERS\""]

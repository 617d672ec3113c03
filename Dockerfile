# syntax=docker/dockerfile:1
# Multi-stage build: dependencies and the package are built into a virtual environment in the
# first stage; the runtime stage copies only that environment and runs as a non-root user.

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY fhir_server ./fhir_server
COPY capability ./capability
COPY compartments ./compartments
COPY migrations ./migrations
RUN pip install .

FROM python:3.11-slim AS runtime
RUN groupadd --system --gid 10001 fhir \
    && useradd --system --uid 10001 --gid fhir --home-dir /app --create-home fhir \
    && mkdir -p /app/data && chown fhir:fhir /app/data
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HOST=0.0.0.0 \
    PORT=8080 \
    FHIR_DATA_DIR=/app/data
WORKDIR /app
USER 10001:10001
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '8080'), timeout=2)"]
# POSTGRES_URL must be set in production; without it the server starts its embedded PostgreSQL
# in FHIR_DATA_DIR, which suits a quick try but not a deployment.
CMD ["fhir-server", "serve"]

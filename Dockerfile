# syntax=docker/dockerfile:1
#
# relay container image. Build from the repository root:
#
#   docker build -t relay:0.1.0 .
#
# or with podman (--format docker keeps the HEALTHCHECK). PYTHON_IMAGE names another Python 3.11
# base; deploy/README.md shows one made with debootstrap, for a machine without Docker Hub.
#
# The builder stage turns the project into wheels and installs them into a virtual environment
# at /opt/relay; the final stage copies only that environment onto a clean base, so neither pip's
# caches nor the sources nor any build tool reach the image. Every dependency ships binary wheels
# for CPython 3.11 on amd64 and arm64, so no compiler is needed in either stage.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src

# README.md* so that the build works whether or not the readme is there. constraints.txt pins
# every dependency to the versions the test suite passed with, so a rebuild installs the same.
COPY pyproject.toml constraints.txt README.md* ./
COPY relay/ relay/
COPY migrations/ migrations/

# One wheel for the relay (distribution scalepoint-outbox-relay, relay.migrations included) and
# one for each dependency, then a virtual environment without pip that holds exactly those wheels.
# The otel extra comes along: tracing is then a matter of OTEL_* variables (off without them).
RUN pip wheel --constraint constraints.txt --wheel-dir /wheels '.[otel]' \
 && python -m venv --without-pip /opt/relay \
 && pip --python /opt/relay/bin/python install --no-index --find-links /wheels \
        "$(echo /wheels/scalepoint_outbox_relay-*.whl)[otel]" \
 && /opt/relay/bin/relay --help > /dev/null


FROM ${PYTHON_IMAGE}

LABEL org.opencontainers.image.title="relay" \
      org.opencontainers.image.description="Delivers an insurer's outbox events to Scalepoint's EventApi" \
      org.opencontainers.image.version="0.1.0"

# The same numeric ids as the Kubernetes manifests (runAsUser/runAsGroup 10001).
RUN groupadd --system --gid 10001 relay \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin relay

COPY --from=builder /opt/relay /opt/relay

# Bytecode was compiled at install time; the root filesystem may be read-only at run time.
ENV PATH=/opt/relay/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

USER 10001:10001

EXPOSE 8080
STOPSIGNAL SIGTERM

# No curl in a slim image: ask /healthz with the standard library. Follows RELAY_HTTP_PORT.
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('RELAY_HTTP_PORT', '8080'), timeout=4)"]

ENTRYPOINT ["relay"]
CMD ["run"]

# syntax=docker/dockerfile:1
# wastats as an OCI image: `docker build -t wastats .` (with podman, add `--format docker`, as
# podman's default OCI format drops the HEALTHCHECK). Configured only by WASTATS_* variables
# (docs/configuration.md); its data (the SQLite file, the generated key) lives in the
# /var/lib/wastats volume. compose.yaml runs it with PostgreSQL.

# --- base: Debian's python3 and the user the service runs as (shared by both stages) ----------
FROM debian:bookworm-slim AS base
# A fixed uid (not a system one), so a bind-mounted data directory can be chowned to it.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 \
 && apt-get clean && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin \
 && useradd --uid 10001 --user-group --no-create-home --home-dir /var/lib/wastats \
            --shell /usr/sbin/nologin wastats \
 && install -d -o wastats -g wastats -m 0750 /var/lib/wastats

# --- build: a virtual environment with wastats and its dependencies ---------------------------
FROM base AS build
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3-venv \
 && rm -rf /var/lib/apt/lists/*
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/wastats
# The dependencies first, from pyproject.toml alone, so a change to the code reuses this layer.
COPY pyproject.toml /src/
RUN python3 -c 'import tomllib; print("\n".join(tomllib.load(open("/src/pyproject.toml", "rb"))["project"]["dependencies"]))' > /src/requirements.txt \
 && /opt/wastats/bin/pip install -q -r /src/requirements.txt
COPY README.md /src/
COPY src /src/src
# Installers are not needed to run: the final image gets no pip, setuptools or compiler.
RUN /opt/wastats/bin/pip install -q --no-deps /src \
 && /opt/wastats/bin/pip uninstall -q -y pip setuptools

# --- final: the base and the environment, nothing else -----------------------------------------
FROM base
COPY --from=build /opt/wastats /opt/wastats
ENV PATH=/opt/wastats/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    WASTATS_DATABASE_URL=sqlite:////var/lib/wastats/wastats.db \
    WASTATS_HOST=0.0.0.0 \
    WASTATS_PORT=8000
USER wastats
WORKDIR /var/lib/wastats
VOLUME /var/lib/wastats
EXPOSE 8000
# 503 (database unreachable) or no answer makes urlopen raise: unhealthy.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python3", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('WASTATS_PORT', '8000'), timeout=4)"]
CMD ["wastats", "serve"]

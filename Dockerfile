# One image for every Parley service; each container picks its service by command:
#   docker run parley python -m services.llm
# Stages: `build` installs Parley and its dependencies into /opt/parley/venv, `sandbox-runtime`
# builds the code interpreter's own Python environment (what a sandbox sees, read-only),
# `console` builds the web console (served by the REST edge at /), `runtime` is the slim image
# that runs as an unprivileged user.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG NODE_IMAGE=node:20-bookworm-slim

FROM ${PYTHON_IMAGE} AS build
# torch is pinned in constraints.txt; on Linux PyPI's wheel of it is the CUDA build, so the CPU
# wheel comes from PyTorch's own index (override with --build-arg TORCH_INDEX_URL=...).
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/parley/venv
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY parley ./parley
COPY services ./services
RUN /opt/parley/venv/bin/pip install --extra-index-url "${TORCH_INDEX_URL}" -c constraints.txt . \
 && /opt/parley/venv/bin/python -c "import services.llm.app, services.files.app, services.sandbox.app"

FROM ${PYTHON_IMAGE} AS sandbox-runtime
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# The code interpreter's environment (what `make install` puts in .venv-sandbox): a kernel and
# the usual data packages, nothing of Parley.
COPY constraints.txt services/sandbox/runtime-requirements.txt /src/
RUN python -m venv /opt/parley/sandbox \
 && /opt/parley/sandbox/bin/pip install -c /src/constraints.txt -r /src/runtime-requirements.txt

FROM ${NODE_IMAGE} AS console
# The single-page app: only its static build goes into the runtime image (no Node.js there).
WORKDIR /src/console
COPY console/package.json console/package-lock.json ./
RUN npm ci --no-audit --no-fund --loglevel=error
COPY console ./
RUN npm run build

FROM ${PYTHON_IMAGE} AS runtime
# bubblewrap and libseccomp are the sandbox's walls (services/sandbox/walls.py); tini reaps
# the kernels' processes and forwards SIGTERM for the graceful shutdown.
RUN apt-get update \
 && apt-get install -y --no-install-recommends bubblewrap libseccomp2 tini \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 parley \
 && useradd --system --uid 10001 --gid parley --home-dir /var/lib/parley --create-home parley
COPY --from=build /opt/parley/venv /opt/parley/venv
COPY --from=sandbox-runtime /opt/parley/sandbox /opt/parley/sandbox
COPY --from=console /src/console/dist /opt/parley/console
COPY deploy/healthcheck.py /opt/parley/bin/grpc-health
COPY deploy/init_secrets.py /opt/parley/bin/parley-init-secrets
# /run/parley holds the shared secrets (a volume: it takes this directory's owner when created).
RUN chmod 0755 /opt/parley/bin/grpc-health /opt/parley/bin/parley-init-secrets \
 && install -d -o parley -g parley -m 0750 /run/parley
ENV PATH=/opt/parley/venv/bin:/opt/parley/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PARLEY_HOST=0.0.0.0 \
    PARLEY_STATE_DIR=/var/lib/parley \
    PARLEY_SANDBOX_RUNTIME=/opt/parley/sandbox \
    PARLEY_REST_CONSOLE_DIR=/opt/parley/console
USER 10001:10001
WORKDIR /var/lib/parley
ENTRYPOINT ["/usr/bin/tini", "--"]
# Overridden per container (docker-compose.yml, deploy/kubernetes/).
CMD ["python", "-m", "services.gateway"]

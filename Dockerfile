# The router as the cluster's routing container.
# BASE: a Debian slim image with Python 3.11+ and its venv module: the official Python image
# (Debian bookworm slim underneath) by default; the tests build one from Debian's packages
# (there is no registry to pull from). Both stages start from it: the compiled modules are
# built for the Python the final image runs.
ARG BASE=python:3.11-slim

# -- build: the compiler and the headers compile the data plane (setup.py: mypyc); none of them
# goes in the final image.
FROM ${BASE} AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && if ! python3 -c "import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()['include'], 'Python.h')))"; then \
      apt-get install -y --no-install-recommends python3-dev; \
    fi
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY router ./router
COPY admin ./admin
# In a virtual environment: Debian's own python3 refuses system-wide pip installs (PEP 668).
# The installer itself is not needed to run: it goes.
RUN python3 -m venv /opt/router/venv \
 && /opt/router/venv/bin/pip install --no-cache-dir '.[etcd]' \
 && /opt/router/venv/bin/pip uninstall --yes --quiet pip setuptools \
 && cd / && /opt/router/venv/bin/python -c "import router, sys; sys.exit(not router.compiled())"

# -- the image: the base, the virtual environment, a user.
FROM ${BASE}
COPY --from=build /opt/router/venv /opt/router/venv
ENV PATH=/opt/router/venv/bin:$PATH \
    ROUTER_STATE_DIR=/var/lib/router
RUN useradd --system --uid 10001 --home-dir /var/lib/router --create-home router \
 && mkdir -p /etc/router
COPY deploy/router.yaml /etc/router/router.yaml
# The routing state (weights, releases) and the sticky-cookie secret: on a volume, so that they
# outlive the container (docker rm, an upgrade of the image). Mount a named volume or a
# directory there (owned by uid 10001); the router warns at start when it is not a mount.
VOLUME /var/lib/router

USER router
EXPOSE 8080
# Follows admin.listen of the configuration the router runs with (router/healthcheck.py).
HEALTHCHECK --interval=10s --timeout=3s --retries=3 CMD ["python", "-m", "router.healthcheck"]
CMD ["router", "serve", "--config", "/etc/router/router.yaml"]

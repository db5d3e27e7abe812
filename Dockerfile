# The router as the cluster's routing container.
# BASE: any Debian-based image with Python 3.11+ and its venv module: the official Python image
# by default; the tests build one from Debian's packages (there is no registry to pull from).
ARG BASE=python:3.11-slim
FROM ${BASE}

WORKDIR /opt/router
COPY pyproject.toml setup.py README.md ./
COPY router ./router
COPY admin ./admin
# In a virtual environment: Debian's own python3 refuses system-wide pip installs (PEP 668).
ENV PATH=/opt/router/venv/bin:$PATH
# Same install step as the README's; gcc only while it runs, so that it compiles the data plane
# (setup.py: mypyc), then removed from the image.
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
 && python3 -m venv /opt/router/venv \
 && pip install --no-cache-dir '.[etcd]' \
 && apt-get purge -y --auto-remove gcc libc6-dev && rm -rf /var/lib/apt/lists/* \
 && cd / && python -c "import router, sys; sys.exit(not router.compiled())" && cd /opt/router \
 && useradd --system --uid 10001 --home-dir /var/lib/router --create-home router \
 && mkdir -p /etc/router && chown router /etc/router
COPY deploy/router.yaml /etc/router/router.yaml

USER router
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9090/healthz', timeout=2)"]
CMD ["router", "serve", "--config", "/etc/router/router.yaml"]

# The router as the cluster's routing container.
FROM python:3.11-slim

WORKDIR /opt/router
COPY pyproject.toml README.md ./
COPY router ./router
COPY admin ./admin
# Same install step as the README's.
RUN pip install --no-cache-dir . \
 && useradd --system --uid 10001 --home-dir /var/lib/router --create-home router \
 && mkdir -p /etc/router && chown router /etc/router
COPY deploy/router.yaml /etc/router/router.yaml

USER router
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9090/healthz', timeout=2)"]
CMD ["router", "serve", "--config", "/etc/router/router.yaml"]

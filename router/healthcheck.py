"""The container image's health check: ``python -m router.healthcheck [CONFIG]``.

Asks the running router's admin API for ``/healthz`` where its configuration says the admin API
listens (``admin.listen``; a wildcard address is asked on loopback), so that the check follows
the configuration instead of assuming ``127.0.0.1:9090``. The configuration is CONFIG if given,
else the one the running ``router serve`` was started with (its ``--config``, read from /proc),
else ``/etc/router/router.yaml``. Exits 0 on a 200, else 1 with the reason on standard error
(``docker inspect`` shows it in the health log).
"""

from __future__ import annotations

import os
import sys
import urllib.request

from .config import AdminConfig, ConfigError, read_yaml
from .config.scalars import format_hostport, parse_listen

DEFAULT_CONFIG = "/etc/router/router.yaml"
TIMEOUT = 2.0  # below the image's HEALTHCHECK --timeout (3 s)
_WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "::1"}


def _serve_config(argv: list[str], cwd: str) -> str | None:
    """The ``--config`` of a ``router serve`` command line ("" without one: the defaults);
    None if it is not one."""
    if "serve" not in argv or not any(os.path.basename(a) in ("router", "router.cli")
                                      for a in argv[:3]):
        return None
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            return os.path.join(cwd, argv[i + 1])
        if arg.startswith("--config="):
            return os.path.join(cwd, arg.split("=", 1)[1])
    return ""


def running_config(proc: str = "/proc") -> str | None:
    """The configuration file of the oldest ``router serve`` process that is visible ("": it
    has none); None if there is no such process."""
    try:
        pids = sorted(int(p) for p in os.listdir(proc) if p.isdigit())
    except OSError:
        return None
    for pid in pids:
        try:
            with open(f"{proc}/{pid}/cmdline", "rb") as f:
                argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
            cwd = os.readlink(f"{proc}/{pid}/cwd")
        except OSError:
            continue
        found = _serve_config(argv, cwd)
        if found is not None:
            return found
    return None


def admin_url(config_path: str) -> str:
    """The ``/healthz`` URL of the admin API the configuration describes ("": the defaults)."""
    data = read_yaml(config_path) if config_path else {}
    admin = data.get("admin") if isinstance(data, dict) else None
    listen = admin.get("listen") if isinstance(admin, dict) else None
    if listen is None:
        host, port = AdminConfig().host, AdminConfig().port
    else:
        host, port = parse_listen(listen, "admin.listen", config_path)
    host = _WILDCARDS.get(host, host)
    return f"http://{format_hostport(host, port, ':' in host)}/healthz"


def main(argv: list[str]) -> int:
    path = argv[1] if len(argv) > 1 else running_config()
    if path is None:
        path = DEFAULT_CONFIG
    try:
        url = admin_url(path)
    except ConfigError as e:
        print(f"healthcheck: {e}", file=sys.stderr)
        return 1
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as r:
            if r.status == 200:
                return 0
            print(f"healthcheck: {url}: {r.status}", file=sys.stderr)
    except OSError as e:
        print(f"healthcheck: {url}: {e}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))

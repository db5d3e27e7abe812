"""``routerctl``: the operator's client for the router's admin API (README: routerctl, The admin API).

It only speaks HTTP to the admin API -- every rule (weights 0..100, one open release per app,
no confirm while ``in_progress`` ...) is the server's, and the server's error message is what the
operator sees. The standard library, and the router's YAML reader for ``apply`` and ``export``.

    routerctl apps
    routerctl show shop
    routerctl create shop --route shop.example.com --backend 10.0.0.5:80
    routerctl weights shop web=0 web-v2=100       # one atomic step [--force]
    routerctl sticky shop off
    routerctl routes shop shop.example.com example.com/shop
    routerctl drain-timeout shop 10m
    routerctl preview-header shop X-Preview [--value yes]   # or none
    routerctl service set shop web --backend 10.0.0.5:80 --backend 10.0.0.6:80
    routerctl service delete shop web-old
    routerctl release start shop web-v2 --backend 10.0.0.7:80 --wait
    routerctl release status shop
    routerctl release confirm shop [--force] [--remove]
    routerctl release rollback shop [--remove]
    routerctl release ramp shop --steps 5,25,50,100 --interval 60s --max-error-rate 1% \
        --max-latency-ratio 2 [--wait]           # raised step by step, rolled back on errors
    routerctl release pause|resume|abort shop    # the ramp
    routerctl release preview shop [--ttl 1h]    # a link that shows a browser the new version
    routerctl delete shop
    routerctl export > router.yaml                # the apps, as a configuration file
    routerctl apply router.yaml [--dry-run] [--force]
    routerctl export | routerctl apply --dry-run  # a file from standard input
    routerctl history [shop] [--limit N]

Global options (before or after the command): ``--url`` (env ``ROUTER_URL``, default
``http://127.0.0.1:9090``), ``--token`` (env ``ROUTER_TOKEN``), ``--json``, ``--timeout``,
``--if-match``.

Exit codes: 0 success; 1 the server answered with an error (or: no open release, a ``--wait``
that timed out); 2 a bad command line; 3 the admin API cannot be reached; 4 ``apply --dry-run``
found that the apply would be refused without ``--force``. A reader that closes the pipe
(``routerctl export | head -1``) is not an error.

The package: ``client`` (HTTP and errors), ``render`` (tables), ``commands`` (apps, services,
weights, routes), ``release`` (the release and its ramp), ``state`` (export, apply, history),
``cli`` (the parser and ``main``).
"""

from .cli import main

__all__ = ["main"]

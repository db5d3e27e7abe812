"""router.config: loading, defaults, validation messages, Aliyun labels, scalar parsers."""

from __future__ import annotations

import ipaddress
import pickle
import textwrap
from pathlib import Path

import pytest

from router.config import (
    NAME_RE,
    AccessLogConfig,
    AdminConfig,
    AppConfig,
    Config,
    ConfigError,
    HealthCheckConfig,
    Limits,
    Route,
    ServiceConfig,
    StickyConfig,
    Timeouts,
    UpstreamConfig,
    config_from_dict,
    load_config,
    parse_app,
    parse_backend,
    parse_duration,
    parse_health_check,
    parse_listen,
    parse_route,
    parse_routing_label,
    parse_service,
    split_hostport,
)


@pytest.fixture(autouse=True)
def _no_admin_token_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ROUTER_ADMIN_TOKEN", raising=False)


def write(tmp_path: Path, text: str, name: str = "router.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def load_text(tmp_path: Path, text: str) -> Config:
    return load_config(str(write(tmp_path, text)))


def app_with(service: dict[str, object], **app: object) -> dict[str, object]:
    return {"apps": {"shop": {"routes": ["shop.example.com"], "services": {"web": service}, **app}}}


# --------------------------------------------------------------------------------------------
# Whole files
# --------------------------------------------------------------------------------------------

DOCUMENTED_EXAMPLE = """\
listen: 0.0.0.0:8080
admin:
  listen: 127.0.0.1:9090
  token_file: {token_file}
domain: example.com
sticky:
  cookie: CONTAINERID
  max_idle: 30m
  max_life: 8h
timeouts:
  connect: 3s
  response: 60s
  client_header: 10s
  client_idle: 60s
  grace: 10s
trusted_proxies: []
access_log: {{enabled: false, format: json}}
apps:
  shop:
    session_sticky: true
    routes: [shop.example.com]
    services:
      web:
        weight: 100
        backends: [10.0.0.5:80, 10.0.0.6:80]
        health_check: {{path: /healthz, interval: 2s, timeout: 1s}}
"""


def test_spec_example_loads_exactly(tmp_path: Path) -> None:
    token_file = tmp_path / "router-token"
    token_file.write_text("s3cret-token\n")
    path = write(tmp_path, DOCUMENTED_EXAMPLE.format(token_file=token_file))

    assert load_config(str(path)) == Config(
        listen_host="0.0.0.0",
        listen_port=8080,
        admin=AdminConfig(
            host="127.0.0.1", port=9090, token_file=str(token_file), token="s3cret-token"
        ),
        domain="example.com",
        sticky=StickyConfig(cookie="CONTAINERID", max_idle=1800.0, max_life=28800.0),
        timeouts=Timeouts(connect=3.0, response=60.0, client_header=10.0, client_idle=60.0,
                          grace=10.0),
        limits=Limits(),
        trusted_proxies=(),
        access_log=AccessLogConfig(enabled=False, format="json"),
        apps=(
            AppConfig(
                name="shop",
                routes=(Route("shop.example.com", "/"),),
                services=(
                    ServiceConfig(
                        name="web",
                        weight=100,
                        backends=("10.0.0.5:80", "10.0.0.6:80"),
                        health_check=HealthCheckConfig(path="/healthz", interval=2.0, timeout=1.0,
                                                       rise=2, fall=3),
                    ),
                ),
                session_sticky=True,
                drain_timeout=None,
            ),
        ),
        source=str(path),
    )


def test_spec_label_example_loads_exactly(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, """\
        domain: example.com
        apps:
          shop:
            services:
              web:
                labels:
                  aliyun.routing.port_80: nginx
                  aliyun.routing.session_sticky: "false"
                backends: [10.0.0.5, 10.0.0.6]
        """)
    assert cfg.apps == (
        AppConfig(
            name="shop",
            routes=(Route("nginx.example.com"),),
            services=(ServiceConfig("web", 100, ("10.0.0.5:80", "10.0.0.6:80")),),
            session_sticky=False,
        ),
    )


def test_every_extra_section(tmp_path: Path) -> None:
    secret = tmp_path / "sticky.key"
    secret.write_text("0123456789abcdef")
    cfg = load_text(tmp_path, f"""\
        listen: "[::]:0"
        admin: {{listen: "[::1]:0"}}
        sticky: {{cookie: SRV_ID, max_idle: 90s, max_life: 1h30m, secret_file: {secret}}}
        timeouts: {{connect: 500ms, response: 2.5, client_header: 1, client_idle: 1m, grace: 0,
                   drain_delay: 5s, client_send: 30s, tunnel_idle: 2h}}
        limits: {{max_request_line: 4KiB, max_header: 16k, max_headers: 1MiB,
                  max_header_fields: 50, max_connections: 512}}
        upstream: {{reuse: always}}
        trusted_proxies: [10.0.0.0/8, 192.168.1.7, "fd00::/8", 10.0.0.0/8]
        access_log: {{enabled: true, format: combined}}
        apps:
          blog:
            session_sticky: false
            drain_timeout: 5m
            routes: [Blog.Example.COM/api/, example.com]
            services:
              v1: {{weight: 30, backends: ["[::1]:8001", "LOCALHOST:8002"],
                    health_check: {{}}}}
              v2:
                weight: 0
                backends: []
                health_check: {{path: /ready?full=1, interval: 5s, timeout: 2s, rise: 1, fall: 5}}
        """)
    assert cfg == Config(
        listen_host="::",
        listen_port=0,
        admin=AdminConfig(host="::1", port=0),
        sticky=StickyConfig(cookie="SRV_ID", max_idle=90.0, max_life=5400.0,
                            secret_file=str(secret)),
        timeouts=Timeouts(connect=0.5, response=2.5, client_header=1.0, client_idle=60.0,
                          grace=0.0, drain_delay=5.0, client_send=30.0, tunnel_idle=7200.0),
        limits=Limits(max_request_line=4096, max_header=16384, max_headers=1048576,
                      max_header_fields=50, max_connections=512),
        upstream=UpstreamConfig(reuse="always"),
        trusted_proxies=(
            ipaddress.ip_network("10.0.0.0/8"),
            ipaddress.ip_network("192.168.1.7/32"),
            ipaddress.ip_network("fd00::/8"),
        ),
        access_log=AccessLogConfig(enabled=True, format="combined"),
        apps=(
            AppConfig(
                name="blog",
                routes=(Route("blog.example.com", "/api"), Route("example.com", "/")),
                services=(
                    ServiceConfig("v1", 30, ("[::1]:8001", "localhost:8002"), HealthCheckConfig()),
                    ServiceConfig("v2", 0, (), HealthCheckConfig("/ready?full=1", 5.0, 2.0, 1, 5)),
                ),
                session_sticky=False,
                drain_timeout=300.0,
            ),
        ),
        source=str(tmp_path / "router.yaml"),
    )


@pytest.mark.parametrize("text", ["", "# only a comment\n", "{}\n", "---\n"])
def test_empty_file_is_the_default_config(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    assert load_config(str(path)) == Config(source=str(path))


def test_config_from_dict_defaults() -> None:
    assert config_from_dict(None) == Config()
    assert config_from_dict({}) == Config()
    assert config_from_dict({"admin": None, "apps": None, "sticky": None}) == Config()
    assert config_from_dict({}, source="/etc/router.yaml") == Config(source="/etc/router.yaml")


def test_services_keep_file_order_and_weight_defaults_to_100() -> None:
    cfg = config_from_dict({"apps": {"shop": {"routes": ["shop.example.com"], "services": {
        "zeta": {"backends": ["a:1"]},
        "alpha": {"weight": 0, "backends": ["b:1"]},
        "mid": {"weight": 7, "backends": ["c:1"]},
    }}}})
    assert [(s.name, s.weight) for s in cfg.apps[0].services] == [
        ("zeta", 100), ("alpha", 0), ("mid", 7)
    ]


def test_admin_token_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROUTER_ADMIN_TOKEN", "  from-env \n")
    cfg = config_from_dict({"admin": {"listen": "0.0.0.0:9090"}})
    assert cfg.admin == AdminConfig(host="0.0.0.0", port=9090, token_file=None, token="from-env",
                                    metrics_public=False)  # off loopback: /metrics needs it


def test_admin_token_file_wins_over_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROUTER_ADMIN_TOKEN", "from-env")
    (tmp_path / "tok").write_text("from-file\n")
    cfg = config_from_dict({"admin": {"token_file": str(tmp_path / "tok")}})
    assert cfg.admin.token == "from-file"


def test_relative_files_resolve_next_to_the_config(tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "token").write_text("t0k\n")
    (tmp_path / "secrets" / "sticky").write_text("0123456789abcdef0123\n")
    cfg = load_text(tmp_path, """\
        admin: {listen: "10.1.2.3:9090", token_file: secrets/token}
        sticky: {secret_file: secrets/sticky}
        """)
    assert cfg.admin == AdminConfig("10.1.2.3", 9090, str(tmp_path / "secrets" / "token"), "t0k",
                                    metrics_public=False)
    assert cfg.sticky.secret_file == str(tmp_path / "secrets" / "sticky")


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.10", "[::1]", "localhost"])
def test_admin_on_loopback_needs_no_token(host: str) -> None:
    cfg = config_from_dict({"admin": {"listen": f"{host}:9191"}})
    assert cfg.admin.token is None
    assert cfg.admin.port == 9191


# --------------------------------------------------------------------------------------------
# Aliyun labels
# --------------------------------------------------------------------------------------------

LABEL = "apps.shop.services.web.labels.aliyun.routing.port_80"
LONG_128 = "a" * 63 + "." + "b" * 52 + ".example.com"  # the longest domain Aliyun allows
LONG_DOMAIN_124 = "d" * 60 + "." + "e" * 51 + ".example.com"  # "nginx." + it is 130


@pytest.mark.parametrize(
    ("value", "domain", "routes"),
    [
        ("nginx", "example.com", (Route("nginx.example.com", "/"),)),
        ("wp.sample.com", None, (Route("wp.sample.com", "/"),)),
        ("wp.sample.com", "example.com", (Route("wp.sample.com", "/"),)),
        ("http://wp.sample.com/context", None, (Route("wp.sample.com", "/context"),)),
        ("HTTP://WP.Sample.com/Context/", None, (Route("wp.sample.com", "/Context"),)),
        ("wp.sample.com:/context", None, (Route("wp.sample.com", "/context"),)),
        ("wp.sample.com:context/deep", None, (Route("wp.sample.com", "/context/deep"),)),
        ("http://wp.sample.com:/context", None, (Route("wp.sample.com", "/context"),)),
        (
            "wordpress;http://wp.sample.com/context",
            "example.com",
            (Route("wordpress.example.com", "/"), Route("wp.sample.com", "/context")),
        ),
        ("nginx:/api", "example.com", (Route("nginx.example.com", "/api"),)),
        ("nginx/api", "example.com", (Route("nginx.example.com", "/api"),)),
        (" a ; b.example.org ;a", "example.com",
         (Route("a.example.com"), Route("b.example.org"))),
        (LONG_128, None, (Route(LONG_128),)),
        ("w.io:/" + "c" * 127, None, (Route("w.io", "/" + "c" * 127),)),
    ],
)
def test_routing_label_forms(value: str, domain: str | None, routes: tuple[Route, ...]) -> None:
    assert parse_routing_label(value, domain, LABEL) == routes


@pytest.mark.parametrize(
    ("value", "domain", "reason"),
    [
        ("a" + LONG_128, None, "domain is longer than 128 characters"),
        ("nginx", LONG_DOMAIN_124, "domain is longer than 128 characters"),
        ("w.io:/" + "c" * 128, None, "context path is longer than 128 characters"),
        ("nginx", None, "a bare prefix 'nginx' needs the top-level 'domain' to be configured"),
        ("https://wp.sample.com", None, "only http:// is supported"),
        ("wp.sample.com:8080", None,
         "a port cannot be given here (the port is the label's); a context path starts with '/'"),
        ("wp.sample.com:", None, "empty context path after ':'"),
        ("http://wp.sample.com:80/context", None,
         "a port cannot be given here (the port is the label's); a context path starts with '/'"),
        ("-bad", "example.com", "domain prefix must be one valid DNS label"),
        ("wp..sample.com", None, "domain must be a valid DNS name"),
        ("http://", None, "missing domain or domain prefix"),
        ("wp.sample.com/a//b", None,
         "path prefix must not contain empty, '.' or '..' segments"),
        ("wp.sample.com/a b", None,
         "path prefix has characters that are not allowed in a URL path"),
    ],
)
def test_routing_label_errors(value: str, domain: str | None, reason: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_routing_label(value, domain, LABEL, source="f.yaml")
    assert exc.value.path == LABEL
    assert exc.value.reason == reason
    assert exc.value.source == "f.yaml"
    assert value.strip() in str(exc.value) or repr(value) in str(exc.value)


@pytest.mark.parametrize("value", ["", "  ", "a;;b", "a;"])
def test_routing_label_empty_entries(value: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_routing_label(value, "example.com", LABEL)
    assert exc.value.path == LABEL
    assert exc.value.value == value


def test_label_port_fills_port_less_backends_only() -> None:
    cfg = config_from_dict({"domain": "example.com", "apps": {"shop": {"services": {"web": {
        "labels": {"aliyun.routing.port_8080": "shop", "com.example.team": "payments"},
        "backends": ["10.0.0.5", "10.0.0.6:9000", "[fd00::1]", "web-1"],
    }}}}})
    assert cfg.apps[0].routes == (Route("shop.example.com"),)
    assert cfg.apps[0].services[0].backends == (
        "10.0.0.5:8080", "10.0.0.6:9000", "[fd00::1]:8080", "web-1:8080"
    )


def test_labels_list_form_and_several_ports_with_explicit_backend_ports() -> None:
    cfg = config_from_dict({"domain": "example.com", "apps": {"shop": {"services": {"web": {
        "labels": ["aliyun.routing.port_80=www", "aliyun.routing.port_81=admin;www:/x"],
        "backends": ["10.0.0.5:80"],
    }}}}})
    assert cfg.apps[0].routes == (
        Route("www.example.com"), Route("admin.example.com"), Route("www.example.com", "/x")
    )


def test_label_routes_merge_with_routes_and_across_services() -> None:
    app = parse_app("shop", {
        "routes": ["nginx.example.com", "shop.example.com/api"],
        "services": {
            "blue": {"labels": {"aliyun.routing.port_80": "nginx;shop.example.com:/api/"},
                     "backends": ["10.0.0.5"]},
            "green": {"weight": 0, "labels": {"aliyun.routing.port_80": "nginx;green"},
                      "backends": ["10.0.0.7"]},
        },
    }, "example.com", "apps.shop")
    assert app.routes == (
        Route("nginx.example.com"), Route("shop.example.com", "/api"), Route("green.example.com")
    )
    assert [s.backends for s in app.services] == [("10.0.0.5:80",), ("10.0.0.7:80",)]


@pytest.mark.parametrize(
    ("labels", "explicit", "expected"),
    [
        ({}, None, True),
        ({"aliyun.routing.session_sticky": "false"}, None, False),
        ({"aliyun.routing.session_sticky": "TRUE"}, None, True),
        ({"aliyun.routing.session_sticky": False}, None, False),
        ({"aliyun.routing.session_sticky": "false"}, False, False),
        ({}, False, False),
    ],
)
def test_session_sticky_label(labels: dict[str, object], explicit: bool | None,
                              expected: bool) -> None:
    data: dict[str, object] = {
        "routes": ["shop.example.com"],
        "services": {"web": {"labels": labels, "backends": ["a:1"]}},
    }
    if explicit is not None:
        data["session_sticky"] = explicit
    assert parse_app("shop", data, None, "apps.shop").session_sticky is expected


# --------------------------------------------------------------------------------------------
# Validation messages: the path, the reason, the value
# --------------------------------------------------------------------------------------------

# (id, YAML text, expected key path, expected value)
BAD_FILES = [
    ("weight-101", """\
        apps: {shop: {routes: [shop.example.com], services: {web: {weight: 101, backends: []}}}}
        """, "apps.shop.services.web.weight", 101),
    ("weight-negative", """\
        apps: {shop: {routes: [shop.example.com], services: {web: {weight: -1, backends: []}}}}
        """, "apps.shop.services.web.weight", -1),
    ("weight-bool", """\
        apps: {shop: {routes: [shop.example.com], services: {web: {weight: true, backends: []}}}}
        """, "apps.shop.services.web.weight", True),
    ("weight-float", """\
        apps: {shop: {routes: [shop.example.com], services: {web: {weight: 1.5, backends: []}}}}
        """, "apps.shop.services.web.weight", 1.5),
    ("weight-string", """\
        apps: {shop: {routes: [shop.example.com], services: {web: {weight: "50", backends: []}}}}
        """, "apps.shop.services.web.weight", "50"),
    ("app-name", """\
        apps: {Shop: {routes: [shop.example.com], services: {web: {backends: []}}}}
        """, "apps.Shop", "Shop"),
    ("service-name", """\
        apps: {shop: {routes: [shop.example.com], services: {web_v2: {backends: []}}}}
        """, "apps.shop.services.web_v2", "web_v2"),
    ("unknown-top", "listen: 0.0.0.0:8080\nlisten_port: 8080\n", "listen_port", 8080),
    ("unknown-nested", """\
        apps: {shop: {routes: [shop.example.com], services: {web: {backends: [], wieght: 5}}}}
        """, "apps.shop.services.web.wieght", 5),
    ("unknown-section-key", "timeouts: {connect: 3s, read: 5s}\n", "timeouts.read", "5s"),
    ("unknown-health-key", """\
        apps: {shop: {routes: [shop.example.com],
               services: {web: {backends: [], health_check: {url: /x}}}}}
        """, "apps.shop.services.web.health_check.url", "/x"),
    ("duration-parsecs", "timeouts: {connect: 10 parsecs}\n", "timeouts.connect", "10 parsecs"),
    ("duration-zero", "timeouts: {response: 0s}\n", "timeouts.response", "0s"),
    ("client-body-zero", "timeouts: {client_body: 0}\n", "timeouts.client_body", 0),
    ("client-send-zero", "timeouts: {client_send: 0s}\n", "timeouts.client_send", "0s"),
    ("tunnel-idle-bad", "timeouts: {tunnel_idle: forever}\n", "timeouts.tunnel_idle", "forever"),
    ("header-fields-zero", "limits: {max_header_fields: 0}\n", "limits.max_header_fields", 0),
    ("header-fields-size", "limits: {max_header_fields: 1KiB}\n", "limits.max_header_fields",
     "1KiB"),
    ("upstream-reuse", "upstream: {reuse: never}\n", "upstream.reuse", "never"),
    ("upstream-key", "upstream: {pool: 3}\n", "upstream.pool", 3),
    ("passive-failures-negative", "passive_health: {failures: -1}\n", "passive_health.failures", -1),
    ("passive-failures-float", "passive_health: {failures: 2.5}\n", "passive_health.failures", 2.5),
    ("passive-failures-bool", "passive_health: {failures: true}\n", "passive_health.failures", True),
    ("passive-cooldown-zero", "passive_health: {cooldown: 0s}\n", "passive_health.cooldown", "0s"),
    ("passive-cooldown-bad", "passive_health: {cooldown: soon}\n", "passive_health.cooldown", "soon"),
    ("passive-unknown-key", "passive_health: {max_fails: 3}\n", "passive_health.max_fails", 3),
    ("passive-not-mapping", "passive_health: 3\n", "passive_health", 3),
    ("duration-unitless", "sticky: {max_idle: '30'}\n", "sticky.max_idle", "30"),
    ("drain-zero", """\
        apps: {shop: {drain_timeout: 0, routes: [shop.example.com],
               services: {web: {backends: []}}}}
        """, "apps.shop.drain_timeout", 0),
    ("listen-port", "listen: 0.0.0.0:70000\n", "listen", "0.0.0.0:70000"),
    ("listen-no-port", "listen: 0.0.0.0\n", "listen", "0.0.0.0"),
    ("listen-bare-v6", "listen: '::1:8080'\n", "listen", "::1:8080"),
    ("admin-listen", "admin: {listen: 'localhost:http'}\n", "admin.listen", "localhost:http"),
    ("backend-port", """\
        apps: {shop: {routes: [shop.example.com], services: {web: {backends: [10.0.0.5:99999]}}}}
        """, "apps.shop.services.web.backends[0]", "10.0.0.5:99999"),
    ("backend-space", """\
        apps: {shop: {routes: [shop.example.com], services: {web: {backends: [ok:1, "a b:80"]}}}}
        """, "apps.shop.services.web.backends[1]", "a b:80"),
    ("backend-port-0", """\
        apps: {shop: {routes: [shop.example.com], services: {web: {backends: ["a:0"]}}}}
        """, "apps.shop.services.web.backends[0]", "a:0"),
    ("backend-no-port", """\
        apps: {shop: {routes: [shop.example.com], services: {web: {backends: [10.0.0.5]}}}}
        """, "apps.shop.services.web.backends[0]", "10.0.0.5"),
    ("backend-bad-ipv4", """\
        apps: {shop: {routes: [shop.example.com], services: {web: {backends: ["010.0.0.5:80"]}}}}
        """, "apps.shop.services.web.backends[0]", "010.0.0.5:80"),
    ("backend-duplicate", """\
        apps: {shop: {routes: [shop.example.com],
               services: {web: {backends: [10.0.0.5:80, 10.0.0.6:80, 10.0.0.5:80]}}}}
        """, "apps.shop.services.web.backends[2]", "10.0.0.5:80"),
    ("backend-duplicate-normalised", """\
        apps: {shop: {routes: [shop.example.com],
               services: {web: {backends: ["[::1]:80", "[0:0::1]:80"]}}}}
        """, "apps.shop.services.web.backends[1]", "[0:0::1]:80"),
    ("backends-missing", """\
        apps: {shop: {routes: [shop.example.com], services: {web: {weight: 5}}}}
        """, "apps.shop.services.web.backends", None),
    ("route-across-apps", """\
        apps:
          shop: {routes: [shop.example.com], services: {web: {backends: []}}}
          blog: {routes: [blog.example.com, Shop.Example.com/], services: {web: {backends: []}}}
        """, "apps.blog.routes[1]", "shop.example.com"),
    ("route-twice-in-app", """\
        apps: {shop: {routes: [shop.example.com/api, shop.example.com/api/],
               services: {web: {backends: []}}}}
        """, "apps.shop.routes[1]", "shop.example.com/api/"),
    ("route-label-across-apps", """\
        domain: example.com
        apps:
          shop: {routes: [nginx.example.com], services: {web: {backends: []}}}
          blog: {services: {web: {labels: {aliyun.routing.port_80: nginx}, backends: []}}}
        """, "apps.blog.services.web.labels.aliyun.routing.port_80", "nginx.example.com"),
    ("route-port", """\
        apps: {shop: {routes: ["shop.example.com:8080"], services: {web: {backends: []}}}}
        """, "apps.shop.routes[0]", "shop.example.com:8080"),
    ("no-route", """\
        apps: {shop: {services: {web: {backends: []}}}}
        """, "apps.shop.routes", None),
    ("no-services", "apps: {shop: {routes: [shop.example.com], services: {}}}\n",
     "apps.shop.services", {}),
    ("cidr", "trusted_proxies: [10.0.0.0/33]\n", "trusted_proxies[0]", "10.0.0.0/33"),
    ("cidr-host-bits", "trusted_proxies: [10.0.0.0/8, 10.1.0.0/8]\n", "trusted_proxies[1]",
     "10.1.0.0/8"),
    ("cookie", "sticky: {cookie: 'my cookie'}\n", "sticky.cookie", "my cookie"),
    ("secret-no-dir", "sticky: {secret_file: /nonexistent/dir/key}\n", "sticky.secret_file",
     "/nonexistent/dir/key"),
    ("cookie-long", f"sticky: {{cookie: {'c' * 65}}}\n", "sticky.cookie", "c" * 65),
    ("admin-off-loopback", "admin: {listen: 0.0.0.0:9090}\n", "admin.token_file", None),
    ("token-file-missing", "admin: {token_file: /nonexistent/router-token}\n",
     "admin.token_file", "/nonexistent/router-token"),
    ("admin-same-as-listen", "listen: 127.0.0.1:8080\nadmin: {listen: 127.0.0.1:8080}\n",
     "admin.listen", "127.0.0.1:8080"),
    ("yaml-syntax", "listen: 0.0.0.0:8080\nadmin: [unclosed\n", "", ""),
    ("yaml-duplicate-key", "listen: 0.0.0.0:8080\nlisten: 0.0.0.0:8081\n", "",
     "listen: 0.0.0.0:8081"),
    ("top-level-list", "- listen\n- apps\n", "", ["listen", "apps"]),
    ("top-level-scalar", "just a string\n", "", "just a string"),
    ("non-string-key", "timeouts: {1: 2s}\n", "timeouts", 1),
    ("access-log-format", "access_log: {format: xml}\n", "access_log.format", "xml"),
    ("access-log-enabled", "access_log: {enabled: 'yes'}\n", "access_log.enabled", "yes"),
    ("logging-format", "logging: {format: xml}\n", "logging.format", "xml"),
    ("public-url-path", "public_url: https://{host}/shop\n", "public_url", "https://{host}/shop"),
    ("public-url-scheme", "public_url: ftp://{host}\n", "public_url", "ftp://{host}"),
    ("public-url-port", "public_url: 'http://{host}:0'\n", "public_url", "http://{host}:0"),
    ("limit-zero", "limits: {max_header: 0}\n", "limits.max_header", 0),
    ("limit-unit", "limits: {max_headers: 64KB}\n", "limits.max_headers", "64KB"),
    ("limit-connections-size", "limits: {max_connections: 1KiB}\n", "limits.max_connections",
     "1KiB"),
    ("domain", "domain: 'exa mple.com'\n", "domain", "exa mple.com"),
    ("health-path", """\
        apps: {shop: {routes: [shop.example.com],
               services: {web: {backends: [], health_check: {path: healthz}}}}}
        """, "apps.shop.services.web.health_check.path", "healthz"),
    ("health-rise", """\
        apps: {shop: {routes: [shop.example.com],
               services: {web: {backends: [], health_check: {rise: 0}}}}}
        """, "apps.shop.services.web.health_check.rise", 0),
    ("session-sticky-string", """\
        apps: {shop: {session_sticky: "true", routes: [shop.example.com],
               services: {web: {backends: []}}}}
        """, "apps.shop.session_sticky", "true"),
    ("label-unknown", """\
        apps: {shop: {routes: [shop.example.com],
               services: {web: {backends: [], labels: {aliyun.routing.weight: "5"}}}}}
        """, "apps.shop.services.web.labels.aliyun.routing.weight", "5"),
    ("label-bare-prefix-no-domain", """\
        apps: {shop: {services: {web: {backends: [], labels: {aliyun.routing.port_80: nginx}}}}}
        """, "apps.shop.services.web.labels.aliyun.routing.port_80", "nginx"),
    ("label-ambiguous-port", """\
        domain: example.com
        apps: {shop: {services: {web: {backends: [10.0.0.5],
               labels: {aliyun.routing.port_80: a, aliyun.routing.port_443: b}}}}}
        """, "apps.shop.services.web.backends[0]", "10.0.0.5"),
    ("label-sticky-value", """\
        apps: {shop: {routes: [shop.example.com], services: {web: {backends: [],
               labels: {aliyun.routing.session_sticky: "maybe"}}}}}
        """, "apps.shop.services.web.labels.aliyun.routing.session_sticky", "maybe"),
    ("label-sticky-vs-key", """\
        apps: {shop: {session_sticky: true, routes: [shop.example.com],
               services: {web: {backends: [],
               labels: {aliyun.routing.session_sticky: "false"}}}}}
        """, "apps.shop.services.web.labels.aliyun.routing.session_sticky", False),
    ("label-sticky-across-services", """\
        apps: {shop: {routes: [shop.example.com], services: {
               a: {backends: [], labels: {aliyun.routing.session_sticky: "true"}},
               b: {backends: [], labels: {aliyun.routing.session_sticky: "false"}}}}}
        """, "apps.shop.services.b.labels.aliyun.routing.session_sticky", False),
    ("label-port-0", """\
        domain: example.com
        apps: {shop: {services: {web: {backends: [], labels: {aliyun.routing.port_0: a}}}}}
        """, "apps.shop.services.web.labels.aliyun.routing.port_0", "aliyun.routing.port_0"),
]


@pytest.mark.parametrize(
    ("text", "path", "value"), [case[1:] for case in BAD_FILES], ids=[c[0] for c in BAD_FILES]
)
def test_bad_file_names_path_and_value(tmp_path: Path, text: str, path: str,
                                       value: object) -> None:
    file = write(tmp_path, text)
    with pytest.raises(ConfigError) as exc:
        load_config(str(file))
    err = exc.value
    assert err.source == str(file)
    assert err.path == path
    assert err.value == value
    assert str(err).startswith(f"{file}: {path}: " if path else f"{file}: ")
    assert str(err).endswith(f" (got {value!r})")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("apps: {shop: {routes: [shop.example.com], services: {web: {weight: 101, "
         "backends: []}}}}\n",
         "{file}: apps.shop.services.web.weight: must be an integer 0..100 (got 101)"),
        ("listen_port: 8080\n",
         "{file}: listen_port: unknown key; allowed keys: listen, admin, domain, sticky, "
         "timeouts, trusted_proxies, access_log, logging, public_url, limits, upstream, "
         "passive_health, providers, handoff, apps (got 8080)"),
        ("timeouts: {connect: 10 parsecs}\n",
         "{file}: timeouts.connect: must be a duration like '2s', '500ms', '30m', '1h30m' "
         "or a number of seconds >= 0 (got '10 parsecs')"),
        ("admin: {listen: 0.0.0.0:9090}\n",
         "{file}: admin.token_file: required when admin.listen is not on loopback "
         "(or set ROUTER_ADMIN_TOKEN) (got None)"),
        ("- 1\n", "{file}: must be a mapping of keys at the top level (got [1])"),
        ("apps:\n  shop: {routes: [a.example.com], services: {web: {backends: []}}}\n"
         "  blog: {routes: [a.example.com], services: {web: {backends: []}}}\n",
         "{file}: apps.blog.routes[0]: route a.example.com is claimed by both apps 'shop' and "
         "'blog' (got 'a.example.com')"),
    ],
)
def test_exact_messages(tmp_path: Path, text: str, message: str) -> None:
    file = tmp_path / "router.yaml"
    file.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_config(str(file))
    assert str(exc.value) == message.format(file=file)


@pytest.mark.parametrize(
    ("text", "where", "line_text"),
    [
        ("listen: 0.0.0.0:8080\nadmin: [unclosed\n", "line 3, column 1", ""),
        ("a: 1\nb: : 2\n", "line 2, column 4", "b: : 2"),
        ("a: 1\nb:\n  - x\n  y: 2\n", "line 4, column 3", "y: 2"),
    ],
)
def test_yaml_syntax_error_names_the_line(tmp_path: Path, text: str, where: str,
                                          line_text: str) -> None:
    file = tmp_path / "router.yaml"
    file.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_config(str(file))
    # The problem's wording comes from the YAML parser (libyaml or pure Python): not asserted.
    assert exc.value.path == ""
    assert exc.value.reason.startswith(f"invalid YAML at {where}: ")
    assert exc.value.value == line_text
    assert str(exc.value).startswith(f"{file}: invalid YAML at {where}: ")
    assert str(exc.value).endswith(f" (got {line_text!r})")


def test_unreadable_file(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError) as exc:
        load_config(missing)
    assert str(exc.value) == (
        f"{missing}: cannot read configuration file: No such file or directory (got {missing!r})"
    )


def test_not_utf8(tmp_path: Path) -> None:
    file = tmp_path / "router.yaml"
    file.write_bytes(b"domain: caf\xe9.com\n")
    with pytest.raises(ConfigError) as exc:
        load_config(str(file))
    assert exc.value.path == ""
    assert exc.value.reason == "not UTF-8 text: invalid continuation byte at byte 11"


def test_sticky_secret_file_may_be_created_later_but_not_short(tmp_path: Path) -> None:
    # router.dataplane.sticky creates a missing secret file; one that exists must hold 16 bytes or more.
    cfg = config_from_dict({"sticky": {"secret_file": str(tmp_path / "new.key")}})
    assert cfg.sticky.secret_file == str(tmp_path / "new.key")
    (tmp_path / "short.key").write_text("k3y\n")
    with pytest.raises(ConfigError) as exc:
        config_from_dict({"sticky": {"secret_file": str(tmp_path / "short.key")}})
    assert (exc.value.path, exc.value.reason) == ("sticky.secret_file",
                                                  "secret is shorter than 16 bytes")


def test_empty_token_file(tmp_path: Path) -> None:
    (tmp_path / "tok").write_text(" \n")
    with pytest.raises(ConfigError) as exc:
        config_from_dict({"admin": {"token_file": str(tmp_path / "tok")}})
    assert (exc.value.path, exc.value.reason) == ("admin.token_file", "file is empty")


def test_error_without_a_source_and_long_values() -> None:
    err = ConfigError("apps.shop.services.web.weight", "must be an integer 0..100", 101)
    assert str(err) == (
        "<config>: apps.shop.services.web.weight: must be an integer 0..100 (got 101)"
    )
    long = ConfigError("x", "too long", "a" * 500)
    assert str(long) == "<config>: x: too long (got '" + "a" * 196 + "...)"


def test_config_error_pickles() -> None:
    err = ConfigError("listen", "bad", "x", "/etc/router.yaml")
    copy = pickle.loads(pickle.dumps(err))
    assert (copy.path, copy.reason, copy.value, copy.source) == ("listen", "bad", "x",
                                                                 "/etc/router.yaml")
    assert str(copy) == str(err)


def test_unknown_key_reason_lists_allowed_keys() -> None:
    with pytest.raises(ConfigError) as exc:
        config_from_dict(app_with({"backends": [], "wieght": 5}))
    assert exc.value.reason == "unknown key; allowed keys: weight, backends, health_check, labels"


# --------------------------------------------------------------------------------------------
# Scalars
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("30m", 1800.0),
        ("8h", 28800.0),
        ("2s", 2.0),
        ("500ms", 0.5),
        ("1h30m", 5400.0),
        ("1.5s", 1.5),
        ("0.1s", 0.1),
        ("100ms", 0.1),
        ("250us", 0.00025),
        ("1d", 86400.0),
        ("1m30s", 90.0),
        ("1h1m1s500ms", 3661.5),
        (".5s", 0.5),
        (" 2s ", 2.0),
        ("0s", 0.0),
        (0, 0.0),
        (3, 3.0),
        (2.5, 2.5),
    ],
)
def test_parse_duration(value: object, seconds: float) -> None:
    result = parse_duration(value, "timeouts.connect")
    assert result == seconds
    assert type(result) is float


@pytest.mark.parametrize(
    "value",
    ["10 parsecs", "", "10", "s", "2 s", "2S", "-1s", "1.5.s", "1h 30m", "5y", True, False, -1,
     -0.5, float("nan"), float("inf"), None, [], {"s": 1}],
)
def test_parse_duration_rejects(value: object) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_duration(value, "sticky.max_idle", source="r.yaml")
    assert exc.value.path == "sticky.max_idle"
    assert exc.value.source == "r.yaml"
    assert exc.value.value is value
    assert exc.value.reason == (
        "must be a duration like '2s', '500ms', '30m', '1h30m' or a number of seconds >= 0"
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0.0.0.0:8080", ("0.0.0.0", 8080)),
        ("[::1]:9090", ("::1", 9090)),
        ("[::]:80", ("::", 80)),
        (":8080", ("0.0.0.0", 8080)),
        ("127.0.0.1:0", ("127.0.0.1", 0)),
        ("LocalHost:65535", ("localhost", 65535)),
        (8080, ("0.0.0.0", 8080)),
    ],
)
def test_parse_listen(value: object, expected: tuple[str, int]) -> None:
    assert parse_listen(value, "listen") == expected


@pytest.mark.parametrize(
    "value",
    ["0.0.0.0", "0.0.0.0:65536", "0.0.0.0:-1", "0.0.0.0:+80", "::1:80", "[::1]80", "[::1:80",
     "[1.2.3.4]:80", "a b:80", "", 70000, True, None, 8080.0],
)
def test_parse_listen_rejects(value: object) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_listen(value, "admin.listen")
    assert exc.value.path == "admin.listen"
    assert exc.value.value == value


@pytest.mark.parametrize(
    ("value", "default_port", "expected"),
    [
        ("10.0.0.5:80", None, "10.0.0.5:80"),
        ("localhost:80", None, "localhost:80"),
        ("Web-1.Internal:8080", None, "web-1.internal:8080"),
        ("project_web_1:80", None, "project_web_1:80"),
        ("[::1]:80", None, "[::1]:80"),
        ("[2001:DB8:0:0::1]:443", None, "[2001:db8::1]:443"),
        ("10.0.0.5:080", None, "10.0.0.5:80"),
        ("10.0.0.5", 8080, "10.0.0.5:8080"),
        ("[::1]", 81, "[::1]:81"),
        ("10.0.0.5:90", 8080, "10.0.0.5:90"),
    ],
)
def test_parse_backend(value: str, default_port: int | None, expected: str) -> None:
    assert parse_backend(value, "b", default_port) == expected
    host, port = split_hostport(expected)
    assert parse_backend(f"[{host}]:{port}" if ":" in host else f"{host}:{port}", "b") == expected


@pytest.mark.parametrize(
    "value",
    ["10.0.0.5", "10.0.0.5:99999", "10.0.0.5:0", "a b:80", "a/b:80", ":80", "::1", "::1:80",
     "010.0.0.5:80", "1.2.3:80", "a..b:80", "-" * 64 + ":80", "x:http", "", 80, None],
)
def test_parse_backend_rejects(value: object) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_backend(value, "apps.shop.services.web.backends[0]")
    assert exc.value.path == "apps.shop.services.web.backends[0]"
    assert exc.value.value == value


@pytest.mark.parametrize(
    ("addr", "expected"),
    [("10.0.0.5:80", ("10.0.0.5", 80)), ("[::1]:80", ("::1", 80)), ("web:8080", ("web", 8080))],
)
def test_split_hostport(addr: str, expected: tuple[str, int]) -> None:
    assert split_hostport(addr) == expected


@pytest.mark.parametrize("addr", ["10.0.0.5", "::1:80", "[::1]", "[::1]80", ":80", "a:b"])
def test_split_hostport_rejects(addr: str) -> None:
    with pytest.raises(ValueError):
        split_hostport(addr)


@pytest.mark.parametrize(
    ("value", "route", "text"),
    [
        ("shop.example.com", Route("shop.example.com", "/"), "shop.example.com"),
        ("Example.COM/api", Route("example.com", "/api"), "example.com/api"),
        ("example.com/api//", Route("example.com", "/api"), "example.com/api"),
        ("example.com/", Route("example.com", "/"), "example.com"),
        ("example.com/a/b%20c/", Route("example.com", "/a/b%20c"), "example.com/a/b%20c"),
        ("localhost", Route("localhost", "/"), "localhost"),
    ],
)
def test_parse_route(value: str, route: Route, text: str) -> None:
    assert parse_route(value, "apps.shop.routes[0]") == route
    assert str(route) == text


@pytest.mark.parametrize(
    "value",
    ["http://shop.example.com", "shop.example.com:80", "*.example.com", "exa_mple.com",
     "example.com/a/../b", "example.com/a?b", "-shop.example.com", "", "a" * 64 + ".com", 5],
)
def test_parse_route_rejects(value: object) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_route(value, "apps.shop.routes[0]")
    assert exc.value.path == "apps.shop.routes[0]"
    assert exc.value.value == value


def test_name_re() -> None:
    assert NAME_RE.match("shop")
    assert NAME_RE.match("web-v2")
    assert NAME_RE.match("0" + "a" * 62)
    for bad in ("Shop", "-web", "web_v2", "", "a" * 64, "shop\n", "shop.v2"):
        assert not NAME_RE.match(bad), bad


def test_parse_service_for_the_admin_api() -> None:
    svc = parse_service("web-v2", {"weight": 0, "backends": ["10.0.0.7:80"],
                                   "health_check": {"path": "/healthz"}},
                        "apps.shop.services.web-v2")
    assert svc == ServiceConfig("web-v2", 0, ("10.0.0.7:80",), HealthCheckConfig(path="/healthz"))
    with pytest.raises(ConfigError) as exc:
        parse_service("web", {"backends": [], "labels": {}}, "apps.shop.services.web")
    assert exc.value.path == "apps.shop.services.web.labels"


def test_parse_health_check_null_and_defaults() -> None:
    assert parse_health_check(None, "h") is None
    assert parse_health_check({}, "h") == HealthCheckConfig(None, 2.0, 1.0, 2, 3)


def test_dataclasses_are_frozen_and_hashable() -> None:
    cfg = config_from_dict(app_with({"backends": ["a:1"]}))
    with pytest.raises(AttributeError):
        cfg.listen_port = 1  # type: ignore[misc]
    assert hash(cfg) == hash(config_from_dict(app_with({"backends": ["a:1"]})))


def test_passive_health_and_client_body_defaults_and_values():
    from router.config import PassiveHealthConfig

    cfg = config_from_dict({})
    assert cfg.passive_health == PassiveHealthConfig(failures=3, cooldown=10.0)
    assert cfg.timeouts.client_body == 60.0
    cfg = config_from_dict({"passive_health": {"failures": 0, "cooldown": "1m30s"},
                            "timeouts": {"client_body": "250ms"}})
    assert cfg.passive_health == PassiveHealthConfig(failures=0, cooldown=90.0)
    assert cfg.timeouts.client_body == 0.25
    assert config_from_dict({"passive_health": None}).passive_health == PassiveHealthConfig()


# --------------------------------------------------------------------------------------------
# providers
# --------------------------------------------------------------------------------------------

def test_docker_provider_defaults_and_every_key(tmp_path: Path) -> None:
    from router.config import DockerProviderConfig

    assert config_from_dict({}).providers.docker is None
    assert load_text(tmp_path, "providers:\n  docker:\n").providers.docker == DockerProviderConfig()
    cfg = load_text(tmp_path, """\
        providers:
          docker:
            endpoint: tcp://127.0.0.1:2375
            swarm: true
            network: shop_default
            published_ports: true
            host: 10.0.0.9
            health_check: {path: /healthz, interval: 1s}
            refresh: 5s
        """)
    assert cfg.providers.docker == DockerProviderConfig(
        endpoint="tcp://127.0.0.1:2375", swarm=True, network="shop_default",
        published_ports=True, host="10.0.0.9",
        health_check=HealthCheckConfig(path="/healthz", interval=1.0), refresh=5.0)
    assert config_from_dict({"providers": {"docker": {"swarm": "auto"}}}).providers.docker.swarm is None


@pytest.mark.parametrize(
    ("docker", "path", "reason"),
    [
        ({"endpoint": "unix://relative.sock"}, "providers.docker.endpoint",
         "a unix:// endpoint needs an absolute path"),
        ({"endpoint": "tcp://127.0.0.1"}, "providers.docker.endpoint",
         "a tcp:// endpoint needs a port (dockerd -H tcp://...:2375)"),
        ({"endpoint": "ssh://host"}, "providers.docker.endpoint",
         "must be unix:///path/to/docker.sock or tcp://host:port"),
        ({"swarm": "yes"}, "providers.docker.swarm", "must be true, false or auto"),
        ({"network": ""}, "providers.docker.network", "must be a non-empty string"),
        ({"published_ports": "true"}, "providers.docker.published_ports", "must be true or false"),
        ({"refresh": "0s"}, "providers.docker.refresh", "must be a duration > 0"),
        ({"health_check": {"path": "x"}}, "providers.docker.health_check.path",
         "must be a URL path starting with '/', without spaces"),
        ({"labels": {}}, "providers.docker.labels",
         "unknown key; allowed keys: endpoint, swarm, network, published_ports, host, "
         "health_check, refresh, empty_apps"),
        ({"empty_apps": "remove"}, "providers.docker.empty_apps", "must be keep or delete"),
    ],
)
def test_docker_provider_errors_name_key_and_value(docker: dict[str, object], path: str,
                                                   reason: str) -> None:
    with pytest.raises(ConfigError) as exc:
        config_from_dict({"providers": {"docker": docker}}, source="f.yaml")
    assert (exc.value.path, exc.value.reason) == (path, reason)
    assert str(exc.value).startswith(f"f.yaml: {path}: {reason} (got ")


def test_unknown_provider_is_refused() -> None:
    with pytest.raises(ConfigError) as exc:
        config_from_dict({"providers": {"kubernetes": {}}})
    assert exc.value.path == "providers.kubernetes"


def test_public_url_gives_the_base_of_the_links_the_router_hands_out():
    default = config_from_dict({})
    assert (default.public_url, default.logging.format) == (None, "text")
    assert default.public_base("shop.test", 8080) == "http://shop.test:8080"
    assert default.public_base("shop.test", 80) == "http://shop.test"
    behind = config_from_dict({"public_url": "https://{host}", "logging": {"format": "json"}})
    assert behind.public_base("shop.test", 8080) == "https://shop.test"
    assert behind.logging.format == "json"
    one_name = config_from_dict({"public_url": "https://router.example.com:8443"})
    assert one_name.public_base("shop.test", 8080) == "https://router.example.com:8443"

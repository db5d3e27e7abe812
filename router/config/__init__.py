"""Configuration: frozen dataclasses, YAML loading, validation, Aliyun routing labels.

Everything here is validated once, at load (or by the admin API through ``parse_app`` /
``parse_service``), and then never changes: the dataclasses are frozen and hold only tuples, so a
``Config`` can be shared by every task without copying.  Every error is a :class:`ConfigError`
naming the file, the dotted key path, the reason and the offending value, e.g.::

    /etc/router.yaml: apps.shop.services.web.weight: must be an integer 0..100 (got 101)

Key paths use dots for mapping keys and ``[i]`` for list items
(``apps.shop.services.web.backends[1]``).  Label keys contain dots themselves and are appended as
written (``apps.shop.services.web.labels.aliyun.routing.port_80``).

One module per part: ``model`` (the dataclasses and ``ConfigError``), ``scalars`` (durations,
sizes, addresses), ``labels`` (routes and Aliyun labels), ``apps`` (apps and services), ``load``
(the whole file).
"""

from __future__ import annotations

from .apps import parse_app, parse_health_check, parse_service
from .labels import Labels, parse_labels, parse_route, parse_routing_label
from .load import config_from_dict, load_config, parse_docker_endpoint, parse_yaml, read_yaml
from .model import (
    NAME_PATTERN,
    NAME_RE,
    AccessLogConfig,
    AdminConfig,
    AppConfig,
    Config,
    ConfigError,
    DockerProviderConfig,
    HealthCheckConfig,
    Limits,
    LoggingConfig,
    PassiveHealthConfig,
    PreviewConfig,
    ProvidersConfig,
    Route,
    ServiceConfig,
    StickyConfig,
    Timeouts,
    UpstreamConfig,
)
from .scalars import format_duration, parse_backend, parse_duration, parse_listen, split_hostport

__all__ = [
    "NAME_PATTERN",
    "NAME_RE",
    "AccessLogConfig",
    "AdminConfig",
    "AppConfig",
    "Config",
    "ConfigError",
    "DockerProviderConfig",
    "HealthCheckConfig",
    "Labels",
    "Limits",
    "LoggingConfig",
    "PassiveHealthConfig",
    "PreviewConfig",
    "ProvidersConfig",
    "Route",
    "ServiceConfig",
    "StickyConfig",
    "Timeouts",
    "UpstreamConfig",
    "config_from_dict",
    "format_duration",
    "load_config",
    "parse_app",
    "parse_backend",
    "parse_docker_endpoint",
    "parse_duration",
    "parse_health_check",
    "parse_labels",
    "parse_listen",
    "parse_route",
    "parse_routing_label",
    "parse_service",
    "parse_yaml",
    "read_yaml",
    "split_hostport",
]

"""The process settings of a configuration, as a reload sees them: what changed between two
files, and which changes need a restart.

A reload (``SIGHUP``) takes every setting of the file except ``apps`` (the routing state, which
only ``routerctl apply`` changes: ``docs/state.md``) and the few below that a running process
cannot change.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, replace

from .model import Config
from .scalars import format_duration

# Bound at start: a listening socket, the key that signs every cookie issued so far, the
# session with the Docker Engine.
NEEDS_RESTART = ("listen", "admin.listen", "sticky.secret_file", "providers", "handoff.socket")
# Shown as changed, never with their values.
_SECRETS = ("admin.token",)
# In the order of the configuration file's documentation (README "Configuration").
_SECTIONS = ("sticky", "timeouts", "passive_health", "limits", "upstream", "trusted_proxies",
             "access_log", "logging")


@dataclass(frozen=True, slots=True)
class SettingChange:
    key: str
    old: str
    new: str

    @property
    def needs_restart(self) -> bool:
        return self.key in NEEDS_RESTART

    def __str__(self) -> str:
        if self.key in _SECRETS:
            return f"{self.key} changed"
        return f"{self.key} {self.old} -> {self.new}"


def setting_changes(old: Config, new: Config) -> list[SettingChange]:
    """Every process setting that differs, in the documented order of the file."""
    before, after = _settings(old), _settings(new)
    return [SettingChange(k, before[k], after[k]) for k in before if before[k] != after[k]]


def keep_bound(running: Config, new: Config) -> Config:
    """``new`` with the settings that need a restart as they are in ``running``: what the
    process runs with after a reload (so that the next reload reports them again)."""
    return replace(
        new, listen_host=running.listen_host, listen_port=running.listen_port,
        admin=replace(new.admin, host=running.admin.host, port=running.admin.port),
        sticky=replace(new.sticky, secret_file=running.sticky.secret_file),
        providers=running.providers, handoff=running.handoff)


def _settings(cfg: Config) -> dict[str, str]:
    out = {
        "listen": _address(cfg.listen_host, cfg.listen_port),
        "admin.listen": _address(cfg.admin.host, cfg.admin.port),
        "admin.token_file": _show(cfg.admin.token_file),
        "admin.token": _show(cfg.admin.token),
        "admin.allowed_hosts": "[" + ", ".join(cfg.admin.allowed_hosts) + "]",
        "admin.allowed_origins": "[" + ", ".join(cfg.admin.allowed_origins) + "]",
        "admin.metrics_public": _show(cfg.admin.metrics_public),
        "domain": _show(cfg.domain),
        "public_url": _show(cfg.public_url),
        "providers": _show(cfg.providers.docker),
        "handoff.socket": _show(cfg.handoff.socket),
    }
    for section in _SECTIONS:
        if section == "trusted_proxies":
            out[section] = "[" + ", ".join(str(n) for n in cfg.trusted_proxies) + "]"
            continue
        values = getattr(cfg, section)
        for f in dataclasses.fields(values):
            out[f"{section}.{f.name}"] = _show(getattr(values, f.name))
    return out


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _show(value: object) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):  # every float setting is a duration in seconds
        return format_duration(value)
    return str(value)

"""What the router can tell about the container it runs in, from ``/proc/self/mountinfo``.

- Its container id: Docker (and Podman) bind-mount the container's ``/etc/hostname`` from
  ``.../containers/<64 hex digits>/hostname``, whatever the hostname was set to; the Docker
  provider asks the Engine for that container's networks (the network it shares with a backend
  is the one to reach it on).
- Whether a directory outlives the container: not if it is in the container's writable layer
  (its root file system rather than a volume or bind mount), nor on an anonymous volume (the
  image's ``VOLUME`` when ``docker run`` names none): what is written there is lost when the
  container is re-created (``docker rm`` and ``docker run`` again, an upgrade of the image). The
  routing state and the sticky-cookie secret must not be.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass

log = logging.getLogger("router.container")

MOUNTINFO = "/proc/self/mountinfo"
# Files the container runtime mounts from the container's own directory.
_RUNTIME_FILES = ("/etc/hostname", "/etc/hosts", "/etc/resolv.conf")
_CONTAINER_DIR_RE = re.compile(r"/containers/([0-9a-f]{64})(?:/|$)")
_ESCAPE_RE = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True, slots=True)
class Mount:
    """One line of mountinfo (proc(5)): what is mounted where."""

    root: str  # the mounted directory within its file system
    point: str  # where it is mounted
    fstype: str


def _unescape(field: str) -> str:
    # mountinfo writes space, tab, newline and backslash in paths as octal escapes.
    return _ESCAPE_RE.sub(lambda m: chr(int(m.group(1), 8)), field)


def parse_mountinfo(text: str) -> list[Mount]:
    """The mounts of a mountinfo text, in its order (a later mount on a point hides an earlier
    one)."""
    mounts = []
    for line in text.splitlines():
        fields = line.split()
        try:
            sep = fields.index("-", 6)  # after the optional fields
        except ValueError:
            continue
        if sep + 1 >= len(fields):
            continue
        mounts.append(Mount(_unescape(fields[3]), _unescape(fields[4]), fields[sep + 1]))
    return mounts


def read_mounts() -> list[Mount]:
    """This process's mounts; none where there is no /proc (not Linux)."""
    try:
        with open(MOUNTINFO, encoding="utf-8", errors="replace") as f:
            return parse_mountinfo(f.read())
    except OSError:
        return []


def container_id(mounts: list[Mount]) -> str | None:
    """The id of the container these mounts belong to; None outside a container."""
    for m in mounts:
        if m.point in _RUNTIME_FILES:
            found = _CONTAINER_DIR_RE.search(m.root)
            if found is not None:
                return found.group(1)
    return None


def mount_of(path: str, mounts: list[Mount]) -> Mount | None:
    """The mount ``path`` (absolute, symlinks resolved) is on: the one with the longest mount
    point above it, the last one on that point."""
    best: Mount | None = None
    for m in mounts:
        above = m.point == "/" or path == m.point or path.startswith(m.point + "/")
        if above and (best is None or len(m.point) >= len(best.point)):
            best = m
    return best


_ANONYMOUS_VOLUME_RE = re.compile(r"/volumes/[0-9a-f]{64}/_data$")


def where_lost(path: str, mounts: list[Mount]) -> str | None:
    """Why what is written under ``path`` does not outlive the container these mounts belong
    to: it is in its writable layer, or on an anonymous volume (``VOLUME`` with no ``-v``:
    a new one for every ``docker run``). None outside a container, or on a mount of its own."""
    if container_id(mounts) is None:
        return None
    mount = mount_of(os.path.realpath(path), mounts)
    if mount is None:
        return None
    if mount.point == "/":
        return "in this container's writable layer, not on a volume"
    if _ANONYMOUS_VOLUME_RE.search(mount.root):
        return ("on an anonymous volume, which the next docker run of the router does not get "
                "back")
    return None


def warn_if_lost(state_dir: str, mounts: list[Mount] | None = None) -> bool:
    """Say loudly, at start, that the state directory does not outlive the container; True if
    so."""
    why = where_lost(state_dir, read_mounts() if mounts is None else mounts)
    if why is None:
        return False
    log.warning(
        "THE ROUTING STATE IS NOT KEPT: the state directory %s is %s. Weights, releases and "
        "the sticky-cookie secret are lost when the container is re-created (every sticky "
        "cookie is then invalid). Mount a named volume there: docker run -v router-state:%s "
        "... (docs/docker.md)", state_dir, why, state_dir)
    return True

"""What the router tells about the container it runs in, from mountinfo texts as Docker's
containers see them; and the image's health check's address, from the configuration."""

from __future__ import annotations

import logging

import pytest

from router.healthcheck import _serve_config, admin_url
from router.providers.container import (
    Mount,
    container_id,
    mount_of,
    parse_mountinfo,
    warn_if_lost,
    where_lost,
)

CID = "3f4e9a0c" * 8
# /proc/self/mountinfo of `docker run -v router-state:/var/lib/router -v /srv/cfg:/etc/router:ro`
# (overlay2 storage driver), trimmed to the lines that matter and two escaped paths.
MOUNTINFO = f"""\
1310 1098 0:86 / / rw,relatime master:1 - overlay overlay rw,lowerdir=/var/lib/docker/overlay2/l/X:/var/lib/docker/overlay2/l/Y,upperdir=/var/lib/docker/overlay2/abc/diff,workdir=/var/lib/docker/overlay2/abc/work
1311 1310 0:89 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw
1312 1310 0:90 / /dev rw,nosuid - tmpfs tmpfs rw,size=65536k,mode=755
1318 1310 8:1 /var/lib/docker/containers/{CID}/resolv.conf /etc/resolv.conf rw,relatime - ext4 /dev/sda1 rw
1319 1310 8:1 /var/lib/docker/containers/{CID}/hostname /etc/hostname rw,relatime - ext4 /dev/sda1 rw
1320 1310 8:1 /var/lib/docker/containers/{CID}/hosts /etc/hosts rw,relatime - ext4 /dev/sda1 rw
1321 1310 8:1 /var/lib/docker/volumes/router-state/_data /var/lib/router rw,relatime master:1 - ext4 /dev/sda1 rw
1322 1310 8:1 /srv/cfg /etc/router ro,relatime - ext4 /dev/sda1 rw
1323 1310 8:1 /var/lib/docker/volumes/{"0a" * 32}/_data /var/lib/anon rw,relatime master:1 - ext4 /dev/sda1 rw
1324 1310 8:1 /srv/with\\040space /mnt/a\\040b rw,relatime shared:5 master:1 - ext4 /dev/sda1 rw
"""
HOST = """\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw
30 27 8:2 / /var/lib rw,relatime - ext4 /dev/sda2 rw
"""


def test_mountinfo_lines_are_read_with_their_escapes():
    mounts = parse_mountinfo(MOUNTINFO)
    assert mounts[0] == Mount("/", "/", "overlay")
    assert mounts[-1] == Mount("/srv/with space", "/mnt/a b", "ext4")
    assert len(mounts) == 10
    assert parse_mountinfo("garbage\n\n1 2 3\n") == []


def test_the_container_id_comes_from_the_runtime_s_own_files():
    assert container_id(parse_mountinfo(MOUNTINFO)) == CID
    assert container_id(parse_mountinfo(HOST)) is None


def test_the_mount_of_a_path_is_the_longest_mount_point_above_it():
    mounts = parse_mountinfo(MOUNTINFO)
    assert mount_of("/var/lib/router/x", mounts).point == "/var/lib/router"  # type: ignore[union-attr]
    assert mount_of("/var/lib/routerx", mounts).point == "/"  # type: ignore[union-attr]
    assert mount_of("/etc/router", mounts).point == "/etc/router"  # type: ignore[union-attr]


def test_where_the_state_would_be_lost():
    mounts = parse_mountinfo(MOUNTINFO)
    assert where_lost("/var/lib/router", mounts) is None  # a named volume
    assert where_lost("/etc/router", mounts) is None  # a bind mount
    assert where_lost("/tmp/state", mounts) == "in this container's writable layer, not on a volume"
    assert where_lost("/var/lib/anon/sub", mounts) == (
        "on an anonymous volume, which the next docker run of the router does not get back")
    # Outside a container nothing is lost with one.
    assert where_lost("/tmp/state", parse_mountinfo(HOST)) is None


def test_the_warning_is_loud_and_says_what_to_do(caplog: pytest.LogCaptureFixture):
    with caplog.at_level(logging.WARNING, "router.container"):
        assert warn_if_lost("/tmp/state", parse_mountinfo(MOUNTINFO))
        assert not warn_if_lost("/var/lib/router", parse_mountinfo(MOUNTINFO))
    assert [r.getMessage() for r in caplog.records] == [
        "THE ROUTING STATE IS NOT KEPT: the state directory /tmp/state is in this container's "
        "writable layer, not on a volume. Weights, releases and the sticky-cookie secret are "
        "lost when the container is re-created (every sticky cookie is then invalid). Mount a "
        "named volume there: docker run -v router-state:/tmp/state ... (docs/docker.md)"]


@pytest.mark.parametrize("listen, url", [
    (None, "http://127.0.0.1:9090/healthz"),
    ("0.0.0.0:9191", "http://127.0.0.1:9191/healthz"),
    ("[::]:9191", "http://[::1]:9191/healthz"),
    ("10.0.0.5:9000", "http://10.0.0.5:9000/healthz"),
    (":9300", "http://127.0.0.1:9300/healthz"),
])
def test_the_health_check_follows_admin_listen(tmp_path, listen: str | None, url: str):
    config = tmp_path / "router.yaml"
    config.write_text("admin: {}\n" if listen is None else f"admin:\n  listen: '{listen}'\n")
    assert admin_url(str(config)) == url


def test_the_health_check_finds_the_running_router_s_configuration():
    script = ["/opt/router/venv/bin/python3", "/opt/router/venv/bin/router", "serve",
              "--config", "router.yaml"]
    assert _serve_config(script, "/etc/router") == "/etc/router/router.yaml"
    assert _serve_config(["python", "-m", "router.cli", "serve", "--config=/c.yaml"], "/") == (
        "/c.yaml")
    assert _serve_config(["/usr/bin/router", "serve"], "/") == ""  # the defaults: no file
    assert admin_url("") == "http://127.0.0.1:9090/healthz"
    assert _serve_config(["python", "-m", "router.healthcheck"], "/") is None

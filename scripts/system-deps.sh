#!/usr/bin/env bash
# Debian packages the tests and benchmarks use. Installed when missing and we are root with
# apt; otherwise the tests that need them are skipped with the reason in pytest's summary.
set -u
want=()
command -v nginx   >/dev/null 2>&1 || want+=(nginx-light)
command -v haproxy >/dev/null 2>&1 || want+=(haproxy)
command -v etcd    >/dev/null 2>&1 || want+=(etcd-server)
command -v wrk     >/dev/null 2>&1 || want+=(wrk)
command -v promtool >/dev/null 2>&1 || want+=(prometheus)  # the dashboards' and alert rules' tests
command -v chromium >/dev/null 2>&1 || want+=(chromium)   # the console's browser tests (Playwright drives it)
# The Docker provider's tests start their own dockerd; the image test builds a base image with
# debootstrap; test containers run a static busybox.
command -v dockerd >/dev/null 2>&1 || want+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || want+=(debootstrap)
ldd /bin/busybox 2>&1 | grep -q "not a dynamic" || want+=(busybox-static)
[ ${#want[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Debian packages: ${want[*]}"
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${want[@]}" >/dev/null; }; then
        echo "warning: could not install ${want[*]}; tests needing them will be skipped" >&2
    fi
else
    echo "note: not root with apt-get; missing ${want[*]}: tests needing them will be skipped" >&2
fi
exit 0

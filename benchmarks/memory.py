"""Memory: RSS per idle keep-alive client connection, what hostile clients can make a proxy
hold, and RSS over a soak at full load (kept in RESULTS.md beside the load runs).

    python3 -m benchmarks.memory                    # 10,000 idle connections; the two
                                                    # attacks; 300 s soak
    python3 -m benchmarks.memory --quick            # the same idle test and attacks; 30 s soak
    python3 -m benchmarks.memory --soak 0           # idle test and attacks only
    python3 -m benchmarks.memory --idle-targets '' --soak 0    # the attacks only
    python3 -m benchmarks.memory --idle-targets router --attack-targets '' --soak 600

(a) **Idle connections.** For each proxy (router, nginx, HAProxy, each proxying the same nginx
backends as in run.py, with its connection limit raised to hold 10,000 clients): a 2 s wrk
warm-up, then the RSS (VmRSS of /proc/<pid>/status, summed over the process tree) is read;
a helper process (``benchmarks/idle_clients.py``) opens the connections one by one, sends one
complete request on each and reads the whole response, then keeps them open and idle; after 2 s
the RSS is read again. Growth / connections = KiB per idle keep-alive connection. The helper
then closes them all, and the same is done a second time: the first batch is the figure, the
second shows whether the memory of closed connections is reused (a leak would grow again).
What one idle connection holds, allocation by allocation: ``python3 -m benchmarks.idle_trace``.

(b) **Attacks.** For each proxy and each attack, a fresh proxy, a 2 s wrk warm-up, the RSS;
then a helper process (``benchmarks/hostile_clients.py``) opens 200 connections and on each
sends 256 KiB without reading anything: small pipelined ``GET`` requests (``pipeline``), one
head of five-byte ``a:b`` fields that never ends (``fields``), or pipelined requests for 64 KiB
bodies (``unread``: a slow reader at its worst, for the per-connection budget; the target is
for the first two). It stops on a connection when
all is sent, when the proxy closes it, or when the proxy stops reading it. 2 s after it has
done, the RSS again (growth / connections = KiB per connection: the router's target is at most
64); the helper closes the connections and 3 s later the RSS a third time: it should be back
within 10% of where it started.

(c) **Soak.** ``wrk -t1 -c50`` on the router for ``--soak`` seconds, its RSS sampled every 5 s;
after a 20 s warm-up the RSS must stay within ±5% of its value at 20 s.

Pinning is run.py's: the proxy on CPU 0; backends, wrk, the helper and this harness on CPU 1.
The open-file limit is raised to the hard limit for everything started here.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import select
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

from .common import (RESULTS_MD, nofile_limits, open_fds, raise_nofile, revision, tree_rss_kib,
                     write_section)
from .run import (CONNECTIONS, HOST, LOAD_CPU, NOISY_SHARE, SUT_CPU, BenchError,
                  Harness, Others, Pinning, TargetSkipped, decide_pinning, tools_or_none,
                  exit_on_signals, free_port, http_get, other_cpu, parse_wrk, proc_table,
                  process_tree, read_cpu_ticks, render, report_header, run_wrk, start_backends,
                  start_target, tool_lines, quiet_before_round, wait_until, Backends, Target)

IDLE_TARGETS = ("router", "nginx", "haproxy")
ATTACKS = ("pipeline", "fields", "unread")
ATTACK_CONNECTIONS = 200
ATTACK_BYTES = 256 * 1024
TARGET_ATTACK_KIB_PER_CONN = 64.0
GIVEN_BACK = 0.10  # RSS after the attack's connections close: within 10% of before
ATTACK_CLOSE_SETTLE_S = 3.0
CONNECTIONS_IDLE = 10000
TARGET_KIB_PER_CONN = 10.0
SETTLE_S = 2.0  # after the helper reports its connections open, before reading the RSS
OPEN_DEADLINE_S = 300.0  # the helper's time to open them all
SOAK_SAMPLE_S = 5.0
SOAK_WARMUP_S = 20.0
SOAK_BAND = 0.05  # ±5%
SECTION = "memory"

# The router as in run.py (conf/router.yaml), able to hold the idle clients: more connections
# than its default limit of 10,000, and idle clients kept for the length of the measurement.
ROUTER_EXTRA = """
limits: {max_connections: 20000}
timeouts: {client_idle: 300s}
"""


# --------------------------------------------------------------------------------------------
# Proxies with room for 10,000 idle clients


def _raise_limits(text: str, edits: list[tuple[str, str]], what: str) -> str:
    for old, new in edits:
        if old not in text:
            raise BenchError(f"{what}: expected `{old}` in the configuration to raise it")
        text = text.replace(old, new)
    return text


def start_proxy(h: Harness, name: str, tools: dict[str, str], backends: Backends,
                pin: Pinning, label: str | None = None) -> Target:
    if name == "router":
        args = argparse.Namespace(router_workers=0, router_extra=ROUTER_EXTRA)
        return start_target(h, "router", tools, backends, pin, args, label=label)
    port = free_port()
    prefix = h.tmp / f"idle-{label or name}"
    prefix.mkdir()
    if name == "nginx":
        conf = render("proxy.nginx.conf", prefix / "nginx.conf", prefix=prefix, port=port,
                      blue_port=backends.blue, green_port=backends.green)
        # keepalive_timeout is already 300 s there.
        conf.write_text(_raise_limits(conf.read_text(), [
            ("worker_connections 4096;", "worker_connections 12000;")], "proxy.nginx.conf"))
        cmd = [*pin.prefix(SUT_CPU), tools["nginx"], "-p", str(prefix), "-e",
               str(prefix / "error.log"), "-c", str(conf)]
    elif name == "haproxy":
        conf = render("haproxy.cfg", prefix / "haproxy.cfg", port=port,
                      blue_port=backends.blue, green_port=backends.green)
        # HAProxy wants 2 descriptors per maxconn and refuses to start when the hard limit
        # (20,000 here) is lower; idle clients need one each, so it is told not to insist.
        conf.write_text(_raise_limits(conf.read_text(), [
            ("maxconn 4096", "maxconn 12000\n    no strict-limits"),
            ("timeout client 60s", "timeout client 300s"),
            ("timeout http-keep-alive 60s", "timeout http-keep-alive 300s")], "haproxy.cfg"))
        cmd = [*pin.prefix(SUT_CPU), tools["haproxy"], "-db", "-f", str(conf)]
    else:
        raise BenchError(f"unknown target {name}")
    proc = h.start(name, cmd)

    def ok() -> str | None:
        reply = http_get(port, "/small")
        return None if reply.status == 200 else f"GET /small answered {reply.status}"

    problem = wait_until(10.0, ok, proc)
    if problem:
        h.stop(proc)
        raise TargetSkipped(f"{name} on port {port}: {problem}\n{proc.log_tail()}")
    return Target(name, port, procs=[proc])


def rss(target: Target) -> tuple[int, int]:
    """(KiB of VmRSS summed over the target's process tree, number of processes)."""
    pids = process_tree([p.pid for p in target.procs], proc_table())
    sizes = tree_rss_kib(pids)
    return sum(sizes.values()), len(sizes)


def fds(target: Target) -> int:
    pids = process_tree([p.pid for p in target.procs], proc_table())
    return sum(open_fds(pid) or 0 for pid in pids)


# --------------------------------------------------------------------------------------------
# (a) idle connections


@dataclass
class Batch:
    held: int
    failed: int
    open_s: float
    before_kib: int
    with_kib: int
    closed_kib: int
    fds_before: int
    fds_with: int
    first_error: str = ""

    @property
    def per_conn_kib(self) -> float | None:
        return (self.with_kib - self.before_kib) / self.held if self.held else None


@dataclass
class Idle:
    name: str
    nofile: tuple[str, str] | None = None  # the proxy's own open-file limit (soft, hard)
    processes: int = 0
    batches: list[Batch] = field(default_factory=list)
    error: str | None = None


def _read_line(proc: subprocess.Popen[str], deadline_s: float) -> str:
    """One line of the helper's output, waiting at most deadline_s."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], deadline_s)
    if not ready:
        raise BenchError(f"the idle-connections helper said nothing within {deadline_s:.0f} s")
    return proc.stdout.readline().strip()


def run_helper(cmd: list[str], ready: str, deadline_s: float,
               measure: Callable[[str], None]) -> None:
    """Start a helper process (``benchmarks/idle_clients.py``, ``hostile_clients.py``), wait
    for its line that starts with ``ready``, call ``measure`` with it while the helper holds
    its connections, then have it close them and wait for it."""
    helper = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, cwd=str(RESULTS_MD.parent.parent))
    try:
        line = _read_line(helper, deadline_s)
        if not line.startswith(ready + " "):
            _, err = helper.communicate(timeout=10)
            raise BenchError(f"{cmd[2]}: {line or err.strip()[-500:]}")
        measure(line)
        assert helper.stdin is not None
        helper.stdin.write("close\n")
        helper.stdin.flush()
        helper.communicate(timeout=60)
    finally:
        if helper.poll() is None:
            helper.kill()
            helper.wait(timeout=10)


def idle_batch(target: Target, count: int) -> Batch:
    before, _ = rss(target)
    fds_before = fds(target)
    cmd = [sys.executable, "-m", "benchmarks.idle_clients", "--port", str(target.port),
           "--count", str(count), "--host", HOST, "--deadline", str(OPEN_DEADLINE_S),
           "--hold", str(OPEN_DEADLINE_S + 120)]
    got: list[Batch] = []

    def measure(line: str) -> None:
        _, held, failed, took, *why = line.split(" ", 4)
        time.sleep(SETTLE_S)
        with_kib, _ = rss(target)
        got.append(Batch(int(held), int(failed), float(took), before, with_kib, 0, fds_before,
                         fds(target), why[0] if why else ""))

    run_helper(cmd, "OPEN", OPEN_DEADLINE_S + 60, measure)
    time.sleep(SETTLE_S)
    got[0].closed_kib, _ = rss(target)
    return got[0]


def measure_idle(wrk: str, pin: Pinning, target: Target, count: int) -> Idle:
    out = Idle(target.name, nofile=nofile_limits(target.procs[0].pid))
    # Warm up the paths a request takes (and the upstream pool) before the first reading.
    run_wrk(wrk, pin, target, "small", 2, latency=False)
    time.sleep(1.0)
    _, out.processes = rss(target)
    for _ in range(2):
        out.batches.append(idle_batch(target, count))
        for p in target.procs:
            if not p.alive():
                raise BenchError(f"{p.name} exited during the idle test (code "
                                 f"{p.popen.returncode})\n{p.log_tail()}")
    return out


def _num(value: float | int | None, digits: int = 0) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def idle_table(results: list[Idle], count: int) -> str:
    lines = ["| proxy | processes | idle connections held | RSS before KiB | RSS with them KiB "
             "| growth KiB | **KiB per connection** | RSS after closing KiB | second batch: "
             "KiB per connection | open fds before → with |",
             "|---|--:|--:|--:|--:|--:|--:|--:|--:|---|"]
    for r in results:
        if r.error is not None or not r.batches:
            lines.append(f"| {r.name} | error | | | | | | | | |")
            continue
        a = r.batches[0]
        b = r.batches[1] if len(r.batches) > 1 else None
        lines.append(
            f"| {r.name} | {r.processes} | {a.held:,} of {count:,} | {a.before_kib:,} | "
            f"{a.with_kib:,} | {a.with_kib - a.before_kib:,} | **{_num(a.per_conn_kib, 2)}** | "
            f"{a.closed_kib:,} | {_num(b.per_conn_kib if b else None, 2)} | "
            f"{a.fds_before:,} → {a.fds_with:,} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# (b) attacks


@dataclass
class Attack:
    name: str
    attack: str
    connections: int = 0
    sent: int = 0  # bytes the proxy took in, all connections
    closed: int = 0  # connections the proxy closed while the helper sent
    before_kib: int = 0
    during_kib: int = 0
    after_kib: int = 0
    error: str | None = None

    @property
    def per_conn_kib(self) -> float | None:
        return ((self.during_kib - self.before_kib) / self.connections
                if self.connections else None)

    @property
    def given_back(self) -> bool:
        return self.after_kib <= self.before_kib * (1 + GIVEN_BACK)


def attack_once(target: Target, attack: str, count: int, size: int) -> Attack:
    out = Attack(target.name, attack)
    out.before_kib, _ = rss(target)
    cmd = [sys.executable, "-m", "benchmarks.hostile_clients", "--port", str(target.port),
           "--attack", attack, "--count", str(count), "--bytes", str(size), "--host", HOST]

    def measure(line: str) -> None:
        _, conns, sent, closed, _took = line.split()
        out.connections, out.sent, out.closed = int(conns), int(sent), int(closed)
        time.sleep(SETTLE_S)
        out.during_kib, _ = rss(target)

    run_helper(cmd, "SENT", 120, measure)
    time.sleep(ATTACK_CLOSE_SETTLE_S)
    out.after_kib, _ = rss(target)
    return out


def attack_table(results: list[Attack], count: int, size: int) -> str:
    lines = [f"| proxy | attack | bytes taken in (of {count * size // 1024:,} KiB) | closed by "
             "the proxy | RSS before KiB | RSS during KiB | **KiB per connection** | RSS after "
             "closing KiB | back within 10% |",
             "|---|---|--:|--:|--:|--:|--:|--:|---|"]
    for r in results:
        if r.error is not None:
            lines.append(f"| {r.name} | {r.attack} | error | | | | | | |")
            continue
        lines.append(
            f"| {r.name} | {r.attack} | {r.sent // 1024:,} | {r.closed} of {r.connections} | "
            f"{r.before_kib:,} | {r.during_kib:,} | **{_num(r.per_conn_kib, 1)}** | "
            f"{r.after_kib:,} | {'yes' if r.given_back else 'no'} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# (c) soak


@dataclass
class Soak:
    seconds: int
    samples: list[tuple[float, int]] = field(default_factory=list)  # (s since start, KiB)
    idle_kib: int = 0
    requests: int = 0
    rps: float = 0.0
    failed: int = 0
    others: Others | None = None
    error: str | None = None

    def after_warmup(self) -> list[tuple[float, int]]:
        return [(t, k) for t, k in self.samples if t >= SOAK_WARMUP_S]

    def band(self) -> tuple[float, float] | None:
        """Lowest and highest post-warm-up RSS relative to the RSS at the end of warm-up."""
        post = self.after_warmup()
        if len(post) < 2:
            return None
        base = post[0][1]
        return (min(k for _, k in post) / base - 1, max(k for _, k in post) / base - 1)

    def slope_kib_per_min(self) -> float | None:
        post = self.after_warmup()
        if len(post) < 3:
            return None
        n = len(post)
        mt = sum(t for t, _ in post) / n
        mk = sum(k for _, k in post) / n
        var = sum((t - mt) ** 2 for t, _ in post)
        return sum((t - mt) * (k - mk) for t, k in post) / var * 60 if var else None


def soak(wrk: str, pin: Pinning, target: Target, seconds: int) -> Soak:
    out = Soak(seconds)
    out.idle_kib, _ = rss(target)
    cmd = [*pin.prefix(LOAD_CPU), wrk, "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s", "--latency",
           "-H", f"Host: {HOST}", f"http://127.0.0.1:{target.port}/small"]
    table_before, machine_before = proc_table(), read_cpu_ticks()
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        for i in range(1, int(seconds // SOAK_SAMPLE_S) + 1):  # at 5 s, 10 s ...
            at = start + i * SOAK_SAMPLE_S
            delay = at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            if proc.poll() is not None:
                break
            kib, _ = rss(target)
            out.samples.append((time.monotonic() - start, kib))
        stdout, stderr = proc.communicate(timeout=seconds + 30)
    except BaseException as exc:
        proc.kill()
        proc.wait(timeout=10)
        if isinstance(exc, subprocess.TimeoutExpired):
            raise BenchError(f"wrk did not finish within {seconds + 30} s") from exc
        raise
    table_after, machine_after = proc_table(), read_cpu_ticks()
    out.others = other_cpu(table_before, table_after, machine_before, machine_after)
    if proc.returncode != 0:
        raise BenchError(f"`{shlex.join(cmd)}` exited {proc.returncode}: {stderr.strip()}")
    out.rps, _, _, out.requests, non2xx, sock = parse_wrk(stdout)
    out.failed = non2xx + sock
    kib, _ = rss(target)
    out.samples.append((time.monotonic() - start, kib))  # at the end of the load
    return out


def soak_table(s: Soak) -> str:
    lines = ["| proxy | seconds | requests | requests/s | failed | RSS idle before KiB | first "
             "sample KiB | at 20 s KiB | min after 20 s | max after 20 s | last KiB | range after "
             "20 s vs 20 s | trend KiB/min | within ±5% |",
             "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|--:|---|"]
    if s.error is not None or not s.samples:
        lines.append("| router | error | | | | | | | | | | | | |")
        return "\n".join(lines)
    post = [k for _, k in s.after_warmup()]
    band = s.band()
    within = "not judged" if band is None else (
        "yes" if -SOAK_BAND <= band[0] and band[1] <= SOAK_BAND else "no")
    span = "–" if band is None else f"{band[0] * 100:+.1f}% .. {band[1] * 100:+.1f}%"
    lines.append(
        f"| router | {s.seconds} | {s.requests:,} | {s.rps:,.0f} | {s.failed} | {s.idle_kib:,} | "
        f"{s.samples[0][1]:,} | {_num(post[0] if post else None)} | "
        f"{_num(min(post) if post else None)} | {_num(max(post) if post else None)} | "
        f"{s.samples[-1][1]:,} | {span} | {_num(s.slope_kib_per_min(), 1)} | {within} |")
    return "\n".join(lines)


def samples_line(s: Soak) -> str:
    return ", ".join(f"{t:.0f} s {k:,}" for t, k in s.samples)


# --------------------------------------------------------------------------------------------
# Main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python3 -m benchmarks.memory",
        description="RSS per idle keep-alive connection (router, nginx, HAProxy) and RSS over "
                    "a soak at full load (router).")
    parser.add_argument("--idle-targets", default=",".join(IDLE_TARGETS),
                        help=f"comma-separated, any of {','.join(IDLE_TARGETS)}; '' = skip the "
                             "idle test (default: all)")
    parser.add_argument("--connections", type=int, default=CONNECTIONS_IDLE,
                        help=f"idle connections (default {CONNECTIONS_IDLE})")
    parser.add_argument("--attack-targets", default=",".join(IDLE_TARGETS),
                        help=f"comma-separated, any of {','.join(IDLE_TARGETS)}; '' = skip the "
                             "attacks (default: all)")
    parser.add_argument("--attack-connections", type=int, default=ATTACK_CONNECTIONS,
                        help=f"connections per attack (default {ATTACK_CONNECTIONS})")
    parser.add_argument("--attack-bytes", type=int, default=ATTACK_BYTES,
                        help=f"bytes each attacking connection sends (default {ATTACK_BYTES})")
    parser.add_argument("--soak", type=int, default=300, metavar="SECONDS",
                        help="seconds of full load on the router, RSS sampled every 5 s "
                             "(default 300; 0 = no soak)")
    parser.add_argument("--quick", action="store_true", help="a 30 s soak")
    parser.add_argument("--quiet-wait", type=float, default=20.0, metavar="S",
                        help="before each measurement wait up to S s for the machine to go "
                             "idle (default 20, 0 = do not wait)")
    parser.add_argument("--no-write", action="store_true",
                        help=f"do not write the section of {RESULTS_MD.name}")
    parser.add_argument("--keep-tmp", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    args.idle_list = [t.strip() for t in args.idle_targets.split(",") if t.strip()]
    if any(t not in IDLE_TARGETS for t in args.idle_list):
        parser.error(f"--idle-targets: choose from {','.join(IDLE_TARGETS)}")
    args.attack_list = [t.strip() for t in args.attack_targets.split(",") if t.strip()]
    if any(t not in IDLE_TARGETS for t in args.attack_list):
        parser.error(f"--attack-targets: choose from {','.join(IDLE_TARGETS)}")
    if not 1 <= args.attack_connections <= 10000:
        parser.error("--attack-connections must be 1..10000")
    if not 1024 <= args.attack_bytes <= 16 * 1024 * 1024:
        parser.error("--attack-bytes must be 1 KiB..16 MiB")
    if args.quick:
        args.soak = 30
    if not 1 <= args.connections <= 60000:
        parser.error("--connections must be 1..60000")
    if not (args.soak == 0 or 25 <= args.soak <= 3600):
        parser.error("--soak must be 0 or 25..3600 seconds (the first 20 s are warm-up)")
    if not 0 <= args.quiet_wait <= 600:
        parser.error("--quiet-wait must be 0..600 seconds")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = _dt.datetime.now(_dt.timezone.utc)
    tools = tools_or_none()
    if tools is None:
        return 2
    soft, hard = raise_nofile()
    if args.idle_list and soft < args.connections + 100:
        print(f"error: open-file limit {soft} (hard {hard}) is too low for "
              f"{args.connections} connections", file=sys.stderr)
        return 2
    pin = decide_pinning()
    rev = revision()
    print(f"pinning: {pin.note}\nrouter revision: {rev}\nopen-file limit: {soft} (hard {hard})",
          flush=True)
    idle: list[Idle] = []
    attacks: list[Attack] = []
    soaked: Soak | None = None
    notes: list[str] = []
    harness = Harness(keep_tmp=args.keep_tmp)
    with exit_on_signals():
        try:
            backends = start_backends(harness, tools["nginx"], pin)
            for name in args.idle_list:
                print(f"== {name}: {args.connections:,} idle keep-alive connections", flush=True)
                try:
                    target = start_proxy(harness, name, tools, backends, pin)
                except TargetSkipped as exc:
                    print(f"   SKIPPED: {exc}", flush=True)
                    idle.append(Idle(name, error=str(exc)))
                    continue
                quiet_before_round(args.quiet_wait)
                try:
                    result = measure_idle(tools["wrk"], pin, target, args.connections)
                except BenchError as exc:
                    print(f"   ERROR {exc}", flush=True)
                    idle.append(Idle(name, error=str(exc)))
                else:
                    idle.append(result)
                    for i, b in enumerate(result.batches, 1):
                        print(f"   batch {i}: {b.held:,} held ({b.failed} failed, {b.open_s:.1f} s"
                              f"), RSS {b.before_kib:,} -> {b.with_kib:,} KiB "
                              f"({b.per_conn_kib or 0:.2f} KiB/conn), after closing "
                              f"{b.closed_kib:,} KiB; fds {b.fds_before} -> {b.fds_with}",
                              flush=True)
                        if b.first_error:
                            limit = (f"; its open-file limit is {result.nofile[0]} (hard "
                                     f"{result.nofile[1]})" if result.nofile else "")
                            notes.append(f"{name} batch {i}: held {b.held:,} of "
                                         f"{args.connections:,}, {b.failed} refused, first: "
                                         f"{b.first_error}{limit}")
                harness.stop(target.procs[0])  # one proxy at a time holds 10,000 clients
            for name in args.attack_list:
                for attack in ATTACKS:
                    print(f"== {name}: {attack} attack, {args.attack_connections} connections x "
                          f"{args.attack_bytes:,} bytes", flush=True)
                    try:
                        target = start_proxy(harness, name, tools, backends, pin,
                                             f"{name}-{attack}")
                    except TargetSkipped as exc:
                        print(f"   SKIPPED: {exc}", flush=True)
                        attacks.append(Attack(name, attack, error=str(exc)))
                        continue
                    target.name = name
                    run_wrk(tools["wrk"], pin, target, "small", 2, latency=False)
                    time.sleep(1.0)
                    quiet_before_round(args.quiet_wait)
                    try:
                        a = attack_once(target, attack, args.attack_connections,
                                        args.attack_bytes)
                    except BenchError as exc:
                        print(f"   ERROR {exc}", flush=True)
                        attacks.append(Attack(name, attack, error=str(exc)))
                    else:
                        attacks.append(a)
                        print(f"   took in {a.sent // 1024:,} KiB, closed {a.closed}; RSS "
                              f"{a.before_kib:,} -> {a.during_kib:,} KiB "
                              f"({a.per_conn_kib or 0:.1f} KiB/conn), after closing "
                              f"{a.after_kib:,} KiB", flush=True)
                    harness.stop(target.procs[0])
            if args.soak:
                print(f"== router: {args.soak} s soak at full load", flush=True)
                target = start_proxy(harness, "router", tools, backends, pin, "router-soak")
                run_wrk(tools["wrk"], pin, target, "small", 2, latency=False)
                quiet_before_round(args.quiet_wait)
                try:
                    soaked = soak(tools["wrk"], pin, target, args.soak)
                except BenchError as exc:
                    print(f"   ERROR {exc}", flush=True)
                    soaked = Soak(args.soak, error=str(exc))
                else:
                    print(f"   {soaked.requests:,} requests, {soaked.rps:,.0f} req/s, failed "
                          f"{soaked.failed}; RSS {samples_line(soaked)}", flush=True)
                    if soaked.others and soaked.others.seconds > NOISY_SHARE * args.soak:
                        notes.append(f"soak: other processes used {soaked.others.describe()} of "
                                     "CPU during the soak; its requests/s are disturbed")
        except (BenchError, TargetSkipped) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("\ninterrupted: stopping every process started", file=sys.stderr)
            return 130
        finally:
            harness.close()

    parts: list[str] = []
    if idle:
        parts += [f"Idle keep-alive client connections ({args.connections:,}):", "",
                  idle_table(idle, args.connections), ""]
    if attacks:
        parts += [f"Hostile clients ({args.attack_connections} connections, "
                  f"{args.attack_bytes:,} bytes each, nothing read):", "",
                  attack_table(attacks, args.attack_connections, args.attack_bytes), ""]
    if soaked is not None:
        parts += [f"Soak ({args.soak} s of `wrk -t1 -c{CONNECTIONS}` on the router):", "",
                  soak_table(soaked), ""]
        if soaked.samples:
            parts += [f"RSS samples (s since the start of the load, KiB): {samples_line(soaked)}",
                      ""]
    for r in idle:
        if r.error:
            notes.append(f"**{r.name}**: " + r.error.splitlines()[0])
    for a in attacks:
        if a.error:
            notes.append(f"**{a.name} {a.attack}**: " + a.error.splitlines()[0])
    if soaked is not None and soaked.error:
        notes.append("**soak**: " + soaked.error.splitlines()[0])
    if notes:
        parts += ["Notes:", "", *(f"- {n}" for n in notes), ""]
    text = "\n".join(parts)
    print("\n" + text)
    if not args.no_write:
        write_section(SECTION, report(args, started, tools, pin, rev, text))
        print(f"written to benchmarks/{RESULTS_MD.name} (section `{SECTION}`)")
    return 0


def report(args: argparse.Namespace, started: _dt.datetime, tools: dict[str, str],
           pin: Pinning, rev: str, text: str) -> str:
    return "\n".join([
        *report_header("## Memory per idle connection, and a soak", started, "memory",
                       tool_lines(tools, ("nginx", "haproxy")), rev),
        f"- pinning: {pin.note}",
        "",
        "Idle connections: after a 2 s wrk warm-up, VmRSS of the proxy's process tree before "
        "and 2 s after a helper process opened the connections (one complete request and "
        "response on each, then idle); growth / connections held. Done twice, closing all in "
        f"between: the first batch is the figure (target ≤ {TARGET_KIB_PER_CONN:.0f} KiB), the "
        "second shows whether freed memory is reused. Router: `limits.max_connections: 20000`, "
        "`timeouts.client_idle: 300s`; nginx: `worker_connections 12000` (it allocates its "
        "connection array for all of them at start, so that is in its *before*); HAProxy: "
        "`maxconn 12000`, `no strict-limits`, client and keep-alive timeouts 300 s. Soak: the "
        f"router's RSS every {SOAK_SAMPLE_S:.0f} s under full load; after the first "
        f"{SOAK_WARMUP_S:.0f} s it should stay within ±{SOAK_BAND * 100:.0f}% of its value at "
        f"{SOAK_WARMUP_S:.0f} s. Hostile clients: a fresh proxy per attack; VmRSS before, 2 s "
        "after the helper has sent what the proxy would take (growth / connections: target "
        f"≤ {TARGET_ATTACK_KIB_PER_CONN:.0f} KiB for the router), and {ATTACK_CLOSE_SETTLE_S:.0f} s "
        f"after it closed them (within {GIVEN_BACK * 100:.0f}% of before).",
        "",
        text,
    ])


if __name__ == "__main__":
    sys.exit(main())

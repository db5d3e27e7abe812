"""Load comparison: the router beside nginx and HAProxy, proxying the same backends.

One command (from the repository root)::

    python3 -m benchmarks.run                      # every target, 2 rounds of 10 s
    python3 -m benchmarks.run --quick              # 1 round of 3 s
    python3 -m benchmarks.run --targets nginx,haproxy,direct

Layout of the run on a 2-core machine (see benchmarks/README.md):

* CPU 1: the two nginx backends ("blue", "green"), wrk, and this harness.
* CPU 0: the system under test, alone.

All targets are started first, then loaded in turn, rounds interleaved (round 1 of every
target, then round 2 ...) for each body size: a 2 s warm-up, then one round of
``wrk -t1 -c50 -d<duration>s --latency``. Medians over ``--rounds`` rounds are reported,
failed requests are summed over rounds. CPU per request is the utime+stime the system under
test's process tree spent during a round, divided by the requests wrk completed in it; it
leads the results, because the load side (wrk and the backends, on their one CPU) can hold a
target's requests/s back but hardly what a request costs it. The load side's own CPU is
measured in every round too, and rounds where it was saturated are marked, with the ratios
of requests/s they make unreliable. Before the load, each proxy is checked to forward the
same request head as the router (so that none does less work).

Every process started here is stopped by its id on the way out (also on Ctrl-C and SIGTERM),
every wait is bounded, and all traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import http.client
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

try:
    from .common import with_sections
except ImportError:  # run as a script (python3 benchmarks/run.py): benchmarks/ is sys.path[0]
    from common import with_sections  # type: ignore[no-redef]

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CONF = HERE / "conf"
RESULTS_MD = HERE / "RESULTS.md"

ALL_TARGETS = ("router", "router-base", "router-sticky", "router-pinned", "router-log", "nginx",
               "haproxy", "direct")
DEFAULT_TARGETS = tuple(t for t in ALL_TARGETS if t != "router-base")  # that one: --baseline
ROUTER_TARGETS = ("router", "router-base", "router-sticky", "router-pinned", "router-log")
HOST = "bench.local"
BODIES = {"small": 100, "64k": 65536}

CONNECTIONS = 50
WARMUP_S = 2
SUT_CPU = 0  # the system under test runs alone here
LOAD_CPU = 1  # backends, wrk and this harness share this one

# The load side (wrk, the backends, this harness) at or above this share of its one CPU over a
# round is saturated: a target's requests/s is then what the load side allowed, not what the
# target can do.
LOAD_SATURATED = 0.90
QUIET_CPUS = 0.15  # the machine counts as quiet below 0.15 CPUs busy outside our load
QUIET_SAMPLE_S = 0.5
NOISY_SHARE = 0.05  # other processes using over 5% of one CPU during a round: noted as disturbed
READY_TIMEOUT_S = 15.0  # router /readyz, as agreed for the harness
STOP_GRACE_S = 12.0  # SIGTERM -> SIGKILL; the router's default grace period is 10 s
APT_UPDATE_TIMEOUT_S = 600
APT_INSTALL_TIMEOUT_S = 900

CLK_TCK = os.sysconf("SC_CLK_TCK")
TOOLS = {"wrk": "wrk", "nginx": "nginx-light", "haproxy": "haproxy"}
SBIN_PATH = os.pathsep.join(
    [os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin"]
)


class BenchError(Exception):
    """A step of the run failed; the message says which and why."""


class TargetSkipped(BenchError):
    """A system under test could not be started or does not answer correctly."""


# --------------------------------------------------------------------------------------------
# Tools


def which(name: str) -> str | None:
    return shutil.which(name, path=SBIN_PATH)


@contextlib.contextmanager
def wrk_killed_on_error(proc: subprocess.Popen[str], limit_s: float) -> Iterator[None]:
    """Around waiting for wrk (``communicate(timeout=limit_s)``): on a timeout, Ctrl-C or
    SIGTERM wrk goes too, and is reaped before we go on; a timeout becomes a BenchError."""
    try:
        yield
    except BaseException as exc:
        proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
        if isinstance(exc, subprocess.TimeoutExpired):
            raise BenchError(f"wrk did not finish within {limit_s:.0f} s") from exc
        raise


def tools_or_none() -> dict[str, str] | None:
    """ensure_tools(), or None once it has said on stderr what is missing (exit code 2)."""
    try:
        return ensure_tools()
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None


def ensure_tools() -> dict[str, str]:
    """Find wrk, nginx and haproxy; install the Debian packages if missing and we are root."""
    missing = [tool for tool in TOOLS if which(tool) is None]
    if missing:
        packages = [TOOLS[tool] for tool in missing]
        if os.geteuid() != 0 or which("apt-get") is None:
            raise BenchError(
                f"missing {', '.join(missing)}; install them with "
                f"`apt-get install -y {' '.join(packages)}` (as root), then run this again"
            )
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        print(f"installing {' '.join(packages)} with apt-get ...", flush=True)
        for cmd, timeout in (
            (["apt-get", "update"], APT_UPDATE_TIMEOUT_S),
            (["apt-get", "install", "-y", "--no-install-recommends", *packages], APT_INSTALL_TIMEOUT_S),
        ):
            try:
                subprocess.run(cmd, env=env, check=True, timeout=timeout)
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
                raise BenchError(f"`{shlex.join(cmd)}` failed: {exc}") from exc
        still = [tool for tool in TOOLS if which(tool) is None]
        if still:
            raise BenchError(f"still missing after apt-get install: {', '.join(still)}")
    return {tool: which(tool) or tool for tool in TOOLS}


def tool_version(cmd: Sequence[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    text = (out.stdout + out.stderr).strip().splitlines()
    return text[0].strip() if text else "?"


# --------------------------------------------------------------------------------------------
# CPU pinning and CPU time


@dataclass(frozen=True)
class Pinning:
    taskset: str | None
    note: str

    def prefix(self, cpu: int) -> list[str]:
        return [self.taskset, "-c", str(cpu)] if self.taskset else []

    def prefix_all(self) -> list[str]:
        """Every CPU: the harness pinned itself to LOAD_CPU, and children inherit that."""
        ncpu = os.cpu_count() or 1
        return [self.taskset, "-c", f"0-{ncpu - 1}"] if self.taskset else []


def decide_pinning() -> Pinning:
    ncpu = os.cpu_count() or 1
    taskset = which("taskset")
    if taskset is None:
        return Pinning(None, "taskset not found: nothing pinned")
    if ncpu < 2:
        return Pinning(None, f"{ncpu} CPU: nothing pinned")
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, {LOAD_CPU})
    return Pinning(
        taskset,
        f"system under test on CPU {SUT_CPU}; backends, wrk and the harness on CPU {LOAD_CPU}",
    )


@dataclass(frozen=True)
class ProcInfo:
    comm: str
    ppid: int
    own: int  # utime+stime, clock ticks
    reaped: int  # cutime+cstime: children it has waited for

    @property
    def ticks(self) -> int:
        return self.own + self.reaped


def proc_table() -> dict[int, ProcInfo]:
    """Every process of /proc/<pid>/stat, read once (one snapshot serves all questions)."""
    table: dict[int, ProcInfo] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue  # gone meanwhile
        # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
        close = raw.rfind(")")
        fields = raw[close + 2 :].split()
        # after the name: [0]=state [1]=ppid ... [11]=utime [12]=stime [13]=cutime [14]=cstime
        table[int(entry)] = ProcInfo(raw[raw.find("(") + 1 : close], int(fields[1]),
                                     int(fields[11]) + int(fields[12]),
                                     int(fields[13]) + int(fields[14]))
    return table


def process_tree(roots: Sequence[int], table: dict[int, ProcInfo]) -> set[int]:
    """The roots and every live descendant."""
    children: dict[int, list[int]] = {}
    for pid, info in table.items():
        children.setdefault(info.ppid, []).append(pid)
    tree: set[int] = set()
    todo = [r for r in roots if r in table]
    while todo:
        pid = todo.pop()
        if pid not in tree:
            tree.add(pid)
            todo.extend(children.get(pid, ()))
    return tree


def tree_cpu_seconds(roots: Sequence[int], table: dict[int, ProcInfo]) -> float:
    return sum(table[pid].ticks for pid in process_tree(roots, table)) / CLK_TCK


@dataclass(frozen=True)
class Others:
    """CPU time that processes this harness did not start used during a round (noise)."""

    seconds: float
    top: list[tuple[str, float]]

    def describe(self) -> str:
        top = ", ".join(f"{name} {sec:.1f}" for name, sec in self.top)
        return f"{self.seconds:.1f} CPU-s" + (f" ({top})" if top else "")


def other_cpu(before: dict[int, ProcInfo], after: dict[int, ProcInfo],
              cpu_before: dict[int, list[int]], cpu_after: dict[int, list[int]]) -> Others:
    """What the rest of the machine used: all user+system time minus ours and the kernel's.

    Ours is this harness and everything it started, reaped children included (the wrk of the
    round ends inside it). Kernel threads (kthreadd, pid 2, and its children) are mostly the
    loopback traffic of the run, so they are not counted as noise. The per-name breakdown uses
    each process's own utime+stime: a process born and gone within the round is in the total
    but not in the names.
    """
    ours = process_tree([os.getpid()], after) | process_tree([os.getpid()], before)
    kernel = process_tree([2], after) | process_tree([2], before)

    def delta(pid: int, attr: str) -> int:
        new, old = after.get(pid), before.get(pid)
        if new is None:
            return 0
        value = int(getattr(new, attr))
        return value - int(getattr(old, attr)) if old is not None and old.comm == new.comm else value

    ours_ticks = sum(delta(pid, "ticks") for pid in ours)
    kernel_ticks = sum(delta(pid, "own") for pid in kernel)
    # /proc/stat per CPU: user nice system ...
    machine = sum(sum(cpu_after[c][:3]) - sum(cpu_before[c][:3])
                  for c in set(cpu_after) & set(cpu_before))
    by_name: dict[str, int] = {}
    for pid, info in after.items():
        if pid not in ours and pid not in kernel:
            d = delta(pid, "own")
            if d > 0:
                by_name[info.comm] = by_name.get(info.comm, 0) + d
    top = sorted(by_name.items(), key=lambda kv: -kv[1])[:3]
    total = max(0, machine - ours_ticks - kernel_ticks, sum(by_name.values()))
    return Others(total / CLK_TCK,
                  [(name, ticks / CLK_TCK) for name, ticks in top if ticks / CLK_TCK >= 0.05])


@dataclass(frozen=True)
class CpuUse:
    """Share of each CPU's time over a round: busy (not idle) and stolen by the hypervisor."""

    busy: dict[int, float]
    steal: dict[int, float]

    def describe(self) -> str:
        return " ".join(f"cpu{c} {self.busy[c]:.0f}%" + (f" (steal {self.steal[c]:.0f}%)"
                                                            if self.steal[c] >= 1 else "")
                        for c in sorted(self.busy))


def read_cpu_ticks() -> dict[int, list[int]]:
    """Per-CPU counters of /proc/stat: user nice system idle iowait irq softirq steal."""
    ticks: dict[int, list[int]] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/stat").read_text().splitlines():
            name, *values = line.split()
            if name.startswith("cpu") and name[3:].isdigit():
                ticks[int(name[3:])] = [int(v) for v in values[:8]]
    return ticks


def cpu_use(before: dict[int, list[int]], after: dict[int, list[int]]) -> CpuUse | None:
    busy, steal = {}, {}
    for cpu in sorted(set(before) & set(after)):
        delta = [a - b for a, b in zip(after[cpu], before[cpu])]
        total = sum(delta)
        if total <= 0 or len(delta) < 8:
            return None
        busy[cpu] = 100.0 * (total - delta[3] - delta[4] - delta[7]) / total
        steal[cpu] = 100.0 * delta[7] / total
    return CpuUse(busy, steal) if busy else None


def quiet_before_round(max_wait_s: float) -> None:
    """wait_for_quiet (if max_wait_s > 0), saying how it went when it was not at once."""
    if max_wait_s <= 0:
        return
    waited, busy = wait_for_quiet(max_wait_s)
    if busy >= QUIET_CPUS:
        print(f"   (machine still busy after {waited:.0f} s: {busy:.1f} CPUs "
              "used by other processes; going on)", flush=True)
    elif waited >= 2 * QUIET_SAMPLE_S:
        print(f"   (waited {waited:.0f} s for the machine to go quiet)", flush=True)


def wait_for_quiet(max_wait_s: float) -> tuple[float, float]:
    """Wait, at most max_wait_s, until the machine is idle apart from us; best effort.

    Other work on a shared machine (a test suite, a build) lands on the pinned CPUs too and
    moves the numbers by tens of per cent. Between rounds nothing of ours is loaded, so any
    busy CPU then is someone else. Returns (seconds waited, CPUs busy at the last sample).
    """
    start = time.monotonic()
    while True:
        before = read_cpu_ticks()
        time.sleep(QUIET_SAMPLE_S)
        after = read_cpu_ticks()
        busy = sum(sum(after[c][:3]) + sum(after[c][5:7]) - sum(before[c][:3])
                   - sum(before[c][5:7]) for c in set(after) & set(before))
        cpus = busy / CLK_TCK / QUIET_SAMPLE_S
        waited = time.monotonic() - start
        if cpus < QUIET_CPUS or waited >= max_wait_s:
            return waited, cpus


# --------------------------------------------------------------------------------------------
# Processes


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    stdout_lines: list[int] | None = None  # lines read from its stdout (Harness.start)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 25) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return "(no output)"
        tail = text.strip().splitlines()[-lines:]
        return "\n".join("    " + line for line in tail) or "    (no output)"

    def stop(self) -> None:
        """SIGTERM the process group this harness created for it, then SIGKILL if it lingers."""
        if not self.alive():
            return
        # start_new_session=True made the child the leader of its own group, id = its pid:
        # signalling that group reaches only the processes it forked, nothing else.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGTERM)
        try:
            self.popen.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=5)
        # Children that outlived their parent are still in the group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)


class Harness:
    """Owns the temporary directory and every process started; cleans both up on exit."""

    def __init__(self, keep_tmp: bool = False) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="router-bench-"))
        self.keep_tmp = keep_tmp
        self.procs: list[Proc] = []

    def start(self, name: str, cmd: Sequence[str], cwd: Path | None = None,
              count_stdout: bool = False, env: dict[str, str] | None = None) -> Proc:
        """Start ``cmd``; its output goes to a log file, or with ``count_stdout`` its stdout
        is read and its lines counted (a log stream, read as a container runtime would)."""
        log = self.tmp / f"{name}.log"
        with open(log, "wb") as out:
            popen = subprocess.Popen(
                list(cmd),
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if count_stdout else out,
                stderr=out if count_stdout else subprocess.STDOUT,
                start_new_session=True,
            )
        proc = Proc(name, popen, log)
        if count_stdout:
            counter = proc.stdout_lines = [0]
            stream = popen.stdout

            def drain() -> None:
                for chunk in iter(lambda: stream.read1(65536), b""):  # type: ignore[union-attr]
                    counter[0] += chunk.count(b"\n")

            threading.Thread(target=drain, name=f"{name}-stdout", daemon=True).start()
        self.procs.append(proc)
        return proc

    def stop(self, proc: Proc) -> None:
        proc.stop()
        with contextlib.suppress(ValueError):
            self.procs.remove(proc)

    def close(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        self.procs.clear()
        if self.keep_tmp:
            print(f"temporary files kept in {self.tmp}")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# Small helpers


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def render(template: str, dest: Path, edits: dict[str, str] | None = None,
           **values: object) -> Path:
    """``template`` with its placeholders filled, and each of ``edits`` (text: its
    replacement, which must be there) made."""
    text = (CONF / template).read_text()
    for old, new in (edits or {}).items():
        if old not in text:
            raise BenchError(f"{template}: no {old!r} to replace")
        text = text.replace(old, new)
    for key, value in values.items():
        text = text.replace(f"@@{key.upper()}@@", str(value))
    leftover = re.search(r"@@[A-Z_]+@@", text)
    if leftover:
        raise BenchError(f"{template}: placeholder {leftover.group()} not filled")
    dest.write_text(text)
    return dest


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes
    headers: http.client.HTTPMessage


def http_get(port: int, path: str, host: str = HOST, headers: dict[str, str] | None = None,
             timeout: float = 3.0) -> Reply:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Host": host, **(headers or {})})
        resp = conn.getresponse()
        return Reply(resp.status, resp.read(), resp.msg)
    finally:
        conn.close()


def wait_until(deadline_s: float, probe: Callable[[], str | None],
               proc: Proc | None = None) -> str | None:
    """Call probe() every 0.1 s until it returns None (ready); return the last complaint."""
    deadline = time.monotonic() + deadline_s
    complaint: str | None = "never probed"
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive():
            return f"exited with code {proc.popen.returncode}"
        try:
            complaint = probe()
        except (OSError, http.client.HTTPException) as exc:
            complaint = f"{type(exc).__name__}: {exc}"
        if complaint is None:
            return None
        time.sleep(0.1)
    return f"not ready after {deadline_s:.0f} s ({complaint})"


# --------------------------------------------------------------------------------------------
# Backends and systems under test


@dataclass
class Backends:
    blue: int
    green: int
    proc: Proc


def small_body(name: str) -> str:
    """The /small body of a backend: its first word names the backend, so that the sanity
    check (and the tally of benchmarks/weights.py) can tell which one answered."""
    return (name + " ").ljust(BODIES["small"] - 1, ".") + "\n"


def start_backends(h: Harness, nginx: str, pin: Pinning, workers: int = 1) -> Backends:
    """The nginx of the two backends; ``workers`` processes (benchmarks/workers.py gives the
    load side more CPUs on a bigger machine)."""
    prefix = h.tmp / "backends"
    for name in ("blue", "green"):
        www = prefix / "www" / name
        www.mkdir(parents=True)
        line = (name + "\n").encode()
        (www / "64k").write_bytes((line * (BODIES["64k"] // len(line) + 1))[: BODIES["64k"]])
    blue, green = free_port(), free_port()
    # nginx reads \n in a quoted string as a newline; the bodies hold no quote, $ or backslash.
    conf = render("backends.nginx.conf", prefix / "nginx.conf", edits=nginx_workers(workers),
                  prefix=prefix, blue_port=blue, green_port=green,
                  blue_small=small_body("blue").replace("\n", "\\n"),
                  green_small=small_body("green").replace("\n", "\\n"),
                  echo="".join(f"{f}: $http_{f.replace('-', '_')}\\n" for f in ECHO_FIELDS))
    proc = h.start("backends", [*pin.prefix(LOAD_CPU), nginx, "-p", str(prefix), "-e",
                                str(prefix / "error.log"), "-c", str(conf)])
    for port in (blue, green):
        problem = wait_until(10, lambda p=port: _check_body(p, "small"), proc)
        if problem:
            raise BenchError(f"backend nginx on port {port}: {problem}\n{proc.log_tail()}")
    return Backends(blue, green, proc)


def nginx_workers(n: int) -> dict[str, str]:
    """The edits of an nginx configuration here for ``n`` worker processes (more than one
    needs the master process)."""
    if n == 1:
        return {}
    return {"worker_processes 1;": f"worker_processes {n};",
            "master_process off;": "master_process on;"}


# What the router does to a request head, which the other proxies are configured to do too:
# the fields the backends' /echo reports, and the request the sanity check sends through each
# target to see them. The client's X-Forwarded-* and client-address fields are replaced or
# dropped (no trusted proxy is configured), a sane X-Request-ID is kept and an insane one
# replaced, and the hop-by-hop fields are removed.
ECHO_FIELDS = ("x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-request-id",
               "forwarded", "x-real-ip", "connection", "keep-alive", "proxy-connection", "te",
               "trailer", "upgrade", "x-hop")
HOSTILE_HEAD = {
    "Connection": "keep-alive, X-Hop", "X-Hop": "1", "Keep-Alive": "timeout=5",
    "Proxy-Connection": "keep-alive", "TE": "trailers", "Trailer": "X-Checksum",
    "Upgrade": "foo/1", "X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https",
    "X-Forwarded-Host": "elsewhere.test", "Forwarded": "for=203.0.113.9",
    "X-Real-IP": "203.0.113.9", "X-Request-ID": "not sane!",
}
FORWARDED_HEAD = {"x-forwarded-for": "127.0.0.1", "x-forwarded-proto": "http",
                  "x-forwarded-host": HOST, "forwarded": "", "x-real-ip": "", "connection": "",
                  "keep-alive": "", "proxy-connection": "", "te": "", "trailer": "",
                  "upgrade": ""}
SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=@-]{1,128}")
KEPT_REQUEST_ID = "bench-sanity-42"


def _echo(port: int, headers: dict[str, str]) -> dict[str, str]:
    """The ECHO_FIELDS of the head a backend received for a GET /echo through ``port``."""
    reply = http_get(port, "/echo", headers=headers)
    if reply.status != 200:
        raise BenchError(f"GET /echo answered {reply.status}: {reply.body[:200]!r}")
    fields = dict(line.partition(": ")[::2]
                  for line in reply.body.decode(errors="replace").splitlines())
    return {name: fields.get(name, "?") for name in ECHO_FIELDS}


def check_forwarded_head(port: int, notes: list[str]) -> str | None:
    """Whether the proxy at ``port`` forwards the head the router forwards (see ECHO_FIELDS).

    A proxy that stops doing part of that work would be measured doing less than the router:
    it is refused (the message says what differs). The fields a client names in Connection
    are dropped by the router only (nginx and HAProxy cannot): that goes to ``notes``.
    """
    hostile = _echo(port, HOSTILE_HEAD)
    kept = _echo(port, {"X-Request-ID": KEPT_REQUEST_ID})
    plain = _echo(port, {})
    wrong = [f"{name} {hostile[name]!r} (expected {want!r})"
             for name, want in FORWARDED_HEAD.items() if hostile[name] != want]
    for label, rid in (("an insane", hostile["x-request-id"]), ("no", plain["x-request-id"])):
        if not SANE_REQUEST_ID.fullmatch(rid) or rid == HOSTILE_HEAD["X-Request-ID"]:
            wrong.append(f"x-request-id {rid!r} for a request with {label} X-Request-ID "
                         "(expected a new one)")
    if hostile["x-request-id"] == plain["x-request-id"]:
        wrong.append(f"x-request-id {plain['x-request-id']!r} twice (expected a new one each)")
    if kept["x-request-id"] != KEPT_REQUEST_ID:
        wrong.append(f"x-request-id {kept['x-request-id']!r} for a request with "
                     f"X-Request-ID: {KEPT_REQUEST_ID} (expected it kept)")
    if wrong:
        return "forwards a request head unlike the router's: " + "; ".join(wrong)
    if hostile["x-hop"]:
        notes.append("passes on a field the client named in Connection (X-Hop); the router "
                     "drops such fields, this proxy has no setting for it")
    return None


def _check_body(port: int, body: str) -> str | None:
    reply = http_get(port, f"/{body}")
    if reply.status != 200:
        return f"GET /{body} answered {reply.status}: {reply.body[:200]!r}"
    if len(reply.body) != BODIES[body]:
        return f"GET /{body} returned {len(reply.body)} bytes, expected {BODIES[body]}"
    return None


@dataclass
class Target:
    name: str
    port: int
    procs: list[Proc] = field(default_factory=list)  # whose CPU time is the target's
    load_procs: list[Proc] = field(default_factory=list)  # the backends: the load side with wrk
    headers: dict[str, str] = field(default_factory=dict)  # extra request headers for wrk
    notes: list[str] = field(default_factory=list)
    admin_port: int | None = None  # the router's admin API


def start_target(h: Harness, name: str, tools: dict[str, str], backends: Backends,
                 pin: Pinning, args: argparse.Namespace, label: str | None = None,
                 wrap: Sequence[str] = (), checkout: Path | None = None,
                 slower: float = 1.0, edits: dict[str, str] | None = None) -> Target:
    """Start one system under test and check it answers correctly.

    ``label`` names the target in the results instead of ``name`` (so that one kind, e.g.
    ``router``, can run in several variants side by side, as benchmarks/workers.py does).
    ``wrap`` goes before the proxy's command, after the pinning (benchmarks/instructions.py
    runs it under valgrind); ``checkout`` runs a router variant from another checkout;
    ``slower`` multiplies the bounds of the waits for it to answer (valgrind's slowness);
    ``edits`` replaces text in nginx's or HAProxy's configuration (benchmarks/workers.py: their
    worker processes and threads).
    """
    if name == "direct":
        return Target(label or name, backends.blue, load_procs=[backends.proc],
                      notes=["wrk straight at the blue backend"])
    port = free_port()
    prefix = h.tmp / re.sub(r"[^A-Za-z0-9_.-]+", "_", label or name)
    prefix.mkdir()
    admin_port: int | None = None
    if name == "nginx":
        conf = render("proxy.nginx.conf", prefix / "nginx.conf", prefix=prefix, port=port,
                      blue_port=backends.blue, green_port=backends.green, edits=edits)
        proc = h.start(label or name, [*pin.prefix(SUT_CPU), *wrap, tools["nginx"], "-p", str(prefix),
                                       "-e", str(prefix / "error.log"), "-c", str(conf)])
        ready_timeout = 10.0
    elif name == "haproxy":
        conf = render("haproxy.cfg", prefix / "haproxy.cfg", port=port,
                      blue_port=backends.blue, green_port=backends.green, edits=edits)
        proc = h.start(label or name,
                       [*pin.prefix(SUT_CPU), *wrap, tools["haproxy"], "-db", "-f", str(conf)])
        ready_timeout = 10.0
    elif name in ROUTER_TARGETS:
        admin = admin_port = free_port()
        conf = render("router.yaml", prefix / "router.yaml", port=port, admin_port=admin,
                      sticky="false" if name in ("router", "router-base", "router-log") else "true",
                      blue_port=backends.blue, green_port=backends.green)
        extra = getattr(args, "router_extra", "")  # more top-level YAML (benchmarks/memory.py)
        if name == "router-log":
            extra += "\naccess_log: {enabled: true, format: json}"
        if extra:
            conf.write_text(conf.read_text() + "\n" + extra.strip() + "\n")
        # --no-pin-router: the router may run on every CPU, beside wrk and the backends.
        router_pin = (pin.prefix_all() if getattr(args, "no_pin_router", False)
                      else pin.prefix(SUT_CPU))
        cmd = [*router_pin, *wrap, sys.executable, "-m", "router.cli", "serve",
               "--config", str(conf)]
        if args.router_workers:
            cmd += ["--workers", str(args.router_workers)]
        base = checkout or (getattr(args, "baseline", None) if name == "router-base" else None)
        if name == "router-base" and base is None:
            raise TargetSkipped("router-base needs --baseline DIR")
        proc = h.start(label or name, cmd, cwd=base or REPO, count_stdout=name == "router-log",
                       env={**os.environ, "PYTHONPATH": str(base)} if base else None)

        def readyz() -> str | None:
            reply = http_get(admin, "/readyz", host=f"127.0.0.1:{admin}")
            return None if reply.status == 200 else f"/readyz answered {reply.status}"

        problem = wait_until(READY_TIMEOUT_S * slower, readyz, proc)
        if problem:
            h.stop(proc)
            raise TargetSkipped(f"`{shlex.join(cmd)}`: {problem}\n{proc.log_tail()}")
        ready_timeout = 3.0
    else:  # argparse already refused it
        raise BenchError(f"unknown target {name}")

    target = Target(label or name, port, procs=[proc], load_procs=[backends.proc],
                    admin_port=admin_port)
    problem = wait_until(ready_timeout * slower, lambda: _check_body(port, "small"), proc)
    if problem is None:
        try:
            problem = _sanity(target, name)
        except (OSError, http.client.HTTPException, BenchError) as exc:
            problem = f"{type(exc).__name__}: {exc}"
    if problem:
        h.stop(proc)
        raise TargetSkipped(f"{label or name} on port {port}: {problem}\n{proc.log_tail()}")
    return target


def _sanity(target: Target, kind: str) -> str | None:
    """Both bodies come through whole, both backends are reached, the request head is
    forwarded as the router forwards it, the cookie flow works."""
    port = target.port
    seen = set()
    for _ in range(6):
        reply = http_get(port, "/small")
        seen.add(reply.body.split(b" ", 1)[0].decode(errors="replace"))
    problem = _check_body(port, "64k")
    if problem:
        return problem
    if seen != {"blue", "green"}:
        target.notes.append(f"sanity check: 6 requests reached {sorted(seen)}, not both backends")
    problem = check_forwarded_head(port, target.notes)
    if problem:
        return problem

    if kind == "router-sticky":
        if http_get(port, "/small").headers.get("Set-Cookie") is None:
            target.notes.append("no Set-Cookie seen on an unpinned request")
        else:
            target.notes.append("unpinned requests: a cookie is issued on every response")
    if kind == "router-log":
        lines = target.procs[0].stdout_lines
        if wait_until(2.0, lambda: None if lines and lines[0] >= 7 else "waiting") is not None:
            return f"the access log is on but {lines[0] if lines else 0} lines came out for 7 requests"
        target.notes.append("access log on (`access_log: {enabled: true, format: json}`): a JSON "
                            "line per request on stdout, read and counted by the harness as a "
                            "container runtime would read it")
    if kind == "router-pinned":
        cookie = reply_cookie(http_get(port, "/small"))
        if cookie is None:
            return "no Set-Cookie on an unpinned request"
        again = http_get(port, "/small", headers={"Cookie": cookie})
        if again.status != 200:
            return f"a request with the cookie answered {again.status}"
        target.headers["Cookie"] = cookie
        target.notes.append(
            f"every request carries the cookie `{cookie.split('=', 1)[0]}` (verified on every "
            f"request; all go to {again.body.split(b' ', 1)[0].decode(errors='replace')})"
        )
    return None


def reply_cookie(reply: Reply) -> str | None:
    header = reply.headers.get("Set-Cookie")
    if not header:
        return None
    return header.split(";", 1)[0].strip()


# --------------------------------------------------------------------------------------------
# wrk

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}
_LAT = re.compile(r"^\s*(50|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s|m|h)\s*$", re.M)
_RPS = re.compile(r"^Requests/sec:\s+([\d.]+)", re.M)
_TOTAL = re.compile(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m|h)", re.M)
_SOCK = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
_NON2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")


@dataclass(frozen=True)
class LoadSide:
    """CPU seconds the load side used over a round: wrk (reaped by this harness within the
    round, so its getrusage(RUSAGE_CHILDREN)), the backends' process tree, and this harness
    itself (it reads router-log's access log during the round), all on LOAD_CPU."""

    wrk_s: float
    backends_s: float
    harness_s: float

    @property
    def seconds(self) -> float:
        return self.wrk_s + self.backends_s + self.harness_s


@dataclass(frozen=True)
class WrkRun:
    """One wrk load and what the CPUs did meanwhile."""

    output: str
    wall_s: float
    cpu_s: float | None  # the target's process tree
    load: LoadSide
    cpus: CpuUse | None
    others: Others


@dataclass(frozen=True)
class Round:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    non2xx: int
    socket_errors: int
    cpu_s: float | None
    cpus: CpuUse | None = None
    others: Others | None = None
    wall_s: float = 0.0
    load: LoadSide | None = None
    load_cpus: int = 1  # the CPUs the load side had

    @property
    def failed(self) -> int:
        return self.non2xx + self.socket_errors

    @property
    def cpu_us_per_req(self) -> float | None:
        if self.cpu_s is None or self.requests == 0:
            return None
        return self.cpu_s / self.requests * 1e6

    @property
    def cpu_share(self) -> float | None:
        """The target's CPU time over the round's wall time: 1.0 is one CPU kept busy."""
        return self.cpu_s / self.wall_s if self.cpu_s is not None and self.wall_s > 0 else None

    @property
    def load_share(self) -> float | None:
        """The load side's CPU time over the round's wall time and its CPUs (one, pinned,
        unless benchmarks/workers.py gives it more)."""
        if not self.load or self.wall_s <= 0:
            return None
        return self.load.seconds / self.wall_s / self.load_cpus

    @property
    def load_us_per_req(self) -> float | None:
        if self.load is None or self.requests == 0:
            return None
        return self.load.seconds / self.requests * 1e6

    @property
    def saturated(self) -> bool:
        """The load side was (nearly) out of CPU: the target may have been held back by it."""
        share = self.load_share
        return share is not None and share >= LOAD_SATURATED


def parse_wrk(text: str) -> tuple[float, float, float, int, int, int]:
    """requests/s, p50 ms, p99 ms, requests, non-2xx/3xx, socket errors."""
    lat = {pct: float(val) * _UNITS[unit] for pct, val, unit in _LAT.findall(text)}
    rps, total = _RPS.search(text), _TOTAL.search(text)
    if rps is None or total is None or "50" not in lat or "99" not in lat:
        raise BenchError(f"cannot parse wrk output:\n{text}")
    sock = _SOCK.search(text)
    non2xx = _NON2XX.search(text)
    return (float(rps.group(1)), lat["50"], lat["99"], int(total.group(1)),
            int(non2xx.group(1)) if non2xx else 0,
            sum(int(v) for v in sock.groups()) if sock else 0)


def run_wrk(wrk: str, pin: Pinning, target: Target, body: str, seconds: int,
            latency: bool = True, threads: int = 1, connections: int = CONNECTIONS) -> WrkRun:
    """Run one wrk load: its output, the CPU seconds the target's process tree and the load
    side spent meanwhile, how busy each CPU was, and what other processes of the machine
    used (the noise in that round). ``threads``: wrk's, one per CPU of the load side."""
    cmd = [*pin.prefix(LOAD_CPU), wrk, f"-t{threads}", f"-c{connections}", f"-d{seconds}s"]
    if latency:
        cmd.append("--latency")
    for name, value in {"Host": HOST, **target.headers}.items():
        cmd += ["-H", f"{name}: {value}"]
    cmd.append(f"http://127.0.0.1:{target.port}/{body}")
    roots = [p.pid for p in target.procs]
    load_roots = [p.pid for p in target.load_procs]
    table_before, machine_before = proc_table(), read_cpu_ticks()
    # wrk is the only child reaped between these two readings (the targets and backends run
    # on), so the growth of RUSAGE_CHILDREN is wrk's own CPU time.
    self_before, children_before = rusage_s()
    started = time.monotonic()
    wrk_proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    with wrk_killed_on_error(wrk_proc, seconds + 30):
        stdout, stderr = wrk_proc.communicate(timeout=seconds + 30)
    wall_s = time.monotonic() - started
    self_after, children_after = rusage_s()
    table_after, machine_after = proc_table(), read_cpu_ticks()
    machine = cpu_use(machine_before, machine_after)
    others = other_cpu(table_before, table_after, machine_before, machine_after)
    if wrk_proc.returncode != 0:
        raise BenchError(f"`{shlex.join(cmd)}` exited {wrk_proc.returncode}: {stderr.strip()}")
    for proc in target.procs:
        if not proc.alive():
            raise BenchError(f"{proc.name} exited during the load (code "
                             f"{proc.popen.returncode})\n{proc.log_tail()}")
    cpu = None
    if roots:
        cpu = tree_cpu_seconds(roots, table_after) - tree_cpu_seconds(roots, table_before)
    load = LoadSide(children_after - children_before,
                    tree_cpu_seconds(load_roots, table_after)
                    - tree_cpu_seconds(load_roots, table_before),
                    self_after - self_before)
    return WrkRun(stdout, wall_s, cpu, load, machine, others)


def rusage_s() -> tuple[float, float]:
    """CPU seconds (user + system) of this process, and of its children it has reaped."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, reaped.ru_utime + reaped.ru_stime


# --------------------------------------------------------------------------------------------
# Results


@dataclass
class Result:
    target: str
    body: str
    rounds: list[Round] = field(default_factory=list)
    error: str | None = None

    def median(self, attr: str) -> float | None:
        values = [getattr(r, attr) for r in self.rounds]
        values = [v for v in values if v is not None]
        return statistics.median(values) if values else None

    @property
    def saturated_rounds(self) -> int:
        return sum(r.saturated for r in self.rounds)

    @property
    def load_bound(self) -> bool:
        """The median round's load side was saturated: the median requests/s is (at least
        partly) what wrk and the backends allowed, not what this target can do."""
        share = self.median("load_share")
        return share is not None and share >= LOAD_SATURATED


def fmt(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def pct(share: float | None) -> str:
    return "–" if share is None else f"{share * 100:.0f}%"


# How far a ratio of requests/s holds when a load side was saturated (see rps_bound).
BOUND_MARKS = {"upper": "≤", "lower": "≥", "neither": "~", "": ""}


def rps_bound(r: Result, base: Result) -> str:
    """What the ratio of r's requests/s to base's is, given which of them was load-bound.

    A load-bound target was held back by the load side, so its true requests/s is at least
    the measured: if only ``base`` was, the ratio is an upper bound of the true one (it
    flatters ``r`` when r is the slower); if only ``r`` was, a lower bound; if both, it
    compares what the load side allowed each, not the targets.
    """
    if r is base or not (r.load_bound or base.load_bound):
        return ""
    if r.load_bound and base.load_bound:
        return "neither"
    return "upper" if base.load_bound else "lower"


def ratio(a: Result, b: Result, attr: str) -> float | None:
    x, y = a.median(attr), b.median(attr)
    return x / y if x is not None and y else None


def results_table(results: list[Result], skips: dict[str, str]) -> str:
    """The summary: CPU per request first (a saturated load side barely moves it), then the
    figures a saturated load side caps (requests/s) or inflates (latency)."""
    nginx = {r.body: r for r in results if r.target == "nginx" and r.rounds}
    lines = [
        "| target | body | CPU µs/req | CPU vs nginx | requests/s | % of nginx rps | p50 ms "
        "| p99 ms | failed | busy: target, load side | load side saturated |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in results:
        if r.error is not None and not r.rounds:
            lines.append(f"| {r.target} | {r.body} | error | | | | | | | | |")
            continue
        base = nginx.get(r.body)
        cpu = ratio(r, base, "cpu_us_per_req") if base else None
        rps = ratio(r, base, "rps") if base else None
        cpu_cell = "–" if cpu is None else f"{cpu:.2f}×"
        rps_cell = ("–" if rps is None or base is None
                    else BOUND_MARKS[rps_bound(r, base)] + f"{rps * 100:.0f}%")
        lines.append(
            f"| {r.target} | {r.body} | {fmt(r.median('cpu_us_per_req'))} | {cpu_cell} | "
            f"{fmt(r.median('rps'), 0)} | {rps_cell} | "
            f"{fmt(r.median('p50_ms'), 2)} | {fmt(r.median('p99_ms'), 2)} | "
            f"{sum(x.failed for x in r.rounds)} | {pct(r.median('cpu_share'))}, "
            f"{pct(r.median('load_share'))} | {r.saturated_rounds} of {len(r.rounds)} |"
        )
    for name in skips:
        lines.append(f"| {name} | – | skipped | | | | | | | | |")
    return "\n".join(lines)


def load_side_lines(results: list[Result]) -> list[str]:
    """Which targets the load side held back, and what that does to the ratios. (``direct``
    has no proxy: the load side is all it measures, so it is left out.)"""
    bound = [f"{r.target} {r.body} ({r.saturated_rounds} of {len(r.rounds)} rounds)"
             for r in results if r.rounds and r.load_bound and r.target != "direct"]
    if not bound:
        return [f"- The load side (wrk, the backends, the harness: one CPU) stayed below "
                f"{LOAD_SATURATED * 100:.0f}% of its CPU in the median round of every proxy: "
                "it did not cap their requests/s (other processes on the machine still may "
                "have: see each round's CPU time of other processes)."]
    return [
        f"- The load side (wrk, the backends, the harness: one CPU) was saturated (≥ "
        f"{LOAD_SATURATED * 100:.0f}% of its CPU) in the median round of: {', '.join(bound)}. "
        "Their requests/s is what the load side allowed, not what they can do.",
        "- So a ratio of requests/s against one of them flatters the slower: `≤` marks an upper "
        "bound (nginx was held back), `≥` a lower bound (this target was), `~` both were "
        "(the ratio compares the load side, not the proxies). CPU per request is barely moved "
        "by it (if anything, a proxy the load side leaves idle part of the time handles fewer "
        "requests per wake-up and reads a little higher): compare that.",
    ]


def rounds_table(results: list[Result]) -> str:
    lines = ["| target | body | round | CPU s | CPU µs/req | requests | requests/s | p50 ms "
             "| p99 ms | non-2xx/3xx | socket errors | target busy | load side busy | load side "
             "CPU s: wrk, backends, harness | load side µs/req | machine CPU busy "
             "| other processes |",
             "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|---|"]
    for r in results:
        for i, x in enumerate(r.rounds, 1):
            load = (f"{x.load.wrk_s:.2f}, {x.load.backends_s:.2f}, {x.load.harness_s:.2f}"
                    if x.load else "–")
            lines.append(f"| {r.target} | {r.body} | {i} | {fmt(x.cpu_s, 2)} | "
                         f"{fmt(x.cpu_us_per_req)} | {x.requests} | {x.rps:,.0f} | "
                         f"{x.p50_ms:.2f} | {x.p99_ms:.2f} | {x.non2xx} | {x.socket_errors} | "
                         f"{pct(x.cpu_share)} | {pct(x.load_share)}"
                         f"{' saturated' if x.saturated else ''} | {load} | "
                         f"{fmt(x.load_us_per_req)} | "
                         f"{x.cpus.describe() if x.cpus else '–'} | "
                         f"{x.others.describe() if x.others else '–'} |")
    return "\n".join(lines)


def target_checks(results: list[Result]) -> list[str]:
    """The router against its targets (benchmarks/README.md), when nginx or HAProxy ran beside
    it."""
    by = {(r.target, r.body): r for r in results if r.rounds}
    out: list[str] = []

    def check(label: str, value: float | None, limit: float, higher_is_better: bool,
              bound: str = "") -> None:
        if value is None:
            return
        ok = value >= limit if higher_is_better else value <= limit
        sign = "≥" if higher_is_better else "≤"
        peer = label.partition("/")[2].partition(" ")[0]
        why = {"upper": f"; an upper bound: {peer}'s load side was saturated",
               "lower": "; a lower bound: the router's load side was saturated",
               "neither": "; both load sides were saturated: not a measure of the proxies",
               "": ""}[bound]
        out.append(f"- {'PASS' if ok else 'MISS'} {label}: {value:.2f} (target {sign} {limit})"
                   + why)

    def check_rps(label: str, r: Result, base: Result, limit: float) -> None:
        check(label, ratio(r, base, "rps"), limit, True, rps_bound(r, base))

    nginx_small, nginx_64k = by.get(("nginx", "small")), by.get(("nginx", "64k"))
    router_small, router_64k = by.get(("router", "small")), by.get(("router", "64k"))
    if nginx_small and router_small:
        check("router/nginx CPU per request, small",
              ratio(router_small, nginx_small, "cpu_us_per_req"), 1.5, False)
        check_rps("router/nginx requests/s, small", router_small, nginx_small, 0.75)
        check("router/nginx p99, small", ratio(router_small, nginx_small, "p99_ms"), 2.0, False)
    # Against HAProxy, the peer that does the same work per request (benchmarks/README.md).
    haproxy_small = by.get(("haproxy", "small"))
    if haproxy_small and router_small:
        check("router/haproxy CPU per request, small",
              ratio(router_small, haproxy_small, "cpu_us_per_req"), 1.1, False)
        check_rps("router/haproxy requests/s, small", router_small, haproxy_small, 0.9)
        check("router/haproxy p99, small", ratio(router_small, haproxy_small, "p99_ms"), 1.5,
              False)
    for sticky in ("router-sticky", "router-pinned"):
        r = by.get((sticky, "small"))
        if nginx_small and r:
            check_rps(f"{sticky}/nginx requests/s, small", r, nginx_small, 0.70)
    if nginx_64k and router_64k:
        cpu = ratio(router_64k, nginx_64k, "cpu_us_per_req")
        if cpu is not None:
            out.append(f"- router/nginx CPU per request, 64k: {cpu:.2f} (no target)")
        check_rps("router/nginx requests/s, 64k", router_64k, nginx_64k, 0.90)
    # The access log is off by default; what turning it on costs (no target).
    for body, plain in (("small", router_small), ("64k", router_64k)):
        logged = by.get(("router-log", body))
        rps = ratio(logged, plain, "rps") if logged and plain else None
        if rps is not None:
            extra = (logged.median("cpu_us_per_req") or 0) - (plain.median("cpu_us_per_req") or 0)
            out.append(f"- access log on (router-log vs router), {body}: CPU per request "
                       f"{extra:+.1f} µs, requests/s ×{rps:.2f}")
    # Before and after in one run (--baseline): this checkout's router against the other's.
    for body in ("small", "64k"):
        plain, base, nginx = by.get(("router", body)), by.get(("router-base", body)), by.get(("nginx", body))
        cpu = ratio(plain, base, "cpu_us_per_req") if plain and base else None
        if cpu is not None:
            # Rounds are interleaved: a round of each is minutes apart at most, so the ratio
            # within a round is less moved by the machine's drift than the ratio of medians.
            paired = [a.cpu_us_per_req / b.cpu_us_per_req for a, b in zip(plain.rounds, base.rounds)
                      if a.cpu_us_per_req and b.cpu_us_per_req]
            line = f"- router vs router-base (--baseline), {body}: CPU per request ×{cpu:.2f}"
            if paired:
                line += (f" (round by round: median ×{statistics.median(paired):.2f}, "
                         f"{min(paired):.2f}-{max(paired):.2f})")
            if nginx:
                now, before = ratio(plain, nginx, "cpu_us_per_req"), ratio(base, nginx, "cpu_us_per_req")
                if now is not None and before is not None:
                    line += f"; relative to nginx {before:.2f} before, {now:.2f} after"
            out.append(line)
    for r in results:
        if r.target in ROUTER_TARGETS and r.rounds:
            failed = sum(x.failed for x in r.rounds)
            if failed:
                out.append(f"- MISS {r.target} {r.body}: {failed} failed requests (target 0)")
    return out


def machine_info() -> list[str]:
    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "cpu model", "Hardware"):
                model = value.strip()
                break
    return [
        f"- nproc: {os.cpu_count()}",
        f"- CPU: {model}",
        f"- kernel: {platform.system()} {platform.release()}",
        f"- Python: {platform.python_version()} ({sys.executable})",
        f"- router build: {router_build()}",
    ]


def router_build() -> str:
    """Which build of the data plane the router processes run (they import it from here)."""
    import router

    return ("compiled (mypyc, setup.py)" if router.compiled()
            else "plain Python (not compiled: `make install` compiles it)")


def command_line(module: str = "run") -> str:
    """The command that produced a report (``python3 -m benchmarks.<module> ...``)."""
    args = shlex.join(sys.argv[1:])
    spec = globals().get("__spec__")
    head = f"python3 -m benchmarks.{module}" if spec is not None or module != "run" else "python3 benchmarks/run.py"
    return f"{head} {args}".strip()


def tool_lines(tools: dict[str, str], names: Sequence[str]) -> list[str]:
    labels = {"nginx": "nginx", "haproxy": "HAProxy", "wrk": "wrk"}
    return [f"- {labels[n]}: {tool_version([tools[n], '-v'])}" for n in names]


def report_header(title: str, started: _dt.datetime, module: str, tool_info: list[str],
                  rev: str | None = None) -> list[str]:
    """The opening every results section shares: title, date, command, machine, tools."""
    date = started.strftime("%Y-%m-%d %H:%M UTC") + (f"; router at {rev}" if rev else "")
    return [title, "", f"Date: {date}", "", "Command:", "", "```", command_line(module), "```",
            "", "Machine:", "", *machine_info(), *tool_info]


# --------------------------------------------------------------------------------------------
# Main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python3 -m benchmarks.run",
        description="Load comparison of the router with nginx and HAProxy (wrk, one machine).",
    )
    parser.add_argument("--targets", default=",".join(DEFAULT_TARGETS),
                        help=f"comma-separated, any of {','.join(ALL_TARGETS)} (default: all "
                             "but router-base)")
    parser.add_argument("--bodies", default=",".join(BODIES),
                        help=f"comma-separated, any of {','.join(BODIES)} (default: all)")
    parser.add_argument("--duration", type=int, default=10, help="seconds per round (default 10)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds per target and body (default 2)")
    parser.add_argument("--quick", action="store_true", help="1 round of 3 s")
    parser.add_argument("--quiet-wait", type=float, default=20.0, metavar="S",
                        help="before each round wait up to S seconds for other processes to "
                             "leave the CPUs idle (default 20, 0 = do not wait)")
    parser.add_argument("--router-workers", type=int, default=0,
                        help="pass --workers N to `router serve` (default: not passed, 1 worker)")
    parser.add_argument("--no-pin-router", action="store_true",
                        help="do not pin the router to CPU 0: it may use every CPU, competing "
                             "with wrk and the backends (the other proxies stay pinned)")
    parser.add_argument("--baseline", metavar="DIR", type=Path,
                        help="also run the router of another checkout (e.g. a `git worktree` of "
                             "the previous release, built with `python3 setup.py build_ext "
                             "--inplace` to compare compiled builds) as target `router-base`, "
                             "configured as `router`: before and after in one run")
    parser.add_argument("--no-write", action="store_true", help=f"do not write {RESULTS_MD.name}")
    parser.add_argument("--keep-tmp", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    if args.baseline is not None:
        if not (args.baseline / "router" / "cli.py").is_file():
            parser.error(f"--baseline {args.baseline}: no router/cli.py there")
        if "router-base" not in targets:
            targets.insert(targets.index("router") + 1 if "router" in targets else 0,
                           "router-base")
    bad = [t for t in targets if t not in ALL_TARGETS]
    if bad or not targets:
        parser.error(f"--targets: unknown {bad}; choose from {','.join(ALL_TARGETS)}")
    bodies = [b.strip() for b in args.bodies.split(",") if b.strip()]
    if not bodies or any(b not in BODIES for b in bodies):
        parser.error(f"--bodies: choose from {','.join(BODIES)}")
    if args.quick:
        args.duration, args.rounds = 3, 1
    if not 1 <= args.duration <= 600 or not 1 <= args.rounds <= 20:
        parser.error("--duration must be 1..600 and --rounds 1..20")
    if not 0 <= args.quiet_wait <= 600:
        parser.error("--quiet-wait must be 0..600 seconds")
    args.target_list, args.body_list = targets, bodies
    return args


def measure(wrk: str, pin: Pinning, targets: list[Target], args: argparse.Namespace,
            notes: list[str]) -> list[Result]:
    """Load every target, rounds interleaved: round 1 of each target, then round 2 of each,
    each round in the order of the one before rotated by one.

    On a shared machine the background load drifts over minutes; interleaving spreads that
    drift over all targets instead of charging it to whichever ran last, and the rotation
    spreads what a place in the order costs (the first target after `direct` was seen slower
    on 64 KiB bodies in round after round). Every measured round is preceded by its own
    warm-up, so idle time between a target's rounds does not count.
    """
    results = {(t.name, body): Result(t.name, body) for t in targets for body in args.body_list}
    # wrk's threads (one per CPU of the load side) and connections: benchmarks/workers.py
    # gives the load side more CPUs on a bigger machine.
    load = {"threads": getattr(args, "wrk_threads", 1),
            "connections": getattr(args, "connections", CONNECTIONS)}
    for body in args.body_list:
        for i in range(args.rounds):
            print(f"-- {body}, round {i + 1} of {args.rounds}", flush=True)
            # Each round starts with another target: whatever the first place (or following a
            # given target) costs falls on every target in turn, not always on the same one.
            start = i % len(targets)
            for target in [*targets[start:], *targets[:start]]:
                result = results[(target.name, body)]
                if result.error is not None:
                    continue
                quiet_before_round(args.quiet_wait)
                try:
                    run_wrk(wrk, pin, target, body, WARMUP_S, latency=False, **load)
                    run = run_wrk(wrk, pin, target, body, args.duration, **load)
                    rnd = Round(*parse_wrk(run.output), cpu_s=run.cpu_s, cpus=run.cpus,
                                others=run.others, wall_s=run.wall_s, load=run.load,
                                load_cpus=load["threads"])
                except BenchError as exc:
                    print(f"   {target.name:>13}: ERROR {exc}", flush=True)
                    notes.append(f"**{target.name} {body} error**: " + str(exc).splitlines()[0])
                    dead = any(not p.alive() for p in target.procs)
                    for b in args.body_list if dead else [body]:
                        results[(target.name, b)].error = str(exc)
                    continue
                result.rounds.append(rnd)
                print(f"   {target.name:>13}: CPU {fmt(rnd.cpu_us_per_req)} µs/req, "
                      f"{rnd.rps:,.0f} req/s, p50 {rnd.p50_ms:.2f} ms, "
                      f"p99 {rnd.p99_ms:.2f} ms, failed {rnd.failed}; busy: target "
                      f"{pct(rnd.cpu_share)}, load side {pct(rnd.load_share)} "
                      f"({fmt(rnd.load_us_per_req)} µs/req)"
                      + (" SATURATED" if rnd.saturated else "")
                      + (f"; {rnd.cpus.describe()}" if rnd.cpus else "")
                      + f"; other processes {run.others.describe()}", flush=True)
                if run.others.seconds > NOISY_SHARE * args.duration:
                    notes.append(f"{target.name} {body} round {i + 1}: other processes used "
                                 f"{run.others.describe()} of CPU during the round; its numbers "
                                 "are disturbed")
    return list(results.values())


def _raise_exit(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def exit_on_signals() -> Iterator[None]:
    """SIGTERM/SIGHUP unwind like Ctrl-C does, so the `finally` clean-up runs."""
    old = {sig: signal.signal(sig, _raise_exit) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = _dt.datetime.now(_dt.timezone.utc)
    tools = tools_or_none()
    if tools is None:
        return 2
    pin = decide_pinning()
    if args.no_pin_router and pin.taskset:
        pin = Pinning(pin.taskset, pin.note + "; except the router (--no-pin-router): it may run "
                      "on every CPU, beside wrk and the backends")
    print(f"pinning: {pin.note}")
    estimate = (len(args.target_list) * len(args.body_list) * args.rounds
                * (WARMUP_S + args.duration))
    print(f"targets: {', '.join(args.target_list)}; bodies: {', '.join(args.body_list)}; "
          f"{args.rounds} round(s) of {args.duration} s (about {estimate} s of load)", flush=True)

    results: list[Result] = []
    notes: list[str] = []
    skips: dict[str, str] = {}
    harness = Harness(keep_tmp=args.keep_tmp)
    with exit_on_signals():
        try:
            backends = start_backends(harness, tools["nginx"], pin)
            targets: list[Target] = []
            for name in args.target_list:
                print(f"== {name}: starting", flush=True)
                try:
                    target = start_target(harness, name, tools, backends, pin, args)
                except TargetSkipped as exc:
                    print(f"   SKIPPED: {exc}", flush=True)
                    skips[name] = str(exc)
                    continue
                targets.append(target)
                notes.extend(f"{name}: {note}" for note in target.notes)
                for note in target.notes:
                    print(f"   {note}")
            results = measure(tools["wrk"], pin, targets, args, notes)
        except BenchError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        except (KeyboardInterrupt, SystemExit) as exc:
            print("\ninterrupted: stopping every process started, removing temporary files",
                  file=sys.stderr, flush=True)
            if isinstance(exc, KeyboardInterrupt):
                return 130
            raise
        finally:
            harness.close()

    table = results_table(results, skips)
    load_side = load_side_lines(results)
    checks = target_checks(results)
    print("\n" + table + "\n\n" + "\n".join(load_side))
    if checks:
        print("\nTargets (router vs nginx and HAProxy, same run):\n" + "\n".join(checks))
    if not args.no_write:
        write_results(args, started, tools, pin, table, load_side, checks, results, notes,
                      skips)
        print(f"\nwritten to {RESULTS_MD.relative_to(REPO)}")
    return 0


def write_results(args: argparse.Namespace, started: _dt.datetime, tools: dict[str, str],
                  pin: Pinning, table: str, load_side: list[str], checks: list[str],
                  results: list[Result], notes: list[str], skips: dict[str, str]) -> None:
    parts = [
        *report_header("# Benchmark results", started, "run",
                       tool_lines(tools, ("nginx", "haproxy", "wrk"))),
        f"- pinning: {pin.note}",
        "",
        f"Load: `wrk -t1 -c{CONNECTIONS} -d{args.duration}s --latency`, {args.rounds} round(s) "
        "per target and body, interleaved across targets (each round's order rotated by one), "
        f"each after a {WARMUP_S} s warm-up; medians over rounds, failed requests (non-2xx/3xx "
        "responses + socket errors) summed over rounds. CPU µs/req is the utime+stime of the "
        "target's process tree per completed request (none for `direct`): the figure to "
        "compare, since a load side short of CPU holds a target's requests/s back but barely "
        "changes what a request costs it. Busy: the CPU time of the target, and of the load "
        "side (wrk, the backends and this harness, on one CPU), over the wall time of the "
        f"round; the load side at ≥ {LOAD_SATURATED * 100:.0f}% is saturated. nginx and HAProxy "
        "forward the same request head as the router (checked before the load through a "
        "backend that echoes it).",
        "",
        table,
        "",
        *load_side,
        "",
    ]
    if checks:
        parts += ["Targets (router vs nginx and HAProxy, same run):", "", *checks, ""]
    if notes:
        parts += ["Notes:", "", *(f"- {n}" for n in notes), ""]
    for name, why in skips.items():
        parts += [f"**{name} skipped** (it could not be started or did not answer correctly):",
                  "", "```", why, "```", ""]
    parts += ["Every round. Target busy and load side busy as above (the load side's CPU time "
              "split into wrk, the backends and this harness). Machine CPU busy: the share of "
              "each CPU not idle over the round (and the share the hypervisor stole, if any); a "
              "system under test on CPU 0 well below 100% was not the bottleneck. Other "
              "processes: CPU time used meanwhile by "
              "processes this harness did not start (kernel threads left out), the biggest "
              "named; more than a few tenths of a second means the round was disturbed.",
              "", rounds_table(results), ""]
    # The sections other benchmarks (weights, memory, workers) wrote below stay.
    RESULTS_MD.write_text(with_sections("\n".join(parts), RESULTS_MD))


if __name__ == "__main__":
    sys.exit(main())

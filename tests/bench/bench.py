#!/usr/bin/env python3
"""The benchmark suite's logic; tests/bench/run is its driver.

  bench.py plan [--quick] [--only S,...] [--repeat R]         the container boots, one per line
  bench.py inside --bin-dir D --bench B --venv V [--quick] JOB... --repeat=R   inside the container
  bench.py report RESULTS OUT.md --meta META                  the table

Inside the container every measurement prints one line `RESULT {json}` on
stdout: {"key": figure, "value": number} or {"key": figure, "fail": why}.
Progress goes to stderr. Every wait has a timeout; nothing here sleeps in
place of a signal, except the fixed window of the idle-CPU figure and the
polls that clean up between runs (not timed).
"""

import argparse
import concurrent.futures
import http.client
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import threading
import time
import xmlrpc.client

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
# No __pycache__ of report.py and audit_section.py in the source tree.
sys.dont_write_bytecode = True

SECTIONS = ["ready", "anchors", "supervisord", "stop", "status", "observe", "audit", "journal"]

# systemd 252 with dbus defaults keeps about 506 live scopes with a
# Controller (issue 11); past that, systemd drops its API bus connection
# for the rest of the boot. Runs that may cross it get a boot of their own.
CEILING_RISK = 500


def log(*args):
    print("bench:", *args, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# plan: which jobs run in which container boot


def plan(args):
    only = set(args.only.split(",")) if args.only else set(SECTIONS)
    unknown = only - set(SECTIONS)
    if unknown:
        sys.exit(f"bench: unknown section(s) {', '.join(sorted(unknown))}; sections: {', '.join(SECTIONS)}")
    if args.quick:
        n_big, n_small, stops = [20], [20], [20]
    else:
        n_big, n_small, stops = [200, 1000], [200], [100, 1000]
    jobs = []  # (section, param, fresh boot per repeat)
    if "ready" in only:
        for n in n_big:
            for mode in ("off", "group", "worker"):
                jobs.append(("ready", f"{mode}:{n}", mode == "worker" and n >= CEILING_RISK))
    if "anchors" in only:
        for n in n_big:
            jobs.append(("anchors", f"{n}", False))
            jobs.append(("raw", f"{n}", n >= CEILING_RISK))
    if "supervisord" in only:
        for n in n_big:
            jobs.append(("supervisord", f"{n}", False))
    if "stop" in only:
        for n in stops:
            jobs.append(("stop", f"{n}", False))
    if "status" in only:
        for n in n_small:
            jobs.append(("status", f"{n}", False))
    if "observe" in only:
        jobs.append(("observe", f"{max(n_big)}", False))
    if "audit" in only:
        jobs.append(("audit", "", False))
    if "journal" in only:
        jobs.append(("journal", "20000" if args.quick else "200000", False))
    boots = []
    if args.quick:
        boots.append([f"{s}={p}" for s, p, _ in jobs] + ["--repeat=1"])
    else:
        for s, p, fresh in jobs:
            if fresh:
                boots.extend([[f"{s}={p}", "--repeat=1"] for _ in range(args.repeat)])
            else:
                boots.append([f"{s}={p}", f"--repeat={args.repeat}"])
    for b in boots:
        print(" ".join(b))


# ---------------------------------------------------------------------------
# inside the container


class Ctx:
    def __init__(self, a):
        self.bin_dir = a.bin_dir
        self.bench = a.bench
        self.venv = a.venv
        self.repeat = a.repeat
        self.quick = a.quick
        self.installed = False

    def emit(self, key, value=None, fail=None, **extra):
        rec = {"key": key}
        if fail is not None:
            rec["fail"] = fail
        else:
            rec["value"] = value
        rec.update(extra)
        print("RESULT " + json.dumps(rec), flush=True)
        log(f"  {key}: {fail if fail is not None else round(value, 3) if isinstance(value, float) else value}")


def run(cmd, timeout, check=True, **kw):
    r = subprocess.run(cmd, timeout=timeout, capture_output=True, text=True, **kw)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {r.returncode}: {r.stderr.strip()[-500:]}")
    return r


def bench_json(ctx, *args, timeout=600):
    r = run([ctx.bench, *args], timeout=timeout)
    return json.loads(r.stdout.strip().splitlines()[-1])


def proc_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def main_pid(unit):
    return int(run(["systemctl", "show", "-P", "MainPID", unit], 10).stdout.strip() or 0)


def wait_units_gone(pattern, timeout=120):
    """Cleanup between runs, not timed: waits until no unit matches."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = run(["systemctl", "list-units", "--all", "--plain", "--no-legend", pattern], 30).stdout.strip()
        if not out:
            return
        time.sleep(0.2)
    log(f"warning: units {pattern} still there after {timeout}s")


# corrald as the shipped unit -------------------------------------------------

CONFIG = "/etc/corral/corral.toml"
SOCKET = "/run/corral/corrald.sock"


def install(ctx):
    if ctx.installed:
        return
    run([os.path.join(HERE, "..", "..", "packaging", "install"), "--bin-dir", ctx.bin_dir], 120)
    run(["systemctl", "daemon-reload"], 60)
    ctx.installed = True


def worker_group(name, n, scope="group", stop_mode="protocol"):
    return (
        f'[groups.{name}]\ncommand = "/usr/bin/corral-demo-worker"\n'
        f'args = ["--units", "1", "--unit-ms", "1"]\n'
        f'count = {n}\nstop_mode = "{stop_mode}"\nrestart = "never"\nscope = "{scope}"\n'
    )


def write_config(top, groups):
    os.makedirs("/etc/corral", exist_ok=True)
    with open(CONFIG, "w") as f:
        f.write(top + "\n" + groups)


def corralctl_status():
    r = run(["/usr/bin/corralctl", "--json", "status"], 30, check=False)
    for line in r.stdout.splitlines():
        obj = json.loads(line)
        if "supervisor" in obj:
            return obj["supervisor"]
    raise RuntimeError(f"corralctl status: {r.stderr.strip()}")


def start_corrald(timeout):
    """`systemctl start` returns when corrald sent READY=1 (every group
    settled: ready, stopped or failed). Returns (ms, error)."""
    run(["systemctl", "reset-failed", "corrald.service"], 30, check=False)
    t = time.monotonic()
    try:
        r = run(["systemctl", "start", "corrald.service"], timeout, check=False)
    except subprocess.TimeoutExpired:
        return None, f"no READY within {timeout}s"
    ms = (time.monotonic() - t) * 1000
    if r.returncode != 0:
        return None, f"start failed: {(r.stderr.strip().splitlines() or ['?'])[0][:200]}"
    return ms, None


def stop_corrald(timeout=300):
    t = time.monotonic()
    try:
        r = run(["systemctl", "stop", "corrald.service"], timeout, check=False)
        err = None if r.returncode == 0 else f"stop failed: {r.stderr.strip()[-200:]}"
    except subprocess.TimeoutExpired:
        run(["systemctl", "kill", "-s", "KILL", "corrald.service"], 30, check=False)
        err = f"not stopped within {timeout}s"
    ms = (time.monotonic() - t) * 1000
    run(["systemctl", "reset-failed", "corrald.service"], 30, check=False)
    wait_units_gone("corral-*")
    return ms, err


def ready_count(status):
    desired = sum(g["desired"] for g in status["groups"])
    ready = sum(g["ready"] for g in status["groups"])
    return ready, desired


# sections -------------------------------------------------------------------


def section_ready(ctx, param):
    """Time to READY of N workers, and what corrald holds right after."""
    mode, n = param.split(":")
    n = int(n)
    install(ctx)
    top = 'scopes = "off"' if mode == "off" else 'scopes = "required"'
    scope = "group" if mode == "off" else mode
    write_config(top, worker_group("w", n, scope))
    for _ in range(ctx.repeat):
        ms, err = start_corrald(180)
        try:
            status = corralctl_status()
            ready, desired = ready_count(status)
        except Exception as e:  # noqa: BLE001 - a dead corrald is a result here
            ready, desired, status = 0, n, None
            err = err or f"no status: {e}"
        if err is None and ready < desired:
            err = f"{ready}/{desired} ready"
        elif err is not None and status:
            err += f" ({ready}/{desired} ready)"
        if err:
            ctx.emit(f"ready.{mode}.{n}", fail=err)
        else:
            ctx.emit(f"ready.{mode}.{n}", ms)
        pid = main_pid("corrald.service")
        # What corrald holds is only a figure for the whole fleet.
        if pid and err is None:
            ctx.emit(f"rss.{mode}.{n}", rss_mib(pid))
            ctx.emit(f"fds.{mode}.{n}", len(os.listdir(f"/proc/{pid}/fd")) / max(ready, 1))
            if mode == "group" and n == max_n(ctx):
                lw = bench_json(ctx, "list-workers", "--socket", SOCKET, "--repeat", "5")
                ctx.emit(f"list.{n}", statistics.median(lw["ms"]), workers=lw["workers"])
                window = 2.0 if ctx.quick else 10.0
                t0 = proc_ticks(pid)
                time.sleep(window)  # the measuring window itself
                ctx.emit(f"idle_cpu.{n}", (proc_ticks(pid) - t0) / os.sysconf("SC_CLK_TCK") / window * 100)
        if status:
            socket_restart(ctx, f"{mode}.{n}", n)
        started = err is None
        ms, err = stop_corrald()
        # Stopping a corrald that never started drains nothing: no figure.
        if not started:
            ctx.emit(f"svcstop.{mode}.{n}", fail="corrald did not start its fleet")
        elif err is None:
            ctx.emit(f"svcstop.{mode}.{n}", ms)
        else:
            ctx.emit(f"svcstop.{mode}.{n}", fail=err)


def socket_restart(ctx, key, n):
    """The same start without corrald's own start-up: every worker soft
    stopped, then a start request timed from its frame to the final OK."""
    r = bench_json(ctx, "request", "--socket", SOCKET, "stop", "--target", "w")
    if r["status"] != "OK":
        ctx.emit(f"sockstart.{key}", fail=f"the stop before it answered {r['status']}: {r['message'][:120]}")
        return
    r = bench_json(ctx, "request", "--socket", SOCKET, "start", "--target", "w")
    if r["status"] == "OK" and r["succeeded"] == n:
        ctx.emit(f"sockstart.{key}", r["ms"])
    else:
        ctx.emit(f"sockstart.{key}", fail=f"{r['status']} {r.get('succeeded')}/{n} ready: {r['message'][:120]}")


def max_n(ctx):
    return 20 if ctx.quick else 1000


# What each way of watching the fleet adds to corrald's idle cost: the
# top-level keys and the group's own tables, and whether a client follows
# the events stream. Intervals are the documented defaults.
OBSERVE_MODES = {
    "off": ('usage_interval = "0"', "", False),
    "events": ('usage_interval = "0"', "", True),
    "usage": ('usage_interval = "5s"', "", False),
    "pings": ('usage_interval = "0"', '[groups.w.ping]\ninterval = "10s"\n', False),
    "tcp": ('usage_interval = "0"', '[groups.w.health.liveness]\ntcp = "127.0.0.1:{port}"\ninterval = "10s"\n', False),
    "exec": ('usage_interval = "0"', '[groups.w.health.liveness]\nexec = ["/bin/true"]\ninterval = "10s"\n', False),
    "all": (
        'usage_interval = "5s"',
        '[groups.w.ping]\ninterval = "10s"\n[groups.w.health.liveness]\ntcp = "127.0.0.1:{port}"\ninterval = "10s"\n',
        True,
    ),
}


def tcp_listener():
    """What the tcp probes connect to: accepts and closes, off corrald."""
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen(1024)

    def serve():
        while True:
            conn, _ = server.accept()
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    return server.getsockname()[1]


def follow_events():
    """A subscriber that reads everything, once corrald said subscribed."""
    p = subprocess.Popen(["/usr/bin/corralctl", "events", "--json"], stdout=subprocess.PIPE, text=True)
    first = p.stdout.readline()
    if '"subscribed"' not in first:
        p.kill()
        raise RuntimeError(f"corralctl events began with {first!r}")
    threading.Thread(target=lambda: p.stdout.read(), daemon=True).start()
    return p


def section_observe(ctx, param):
    """corrald's CPU at idle with each way of watching the fleet on (events
    followed, usage sampled, pings, probes) against all of them off, and
    what a listing costs and weighs with and without what they add."""
    n = int(param)
    install(ctx)
    port = tcp_listener()
    window = 2.0 if ctx.quick else 20.0
    for _ in range(ctx.repeat):
        for mode, (top, tables, events) in OBSERVE_MODES.items():
            write_config(f'scopes = "required"\n{top}', worker_group("w", n) + tables.format(port=port))
            _, err = start_corrald(180)
            ready = ready_count(corralctl_status())[0] if err is None else 0
            if err is None and ready < n:
                err = f"{ready}/{n} ready"
            pid = main_pid("corrald.service")
            follower = None
            try:
                if err is None:
                    follower = follow_events() if events else None
                    t0 = proc_ticks(pid)
                    time.sleep(window)  # the measuring window itself
                    ctx.emit(f"observe.cpu.{mode}.{n}", (proc_ticks(pid) - t0) / os.sysconf("SC_CLK_TCK") / window * 100)
                    if mode in ("off", "all"):
                        lw = bench_json(ctx, "list-workers", "--socket", SOCKET, "--repeat", "5")
                        ctx.emit(f"observe.list.{mode}.{n}", statistics.median(lw["ms"]), workers=lw["workers"])
                        for form, json_flag in (("table", []), ("json", ["--json"])):
                            out = run(["/usr/bin/corralctl", *json_flag, "workers"], 60).stdout
                            ctx.emit(f"observe.bytes.{form}.{mode}.{n}", len(out.encode()))
                else:
                    ctx.emit(f"observe.cpu.{mode}.{n}", fail=err)
            finally:
                if follower:
                    follower.kill()
                stop_corrald()


def section_raw(ctx, param):
    n = int(param)
    for _ in range(ctx.repeat):
        r = bench_json(ctx, "raw-scopes", "--count", str(n), "--window", "8", "--timeout-s", "90")
        if r["placed"] == n:
            ctx.emit(f"raw.{n}", r["ms"])
        else:
            ctx.emit(f"raw.{n}", fail=f"{r['placed']}/{n} placed: {json.dumps(r['errors'])[:200]}")
        wait_units_gone("bench-raw-*")


def section_anchors(ctx, param):
    n = int(param)
    worker = os.path.join(ctx.bin_dir, "corral-demo-worker")

    def scope_once(_):
        return subprocess.run(["systemd-run", "--scope", "--quiet", "true"], timeout=60, capture_output=True).returncode

    for _ in range(ctx.repeat):
        r = bench_json(ctx, "fork-ready", "--count", str(n), "--worker", worker, "--", "--units", "1", "--unit-ms", "1")
        if r["ready"] == n:
            ctx.emit(f"fork.{n}", r["ms"])
        else:
            ctx.emit(f"fork.{n}", fail=f"{r['ready']}/{n} ready")
        for par, key in ((1, "scope_serial"), (8, "scope_par8")):
            t = time.monotonic()
            with concurrent.futures.ThreadPoolExecutor(par) as pool:
                codes = list(pool.map(scope_once, range(n)))
            ms = (time.monotonic() - t) * 1000
            bad = sum(1 for c in codes if c != 0)
            ctx.emit(f"{key}.{n}", ms) if bad == 0 else ctx.emit(f"{key}.{n}", fail=f"{bad}/{n} failed")
            wait_units_gone("run-*.scope")


def section_stop(ctx, param):
    """Soft stop of N idle protocol workers at the socket; at the largest
    N also the worst status answer while they stop and start again."""
    n = int(param)
    install(ctx)
    write_config('scopes = "required"', worker_group("w", n, "group"))
    ms, err = start_corrald(180)
    if err:
        ctx.emit(f"stop.{n}", fail=f"corrald did not start: {err}")
        stop_corrald()
        return
    probe = n == max_n(ctx)
    for _ in range(ctx.repeat):
        extra = ["--probe"] if probe else []
        r = bench_json(ctx, "request", "--socket", SOCKET, *extra, "stop", "--target", "w")
        if r["status"] == "OK" and r["succeeded"] == n:
            ctx.emit(f"stop.{n}", r["ms"], first_progress_ms=r["first_progress_ms"])
        else:
            ctx.emit(f"stop.{n}", fail=f"{r['status']} {r.get('succeeded')}/{n}: {r['message'][:120]}")
        if probe:
            ctx.emit(f"probe.stop.{n}", r["probe"]["max_us"] / 1000, requests=r["probe"]["requests"])
        r = bench_json(ctx, "request", "--socket", SOCKET, *extra, "start", "--target", "w")
        if r["status"] != "OK":
            ctx.emit(f"start.{n}", fail=f"{r['status']}: {r['message'][:120]}")
        else:
            ctx.emit(f"start.{n}", r["ms"])
        if probe:
            ctx.emit(f"probe.start.{n}", r["probe"]["max_us"] / 1000, requests=r["probe"]["requests"])
    stop_corrald()


def section_status(ctx, param):
    n = int(param)
    install(ctx)
    write_config('scopes = "required"', worker_group("w", n, "group"))
    ms, err = start_corrald(180)
    if err:
        for c in (1, 64):
            ctx.emit(f"status.{c}.rps", fail=f"corrald did not start: {err}")
        stop_corrald()
        return
    seconds = "1" if ctx.quick else "5"
    for _ in range(ctx.repeat):
        for c in (1, 64):
            r = bench_json(ctx, "status-load", "--socket", SOCKET, "--clients", str(c), "--seconds", seconds)
            ctx.emit(f"status.{c}.rps", r["per_s"])
            ctx.emit(f"status.{c}.p50", r["p50_us"] / 1000)
            ctx.emit(f"status.{c}.p99", r["p99_us"] / 1000)
    stop_corrald()


# supervisord ----------------------------------------------------------------


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("localhost", timeout=120)
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(120)
        self.sock.connect(self.path)


class UnixTransport(xmlrpc.client.Transport):
    def __init__(self, path):
        super().__init__()
        self.path = path

    def make_connection(self, host):
        return UnixHTTPConnection(self.path)


def rpc(path):
    return xmlrpc.client.ServerProxy("http://localhost/RPC2", transport=UnixTransport(path))


def section_supervisord(ctx, param):
    n = int(param)
    d = "/run/bench-supervisord"
    os.makedirs(f"{d}/logs", exist_ok=True)
    sock = f"{d}/supervisor.sock"
    conf = f"{d}/supervisord.conf"
    with open(conf, "w") as f:
        f.write(
            f"[unix_http_server]\nfile={sock}\n"
            f"[supervisord]\nnodaemon=true\nlogfile={d}/supervisord.log\npidfile={d}/pid\n"
            f"childlogdir={d}/logs\nminfds={4 * n + 64}\n"
            "[rpcinterface:supervisor]\nsupervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n"
            f"[program:p]\ncommand=sleep infinity\nnumprocs={n}\nprocess_name=%(program_name)s_%(process_num)d\n"
            "autostart=false\nstartsecs=0\nstopsignal=TERM\n"
        )
    seconds = 1.0 if ctx.quick else 5.0
    for _ in range(ctx.repeat):
        run(["systemctl", "reset-failed", "bench-supervisord.service"], 30, check=False)
        run(["systemd-run", "--unit=bench-supervisord", "-p", "LimitNOFILE=65536", "--quiet",
             os.path.join(ctx.venv, "bin", "supervisord"), "-n", "-c", conf], 60)
        deadline = time.monotonic() + 60
        server = rpc(sock)
        while True:  # setup, not timed: supervisord has no readiness signal
            try:
                if server.supervisor.getState()["statename"] == "RUNNING":
                    break
            except (OSError, xmlrpc.client.Error):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("supervisord did not come up in 60s")
            time.sleep(0.05)
        t = time.monotonic()
        server.supervisor.startAllProcesses(True)
        ms = (time.monotonic() - t) * 1000
        running = sum(1 for p in server.supervisor.getAllProcessInfo() if p["statename"] == "RUNNING")
        ctx.emit(f"sup.running.{n}", ms) if running == n else ctx.emit(f"sup.running.{n}", fail=f"{running}/{n} RUNNING")
        ctx.emit(f"sup.rss.{n}", rss_mib(main_pid("bench-supervisord.service")))
        for clients in (1, 64):
            lat, elapsed = rpc_load(sock, clients, seconds)
            lat.sort()
            ctx.emit(f"sup.rpc.{clients}.{n}.rps", len(lat) / elapsed)
            ctx.emit(f"sup.rpc.{clients}.{n}.p50", quantile(lat, 0.5))
            ctx.emit(f"sup.rpc.{clients}.{n}.p99", quantile(lat, 0.99))
        t = time.monotonic()
        server.supervisor.stopAllProcesses(True)
        ctx.emit(f"sup.stopall.{n}", (time.monotonic() - t) * 1000)
        run(["systemctl", "stop", "bench-supervisord.service"], 120, check=False)


def rpc_load(sock, clients, seconds):
    lat = []
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client():
        server = rpc(sock)
        mine = []
        while time.monotonic() < deadline:
            t = time.monotonic()
            server.supervisor.getAllProcessInfo()
            mine.append((time.monotonic() - t) * 1000)
        with lock:
            lat.extend(mine)

    t = time.monotonic()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return lat, time.monotonic() - t


def quantile(sorted_values, q):
    if not sorted_values:
        return float("nan")
    rank = min(max(int(-(-q * len(sorted_values) // 1)), 1), len(sorted_values))
    return sorted_values[rank - 1]


# worker output into journald -------------------------------------------------


def journal_cursor():
    """The cursor of the journal's last entry (None when it is empty).
    Readers start *at* it (--cursor), not after it: journalctl 252 with
    --after-cursor and a match skips the first matching entry."""
    out = run(["journalctl", "-n", "1", "--show-cursor", "-q"], 30, check=False).stdout
    for line in out.splitlines():
        if line.startswith("-- cursor: "):
            return line[len("-- cursor: "):]
    return None


def since(cursor):
    return [f"--cursor={cursor}"] if cursor else []


def follow_until(cursor, sentinel):
    """Starts following the journal for an entry whose MESSAGE is
    `sentinel` (journalctl -f wakes on the journal's inotify); the event is
    set when it came."""
    cmd = ["journalctl", "-f", "-q", "-o", "cat", f"MESSAGE={sentinel}", *since(cursor)]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    got = threading.Event()

    def reader():
        for line in p.stdout:
            if line.strip() == sentinel:
                got.set()
                return

    threading.Thread(target=reader, daemon=True).start()
    return p, got


def count_entries(cursor, identifier, sentinel):
    """Our lines of this run in the journal: the numbered ones and the sentinel."""
    out = run(["journalctl", "-q", "-o", "cat", f"SYSLOG_IDENTIFIER={identifier}", *since(cursor)], 300, check=False)
    return sum(1 for line in out.stdout.splitlines() if line.startswith("bench line ") or line == sentinel)


def section_journal(ctx, param):
    lines = int(param)
    install(ctx)
    script = f"seq -f 'bench line %g' {lines}; echo \"$BENCH_SENTINEL\""
    write_config(
        'scopes = "required"',
        '[groups.out]\ncommand = "/bin/sh"\n'
        f'args = ["-c", "{script.replace(chr(34), chr(92) + chr(34))}"]\n'
        'count = 0\nrestart = "never"\nstop_mode = "signal"\nscope = "group"\n'
        'environment = { BENCH_SENTINEL = "x" }\n',
    )
    # A worker's own stream is rate-limited as its scope, which cannot
    # carry LogRateLimit settings: journald's default (10,000 lines in
    # 30 s) would drop most of the burst. No limit for any of the three.
    os.makedirs("/etc/systemd/journald.conf.d", exist_ok=True)
    with open("/etc/systemd/journald.conf.d/corral-bench.conf", "w") as f:
        f.write("[Journal]\nRateLimitIntervalSec=0\n")
    run(["systemctl", "restart", "systemd-journald.service"], 60)
    journald = main_pid("systemd-journald.service")
    for i in range(ctx.repeat):
        for way in ("corrald", "stream", "cat"):
            sentinel = f"corral-bench-sentinel-{way}-{i}-{time.time_ns()}"
            cursor = journal_cursor()
            if way in ("corrald", "stream"):
                with open(CONFIG) as f:
                    text = f.read()
                text = re.sub(r'BENCH_SENTINEL = "[^"]*"', f'BENCH_SENTINEL = "{sentinel}"', text)
                text = re.sub(r'\noutput = "[a-z]+"', "", text)
                if way == "stream":
                    text = text.replace('scope = "group"\n', 'scope = "group"\noutput = "journal"\n')
                write_config("", text)
                ms, err = start_corrald(120)
                if err:
                    ctx.emit(f"journal.{way}.{lines}", fail=err)
                    stop_corrald()
                    continue
                cmd = ["/usr/bin/corralctl", "scale", "out", "1"]
                # With output = "journal" the identifier is the worker's id.
                ident = "out" if way == "corrald" else "out-1"
            else:
                cmd = ["systemd-run", "--quiet", "--collect", "-p", "LogRateLimitIntervalSec=10s",
                       "-p", "LogRateLimitBurst=1000000", f"--setenv=BENCH_SENTINEL={sentinel}",
                       "systemd-cat", "-t", "benchcat", "/bin/sh", "-c", script]
                ident = "benchcat"
            follower, got = follow_until(cursor, sentinel)
            cpu0 = proc_ticks(journald)
            t = time.monotonic()
            client = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            came = got.wait(300)
            ms = (time.monotonic() - t) * 1000
            cpu = (proc_ticks(journald) - cpu0) / os.sysconf("SC_CLK_TCK")
            follower.kill()
            follower.wait()
            try:
                client.wait(60)
            except subprocess.TimeoutExpired:
                client.kill()
                client.wait()
            if came:
                ctx.emit(f"journal.{way}.{lines}", ms)
                ctx.emit(f"journald_cpu.{way}.{lines}", cpu * 1000)
                have = count_entries(cursor, ident, sentinel)
                ctx.emit(f"journal_missing.{way}.{lines}", lines + 1 - have)
            else:
                ctx.emit(f"journal.{way}.{lines}", fail="sentinel not in the journal within 300s")
            if way in ("corrald", "stream"):
                stop_corrald()


def inside(a):
    ctx = Ctx(a)
    rc = 0
    for job in a.jobs:
        section, _, param = job.partition("=")
        log(f"--- {section} {param} (x{ctx.repeat})")
        try:
            if section == "audit":
                import audit_section

                audit_section.run(ctx, param)
            else:
                globals()[f"section_{section}"](ctx, param)
        except Exception as e:  # noqa: BLE001 - one broken section must not hide the others
            log(f"!!! section {section} {param} broke: {type(e).__name__}: {e}")
            print("RESULT " + json.dumps({"key": f"broken.{section}.{param}", "fail": f"{type(e).__name__}: {e}"}))
            rc = 1
            run(["systemctl", "stop", "corrald.service", "bench-supervisord.service"], 300, check=False)
    # The driver ends the boot on this line: past the scope ceiling systemd
    # has lost its bus, and the `systemd-run --wait` that started us would
    # never hear that we ended.
    print(f"BENCH-DONE {rc}", flush=True)
    return rc


# ---------------------------------------------------------------------------
# report

from report import report  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    pp = sub.add_parser("plan")
    pp.add_argument("--quick", action="store_true")
    pp.add_argument("--only", default="")
    pp.add_argument("--repeat", type=int, default=3)
    pi = sub.add_parser("inside")
    pi.add_argument("--bin-dir", required=True)
    pi.add_argument("--bench", required=True)
    pi.add_argument("--venv", required=True)
    pi.add_argument("--quick", action="store_true")
    pi.add_argument("--repeat", type=int, default=1)
    pi.add_argument("jobs", nargs="+")
    pr = sub.add_parser("report")
    pr.add_argument("results")
    pr.add_argument("out")
    pr.add_argument("--meta", required=True)
    a = p.parse_args()
    if a.cmd == "plan":
        plan(a)
    elif a.cmd == "inside":
        sys.exit(inside(a))
    else:
        report(a.results, a.out, a.meta)


if __name__ == "__main__":
    main()

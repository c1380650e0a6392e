#!/usr/bin/env python3
"""Why journald spends twice the CPU on corrald's worker lines.

Run inside the booted container, as root:
    tests/systemd/nspawn-run -- python3 tests/bench/journal_fields.py [LINES]

Sends LINES entries to journald in each of several ways and prints
journald's CPU per entry (utime + stime of systemd-journald from /proc),
min / median of 3: systemd-cat (the stream protocol), and native-protocol
datagrams with corrald's full set of fields, without OBJECT_PID, with
OBJECT_PID but no corral fields, and with the least a line needs. If the
cost were in the fields, the smaller entries would approach systemd-cat;
they do not: it is per datagram.
"""
import os
import socket
import statistics
import subprocess
import sys

LINES = int(sys.argv[1]) if len(sys.argv) > 1 else 50000


def journald_cpu():
    pid = subprocess.check_output(["systemctl", "show", "-P", "MainPID", "systemd-journald"]).strip().decode()
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def native(extra):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.connect("/run/systemd/journal/socket")
    before = journald_cpu()
    for i in range(LINES):
        s.send(f"PRIORITY=6\nMESSAGE=line {i}\n{extra}".encode())
    subprocess.run(["journalctl", "--sync"], check=True)
    return journald_cpu() - before


def stream():
    before = journald_cpu()
    cat = subprocess.Popen(["systemd-cat", "-t", "web"], stdin=subprocess.PIPE)
    cat.stdin.write("".join(f"line {i}\n" for i in range(LINES)).encode())
    cat.stdin.close()
    cat.wait()
    subprocess.run(["journalctl", "--sync"], check=True)
    return journald_cpu() - before


def main():
    os.makedirs("/etc/systemd/journald.conf.d", exist_ok=True)
    with open("/etc/systemd/journald.conf.d/corral-bench.conf", "w") as f:
        f.write("[Journal]\nRateLimitIntervalSec=0\n")
    subprocess.run(["systemctl", "restart", "systemd-journald"], check=True)
    # A process of its own scope to be the lines' OBJECT_PID, as a worker is.
    obj = subprocess.Popen(["systemd-run", "--scope", "--quiet", "--unit=corral-bench-object", "sleep", "600"])
    unit = ""
    while unit != "active":
        unit = subprocess.run(["systemctl", "is-active", "corral-bench-object.scope"], capture_output=True, text=True).stdout.strip()
    pid = obj.pid
    ways = [
        ("systemd-cat (stream protocol)", None),
        ("native, corrald's fields", f"SYSLOG_IDENTIFIER=web\nSYSLOG_PID={pid}\nOBJECT_PID={pid}\n"
                                     "CORRAL_GROUP=web\nCORRAL_WORKER_ID=web-1\nCORRAL_STREAM=stdout\n"),
        ("native, no OBJECT_PID", f"SYSLOG_IDENTIFIER=web\nSYSLOG_PID={pid}\nCORRAL_GROUP=web\n"
                                  "CORRAL_WORKER_ID=web-1\nCORRAL_STREAM=stdout\n"),
        ("native, OBJECT_PID, no corral fields", f"SYSLOG_IDENTIFIER=web\nSYSLOG_PID={pid}\nOBJECT_PID={pid}\n"),
        ("native, identifier only", "SYSLOG_IDENTIFIER=web\n"),
    ]
    runs = {name: [] for name, _ in ways}
    for _ in range(3):
        for name, extra in ways:
            runs[name].append(stream() if extra is None else native(extra))
    print(f"journald CPU per entry, {LINES} entries, min / median of 3")
    for name, cpu in runs.items():
        print(f"  {name:40s} {min(cpu) / LINES * 1e6:6.1f} / {statistics.median(cpu) / LINES * 1e6:6.1f} us")
    obj.terminate()


main()

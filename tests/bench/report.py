"""The benchmark suite's table: min / median / max of every figure, its
anchor measured in the same run, the ratio of the medians, and the goal of
issue 11 next to it. The goals are information: nothing here fails a run
for being slow."""

import json
import re
import statistics


def ms(v):
    return f"{v / 1000:.2f} s" if v >= 10000 else f"{v:.0f} ms" if v >= 100 else f"{v:.1f} ms" if v >= 10 else f"{v:.2f} ms"


def num(v):
    return f"{v:,.0f}"


def mib(v):
    return f"{v:.1f} MiB"


def pct(v):
    return f"{v:.2f} %"


def kib(v):
    return f"{v / 1024:.0f} KiB"


def plain(v):
    return f"{v:.1f}"


def le(limit):
    return lambda v, r: v <= limit


def ge(limit):
    return lambda v, r: v >= limit


def ratio_le(limit):
    return lambda v, r: None if r is None else r <= limit


def ratio_ge(limit):
    return lambda v, r: None if r is None else r >= limit


def watching_rows(n):
    """The observe section: each way of watching the fleet against none."""
    s = f"Watching the fleet, N = {n} idle workers (one group scope; default intervals; tests/bench/bench.py OBSERVE_MODES)"
    off = f"observe.cpu.off.{n}"
    return [
        (s, "corrald idle CPU, nothing watched (usage_interval = 0, no pings, no probes, no subscriber)", off, pct, None, "", None),
        (s, "... one `corralctl events --json` following", f"observe.cpu.events.{n}", pct, off, "", None),
        (s, "... usage sampled every 5 s (the default)", f"observe.cpu.usage.{n}", pct, off, "", None),
        (s, "... pings every 10 s", f"observe.cpu.pings.{n}", pct, off, "", None),
        (s, "... a tcp liveness probe every 10 s", f"observe.cpu.tcp.{n}", pct, off, "", None),
        (s, "... an exec liveness probe (/bin/true) every 10 s", f"observe.cpu.exec.{n}", pct, off, "", None),
        (s, "... events, usage, pings and the tcp probe together", f"observe.cpu.all.{n}", pct, off, "", None),
        (s, "ListWorkers, nothing watched (median of 5)", f"observe.list.off.{n}", ms, None, "", None),
        (s, "ListWorkers, usage and health in it (median of 5)", f"observe.list.all.{n}", ms, f"observe.list.off.{n}", "", None),
        (s, "`corralctl workers`, nothing watched", f"observe.bytes.table.off.{n}", kib, None, "", None),
        (s, "`corralctl workers`, usage and health in it", f"observe.bytes.table.all.{n}", kib, f"observe.bytes.table.off.{n}", "", None),
        (s, "`corralctl --json workers`, nothing watched", f"observe.bytes.json.off.{n}", kib, None, "", None),
        (s, "`corralctl --json workers`, usage and health in it", f"observe.bytes.json.all.{n}", kib, f"observe.bytes.json.off.{n}", "", None),
    ]


def rows_for(ns, stops, lines, watched):
    """(section, label, key, format, anchor key, goal text, goal check)"""
    rows = []
    for n in ns:
        s = f"Time to READY, N = {n}"
        rows += [
            (s, f"corrald, per-worker scopes", f"ready.worker.{n}", ms, f"raw.{n}", "≤ 1.25× raw StartTransientUnit", ratio_le(1.25)),
            (s, f"corrald, one group scope", f"ready.group.{n}", ms, f"sup.running.{n}", "(ratio to supervisord)", None),
            (s, f"corrald, scopes off", f"ready.off.{n}", ms, f"fork.{n}", "≤ 1.5× fork/exec harness", ratio_le(1.5)),
            (s, "corrald, per-worker scopes: start request at the socket", f"sockstart.worker.{n}", ms, f"raw.{n}", "≤ 1.25× raw StartTransientUnit", ratio_le(1.25)),
            (s, "corrald, one group scope: start request at the socket", f"sockstart.group.{n}", ms, f"sup.running.{n}", "(ratio to supervisord)", None),
            (s, "corrald, scopes off: start request at the socket", f"sockstart.off.{n}", ms, f"fork.{n}", "≤ 1.5× fork/exec harness", ratio_le(1.5)),
            (s, "anchor: raw StartTransientUnit, 8 in flight on one connection", f"raw.{n}", ms, None, "", None),
            (s, "anchor: fork/exec N demo workers, collect READY", f"fork.{n}", ms, None, "", None),
            (s, "anchor: `systemd-run --scope true`, serial", f"scope_serial.{n}", ms, f"raw.{n}", "(ratio to raw)", None),
            (s, "anchor: `systemd-run --scope true`, 8 in parallel", f"scope_par8.{n}", ms, f"raw.{n}", "(ratio to raw)", None),
            (s, "anchor: supervisord 4, startAllProcesses(wait) to all RUNNING", f"sup.running.{n}", ms, None, "", None),
        ]
    for n in ns:
        s = f"Memory and descriptors, N = {n} (right after READY)"
        rss_goal = {200: 10, 1000: 24}.get(n)
        g = (f"≤ {rss_goal} MiB", le(rss_goal)) if rss_goal else ("", None)
        rows += [
            (s, "corrald RSS, per-worker scopes", f"rss.worker.{n}", mib, f"sup.rss.{n}", *g),
            (s, "corrald RSS, one group scope", f"rss.group.{n}", mib, f"sup.rss.{n}", *g),
            (s, "corrald RSS, scopes off", f"rss.off.{n}", mib, f"sup.rss.{n}", *g),
            (s, "anchor: supervisord RSS", f"sup.rss.{n}", mib, None, "", None),
            (s, "corrald descriptors per worker, per-worker scopes", f"fds.worker.{n}", plain, None, "", None),
            (s, "corrald descriptors per worker, one group scope", f"fds.group.{n}", plain, None, "", None),
            (s, "corrald descriptors per worker, scopes off", f"fds.off.{n}", plain, None, "", None),
        ]
    n = max(ns)
    s = f"Idle and listing, N = {n} (one group scope)"
    rows += [
        (s, "corrald idle CPU over a fixed window", f"idle_cpu.{n}", pct, None, "< 0.5 % of a core", lambda v, r: v < 0.5),
        (s, "ListWorkers, all parts to the final OK (median of 5)", f"list.{n}", ms, None, "< 20 ms", lambda v, r: v < 20),
    ]
    for n in watched:
        rows += watching_rows(n)
    for n in stops:
        s = f"Stop and start at the socket, N = {n} idle protocol workers (request frame to final OK)"
        goal = {100: 20, 1000: 100}.get(n)
        rows += [
            (s, "soft stop", f"stop.{n}", ms, None, *((f"≤ {goal} ms", le(goal)) if goal else ("", None))),
            (s, "start again", f"start.{n}", ms, None, "", None),
        ]
    n = max(stops)
    s = f"Status while {n} workers stop and start (one client looping status)"
    rows += [
        (s, "worst status answer during the soft stop", f"probe.stop.{n}", ms, None, "≤ 10 ms", le(10)),
        (s, "worst status answer during the start", f"probe.start.{n}", ms, None, "≤ 10 ms", le(10)),
    ]
    for n in ns:
        s = f"Stopping everything, N = {n}"
        rows += [
            (s, "`systemctl stop corrald` (drain), one group scope", f"svcstop.group.{n}", ms, f"sup.stopall.{n}", "(ratio to supervisord)", None),
            (s, "`systemctl stop corrald` (drain), per-worker scopes", f"svcstop.worker.{n}", ms, f"sup.stopall.{n}", "(ratio to supervisord)", None),
            (s, "anchor: supervisord stopAllProcesses(wait)", f"sup.stopall.{n}", ms, None, "", None),
        ]
    small = min(ns)
    s = f"Status round trip, corrald supervising {small} workers (anchor: supervisord getAllProcessInfo, {small} programs)"
    for c in (1, 64):
        rows += [
            (s, f"{c} client(s): requests/s", f"status.{c}.rps", num, f"sup.rpc.{c}.{small}.rps",
             *(("≥ 30,000/s", ge(30000)) if c == 64 else ("", None))),
            (s, f"{c} client(s): p50", f"status.{c}.p50", ms, f"sup.rpc.{c}.{small}.p50", "", None),
            (s, f"{c} client(s): p99", f"status.{c}.p99", ms, f"sup.rpc.{c}.{small}.p99",
             *(("< 0.5 ms", lambda v, r: v < 0.5) if c == 64 else ("", None))),
        ]
    for c in (1, 64):
        rows += [
            (s, f"anchor: supervisord, {c} client(s): requests/s", f"sup.rpc.{c}.{small}.rps", num, None, "", None),
            (s, f"anchor: supervisord, {c} client(s): p50", f"sup.rpc.{c}.{small}.p50", ms, None, "", None),
            (s, f"anchor: supervisord, {c} client(s): p99", f"sup.rpc.{c}.{small}.p99", ms, None, "", None),
        ]
    s = "Audited mutations per second (a no-op start of a ready worker; tests/bench/audit_section.py)"
    for c in (1, 16):
        rows += [
            (s, f"audit_sync = true, {c} client(s)", f"audit.sync.{c}", num, f"audit.off.{c}", "≥ 5,000/s", ge(5000)),
            (s, f"files, no sync, {c} client(s)", f"audit.nosync.{c}", num, f"audit.off.{c}", "≥ 0.9× no audit", ratio_ge(0.9)),
            (s, f"files and journal, no sync, {c} client(s)", f"audit.journal.{c}", num, f"audit.off.{c}", "(ratio to no audit)", None),
            (s, f"audit records the journal missed, {c} client(s)", f"audit_journal_missed.{c}", num, None, "0", le(0)),
            (s, f"anchor: no audit, {c} client(s)", f"audit.off.{c}", num, None, "", None),
        ]
    for n in lines:
        s = f"Worker output into journald, {n:,} lines (start until the sentinel line is in the journal)"
        rows += [
            (s, "through corrald", f"journal.corrald.{n}", ms, f"journal.cat.{n}", "≤ 1.25× (rate ≥ 80 % of systemd-cat)", ratio_le(1.25)),
            (s, 'through the workers\' own streams (`output = "journal"`)', f"journal.stream.{n}", ms, f"journal.cat.{n}", "≤ 1.25× (rate ≥ 80 % of systemd-cat)", ratio_le(1.25)),
            (s, "anchor: through `systemd-cat`", f"journal.cat.{n}", ms, None, "", None),
            (s, "journald CPU, corrald's lines", f"journald_cpu.corrald.{n}", ms, f"journald_cpu.cat.{n}", "(ratio to systemd-cat)", None),
            (s, "journald CPU, the workers' own streams", f"journald_cpu.stream.{n}", ms, f"journald_cpu.cat.{n}", "(ratio to systemd-cat)", None),
            (s, "journald CPU, systemd-cat's lines", f"journald_cpu.cat.{n}", ms, None, "", None),
            (s, "lines missing in the journal, corrald", f"journal_missing.corrald.{n}", num, None, "0", le(0)),
            (s, "lines missing in the journal, the workers' own streams", f"journal_missing.stream.{n}", num, None, "0", le(0)),
            (s, "lines missing in the journal, systemd-cat", f"journal_missing.cat.{n}", num, None, "", None),
        ]
    return rows


def cell_text(text, limit=160):
    """A failure as one table cell: one line, no column bar, bounded."""
    text = " ".join(text.split()).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def load(path):
    samples, fails = {}, {}
    with open(path) as f:
        for line in f:
            if not line.startswith("RESULT "):
                continue
            rec = json.loads(line[len("RESULT "):])
            if "fail" in rec:
                fails.setdefault(rec["key"], []).append(rec["fail"])
            elif rec.get("value") is not None:
                samples.setdefault(rec["key"], []).append(float(rec["value"]))
    return samples, fails


def sizes(keys, pattern):
    return sorted({int(m.group(1)) for k in keys if (m := re.fullmatch(pattern, k))})


def report(results, out, meta_path):
    samples, fails = load(results)
    keys = set(samples) | set(fails)
    ns = sizes(keys, r"(?:ready\.\w+|raw|fork|sup\.running)\.(\d+)") or [20]
    stops = sizes(keys, r"stop\.(\d+)") or [20]
    lines = sizes(keys, r"journal\.\w+\.(\d+)") or [20000]
    watched = sizes(keys, r"observe\.cpu\.\w+\.(\d+)")
    meta = {}
    with open(meta_path) as f:
        for line in f:
            k, _, v = line.rstrip("\n").partition("=")
            meta[k] = v

    med = {k: statistics.median(v) for k, v in samples.items()}
    out_lines = [
        "# Benchmarks",
        "",
        f"Written by `tests/bench/run{meta.get('args', '')}` on {meta.get('date', '?')} at commit "
        f"`{meta.get('commit', '?')}`. Every figure is measured inside a freshly booted systemd "
        f"{meta.get('systemd', '?')} container (tests/systemd/nspawn-run), the anchors in the same run, "
        f"each repeated {meta.get('repeat', '?')}×. Cells are min / **median** / max; the ratio is of the medians "
        "(figure / anchor). The goals are issue 11's, shown as information: the suite's exit status "
        "never depends on a timing. How each figure is taken: tests/bench/README.md.",
        "",
        f"- machine: {meta.get('nproc', '?')} CPUs ({meta.get('cpu', '?')}), {meta.get('mem', '?')} memory, "
        f"kernel {meta.get('kernel', '?')}",
        f"- load average before: {meta.get('load_before', '?')}; after: {meta.get('load_after', '?')}",
        f"- wall time of the run: {meta.get('wall', '?')}",
        "",
    ]
    current = None
    for section, label, key, fmt, anchor, goal, check in rows_for(ns, stops, lines, watched):
        if key not in keys:
            continue
        if section != current:
            out_lines += ["", f"## {section}", "", "| figure | min / median / max | anchor (median) | ratio | goal | meets |",
                          "|---|---|---|---|---|---|"]
            current = section
        vals = sorted(samples.get(key, []))
        cell = f"{fmt(vals[0])} / **{fmt(med[key])}** / {fmt(vals[-1])}" if vals else "—"
        if key in fails:
            why = "; ".join(sorted({cell_text(f) for f in fails[key]}))
            cell += f"; {len(fails[key])} of {len(vals) + len(fails[key])} failed: {why}"
        a = med.get(anchor) if anchor else None
        ratio = med[key] / a if vals and a else None
        acell = fmt(a) if a is not None else ("—" if not anchor else "failed" if anchor in fails else "—")
        rcell = f"{ratio:.2f}×" if ratio is not None else ""
        meets = ""
        if check is not None:
            verdict = check(med[key], ratio) if vals else False
            meets = "" if verdict is None else "yes" if verdict and key not in fails else "no"
        out_lines.append(f"| {label} | {cell} | {acell} | {rcell} | {goal} | {meets} |")
    broken = [k for k in sorted(fails) if k.startswith("broken.")]
    if broken:
        out_lines += ["", "## Sections that broke", ""]
        out_lines += [f"- `{k}`: {'; '.join(fails[k])}" for k in broken]
    text = "\n".join(out_lines) + "\n"
    with open(out, "w") as f:
        f.write(text)
    print(text)

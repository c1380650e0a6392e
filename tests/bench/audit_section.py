"""The audit section of the benchmark suite: audited mutations per second.

The hook: bench.py calls run(ctx, param) inside the container, and the
section reports through ctx.emit(key, value) or ctx.emit(key, fail=why)
under the keys report.py knows: audit.<mode>.<clients> in mutations/s,
with mode sync (audit_sync = true), nosync (files, no sync), journal (files
and the journal sink, no sync; also audit_journal_missed.<clients>) and
off (no audit at all). A better measuring program replaces this file
and keeps those keys.
"""

import bench

MODES = {
    "sync": 'audit_logs_target = "/var/log/corral/audit.log"\n'
    'audit_logs_json_target = "/var/log/corral/audit.jsonl"\naudit_journal = false\naudit_sync = true',
    "nosync": 'audit_logs_target = "/var/log/corral/audit.log"\n'
    'audit_logs_json_target = "/var/log/corral/audit.jsonl"\naudit_journal = false\naudit_sync = false',
    "journal": 'audit_logs_target = "/var/log/corral/audit.log"\n'
    'audit_logs_json_target = "/var/log/corral/audit.jsonl"\naudit_journal = true\naudit_sync = false',
    # No target and no journal: corrald writes no audit record.
    "off": 'audit_journal = false',
}


def run(ctx, _param):
    bench.install(ctx)
    seconds = "1" if ctx.quick else "3"
    for mode, top in MODES.items():
        bench.write_config('scopes = "required"\n' + top, bench.worker_group("w", 2, "group"))
        ms, err = bench.start_corrald(120)
        if err:
            for clients in (1, 16):
                ctx.emit(f"audit.{mode}.{clients}", fail=f"corrald did not start: {err}")
            bench.stop_corrald()
            continue
        for _ in range(ctx.repeat):
            for clients in (1, 16):
                before = bench.corralctl_status()["audit_journal_missed"]
                r = bench.bench_json(ctx, "mutations", "--socket", bench.SOCKET, "--target", "w-1",
                                     "--clients", str(clients), "--seconds", seconds)
                ctx.emit(f"audit.{mode}.{clients}", r["per_s"])
                if mode == "journal":
                    missed = bench.corralctl_status()["audit_journal_missed"] - before
                    ctx.emit(f"audit_journal_missed.{clients}", missed)
        bench.stop_corrald()

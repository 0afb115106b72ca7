"""bench/outage's program (run it through bench/outage, which starts the databases).

For each backend (PostgreSQL, MariaDB) and case (a missing unix socket that appears, a refused
port that starts listening, an unresolvable host that stays so), one h2o-db (num-threads 2, the
db_script handler) is loaded with wrk for DURATION seconds; at about half of it the database is
made reachable. Measured: the answers (wrk's non-2xx count, and every status from the access log,
before and after the database became reachable), req/s, the time from "reachable" to the first 200
and to steady 200s (a separate probe every 10 ms, a new connection each time), whether the server
survived, its RSS and fds at the end, and the connections the database sees from it.
"""
import argparse
import http.client
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (AccessLog, Children, Server, fmt_codes, fmt_ms, free_port, install_signal_handlers, listening,
                    log, mysql_connections, mysql_user_of, parse_wrk, pg_connections, port_of)

HERE = os.path.dirname(os.path.abspath(__file__))
BODY = "SENDERROR\nSQL SELECT 1"


class Probe(threading.Thread):
    """POSTs BODY every 10 ms on a new connection; records (epoch s of the answer, status or 0)."""

    def __init__(self, port, until):
        super().__init__(daemon=True)
        self.port, self.until, self.results, self.stop_flag = port, until, [], False

    def run(self):
        nxt = time.monotonic()
        while not self.stop_flag and time.monotonic() < self.until:
            status = 0
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                c.request("POST", "/s", body=BODY, headers={"Connection": "close"})
                r = c.getresponse()
                r.read()
                status = r.status
                c.close()
            except (OSError, http.client.HTTPException):
                pass
            self.results.append((time.time(), status))
            nxt += 0.01
            now = time.monotonic()
            if nxt > now:
                time.sleep(nxt - now)
            else:
                nxt = now


def make_cases(env, work):
    pg_port, my_port = port_of(env["H2O_DB_TEST_PG"]), port_of(env["H2O_DB_TEST_MYSQL"])
    my_url = env["H2O_DB_TEST_MYSQL"]
    my_cred = my_url[:my_url.rindex("@")]  # mysql://user:pass
    cases = []

    def add(backend, name, url, up=None):
        cases.append({"backend": backend, "case": name, "url": url, "up": up})

    # (a) a unix socket that is missing, then appears (a symbolic link to the server's socket)
    d = tempfile.mkdtemp(prefix="pg-sock-", dir=work)
    link = os.path.join(d, ".s.PGSQL.%d" % pg_port)
    real = os.path.join(env["H2O_DB_TEST_PG_SOCKET_DIR"], ".s.PGSQL.%d" % pg_port)
    add("PostgreSQL", "missing unix socket → appears", "postgresql:///postgres?host=%s&port=%d&user=postgres" % (d, pg_port),
        up=("symlink", real, link))
    d = tempfile.mkdtemp(prefix="my-sock-", dir=work)
    link = os.path.join(d, "mysqld.sock")
    add("MariaDB", "missing unix socket → appears", "%s@localhost/h2o_test?unix_socket=%s" % (my_cred, link),
        up=("symlink", env["H2O_DB_TEST_MYSQL_SOCKET"], link))
    # (b) a refused port, then the server starts listening there: the restartable PostgreSQL
    # cluster, MariaDB, stopped before the case and started at half of it (no forwarder in the
    # way: socat relaying loopback TCP stalls for seconds on this machine, see docs/benchmarks.md)
    add("PostgreSQL", "refused port → listens", env["H2O_DB_TEST_PG_RESTARTABLE"], up=("start", "PostgreSQL"))
    add("MariaDB", "refused port → listens", my_url, up=("start", "MariaDB"))
    # (c) a host name that does not resolve (stays down)
    add("PostgreSQL", "unresolvable host (stays down)", "postgresql://postgres@no-such-host.invalid/postgres")
    add("MariaDB", "unresolvable host (stays down)", "%s@no-such-host.invalid/h2o_test" % my_cred)
    order = {"PostgreSQL": 0, "MariaDB": 1}
    cases.sort(key=lambda c: order[c["backend"]])
    return cases


def pg_ctl(env, *a):
    return ["runuser", "-u", "postgres", "--", env["H2O_DB_TEST_PG_CTL"], "-D", env["H2O_DB_TEST_PGDATA"]] + list(a)


def stop_server(env, backend):
    argv = pg_ctl(env, "-m", "fast", "-w", "stop") if backend == "PostgreSQL" else [env["H2O_DB_TEST_MYSQL_CTL"], "stop"]
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, timeout=120)


def pg_ready(env):
    """Whether the postmaster says it accepts connections (postmaster.pid's status line)."""
    try:
        with open(os.path.join(env["H2O_DB_TEST_PGDATA"], "postmaster.pid")) as f:
            lines = f.read().split("\n")
        return len(lines) > 7 and lines[7].strip() == "ready"
    except OSError:
        return False


def make_reachable(children, env, up):
    """Makes the database reachable; returns (epoch s when it is, a process still finishing or None)."""
    if up[0] == "symlink":
        os.symlink(up[1], up[2])
        return time.time(), None
    if up[1] == "PostgreSQL":
        proc = children.start(pg_ctl(env, "-l", env["H2O_DB_TEST_PG_LOG"], "-w", "start"), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
        ready = lambda: pg_ready(env)
    else:
        proc = children.start([env["H2O_DB_TEST_MYSQL_CTL"], "start"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        my_port = port_of(env["H2O_DB_TEST_MYSQL"])
        ready = lambda: listening(my_port)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not ready():
        time.sleep(0.001)
    return time.time(), proc


def analyse_access_log(path, t0):
    """Counts by status, before and after t0 (epoch s; None = never up), the first 200 / last
    non-200 after t0 in the load (ms after t0; by the time each request arrived), and the slow
    answers (over 1 s: how many, the slowest, when they arrived)."""
    total, before, after = {}, {}, {}
    first_ms = last_ms = None
    first_200 = last_bad = None
    slow, slowest, slow_first, slow_last = 0, 0.0, None, None
    t0_ms = t0 * 1000 if t0 is not None else None
    with open(path, "rb") as f:
        for line in f:
            parts = line.rstrip(b"\n").split(b" ")  # epoch ms, path, query (may be empty), status, duration s
            if len(parts) < 5:
                continue
            try:
                ms, status, dur = int(parts[0]), int(parts[3]), float(parts[4])
            except ValueError:
                continue
            first_ms = ms if first_ms is None else min(first_ms, ms)
            last_ms = ms if last_ms is None else max(last_ms, ms)
            total[status] = total.get(status, 0) + 1
            if dur > 1.0:
                slow += 1
                rel = ms - (t0_ms if t0_ms is not None else ms)
                slow_first = rel if slow_first is None else min(slow_first, rel)
                slow_last = rel if slow_last is None else max(slow_last, rel)
            slowest = max(slowest, dur)
            if t0_ms is not None and ms >= t0_ms:
                after[status] = after.get(status, 0) + 1
                if status == 200 and (first_200 is None or ms < first_200):
                    first_200 = ms
                if status != 200 and (last_bad is None or ms > last_bad):
                    last_bad = ms
            else:
                before[status] = before.get(status, 0) + 1
    return {
        "total": total, "before": before, "after": after, "first_ms": first_ms, "last_ms": last_ms,
        "first_200_after_ms": None if first_200 is None else first_200 - t0_ms,
        "last_non200_after_ms": None if last_bad is None or t0_ms is None else last_bad - t0_ms,
        "slow_over_1s": slow, "slowest_s": slowest, "slow_arrived_ms": (slow_first, slow_last),
    }


def analyse_probe(results, t0):
    n_bad = sum(1 for _, s in results if s != 200)
    out = {"probes": len(results), "probe_non200": n_bad, "probe_codes": {}}
    for _, s in results:
        out["probe_codes"][s] = out["probe_codes"].get(s, 0) + 1
    if t0 is None:
        return out
    after = [(t, s) for t, s in results if t >= t0]
    firsts = [t for t, s in after if s == 200]
    out["first_200_ms"] = (firsts[0] - t0) * 1000 if firsts else None
    bad = [t for t, s in after if s != 200]
    if not firsts:
        out["steady_ms"] = None
    elif not bad:
        out["steady_ms"] = out["first_200_ms"]
    else:
        later = [t for t in firsts if t > bad[-1]]
        out["steady_ms"] = (later[0] - t0) * 1000 if later else None
    out["probe_non200_after_up"] = len(bad)
    out["probe_codes_after_up"] = {}
    for t, s in after:
        if s != 200:
            out["probe_codes_after_up"][s] = out["probe_codes_after_up"].get(s, 0) + 1
    return out


def run_case(case, args, env, work, children):
    cdir = tempfile.mkdtemp(prefix="case-", dir=work)
    port = free_port()
    srv = Server(children, args.binary, cdir, port)
    conf = "\n".join([
        "listen: {host: 127.0.0.1, port: %d}" % port,
        "num-threads: 2",
        "pid-file: %s" % srv.pid_file,
        "error-log: %s" % srv.error_log,
        "db.bind:",
        "  url: \"%s\"" % case["url"],
        "hosts:",
        "  default:",
        "    paths:",
        "      /s:",
        "        c.handler: %s:db_script" % args.handlers,
        "        access-log: {path: %s, format: \"%s\"}" % (srv.access_log, AccessLog.FORMAT),
        "      /status:",
        "        db.status: ON",
        ""])
    if case["up"] is not None and case["up"][0] == "start":
        stop_server(env, case["up"][1])
    srv.start(conf)
    log("outage: %s, %s: h2o-db pid %d on port %d, wrk for %d s" % (case["backend"], case["case"], srv.pid, port, args.duration))
    lua = os.path.join(HERE, "post.lua")
    start = time.monotonic()
    probe = Probe(port, start + args.duration + 5)
    wrk_out = open(os.path.join(cdir, "wrk.out"), "w+")
    wrk = children.start(["wrk", "-t2", "-c64", "-d%ds" % args.duration, "--latency", "-s", lua, "http://127.0.0.1:%d/s" % port],
                         stdout=wrk_out, stderr=subprocess.STDOUT)
    probe.start()
    t0, fwd = None, None
    if case["up"] is not None:
        time.sleep(max(0, start + args.duration / 2 - time.monotonic()))
        t0, fwd = make_reachable(children, env, case["up"])
        log("outage:   the database is reachable at %.1f s" % (time.monotonic() - start))
    try:
        wrk.wait(args.duration + 30)
    except subprocess.TimeoutExpired:
        children.stop(wrk)
    probe.stop_flag = True
    probe.join(5)
    time.sleep(0.3)  # the access log's last lines
    alive = srv.alive()
    rss, fds = srv.stats()
    status = srv.status_page()
    if case["backend"] == "PostgreSQL":
        conns = pg_connections(env["H2O_DB_TEST_PG_RESTARTABLE"] if case["url"] == env["H2O_DB_TEST_PG_RESTARTABLE"]
                               else env["H2O_DB_TEST_PG"])
    else:
        conns = mysql_connections(mysql_user_of(env["H2O_DB_TEST_MYSQL"]))
    exit_status = srv.stop()
    if fwd is not None:
        try:
            fwd.wait(60)  # pg_ctl start -w / the MariaDB script: done by now
        except subprocess.TimeoutExpired:
            children.stop(fwd)
    if case["up"] is not None and case["up"][0] == "symlink":
        try:
            os.unlink(case["up"][2])
        except FileNotFoundError:
            pass
    wrk_out.seek(0)
    w = parse_wrk(wrk_out.read())
    acc = analyse_access_log(srv.access_log, t0)
    pr = analyse_probe(probe.results, t0)
    pool = None
    if status:
        threads = status["binds"][0]["threads"]
        pool = {
            "connections": sum(t["connections"]["total"] for t in threads),
            "down_threads": sum(1 for t in threads if t["down"]),
            "reconnects": sum(t["reconnects"] for t in threads),
            "connects": sum(t["connects"] for t in threads),
            "connect_failures": sum(t["connect_failures"] for t in threads),
        }
    elog_bytes = os.path.getsize(srv.error_log) if os.path.exists(srv.error_log) else 0
    with open(srv.error_log, "rb") as f:
        elog_lines = sum(1 for _ in f)
    res = dict(case, up=None)
    res.update(wrk=w, access=acc, probe=pr, alive=alive, rss_kb=rss, fds=fds, db_connections=conns, exit_status=exit_status,
               pool=pool, error_log_bytes=elog_bytes, error_log_lines=elog_lines, reachable_at=t0)
    log("outage:   %s" % summary_line(res))
    if not args.keep:
        for name in ("access.log", "error.log"):
            try:
                os.unlink(os.path.join(cdir, name))
            except FileNotFoundError:
                pass
    return res


def phase_rps(acc, t0):
    """req/s answered while down and once up (from the access log's timestamps)."""
    if acc["first_ms"] is None:
        return None, None
    if t0 is None:
        span = (acc["last_ms"] - acc["first_ms"]) / 1000 or 1
        return sum(acc["total"].values()) / span, None
    down = (t0 * 1000 - acc["first_ms"]) / 1000 or 1
    up = (acc["last_ms"] - t0 * 1000) / 1000 or 1
    return sum(acc["before"].values()) / down, sum(acc["after"].values()) / up


def summary_line(r):
    return "%d requests, %.0f req/s, non-2xx %d, statuses %s, over 1 s %d (slowest %.2f s, arrived %s ms after reachable), first 200 %s, steady %s (probe's non-200 after reachable, 0 = no answer in 2 s: %s), alive %s, exit %s" % (
        r["wrk"]["requests"], r["wrk"]["rps"], r["wrk"]["non2xx"], fmt_codes(r["access"]["total"]),
        r["access"]["slow_over_1s"], r["access"]["slowest_s"], r["access"]["slow_arrived_ms"],
        fmt_ms(r["probe"].get("first_200_ms")), fmt_ms(r["probe"].get("steady_ms")), r["probe"].get("probe_codes_after_up"),
        r["alive"], r["exit_status"])


def table(results, duration):
    rows = []
    rows.append("| backend | case | requests (wrk) | req/s (wrk) | non-2xx (wrk) | statuses while down | statuses once reachable "
                "| req/s down / up | probe: first 200 | probe: steady 200 | load: first 200, last non-200 | answers over 1 s (slowest) | socket errors | survived, exit "
                "| RSS, fds at end | DB connections at end (status page) | error log |")
    rows.append("|---|---|---:|---:|---:|---|---|---|---:|---:|---:|---:|---|---|---|---|---|")
    for r in results:
        acc, pr, w = r["access"], r["probe"], r["wrk"]
        down_rps, up_rps = phase_rps(acc, r["reachable_at"])
        rps = "%s / %s" % ("—" if down_rps is None else f"{down_rps:,.0f}", "—" if up_rps is None else f"{up_rps:,.0f}")
        se = w["socket_errors"]
        se_txt = ", ".join("%s %d" % (k, v) for k, v in se.items() if v) or "0"
        pool = r["pool"]
        pool_txt = "%s (%s)" % ("?" if r["db_connections"] is None else r["db_connections"],
                                "?" if pool is None else "%d open, %d of 2 threads down, reconnects %d, connects %d, failed %d" % (
                                    pool["connections"], pool["down_threads"], pool["reconnects"], pool["connects"],
                                    pool["connect_failures"]))
        up = r["reachable_at"] is not None
        rows.append("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            r["backend"], r["case"], f"{w['requests']:,}", f"{w['rps']:,.0f}", f"{w['non2xx']:,}",
            fmt_codes(acc["before"]), fmt_codes(acc["after"]) if up else "(never reachable)", rps,
            fmt_ms(pr.get("first_200_ms")) if up else "—", fmt_ms(pr.get("steady_ms")) if up else "—",
            "%s, %s" % (fmt_ms(acc["first_200_after_ms"]), fmt_ms(acc["last_non200_after_ms"])) if up else "—",
            "%s (%.2f s)" % (f"{acc['slow_over_1s']:,}", acc["slowest_s"]), se_txt,
            "%s, %s" % ("yes" if r["alive"] else "**NO**", r["exit_status"]),
            "%.1f MB, %s" % (r["rss_kb"] / 1024, r["fds"]) if r["rss_kb"] else "—", pool_txt,
            "%s lines, %.1f MB" % (f"{r['error_log_lines']:,}", r["error_log_bytes"] / 1e6)))
    return "\n".join(rows)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=60)
    ap.add_argument("--binary", required=True)
    ap.add_argument("--handlers", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--only", default="", help="comma-separated words a case must contain, e.g. PostgreSQL,socket")
    ap.add_argument("--json", default="")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    install_signal_handlers()
    env = os.environ
    children = Children()
    results = []
    try:
        cases = make_cases(env, args.work)
        if args.only:
            words = [w.strip().lower() for w in args.only.split(",") if w.strip()]
            cases = [c for c in cases if all(w in (c["backend"] + " " + c["case"]).lower() for w in words)]
        for c in cases:
            results.append(run_case(c, args, env, args.work, children))
            children.stop_all()
    finally:
        children.stop_all()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1, default=str)
    print()
    print("h2o-db num-threads 2 (pool defaults: max 8 per thread), wrk -t2 -c64 -d%ds POST %r, the database reachable at "
          "about %d s; probe: one POST every 10 ms on a new connection" % (args.duration, BODY, args.duration // 2))
    print()
    print(table(results, args.duration))
    bad = [r for r in results if not r["alive"] or r["exit_status"] != 0]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

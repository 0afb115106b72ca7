"""bench/soak's program (run it through bench/soak, which starts the databases).

One h2o-db (num-threads 2) with three binds — sa_main on the restartable PostgreSQL cluster,
sa_lite on a SQLite file, sa_my on MariaDB — under mixed load for DURATION seconds:
  wrk -c16 reads, wrk -c8 transactions, wrk -c4 SQL errors (mix.lua), and two loops of curl
  clients that leave (-m 0.3) during BEGIN; INSERT; sleep 1 s; COMMIT (PostgreSQL, MariaDB);
  a PostgreSQL restart (pg_ctl stop -m fast; start) every minute, the first at 45 s;
  pg_terminate_backend of h2o-db's PostgreSQL backends every 10 s.
Every INTERVAL seconds one line: elapsed, the server's RSS and fds, its connections as each
database sees them, the answers since the line before. At the end: RSS growth after the first
minute, max fds, 5xx other than 503/504 (and other than the expected 500 of the duplicate keys),
rows that must not exist (left clients' and failed transactions'), the shutdown's exit status.
"""
import argparse
import json
import os
import re
import sqlite3
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (AccessLog, Children, Histogram, Server, fmt_codes, free_port, install_signal_handlers, log, mariadb, mysql_connections,
                    mysql_user_of, parse_wrk, pg_connections, psql)

HERE = os.path.dirname(os.path.abspath(__file__))
KEYS = {"sa_main": "PostgreSQL", "sa_lite": "SQLite", "sa_my": "MariaDB"}

PG_SCHEMA = """
DROP TABLE IF EXISTS soak_kv, soak_log, soak_dup;
CREATE TABLE soak_kv (id int PRIMARY KEY, v text NOT NULL);
INSERT INTO soak_kv SELECT g, md5(g::text) FROM generate_series(1, 1000) AS g;
CREATE TABLE soak_log (id bigserial PRIMARY KEY, k text NOT NULL, v text NOT NULL);
CREATE TABLE soak_dup (id int PRIMARY KEY);
INSERT INTO soak_dup VALUES (1);
"""


def my_schema():
    rows = ",".join("(%d, md5('%d'))" % (i, i) for i in range(1, 1001))
    return ("DROP TABLE IF EXISTS soak_kv, soak_log, soak_dup;"
            "CREATE TABLE soak_kv (id int PRIMARY KEY, v varchar(64) NOT NULL) ENGINE=InnoDB;"
            "INSERT INTO soak_kv VALUES %s;"
            "CREATE TABLE soak_log (id bigint AUTO_INCREMENT PRIMARY KEY, k varchar(16) NOT NULL, v varchar(64) NOT NULL) ENGINE=InnoDB;"
            "CREATE TABLE soak_dup (id int PRIMARY KEY) ENGINE=InnoDB;"
            "INSERT INTO soak_dup VALUES (1);" % rows)


def sqlite_schema(path):
    import hashlib
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript("""
        CREATE TABLE soak_kv (id INTEGER PRIMARY KEY, v TEXT NOT NULL);
        CREATE TABLE soak_log (id INTEGER PRIMARY KEY AUTOINCREMENT, k TEXT NOT NULL, v TEXT NOT NULL);
        CREATE TABLE soak_dup (id INTEGER PRIMARY KEY);
        INSERT INTO soak_dup VALUES (1);""")
    db.executemany("INSERT INTO soak_kv VALUES (?, ?)", [(i, hashlib.md5(str(i).encode()).hexdigest()) for i in range(1, 1001)])
    db.commit()
    db.close()


class Events:
    """What the fault threads did, for the next line and for the end."""

    def __init__(self):
        self.lock = threading.Lock()
        self.pending = []
        self.restarts = []      # (seconds stopped→accepting, stop s, start s)
        self.terminated = 0
        self.terminate_rounds = 0
        self.gone = {"PostgreSQL": {}, "MariaDB": {}}  # curl exit status → count
        self.pg_down = threading.Event()

    def note(self, text):
        with self.lock:
            self.pending.append(text)

    def take(self):
        with self.lock:
            out, self.pending = self.pending, []
        return out


def pg_ctl(*a, timeout=60):
    argv = ["runuser", "-u", "postgres", "--", os.environ["H2O_DB_TEST_PG_CTL"], "-D", os.environ["H2O_DB_TEST_PGDATA"]] + list(a)
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def restarter(ev, t_start, deadline, every, first, stop_flag):
    k = 0
    while not stop_flag.is_set():
        at = t_start + first + k * every
        if at > deadline - 5:
            return
        if stop_flag.wait(max(0, at - time.monotonic())):
            return
        ev.pg_down.set()
        t0 = time.monotonic()
        r1 = pg_ctl("-m", "fast", "-w", "stop")
        t1 = time.monotonic()
        r2 = pg_ctl("-l", os.environ["H2O_DB_TEST_PG_LOG"], "-w", "start")
        t2 = time.monotonic()
        ev.pg_down.clear()
        with ev.lock:
            ev.restarts.append((t2 - t0, t1 - t0, t2 - t1))
        ev.note("PostgreSQL restarted at %.0f s (down %.2f s)%s" % (t0 - t_start, t2 - t0,
                "" if r1.returncode == 0 and r2.returncode == 0 else " [pg_ctl failed: %s %s]" % (r1.stderr.strip(), r2.stderr.strip())))
        k += 1


def terminator(ev, url, t_start, deadline, every, stop_flag):
    k = 1
    while not stop_flag.is_set():
        at = t_start + k * every
        k += 1
        if at > deadline - 1:
            return
        if stop_flag.wait(max(0, at - time.monotonic())):
            return
        if ev.pg_down.is_set():
            continue
        out = psql(url, "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = 'h2o-db'", timeout=5)
        if out is not None and out.isdigit():
            with ev.lock:
                ev.terminated += int(out)
                ev.terminate_rounds += 1


def leaver(ev, backend, port, key, deadline, stop_flag, body_file):
    """curl clients that leave (-m 0.3) while their transaction sleeps 1 s, one after the other."""
    while not stop_flag.is_set() and time.monotonic() < deadline:
        try:
            r = subprocess.run(["curl", "-s", "-o", "/dev/null", "-m", "0.3", "--data-binary", "@" + body_file,
                                "http://127.0.0.1:%d/gone?key=%s" % (port, key)], timeout=10, stdin=subprocess.DEVNULL)
            rc = r.returncode
        except subprocess.TimeoutExpired:
            rc = "hung"
        with ev.lock:
            ev.gone[backend][rc] = ev.gone[backend].get(rc, 0) + 1
        stop_flag.wait(0.05)


def classify(path, status):
    """'expected' / 'unexpected' for the 5xx check."""
    if status >= 500 and status not in (503, 504) and not (path == "/err" and status == 500):
        return "unexpected"
    return "expected"


class Tally:
    def __init__(self):
        self.codes = {}          # status → count (500 split by path)
        self.by_key = {}         # (key, path, status) → count
        self.unexpected = {}     # (path, key, status) → count
        self.durations = {}      # (key, path) → Histogram

    def add(self, path, query, status, seconds):
        label = "500 /err" if (status == 500 and path == "/err") else str(status)
        self.codes[label] = self.codes.get(label, 0) + 1
        key = query[5:] if query.startswith("?key=") else "?"
        k = (key, path, status)
        self.by_key[k] = self.by_key.get(k, 0) + 1
        h = self.durations.get((key, path))
        if h is None:
            h = self.durations[(key, path)] = Histogram()
        h.add(seconds)
        if classify(path, status) == "unexpected":
            u = (path, key, status)
            self.unexpected[u] = self.unexpected.get(u, 0) + 1


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=600)
    ap.add_argument("--interval", type=int, default=30)
    ap.add_argument("--restart-every", type=int, default=60)
    ap.add_argument("--first-restart", type=int, default=45)
    ap.add_argument("--terminate-every", type=int, default=10)
    ap.add_argument("--binary", required=True)
    ap.add_argument("--handlers", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--json", default="")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    install_signal_handlers()
    env = os.environ
    children = Children()
    stop_flag = threading.Event()
    threads = []
    try:
        return run(args, env, children, stop_flag, threads)
    finally:
        stop_flag.set()
        children.stop_all()
        for t in threads:
            t.join(15)


def run(args, env, children, stop_flag, threads):
    pg_url, my_url = env["H2O_DB_TEST_PG_RESTARTABLE"], env["H2O_DB_TEST_MYSQL"]
    work = args.work
    if psql(pg_url, PG_SCHEMA) is None:
        raise SystemExit("the PostgreSQL schema failed")
    if mariadb(my_schema()) is None:
        raise SystemExit("the MariaDB schema failed")
    sqlite_schema(os.path.join(work, "soak.sqlite3"))
    port = free_port()
    srv = Server(children, args.binary, work, port)
    conf = "\n".join([
        "listen: {host: 127.0.0.1, port: %d}" % port,
        "num-threads: 2",
        "pid-file: %s" % srv.pid_file,
        "error-log: %s" % srv.error_log,
        "access-log: {path: %s, format: \"%s\"}" % (srv.access_log, AccessLog.FORMAT),
        "db.bind:",
        "  - url: \"%s\"" % pg_url,
        "  - url: \"sqlite:///soak.sqlite3\"",
        "    key: sa_lite",
        "    on-connect: PRAGMA journal_mode=WAL",
        "  - url: \"%s\"" % my_url,
        "    key: sa_my",
        "hosts:",
        "  default:",
        "    paths:",
        "      /s:",
        "        c.handler: %s:db_script" % args.handlers,
        "      /err:",
        "        c.handler: %s:db_script" % args.handlers,
        "      /gone:",
        "        c.handler: %s:db_script" % args.handlers,
        "      /status:",
        "        db.status: ON",
        ""])
    srv.start(conf)
    log("soak: h2o-db pid %d on port %d for %d s" % (srv.pid, port, args.duration))
    gone_pg = os.path.join(work, "gone-pg.txt")
    gone_my = os.path.join(work, "gone-my.txt")
    with open(gone_pg, "w") as f:
        f.write("SENDERROR\nBEGIN\nSQL INSERT INTO soak_log (k, v) VALUES ('gone', 'must not commit')\nSQL SELECT pg_sleep(1)\nCOMMIT\n")
    with open(gone_my, "w") as f:
        f.write("SENDERROR\nBEGIN\nSQL INSERT INTO soak_log (k, v) VALUES ('gone', 'must not commit')\nSQL SELECT SLEEP(1)\nCOMMIT\n")

    ev = Events()
    t_start = time.monotonic()
    deadline = t_start + args.duration
    lua = os.path.join(HERE, "mix.lua")
    wrks = {}
    for mix, conns in (("reads", 16), ("tx", 8), ("errors", 4)):
        out = open(os.path.join(work, "wrk-%s.out" % mix), "w+")
        p = children.start(["wrk", "-t1", "-c%d" % conns, "-d%ds" % args.duration, "--timeout", "10s", "--latency", "-s", lua,
                            "http://127.0.0.1:%d/" % port, "--", mix], stdout=out, stderr=subprocess.STDOUT)
        wrks[mix] = (p, out, conns)
    for target, a in ((restarter, (ev, t_start, deadline, args.restart_every, args.first_restart, stop_flag)),
                      (terminator, (ev, pg_url, t_start, deadline, args.terminate_every, stop_flag)),
                      (leaver, (ev, "PostgreSQL", port, "sa_main", deadline, stop_flag, gone_pg)),
                      (leaver, (ev, "MariaDB", port, "sa_my", deadline, stop_flag, gone_my))):
        t = threading.Thread(target=target, args=a, daemon=True)
        t.start()
        threads.append(t)

    access = AccessLog(srv.access_log)
    total, since = Tally(), Tally()
    rss_samples = []  # (elapsed, rss kB, fds)
    max_fds = 0
    lines = []
    header = ("| elapsed | RSS | fds | PostgreSQL conns | MariaDB conns | answers since the line before | req/s | unexpected 5xx | events |\n"
              "|---:|---:|---:|---:|---:|---|---:|---:|---|")
    print(header, flush=True)
    next_line = t_start + args.interval
    last_line_t = t_start
    survived = True
    while time.monotonic() < deadline + 1:
        time.sleep(max(0, min(1.0, deadline + 1 - time.monotonic())))
        now = time.monotonic()
        if not srv.alive():
            survived = False
            log("soak: h2o-db DIED (exit status %s) at %.0f s" % (srv.proc.returncode, now - t_start))
            break
        rss, fds = srv.stats()
        if rss is not None:
            rss_samples.append((now - t_start, rss, fds))
            max_fds = max(max_fds, fds)
        for _, path, query, status, seconds in access.read_new():
            total.add(path, query, status, seconds)
            since.add(path, query, status, seconds)
        final = now >= deadline + 1
        if now >= next_line or (final and now - last_line_t >= 2):
            pgc = pg_connections(pg_url)
            myc = mysql_connections(mysql_user_of(my_url))
            n = sum(since.codes.values())
            row = "| %.0f s | %.1f MB | %s | %s | %s | %s | %s | %d | %s |" % (
                now - t_start, (rss or 0) / 1024, fds, "down" if pgc is None else pgc, "?" if myc is None else myc,
                fmt_codes(since.codes), f"{n / (now - last_line_t):,.0f}", sum(since.unexpected.values()),
                "; ".join(ev.take()) or "")
            print(row, flush=True)
            lines.append(row)
            since = Tally()
            last_line_t = now
            next_line += args.interval
    load_end = time.monotonic()
    stop_flag.set()
    for mix, (p, out, conns) in wrks.items():
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            children.stop(p)
    for t in threads:
        t.join(30)
    # PostgreSQL must be up for the checks (a restart may have been under way)
    if pg_connections(pg_url) is None:
        pg_ctl("-l", env["H2O_DB_TEST_PG_LOG"], "-w", "start")
    time.sleep(2)  # the last requests' clean-up
    for _, path, query, status, seconds in access.read_new():
        total.add(path, query, status, seconds)
    alive_end = srv.alive()
    rss_end, fds_end = srv.stats()
    status_page = srv.status_page()
    pg_after = pg_connections(pg_url)
    my_after = mysql_connections(mysql_user_of(my_url))
    pg_idle_tx = psql(pg_url, "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'h2o-db' AND state LIKE 'idle in transaction%'")
    checks = {
        "PostgreSQL rows of clients that left": psql(pg_url, "SELECT count(*) FROM soak_log WHERE k = 'gone'"),
        "MariaDB rows of clients that left": mariadb("SELECT count(*) FROM soak_log WHERE k = 'gone'"),
        "PostgreSQL rows of failed transactions": psql(pg_url, "SELECT count(*) FROM soak_log WHERE k = 'err'"),
        "MariaDB rows of failed transactions": mariadb("SELECT count(*) FROM soak_log WHERE k = 'err'"),
    }
    try:
        db = sqlite3.connect(os.path.join(work, "soak.sqlite3"), timeout=10)
        checks["SQLite rows of failed transactions"] = str(db.execute("SELECT count(*) FROM soak_log WHERE k = 'err'").fetchone()[0])
        tx_rows = {"SQLite": db.execute("SELECT count(*) FROM soak_log WHERE k = 'tx'").fetchone()[0]}
        db.close()
    except sqlite3.Error as e:
        checks["SQLite rows of failed transactions"] = "error: %s" % e
        tx_rows = {}
    tx_rows["PostgreSQL"] = psql(pg_url, "SELECT count(*) FROM soak_log WHERE k = 'tx'")
    tx_rows["MariaDB"] = mariadb("SELECT count(*) FROM soak_log WHERE k = 'tx'")
    exit_status = srv.stop()

    wrk_res = {}
    for mix, (p, out, conns) in wrks.items():
        out.seek(0)
        wrk_res[mix] = parse_wrk(out.read())
        wrk_res[mix]["connections"] = conns

    # RSS: after the first minute (or half the run, when shorter) to the end of the load
    base_t = 60 if args.duration >= 120 else args.duration / 2
    base = next((s for s in rss_samples if s[0] >= base_t), rss_samples[0] if rss_samples else None)
    last = rss_samples[-1] if rss_samples else None
    first = rss_samples[0] if rss_samples else None
    pool_tot = {}
    if status_page:
        for b in status_page["binds"]:
            agg = {}
            for t in b["threads"]:
                for k, v in t.items():
                    if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "thread":
                        agg[k] = agg.get(k, 0) + v
                for k, v in t["connections"].items():
                    agg["conn_" + k] = agg.get("conn_" + k, 0) + v
            pool_tot[b["key"]] = agg
    err_patterns = error_log_patterns(srv.error_log)

    out = []
    out.append("")
    out.append("Summary (%d s of load, h2o-db num-threads 2, pool defaults):" % args.duration)
    out.append("")
    out.append("| measure | value |")
    out.append("|---|---|")
    out.append("| server survived the load, exit status of SIGTERM | %s, %s |" % ("yes" if survived and alive_end else "**NO**", exit_status))
    if base and last:
        out.append("| RSS at %.0f s → end of load (growth) | %.1f MB → %.1f MB (%+.1f MB); at start %.1f MB, max %.1f MB |" % (
            base[0], base[1] / 1024, last[1] / 1024, (last[1] - base[1]) / 1024, first[1] / 1024, max(s[1] for s in rss_samples) / 1024))
        out.append("| fds: at start, max, end of load, after | %d, %d, %d, %s |" % (first[2], max_fds, last[2], fds_end))
    out.append("| answers (all) | %s |" % fmt_codes(total.codes))
    out.append("| 5xx other than 503/504 (and the duplicate keys' 500 on /err) | %s |" % (
        "none" if not total.unexpected else "**%s**" % ", ".join("%s %s %s: %d" % (k[2], k[0], k[1], v) for k, v in sorted(total.unexpected.items()))))
    for mix, w in wrk_res.items():
        se = ", ".join("%s %d" % (k, v) for k, v in w["socket_errors"].items() if v) or "none"
        out.append("| wrk %s (-c%d) | %s requests, %s req/s, non-2xx %s, p50 %s ms, p99 %s ms, socket errors: %s |" % (
            mix, w["connections"], f"{w['requests']:,}", f"{w['rps']:,.0f}", f"{w['non2xx']:,}",
            "%.2f" % w["p50"] if w["p50"] is not None else "?", "%.1f" % w["p99"] if w["p99"] is not None else "?", se))
    for backend, g in ev.gone.items():
        out.append("| clients that left, %s (curl exit status: count; 28 = left at 0.3 s) | %s |" % (
            backend, ", ".join("%s: %d" % (k, v) for k, v in sorted(g.items(), key=lambda kv: str(kv[0]))) or "none"))
    out.append("| PostgreSQL restarts (stop -m fast + start -w, seconds) | %d: %s |" % (
        len(ev.restarts), ", ".join("%.2f" % r[0] for r in ev.restarts) or "—"))
    out.append("| pg_terminate_backend rounds, backends terminated | %d, %d |" % (ev.terminate_rounds, ev.terminated))
    out.append("| connections after the load: PostgreSQL (idle in transaction), MariaDB | %s (%s), %s |" % (pg_after, pg_idle_tx, my_after))
    for k, v in checks.items():
        out.append("| %s (must be 0) | %s |" % (k, v))
    out.append("| rows committed by the tx mix | %s |" % ", ".join("%s %s" % (k, v) for k, v in tx_rows.items()))
    for key, agg in pool_tot.items():
        out.append("| status page %s (%s), both threads | open %d (pinned %d, waiting %d); statements %s, errors %s, closed_broken %s, reconnects %s, "
                   "connect_failures %s, timeouts %s, queue_full %s, acquire_timeouts %s, leaks %s |" % (
                       key, KEYS.get(key, key), agg.get("conn_total", 0), agg.get("conn_pinned", 0), agg.get("waiting", 0),
                       f"{agg.get('statements', 0):,}", f"{agg.get('errors', 0):,}", agg.get("closed_broken", 0), agg.get("reconnects", 0),
                       agg.get("connect_failures", 0), agg.get("timeouts", 0), agg.get("queue_full", 0), agg.get("acquire_timeouts", 0),
                       agg.get("leaks", 0)))
    out.append("")
    out.append("Answers by bind and path:")
    out.append("")
    out.append("| bind | path | answers | duration p50 / p99 / max (ms) |")
    out.append("|---|---|---|---|")
    combos = {}
    for (key, path, status), v in total.by_key.items():
        combos.setdefault((key, path), {})[status] = v
    for (key, path), codes in sorted(combos.items()):
        h = total.durations.get((key, path))
        out.append("| %s (%s) | %s | %s | %s |" % (key, KEYS.get(key, "?"), path, fmt_codes(codes),
                   "%.0f / %.0f / %.0f" % (h.percentile(50), h.percentile(99), h.max) if h else ""))
    out.append("")
    out.append("Error log, most frequent messages (numbers replaced by N):")
    out.append("")
    for msg, n in err_patterns[:12]:
        out.append("    %8d  %s" % (n, msg[:200]))
    print("\n".join(out), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"lines": lines, "summary": out, "rss": rss_samples, "wrk": wrk_res, "pool": pool_tot,
                       "restarts": ev.restarts, "codes": total.codes}, f, indent=1, default=str)
    ok = survived and alive_end and exit_status == 0 and not total.unexpected
    return 0 if ok else 1


def error_log_patterns(path):
    counts = {}
    try:
        with open(path, errors="replace") as f:
            for line in f:
                m = re.sub(r"(?<!SQLSTATE )\b\d+\b", "N", line.strip())
                m = re.sub(r"request:/\w+\?key=\w+", "request:PATH", m)
                counts[m] = counts.get(m, 0) + 1
    except FileNotFoundError:
        return []
    return sorted(counts.items(), key=lambda kv: -kv[1])


if __name__ == "__main__":
    sys.exit(main())

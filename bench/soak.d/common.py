"""What bench/outage and bench/soak share: the h2o-db server they start, its /proc numbers, the
database clients (psql, mariadb), wrk's output, the access log, and the children they start.

Every child is started through Children so that it can be stopped at the end; the bash wrapper
also runs this program in a process group of its own and kills that group when it exits or is
interrupted (bench/outage, bench/soak), so nothing outlives the script.
"""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.parse


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def install_signal_handlers():
    """SIGTERM/SIGINT/SIGHUP end the program through SystemExit, so that `finally` clean-ups run."""

    def handler(signum, frame):
        raise SystemExit(128 + signum)

    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, handler)


class Children:
    """The processes this program started; stop_all() ends whichever still run (TERM, then KILL)."""

    def __init__(self):
        self.procs = []

    def start(self, argv, **kw):
        kw.setdefault("stdin", subprocess.DEVNULL)
        p = subprocess.Popen(argv, **kw)
        self.procs.append(p)
        return p

    def stop(self, p, grace=5.0):
        if p.poll() is None:
            try:
                p.terminate()
                p.wait(grace)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
            except ProcessLookupError:
                pass
        return p.returncode

    def stop_all(self):
        for p in reversed(self.procs):
            try:
                self.stop(p)
            except Exception:
                pass
        self.procs = [p for p in self.procs if p.poll() is None]


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def port_of(url):
    m = re.search(r"@127\.0\.0\.1:(\d+)", url)
    if not m:
        raise SystemExit("no 127.0.0.1:PORT in %s" % url)
    return int(m.group(1))


def can_connect(port, timeout=0.2):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


def proc_stats(pid):
    """(VmRSS in kB, open fds) of a live process; (None, None) when it is gone."""
    try:
        rss = None
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
        fds = len(os.listdir("/proc/%d/fd" % pid))
        return rss, fds
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None, None


def pg_bin(name):
    return os.path.join(os.environ["H2O_DB_PG_BIN"], name)


def psql(url, sql, timeout=10):
    """One statement through psql; its output (unaligned, tuples only), or None on failure."""
    try:
        r = subprocess.run([pg_bin("psql"), "-Atq", "-X", url, "-c", sql], capture_output=True, text=True,
                           timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return None
    return r.stdout.strip() if r.returncode == 0 else None


def mariadb(sql, timeout=10, database="h2o_test"):
    """SQL through the mariadb client as root over the server's socket; output (tab-separated), or None."""
    try:
        r = subprocess.run(["mariadb", "--no-defaults", "-S", os.environ["H2O_DB_TEST_MYSQL_SOCKET"], "-u", "root", "-N", "-B",
                            database, "-e", sql], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return None
    return r.stdout.strip() if r.returncode == 0 else None


def pg_connections(url):
    """Connections h2o-db holds on this PostgreSQL (application_name h2o-db, libpq's fallback_application_name)."""
    out = psql(url, "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'h2o-db'", timeout=5)
    return int(out) if out not in (None, "") else None


def mysql_connections(user="h2o"):
    out = mariadb("SELECT count(*) FROM information_schema.processlist WHERE user = '%s'" % user, timeout=5)
    return int(out) if out not in (None, "") else None


def mysql_user_of(url):
    return urllib.parse.unquote(urllib.parse.urlsplit(url).username or "")


class Server:
    """One h2o-db: config written into DIR, started, watched through /proc, stopped with SIGTERM."""

    def __init__(self, children, binary, workdir, port):
        self.children, self.binary, self.dir, self.port = children, binary, workdir, port
        self.proc = None
        self.exit_status = None
        self.conf = os.path.join(workdir, "h2o-db.conf")
        self.error_log = os.path.join(workdir, "error.log")
        self.access_log = os.path.join(workdir, "access.log")
        self.pid_file = os.path.join(workdir, "h2o-db.pid")

    def start(self, conf_text, timeout=15):
        with open(self.conf, "w") as f:
            f.write(conf_text)
        chk = subprocess.run([self.binary, "-t", "-c", self.conf], capture_output=True, text=True)
        if chk.returncode != 0:
            raise SystemExit("h2o-db -t refused the config:\n%s%s\n%s" % (chk.stdout, chk.stderr, conf_text))
        self.stdout = open(os.path.join(self.dir, "server.out"), "w")
        self.proc = self.children.start([self.binary, "-c", self.conf], stdout=self.stdout, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit("h2o-db exited with %s at start; see %s" % (self.proc.returncode, self.error_log))
            if can_connect(self.port):
                return
            time.sleep(0.02)
        raise SystemExit("h2o-db did not listen on %d within %d s" % (self.port, timeout))

    @property
    def pid(self):
        return self.proc.pid

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stats(self):
        return proc_stats(self.proc.pid) if self.alive() else (None, None)

    def status_page(self, path="/status"):
        import http.client
        try:
            c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
            c.request("GET", path)
            r = c.getresponse()
            body = r.read()
            c.close()
            return json.loads(body) if r.status == 200 else None
        except (OSError, ValueError, http.client.HTTPException):
            return None

    def stop(self, timeout=20):
        """SIGTERM and wait: the exit status (0 is a clean shutdown), or 'killed' after the timeout."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
                self.exit_status = "killed after %d s" % timeout
                return self.exit_status
        self.exit_status = self.proc.returncode
        return self.exit_status


def parse_wrk(out):
    """wrk's summary: requests, seconds, req/s, non-2xx, socket errors, latency percentiles (ms)."""
    def num(pattern, conv=float, default=0):
        m = re.search(pattern, out, re.M)
        return conv(m.group(1)) if m else default

    def ms(label):
        m = re.search(r"^\s*%s\s+([\d.]+)(us|ms|s)\b" % re.escape(label), out, re.M)
        if not m:
            return None
        v, u = float(m.group(1)), m.group(2)
        return v / 1000 if u == "us" else v * 1000 if u == "s" else v

    m = re.search(r"(\d+) requests in ([\d.]+)(ms|s|m)", out)
    reqs, secs = (int(m.group(1)), float(m.group(2)) * {"ms": 0.001, "s": 1, "m": 60}[m.group(3)]) if m else (0, 0)
    errs = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {
        "requests": reqs,
        "seconds": secs,
        "rps": num(r"Requests/sec:\s+([\d.]+)"),
        "non2xx": num(r"Non-2xx or 3xx responses:\s+(\d+)", int),
        "socket_errors": dict(zip(("connect", "read", "write", "timeout"), map(int, errs.groups()))) if errs else {},
        "p50": ms("50%"),
        "p99": ms("99%"),
    }


class AccessLog:
    """Reads the access log (format "%{msec}t %U %q %s %{duration}x": epoch ms, path, query (may be
    empty), status, seconds) as it grows."""

    FORMAT = "%{msec}t %U %q %s %{duration}x"

    def __init__(self, path):
        self.path, self.offset, self.rest = path, 0, b""

    def read_new(self):
        """The lines written since the last call, as (ms, path, query, status, seconds) tuples."""
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return []
        self.offset += len(data)
        data = self.rest + data
        lines = data.split(b"\n")
        self.rest = lines.pop()
        out = []
        for line in lines:
            parts = line.split(b" ")
            if len(parts) < 5:
                continue
            try:
                out.append((int(parts[0]), parts[1].decode(), parts[2].decode(), int(parts[3]), float(parts[4])))
            except ValueError:
                continue
        return out


class Histogram:
    """Durations in buckets (1 ms up to 100 ms, 10 ms up to 1 s, 100 ms beyond): percentiles in ms."""

    def __init__(self):
        self.buckets, self.n, self.max = {}, 0, 0.0

    def add(self, seconds):
        ms = seconds * 1000
        b = int(ms) if ms < 100 else 100 + int((ms - 100) / 10) if ms < 1000 else 190 + int((ms - 1000) / 100)
        self.buckets[b] = self.buckets.get(b, 0) + 1
        self.n += 1
        self.max = max(self.max, ms)

    @staticmethod
    def upper(b):
        return b + 1 if b < 100 else 100 + (b - 99) * 10 if b < 190 else 1000 + (b - 189) * 100

    def percentile(self, p):
        if self.n == 0:
            return None
        want, seen = self.n * p / 100, 0
        for b in sorted(self.buckets):
            seen += self.buckets[b]
            if seen >= want:
                return min(self.upper(b), self.max)
        return self.max


def fmt_codes(counts):
    """{200: 5, 503: 7} → "200: 5 · 503: 7"."""
    return " · ".join("%s: %s" % (k, f"{v:,}") for k, v in sorted(counts.items())) or "—"


def fmt_ms(v):
    return "—" if v is None else "%.0f ms" % v


def listening(port):
    """Whether something listens on 127.0.0.1:PORT (read from /proc/net/tcp: no connection made)."""
    want = "0100007F:%04X" % port
    try:
        with open("/proc/net/tcp") as f:
            next(f)
            for line in f:
                parts = line.split()
                if parts[1] == want and parts[3] == "0A":
                    return True
    except OSError:
        pass
    return False

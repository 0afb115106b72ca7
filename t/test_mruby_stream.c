/*
 * Streaming in mruby handlers (docs/mruby.md, "Streamed bodies"), against the real h2o-db:
 * a body whose each yields 10,000 chunks arrives whole and in order over HTTP/1.1 (chunked)
 * and HTTP/2; a client that stops reading does not make the server buffer without bound (the
 * body stops being produced while it is stalled, and everything arrives once it reads again;
 * the memory that saves is measured in docs/mruby.md, not asserted here); a client that leaves
 * mid-body stops the iteration and body.close runs; an exception raised inside each after the
 * headers breaks the response off (logged).
 */
#include <arpa/inet.h>
#include <curl/curl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>
#include "db_util.h"

/* ---- the app ---- */

static const char STREAM_RB[] =
    "$produced = 0\n"
    "$closed = 0\n"
    "PAD = \"x\" * 90\n"
    "\n"
    "# n numbered lines; every 1000th number comes from the database (a statement inside each)\n"
    "class Numbered\n"
    "  def initialize(db, n)\n"
    "    @db, @n = db, n\n"
    "  end\n"
    "  def each\n"
    "    @n.times do |i|\n"
    "      i = @db.query(\"SELECT $1::int AS i\", [i])[0][\"i\"] if i % 1000 == 0\n"
    "      yield \"#{i}:#{PAD}\\n\"\n"
    "    end\n"
    "  end\n"
    "  def close\n"
    "    $closed += 1\n"
    "  end\n"
    "end\n"
    "\n"
    "# 64 KiB chunks, `n` of them (nil: for ever), counted as they are produced\n"
    "class Chunks\n"
    "  CHUNK = \"y\" * 65536\n"
    "  def initialize(n)\n"
    "    @n = n\n"
    "  end\n"
    "  def each\n"
    "    i = 0\n"
    "    while @n.nil? || i < @n\n"
    "      $produced += CHUNK.bytesize\n"
    "      yield CHUNK\n"
    "      i += 1\n"
    "    end\n"
    "  end\n"
    "  def close\n"
    "    $closed += 1\n"
    "  end\n"
    "end\n"
    "\n"
    "class Failing\n"
    "  def each\n"
    "    yield \"hello\"\n"
    "    raise \"mid-body failure\"\n"
    "  end\n"
    "  def close\n"
    "    $closed += 1\n"
    "  end\n"
    "end\n"
    "\n"
    "# the first chunk waits at a gate (an advisory lock the test holds)\n"
    "class Gated\n"
    "  def initialize(db, key)\n"
    "    @db, @key = db, key\n"
    "  end\n"
    "  def each\n"
    "    @db.query(\"SELECT 1 AS x FROM pg_advisory_xact_lock_shared($1)\", [@key])\n"
    "    yield \"after the gate\"\n"
    "  end\n"
    "end\n"
    "\n"
    "proc do |env|\n"
    "  case env[\"PATH_INFO\"]\n"
    "  when \"/numbered\"\n"
    "    [200, {\"content-type\" => \"text/plain\"}, Numbered.new(H2O::DB.session(env), env[\"QUERY_STRING\"].to_i)]\n"
    "  when \"/big\"\n"
    "    n = env[\"QUERY_STRING\"].to_i\n"
    "    [200, {\"content-length\" => (n * 65536).to_s}, Chunks.new(n)]\n"
    "  when \"/forever\"\n"
    "    [200, {}, Chunks.new(nil)]\n"
    "  when \"/failing\"\n"
    "    [200, {}, Failing.new]\n"
    "  when \"/gated\"\n"
    "    [200, {\"x-early\" => \"yes\"}, Gated.new(H2O::DB.session(env), env[\"QUERY_STRING\"].to_i)]\n"
    "  when \"/counters\"\n"
    "    [200, {}, [\"#{$produced} #{$closed} #{H2O::DB.live_fibers}\"]]\n"
    "  else\n"
    "    [404, {}, [\"no such test\\n\"]]\n"
    "  end\n"
    "end\n";

/* db.each on PostgreSQL (sa_main) and SQLite (?lite: sa_lite) */
static const char EACH_RB[] =
    "SERIES_PG = \"SELECT i, 'r' || i AS s FROM generate_series(1, $1::int) AS i\"\n"
    "SERIES_LITE = \"WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < $1) SELECT i, 'r' || i AS s FROM "
    "c\"\n"
    "\n"
    "# a CSV export: the rows leave as they arrive\n"
    "class Export\n"
    "  def initialize(db, sql, n)\n"
    "    @db, @sql, @n = db, sql, n\n"
    "  end\n"
    "  def each\n"
    "    yield \"i,s\\n\"\n"
    "    @db.each(@sql, [@n]) { |row| yield \"#{row['i']},#{row['s']}\\n\" }\n"
    "  end\n"
    "end\n"
    "\n"
    "proc do |env|\n"
    "  lite = env[\"QUERY_STRING\"] == \"lite\"\n"
    "  db = H2O::DB.session(env, lite ? \"sa_lite\" : \"sa_main\")\n"
    "  series = lite ? SERIES_LITE : SERIES_PG\n"
    "  case env[\"PATH_INFO\"]\n"
    "  when \"/count\"\n"
    "    last, bad = 0, 0\n"
    "    n = db.each(series, [100_000]) do |row|\n"
    "      bad += 1 unless row[\"i\"] == last + 1 && row[\"s\"] == \"r#{last + 1}\"\n"
    "      last = row[\"i\"]\n"
    "    end\n"
    "    [200, {}, [\"#{n} rows, last #{last}, #{bad} out of order\"]]\n"
    "  when \"/export\"\n"
    "    [200, {\"content-type\" => \"text/csv\"}, Export.new(db, series, 100_000)]\n"
    "  when \"/break\"\n"
    "    seen = 0\n"
    "    db.each(lite ? series : \"SELECT generate_series(1, 100000000) AS i\", [100_000_000].take(lite ? 1 : 0)) do |row|\n"
    "      seen = row[\"i\"]\n"
    "      break if seen == 1000\n"
    "    end\n"
    "    [200, {}, [\"broke at #{seen}, then #{db.query('SELECT 41 + 1 AS n')[0]['n']}\"]]\n"
    "  when \"/raise\"\n"
    "    begin\n"
    "      db.each(series, [10]) { |row| raise ArgumentError, \"row #{row['i']}\" if row[\"i\"] == 3 }\n"
    "    rescue ArgumentError => e\n"
    "      [200, {}, [\"#{e.message}, then #{db.query('SELECT 41 + 1 AS n')[0]['n']}\"]]\n"
    "    end\n"
    "  when \"/error\"\n"
    "    seen = 0\n"
    "    begin\n"
    "      db.each(\"SELECT i, 1 / (5000 - i) AS x FROM generate_series(1, 10000) AS i\") { |row| seen = row[\"i\"] }\n"
    "      [200, {}, [\"no error\"]]\n"
    "    rescue H2O::DB::Error => e\n"
    "      [200, {}, [\"#{e.class} #{e.sqlstate} after #{seen} rows, then #{db.query('SELECT 41 + 1 AS n')[0]['n']}\"]]\n"
    "    end\n"
    "  when \"/same-session\"\n"
    "    begin\n"
    "      db.each(series, [10]) { |row| db.query(\"SELECT 1\") }\n"
    "    rescue RuntimeError => e\n"
    "      [200, {}, [e.message]]\n"
    "    end\n"
    "  end\n"
    "end\n";

static const char CONF[] = "listen: {host: 127.0.0.1, port: @PORT@}\n"
                           "num-threads: 1\n"
                           "db.bind:\n"
                           "  - url: \"@PG@?application_name=mrb_each_@PORT@\"\n"
                           "  - url: sqlite:///lite.sqlite3\n"
                           "    key: sa_lite\n"
                           "hosts:\n"
                           "  default:\n"
                           "    paths:\n"
                           "      /s:\n"
                           "        mruby.handler-file: stream.rb\n"
                           "      /e:\n"
                           "        mruby.handler-file: each.rb\n";

/* ---- helpers ---- */

static th_server_t server;
static char *dir;

static void setup(void)
{
    memset(&server, 0, sizeof(server));
    dir = NULL;
}

static void teardown(void)
{
    if (server.pid > 0) {
        kill(server.pid, SIGKILL);
        server.pid = 0;
    }
    free(dir);
    dir = NULL;
}

static void start(void)
{
    th_require_pg();
    dir = th_tmpdir();
    free(th_write_file(dir, "stream.rb", STREAM_RB, 0));
    free(th_write_file(dir, "each.rb", EACH_RB, 0));
    int ret = th_server_start_in(&server, dir, CONF);
    ck_assert_msg(ret == 0, "server did not start: %s", th_server_log(&server));
}

static void stop(void)
{
    int status = th_server_stop(&server, 15000);
    char *log = th_server_log(&server);
    ck_assert_msg(status == 0, "exit status %d; log: %s", status, log);
    free(log);
}

static int log_has(void *needle)
{
    char *log = th_server_log(&server);
    int found = strstr(log, needle) != NULL;
    free(log);
    return found;
}

/* What the app counted: bytes produced by Chunks, bodies closed, live Fibers. */
struct counters {
    long produced, closed, fibers;
};

static struct counters counters(void)
{
    struct counters c = {-1, -1, -1};
    th_response_t res;
    char *url = th_url(&server, "/s/counters");
    ck_assert_msg(th_http(&res, TH_HTTP1, NULL, url, NULL) == 0 && res.status == 200, "counters: curl %d", res.curl_error);
    ck_assert_int_eq(sscanf(res.body, "%ld %ld %ld", &c.produced, &c.closed, &c.fibers), 3);
    th_response_free(&res);
    free(url);
    return c;
}

/* A raw HTTP/1.1 connection that has sent GET path (rcvbuf: its receive buffer, 0 = default). */
static int raw_get(const char *path, int rcvbuf)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (rcvbuf != 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
    struct timeval tv = {(time_t)(20 * th_time_factor()), 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons(server.port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    ck_assert(connect(fd, (struct sockaddr *)&sin, sizeof(sin)) == 0);
    char *req = th_fmt("GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", path);
    ck_assert(send(fd, req, strlen(req), 0) == (ssize_t)strlen(req));
    free(req);
    return fd;
}

/* Reads until the connection closes (or `limit` bytes); the bytes, malloc'd, NUL-terminated. */
static char *read_all(int fd, size_t limit, size_t *len)
{
    size_t cap = 65536;
    char *buf = malloc(cap);
    ssize_t n;
    *len = 0;
    while (*len < limit && (n = recv(fd, buf + *len, cap - *len - 1, 0)) > 0)
        if ((*len += n) + 1 == cap)
            buf = realloc(buf, cap *= 2);
    buf[*len] = '\0';
    return buf;
}

/* The body of a chunked HTTP/1.1 response, decoded; *complete says whether the last chunk came. */
static char *dechunk(const char *p, int *complete)
{
    size_t cap = strlen(p) + 1, len = 0;
    char *out = malloc(cap);
    *complete = 0;
    for (;;) {
        char *end;
        unsigned long n = strtoul(p, &end, 16);
        if (end == p || strncmp(end, "\r\n", 2) != 0)
            break;
        p = end + 2;
        if (n == 0) {
            *complete = strcmp(p, "\r\n") == 0;
            break;
        }
        if (strlen(p) < n + 2 || strncmp(p + n, "\r\n", 2) != 0)
            break;
        memcpy(out + len, p, n);
        len += n;
        p += n + 2;
    }
    out[len] = '\0';
    return out;
}

/* The body /s/numbered?n answers. */
static char *numbered(int n)
{
    size_t cap = (size_t)n * 100 + 1, len = 0;
    char *out = malloc(cap), pad[91];
    memset(pad, 'x', 90);
    pad[90] = '\0';
    for (int i = 0; i < n; ++i)
        len += snprintf(out + len, cap - len, "%d:%s\n", i, pad);
    return out;
}

/* ---- the tests ---- */

START_TEST(ten_thousand_chunks_arrive_whole_and_in_order)
{
    start();
    char *expect = numbered(10000);
    /* HTTP/1.1: chunked (no content-length), every chunk in order, the last chunk */
    int fd = raw_get("/s/numbered?10000", 0);
    size_t len;
    char *raw = read_all(fd, SIZE_MAX, &len);
    close(fd);
    ck_assert_msg(strncmp(raw, "HTTP/1.1 200 OK\r\n", 17) == 0, "%.300s", raw);
    char *body = strstr(raw, "\r\n\r\n");
    ck_assert_ptr_nonnull(body);
    *body = '\0';
    ck_assert_msg(strstr(raw, "transfer-encoding: chunked") != NULL && strstr(raw, "content-length") == NULL, "%s", raw);
    int complete;
    char *decoded = dechunk(body + 4, &complete);
    ck_assert_msg(complete, "the last chunk is missing");
    ck_assert_msg(strcmp(decoded, expect) == 0, "the body differs (%zu bytes, expected %zu)", strlen(decoded), strlen(expect));
    free(decoded);
    free(raw);
    /* HTTP/2: DATA frames, the same body */
    th_response_t res;
    char *url = th_url(&server, "/s/numbered?10000");
    ck_assert_msg(th_http(&res, TH_HTTP2, NULL, url, NULL) == 0, "curl %d", res.curl_error);
    ck_assert_int_eq(res.http_version, 2);
    ck_assert_int_eq(res.status, 200);
    ck_assert_msg(res.body_len == strlen(expect) && strcmp(res.body, expect) == 0, "HTTP/2: %zu bytes, expected %zu", res.body_len,
                  strlen(expect));
    th_response_free(&res);
    /* HEAD: each runs (and closes), nothing is sent */
    ck_assert(th_http(&res, TH_HTTP1, "HEAD", url, NULL) == 0);
    ck_assert_int_eq(res.status, 200);
    ck_assert_int_eq(res.body_len, 0);
    th_response_free(&res);
    free(url);
    struct counters c = counters();
    ck_assert_int_eq(c.closed, 3);
    ck_assert_int_eq(c.fibers, 1);
    free(expect);
    stop();
}
END_TEST

static size_t saw_header(char *ptr, size_t size, size_t nmemb, void *data)
{
    if (size * nmemb >= 9 && strncasecmp(ptr, "x-early: ", 9) == 0)
        *(int *)data = 1;
    return size * nmemb;
}

START_TEST(status_and_headers_go_out_when_call_returns)
{
    start();
    for (int version = TH_HTTP1; version <= TH_HTTP2; ++version) {
        long key = db_gate_key();
        PGconn *gate = db_gate_close(key);
        char *path = th_fmt("/s/gated?%ld", key), *url = th_url(&server, path);
        th_response_t res = {0};
        int headers = 0;
        CURLM *m = curl_multi_init();
        CURL *c = curl_easy_init();
        curl_easy_setopt(c, CURLOPT_URL, url);
        curl_easy_setopt(c, CURLOPT_HTTP_VERSION,
                         version == TH_HTTP2 ? CURL_HTTP_VERSION_2_PRIOR_KNOWLEDGE : CURL_HTTP_VERSION_1_1);
        curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, saw_header);
        curl_easy_setopt(c, CURLOPT_HEADERDATA, &headers);
        res.body = strdup("");
        curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, db_on_body);
        curl_easy_setopt(c, CURLOPT_WRITEDATA, &res);
        curl_multi_add_handle(m, c);
        /* the headers arrive while each waits at the gate */
        int running = 1;
        double deadline = th_now_ms() + 10000 * th_time_factor();
        while (running && !(headers && db_gate_waiting(key) == 1) && th_now_ms() < deadline) {
            curl_multi_perform(m, &running);
            curl_multi_poll(m, NULL, 0, 20, NULL);
        }
        ck_assert_msg(headers && db_gate_waiting(key) == 1 && res.body_len == 0, "HTTP/%d: headers %d, body `%s`",
                      version == TH_HTTP2 ? 2 : 1, headers, res.body);
        db_gate_open(gate);
        while (running && th_now_ms() < deadline) {
            curl_multi_perform(m, &running);
            if (running)
                curl_multi_poll(m, NULL, 0, 20, NULL);
        }
        ck_assert_str_eq(res.body, "after the gate");
        curl_multi_remove_handle(m, c);
        curl_easy_cleanup(c);
        curl_multi_cleanup(m);
        free(res.body);
        free(url);
        free(path);
    }
    stop();
}
END_TEST

struct stall {
    long last, same; /* the produced count seen last, and for how many polls in a row */
};

/* What the body produced stopped growing: the Fiber waits for the stalled client. */
static int production_stalled(void *arg)
{
    struct stall *st = arg;
    long produced = counters().produced;
    st->same = produced == st->last ? st->same + 1 : 0;
    st->last = produced;
    return produced > 0 && st->same >= 50; /* unchanged for 50 polls (about a second) */
}

START_TEST(a_stalled_client_does_not_make_the_server_buffer)
{
    start();
    enum { CHUNKS = 2048 }; /* 128 MiB of 64 KiB chunks, sent with a content-length */
    const long total = CHUNKS * 65536L;
    th_response_t warm; /* the Ruby heap as a served request leaves it */
    char *warm_url = th_url(&server, "/s/numbered?2000");
    ck_assert(th_http(&warm, TH_HTTP1, NULL, warm_url, NULL) == 0);
    th_response_free(&warm);
    free(warm_url);
    struct counters before = counters();
    int fd = raw_get("/s/big?2048", 65536);
    struct stall st = {-1, 0};
    ck_assert_msg(th_wait_until(production_stalled, &st, 30000), "the body never stopped producing (%ld bytes)", st.last);
    /* a server that buffered would have produced (and kept) all 128 MiB by now */
    long produced = st.last - before.produced;
    ck_assert_msg(produced < 32L << 20, "the body produced %ld bytes for a client that reads nothing", produced);
    /* reading again resumes the body: everything arrives */
    size_t len;
    char *raw = read_all(fd, 4096, &len), *body = strstr(raw, "\r\n\r\n");
    ck_assert_msg(body != NULL && strncmp(raw, "HTTP/1.1 200 OK\r\n", 17) == 0, "%.300s", raw);
    long got = (long)(len - (body + 4 - raw));
    *body = '\0';
    char *length = th_fmt("content-length: %ld\r\n", total);
    ck_assert_msg(strcasestr(raw, length) != NULL, "%s", raw);
    free(length);
    free(raw);
    char sink[65536];
    ssize_t n;
    while (got < total && (n = recv(fd, sink, sizeof(sink), 0)) > 0)
        got += n;
    close(fd);
    ck_assert_int_eq(got, total);
    struct counters after = counters();
    ck_assert_int_eq(after.produced - before.produced, total);
    ck_assert_int_eq(after.closed, before.closed + 1);
    stop();
}
END_TEST

struct closed_wait {
    long closed;
    struct counters seen;
};

static int closed_and_no_fiber(void *arg)
{
    struct closed_wait *w = arg;
    w->seen = counters();
    return w->seen.closed >= w->closed && w->seen.fibers == 1;
}

struct h2_abort {
    size_t got, limit;
};

static size_t take_then_abort(char *ptr, size_t size, size_t nmemb, void *data)
{
    struct h2_abort *a = data;
    a->got += size * nmemb;
    return a->got >= a->limit ? 0 : size * nmemb; /* 0: curl aborts the transfer */
}

START_TEST(a_client_that_leaves_stops_the_body_and_close_runs)
{
    start();
    struct counters before = counters();
    /* HTTP/1.1: read some of an endless body, then close the connection with data unread */
    int fd = raw_get("/s/forever", 0);
    size_t len;
    free(read_all(fd, 256 << 10, &len));
    ck_assert_int_ge(len, 256 << 10);
    close(fd);
    struct closed_wait w = {before.closed + 1, {0, 0, 0}};
    ck_assert_msg(th_wait_until(closed_and_no_fiber, &w, 10000), "HTTP/1.1: closed %ld, fibers %ld", w.seen.closed, w.seen.fibers);
    /* HTTP/2: the client resets the stream */
    char *url = th_url(&server, "/s/forever");
    struct h2_abort a = {0, 256 << 10};
    CURL *c = curl_easy_init();
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_HTTP_VERSION, CURL_HTTP_VERSION_2_PRIOR_KNOWLEDGE);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 30L);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, take_then_abort);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &a);
    ck_assert_int_eq(curl_easy_perform(c), CURLE_WRITE_ERROR);
    curl_easy_cleanup(c);
    free(url);
    w.closed = before.closed + 2;
    ck_assert_msg(th_wait_until(closed_and_no_fiber, &w, 10000), "HTTP/2: closed %ld, fibers %ld", w.seen.closed, w.seen.fibers);
    /* each stopped: nothing is produced any more (two counters a poll apart agree) */
    ck_assert_int_eq(counters().produced, counters().produced);
    stop();
}
END_TEST

START_TEST(an_exception_inside_each_breaks_the_response_off)
{
    start();
    /* HTTP/1.1: the chunk sent, then no last chunk: the connection closes */
    int fd = raw_get("/s/failing", 0);
    size_t len;
    char *raw = read_all(fd, SIZE_MAX, &len);
    close(fd);
    ck_assert_msg(strncmp(raw, "HTTP/1.1 200 OK\r\n", 17) == 0, "%s", raw);
    char *body = strstr(raw, "\r\n\r\n");
    ck_assert_ptr_nonnull(body);
    int complete;
    char *decoded = dechunk(body + 4, &complete);
    ck_assert_msg(!complete && strcmp(decoded, "hello") == 0, "complete %d, body `%s`; %s", complete, decoded, raw);
    free(decoded);
    free(raw);
    ck_assert_msg(th_wait_until(log_has, "stream.rb:43: mid-body failure (RuntimeError)", 10000), "%s", th_server_log(&server));
    /* HTTP/2: the chunk, then the stream is reset (curl drops what came with the reset: nghttp shows the frames) */
    th_response_t res;
    char *url = th_url(&server, "/s/failing");
    ck_assert(th_http(&res, TH_HTTP2, NULL, url, NULL) != 0);
    ck_assert_msg(res.curl_error == CURLE_HTTP2_STREAM, "curl %d", res.curl_error);
    th_response_free(&res);
    char *cmd = th_fmt("nghttp -nv %s 2>&1", url);
    FILE *p = popen(cmd, "r");
    ck_assert_ptr_nonnull(p);
    char frames_buf[16384];
    frames_buf[fread(frames_buf, 1, sizeof(frames_buf) - 1, p)] = '\0';
    pclose(p);
    char *frames = frames_buf;
    const char *data = strstr(frames, "recv DATA frame <length=5, flags=0x00"), *rst = strstr(frames, "recv RST_STREAM frame");
    ck_assert_msg(strstr(frames, ":status: 200") != NULL && data != NULL && rst > data && strstr(rst, "PROTOCOL_ERROR") != NULL,
                  "%s", frames);
    free(cmd);
    free(url);
    struct counters c = counters();
    ck_assert_int_eq(c.closed, 3);
    ck_assert_int_eq(c.fibers, 1);
    stop();
}
END_TEST

static char *get_body(const char *path)
{
    th_response_t res;
    char *url = th_url(&server, path);
    ck_assert_msg(th_http(&res, TH_HTTP1, NULL, url, NULL) == 0 && res.status == 200, "%s: curl %d, status %ld: %s", path,
                  res.curl_error, res.status, res.body);
    char *body = strdup(res.body);
    th_response_free(&res);
    free(url);
    return body;
}

static void expect_body(const char *path, const char *expect)
{
    char *body = get_body(path);
    ck_assert_msg(strcmp(body, expect) == 0, "%s: `%s`, expected `%s`", path, body, expect);
    free(body);
}

START_TEST(db_each_yields_100000_rows_in_order)
{
    start();
    expect_body("/e/count", "100000 rows, last 100000, 0 out of order");
    expect_body("/e/count?lite", "100000 rows, last 100000, 0 out of order");
    /* inside a streamed body: a CSV export, over HTTP/1.1 and HTTP/2 */
    size_t cap = 100000 * 16 + 8;
    char *expect = malloc(cap);
    size_t len = snprintf(expect, cap, "i,s\n");
    for (int i = 1; i <= 100000; ++i)
        len += snprintf(expect + len, cap - len, "%d,r%d\n", i, i);
    const char *paths[] = {"/e/export", "/e/export?lite"};
    for (int p = 0; p < 2; ++p)
        for (int version = TH_HTTP1; version <= TH_HTTP2; ++version) {
            th_response_t res;
            char *url = th_url(&server, paths[p]);
            ck_assert_msg(th_http(&res, version, NULL, url, NULL) == 0, "%s: curl %d", paths[p], res.curl_error);
            ck_assert_msg(res.body_len == len && strcmp(res.body, expect) == 0, "%s over HTTP/%d: %zu bytes, expected %zu",
                          paths[p], version, res.body_len, len);
            th_response_free(&res);
            free(url);
        }
    free(expect);
    ck_assert_int_eq(counters().fibers, 1);
    stop();
}
END_TEST

/* Statements of the test's bind that PostgreSQL still runs. */
static int none_running(void *arg)
{
    return th_pg_countf("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'mrb_each_%d' AND state <> 'idle'",
                        server.port) == 0;
}

START_TEST(leaving_db_each_early_stops_the_statement)
{
    start();
    /* break: the rest of 100,000,000 rows is not read; the session serves the next statement */
    expect_body("/e/break", "broke at 1000, then 42");
    ck_assert_msg(th_wait_until(none_running, NULL, 10000), "the statement still runs after the break");
    expect_body("/e/break?lite", "broke at 1000, then 42");
    /* an exception raised in the block goes on after the statement's end */
    expect_body("/e/raise", "row 3, then 42");
    expect_body("/e/raise?lite", "row 3, then 42");
    ck_assert_msg(th_wait_until(none_running, NULL, 10000), "a statement still runs after the exception");
    /* a statement on the streaming session itself would wait for the stream: refused */
    char *body = get_body("/e/same-session");
    ck_assert_msg(strstr(body, "this session is streaming the rows of a db.each") != NULL, "%s", body);
    free(body);
    ck_assert_int_eq(counters().fibers, 1);
    stop();
}
END_TEST

START_TEST(an_error_mid_each_raises_with_its_sqlstate)
{
    start();
    expect_body("/e/error", "H2O::DB::Error 22012 after 4999 rows, then 42");
    ck_assert_msg(th_wait_until(none_running, NULL, 10000), "a statement still runs after the error");
    stop();
}
END_TEST

int main(void)
{
    Suite *s = suite_create("mruby_stream");
    TCase *tc = tcase_create("stream");
    tcase_set_timeout(tc, 120);
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, ten_thousand_chunks_arrive_whole_and_in_order);
    tcase_add_test(tc, status_and_headers_go_out_when_call_returns);
    tcase_add_test(tc, a_stalled_client_does_not_make_the_server_buffer);
    tcase_add_test(tc, a_client_that_leaves_stops_the_body_and_close_runs);
    tcase_add_test(tc, an_exception_inside_each_breaks_the_response_off);
    tcase_add_test(tc, db_each_yields_100000_rows_in_order);
    tcase_add_test(tc, leaving_db_each_early_stops_the_statement);
    tcase_add_test(tc, an_error_mid_each_raises_with_its_sqlstate);
    suite_add_tcase(s, tc);
    return th_run_suite(s);
}
